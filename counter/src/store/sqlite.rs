//! The embedded SQLite backend (placeholder while the trait settles; see store/mod.rs).
