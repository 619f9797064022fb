//! What a request publishes for Envoy's access log, as filter state (`wasm.tollgate.*`).
//!
//! Every `set_property` is a host call across the wasm boundary (in V8 it also marshals both
//! strings), so the mode chosen in the config (`access_log`, [`AccessLogMode`]) decides the cost:
//! - `summary` (default): values are collected in one string and published once, in `on_log`
//!   (before Envoy writes the access-log line), as `wasm.tollgate.summary`;
//! - `fields`: each value is published as `wasm.tollgate.<name>` the moment it is known (about
//!   twenty host calls per request), for log formats that pick single fields;
//! - `off`: nothing.
//!
//! Summary format: `name=value` pairs separated by one space, in the order the values became
//! known, names as in `fields` mode (absent values are left out). Bytes outside printable ASCII,
//! and `%`, `=` and space, are percent-encoded (`%20`), so the line always splits on spaces.

use crate::host;
use tollgate_core::config::AccessLogMode;

/// Prefix of filter-state keys: Envoy stores `set_property("tollgate.x")` as `wasm.tollgate.x`.
const STATE_PREFIX: &str = "tollgate.";
/// The summary's filter-state key.
const SUMMARY_KEY: &str = "tollgate.summary";

/// One request's access-log values.
#[derive(Debug)]
pub struct AccessLog {
    mode: AccessLogMode,
    /// The summary so far (`summary` mode): printable ASCII only (values are escaped), kept as
    /// bytes so numbers are appended whole, without a check per character.
    summary: Vec<u8>,
}

impl AccessLog {
    pub fn new(mode: AccessLogMode) -> AccessLog {
        AccessLog { mode, summary: Vec::new() }
    }

    /// Records `name=value`.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.mode {
            AccessLogMode::Off => {}
            AccessLogMode::Summary => {
                self.start_pair(name);
                escape_into(&mut self.summary, value);
            }
            AccessLogMode::Fields => publish(name, value),
        }
    }

    /// Records a number (formatted only if it is published).
    pub fn set_int(&mut self, name: &str, value: impl itoa_like::Int) {
        match self.mode {
            AccessLogMode::Off => {}
            AccessLogMode::Summary => {
                self.start_pair(name);
                value.push_to(&mut self.summary);
            }
            AccessLogMode::Fields => {
                let mut text = Vec::new();
                value.push_to(&mut text);
                publish(name, &String::from_utf8_lossy(&text));
            }
        }
    }

    /// Records an amount of micro-dollars as dollars (`core::money::format_micros`).
    pub fn set_usd(&mut self, name: &str, micros: tollgate_core::money::Micros) {
        match self.mode {
            AccessLogMode::Off => {}
            // Digits, `-` and `.`: nothing to escape.
            AccessLogMode::Summary => {
                self.start_pair(name);
                tollgate_core::money::push_micros(&mut self.summary, micros);
            }
            AccessLogMode::Fields => publish(name, &tollgate_core::money::format_micros(micros)),
        }
    }

    fn start_pair(&mut self, name: &str) {
        if self.summary.is_empty() {
            // One allocation for the whole line: a metered chat request's summary is about 250
            // bytes, and attribution, a guard or enforcement add more. Growing it in the response
            // phase (a realloc and a copy of the line) is what made the retry guard's response
            // phase dear: with 384, the guarded 2 KB chat request's fell by ~2,400 instructions
            // (wasm fuel, issue 12).
            self.summary.reserve(384);
        } else {
            self.summary.push(b' ');
        }
        self.summary.extend_from_slice(name.as_bytes());
        self.summary.push(b'=');
    }

    /// Publishes the summary (once; a second call does nothing). `fields` mode published as it went.
    pub fn flush(&mut self) {
        if self.mode == AccessLogMode::Summary && !self.summary.is_empty() {
            let _ = host::set_property(SUMMARY_KEY, &self.summary);
            self.summary.clear();
        }
    }

    /// The summary collected so far (for tests).
    pub fn summary(&self) -> &str {
        std::str::from_utf8(&self.summary).unwrap_or_default()
    }
}

fn publish(name: &str, value: &str) {
    let mut key = String::with_capacity(STATE_PREFIX.len() + name.len());
    key.push_str(STATE_PREFIX);
    key.push_str(name);
    let _ = host::set_property(&key, value.as_bytes());
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if value.bytes().all(|b| b.is_ascii_graphic() && b != b'%' && b != b'=') {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(b);
        } else {
            out.push(b'%');
            for nibble in [b >> 4, b & 0xf] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        }
    }
}

/// Integers appended without `core::fmt` (smaller and faster in wasm), their digits in one copy.
pub mod itoa_like {
    pub trait Int {
        fn push_to(self, out: &mut Vec<u8>);
    }

    impl Int for u64 {
        fn push_to(self, out: &mut Vec<u8>) {
            let mut digits = [0u8; 20];
            let mut n = self;
            let mut at = digits.len();
            loop {
                at -= 1;
                if let Some(d) = digits.get_mut(at) {
                    *d = b'0' + (n % 10) as u8;
                }
                n /= 10;
                if n == 0 || at == 0 {
                    break;
                }
            }
            out.extend_from_slice(digits.get(at..).unwrap_or_default());
        }
    }

    impl Int for i64 {
        fn push_to(self, out: &mut Vec<u8>) {
            if self < 0 {
                out.push(b'-');
            }
            self.unsigned_abs().push_to(out);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_space_separated_pairs_in_order() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        log.set("dialect", "openai");
        log.set("team", "platform");
        log.set_int("tokens_input", 1234u64);
        log.set_int("cost_micros", 0i64);
        log.set_int("tokens_output", u64::MAX);
        log.set_int("delta", -42i64);
        assert_eq!(
            log.summary(),
            "dialect=openai team=platform tokens_input=1234 cost_micros=0 tokens_output=18446744073709551615 delta=-42"
        );
    }

    #[test]
    fn summary_values_that_could_break_the_line_are_percent_encoded() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        log.set("requested_model", "my model=x%y\n");
        log.set("user", "zoë");
        assert_eq!(log.summary(), "requested_model=my%20model%3Dx%25y%0A user=zo%C3%AB");
    }

    #[test]
    fn amounts_are_written_as_dollars() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        for micros in [0, 2_160, -1_234_567, 120_000_000, i64::MIN] {
            log.set_usd("cost_usd", micros);
        }
        assert_eq!(log.summary(), "cost_usd=0.000000 cost_usd=0.002160 cost_usd=-1.234567 cost_usd=120.000000 cost_usd=-9223372036854.775808");
    }

    #[test]
    fn off_and_fields_modes_collect_nothing() {
        for mode in [AccessLogMode::Off, AccessLogMode::Fields] {
            let mut log = AccessLog::new(mode);
            log.set("dialect", "openai");
            log.set_int("cost_micros", 5i64);
            log.set_usd("cost_usd", 5);
            assert_eq!(log.summary(), "", "{mode:?}");
        }
    }
}
