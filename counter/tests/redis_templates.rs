//! The template specification (tests/templates.rs) run against the Redis store.

#[path = "templates.rs"]
mod templates;
