//! The time source, injectable so tests can roll windows over and expire leases deterministically.
//!
//! Every time-dependent decision (which window a charge lands in, whether a lease or an exemption is
//! live) takes `now` from a [`Clock`] read once per request, never from `SystemTime` deep inside.
//!
//! This is the only module of the counter that reads the machine's clocks (`make test` checks it:
//! scripts/check-clock-reads.sh). Real elapsed time, for bounding a retry loop or measuring a
//! benchmark, comes from [`Stopwatch`]; it never decides anything about money, windows or leases.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn set_ms(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
    pub fn advance_ms(&self, by_ms: i64) {
        self.0.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Real elapsed time since [`Stopwatch::start`] (monotonic): how long a retry loop or a wait has
/// run, how long a benchmark phase took. Not a point in time, so it cannot make a test depend on the date.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}
