//! Budget windows and the calendar arithmetic behind them.
//!
//! Supported windows: calendar `day`, `week` (ISO, Monday first) and `month`, in UTC, a fixed UTC
//! offset such as `+02:00`, or an IANA time zone such as `America/Los_Angeles` ([`Zone`]);
//! `rolling:N` (the last N local days, today included); and `none` (spend accumulates until an
//! admin raises the limit). Companies count their days in their own zone, with its daylight saving
//! time: a budget in `Europe/Paris` turns over at midnight in Paris in winter and in summer. The
//! IANA table is jiff's bundled copy of the tz database, compiled into the binary, so a window never
//! depends on the host's `/usr/share/zoneinfo` (a container without one, or an older one, would
//! otherwise move a company's midnight).
//!
//! Spend is kept in **day buckets** (the unix second at which the budget's local day starts), or a
//! single bucket `0` for `none`. A window is then "the buckets at or after its start", so switching
//! a budget from `day` to `month` keeps the days already counted this month. In a zone with DST a
//! local day is 23 or 25 hours long on the change days; its bucket is still the unix second of its
//! first instant (local midnight, or the first instant after it if midnight is skipped).

use jiff::tz::TimeZone;
use std::fmt;

pub const DAY_SECS: i64 = 86_400;

/// How a budget's spend resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Day,
    Week,
    Month,
    /// The last `days` local days including today.
    Rolling { days: u32 },
    /// Never resets.
    None,
}

impl Window {
    /// Parses `day`, `week`, `month`, `none` or `rolling:N` (1 ≤ N ≤ 366).
    pub fn parse(text: &str) -> Result<Window, String> {
        match text {
            "day" => Ok(Window::Day),
            "week" => Ok(Window::Week),
            "month" => Ok(Window::Month),
            "none" => Ok(Window::None),
            other => {
                let days = other
                    .strip_prefix("rolling:")
                    .and_then(|n| n.trim_end_matches('d').parse::<u32>().ok())
                    .filter(|n| (1..=366).contains(n));
                match days {
                    Some(days) => Ok(Window::Rolling { days }),
                    None => Err(format!(
                        "`{other}` is not a window; use day, week, month, none or rolling:N (N days, 1-366)"
                    )),
                }
            }
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::Day => f.write_str("day"),
            Window::Week => f.write_str("week"),
            Window::Month => f.write_str("month"),
            Window::None => f.write_str("none"),
            Window::Rolling { days } => write!(f, "rolling:{days}"),
        }
    }
}

/// Parses `UTC`, `Z`, `+HH:MM` or `-HH:MM` into minutes east of UTC (at most ±14:00).
pub fn parse_utc_offset(text: &str) -> Result<i32, String> {
    let bad = || format!("`{text}` is not a UTC offset; use UTC or +HH:MM / -HH:MM (e.g. +02:00)");
    if text.eq_ignore_ascii_case("utc") || text == "Z" || text.is_empty() {
        return Ok(0);
    }
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h * 60 + m > 14 * 60 {
        return Err(bad());
    }
    Ok(sign * (h * 60 + m))
}

/// Formats minutes east of UTC the way [`parse_utc_offset`] reads them.
pub fn format_utc_offset(minutes: i32) -> String {
    if minutes == 0 {
        return "UTC".into();
    }
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days-from-civil).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` of a unix time in UTC.
pub fn utc_date(unix_secs: i64) -> String {
    let (y, m, d) = civil_from_days(unix_secs.div_euclid(DAY_SECS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses a point in time for the admin API and CLI: `YYYY-MM-DD` (midnight UTC),
/// `YYYY-MM-DDTHH:MM:SSZ` (or with a `±HH:MM` offset), or plain unix milliseconds.
/// Returns unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time; use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or unix milliseconds");
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| bad());
    }
    let (date, rest) = text.split_at(text.len().min(10));
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let y: i64 = y.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    let d: u32 = d.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * DAY_SECS;
    if !rest.is_empty() {
        let rest = rest.strip_prefix('T').or_else(|| rest.strip_prefix(' ')).ok_or_else(bad)?;
        if rest.len() < 8 {
            return Err(bad());
        }
        let (hms, zone) = rest.split_at(8);
        let f: Vec<&str> = hms.split(':').collect();
        if f.len() != 3 || f.iter().any(|p| p.len() != 2) {
            return Err(bad());
        }
        let h: i64 = f[0].parse().map_err(|_| bad())?;
        let mi: i64 = f[1].parse().map_err(|_| bad())?;
        let s: i64 = f[2].parse().map_err(|_| bad())?;
        if h > 23 || mi > 59 || s > 59 {
            return Err(bad());
        }
        let offset = if zone.is_empty() { 0 } else { parse_utc_offset(zone).map_err(|_| bad())? };
        secs += h * 3600 + mi * 60 + s - i64::from(offset) * 60;
    }
    Ok(secs * 1000)
}

/// Formats unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_time_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let tod = secs.rem_euclid(DAY_SECS);
    format!("{}T{:02}:{:02}:{:02}Z", utc_date(secs), tod / 3600, tod / 60 % 60, tod % 60)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) };
    (next - days_from_civil(year, month, 1)) as u32
}

/// Where a budget stands in time: which bucket a charge made now lands in, which buckets count,
/// and when the window next resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpan {
    /// Bucket a charge made now is added to.
    pub bucket: i64,
    /// Buckets `>= from` are in the current window.
    pub from: i64,
    /// Unix seconds of the next reset; `None` for `Window::None`.
    pub resets_at: Option<i64>,
}

/// Where a budget's local days turn over: a fixed offset from UTC, or an IANA zone (with its
/// daylight saving time and historical changes).
#[derive(Debug, Clone)]
pub enum Zone {
    /// Minutes east of UTC.
    Fixed(i32),
    /// An IANA zone from the bundled tz database; its [`TimeZone::iana_name`] is its identity.
    Iana(TimeZone),
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        match (self, other) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Iana(a), Zone::Iana(b)) => a.iana_name() == b.iana_name(),
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl Zone {
    pub const UTC: Zone = Zone::Fixed(0);

    /// Looks up an IANA zone name (`America/Los_Angeles`) in the bundled tz database.
    pub fn iana(name: &str) -> Result<Zone, String> {
        let bad = || format!("`{name}` is not an IANA time zone; use a name such as America/Los_Angeles or Europe/Paris (or utc_offset for a fixed offset)");
        if name.trim().is_empty() || name.contains(char::is_whitespace) {
            return Err(bad());
        }
        let tz = TimeZone::get(name).map_err(|_| bad())?;
        // A zone the database names is what we store and show (e.g. `america/new_york` reads back
        // as `America/New_York`).
        if tz.iana_name().is_none() {
            return Err(bad());
        }
        Ok(Zone::Iana(tz))
    }

    /// The IANA name, or `None` for a fixed offset.
    pub fn iana_name(&self) -> Option<&str> {
        match self {
            Zone::Fixed(_) => None,
            Zone::Iana(tz) => tz.iana_name(),
        }
    }

    /// Seconds east of UTC in force at `unix_secs`.
    pub fn offset_secs_at(&self, unix_secs: i64) -> i64 {
        match self {
            Zone::Fixed(minutes) => i64::from(*minutes) * 60,
            Zone::Iana(tz) => jiff::Timestamp::from_second(unix_secs).map_or(0, |ts| i64::from(tz.to_offset(ts).seconds())),
        }
    }

    /// The local day (days since 1970-01-01 on the local calendar) that contains `unix_secs`.
    pub fn local_day(&self, unix_secs: i64) -> i64 {
        (unix_secs + self.offset_secs_at(unix_secs)).div_euclid(DAY_SECS)
    }

    /// `YYYY-MM-DD` of the local day that contains `unix_secs`.
    pub fn local_date(&self, unix_secs: i64) -> String {
        utc_date(self.local_day(unix_secs) * DAY_SECS)
    }

    /// The offsets in force over `[from_secs, to_secs)`: `(since, seconds east of UTC)`, the first
    /// since `from_secs`, then one per change (a DST start or end) before `to_secs`. `None` when
    /// there are more than `max_changes` (a period of centuries in a zone with DST): a store that
    /// turns this into SQL keeps its statement bounded.
    pub fn offsets_between(&self, from_secs: i64, to_secs: i64, max_changes: usize) -> Option<Vec<(i64, i64)>> {
        let mut out = vec![(from_secs, self.offset_secs_at(from_secs))];
        if let Zone::Iana(tz) = self {
            let start = jiff::Timestamp::from_second(from_secs).unwrap_or(if from_secs < 0 { jiff::Timestamp::MIN } else { jiff::Timestamp::MAX });
            for t in tz.following(start) {
                let at = t.timestamp().as_second();
                if at >= to_secs {
                    break;
                }
                if out.len() > max_changes {
                    return None;
                }
                out.push((at, i64::from(t.offset().seconds())));
            }
        }
        Some(out)
    }

    /// The unix second at which local day `day` starts: local midnight, or the first instant after
    /// it when a DST change skips midnight.
    pub fn day_start(&self, day: i64) -> i64 {
        match self {
            Zone::Fixed(minutes) => day * DAY_SECS - i64::from(*minutes) * 60,
            Zone::Iana(tz) => {
                let (y, m, d) = civil_from_days(day);
                let start = i16::try_from(y)
                    .ok()
                    .and_then(|y| jiff::civil::Date::new(y, m as i8, d as i8).ok())
                    .and_then(|date| date.to_zoned_datetime(tz.clone()).ok())
                    .map(|z| z.timestamp().as_second());
                // Only out of jiff's range (years beyond ±9999): fall back to UTC days, never panic.
                start.unwrap_or(day * DAY_SECS)
            }
        }
    }
}

/// Computes the [`WindowSpan`] of `window` at `now_ms`, with local days starting at midnight in the
/// fixed offset `offset_minutes`.
pub fn span(window: Window, offset_minutes: i32, now_ms: i64) -> WindowSpan {
    span_in(window, &Zone::Fixed(offset_minutes), now_ms)
}

/// Computes the [`WindowSpan`] of `window` at `now_ms`, with local days of `zone`.
pub fn span_in(window: Window, zone: &Zone, now_ms: i64) -> WindowSpan {
    if window == Window::None {
        return WindowSpan { bucket: 0, from: 0, resets_at: None };
    }
    let local_day = zone.local_day(now_ms.div_euclid(1000));
    let (first_day, next_day) = match window {
        Window::Day => (local_day, local_day + 1),
        Window::Week => {
            // 1970-01-01 was a Thursday; ISO weeks start on Monday.
            let monday = local_day - (local_day + 3).rem_euclid(7);
            (monday, monday + 7)
        }
        Window::Month => {
            let (y, m, _) = civil_from_days(local_day);
            let next = if m == 12 { days_from_civil(y + 1, 1, 1) } else { days_from_civil(y, m + 1, 1) };
            (days_from_civil(y, m, 1), next)
        }
        Window::Rolling { days } => (local_day - i64::from(days) + 1, local_day + 1),
        Window::None => (0, 0),
    };
    WindowSpan { bucket: zone.day_start(local_day), from: zone.day_start(first_day), resets_at: Some(zone.day_start(next_day)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> i64 {
        parse_time_ms(text).unwrap()
    }

    #[test]
    fn civil_dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2026, 11, 23), (1969, 12, 31)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28), 2, "2000 is a leap year");
    }

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(at("1970-01-02"), 86_400_000);
        assert_eq!(at("1970-01-01T01:00:00Z"), 3_600_000);
        assert_eq!(at("1970-01-01T03:00:00+02:00"), 3_600_000);
        assert_eq!(at("12345"), 12_345);
        for bad in ["2026-13-01", "2026-02-30", "yesterday", "2026-1-1", "2026-01-01T25:00:00Z"] {
            assert!(parse_time_ms(bad).is_err(), "{bad}");
        }
        assert_eq!(format_time_ms(at("2026-11-23T13:30:05Z")), "2026-11-23T13:30:05Z");
    }

    #[test]
    fn windows_parse_and_display() {
        for text in ["day", "week", "month", "none", "rolling:7"] {
            assert_eq!(Window::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Window::parse("rolling:30d"), Ok(Window::Rolling { days: 30 }));
        assert!(Window::parse("rolling:0").is_err());
        assert!(Window::parse("fortnight").is_err());
    }

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_utc_offset("UTC"), Ok(0));
        assert_eq!(parse_utc_offset("+02:00"), Ok(120));
        assert_eq!(parse_utc_offset("-05:30"), Ok(-330));
        assert!(parse_utc_offset("Europe/Paris").is_err());
        assert!(parse_utc_offset("+15:00").is_err());
        assert_eq!(format_utc_offset(-330), "-05:30");
    }

    #[test]
    fn calendar_windows_start_and_reset_on_local_boundaries() {
        let now = at("2026-11-25T10:00:00Z"); // a Wednesday
        let check = |w: Window, off: i32, from: &str, resets: &str| {
            let s = span(w, off, now);
            assert_eq!(s.from, at(from) / 1000, "{w} {off} from");
            assert_eq!(s.resets_at, Some(at(resets) / 1000), "{w} {off} resets");
        };
        check(Window::Day, 0, "2026-11-25", "2026-11-26");
        check(Window::Week, 0, "2026-11-23", "2026-11-30");
        check(Window::Month, 0, "2026-11-01", "2026-12-01");
        check(Window::Month, 120, "2026-11-01T00:00:00+02:00", "2026-12-01T00:00:00+02:00");
        check(Window::Day, -600, "2026-11-25T00:00:00-10:00", "2026-11-26T00:00:00-10:00");
        check(Window::Rolling { days: 7 }, 0, "2026-11-19", "2026-11-26");
        let dec = span(Window::Month, 0, at("2026-12-31T23:59:59Z"));
        assert_eq!(dec.resets_at, Some(at("2027-01-01") / 1000));
        assert_eq!(span(Window::None, 0, now), WindowSpan { bucket: 0, from: 0, resets_at: None });
    }

    #[test]
    fn windows_turn_over_at_month_ends_leap_days_and_year_ends() {
        // (window, offset minutes, now, window start, next reset)
        let cases: &[(Window, i32, &str, &str, &str)] = &[
            // The last second of a leap February, and the first of March.
            (Window::Day, 0, "2028-02-29T23:59:59Z", "2028-02-29", "2028-03-01"),
            (Window::Month, 0, "2028-02-29T23:59:59Z", "2028-02-01", "2028-03-01"),
            (Window::Month, 0, "2028-03-01T00:00:00Z", "2028-03-01", "2028-04-01"),
            // A common year's February has 28 days.
            (Window::Month, 0, "2027-02-28T23:59:58Z", "2027-02-01", "2027-03-01"),
            (Window::Day, 0, "2027-02-28T23:59:58Z", "2027-02-28", "2027-03-01"),
            // 30- and 31-day months.
            (Window::Month, 0, "2026-04-30T23:59:59Z", "2026-04-01", "2026-05-01"),
            (Window::Month, 0, "2026-01-31T23:59:59Z", "2026-01-01", "2026-02-01"),
            // East of UTC the local month has already turned while UTC is still on the 31st...
            (Window::Month, 120, "2026-12-31T22:30:00Z", "2027-01-01T00:00:00+02:00", "2027-02-01T00:00:00+02:00"),
            // ...and west of UTC it has not, though UTC is already on the 1st.
            (Window::Month, -300, "2027-01-01T03:00:00Z", "2026-12-01T00:00:00-05:00", "2027-01-01T00:00:00-05:00"),
            // ISO weeks across a year end (2026-12-28 and 2027-12-27 are Mondays).
            (Window::Week, 0, "2027-01-01T12:00:00Z", "2026-12-28", "2027-01-04"),
            (Window::Week, 0, "2028-01-02T23:59:59Z", "2027-12-27", "2028-01-03"),
            // A rolling window reaching back over a leap day.
            (Window::Rolling { days: 3 }, 0, "2028-03-01T10:00:00Z", "2028-02-28", "2028-03-02"),
            // Far in the future the arithmetic is the same (2400 is a leap year, 2100 is not).
            (Window::Month, 0, "2400-02-29T12:00:00Z", "2400-02-01", "2400-03-01"),
            (Window::Day, 0, "2100-02-28T23:59:59Z", "2100-02-28", "2100-03-01"),
        ];
        for &(window, offset, now, from, resets) in cases {
            let s = span(window, offset, at(now));
            assert_eq!(s.from, at(from) / 1000, "{window} {offset} at {now}: window start");
            assert_eq!(s.resets_at, Some(at(resets) / 1000), "{window} {offset} at {now}: next reset");
            assert_eq!(s.bucket, span(Window::Day, offset, at(now)).from, "{window} {offset} at {now}: today's bucket");
        }
        assert!(parse_time_ms("2027-02-29").is_err(), "2027 is not a leap year");
        assert!(parse_time_ms("2100-02-29").is_err(), "2100 is not a leap year");
        assert_eq!(format_time_ms(at("2028-02-29T23:59:59Z") + 1000), "2028-03-01T00:00:00Z");
    }

    /// `(zone, now, window, window start, next reset)`, the expected instants written with the
    /// offset in force at each of them.
    fn check_zone(cases: &[(&str, &str, Window, &str, &str)]) {
        for &(zone, now, window, from, resets) in cases {
            let z = Zone::iana(zone).unwrap();
            let s = span_in(window, &z, at(now));
            assert_eq!(s.from, at(from) / 1000, "{zone} {window} at {now}: window start");
            assert_eq!(s.resets_at, Some(at(resets) / 1000), "{zone} {window} at {now}: next reset");
            assert_eq!(s.bucket, span_in(Window::Day, &z, at(now)).from, "{zone} {window} at {now}: today's bucket");
        }
    }

    #[test]
    fn days_in_an_iana_zone_are_23_and_25_hours_long_on_dst_changes() {
        check_zone(&[
            // Los Angeles springs forward on 2026-03-08 at 02:00 PST: a 23-hour day.
            ("America/Los_Angeles", "2026-03-08T01:59:59-08:00", Window::Day, "2026-03-08T00:00:00-08:00", "2026-03-09T00:00:00-07:00"),
            ("America/Los_Angeles", "2026-03-08T03:00:00-07:00", Window::Day, "2026-03-08T00:00:00-08:00", "2026-03-09T00:00:00-07:00"),
            ("America/Los_Angeles", "2026-03-08T23:59:59-07:00", Window::Day, "2026-03-08T00:00:00-08:00", "2026-03-09T00:00:00-07:00"),
            ("America/Los_Angeles", "2026-03-09T00:00:00-07:00", Window::Day, "2026-03-09T00:00:00-07:00", "2026-03-10T00:00:00-07:00"),
            // ... and falls back on 2026-11-01 at 02:00 PDT: a 25-hour day (01:30 happens twice).
            ("America/Los_Angeles", "2026-11-01T01:30:00-07:00", Window::Day, "2026-11-01T00:00:00-07:00", "2026-11-02T00:00:00-08:00"),
            ("America/Los_Angeles", "2026-11-01T01:30:00-08:00", Window::Day, "2026-11-01T00:00:00-07:00", "2026-11-02T00:00:00-08:00"),
            ("America/Los_Angeles", "2026-11-01T23:59:59-08:00", Window::Day, "2026-11-01T00:00:00-07:00", "2026-11-02T00:00:00-08:00"),
            // A week and a rolling window across the change keep whole local days.
            ("America/Los_Angeles", "2026-11-01T12:00:00-08:00", Window::Week, "2026-10-26T00:00:00-07:00", "2026-11-02T00:00:00-08:00"),
            ("America/Los_Angeles", "2026-03-09T10:00:00-07:00", Window::Rolling { days: 2 }, "2026-03-08T00:00:00-08:00", "2026-03-10T00:00:00-07:00"),
            // Month ends in local time, across a change and not.
            ("America/Los_Angeles", "2026-03-31T23:59:59-07:00", Window::Month, "2026-03-01T00:00:00-08:00", "2026-04-01T00:00:00-07:00"),
            ("America/Los_Angeles", "2026-04-01T00:00:00-07:00", Window::Month, "2026-04-01T00:00:00-07:00", "2026-05-01T00:00:00-07:00"),
            ("America/Los_Angeles", "2026-12-31T23:59:59-08:00", Window::Month, "2026-12-01T00:00:00-08:00", "2027-01-01T00:00:00-08:00"),
            ("America/Los_Angeles", "2028-02-29T20:00:00-08:00", Window::Month, "2028-02-01T00:00:00-08:00", "2028-03-01T00:00:00-08:00"),
            // Paris changes on other dates (last Sundays of March and October), at 02:00 / 03:00 local.
            ("Europe/Paris", "2026-03-29T12:00:00+02:00", Window::Day, "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
            ("Europe/Paris", "2026-10-25T12:00:00+01:00", Window::Day, "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
            ("Europe/Paris", "2026-10-31T23:30:00+01:00", Window::Month, "2026-10-01T00:00:00+02:00", "2026-11-01T00:00:00+01:00"),
            // The southern hemisphere: Sydney leaves DST on 2026-04-05 and enters it on 2026-10-04.
            ("Australia/Sydney", "2026-04-05T12:00:00+10:00", Window::Day, "2026-04-05T00:00:00+11:00", "2026-04-06T00:00:00+10:00"),
            ("Australia/Sydney", "2026-10-04T12:00:00+11:00", Window::Day, "2026-10-04T00:00:00+10:00", "2026-10-05T00:00:00+11:00"),
        ]);
    }

    #[test]
    fn the_offsets_over_a_period_list_each_dst_change() {
        let la = Zone::iana("America/Los_Angeles").unwrap();
        let (from, to) = (at("2026-01-01") / 1000, at("2027-01-01") / 1000);
        assert_eq!(
            la.offsets_between(from, to, 10),
            Some(vec![(from, -8 * 3600), (at("2026-03-08T10:00:00Z") / 1000, -7 * 3600), (at("2026-11-01T09:00:00Z") / 1000, -8 * 3600)])
        );
        assert_eq!(la.offsets_between(from, to, 1), None, "two changes, one allowed");
        assert_eq!(Zone::Fixed(-330).offsets_between(from, i64::MAX, 0), Some(vec![(from, -330 * 60)]));
        assert_eq!(la.local_date(at("2026-11-02T04:00:00Z") / 1000), "2026-11-01");
    }

    #[test]
    fn iana_zones_are_looked_up_in_the_bundled_database() {
        assert_eq!(Zone::iana("America/Los_Angeles").unwrap().iana_name(), Some("America/Los_Angeles"));
        for bad in ["Mars/Olympus_Mons", "", "+02:00", "America/ Los_Angeles"] {
            let err = Zone::iana(bad).unwrap_err();
            assert!(err.contains("IANA time zone"), "{bad}: {err}");
        }
        assert_ne!(Zone::iana("Europe/Paris").unwrap(), Zone::Fixed(60), "a zone is not its standard offset");
        assert_eq!(Zone::iana("Europe/Paris").unwrap(), Zone::iana("Europe/Paris").unwrap());
        // A fixed-offset zone and the old fixed-offset span agree everywhere.
        let now = at("2026-11-25T10:00:00Z");
        for w in [Window::Day, Window::Week, Window::Month, Window::Rolling { days: 3 }] {
            assert_eq!(span_in(w, &Zone::Fixed(-330), now), span(w, -330, now));
        }
    }
}
