//! The usage in a response is metered the same however the upstream's bytes are split: cut the
//! response in two at every byte, and feed it one byte at a time, for every dialect and format.

use crate::common::*;
use tollgate_host_tests::fixtures::{cases, refs};

#[test]
fn usage_is_the_same_with_the_response_cut_at_every_byte() {
    let gw = gateway();
    for case in cases() {
        for cut in 1..case.response.len() {
            gw.label(format!("{} cut at byte {cut}", case.name));
            let mut s = gw.stream();
            s.send_request(&refs(&case.headers()), &case.request);
            s.response_headers(&refs(&case.response_headers()), false);
            s.response_body(&case.response[..cut], false);
            s.response_body(&case.response[cut..], true);
            assert_eq!(s.client().body, case.client_response(), "{} cut at {cut}", case.name);
            expect_metered(&s, &case);
        }
    }
}

#[test]
fn usage_is_the_same_fed_one_byte_at_a_time_with_empty_chunks_between() {
    let gw = gateway();
    for case in cases() {
        let mut s = gw.stream();
        s.send_request(&refs(&case.headers()), &case.request);
        s.response_headers(&refs(&case.response_headers()), false);
        for byte in case.response.chunks(1) {
            s.response_body(byte, false);
            s.response_body(b"", false);
        }
        s.response_body(b"", true);
        assert_eq!(s.client().body, case.client_response(), "{}", case.name);
        expect_metered(&s, &case);
    }
}
