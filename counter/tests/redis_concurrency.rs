//! The concurrency specification (tests/concurrency.rs) run against the Redis store.

#[path = "concurrency.rs"]
mod concurrency;
