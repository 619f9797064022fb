//! Usage scanners reused across a VM's responses.
//!
//! Why: a [`UsageScanner`] is some 1.5 KB of state (capped key, value and event-name buffers, the
//! SSE framing, the event template). Built new for each response and moved into the stream's
//! state, it was zeroed and copied whole several times: about 4,500 of the response-headers
//! callback's 7,800 wasm instructions (wasm's `memory.fill` and `memory.copy` cost per byte). A
//! scanner [`UsageScanner::reset`] in place is written field by field, and keeps its buffers (the
//! held event, the template's bytes, the container stack), so the next response's first events
//! allocate nothing either.
//!
//! A VM runs one thread: the spare scanners are a thread-local list of at most [`MAX_SPARE`]
//! (scanners given back beyond that are dropped), so an idle VM holds at most that many, a few
//! KB each with their buffers. Core guarantees a reset scanner is a new one (its tests compare
//! them after arbitrary input), so reuse changes no outcome.

use std::cell::RefCell;
use tollgate_core::dialect::{Dialect, Endpoint};
use tollgate_core::usage::{ResponseFormat, UsageScanner};

/// The most idle scanners a VM keeps.
pub const MAX_SPARE: usize = 16;

thread_local! {
    // Boxed: a stream holds its scanner by pointer, so taking and giving one back moves no bytes.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<UsageScanner>>> = const { RefCell::new(Vec::new()) };
}

/// A scanner for a new response: a spare one reset, or a new one when there is none.
pub fn take(dialect: Dialect, endpoint: Endpoint, format: ResponseFormat) -> Box<UsageScanner> {
    let spare = SPARE.with(|spare| spare.try_borrow_mut().ok().and_then(|mut spare| spare.pop()));
    match spare {
        Some(mut scanner) => {
            scanner.reset(dialect, endpoint, format);
            scanner
        }
        None => Box::new(UsageScanner::new(dialect, endpoint, format)),
    }
}

/// A scanner whose response is over, kept for the next one (or dropped when [`MAX_SPARE`] are kept).
pub fn give_back(scanner: Box<UsageScanner>) {
    SPARE.with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < MAX_SPARE {
                spare.push(scanner);
            }
        }
    });
}

/// How many idle scanners this VM keeps now.
pub fn spare_count() -> usize {
    SPARE.with(|spare| spare.try_borrow().map_or(0, |spare| spare.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_scanner_is_taken_again_reset_and_the_spares_are_bounded() {
        let first = take(Dialect::OpenAi, Endpoint::Chat, ResponseFormat::Sse);
        let mut first = first;
        first.feed(b"data: {\"model\":\"m\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
        assert!(first.finish().tokens.is_some());
        let address = std::ptr::from_ref::<UsageScanner>(&first);
        give_back(first);
        assert_eq!(spare_count(), 1);
        let mut again = take(Dialect::Anthropic, Endpoint::Messages, ResponseFormat::Json);
        assert_eq!(std::ptr::from_ref::<UsageScanner>(&again), address, "the spare is reused");
        assert_eq!(format!("{again:?}"), format!("{:?}", UsageScanner::new(Dialect::Anthropic, Endpoint::Messages, ResponseFormat::Json)));
        assert_eq!(again.finish(), Default::default());
        assert_eq!(spare_count(), 0);
        for _ in 0..MAX_SPARE + 5 {
            give_back(Box::new(UsageScanner::new(Dialect::OpenAi, Endpoint::Chat, ResponseFormat::Sse)));
        }
        assert_eq!(spare_count(), MAX_SPARE);
    }
}
