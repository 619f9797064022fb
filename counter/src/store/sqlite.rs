//! The embedded backend: SQLite in WAL mode, one writer thread, hot state in a [`Book`].
//!
//! # Why SQLite (and not redb)
//! The ledger must answer ad-hoc `GROUP BY` reports (org, team, model, day, ...) for finance; SQL
//! does that in one query where a key-value store would need hand-written scans and indexes. SQLite
//! is a single file an operator can copy, inspect with `sqlite3` and back up with `.backup`; WAL
//! mode lets reports read while the writer writes. The bundled build needs no system library.
//!
//! # How a write becomes durable
//! Every write goes through **one writer thread** that owns the write connection, so there is never
//! lock contention inside SQLite. Usage batches waiting in its queue are **group-committed**: one
//! `BEGIN IMMEDIATE … COMMIT` covers all of them (up to [`SqliteOptions::max_group_records`]).
//! Inside, each record is an `INSERT OR IGNORE` into the ledger keyed by (finish time, record id)
//! — the primary key is the idempotency check, so a gateway's re-send within a batch, across
//! batches or across restarts is caught by the same rule — and per-(budget, day) spend deltas are
//! upserted into `spend` in the same transaction. Only after `COMMIT` returns are the deltas
//! applied to the in-memory book and the HTTP acks released. A failed transaction rolls back
//! whole, so nothing is half-applied.
//!
//! With `synchronous=FULL` (the default) SQLite fsyncs the WAL at every commit: an acknowledged
//! record survives a process kill **and** an OS crash or power loss. With `synchronous=NORMAL` the
//! WAL is fsynced only at checkpoints: acknowledged records survive `kill -9` (they are in the OS
//! page cache) but the last commits can be lost on power failure. Group commit is what keeps FULL
//! fast: one fsync per group, not per batch.
//!
//! Lease grants are durable too. The `leases` table holds, per (budget, holder), an **upper
//! bound** on the slice the holder may hold (the holder is the gateway, or `gateway@scope key` for
//! a selector budget, whose slices are kept per matched key): `micros` and `expires_at_ms`. A grant is reserved in
//! the book under its lock; if the durable bound already covers it (at least as many micros, an
//! expiry at least as late) it is answered at once, otherwise a new bound — the granted micros and
//! an expiry of `now + 2 × lease_ttl` — rides the same group commit as usage and the answer waits
//! for `COMMIT`. A live bound only grows (`MAX` of both columns); an expired one is replaced. So a
//! steady gateway renewing the same slice writes about once per `lease_ttl`, not once per call.
//! After a crash every unexpired bound is restored as the slice: a restart cannot hand out
//! headroom a gateway still holds; it can only hold back more than needed, for at most
//! `2 × lease_ttl`. Usage that shrinks a slice is not re-written, for the same reason.
//!
//! # Why the ledger is keyed by finish time first
//! A record id begins with the request's `x-request-id`, a random UUID. Keyed by id alone, every
//! insert landed on its own b-tree page: a commit of 260 records wrote ~260 pages (4 KiB each) to
//! the WAL and, once the ledger outgrew the page cache, read them back first — 30 µs of the
//! counter's CPU per record in `make bench`'s enforce case. Records arrive in about the order they
//! finished, so under `(finished_at_ms, id)` inserts land at the b-tree's right edge and a commit
//! writes about one page per dozen records (8 µs per record; BENCHMARKS.md). The key also serves
//! the reports that read by finish time, which needed an index of their own before.
//!
//! What it changes: a duplicate is a record sent again as it was (a gateway's retry re-sends the
//! queued record byte for byte, so its finish time is the same). A record that reused an id with a
//! different finish time would be counted, where the Redis store, keyed by id alone, would not;
//! a gateway never sends one (an id is gateway id, request id, a tag unique to the VM and the
//! request's context id), see the [`Store`] contract. A ledger from before this key is rewritten
//! under it once, at open (`rekey_ledger`).

mod requests;
mod gov;
mod events;
mod task;

use super::book::{Book, Charges, Spend};
use super::RequestsQuery;
use tollgate_core::protocol::UsageRecord;
use super::{starts_from_ledger, AuditEntry, AuditQuery, BudgetState, GroupBy, LedgerStart, PutOutcome, ReportQuery, ReportRow, Store, StoreError, StoreResult};
use tollgate_core::protocol::Principal;
use crate::budget::{Budget, BudgetSpec, Exemption};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};
use tollgate_core::protocol::{GuardAnswer, GuardEvent, LeaseRequest, LeaseResponse, UsageAck, UsageBatch};

/// How SQLite syncs commits to disk. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a lease slice lives unless renewed.
    pub lease_ttl_ms: i64,
    pub synchronous: Synchronous,
    /// Upper bound of records in one group commit.
    pub max_group_records: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions { lease_ttl_ms: 30_000, synchronous: Synchronous::Full, max_group_records: 50_000 }
    }
}

/// The file inside the data directory.
pub const DB_FILE: &str = "counter.sqlite3";

/// Rewrites a ledger keyed by record id alone (databases from before the ledger was keyed by
/// finish time, see the module docs) under [`SCHEMA`]'s key, in one transaction: every row is kept,
/// and the indexes are rebuilt by [`SCHEMA`]. Runs before [`SCHEMA`]; a no-op on a new or already
/// rewritten database. Takes time in proportion to the ledger, once.
fn rekey_ledger(conn: &Connection) -> StoreResult<()> {
    let keyed_by_id_alone = conn
        .query_row("SELECT COUNT(*) FROM pragma_table_info('ledger') WHERE name = 'id' AND pk = 1", [], |r| r.get::<_, i64>(0))
        .map_err(internal)?
        > 0;
    if !keyed_by_id_alone {
        return Ok(());
    }
    let rewrite = || -> rusqlite::Result<()> {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             ALTER TABLE ledger RENAME TO ledger_keyed_by_id;
             DROP INDEX IF EXISTS ledger_task;
             DROP INDEX IF EXISTS ledger_task_set;",
        )?;
        conn.execute_batch(SCHEMA)?;
        // By name, not position: an old ledger's columns need not be in today's order. In key
        // order (the old `ledger_finished` index holds it), so the copy appends; it goes with the
        // old table.
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('ledger') ORDER BY cid")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let columns = columns.join(", ");
        let records = conn.execute(&format!("INSERT INTO ledger ({columns}) SELECT {columns} FROM ledger_keyed_by_id ORDER BY finished_at_ms, id"), [])?;
        conn.execute_batch("DROP TABLE ledger_keyed_by_id; COMMIT;")?;
        crate::log::info("ledger rewritten under its (finished_at_ms, id) key", serde_json::json!({"records": records}));
        Ok(())
    };
    crate::log::info(
        "rewriting the ledger under its (finished_at_ms, id) key, once; the counter starts when it is done (about 5 s per million records)",
        serde_json::json!({}),
    );
    rewrite().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        internal(format!("rewriting the ledger under its (finished_at_ms, id) key: {e}; the database is unchanged"))
    })
}

/// `ALTER TABLE {table} ADD COLUMN {column} {definition}` unless the table has the column. The
/// names are ours, never a request's.
fn add_column_if_missing(conn: &Connection, table: &str, column: &str, definition: &str) -> StoreResult<()> {
    let has: bool = conn
        .query_row(&format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"), [], |r| r.get::<_, i64>(0))
        .map_err(internal)?
        > 0;
    if !has {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {definition}")).map_err(internal)?;
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ledger (
  id TEXT NOT NULL, gateway_id TEXT NOT NULL, ingested_at_ms INTEGER NOT NULL,
  org TEXT, cost_center TEXT, team TEXT, user TEXT, key_id TEXT, use_case TEXT, tier TEXT, task TEXT,
  dialect TEXT NOT NULL, requested_model TEXT NOT NULL, routed_model TEXT NOT NULL,
  input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cache_read_tokens INTEGER NOT NULL,
  cache_write_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL, status INTEGER NOT NULL, estimated INTEGER NOT NULL,
  started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER NOT NULL,
  PRIMARY KEY (finished_at_ms, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budgets (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
  budget_id TEXT NOT NULL, bucket INTEGER NOT NULL, micros INTEGER NOT NULL, tokens INTEGER NOT NULL,
  excess INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (budget_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS exemptions (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, before TEXT, after TEXT
);
CREATE INDEX IF NOT EXISTS audit_subject ON audit (subject, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, task TEXT NOT NULL, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_task ON checkpoints (task, seq);
CREATE INDEX IF NOT EXISTS checkpoints_at ON checkpoints (at_ms);
-- The retry guard's events (docs/guards.md): one row per counted request, kept a week and an hour.
CREATE TABLE IF NOT EXISTS guard_events (
  id TEXT PRIMARY KEY, key TEXT NOT NULL, task TEXT, gateway TEXT NOT NULL, kind TEXT NOT NULL,
  retry INTEGER NOT NULL, at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS guard_events_key ON guard_events (key, at_ms);
CREATE INDEX IF NOT EXISTS guard_events_task ON guard_events (task) WHERE task IS NOT NULL;
CREATE INDEX IF NOT EXISTS guard_events_at ON guard_events (at_ms);
-- Task summaries read the ledger by task; most records have none, so only those with one are
-- indexed (a full index made every ingested record update one more b-tree: -19 % records/s).
-- `task = ?` implies `task IS NOT NULL`, so the summary query uses it. Older databases had the full
-- index under the old name: it goes.
DROP INDEX IF EXISTS ledger_task;
CREATE INDEX IF NOT EXISTS ledger_task_set ON ledger (task) WHERE task IS NOT NULL;
CREATE TABLE IF NOT EXISTS leases (
  budget_id TEXT NOT NULL, gateway_id TEXT NOT NULL, micros INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
  PRIMARY KEY (budget_id, gateway_id)
) WITHOUT ROWID;
";

const INSERT_LEDGER: &str = "INSERT OR IGNORE INTO ledger VALUES
  (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)";

const UPSERT_SPEND: &str = "INSERT INTO spend (budget_id, bucket, micros, tokens, excess) VALUES (?1, ?2, ?3, ?4, ?5)
  ON CONFLICT (budget_id, bucket) DO UPDATE SET micros = micros + excluded.micros, tokens = tokens + excluded.tokens,
  excess = excess + excluded.excess";

/// Must agree with [`merge_bound`]: a live bound grows, an expired one is replaced.
const UPSERT_LEASE: &str = "INSERT INTO leases (budget_id, gateway_id, micros, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
  ON CONFLICT (budget_id, gateway_id) DO UPDATE SET
  micros = CASE WHEN leases.expires_at_ms > ?5 THEN MAX(leases.micros, excluded.micros) ELSE excluded.micros END,
  expires_at_ms = CASE WHEN leases.expires_at_ms > ?5 THEN MAX(leases.expires_at_ms, excluded.expires_at_ms) ELSE excluded.expires_at_ms END";

/// (budget id, lease holder: the gateway, or `gateway@key` for a selector budget) → durable upper
/// bound (micros, expires_at_ms) of that slice.
type Bounds = HashMap<(String, String), (i64, i64)>;

/// The in-memory mirror of [`UPSERT_LEASE`].
fn merge_bound(old: Option<(i64, i64)>, row: &LeaseRow) -> (i64, i64) {
    match old {
        Some((micros, expires)) if expires > row.now_ms => (micros.max(row.micros), expires.max(row.expires_at_ms)),
        _ => (row.micros, row.expires_at_ms),
    }
}

type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// One granted slice to persist.
struct LeaseRow {
    budget_id: String,
    gateway_id: String,
    micros: i64,
    expires_at_ms: i64,
    now_ms: i64,
}

/// Work for the writer thread.
enum Job {
    Ingest { batch: UsageBatch, now_ms: i64, reply: Reply<UsageAck> },
    Leases { rows: Vec<LeaseRow>, reply: Reply<()> },
    PutBudget { budget: Budget, actor: String, now_ms: i64, reply: Reply<PutOutcome> },
    DeleteBudget { id: String, actor: String, now_ms: i64, reply: Reply<Option<BudgetSpec>> },
    AddExemption { exemption: Exemption, actor: String, now_ms: i64, reply: Reply<Exemption> },
    RevokeExemption { id: u64, actor: String, now_ms: i64, reply: Reply<Option<Exemption>> },
    /// Workflows, exemption requests, outcomes (store/sqlite/gov.rs).
    Gov(gov::GovJob),
    /// A write a child module runs on the writer thread (it answers its own reply).
    Run(Box<dyn FnOnce(&mut Writer) + Send>),
    Shutdown { reply: Reply<()> },
}

/// The embedded store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    /// A std mutex, not tokio's: it is held only for in-memory work of microseconds and never
    /// across an `.await`, so blocking briefly is cheaper than an async lock.
    book: Arc<Mutex<Book>>,
    jobs: mpsc::Sender<Job>,
    /// Reports and audit queries read through their own connection (WAL: readers never block the
    /// writer), on the blocking pool.
    reader: Arc<Mutex<Connection>>,
    writer_alive: Arc<AtomicBool>,
    /// What the `leases` table already guarantees, updated by the writer right after each commit
    /// (so it never claims more than is on disk). Locked after `book`, never before.
    bounds: Arc<Mutex<Bounds>>,
    lease_ttl_ms: i64,
    path: PathBuf,
    /// The events log and outbox's own connection (store/sqlite/events.rs).
    events: events::EventsDb,
}

fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("sqlite: {e}"))
}

fn sat(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn lock(book: &Mutex<Book>) -> MutexGuard<'_, Book> {
    // A panic while holding the lock cannot leave the book half-updated in a way that matters more
    // than stopping the service would; keep serving.
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir` and loads budgets, exemptions and spend.
    /// `now_ms` is the server clock's reading at start-up (like every `now_ms` a backend gets):
    /// lease slices that expired more than a day before it are pruned.
    pub fn open(dir: &Path, options: SqliteOptions, now_ms: i64) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Internal(format!("cannot create data directory {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| StoreError::Internal(format!("cannot open {}: {e}", path.display())))?;
        let sync = match options.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        // The writer's page cache: 64 MiB, not SQLite's 2 MiB. It was chosen while the ledger was
        // keyed by random ids (42k against 37k records/s); with the appending ledger it is worth
        // about 5 % in `tollgate-counter bench` (within that bench's noise), and is kept for the
        // spend rows and indexes a busy writer touches again within seconds (docs/counter.md,
        // "Throughput").
        conn.execute_batch(&format!("PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA busy_timeout=5000; PRAGMA cache_size=-65536;"))
            .map_err(internal)?;
        rekey_ledger(&conn)?;
        conn.execute_batch(SCHEMA).map_err(internal)?;
        conn.execute_batch(gov::SCHEMA).map_err(internal)?;
        // Columns that came later; older databases gain them. Audit notes ("started from $X
        // already spent this window"), and the reservation excess of `reserve: p99` budgets
        // (crate::reserve).
        add_column_if_missing(&conn, "audit", "note", "TEXT")?;
        add_column_if_missing(&conn, "spend", "excess", "INTEGER NOT NULL DEFAULT 0")?;
        // Slices that expired a day before this start can never matter again.
        conn.execute("DELETE FROM leases WHERE expires_at_ms < ?1", params![now_ms - 86_400_000]).map_err(internal)?;

        let mut book = Book::new(options.lease_ttl_ms);
        let mut bounds = Bounds::new();
        {
            let mut stmt = conn.prepare("SELECT id, spec FROM budgets").map_err(internal)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(internal)?;
            for row in rows {
                let (id, spec) = row.map_err(internal)?;
                let spec: BudgetSpec = serde_json::from_str(&spec).map_err(|e| internal(format!("budget {id}: {e}")))?;
                book.put_budget(Budget::from_spec(spec).map_err(|e| internal(format!("budget {id}: {e}")))?);
            }
            let mut stmt = conn.prepare("SELECT budget_id, bucket, micros, tokens, excess FROM spend").map_err(internal)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(4)?))
                })
                .map_err(internal)?;
            for row in rows {
                let (id, bucket, micros, tokens, excess) = row.map_err(internal)?;
                book.load_spend(&id, bucket, Spend { micros, tokens: tokens.max(0) as u64, excess });
            }
            let mut stmt = conn.prepare("SELECT budget_id, gateway_id, micros, expires_at_ms FROM leases").map_err(internal)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))
                .map_err(internal)?;
            for row in rows {
                let (budget_id, gateway_id, micros, expires_at_ms) = row.map_err(internal)?;
                book.load_lease(&budget_id, &gateway_id, micros, expires_at_ms);
                bounds.insert((budget_id, gateway_id), (micros, expires_at_ms));
            }
            let mut stmt = conn.prepare("SELECT body FROM exemptions ORDER BY id").map_err(internal)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(internal)?;
            for row in rows {
                let body = row.map_err(internal)?;
                book.put_exemption(serde_json::from_str(&body).map_err(internal)?);
            }
        }

        // Housekeeping only (decisions always compare against the clock's now): day buckets older
        // than any window can reach stay on disk for history but need no memory.
        book.prune(now_ms);
        let reader = Connection::open(&path).map_err(internal)?;
        let events = events::open(&path)?;
        reader.execute_batch("PRAGMA query_only=ON; PRAGMA busy_timeout=5000;").map_err(internal)?;

        let book = Arc::new(Mutex::new(book));
        let (jobs, rx) = mpsc::channel(4096);
        let writer_alive = Arc::new(AtomicBool::new(true));
        let bounds = Arc::new(Mutex::new(bounds));
        let writer =
            Writer { conn, book: Arc::clone(&book), bounds: Arc::clone(&bounds), max_group_records: options.max_group_records.max(1) };
        let alive = Arc::clone(&writer_alive);
        std::thread::Builder::new()
            .name("counter-sqlite-writer".into())
            .spawn(move || {
                writer.run(rx);
                alive.store(false, Ordering::SeqCst);
            })
            .map_err(|e| internal(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            book,
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            writer_alive,
            bounds,
            lease_ttl_ms: options.lease_ttl_ms,
            path,
            events,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shut down; restart the counter".into()))?;
        answer.await.map_err(|_| StoreError::Internal("the store's writer stopped before answering".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            query(&conn).map_err(internal)
        })
        .await
        .map_err(internal)?
    }
}

impl Store for SqliteStore {
    fn scope_index(&self) -> Arc<super::book::ScopeIndex> {
        lock(&self.book).index()
    }

    async fn list_budgets(&self, now_ms: i64) -> StoreResult<Vec<BudgetState>> {
        Ok(lock(&self.book).states(now_ms))
    }

    async fn put_budget(&self, budget: Budget, actor: &str, now_ms: i64) -> StoreResult<PutOutcome> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::PutBudget { budget, actor, now_ms, reply }).await
    }

    async fn delete_budget(&self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<BudgetSpec>> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.submit(|reply| Job::DeleteBudget { id, actor, now_ms, reply }).await
    }

    async fn add_exemption(&self, exemption: Exemption, actor: &str, now_ms: i64) -> StoreResult<Exemption> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::AddExemption { exemption, actor, now_ms, reply }).await
    }

    async fn revoke_exemption(&self, id: u64, actor: &str, now_ms: i64) -> StoreResult<Option<Exemption>> {
        let actor = actor.to_owned();
        self.submit(|reply| Job::RevokeExemption { id, actor, now_ms, reply }).await
    }

    async fn list_exemptions(&self) -> StoreResult<Vec<Exemption>> {
        Ok(lock(&self.book).exemptions().to_vec())
    }

    async fn grant_leases(&self, request: &LeaseRequest, now_ms: i64) -> StoreResult<LeaseResponse> {
        let (answer, rows) = {
            let mut book = lock(&self.book);
            let answer = book.grant(request, now_ms);
            let bounds = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<LeaseRow> = answer
                .budgets
                .iter()
                .map(|b| {
                    let holder = match book.budget(&b.budget_id) {
                        Some(budget) => super::book::lease_holder(&request.gateway_id, budget, &b.scope),
                        None => request.gateway_id.clone(),
                    };
                    (b, holder)
                })
                .filter(|(b, holder)| {
                    let key = (b.budget_id.clone(), holder.clone());
                    !matches!(bounds.get(&key), Some(&(m, e)) if m >= b.granted_micros && e >= b.lease_expires_at_ms)
                })
                .map(|(b, holder)| LeaseRow {
                    budget_id: b.budget_id.clone(),
                    gateway_id: holder,
                    micros: b.granted_micros,
                    expires_at_ms: now_ms.saturating_add(self.lease_ttl_ms.saturating_mul(2)),
                    now_ms,
                })
                .collect();
            (answer, rows)
        };
        if !rows.is_empty() {
            // The reservation already holds in memory; the answer waits until it is durable.
            self.submit(|reply| Job::Leases { rows, reply }).await?;
        }
        Ok(answer)
    }

    async fn ingest(&self, batch: UsageBatch, now_ms: i64) -> StoreResult<UsageAck> {
        if batch.records.is_empty() {
            return Ok(UsageAck { accepted: 0, duplicates: 0, guard: Default::default() });
        }
        self.submit(|reply| Job::Ingest { batch, now_ms, reply }).await
    }

    async fn report(&self, query: ReportQuery) -> StoreResult<Vec<ReportRow>> {
        let day = day_column(&query)?;
        self.read(move |conn| report(conn, &query, &day)).await
    }

    async fn requests(&self, query: RequestsQuery) -> StoreResult<Vec<UsageRecord>> {
        self.read(move |conn| requests::list(conn, &query)).await
    }

    async fn audit(&self, query: AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        self.read(move |conn| audit(conn, &query)).await
    }

    async fn task_summary(&self, task: &str) -> StoreResult<crate::task::TaskSummary> {
        self.read_task_summary(task).await
    }

    async fn add_checkpoint(&self, checkpoint: crate::task::Checkpoint, actor: &str) -> StoreResult<crate::task::Checkpoint> {
        self.write_checkpoint(checkpoint, actor).await
    }

    async fn guard_exchange(&self, gateway_id: &str, events: Vec<GuardEvent>, now_ms: i64) -> StoreResult<GuardAnswer> {
        self.exchange_guard_events(gateway_id, events, now_ms).await
    }

    async fn health(&self) -> StoreResult<()> {
        if !self.writer_alive.load(Ordering::SeqCst) || self.jobs.is_closed() {
            return Err(StoreError::Unavailable("the SQLite writer has stopped; see the logs and restart".into()));
        }
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    async fn shutdown(&self) -> StoreResult<()> {
        match self.submit(|reply| Job::Shutdown { reply }).await {
            Err(StoreError::Unavailable(_)) => Ok(()), // already shut down
            other => other,
        }
    }
}

/// The SQL of [`GroupBy::Day`]: the date of `finished_at_ms` in the query's `day_zone`. SQLite
/// knows no IANA zones, so the zone's offsets over the queried period (one, or one more per DST
/// change in it: `Zone::offsets_between`) become a `CASE` on `finished_at_ms` added to the
/// seconds before taking the date. Integers only, written by us: nothing of the request is spliced.
fn day_column(q: &ReportQuery) -> StoreResult<String> {
    if !q.group_by.contains(&GroupBy::Day) {
        return Ok(String::new());
    }
    let offsets = q
        .day_zone
        .offsets_between(q.from_ms.div_euclid(1000), q.to_ms.div_euclid(1000).saturating_add(1), super::MAX_OFFSET_CHANGES)
        .ok_or_else(|| StoreError::Invalid(format!("from, to: the period crosses more than {} DST changes of its zone; ask for a shorter one", super::MAX_OFFSET_CHANGES)))?;
    let offset = match offsets.as_slice() {
        [(_, 0)] => return Ok("strftime('%Y-%m-%d', finished_at_ms / 1000, 'unixepoch')".into()),
        [(_, only)] => only.to_string(),
        [.., (_, last)] => {
            let mut case = String::from("CASE");
            for pair in offsets.windows(2) {
                case.push_str(&format!(" WHEN finished_at_ms < {} THEN {}", pair[1].0.saturating_mul(1000), pair[0].1));
            }
            format!("{case} ELSE {last} END")
        }
        [] => "0".into(),
    };
    Ok(format!("strftime('%Y-%m-%d', finished_at_ms / 1000 + {offset}, 'unixepoch')"))
}

fn group_column(g: GroupBy, day: &str) -> &str {
    match g {
        GroupBy::Org => "COALESCE(org, '')",
        GroupBy::CostCenter => "COALESCE(cost_center, '')",
        GroupBy::Team => "COALESCE(team, '')",
        GroupBy::User => "COALESCE(user, '')",
        GroupBy::Key => "COALESCE(key_id, '')",
        GroupBy::UseCase => "COALESCE(use_case, '')",
        GroupBy::Model => "routed_model",
        GroupBy::Day => day,
    }
}

fn report(conn: &Connection, q: &ReportQuery, day: &str) -> rusqlite::Result<Vec<ReportRow>> {
    let cols: Vec<&str> = q.group_by.iter().map(|g| group_column(*g, day)).collect();
    let mut sql = String::from("SELECT ");
    for c in &cols {
        sql.push_str(c);
        sql.push_str(", ");
    }
    sql.push_str(
        "COUNT(*), COALESCE(SUM(cost_micros), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0),
         COALESCE(SUM(cache_read_tokens), 0), COALESCE(SUM(cache_write_tokens), 0), COALESCE(SUM(estimated), 0)
         FROM ledger WHERE finished_at_ms >= ?1 AND finished_at_ms < ?2",
    );
    if !cols.is_empty() {
        let list: Vec<String> = (1..=cols.len()).map(|i| i.to_string()).collect();
        sql.push_str(&format!(" GROUP BY {0} ORDER BY {0}", list.join(", ")));
    }
    let mut stmt = conn.prepare(&sql)?;
    let n = cols.len();
    let rows = stmt.query_map(params![q.from_ms, q.to_ms], |r| {
        let mut keys = Vec::with_capacity(n);
        for i in 0..n {
            keys.push(r.get::<_, String>(i)?);
        }
        let u = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        Ok(ReportRow {
            keys,
            requests: u(n)?,
            cost_micros: r.get(n + 1)?,
            input_tokens: u(n + 2)?,
            output_tokens: u(n + 3)?,
            cache_read_tokens: u(n + 4)?,
            cache_write_tokens: u(n + 5)?,
            estimated_requests: u(n + 6)?,
        })
    })?;
    rows.collect()
}

fn audit(conn: &Connection, q: &AuditQuery) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at_ms, actor, action, subject, before, after, note FROM audit
         WHERE (?1 IS NULL OR subject = ?1) AND (?2 IS NULL OR at_ms >= ?2) ORDER BY seq DESC LIMIT ?3",
    )?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![q.subject, q.since_ms, limit], |r| {
        let json = |i: usize| -> rusqlite::Result<Option<serde_json::Value>> {
            Ok(r.get::<_, Option<String>>(i)?.and_then(|t| serde_json::from_str(&t).ok()))
        };
        Ok(AuditEntry {
            seq: r.get::<_, i64>(0)?.max(0) as u64,
            at_ms: r.get(1)?,
            actor: r.get(2)?,
            action: r.get(3)?,
            subject: r.get(4)?,
            before: json(5)?,
            after: json(6)?,
            note: r.get(7)?,
        })
    })?;
    rows.collect()
}

/// What the ledger holds for `budget`'s scope in its current window (see [`LedgerStart`]).
fn ledger_start(conn: &Connection, budget: &Budget, now_ms: i64) -> rusqlite::Result<LedgerStart> {
    let mut stmt = conn.prepare_cached(
        "SELECT ingested_at_ms, org, cost_center, team, user, key_id, use_case, tier, task, cost_micros,
           input_tokens + output_tokens + cache_read_tokens + cache_write_tokens
         FROM ledger WHERE ingested_at_ms >= ?1 AND ingested_at_ms <= ?2",
    )?;
    let from_ms = budget.span(now_ms).from.saturating_mul(1000);
    let mut start = LedgerStart::default();
    // No index on ingested_at_ms (it would cost every ingested record a b-tree update): a scan,
    // paid once per budget creation, on the writer thread.
    let mut rows = stmt.query(params![from_ms, now_ms])?;
    while let Some(r) = rows.next()? {
        let principal = principal_at(r, 1)?;
        start.add(budget, now_ms, r.get(0)?, &principal, r.get(9)?, r.get::<_, i64>(10)?.max(0) as u64);
    }
    Ok(start)
}

/// A ledger row's principal, from the eight columns `org, cost_center, team, user, key_id,
/// use_case, tier, task` selected in that order from column `first` on.
fn principal_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Principal> {
    Ok(Principal {
        org: r.get(first)?,
        cost_center: r.get(first + 1)?,
        team: r.get(first + 2)?,
        user: r.get(first + 3)?,
        key_id: r.get(first + 4)?,
        use_case: r.get(first + 5)?,
        tier: r.get(first + 6)?,
        task: r.get(first + 7)?,
    })
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    book: Arc<Mutex<Book>>,
    bounds: Arc<Mutex<Bounds>>,
    max_group_records: usize,
}

/// Usage batches and lease grants committed together.
#[derive(Default)]
struct Group {
    batches: Vec<Pending>,
    records: usize,
    leases: Vec<LeaseRow>,
    lease_replies: Vec<Reply<()>>,
}

struct Pending {
    batch: UsageBatch,
    now_ms: i64,
    reply: Reply<UsageAck>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut next: Option<Job> = None;
        let mut shutdown_replies = Vec::new();
        loop {
            let job = match next.take() {
                Some(job) => job,
                None => match rx.blocking_recv() {
                    Some(job) => job,
                    None => break,
                },
            };
            match job {
                job @ (Job::Ingest { .. } | Job::Leases { .. }) => {
                    // Group commit: take every usage batch and lease grant already waiting.
                    let mut group = Group::default();
                    let mut job = Some(job);
                    while let Some(j) = job.take() {
                        match j {
                            Job::Ingest { batch, now_ms, reply } => {
                                group.records += batch.records.len();
                                group.batches.push(Pending { batch, now_ms, reply });
                            }
                            Job::Leases { rows, reply } => {
                                group.leases.extend(rows);
                                group.lease_replies.push(reply);
                            }
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                        if group.records < self.max_group_records {
                            job = rx.try_recv().ok();
                        }
                    }
                    self.write_group(group);
                }
                Job::PutBudget { budget, actor, now_ms, reply } => {
                    let _ = reply.send(self.put_budget(budget, &actor, now_ms));
                }
                Job::DeleteBudget { id, actor, now_ms, reply } => {
                    let _ = reply.send(self.delete_budget(&id, &actor, now_ms));
                }
                Job::AddExemption { exemption, actor, now_ms, reply } => {
                    let _ = reply.send(self.add_exemption(exemption, &actor, now_ms));
                }
                Job::RevokeExemption { id, actor, now_ms, reply } => {
                    let _ = reply.send(self.revoke_exemption(id, &actor, now_ms));
                }
                Job::Gov(job) => self.gov(job),
                Job::Run(work) => work(&mut self),
                Job::Shutdown { reply } => {
                    // Stop taking work; what is already queued is still handled below, in order.
                    rx.close();
                    shutdown_replies.push(reply);
                }
            }
        }
        // The queue is drained and closed: fold the WAL into the database file and answer.
        let result = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").map(|_| ()).map_err(internal);
        for reply in shutdown_replies {
            let _ = reply.send(result.clone());
        }
    }

    fn write_group(&mut self, group: Group) {
        let index = lock(&self.book).index();
        let Group { batches, leases, lease_replies, .. } = group;
        let result = (|| -> rusqlite::Result<(Vec<UsageAck>, Charges)> {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut acks = Vec::with_capacity(batches.len());
            let mut charges = Charges::default();
            {
                let mut upsert_lease = tx.prepare_cached(UPSERT_LEASE)?;
                for l in &leases {
                    upsert_lease.execute(params![l.budget_id, l.gateway_id, l.micros, l.expires_at_ms, l.now_ms])?;
                }
                let mut insert = tx.prepare_cached(INSERT_LEDGER)?;
                for p in &batches {
                    let mut ack = UsageAck { accepted: 0, duplicates: 0, guard: Default::default() };
                    for r in &p.batch.records {
                        let t = &r.tokens;
                        let pr = &r.principal;
                        let inserted = insert.execute(params![
                            r.id,
                            p.batch.gateway_id,
                            p.now_ms,
                            pr.org,
                            pr.cost_center,
                            pr.team,
                            pr.user,
                            pr.key_id,
                            pr.use_case,
                            pr.tier,
                            pr.task,
                            r.dialect,
                            r.requested_model,
                            r.routed_model,
                            sat(t.input),
                            sat(t.output),
                            sat(t.cache_read),
                            sat(t.cache_write),
                            sat(t.reasoning),
                            r.cost_micros,
                            r.status,
                            r.estimated,
                            r.started_at_ms,
                            r.finished_at_ms,
                        ])?;
                        if inserted == 1 {
                            ack.accepted += 1;
                            charges.charge(&index, &p.batch.gateway_id, pr, r.cost_micros, t, &r.p99_reservations, p.now_ms);
                        } else {
                            ack.duplicates += 1;
                        }
                    }
                    acks.push(ack);
                }
                let mut upsert = tx.prepare_cached(UPSERT_SPEND)?;
                for ((budget_id, bucket), s) in &charges.spend {
                    upsert.execute(params![budget_id, bucket, s.micros, sat(s.tokens), s.excess])?;
                }
            }
            tx.commit()?;
            Ok((acks, charges))
        })();
        match result {
            Ok((acks, charges)) => {
                if !leases.is_empty() {
                    let mut bounds = self.bounds.lock().unwrap_or_else(|p| p.into_inner());
                    for row in &leases {
                        let key = (row.budget_id.clone(), row.gateway_id.clone());
                        let merged = merge_bound(bounds.get(&key).copied(), row);
                        bounds.insert(key, merged);
                    }
                }
                if !charges.is_empty() {
                    lock(&self.book).apply(&charges);
                }
                for (p, ack) in batches.into_iter().zip(acks) {
                    let _ = p.reply.send(Ok(ack));
                }
                for reply in lease_replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                crate::log::error("group commit failed", serde_json::json!({"error": e.to_string(), "batches": batches.len()}));
                for p in batches {
                    let _ = p.reply.send(Err(StoreError::Unavailable(format!(
                        "the ledger could not store this batch ({e}); nothing of it was counted, retry"
                    ))));
                }
                for reply in lease_replies {
                    let _ = reply.send(Err(StoreError::Unavailable(format!("the lease could not be stored ({e}); retry"))));
                }
            }
        }
    }

    fn audit_row(tx: &rusqlite::Transaction<'_>, now_ms: i64, actor: &str, action: &str, subject: &str, before: Option<String>, after: Option<String>) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO audit (at_ms, actor, action, subject, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now_ms, actor, action, subject, before, after],
        )?;
        Ok(())
    }

    fn put_budget(&mut self, budget: Budget, actor: &str, now_ms: i64) -> StoreResult<PutOutcome> {
        let before = lock(&self.book).budget(&budget.id).map(|b| (**b).clone());
        if before.as_ref() == Some(&budget) {
            return Ok(PutOutcome::Unchanged);
        }
        let after_json = serde_json::to_string(&budget.to_spec()).map_err(internal)?;
        let before_json = before.as_ref().map(|b| serde_json::to_string(&b.to_spec())).transpose().map_err(internal)?;
        let action = if before.is_some() { "budget.update" } else { "budget.create" };
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        tx.execute("INSERT OR REPLACE INTO budgets (id, spec) VALUES (?1, ?2)", params![budget.id, after_json]).map_err(internal)?;
        // Ingestion runs on this same thread, so the ledger read here is exactly what no charge of
        // this budget covered: everything after it is charged once the book has the budget.
        let start = if starts_from_ledger(before.as_ref(), &budget) { Some(ledger_start(&tx, &budget, now_ms).map_err(internal)?) } else { None };
        if let Some(start) = &start {
            let mut raise = tx
                .prepare_cached(
                    "INSERT INTO spend (budget_id, bucket, micros, tokens) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (budget_id, bucket) DO UPDATE SET micros = MAX(micros, excluded.micros), tokens = MAX(tokens, excluded.tokens)",
                )
                .map_err(internal)?;
            for (bucket, s) in &start.buckets {
                raise.execute(params![budget.id, bucket, s.micros, sat(s.tokens)]).map_err(internal)?;
            }
        }
        tx.execute(
            "INSERT INTO audit (at_ms, actor, action, subject, before, after, note) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![now_ms, actor, action, budget.id, before_json, after_json, start.as_ref().map(LedgerStart::note)],
        )
        .map_err(internal)?;
        tx.commit().map_err(internal)?;
        let mut book = lock(&self.book);
        let id = budget.id.clone();
        book.put_budget(budget);
        for (bucket, s) in start.iter().flat_map(|s| &s.buckets) {
            book.raise_spend(&id, *bucket, *s);
        }
        Ok(match before {
            Some(b) => PutOutcome::Updated { before: b.to_spec() },
            None => PutOutcome::Created,
        })
    }

    fn delete_budget(&mut self, id: &str, actor: &str, now_ms: i64) -> StoreResult<Option<BudgetSpec>> {
        let Some(before) = lock(&self.book).budget(id).map(|b| b.to_spec()) else { return Ok(None) };
        let before_json = serde_json::to_string(&before).map_err(internal)?;
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        tx.execute("DELETE FROM budgets WHERE id = ?1", params![id]).map_err(internal)?;
        tx.execute("DELETE FROM spend WHERE budget_id = ?1", params![id]).map_err(internal)?;
        tx.execute("DELETE FROM leases WHERE budget_id = ?1", params![id]).map_err(internal)?;
        // Bounds are only an optimisation: dropping them makes the next grant write again.
        self.bounds.lock().unwrap_or_else(|p| p.into_inner()).retain(|(b, _), _| b != id);
        Self::audit_row(&tx, now_ms, actor, "budget.delete", id, Some(before_json), None).map_err(internal)?;
        tx.commit().map_err(internal)?;
        lock(&self.book).remove_budget(id);
        Ok(Some(before))
    }

    fn add_exemption(&mut self, mut exemption: Exemption, actor: &str, now_ms: i64) -> StoreResult<Exemption> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        tx.execute("INSERT INTO exemptions (body) VALUES ('{}')", []).map_err(internal)?;
        exemption.id = tx.last_insert_rowid().max(0) as u64;
        let body = serde_json::to_string(&exemption).map_err(internal)?;
        tx.execute("UPDATE exemptions SET body = ?1 WHERE id = ?2", params![body, sat(exemption.id)]).map_err(internal)?;
        Self::audit_row(&tx, now_ms, actor, "exemption.add", &format!("exemption:{}", exemption.id), None, Some(body))
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        lock(&self.book).put_exemption(exemption.clone());
        Ok(exemption)
    }

    fn revoke_exemption(&mut self, id: u64, actor: &str, now_ms: i64) -> StoreResult<Option<Exemption>> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        let body: Option<String> = tx
            .query_row("SELECT body FROM exemptions WHERE id = ?1", params![sat(id)], |r| r.get(0))
            .optional()
            .map_err(internal)?;
        let Some(before_json) = body else { return Ok(None) };
        let mut exemption: Exemption = serde_json::from_str(&before_json).map_err(internal)?;
        if exemption.revoked_at_ms.is_some() {
            return Ok(Some(exemption));
        }
        exemption.revoked_at_ms = Some(now_ms);
        let after_json = serde_json::to_string(&exemption).map_err(internal)?;
        tx.execute("UPDATE exemptions SET body = ?1 WHERE id = ?2", params![after_json, sat(id)]).map_err(internal)?;
        Self::audit_row(&tx, now_ms, actor, "exemption.revoke", &format!("exemption:{id}"), Some(before_json), Some(after_json))
            .map_err(internal)?;
        tx.commit().map_err(internal)?;
        lock(&self.book).put_exemption(exemption.clone());
        Ok(Some(exemption))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ledger as it was created before it was keyed by finish time: one row, with the indexes
    /// it had then.
    const LEDGER_KEYED_BY_ID: &str = "
        CREATE TABLE ledger (
          id TEXT PRIMARY KEY, gateway_id TEXT NOT NULL, ingested_at_ms INTEGER NOT NULL,
          org TEXT, cost_center TEXT, team TEXT, user TEXT, key_id TEXT, use_case TEXT, tier TEXT, task TEXT,
          dialect TEXT NOT NULL, requested_model TEXT NOT NULL, routed_model TEXT NOT NULL,
          input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cache_read_tokens INTEGER NOT NULL,
          cache_write_tokens INTEGER NOT NULL, reasoning_tokens INTEGER NOT NULL,
          cost_micros INTEGER NOT NULL, status INTEGER NOT NULL, estimated INTEGER NOT NULL,
          started_at_ms INTEGER NOT NULL, finished_at_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX ledger_finished ON ledger (finished_at_ms);
        CREATE INDEX ledger_task ON ledger (task);
        INSERT INTO ledger VALUES ('gw1:old', 'gw1', 500, 'acme', NULL, 'a', 'bob', NULL, 'chat', NULL, 'fix-42',
          'openai', 'gpt-4o', 'gpt-4o-mini', 100, 20, 0, 0, 0, 1234, 200, 0, 400, 450);";

    fn usage(id: &str, finished_at_ms: i64) -> UsageBatch {
        serde_json::from_value(serde_json::json!({"gateway_id": "gw1", "records": [{
            "id": id, "principal": {"org": "acme", "team": "a", "user": "bob", "use_case": "chat", "task": "fix-42"},
            "dialect": "openai", "requested_model": "gpt-4o", "routed_model": "gpt-4o-mini",
            "tokens": {"input": 100, "output": 20}, "cost_micros": 1234, "status": 200,
            "started_at_ms": 400, "finished_at_ms": finished_at_ms}]}))
        .unwrap()
    }

    #[tokio::test]
    async fn a_ledger_keyed_by_id_alone_is_rewritten_under_the_finish_time_key_and_still_knows_its_records() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join(DB_FILE)).unwrap().execute_batch(LEDGER_KEYED_BY_ID).unwrap();

        let store = SqliteStore::open(dir.path(), SqliteOptions::default(), 1_000).unwrap();
        let resent = store.ingest(usage("gw1:old", 450), 1_000).await.unwrap();
        assert_eq!((resent.accepted, resent.duplicates), (0, 1), "a record from before the rewrite, re-sent, is a duplicate");
        let new = store.ingest(usage("gw1:new", 460), 1_000).await.unwrap();
        assert_eq!((new.accepted, new.duplicates), (1, 0));
        let listed = store.requests(RequestsQuery { from_ms: 0, to_ms: 1_000, limit: 10 }).await.unwrap();
        let listed: Vec<_> = listed.iter().map(|r| (r.id.as_str(), r.cost_micros, r.finished_at_ms)).collect();
        assert_eq!(listed, [("gw1:old", 1234, 450), ("gw1:new", 1234, 460)], "the old row kept every column it had");
        store.shutdown().await.unwrap();

        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let key: Vec<(String, i64)> = conn
            .prepare("SELECT name, pk FROM pragma_table_info('ledger') WHERE pk > 0 ORDER BY pk")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(key, [("finished_at_ms".to_owned(), 1), ("id".to_owned(), 2)]);
        let objects: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE tbl_name LIKE 'ledger%' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(objects, ["ledger", "ledger_task_set"], "the old table and its indexes are gone");
        drop(conn);

        // A second open finds the new key and leaves the ledger as it is.
        let store = SqliteStore::open(dir.path(), SqliteOptions::default(), 2_000).unwrap();
        assert_eq!(store.requests(RequestsQuery { from_ms: 0, to_ms: 1_000, limit: 10 }).await.unwrap().len(), 2);
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_database_from_before_the_later_columns_gains_them_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Connection::open(dir.path().join(DB_FILE)).unwrap();
            old.execute_batch(
                "CREATE TABLE spend (budget_id TEXT NOT NULL, bucket INTEGER NOT NULL, micros INTEGER NOT NULL,
                   tokens INTEGER NOT NULL, PRIMARY KEY (budget_id, bucket)) WITHOUT ROWID;
                 CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL,
                   action TEXT NOT NULL, subject TEXT NOT NULL, before TEXT, after TEXT);
                 CREATE TABLE budgets (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
                 INSERT INTO budgets VALUES ('t', '{\"id\":\"t\",\"scope\":\"team:a\",\"limit\":\"1\",\"window\":\"none\"}');
                 INSERT INTO spend VALUES ('t', 0, 420, 7);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(dir.path(), SqliteOptions::default(), 1_000).unwrap();
        let states = store.list_budgets(1_000).await.unwrap();
        assert_eq!((states[0].spent_micros, states[0].tokens_used, states[0].reserve_excess_micros), (420, 7, 0));
        store.shutdown().await.unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        for (table, column) in [("audit", "note"), ("spend", "excess")] {
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}'"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1, "{table}.{column}");
        }
    }
}
