//! The usage queue's policy: when to post a batch, how big, what a bound means, how a batch body
//! is built and an acknowledgement read.
//!
//! Records wait in an Envoy shared queue (process-wide), several per [`Item`]: a worker queues what
//! it settled since its last tick at once. A worker's tick takes up to `batch_size` of them into a
//! [`Batch`] when one is due ([`should_flush`]) and posts it; they leave for good only when the
//! counter acknowledges the batch. A failed or timed-out post puts every item back (the counter
//! ignores ids it has already counted, so redelivery never double-charges). The queue is bounded:
//! past `queue_bound` new records are dropped and counted, never silently. An item is laid out so
//! that none of this reads its records one by one (see [`Item`]).
//!
//! [`QueuedRecord`], [`item`] and [`from_item`] are the previous format (`/2`), still read so that
//! records queued by an earlier version in the same Envoy are delivered, and the simulation's unit.

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
    crate::json_writer::push_i64(out, n);
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

/// The first bytes of an item in the current format ([`Item`]).
const INDEXED: &[u8] = b"tollgate-usage/3\n";
/// Digits of the number that ends an [`Item`]: where its trailer starts.
const FOOTER: usize = 20;

/// One queue item of several records, laid out so that a tick delivers it without reading its
/// records one by one: the records' JSON comes first, already joined by `,` (a batch body takes
/// it with one copy), then a trailer with their total cost per scope (what the acknowledgement
/// moves in the book) and an index of the records (id, cost, JSON length, scopes), read only to
/// split an item or to name what is dropped. Reading every record back (the `/2` format: [`item`],
/// [`from_item`]) and copying its parts cost a tick thousands of instructions per record; this
/// costs a few hundred per item, plus one copy of the JSON into the body. A worker's outbox is an
/// `Item` too: a settled record is serialized into it once, and the tick queues it as it is.
///
/// Bytes: [`INDEXED`], the JSON, then the trailer: `\n<records> <scopes> <index length> `, per
/// scope `<len>:<scope><total> `, the index (per record
/// `<id len>:<id><cost> <json length> <scope count> (<scope number> )*`, scope numbers pointing
/// into the scope list), and last the trailer's offset in [`FOOTER`] zero-padded digits. Numbers
/// in decimal followed by a space, byte strings as `<length>:<bytes>`. Items of the older formats
/// (`/2`, JSON lines) are still read ([`Item::read`]), so records queued by a previous version in
/// the same Envoy are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// [`INDEXED`] and the JSON; in an item read from the queue, the trailer after it.
    bytes: Vec<u8>,
    json_end: usize,
    records: usize,
    /// Total cost (≥ 0) per scope, scopes in first-seen order.
    costs: Vec<(String, Micros)>,
    /// The index as it is built (an item read from the queue keeps it in `bytes`: `index_at`).
    index: Vec<u8>,
    index_at: (usize, usize),
}

impl Default for Item {
    fn default() -> Item {
        Item::new()
    }
}

/// One record's entry in an [`Item`]'s index.
struct Entry<'a> {
    id: &'a [u8],
    cost_micros: Micros,
    json_len: usize,
    scopes: Vec<usize>,
}

impl Item {
    /// An item with no record.
    pub fn new() -> Item {
        Item { bytes: INDEXED.to_vec(), json_end: INDEXED.len(), records: 0, costs: Vec::new(), index: Vec::new(), index_at: (0, 0) }
    }

    /// Appends a record (its JSON written here, once: [`UsageRecord::write_json`]).
    pub fn push(&mut self, record: &UsageRecord) {
        self.push_charged(record, &record.principal.scope_keys());
    }

    /// [`Item::push`] for a caller that holds the record's chain already (`chain` is
    /// `record.principal.scope_keys()`, e.g. the settled reservation's scopes): the keys are not
    /// built a second time on the settling request's path.
    pub fn push_charged(&mut self, record: &UsageRecord, chain: &[String]) {
        debug_assert_eq!(chain, record.principal.scope_keys(), "the chain of the record's own principal");
        self.reopen();
        if self.records > 0 {
            self.bytes.push(b',');
        }
        let body = self.bytes.len();
        record.write_json(&mut self.bytes);
        let json_len = self.bytes.len() - body;
        self.json_end = self.bytes.len();
        self.index_record(record.id.as_bytes(), record.cost_micros, json_len, chain.iter().map(String::as_bytes));
    }

    /// Appends a record's JSON (joined by `,`) and its index entry.
    fn push_raw<'s>(&mut self, id: &[u8], cost_micros: Micros, json: &[u8], scopes: impl ExactSizeIterator<Item = &'s [u8]>) {
        self.reopen();
        if self.records > 0 {
            self.bytes.push(b',');
        }
        self.bytes.extend_from_slice(json);
        self.json_end = self.bytes.len();
        self.index_record(id, cost_micros, json.len(), scopes);
    }

    /// Takes the trailer off (the index back out of it) so that records can be appended.
    fn reopen(&mut self) {
        if self.index_at.1 > 0 {
            self.index = self.bytes.get(self.index_at.0..self.index_at.1).unwrap_or_default().to_vec();
            self.index_at = (0, 0);
        }
        self.bytes.truncate(self.json_end);
    }

    /// Writes a record's index entry and adds its cost to its scopes.
    fn index_record<'s>(&mut self, id: &[u8], cost_micros: Micros, json_len: usize, scopes: impl ExactSizeIterator<Item = &'s [u8]>) {
        push_bytes(&mut self.index, id);
        push_number(&mut self.index, cost_micros);
        push_number(&mut self.index, i64::try_from(json_len).unwrap_or(i64::MAX));
        push_number(&mut self.index, i64::try_from(scopes.len()).unwrap_or(i64::MAX));
        let cost = cost_micros.max(0);
        for scope in scopes {
            let n = match self.costs.iter().position(|(s, _)| s.as_bytes() == scope) {
                Some(n) => {
                    if let Some((_, total)) = self.costs.get_mut(n) {
                        *total = total.saturating_add(cost);
                    }
                    n
                }
                None => {
                    self.costs.push((String::from_utf8_lossy(scope).into_owned(), cost));
                    self.costs.len() - 1
                }
            };
            push_number(&mut self.index, i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.records += 1;
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Total cost per scope, for [`super::chain::acknowledge`].
    pub fn costs(&self) -> &[(String, Micros)] {
        &self.costs
    }

    /// The records' JSON, joined by `,`.
    fn json(&self) -> &[u8] {
        self.bytes.get(INDEXED.len()..self.json_end).unwrap_or_default()
    }

    fn index_bytes(&self) -> &[u8] {
        if self.index_at.1 > 0 {
            self.bytes.get(self.index_at.0..self.index_at.1).unwrap_or_default()
        } else {
            &self.index
        }
    }

    /// Empties it, keeping its buffers for the next records.
    pub fn clear(&mut self) {
        self.bytes.truncate(INDEXED.len());
        self.json_end = INDEXED.len();
        self.records = 0;
        self.costs.clear();
        self.index.clear();
        self.index_at = (0, 0);
    }

    /// The item as the queue holds it (the trailer is written after the JSON in place: the JSON
    /// is not copied).
    pub fn bytes(&mut self) -> &[u8] {
        if self.index_at.1 == 0 {
            self.bytes.truncate(self.json_end);
            let trailer = self.bytes.len();
            self.bytes.push(b'\n');
            for n in [self.records, self.costs.len(), self.index.len()] {
                push_number(&mut self.bytes, i64::try_from(n).unwrap_or(i64::MAX));
            }
            for (scope, total) in &self.costs {
                push_bytes(&mut self.bytes, scope.as_bytes());
                push_number(&mut self.bytes, *total);
            }
            let index = self.bytes.len();
            self.bytes.extend_from_slice(&self.index);
            self.index_at = (index, self.bytes.len());
            self.index.clear();
            let mut footer = [b'0'; FOOTER];
            let mut rest = trailer;
            for d in footer.iter_mut().rev() {
                *d = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            self.bytes.extend_from_slice(&footer);
        }
        &self.bytes
    }

    /// Reads a dequeued item: the item, and how many records were unreadable (dropped and
    /// counted by the caller). A damaged item of this format is dropped whole (counted as the
    /// records its trailer announces, or one); older formats are read as before ([`from_item`]: a
    /// damaged record counts as one, the others are kept) and indexed afresh.
    pub fn read(bytes: Vec<u8>) -> (Item, u64) {
        if !bytes.starts_with(INDEXED) {
            let (records, garbage) = from_item(&bytes);
            let mut item = Item::new();
            for r in &records {
                item.push_raw(r.id.as_bytes(), r.cost_micros, &r.json, r.scopes.iter().map(String::as_bytes));
            }
            return (item, garbage);
        }
        let trailer = bytes
            .len()
            .checked_sub(FOOTER)
            .and_then(|at| bytes.get(at..))
            .filter(|d| d.iter().all(u8::is_ascii_digit))
            .map(|d| d.iter().fold(0usize, |n, d| n.saturating_mul(10).saturating_add(usize::from(d - b'0'))));
        let Some(trailer) = trailer.filter(|t| *t >= INDEXED.len() && t.checked_add(1 + FOOTER).is_some_and(|end| end <= bytes.len())) else {
            return (Item::new(), 1);
        };
        let mut frames = Frames { rest: bytes.get(trailer + 1..bytes.len() - FOOTER).unwrap_or_default() };
        let Some(records) = frames.number(b' ').and_then(|n| usize::try_from(n).ok()) else { return (Item::new(), 1) };
        let mut header = || -> Option<(Vec<(String, Micros)>, usize)> {
            let scopes = usize::try_from(frames.number(b' ')?).ok()?;
            let index = usize::try_from(frames.number(b' ')?).ok()?;
            let mut costs = Vec::with_capacity(scopes.min(64));
            for _ in 0..scopes {
                let scope = std::str::from_utf8(frames.bytes()?).ok()?.to_owned();
                costs.push((scope, frames.number(b' ')?));
            }
            (frames.rest.len() == index).then_some((costs, index))
        };
        let Some((costs, index)) = header() else { return (Item::new(), u64::try_from(records.max(1)).unwrap_or(u64::MAX)) };
        let index_end = bytes.len() - FOOTER;
        let index_at = (index_end - index, index_end);
        (Item { bytes, json_end: trailer, records, costs, index: Vec::new(), index_at }, 0)
    }

    /// The index's entries, in order (`None` if it is damaged).
    fn entries(&self) -> Option<Vec<Entry<'_>>> {
        let mut frames = Frames { rest: self.index_bytes() };
        let mut out = Vec::with_capacity(self.records);
        while !frames.rest.is_empty() {
            let id = frames.bytes()?;
            let cost_micros = frames.number(b' ')?;
            let json_len = usize::try_from(frames.number(b' ')?).ok()?;
            let count = usize::try_from(frames.number(b' ')?).ok()?;
            let mut scopes = Vec::with_capacity(count.min(16));
            for _ in 0..count {
                scopes.push(usize::try_from(frames.number(b' ')?).ok()?);
            }
            out.push(Entry { id, cost_micros, json_len, scopes });
        }
        (out.len() == self.records).then_some(out)
    }

    /// Its records in items of at most `max` (reads the index, one pass: for an outbox bigger
    /// than a batch, or a predecessor's item bigger than this configuration's batch). An item
    /// whose index is damaged stays whole.
    pub fn into_chunks(self, max: usize) -> Vec<Item> {
        let max = max.max(1);
        if self.records <= max {
            return vec![self];
        }
        let Some(entries) = self.entries() else { return vec![self.clone()] };
        let json = self.json();
        let mut out: Vec<Item> = Vec::new();
        let mut offset = 0usize;
        for (n, entry) in entries.iter().enumerate() {
            if n % max == 0 {
                out.push(Item::new());
            }
            let Some(part) = out.last_mut() else { break };
            let record = json.get(offset..offset.saturating_add(entry.json_len)).unwrap_or_default();
            offset = offset.saturating_add(entry.json_len).saturating_add(1);
            let scopes: Vec<&[u8]> = entry.scopes.iter().map(|&i| self.costs.get(i).map_or(&b""[..], |(s, _)| s.as_bytes())).collect();
            part.push_raw(entry.id, entry.cost_micros, record, scopes.into_iter());
        }
        out
    }

    /// The records from `at` on, moved into an item of their own (see [`Item::into_chunks`]).
    pub fn split_off(&mut self, at: usize) -> Item {
        if at >= self.records {
            return Item::new();
        }
        let whole = std::mem::take(self);
        let mut head = Item::new();
        let mut tail = Item::new();
        for (n, chunk) in whole.into_chunks(1).into_iter().enumerate() {
            let part = if n < at { &mut head } else { &mut tail };
            part.append(&chunk);
        }
        *self = head;
        tail
    }

    /// Appends another item's records (through its index).
    fn append(&mut self, other: &Item) {
        let Some(entries) = other.entries() else { return };
        let json = other.json();
        let mut offset = 0usize;
        for entry in &entries {
            let record = json.get(offset..offset.saturating_add(entry.json_len)).unwrap_or_default();
            offset = offset.saturating_add(entry.json_len).saturating_add(1);
            let scopes: Vec<&[u8]> = entry.scopes.iter().map(|&i| other.costs.get(i).map_or(&b""[..], |(s, _)| s.as_bytes())).collect();
            self.push_raw(entry.id, entry.cost_micros, record, scopes.into_iter());
        }
    }

    /// The first `n` records' ids (for a log line).
    pub fn first_ids(&self, n: usize) -> Vec<String> {
        let mut frames = Frames { rest: self.index_bytes() };
        let mut out = Vec::new();
        while out.len() < n && !frames.rest.is_empty() {
            let Some(id) = frames.bytes() else { break };
            out.push(String::from_utf8_lossy(id).into_owned());
            let count = (|| {
                frames.number(b' ')?;
                frames.number(b' ')?;
                usize::try_from(frames.number(b' ')?).ok()
            })();
            let Some(count) = count else { break };
            for _ in 0..count {
                if frames.number(b' ').is_none() {
                    break;
                }
            }
        }
        out
    }
}

/// The next `POST /v1/usage`, assembled item by item as a worker dequeues them (each item's JSON
/// copied into the body once), with the items kept to be put back if the post fails and their
/// costs per scope summed for the acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    items: Vec<Item>,
    /// The most records it will hold (`batch_size`): sizes the body once.
    batch_size: usize,
    records: usize,
    /// `{"gateway_id":…,"records":[` and the records' JSON so far.
    body: Vec<u8>,
    costs: Vec<(String, Micros)>,
}

impl Batch {
    pub fn new(gateway_id: &str, batch_size: usize) -> Batch {
        let id = serde_json::to_string(gateway_id).unwrap_or_else(|_| "\"\"".to_owned());
        let mut body = Vec::with_capacity(id.len() + 32);
        body.extend_from_slice(b"{\"gateway_id\":");
        body.extend_from_slice(id.as_bytes());
        body.extend_from_slice(b",\"records\":[");
        Batch { items: Vec::new(), batch_size, records: 0, body, costs: Vec::new() }
    }

    /// Adds an item's records: its JSON copied into the body at once, its totals per scope added.
    pub fn add(&mut self, item: Item) {
        if item.is_empty() {
            return;
        }
        let json = item.json();
        if self.records == 0 {
            // Room for a whole batch of records like these at once, not a doubling per item.
            let per_record = json.len() / item.records.max(1) + 1;
            self.body.reserve(per_record.saturating_mul(self.batch_size.max(item.records)));
        } else {
            self.body.push(b',');
        }
        self.body.extend_from_slice(json);
        for (scope, cost) in &item.costs {
            match self.costs.iter_mut().find(|(s, _)| s == scope) {
                Some((_, total)) => *total = total.saturating_add(*cost),
                None => self.costs.push((scope.clone(), *cost)),
            }
        }
        self.records += item.records;
        self.items.push(item);
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Closes the body, with `guard_events` (a JSON array; empty: none) after the records, and
    /// returns it with the batch that must wait for its acknowledgement.
    pub fn finish(self, guard_events: &[u8], sent_at_ms: i64) -> (Vec<u8>, InFlightBatch) {
        let Batch { items, records, mut body, costs, .. } = self;
        body.push(b']');
        if !guard_events.is_empty() {
            body.extend_from_slice(b",\"guard_events\":");
            body.extend_from_slice(guard_events);
        }
        body.push(b'}');
        (body, InFlightBatch { items, records, costs, sent_at_ms })
    }
}

/// A batch posted and not yet answered: its items (to put back if the post fails) and what its
/// acknowledgement moves in the book.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlightBatch {
    pub items: Vec<Item>,
    pub records: usize,
    /// Total cost per scope, for [`super::chain::acknowledge`].
    pub costs: Vec<(String, Micros)>,
    pub sent_at_ms: i64,
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

    fn items_of(records: &[UsageRecord]) -> Item {
        let mut item = Item::new();
        for r in records {
            item.push(r);
        }
        item
    }

    fn body_records(item: &Item) -> Vec<UsageRecord> {
        let mut batch = Batch::new("g", 10);
        batch.add(item.clone());
        let (body, _) = batch.finish(b"", 0);
        serde_json::from_slice::<UsageBatch>(&body).unwrap().records
    }

    #[test]
    fn an_indexed_item_reads_back_with_its_totals_and_joins_a_batch_body() {
        let records = [record("a", "x", 10), record("b\n", "y", 20), record("c", "x", -5)];
        let mut item = items_of(&records);
        assert_eq!(item.costs(), [("team:x".into(), 10), ("user:u".into(), 30), ("team:y".into(), 20)]);
        let (back, garbage) = Item::read(item.bytes().to_vec());
        assert_eq!(garbage, 0);
        assert_eq!(back.len(), 3);
        assert_eq!(back.costs(), item.costs());
        assert_eq!(back.first_ids(5), ["a", "b\n", "c"]);
        assert_eq!(body_records(&back), records);
        let (empty, garbage) = Item::read(Item::new().bytes().to_vec());
        assert_eq!((empty.len(), garbage), (0, 0));
    }

    #[test]
    fn a_batch_sums_its_items_and_closes_with_guard_events() {
        let mut batch = Batch::new("gw \"1\"", 500);
        batch.add(items_of(&[record("a", "x", 1)]));
        batch.add(items_of(&[record("b", "y", 2), record("c", "x", 3)]));
        assert_eq!(batch.len(), 3);
        let (body, in_flight) = batch.finish(b"[]", 7);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["gateway_id"], "gw \"1\"");
        assert_eq!(parsed["records"].as_array().map(Vec::len), Some(3));
        assert_eq!(parsed["guard_events"], serde_json::json!([]));
        assert_eq!((in_flight.records, in_flight.items.len(), in_flight.sent_at_ms), (3, 2, 7));
        assert_eq!(in_flight.costs, [("team:x".into(), 4), ("user:u".into(), 6), ("team:y".into(), 2)]);
    }

    #[test]
    fn an_item_splits_into_chunks_that_keep_every_record_and_cost() {
        let records: Vec<_> = (0..7).map(|i| record(&format!("r{i}"), if i % 2 == 0 { "x" } else { "y" }, i)).collect();
        let mut item = items_of(&records);
        let (read, _) = Item::read(item.bytes().to_vec());
        let chunks = read.into_chunks(3);
        assert_eq!(chunks.iter().map(Item::len).collect::<Vec<_>>(), [3, 3, 1]);
        let all: Vec<UsageRecord> = chunks.iter().flat_map(body_records).collect();
        assert_eq!(all, records);
        let mut head = items_of(&records);
        let tail = head.split_off(5);
        assert_eq!((head.len(), tail.len()), (5, 2));
        assert_eq!(body_records(&tail), records[5..]);
        assert_eq!(tail.costs(), [("team:y".into(), 5), ("user:u".into(), 11), ("team:x".into(), 6)]);
        assert_eq!(head.costs(), costs_by_scope(&records[..5].iter().filter_map(QueuedRecord::from_record).collect::<Vec<_>>()));
        // An item written to the queue and then appended to again keeps its earlier records.
        let mut reopened = items_of(&records[..2]);
        let _ = reopened.bytes();
        reopened.push(&records[2]);
        assert_eq!(Item::read(reopened.bytes().to_vec()).0.first_ids(5), ["r0", "r1", "r2"]);
    }

    /// Items queued by the previous version (framed `/2`) and the one before (JSON lines) are
    /// still delivered, with their costs.
    #[test]
    fn items_of_older_formats_read_into_indexed_items() {
        let records = [record("a", "x", 1), record("b", "y", 2)];
        let queued: Vec<_> = records.iter().filter_map(QueuedRecord::from_record).collect();
        let lines: Vec<u8> = queued.iter().map(|r| r.json.clone()).collect::<Vec<_>>().join(&b'\n');
        for old in [item(&queued), lines] {
            let (read, garbage) = Item::read(old);
            assert_eq!((read.len(), garbage), (2, 0));
            assert_eq!(body_records(&read), records);
            assert_eq!(read.costs(), costs_by_scope(&queued));
        }
    }

    #[test]
    fn a_damaged_indexed_item_is_counted_not_delivered() {
        let mut item = items_of(&[record("a", "x", 1), record("b", "y", 2)]);
        let bytes = item.bytes().to_vec();
        assert_eq!(Item::read(bytes[..bytes.len() - 1].to_vec()).1, 1, "a cut footer");
        let mut wrong = bytes.clone();
        let at = bytes.len() - FOOTER - 3;
        wrong.remove(at);
        let (read, garbage) = Item::read(wrong);
        assert!(read.is_empty());
        assert!(garbage >= 1);
    }

    /// Whatever a damaged item holds, reading it, splitting it and naming its records never panics.
    #[test]
    fn every_cut_or_altered_byte_of_an_item_is_read_or_counted_never_a_panic() {
        let records: Vec<_> = (0..3).map(|i| record(&format!("r{i}"), "x", i)).collect();
        let bytes = items_of(&records).bytes().to_vec();
        for at in 0..bytes.len() {
            for damaged in [bytes[..at].to_vec(), { let mut b = bytes.clone(); b[at] = b'9'; b }, { let mut b = bytes.clone(); b[at] = b':'; b }] {
                let (item, garbage) = Item::read(damaged);
                assert!(item.len() + garbage as usize >= 1 || at < INDEXED.len());
                let _ = item.first_ids(5);
                let _ = item.clone().into_chunks(1);
                let _ = item.clone().split_off(1);
            }
        }
    }
}
