//! The reservation policy specification (tests/reservations.rs) run against the Redis store.

#[path = "reservations.rs"]
mod reservations;
