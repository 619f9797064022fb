//! Per-request behaviour switches, read from `x-mock-*` request headers.
//!
//! Tests steer the mock through headers because Envoy and the Tollgate filter forward them
//! untouched (the filter strips only `x-tollgate-*`). Every switch is optional; an absent or
//! unparsable value means the default, so a plain client gets a plain, well-formed answer.
//!
//! | header                        | effect                                                        |
//! |-------------------------------|---------------------------------------------------------------|
//! | `x-mock-delay-ms: N`          | wait N ms before sending the response head                    |
//! | `x-mock-events: N`            | N content pieces (SSE content events / text fragments), 1..=10000 |
//! | `x-mock-event-delay-ms: N`    | wait N ms between SSE events (streams only)                   |
//! | `x-mock-chunk-bytes: N`       | write the response body in N-byte writes (each flushed)       |
//! | `x-mock-chunk-delay-ms: N`    | wait N ms between those writes                                |
//! | `x-mock-cut-after-events: N`  | streams: send N content events, then drop the connection before usage; JSON: send half the body, then drop |
//! | `x-mock-status: NNN`          | answer with that status and the dialect's error JSON (no usage) |
//! | `x-mock-gzip: never`          | don't gzip even if the client accepts gzip (default: gzip when accepted) |
//! | `x-mock-gzip: always`         | gzip even if the client did not ask (a misbehaving upstream)  |
//! | `x-mock-input-tokens: N`      | override the prompt token count (default: ceil(body bytes / 4)) |
//! | `x-mock-output-tokens: N`     | override the output token count (default: 4 × events), still capped by max tokens |
//! | `x-mock-cached-tokens: N`     | N prompt tokens read from cache                               |
//! | `x-mock-cache-write-tokens: N`| N prompt tokens written to cache (Anthropic)                  |
//! | `x-mock-reasoning-tokens: N`  | N of the output tokens are reasoning tokens                   |

use std::time::Duration;

/// The parsed switches for one request. `Default` is the behaviour with no `x-mock-*` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controls {
    pub delay: Duration,
    pub events: u32,
    pub event_delay: Duration,
    pub chunk_bytes: Option<usize>,
    pub chunk_delay: Duration,
    pub cut_after_events: Option<u32>,
    pub status: Option<u16>,
    pub gzip_allowed: bool,
    pub gzip_forced: bool,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cached_tokens: u64,
    pub cache_write_tokens: u64,
    pub reasoning_tokens: u64,
}

/// Upper bound on `x-mock-events`, so a typo cannot make the mock stream forever.
pub const MAX_EVENTS: u32 = 10_000;
/// Upper bound on every delay, so a test cannot hang the mock.
pub const MAX_DELAY_MS: u64 = 60_000;

impl Default for Controls {
    fn default() -> Self {
        Controls {
            delay: Duration::ZERO,
            events: 4,
            event_delay: Duration::ZERO,
            chunk_bytes: None,
            chunk_delay: Duration::ZERO,
            cut_after_events: None,
            status: None,
            gzip_allowed: true,
            gzip_forced: false,
            input_tokens: None,
            output_tokens: None,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    }
}

impl Controls {
    /// Reads the switches from request headers (names compared case-insensitively).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Controls {
        let mut c = Controls::default();
        for (name, value) in headers {
            let Some(key) = strip_prefix_ignore_case(name, "x-mock-") else {
                continue;
            };
            let value = value.trim();
            let num = || value.parse::<u64>().ok();
            let ms = || num().map(|n| Duration::from_millis(n.min(MAX_DELAY_MS)));
            match key.to_ascii_lowercase().as_str() {
                "delay-ms" => c.delay = ms().unwrap_or(c.delay),
                "events" => {
                    if let Some(n) = num() {
                        c.events = n.clamp(1, MAX_EVENTS as u64) as u32;
                    }
                }
                "event-delay-ms" => c.event_delay = ms().unwrap_or(c.event_delay),
                "chunk-bytes" => c.chunk_bytes = num().filter(|n| *n > 0).map(|n| n as usize),
                "chunk-delay-ms" => c.chunk_delay = ms().unwrap_or(c.chunk_delay),
                "cut-after-events" => c.cut_after_events = num().map(|n| n.min(MAX_EVENTS as u64) as u32),
                "status" => c.status = num().filter(|s| (100..=599).contains(s)).map(|s| s as u16),
                "gzip" => {
                    c.gzip_allowed = !value.eq_ignore_ascii_case("never");
                    c.gzip_forced = value.eq_ignore_ascii_case("always");
                }
                "input-tokens" => c.input_tokens = num(),
                "output-tokens" => c.output_tokens = num(),
                "cached-tokens" => c.cached_tokens = num().unwrap_or(0),
                "cache-write-tokens" => c.cache_write_tokens = num().unwrap_or(0),
                "reasoning-tokens" => c.reasoning_tokens = num().unwrap_or(0),
                _ => {}
            }
        }
        c
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// True when an `accept-encoding` value admits gzip (`gzip` listed without `q=0`).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let refused = parts.any(|p| {
            let p = p.trim();
            p.eq_ignore_ascii_case("q=0") || p.eq_ignore_ascii_case("q=0.0") || p.eq_ignore_ascii_case("q=0.000")
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(headers: &[(&str, &str)]) -> Controls {
        Controls::from_headers(headers.iter().copied())
    }

    #[test]
    fn no_mock_headers_means_defaults() {
        assert_eq!(parse(&[("content-type", "application/json")]), Controls::default());
    }

    #[test]
    fn every_switch_is_read() {
        let c = parse(&[
            ("X-Mock-Delay-Ms", "15"),
            ("x-mock-events", "7"),
            ("x-mock-event-delay-ms", "2"),
            ("x-mock-chunk-bytes", "13"),
            ("x-mock-chunk-delay-ms", "1"),
            ("x-mock-cut-after-events", "3"),
            ("x-mock-status", "503"),
            ("x-mock-gzip", "never"),
            ("x-mock-input-tokens", "1000"),
            ("x-mock-output-tokens", "50"),
            ("x-mock-cached-tokens", "400"),
            ("x-mock-cache-write-tokens", "100"),
            ("x-mock-reasoning-tokens", "20"),
        ]);
        assert_eq!(
            c,
            Controls {
                delay: Duration::from_millis(15),
                events: 7,
                event_delay: Duration::from_millis(2),
                chunk_bytes: Some(13),
                chunk_delay: Duration::from_millis(1),
                cut_after_events: Some(3),
                status: Some(503),
                gzip_allowed: false,
                gzip_forced: false,
                input_tokens: Some(1000),
                output_tokens: Some(50),
                cached_tokens: 400,
                cache_write_tokens: 100,
                reasoning_tokens: 20,
            }
        );
    }

    #[test]
    fn gzip_can_be_forced() {
        let c = parse(&[("x-mock-gzip", "Always")]);
        assert!(c.gzip_allowed && c.gzip_forced);
    }

    #[test]
    fn garbage_values_fall_back_to_defaults() {
        let c = parse(&[
            ("x-mock-delay-ms", "soon"),
            ("x-mock-events", "-1"),
            ("x-mock-chunk-bytes", "0"),
            ("x-mock-status", "42"),
            ("x-mock-cached-tokens", "lots"),
        ]);
        assert_eq!(c, Controls::default());
    }

    #[test]
    fn values_are_bounded() {
        let c = parse(&[("x-mock-events", "999999999"), ("x-mock-delay-ms", "99999999"), ("x-mock-events", "0")]);
        assert_eq!(c.events, 1, "the last header wins and 0 is raised to 1");
        assert_eq!(c.delay, Duration::from_millis(MAX_DELAY_MS));
        assert_eq!(parse(&[("x-mock-events", "999999999")]).events, MAX_EVENTS);
    }

    #[test]
    fn gzip_acceptance_follows_accept_encoding() {
        for (value, expected) in [
            ("gzip", true),
            ("gzip, deflate, br", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("*", true),
            ("identity", false),
            ("gzip;q=0", false),
            ("", false),
            ("deflate", false),
        ] {
            assert_eq!(accepts_gzip(value), expected, "accept-encoding: {value:?}");
        }
    }
}
