//! The selector budget specification (tests/selectors.rs) run against the Redis store.

#[path = "selectors.rs"]
mod selectors;
