//! The API specification (tests/api.rs) run against the Redis store: the harness sees this
//! binary's name and starts a real redis-server per test (tests/common/mod.rs).

#[path = "api.rs"]
mod api;
