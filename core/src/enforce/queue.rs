//! The usage queue's policy: when to post a batch, how big, what a bound means, how a batch body
//! is built and an acknowledgement read.
//!
//! Records wait in an Envoy shared queue (process-wide), several per item ([`item`]: a worker
//! queues what it settled since its last tick at once). A worker's tick takes up to
//! `batch_size` of them into an [`InFlightBatch`] and posts it; they leave for good only when the
//! counter acknowledges the batch. A failed or timed-out post puts every record back (the counter
//! ignores ids it has already counted, so redelivery never double-charges). The queue is bounded:
//! past `queue_bound` new records are dropped and counted, never silently.

use super::config::EnforcementSettings;
use crate::money::Micros;
use crate::protocol::{UsageAck, UsageRecord};

/// Whether a worker should post now: nothing of its own in flight, something queued, and either a
/// full batch or the flush interval has passed since its last post.
pub fn should_flush(queued: usize, ms_since_last_post: i64, in_flight: bool, settings: &EnforcementSettings) -> bool {
    if in_flight || queued == 0 {
        return false;
    }
    let interval = i64::try_from(settings.flush_interval_ms).unwrap_or(i64::MAX);
    queued >= settings.batch_size || ms_since_last_post >= interval
}

/// Whether one more record may join a queue holding `queued` (redeliveries always may: they were
/// admitted once and only left to be posted).
pub fn admits(queued: usize, settings: &EnforcementSettings) -> bool {
    queued < settings.queue_bound
}

/// One queued record: its JSON as enqueued, plus what acknowledgement needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedRecord {
    pub json: Vec<u8>,
    pub id: String,
    pub cost_micros: Micros,
    pub scopes: Vec<String>,
}

impl QueuedRecord {
    /// Serializes a record for the queue.
    pub fn from_record(record: &UsageRecord) -> Option<QueuedRecord> {
        let json = serde_json::to_vec(record).ok()?;
        Some(QueuedRecord {
            json,
            id: record.id.clone(),
            cost_micros: record.cost_micros,
            scopes: record.principal.scope_keys(),
        })
    }

    /// Reads a record back from the queue; `None` for bytes that are not a record (dropped and
    /// counted by the caller).
    pub fn from_queue(bytes: Vec<u8>) -> Option<QueuedRecord> {
        let record: UsageRecord = serde_json::from_slice(&bytes).ok()?;
        Some(QueuedRecord {
            id: record.id,
            cost_micros: record.cost_micros,
            scopes: record.principal.scope_keys(),
            json: bytes,
        })
    }
}

/// The first bytes of a framed queue item ([`item`]).
const FRAMED: &[u8] = b"tollgate-usage/2\n";

/// One shared-queue item holding several records. A worker enqueues what it settled since its
/// last tick as one item, so the queue costs a host call per tick, not per request.
///
/// Framed so that reading it back needs no JSON parsing (parsing every record again on the tick
/// cost more than serializing it): after [`FRAMED`], per record, its cost, id, scopes and JSON,
/// numbers in decimal followed by a space, byte strings as `<length>:<bytes>`:
/// `<cost> <id len>:<id><scope count> (<len>:<scope>)* <json len>:<json>`.
/// Items of the older format (the records' JSON joined by `\n`) are still read, so records
/// queued by a previous version of the filter in the same Envoy are delivered, not dropped.
pub fn item(records: &[QueuedRecord]) -> Vec<u8> {
    let size = records.iter().map(|r| r.json.len() + r.id.len() + r.scopes.iter().map(|s| s.len() + 8).sum::<usize>() + 40).sum::<usize>();
    let mut out = Vec::with_capacity(FRAMED.len() + size);
    out.extend_from_slice(FRAMED);
    for record in records {
        push_number(&mut out, record.cost_micros);
        push_bytes(&mut out, record.id.as_bytes());
        push_number(&mut out, i64::try_from(record.scopes.len()).unwrap_or(i64::MAX));
        for scope in &record.scopes {
            push_bytes(&mut out, scope.as_bytes());
        }
        push_bytes(&mut out, &record.json);
    }
    out
}

fn push_number(out: &mut Vec<u8>, n: i64) {
    push_digits(out, n);
    out.push(b' ');
}

fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    push_digits(out, i64::try_from(bytes.len()).unwrap_or(i64::MAX));
    out.push(b':');
    out.extend_from_slice(bytes);
}

/// `n` in decimal, with a `-` if negative.
fn push_digits(out: &mut Vec<u8>, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            *d = b'0' + (rest % 10) as u8;
        }
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(digits.get(at..).unwrap_or_default());
}

/// Reads a framed item field by field.
struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Digits (with an optional `-`) up to `end`.
    fn number(&mut self, end: u8) -> Option<i64> {
        let stop = self.rest.iter().position(|&b| b == end)?;
        let (text, rest) = self.rest.split_at(stop);
        self.rest = rest.get(1..)?;
        let (negative, digits) = match text.split_first() {
            Some((b'-', digits)) => (true, digits),
            _ => (false, text),
        };
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = digits.iter().try_fold(0i64, |n, d| n.checked_mul(10)?.checked_add(i64::from(d - b'0')))?;
        Some(if negative { -value } else { value })
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.number(b':')?).ok()?;
        let bytes = self.rest.get(..len)?;
        self.rest = self.rest.get(len..)?;
        Some(bytes)
    }

    fn record(&mut self) -> Option<QueuedRecord> {
        let cost_micros = self.number(b' ')?;
        let id = String::from_utf8(self.bytes()?.to_vec()).ok()?;
        let count = usize::try_from(self.number(b' ')?).ok()?;
        let mut scopes = Vec::with_capacity(count.min(16));
        for _ in 0..count {
            scopes.push(String::from_utf8(self.bytes()?.to_vec()).ok()?);
        }
        let json = self.bytes()?.to_vec();
        Some(QueuedRecord { json, id, cost_micros, scopes })
    }
}

/// Reads a queue item back: its records, and how many were unreadable (dropped and counted by
/// the caller; in a framed item, a damaged record ends the item and counts as one).
pub fn from_item(bytes: &[u8]) -> (Vec<QueuedRecord>, u64) {
    let mut records = Vec::new();
    let mut garbage = 0u64;
    if let Some(body) = bytes.strip_prefix(FRAMED) {
        let mut frames = Frames { rest: body };
        while !frames.rest.is_empty() {
            match frames.record() {
                Some(r) => records.push(r),
                None => {
                    garbage += 1;
                    break;
                }
            }
        }
        return (records, garbage);
    }
    for line in bytes.split(|b| *b == b'\n') {
        match QueuedRecord::from_queue(line.to_vec()) {
            Some(r) => records.push(r),
            None => garbage += 1,
        }
    }
    (records, garbage)
}

/// A batch posted and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightBatch {
    pub records: Vec<QueuedRecord>,
    pub sent_at_ms: i64,
}

impl InFlightBatch {
    /// Total cost per scope, for [`super::chain::acknowledge`].
    pub fn costs_by_scope(&self) -> Vec<(String, Micros)> {
        costs_by_scope(&self.records)
    }
}

/// Total cost per scope of some records, scopes in first-seen order.
pub fn costs_by_scope(records: &[QueuedRecord]) -> Vec<(String, Micros)> {
    let mut out: Vec<(String, Micros)> = Vec::new();
    for record in records {
        for scope in &record.scopes {
            match out.iter_mut().find(|(s, _)| s == scope) {
                Some((_, total)) => *total = total.saturating_add(record.cost_micros.max(0)),
                None => out.push((scope.clone(), record.cost_micros.max(0))),
            }
        }
    }
    out
}

/// The `POST /v1/usage` body (`UsageBatch`), assembled from the records' JSON as queued, without
/// re-serializing them.
pub fn batch_body(gateway_id: &str, records: &[QueuedRecord]) -> Vec<u8> {
    let id = serde_json::to_string(gateway_id).unwrap_or_else(|_| "\"\"".to_owned());
    let size = records.iter().map(|r| r.json.len() + 1).sum::<usize>();
    let mut body = Vec::with_capacity(size + id.len() + 32);
    body.extend_from_slice(b"{\"gateway_id\":");
    body.extend_from_slice(id.as_bytes());
    body.extend_from_slice(b",\"records\":[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&record.json);
    }
    body.extend_from_slice(b"]}");
    body
}

/// Reads the counter's answer to a usage post: `Ok` only for a 200 with a well-formed
/// acknowledgement that accounts for every record sent.
pub fn read_ack(status: Option<u16>, body: &[u8], sent: usize) -> Result<UsageAck, String> {
    match status {
        Some(200) => {}
        Some(code) => return Err(format!("counter answered HTTP {code}: {}", String::from_utf8_lossy(body.get(..body.len().min(300)).unwrap_or_default()))),
        None => return Err("no answer (timeout or connection failure)".to_owned()),
    }
    let ack: UsageAck = serde_json::from_slice(body).map_err(|e| format!("unreadable acknowledgement: {e}"))?;
    if ack.accepted.saturating_add(ack.duplicates) != sent as u64 {
        return Err(format!(
            "acknowledgement covers {} records, {sent} were sent",
            ack.accepted.saturating_add(ack.duplicates)
        ));
    }
    Ok(ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforce::config::test_settings;
    use crate::protocol::{Principal, Tokens, UsageBatch};

    fn record(id: &str, team: &str, cost: Micros) -> UsageRecord {
        UsageRecord {
            id: id.into(),
            principal: Principal { team: Some(team.into()), user: Some("u".into()), ..Default::default() },
            dialect: "openai".into(),
            requested_model: "m".into(),
            routed_model: "m".into(),
            tokens: Tokens { input: 10, output: 5, ..Default::default() },
            cost_micros: cost,
            status: 200,
            estimated: false,
            started_at_ms: 1,
            finished_at_ms: 2,
            p99_reservations: Vec::new(),
        }
    }

    #[test]
    fn flushes_on_a_full_batch_or_on_the_interval_never_twice_at_once() {
        let s = test_settings();
        assert!(!should_flush(0, 10_000, false, &s), "nothing to send");
        assert!(!should_flush(1, 10, false, &s), "wait for more");
        assert!(should_flush(1, 1_000, false, &s), "interval passed");
        assert!(should_flush(s.batch_size, 0, false, &s), "batch full");
        assert!(!should_flush(s.batch_size, 5_000, true, &s), "one batch in flight per worker");
    }

    #[test]
    fn the_bound_is_the_configured_one() {
        let s = test_settings();
        assert!(admits(s.queue_bound - 1, &s));
        assert!(!admits(s.queue_bound, &s));
    }

    #[test]
    fn a_batch_body_is_a_usage_batch_the_counter_reads() {
        let records: Vec<_> =
            [record("g1-a", "x", 10), record("g1-b", "y", 20)].iter().filter_map(QueuedRecord::from_record).collect();
        let body = batch_body("gw \"1\"", &records);
        let batch: UsageBatch = serde_json::from_slice(&body).unwrap();
        assert_eq!(batch.gateway_id, "gw \"1\"");
        assert_eq!(batch.records, [record("g1-a", "x", 10), record("g1-b", "y", 20)]);
        let empty: UsageBatch = serde_json::from_slice(&batch_body("g", &[])).unwrap();
        assert!(empty.records.is_empty());
    }

    #[test]
    fn queued_records_round_trip_and_sum_per_scope() {
        let q = QueuedRecord::from_record(&record("a", "x", 10)).unwrap();
        let back = QueuedRecord::from_queue(q.json.clone()).unwrap();
        assert_eq!(back, q);
        assert_eq!(QueuedRecord::from_queue(b"not json".to_vec()), None);
        let r2 = QueuedRecord::from_record(&record("b", "y", 5)).unwrap();
        assert_eq!(costs_by_scope(&[q, r2]), [("team:x".into(), 10), ("user:u".into(), 15), ("team:y".into(), 5)]);
    }

    #[test]
    fn an_item_carries_several_records_and_reads_back_exactly() {
        let records: Vec<_> =
            [record("a", "x", 1), record("b\n", "y", 2), record("c", "z", 3)].iter().filter_map(QueuedRecord::from_record).collect();
        let bytes = item(&records);
        assert_eq!(from_item(&bytes), (records.clone(), 0), "a newline inside an id is escaped in JSON");
        assert_eq!(from_item(&item(&records[..1])), (records[..1].to_vec(), 0));
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(b"12 not a record");
        assert_eq!(from_item(&damaged), (records.clone(), 1), "a damaged tail is counted, the rest kept");
        assert_eq!(from_item(&bytes[..bytes.len() - 1]), (records[..2].to_vec(), 1), "a cut record is counted");
        assert_eq!(from_item(&item(&[])), (vec![], 0));
    }

    /// Items queued by an earlier version of the filter (JSON lines) are still delivered.
    #[test]
    fn items_of_the_older_json_lines_format_still_read() {
        let records: Vec<_> = [record("a", "x", 1), record("b", "y", 2)].iter().filter_map(QueuedRecord::from_record).collect();
        let old: Vec<u8> = records.iter().map(|r| r.json.clone()).collect::<Vec<_>>().join(&b'\n');
        assert_eq!(from_item(&old), (records.clone(), 0));
        let mut damaged = old.clone();
        damaged.extend_from_slice(b"\nnot json");
        assert_eq!(from_item(&damaged), (records, 1), "garbage lines are counted, the rest kept");
    }

    #[test]
    fn framed_numbers_round_trip_at_their_limits() {
        for cost in [0, 1, -1, 9, 10, i64::MAX, i64::MIN + 1] {
            let mut q = QueuedRecord::from_record(&record("a", "x", 1)).unwrap();
            q.cost_micros = cost;
            assert_eq!(from_item(&item(std::slice::from_ref(&q))), (vec![q], 0), "{cost}");
        }
    }

    #[test]
    fn only_a_complete_acknowledgement_lets_records_go() {
        assert_eq!(read_ack(Some(200), br#"{"accepted":2,"duplicates":1}"#, 3).map(|a| a.accepted), Ok(2));
        assert!(read_ack(Some(200), br#"{"accepted":1,"duplicates":0}"#, 3).is_err(), "partial");
        assert!(read_ack(Some(200), b"garbage", 1).is_err());
        assert!(read_ack(Some(503), b"{}", 1).unwrap_err().contains("503"));
        assert!(read_ack(None, b"", 1).is_err());
    }
}
