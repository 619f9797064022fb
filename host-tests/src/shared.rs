//! What Envoy keeps process-wide and every worker VM sees: the virtual clock, shared data
//! (with compare-and-swap), shared queues, metrics, dispatched HTTP calls and the log.
//!
//! Everything runs on the test's thread, so this is a plain `RefCell` behind an `Rc`; the VMs
//! interleave only between callbacks, exactly as Envoy's workers do from the filter's point of
//! view (each callback runs to completion on its worker).

use crate::abi::{BufferType, Status};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// One log line the filter wrote (proxy_log, or stdout/stderr through WASI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub worker: usize,
    /// `trace`, `debug`, `info`, `warn`, `error`, `critical`; `stdout` / `stderr` for WASI writes.
    pub level: &'static str,
    pub message: String,
}

/// A metric as Envoy's stats store holds it (name without Envoy's `wasmcustom.` prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    Counter(u64),
    Gauge(i64),
    Histogram(Vec<u64>),
}

/// An outgoing HTTP call a VM dispatched (`proxy_http_call`), waiting for the scenario to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    pub worker: usize,
    /// The context that dispatched it (the root context for background work).
    pub context_id: u32,
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// 0 = no timeout (Envoy's meaning).
    pub timeout_ms: u32,
    /// Virtual time of dispatch, unix milliseconds.
    pub dispatched_at_ms: u64,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.header(":path").unwrap_or("")
    }
    pub fn method(&self) -> &str {
        self.header(":method").unwrap_or("")
    }
    /// The body parsed as JSON; panics with the body shown if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("call to {} {} has a non-JSON body ({e}): {}", self.cluster, self.path(), String::from_utf8_lossy(&self.body))
        })
    }
}

pub struct Queue {
    pub vm_id: String,
    pub name: String,
    pub items: VecDeque<Vec<u8>>,
    /// Who is told `proxy_on_queue_ready`: the last VM that registered the queue.
    pub owner: (usize, u32),
}

/// The process-wide state (see the module doc).
pub struct Shared {
    /// Virtual wall clock, unix nanoseconds.
    pub now_ns: u64,
    /// Virtual monotonic clock, nanoseconds since the gateway started.
    pub monotonic_ns: u64,
    pub data: HashMap<(String, String), (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queues: Vec<Queue>,
    pub queue_ready: VecDeque<(usize, u32, u32)>,
    pub metrics: BTreeMap<String, Metric>,
    pub calls: Vec<HttpCall>,
    pub logs: Vec<LogLine>,
    /// `None`: every cluster exists. `Some(list)`: others are refused with BadArgument, as Envoy does.
    pub clusters: Option<Vec<String>>,
    /// Properties every context sees (path segments joined by '.'), e.g. `plugin_name`.
    pub properties: BTreeMap<String, Vec<u8>>,
    /// Echo filter log lines to stderr as they happen (`HOST_TESTS_LOG=1`).
    pub echo_logs: bool,
    /// Host calls made by every VM, by import name (WASI ones as `wasi:<name>`).
    pub host_calls: BTreeMap<&'static str, u64>,
    /// Buffers whose reads (`proxy_get_buffer_bytes`) answer this status instead of the bytes.
    pub failing_buffers: Vec<(BufferType, Status)>,
}

impl Shared {
    pub fn new(start_unix_ms: u64) -> Shared {
        Shared {
            now_ns: start_unix_ms * 1_000_000,
            monotonic_ns: 0,
            data: HashMap::new(),
            next_cas: 1,
            queues: Vec::new(),
            queue_ready: VecDeque::new(),
            metrics: BTreeMap::new(),
            calls: Vec::new(),
            logs: Vec::new(),
            clusters: None,
            properties: BTreeMap::new(),
            echo_logs: std::env::var_os("HOST_TESTS_LOG").is_some(),
            host_calls: BTreeMap::new(),
            failing_buffers: Vec::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ns / 1_000_000
    }

    pub fn advance(&mut self, by: Duration) {
        let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.now_ns = self.now_ns.saturating_add(ns);
        self.monotonic_ns = self.monotonic_ns.saturating_add(ns);
    }

    /// proxy-wasm-cpp-host's `SharedData::nextCas`: starts at 1, never 0 (0 means "no CAS").
    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Envoy's set: cas 0 is unconditional; a non-zero cas must match the stored one when the key
    /// exists (a missing key is set whatever the cas).
    pub fn set_data(&mut self, vm_id: &str, key: &str, value: Vec<u8>, cas: u32) -> bool {
        let slot = (vm_id.to_string(), key.to_string());
        if let Some((_, stored)) = self.data.get(&slot) {
            if cas != 0 && cas != *stored {
                return false;
            }
        }
        let new_cas = self.take_cas();
        self.data.insert(slot, (value, new_cas));
        true
    }

    pub fn log(&mut self, worker: usize, level: &'static str, message: String) {
        if self.echo_logs {
            eprintln!("[worker {worker}] {level}: {message}");
        }
        self.logs.push(LogLine { worker, level, message });
    }
}
