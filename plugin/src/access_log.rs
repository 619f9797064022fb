//! What a request publishes for Envoy's access log, as filter state (`wasm.tollgate.*`).
//!
//! Every `set_property` is a host call across the wasm boundary (in V8 it also marshals both
//! strings), so the mode chosen in the config (`access_log`, [`AccessLogMode`]) decides the cost:
//! - `summary` (default): values are collected in one string and published once, in `on_log`
//!   (before Envoy writes the access-log line), as `wasm.tollgate.summary`;
//! - `fields`: each value is published as `wasm.tollgate.<name>` the moment it is known (about
//!   twenty host calls per request), for log formats that pick single fields;
//! - `off`: nothing.
//!
//! Summary format: `name=value` pairs separated by one space, in the order the values became
//! known, names as in `fields` mode (absent values are left out). Bytes outside printable ASCII,
//! and `%`, `=` and space, are percent-encoded (`%20`), so the line always splits on spaces.

use crate::host;
use tollgate_core::config::AccessLogMode;

/// Prefix of filter-state keys: Envoy stores `set_property("tollgate.x")` as `wasm.tollgate.x`.
const STATE_PREFIX: &str = "tollgate.";
/// The summary's filter-state key.
const SUMMARY_KEY: &str = "tollgate.summary";

/// A value's name as the summary writes it, ` name=` (one leading space, the `=`), composed at
/// compile time by [`key!`] so that starting a pair is one copy: no separator to decide, no
/// bytes pushed one at a time. `fields` mode publishes the bare name ([`Key::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(&'static str);

/// `key!("team")`: the access-log [`Key`] of the value named `team`.
macro_rules! key {
    ($name:literal) => {
        $crate::access_log::Key::composed(concat!(" ", $name, "="))
    };
}
pub(crate) use key;

impl Key {
    /// From ` name=` as [`key!`] composes it.
    #[doc(hidden)]
    pub const fn composed(written: &'static str) -> Key {
        Key(written)
    }

    /// The value's name, as `fields` mode publishes it (`tollgate.<name>`).
    pub fn name(self) -> &'static str {
        self.0.get(1..self.0.len().saturating_sub(1)).unwrap_or_default()
    }
}

/// The key of an attribution field (its name is `Field::as_str`, checked by a test).
pub fn attribution_key(field: tollgate_core::attribution::Field) -> Key {
    use tollgate_core::attribution::Field;
    match field {
        Field::Org => key!("org"),
        Field::CostCenter => key!("cost_center"),
        Field::Team => key!("team"),
        Field::User => key!("user"),
        Field::KeyId => key!("key_id"),
        Field::UseCase => key!("use_case"),
        Field::Tier => key!("tier"),
        Field::Task => key!("task"),
    }
}

/// The summary line's size when it is allocated ([`AccessLog::begin`]).
const SUMMARY_CAPACITY: usize = 384;

/// One request's access-log values.
#[derive(Debug)]
pub struct AccessLog {
    mode: AccessLogMode,
    /// The summary so far (`summary` mode), each pair written with its leading space (the first
    /// one's is not published): printable ASCII only (values are escaped), kept as bytes so
    /// numbers are appended whole, without a check per character.
    summary: Vec<u8>,
}

impl AccessLog {
    /// Allocates nothing: a request on a path that is not an LLM API records no value
    /// ([`AccessLog::begin`] sizes the line once the request is known to be one).
    pub fn new(mode: AccessLogMode) -> AccessLog {
        AccessLog { mode, summary: Vec::new() }
    }

    /// The request is an LLM API call: the summary line is allocated whole, before its first
    /// value. A metered chat request's summary is about 250 bytes, and attribution, a guard or
    /// enforcement add more. Growing it in the response phase (a realloc and a copy of the line)
    /// is what made the retry guard's response phase dear: with 384, the guarded 2 KB chat
    /// request's fell by ~2,400 instructions (wasm fuel, issue 12). Here, not per value: a check
    /// in every `set` cost the metered chat request ~230 instructions.
    pub fn begin(&mut self) {
        if self.mode == AccessLogMode::Summary && self.summary.capacity() == 0 {
            self.summary = Vec::with_capacity(SUMMARY_CAPACITY);
        }
    }

    /// Records `name=value`.
    pub fn set(&mut self, key: Key, value: &str) {
        match self.mode {
            AccessLogMode::Off => {}
            AccessLogMode::Summary => {
                self.summary.extend_from_slice(key.0.as_bytes());
                escape_into(&mut self.summary, value);
            }
            AccessLogMode::Fields => publish(key.name(), value),
        }
    }

    /// Records a number (formatted only if it is published).
    pub fn set_int(&mut self, key: Key, value: impl itoa::Integer) {
        match self.mode {
            AccessLogMode::Off => {}
            AccessLogMode::Summary => {
                self.summary.extend_from_slice(key.0.as_bytes());
                self.summary.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
            }
            AccessLogMode::Fields => publish(key.name(), itoa::Buffer::new().format(value)),
        }
    }

    /// Records an amount of micro-dollars as dollars (`core::money::format_micros`).
    pub fn set_usd(&mut self, key: Key, micros: tollgate_core::money::Micros) {
        match self.mode {
            AccessLogMode::Off => {}
            // Digits, `-` and `.`: nothing to escape.
            AccessLogMode::Summary => {
                self.summary.extend_from_slice(key.0.as_bytes());
                tollgate_core::money::push_micros(&mut self.summary, micros);
            }
            AccessLogMode::Fields => publish(key.name(), &tollgate_core::money::format_micros(micros)),
        }
    }

    /// Publishes the summary (once; a second call does nothing). `fields` mode published as it went.
    pub fn flush(&mut self) {
        if self.mode == AccessLogMode::Summary && !self.summary.is_empty() {
            let _ = host::set_property(SUMMARY_KEY, self.summary.get(1..).unwrap_or_default());
            self.summary.clear();
        }
    }

    /// The summary collected so far (for tests).
    pub fn summary(&self) -> &str {
        std::str::from_utf8(self.summary.get(1..).unwrap_or_default()).unwrap_or_default()
    }
}

fn publish(name: &str, value: &str) {
    let mut key = String::with_capacity(STATE_PREFIX.len() + name.len());
    key.push_str(STATE_PREFIX);
    key.push_str(name);
    let _ = host::set_property(&key, value.as_bytes());
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if tollgate_core::bytes::graphic_ascii_without(value.as_bytes(), b'%', b'=') {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b'=' {
            out.push(b);
        } else {
            out.push(b'%');
            for nibble in [b >> 4, b & 0xf] {
                out.push(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_space_separated_pairs_in_order() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        log.set(key!("dialect"), "openai");
        log.set(key!("team"), "platform");
        log.set_int(key!("tokens_input"), 1234u64);
        log.set_int(key!("cost_micros"), 0i64);
        log.set_int(key!("tokens_output"), u64::MAX);
        log.set_int(key!("delta"), -42i64);
        log.set_int(key!("least"), i64::MIN);
        assert_eq!(
            log.summary(),
            "dialect=openai team=platform tokens_input=1234 cost_micros=0 tokens_output=18446744073709551615 delta=-42 least=-9223372036854775808"
        );
    }

    #[test]
    fn summary_values_that_could_break_the_line_are_percent_encoded() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        log.set(key!("requested_model"), "my model=x%y\n");
        log.set(key!("user"), "zoë");
        assert_eq!(log.summary(), "requested_model=my%20model%3Dx%25y%0A user=zo%C3%AB");
    }

    #[test]
    fn amounts_are_written_as_dollars() {
        let mut log = AccessLog::new(AccessLogMode::Summary);
        for micros in [0, 2_160, -1_234_567, 120_000_000, i64::MIN] {
            log.set_usd(key!("cost_usd"), micros);
        }
        assert_eq!(log.summary(), "cost_usd=0.000000 cost_usd=0.002160 cost_usd=-1.234567 cost_usd=120.000000 cost_usd=-9223372036854.775808");
    }

    #[test]
    fn off_and_fields_modes_collect_nothing() {
        for mode in [AccessLogMode::Off, AccessLogMode::Fields] {
            let mut log = AccessLog::new(mode);
            log.set(key!("dialect"), "openai");
            log.set_int(key!("cost_micros"), 5i64);
            log.set_usd(key!("cost_usd"), 5);
            assert_eq!(log.summary(), "", "{mode:?}");
        }
    }

    #[test]
    fn keys_publish_their_bare_names() {
        assert_eq!(key!("tokens_input").name(), "tokens_input");
        for field in tollgate_core::attribution::Field::ALL {
            assert_eq!(attribution_key(field).name(), field.as_str(), "{field:?}");
        }
    }
}
