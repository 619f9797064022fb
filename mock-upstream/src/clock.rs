//! The mock's one wall-clock read: a created context cache's `createTime` and `expireTime` must be
//! real times, since the gateway compares the expiry with its own clock (`scripts/check-clock-reads.sh`
//! allows clock reads here only).

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
