//! The governance specification (tests/governance.rs) run against the Redis store: the harness
//! sees this binary's name and starts a real redis-server per test (tests/common/mod.rs).

#[path = "governance.rs"]
mod governance;
