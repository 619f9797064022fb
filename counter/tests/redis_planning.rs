//! The planning spec (tests/planning.rs: forecasts, seats, outliers) run against the Redis store:
//! the harness sees this binary's name and starts a real redis-server per test.

#[path = "planning.rs"]
mod planning;
