//! The scenario driver: Envoy's side of the filter's life, one step at a time, on virtual time.
//!
//! A [`Gateway`] is one Envoy process running the filter: `workers` VMs of the same module,
//! sharing shared data, queues and metrics. A [`Stream`] is one HTTP request through it: the test
//! plays the client and the upstream, and observes what each side receives. Between steps the
//! gateway runs whatever Envoy would run next: the actions a callback deferred (continue, local
//! reply), queue-ready notifications, answers to dispatched calls that are due. Time moves only
//! with [`Gateway::advance`]; ticks and call timeouts fire as it passes.
//!
//! Envoy behaviour reproduced here (each one a way a filter can be wrong in production):
//! - A local reply goes through the filter's own response callbacks (Envoy encodes it through the
//!   whole filter chain), and the request callback's return value is ignored after it.
//! - A body the filter pauses on is buffered: the next callback sees all of it; past the buffer
//!   limit (1 MiB by default, Envoy's) Envoy answers 413 itself without calling the filter.
//! - When a stream ends: `proxy_on_log`, then `proxy_on_done`, then `proxy_on_delete`; calls the
//!   stream dispatched and that are still pending are cancelled.
//! - A call nobody answers times out at its timeout with Envoy's 504 "upstream request timeout".
//! - A trap fails the VM: the test fails with the filter's panic message, unless it allowed traps
//!   (then, like Envoy, the stream gets a 503 and the worker answers 503 from then on).

use crate::abi::{BufferType, Status};
use crate::module;
use crate::shared::{HttpCall, LogLine, Metric, Shared};
use crate::vm::{Effect, LocalReply, Pairs, StreamAbi, Trap, Vm, VmState};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;
use wasmtime::Module;

/// Envoy's default per-connection buffer limit, which bounds a buffered body.
pub const ENVOY_DEFAULT_BUFFER_LIMIT: usize = 1024 * 1024;

/// The virtual clock's start: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_UNIX_MS: u64 = 1_767_225_600_000;

/// An answer the scenario gives to a dispatched HTTP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A response (status in `:status`), delivered after `delay`.
    Response { status: u16, headers: Vec<(String, String)>, body: Vec<u8>, trailers: Vec<(String, String)>, delay: Duration },
    /// Nothing comes back: at the call's timeout Envoy answers 504 "upstream request timeout".
    /// (A call with no timeout then never completes.)
    Timeout,
    /// The cluster is unreachable: Envoy answers 503 with its connect-failure text.
    ConnectFailure { delay: Duration },
    /// The async stream is reset: `proxy_on_http_call_response` with 0 headers, 0 body.
    Reset { delay: Duration },
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer::Response { status, headers: Vec::new(), body: Vec::new(), trailers: Vec::new(), delay: Duration::ZERO }
    }
    /// `status` with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> Answer {
        Answer::status(status).header("content-type", "application/json").body(body.to_string().into_bytes())
    }
    pub fn timeout() -> Answer {
        Answer::Timeout
    }
    pub fn connect_failure() -> Answer {
        Answer::ConnectFailure { delay: Duration::ZERO }
    }
    pub fn reset() -> Answer {
        Answer::Reset { delay: Duration::ZERO }
    }
    pub fn header(mut self, name: &str, value: &str) -> Answer {
        if let Answer::Response { headers, .. } = &mut self {
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        self
    }
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Answer {
        if let Answer::Response { body, .. } = &mut self {
            *body = bytes.into();
        }
        self
    }
    /// Delivers the answer `by` after the moment it is given (virtual time).
    pub fn after(mut self, by: Duration) -> Answer {
        match &mut self {
            Answer::Response { delay, .. } | Answer::ConnectFailure { delay } | Answer::Reset { delay } => *delay = by,
            Answer::Timeout => {}
        }
        self
    }
}

/// The filter refused its configuration (`proxy_on_vm_start` or `proxy_on_configure` returned
/// false, or the VM trapped while starting): Envoy refuses the plugin.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Everything the filter logged while starting.
    pub logs: Vec<LogLine>,
    pub trap: Option<String>,
}

impl Refusal {
    /// All log text, one line per entry: what an operator would read in Envoy's log.
    pub fn log_text(&self) -> String {
        self.logs.iter().map(|l| format!("{}: {}", l.level, l.message)).collect::<Vec<_>>().join("\n")
    }
}

/// What the upstream received for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamRequest {
    pub headers: Option<Vec<(String, String)>>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub complete: bool,
}

impl UpstreamRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(self.headers.as_deref().unwrap_or(&[]), name)
    }
}

/// What the client received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientResponse {
    pub headers: Option<Vec<(String, String)>>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub complete: bool,
    /// The local reply the filter (or Envoy, for 413 / upstream failure) sent, as it asked for it.
    pub local_reply: Option<LocalReply>,
    /// The stream was reset instead of answered.
    pub reset: bool,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find(self.headers.as_deref().unwrap_or(&[]), name)
    }
    pub fn status(&self) -> Option<u16> {
        self.header(":status").and_then(|s| s.parse().ok())
    }
    /// The body as JSON; panics showing the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("client body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

fn to_text(pairs: &Pairs) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()
}

fn to_pairs(headers: &[(&str, &str)]) -> Pairs {
    headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())).collect()
}

#[derive(Default)]
struct Flow {
    created: bool,
    req_headers_paused: bool,
    req_buffering: bool,
    req_end_from_client: bool,
    resp_headers_paused: bool,
    resp_buffering: bool,
    resp_end_from_upstream: bool,
    upstream: UpstreamRequest,
    client: ClientResponse,
    finished: bool,
    failed: bool,
    fuel: u64,
    filter_state: BTreeMap<String, Vec<u8>>,
}

struct Worker {
    vm: Vm,
    root: u32,
    next_context: u32,
    tick_period_ms: u32,
    next_tick_ms: Option<u64>,
    fuel: u64,
}

enum Due {
    Answer { call: HttpCall, answer: Answer },
}

struct Scheduled {
    at_ms: u64,
    seq: u64,
    due: Due,
}

struct Settings {
    plugin_config: Vec<u8>,
    vm_config: Vec<u8>,
    workers: usize,
    vm_id: String,
    root_id: String,
    plugin_name: String,
    start_unix_ms: u64,
    buffer_limit: usize,
    module: Option<Module>,
    allow_traps: bool,
    log_level: i32,
}

struct Inner {
    settings: Settings,
    shared: Rc<RefCell<Shared>>,
    workers: Vec<Worker>,
    started: bool,
    round_robin: usize,
    flows: HashMap<(usize, u32), Flow>,
    scheduled: Vec<Scheduled>,
    /// Calls handed to the scenario (by token and worker) that it has not answered yet.
    seq: u64,
    traps: Vec<Trap>,
    responder: Option<Box<dyn FnMut(&HttpCall) -> Answer>>,
    label: String,
}

/// One Envoy process running the filter. Cheap to clone: clones share the process.
#[derive(Clone)]
pub struct Gateway {
    inner: Rc<RefCell<Inner>>,
}

/// One HTTP stream through the gateway. The test plays client and upstream.
pub struct Stream {
    inner: Rc<RefCell<Inner>>,
    key: (usize, u32),
}

type Callback = &'static str;

impl Gateway {
    /// A gateway whose filter gets `config` as its plugin configuration (Envoy's
    /// `plugin_config.configuration`). One worker; nothing runs until the first step.
    pub fn new(config: impl AsRef<[u8]>) -> Gateway {
        let settings = Settings {
            plugin_config: config.as_ref().to_vec(),
            vm_config: Vec::new(),
            workers: 1,
            vm_id: "tollgate".to_string(),
            root_id: "tollgate".to_string(),
            plugin_name: "tollgate".to_string(),
            start_unix_ms: DEFAULT_START_UNIX_MS,
            buffer_limit: ENVOY_DEFAULT_BUFFER_LIMIT,
            module: None,
            allow_traps: false,
            log_level: 2,
        };
        let shared = Rc::new(RefCell::new(Shared::new(settings.start_unix_ms)));
        Gateway {
            inner: Rc::new(RefCell::new(Inner {
                settings,
                shared,
                workers: Vec::new(),
                started: false,
                round_robin: 0,
                flows: HashMap::new(),
                scheduled: Vec::new(),
                seq: 0,
                traps: Vec::new(),
                responder: None,
                label: String::new(),
            })),
        }
    }

    fn configure(self, f: impl FnOnce(&mut Inner)) -> Gateway {
        {
            let mut inner = self.inner.borrow_mut();
            assert!(!inner.started, "configure the gateway before its first step");
            f(&mut inner);
        }
        self
    }

    /// Runs `n` worker VMs (Envoy `--concurrency n`); streams are spread round-robin.
    pub fn workers(self, n: usize) -> Gateway {
        assert!(n >= 1, "a gateway needs at least one worker");
        self.configure(|i| i.settings.workers = n)
    }
    /// The VM configuration (`vm_config.configuration`).
    pub fn vm_config(self, bytes: impl AsRef<[u8]>) -> Gateway {
        let bytes = bytes.as_ref().to_vec();
        self.configure(|i| i.settings.vm_config = bytes)
    }
    /// Starts the virtual clock at this unix time (milliseconds).
    pub fn clock_at(self, unix_ms: u64) -> Gateway {
        self.configure(|i| {
            i.settings.start_unix_ms = unix_ms;
            let mut shared = i.shared.borrow_mut();
            shared.now_ns = unix_ms * 1_000_000;
        })
    }
    /// The buffer limit beyond which Envoy refuses a buffered body itself (413 / 500).
    pub fn buffer_limit(self, bytes: usize) -> Gateway {
        self.configure(|i| i.settings.buffer_limit = bytes)
    }
    /// Runs another module (e.g. a no-op filter) instead of tollgate.wasm.
    pub fn module(self, module: Module) -> Gateway {
        self.configure(|i| i.settings.module = Some(module))
    }
    /// Only these clusters exist: a call elsewhere gets BadArgument, as in Envoy.
    pub fn clusters(self, names: &[&str]) -> Gateway {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        self.configure(|i| i.shared.borrow_mut().clusters = Some(names))
    }
    /// A property every context can read (`proxy_get_property`), path segments joined by '.'.
    pub fn property(self, path: &str, value: impl AsRef<[u8]>) -> Gateway {
        let value = value.as_ref().to_vec();
        self.configure(|i| {
            i.shared.borrow_mut().properties.insert(path.to_string(), value);
        })
    }
    /// A trap no longer fails the test: the stream gets Envoy's 503 and the worker stays failed.
    /// For scenarios that assert on what a trap does; the randomized suites never set it.
    pub fn allow_traps(self) -> Gateway {
        self.configure(|i| i.settings.allow_traps = true)
    }
    /// Text added to every failure message (e.g. the random seed of a generated case).
    pub fn label(&self, text: impl Into<String>) {
        self.inner.borrow_mut().label = text.into();
    }

    /// Starts every worker: instantiate, `proxy_on_context_create` (root), `proxy_on_vm_start`,
    /// `proxy_on_configure`. `Err` if the filter refuses (what Envoy reports as a failed plugin).
    pub fn try_start(&self) -> Result<(), Refusal> {
        self.inner.borrow_mut().start()
    }

    /// Starts the gateway, failing the test with the filter's log if it refuses its config.
    pub fn start(&self) -> &Gateway {
        if let Err(refusal) = self.try_start() {
            panic!(
                "the filter refused its configuration{}\n{}",
                refusal.trap.as_deref().map(|t| format!(" (trap: {t})")).unwrap_or_default(),
                refusal.log_text()
            );
        }
        self
    }

    /// A new stream on the next worker (round-robin).
    pub fn stream(&self) -> Stream {
        let worker = {
            let mut inner = self.inner.borrow_mut();
            inner.ensure_started();
            let w = inner.round_robin % inner.workers.len();
            inner.round_robin += 1;
            w
        };
        self.stream_on(worker)
    }

    /// A new stream on a given worker.
    pub fn stream_on(&self, worker: usize) -> Stream {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        assert!(worker < inner.workers.len(), "no worker {worker}: the gateway has {}", inner.workers.len());
        let w = &mut inner.workers[worker];
        w.next_context += 1;
        let key = (worker, w.next_context);
        inner.flows.insert(key, Flow::default());
        Stream { inner: self.inner.clone(), key }
    }

    /// Moves virtual time forward, firing ticks, due answers and call timeouts in time order.
    pub fn advance(&self, by: Duration) {
        self.inner.borrow_mut().advance(by);
    }

    /// Virtual now, unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.inner.borrow().shared.borrow().now_ms()
    }

    /// Calls dispatched and not yet answered (oldest first).
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        let shared = inner.shared.borrow();
        shared.calls.clone()
    }

    /// Answers the oldest pending call; returns the call for assertions. Panics if none is pending.
    pub fn answer_call(&self, answer: impl FnOnce(&HttpCall) -> Answer) -> HttpCall {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        inner.settle();
        let call = {
            let mut shared = inner.shared.borrow_mut();
            assert!(!shared.calls.is_empty(), "expected the filter to have dispatched an HTTP call; none is pending{}", inner.label_suffix());
            shared.calls.remove(0)
        };
        let answer = answer(&call);
        inner.schedule_answer(call.clone(), answer);
        inner.settle();
        call
    }

    /// Answers the oldest pending call to `path` (e.g. `/v1/usage`).
    pub fn answer_call_to(&self, path: &str, answer: impl FnOnce(&HttpCall) -> Answer) -> HttpCall {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        inner.settle();
        let call = {
            let mut shared = inner.shared.borrow_mut();
            let Some(i) = shared.calls.iter().position(|c| c.path() == path) else {
                let pending: Vec<String> = shared.calls.iter().map(|c| format!("{} {}", c.method(), c.path())).collect();
                panic!("expected a pending call to {path}; pending: {pending:?}{}", inner.label_suffix());
            };
            shared.calls.remove(i)
        };
        let answer = answer(&call);
        inner.schedule_answer(call.clone(), answer);
        inner.settle();
        call
    }

    /// Answers every call from now on with `responder` (e.g. "the counter is down").
    pub fn auto_answer(&self, responder: impl FnMut(&HttpCall) -> Answer + 'static) {
        let mut inner = self.inner.borrow_mut();
        inner.responder = Some(Box::new(responder));
        inner.settle();
    }

    /// Stops answering automatically.
    pub fn stop_auto_answer(&self) {
        self.inner.borrow_mut().responder = None;
    }

    /// Asserts no call is pending.
    pub fn expect_no_calls(&self) {
        let calls = self.pending_calls();
        assert!(
            calls.is_empty(),
            "expected no dispatched calls, found: {:?}",
            calls.iter().map(|c| format!("{} {} {}", c.cluster, c.method(), c.path())).collect::<Vec<_>>()
        );
    }

    /// The oldest pending `POST /v1/usage` call: asserts its shape, acknowledges every record
    /// (`{"accepted": n, "duplicates": 0}`) and returns the batch as JSON.
    pub fn expect_usage_batch(&self) -> serde_json::Value {
        let mut batch = serde_json::Value::Null;
        self.answer_call_to("/v1/usage", |call| {
            assert_eq!(call.method(), "POST", "usage batches are POSTed");
            batch = call.json();
            let n = batch.get("records").and_then(|r| r.as_array()).map(|r| r.len()).unwrap_or_else(|| {
                panic!("a usage batch has a `records` array (core::protocol::UsageBatch): {batch}")
            });
            Answer::json(200, &serde_json::json!({"accepted": n, "duplicates": 0}))
        });
        batch
    }

    /// A shared-data value and its CAS, as any worker would read it.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        let inner = self.inner.borrow();
        let shared = inner.shared.borrow();
        shared.data.get(&(inner.settings.vm_id.clone(), key.to_string())).cloned()
    }

    /// Every shared-data key (sorted).
    pub fn shared_data_keys(&self) -> Vec<String> {
        let inner = self.inner.borrow();
        let shared = inner.shared.borrow();
        let mut keys: Vec<String> = shared.data.keys().map(|(_, k)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// How many items wait in a shared queue (0 if it does not exist).
    pub fn queue_len(&self, name: &str) -> usize {
        let inner = self.inner.borrow();
        let shared = inner.shared.borrow();
        shared.queues.iter().find(|q| q.name == name).map(|q| q.items.len()).unwrap_or(0)
    }

    /// A metric by the name the filter defined (Envoy shows it as `wasmcustom.<name>`).
    pub fn metric(&self, name: &str) -> Option<Metric> {
        self.inner.borrow().shared.borrow().metrics.get(name).cloned()
    }

    /// Sets a gauge as a write from outside this scenario's order of events would: in Envoy every
    /// worker's VM writes the same gauge, and two workers' writes can land in either order.
    pub fn overwrite_gauge(&self, name: &str, value: i64) {
        let inner = self.inner.borrow();
        let mut shared = inner.shared.borrow_mut();
        match shared.metrics.get_mut(name) {
            Some(Metric::Gauge(v)) => *v = value,
            other => panic!("{name} is not a gauge the filter defined: {other:?}"),
        }
    }

    /// A counter's value, 0 if undefined.
    pub fn counter(&self, name: &str) -> u64 {
        match self.metric(name) {
            Some(Metric::Counter(v)) => v,
            Some(Metric::Gauge(v)) => v.max(0) as u64,
            _ => 0,
        }
    }

    /// Every metric, by name.
    pub fn metrics(&self) -> BTreeMap<String, Metric> {
        self.inner.borrow().shared.borrow().metrics.clone()
    }

    /// Everything the filter logged so far.
    pub fn logs(&self) -> Vec<LogLine> {
        self.inner.borrow().shared.borrow().logs.clone()
    }

    /// Log lines containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogLine> {
        self.logs().into_iter().filter(|l| l.message.contains(needle)).collect()
    }

    /// Traps seen (only non-empty with [`Gateway::allow_traps`]).
    pub fn traps(&self) -> Vec<Trap> {
        self.inner.borrow().traps.clone()
    }

    /// From now on, reads of `buffer` answer `status` (a host that cannot hand over a body);
    /// `None` restores them.
    pub fn fail_buffer_reads(&self, buffer: BufferType, status: Option<Status>) {
        let inner = self.inner.borrow();
        let mut shared = inner.shared.borrow_mut();
        shared.failing_buffers.retain(|(b, _)| *b != buffer);
        if let Some(status) = status {
            shared.failing_buffers.push((buffer, status));
        }
    }

    /// Host calls made by every VM so far, by import name (WASI ones as `wasi:<name>`).
    pub fn host_calls(&self) -> BTreeMap<&'static str, u64> {
        self.inner.borrow().shared.borrow().host_calls.clone()
    }

    /// Clock reads made by every VM so far: `proxy_get_current_time_nanoseconds` and WASI
    /// `clock_time_get`.
    pub fn clock_reads(&self) -> u64 {
        let calls = self.host_calls();
        ["proxy_get_current_time_nanoseconds", "wasi:clock_time_get"].iter().map(|n| calls.get(n).copied().unwrap_or(0)).sum()
    }

    /// Wasm instructions executed by every VM since it started (fuel consumed).
    pub fn instructions(&self) -> u64 {
        self.inner.borrow().workers.iter().map(|w| w.fuel).sum()
    }

    /// The linear memory of each worker's VM, in bytes (what Envoy's wasm memory stats report:
    /// a wasm memory only grows, so this is the high-water mark of the VM's heap).
    pub fn memory_bytes(&self) -> Vec<usize> {
        let mut inner = self.inner.borrow_mut();
        inner
            .workers
            .iter_mut()
            .map(|w| match w.vm.instance.get_memory(&mut w.vm.store, "memory") {
                Some(memory) => memory.data_size(&w.vm.store),
                None => 0,
            })
            .collect()
    }

    /// Calls a filter export as a misbehaving host would (a context id the filter never saw, a
    /// call token it never issued): the export's result, `None` if the module has no such
    /// export. A trap fails the test, as in every other callback.
    pub fn raw_callback(&self, worker: usize, name: &str, args: &[i32]) -> Option<i32> {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        inner.call(worker, name, args).ok().flatten()
    }

    /// Envoy's plugin shutdown: `proxy_on_done` on every root context; `true` if all are done
    /// (a root that answers false is done once it calls `proxy_done`).
    pub fn shutdown(&self) -> bool {
        let mut inner = self.inner.borrow_mut();
        inner.ensure_started();
        let mut all = true;
        for w in 0..inner.workers.len() {
            let root = inner.workers[w].root;
            let done = inner.call(w, "proxy_on_done", &[root as i32]).map(|r| r != Some(0)).unwrap_or(false);
            let called = inner.workers[w].vm.store.data().done_called;
            all &= done || called;
        }
        inner.settle();
        all
    }
}

impl Inner {
    fn label_suffix(&self) -> String {
        if self.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.label)
        }
    }

    fn ensure_started(&mut self) {
        if !self.started {
            if let Err(refusal) = self.start() {
                panic!(
                    "the filter refused its configuration{}\n{}",
                    refusal.trap.as_deref().map(|t| format!(" (trap: {t})")).unwrap_or_default(),
                    refusal.log_text()
                );
            }
        }
    }

    fn start(&mut self) -> Result<(), Refusal> {
        assert!(!self.started, "the gateway is already started");
        self.started = true;
        let module = self.settings.module.clone().unwrap_or_else(module::tollgate_module);
        let has_abi = module.exports().any(|e| e.name().starts_with("proxy_abi_version_0_2"));
        assert!(has_abi, "the module exports no proxy_abi_version_0_2_* function: not a proxy-wasm 0.2 filter");
        {
            let mut shared = self.shared.borrow_mut();
            let defaults = [
                ("plugin_name", self.settings.plugin_name.clone()),
                ("plugin_root_id", self.settings.root_id.clone()),
                ("plugin_vm_id", self.settings.vm_id.clone()),
            ];
            for (k, v) in defaults {
                shared.properties.entry(k.to_string()).or_insert_with(|| v.into_bytes());
            }
        }
        for w in 0..self.settings.workers {
            let state = VmState {
                shared: self.shared.clone(),
                worker: w,
                vm_id: self.settings.vm_id.clone(),
                vm_config: self.settings.vm_config.clone(),
                plugin_config: None,
                root_context_id: 1,
                current_context: 1,
                effective_context: 1,
                streams: HashMap::new(),
                tick_period_ms: 0,
                call_response: None,
                next_call_token: 0,
                metric_names: HashMap::new(),
                next_metric_id: 0,
                log_level: self.settings.log_level,
                done_called: false,
                stdout: Vec::new(),
                stderr: Vec::new(),
                recent_stderr: Vec::new(),
                rng: 0x5EED_0000 + w as u64,
            };
            let refusal = |shared: &Rc<RefCell<Shared>>, trap: Option<String>| Refusal { logs: shared.borrow().logs.clone(), trap };
            let vm = Vm::instantiate(&module, state).map_err(|t| refusal(&self.shared, Some(t.to_string())))?;
            self.workers.push(Worker { vm, root: 1, next_context: 1, tick_period_ms: 0, next_tick_ms: None, fuel: 0 });
            let vm_config_len = self.settings.vm_config.len() as i32;
            let plugin_config_len = self.settings.plugin_config.len() as i32;
            let trap_text = |t: Trap| Some(t.to_string());
            self.raw_call(w, "proxy_on_context_create", &[1, 0]).map_err(|t| refusal(&self.shared, trap_text(t)))?;
            let started = self.raw_call(w, "proxy_on_vm_start", &[1, vm_config_len]).map_err(|t| refusal(&self.shared, trap_text(t)))?;
            if started == Some(0) {
                return Err(refusal(&self.shared, None));
            }
            self.workers[w].vm.store.data_mut().plugin_config = Some(self.settings.plugin_config.clone());
            let configured = self.raw_call(w, "proxy_on_configure", &[1, plugin_config_len]);
            self.workers[w].vm.store.data_mut().plugin_config = None;
            let configured = configured.map_err(|t| refusal(&self.shared, trap_text(t)))?;
            if configured == Some(0) {
                return Err(refusal(&self.shared, None));
            }
            self.sync_tick(w);
        }
        self.settle();
        Ok(())
    }

    /// Calls into a worker with the current context set; counts fuel. Traps are returned.
    fn raw_call(&mut self, w: usize, name: &str, args: &[i32]) -> Result<Option<i32>, Trap> {
        let worker = &mut self.workers[w];
        let ctx = args.first().copied().unwrap_or(0) as u32;
        {
            let state = worker.vm.store.data_mut();
            state.current_context = ctx;
            state.effective_context = ctx;
        }
        let result = worker.vm.call(name, args);
        let used = match &result {
            Ok((_, used)) => *used,
            Err(_) => 0,
        };
        worker.fuel += used;
        if let Some(flow) = self.flows.get_mut(&(w, ctx)) {
            flow.fuel += used;
        }
        result.map(|(r, _)| r)
    }

    /// `raw_call`, failing the test on a trap unless traps are allowed.
    fn call(&mut self, w: usize, name: &str, args: &[i32]) -> Result<Option<i32>, Trap> {
        if self.workers[w].vm.failed.is_some() && self.settings.allow_traps {
            return Err(Trap { callback: name.to_string(), message: "VM failed earlier".into(), stderr: String::new() });
        }
        let mut result = self.raw_call(w, name, args);
        self.sync_tick(w);
        if let Err(trap) = &mut result {
            // The SDK's panic hook logs the panic message at critical level just before the trap.
            for line in self.shared.borrow().logs.iter().rev().take(5).rev() {
                if line.worker == w && line.level == "critical" {
                    trap.stderr.push_str(&line.message);
                    trap.stderr.push('\n');
                }
            }
            if !self.settings.allow_traps {
                let logs: Vec<String> = self
                    .shared
                    .borrow()
                    .logs
                    .iter()
                    .rev()
                    .take(15)
                    .rev()
                    .map(|l| format!("  [w{}] {}: {}", l.worker, l.level, l.message))
                    .collect();
                panic!("{trap}{}\nlast filter log lines:\n{}", self.label_suffix(), logs.join("\n"));
            }
            self.traps.push(trap.clone());
        }
        result
    }

    fn sync_tick(&mut self, w: usize) {
        let now = self.shared.borrow().now_ms();
        let worker = &mut self.workers[w];
        let period = worker.vm.store.data().tick_period_ms;
        if period != worker.tick_period_ms {
            worker.tick_period_ms = period;
            worker.next_tick_ms = (period > 0).then(|| now + period as u64);
        }
    }

    fn schedule_answer(&mut self, call: HttpCall, answer: Answer) {
        let now = self.shared.borrow().now_ms();
        let at = match &answer {
            Answer::Response { delay, .. } | Answer::ConnectFailure { delay } | Answer::Reset { delay } => {
                now + delay.as_millis() as u64
            }
            Answer::Timeout => {
                if call.timeout_ms == 0 {
                    return; // no timeout: never completes
                }
                call.dispatched_at_ms + call.timeout_ms as u64
            }
        };
        // A call that outlives its timeout gets Envoy's timeout instead of the late answer.
        let (at, answer) = if call.timeout_ms > 0 && at > call.dispatched_at_ms + call.timeout_ms as u64 {
            (call.dispatched_at_ms + call.timeout_ms as u64, Answer::Timeout)
        } else {
            (at, answer)
        };
        self.seq += 1;
        self.scheduled.push(Scheduled { at_ms: at.max(now), seq: self.seq, due: Due::Answer { call, answer } });
    }

    /// Runs what Envoy would run before the next external event, until nothing is left.
    fn settle(&mut self) {
        for _round in 0..100_000 {
            if self.apply_effects() {
                continue;
            }
            let ready = self.shared.borrow_mut().queue_ready.pop_front();
            if let Some((w, root, queue)) = ready {
                let _ = self.call(w, "proxy_on_queue_ready", &[root as i32, queue as i32]);
                continue;
            }
            if self.responder.is_some() {
                let calls: Vec<HttpCall> = std::mem::take(&mut self.shared.borrow_mut().calls);
                if !calls.is_empty() {
                    for call in calls {
                        let answer = (self.responder.as_mut().expect("checked"))(&call);
                        self.schedule_answer(call, answer);
                    }
                    continue;
                }
            }
            let now = self.shared.borrow().now_ms();
            if let Some(i) = self.next_scheduled(now) {
                let item = self.scheduled.remove(i);
                self.fire(item.due);
                continue;
            }
            return;
        }
        panic!("host-tests: the gateway did not settle after 100000 steps (a callback loop?){}", self.label_suffix());
    }

    fn next_scheduled(&self, up_to: u64) -> Option<usize> {
        self.scheduled
            .iter()
            .enumerate()
            .filter(|(_, s)| s.at_ms <= up_to)
            .min_by_key(|(_, s)| (s.at_ms, s.seq))
            .map(|(i, _)| i)
    }

    fn advance(&mut self, by: Duration) {
        self.ensure_started();
        self.settle();
        let target = self.shared.borrow().now_ms() + by.as_millis() as u64;
        loop {
            // Unanswered calls with a timeout time out when their moment passes.
            let timeouts: Vec<HttpCall> = {
                let mut shared = self.shared.borrow_mut();
                let (expired, keep): (Vec<HttpCall>, Vec<HttpCall>) = std::mem::take(&mut shared.calls)
                    .into_iter()
                    .partition(|c| c.timeout_ms > 0 && c.dispatched_at_ms + c.timeout_ms as u64 <= target);
                shared.calls = keep;
                expired
            };
            for call in timeouts {
                self.schedule_answer(call, Answer::Timeout);
            }
            let next_answer = self.next_scheduled(target).map(|i| self.scheduled[i].at_ms);
            let next_tick = self.workers.iter().filter_map(|w| w.next_tick_ms).filter(|t| *t <= target).min();
            let next = match (next_answer, next_tick) {
                (Some(a), Some(t)) => a.min(t),
                (a, t) => match a.or(t) {
                    Some(x) => x,
                    None => break,
                },
            };
            let now = self.shared.borrow().now_ms();
            if next > now {
                self.shared.borrow_mut().advance(Duration::from_millis(next - now));
            }
            if next_tick == Some(next) && next_answer != Some(next) {
                for w in 0..self.workers.len() {
                    if self.workers[w].next_tick_ms == Some(next) {
                        let period = self.workers[w].tick_period_ms as u64;
                        self.workers[w].next_tick_ms = Some(next + period.max(1));
                        let root = self.workers[w].root;
                        if self.workers[w].vm.failed.is_none() {
                            let _ = self.call(w, "proxy_on_tick", &[root as i32]);
                        }
                    }
                }
            }
            self.settle();
        }
        let now = self.shared.borrow().now_ms();
        if target > now {
            self.shared.borrow_mut().advance(Duration::from_millis(target - now));
        }
        self.settle();
    }

    fn fire(&mut self, due: Due) {
        match due {
            Due::Answer { call, answer } => {
                let w = call.worker;
                let ctx = call.context_id;
                // The dispatching stream is gone: Envoy cancelled the call with it.
                let alive = ctx == self.workers[w].root || self.workers[w].vm.store.data().streams.contains_key(&ctx);
                if !alive || self.workers[w].vm.failed.is_some() {
                    return;
                }
                let response = match answer {
                    Answer::Response { status, headers, body, trailers, .. } => {
                        let mut h = vec![(":status".to_string(), status.to_string().into_bytes())];
                        h.extend(headers.into_iter().map(|(k, v)| (k, v.into_bytes())));
                        if !body.is_empty() {
                            h.push(("content-length".into(), body.len().to_string().into_bytes()));
                        }
                        Some((h, body, trailers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect::<Pairs>()))
                    }
                    Answer::Timeout => Some(envoy_local(504, "upstream request timeout")),
                    Answer::ConnectFailure { .. } => Some(envoy_local(
                        503,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                    )),
                    Answer::Reset { .. } => None,
                };
                let (nh, nb, nt) = match &response {
                    Some((h, b, t)) => (h.len(), b.len(), t.len()),
                    None => (0, 0, 0),
                };
                self.workers[w].vm.store.data_mut().call_response =
                    response.map(|(headers, body, trailers)| crate::vm::CallResponse { headers, body, trailers });
                let _ = self.call(w, "proxy_on_http_call_response", &[ctx as i32, call.token as i32, nh as i32, nb as i32, nt as i32]);
                self.workers[w].vm.store.data_mut().call_response = None;
            }
        }
    }

    // ---- streams -------------------------------------------------------------------------

    fn abi(&mut self, key: (usize, u32)) -> &mut StreamAbi {
        self.workers[key.0].vm.store.data_mut().streams.entry(key.1).or_default()
    }

    fn flow(&mut self, key: (usize, u32)) -> &mut Flow {
        self.flows.get_mut(&key).expect("every stream has a flow")
    }

    /// Runs a stream callback. Returns `Some(action)`; `None` if the VM trapped (allowed traps)
    /// or a local reply overrides the action.
    fn stream_call(&mut self, key: (usize, u32), name: Callback, args: &[i32]) -> Option<i32> {
        let (w, ctx) = key;
        if self.workers[w].vm.failed.is_some() {
            self.fail_stream(key);
            return None;
        }
        if !self.flow(key).created {
            self.flow(key).created = true;
            self.abi(key);
            let root = self.workers[w].root as i32;
            if self.call(w, "proxy_on_context_create", &[ctx as i32, root]).is_err() {
                self.fail_stream(key);
                return None;
            }
        }
        let mut full = vec![ctx as i32];
        full.extend_from_slice(args);
        match self.call(w, name, &full) {
            Ok(r) => Some(r.unwrap_or(crate::abi::ACTION_CONTINUE)),
            Err(_) => {
                self.fail_stream(key);
                None
            }
        }
    }

    /// Envoy's answer when the VM has failed: 503 to the client, without the filter.
    fn fail_stream(&mut self, key: (usize, u32)) {
        let flow = self.flow(key);
        if flow.finished || flow.failed {
            return;
        }
        flow.failed = true;
        if flow.client.headers.is_none() {
            flow.client.headers = Some(vec![(":status".into(), "503".into())]);
            flow.client.local_reply = Some(LocalReply {
                status: 503,
                details: "wasm_fail_stream".into(),
                body: Vec::new(),
                headers: Vec::new(),
                grpc_status: 14,
            });
            flow.client.complete = true;
        } else {
            flow.client.reset = true;
        }
        flow.finished = true;
        let (w, ctx) = key;
        self.workers[w].vm.store.data_mut().streams.remove(&ctx);
    }

    /// Takes the local reply (if any) out of a stream's deferred effects and plays it.
    fn take_local_reply(&mut self, key: (usize, u32)) -> bool {
        let (w, ctx) = key;
        let reply = {
            let Some(abi) = self.workers[w].vm.store.data_mut().streams.get_mut(&ctx) else { return false };
            let at = abi.effects.iter().position(|e| matches!(e, Effect::LocalResponse(_)));
            match at.map(|i| abi.effects.remove(i)) {
                Some(Effect::LocalResponse(reply)) => reply,
                _ => return false,
            }
        };
        self.play_local_reply(key, reply);
        true
    }

    /// Envoy's sendLocalReply: headers `:status` + the filter's headers (+ content-length and a
    /// text/plain content-type when there is a body and no content-type), encoded through the
    /// filter's own response callbacks; then the stream ends.
    fn play_local_reply(&mut self, key: (usize, u32), reply: LocalReply) {
        if self.flow(key).finished {
            return;
        }
        if self.flow(key).client.headers.is_some() {
            // Response already started: Envoy can only reset.
            self.flow(key).client.reset = true;
            self.finish(key);
            return;
        }
        let mut headers: Pairs = vec![(":status".into(), reply.status.to_string().into_bytes())];
        headers.extend(reply.headers.iter().cloned());
        if !reply.body.is_empty() {
            headers.retain(|(k, _)| k != "content-length");
            headers.push(("content-length".into(), reply.body.len().to_string().into_bytes()));
            if !headers.iter().any(|(k, _)| k == "content-type") {
                headers.push(("content-type".into(), b"text/plain".to_vec()));
            }
        }
        self.flow(key).client.local_reply = Some(reply.clone());
        self.flow(key).resp_end_from_upstream = true;
        {
            let abi = self.abi(key);
            abi.request_headers_live = false;
            abi.request_body_live = false;
            abi.response_headers = headers;
            abi.response_headers_live = true;
            abi.effects.retain(|e| !matches!(e, Effect::ContinueRequest | Effect::LocalResponse(_)));
        }
        let n = self.abi(key).response_headers.len() as i32;
        let eos = reply.body.is_empty();
        if self.stream_call(key, "proxy_on_response_headers", &[n, eos as i32]).is_none() {
            return;
        }
        let abi = self.abi(key);
        abi.response_headers_live = false;
        abi.effects.retain(|e| !matches!(e, Effect::LocalResponse(_)));
        let client_headers = to_text(&abi.response_headers);
        self.flow(key).client.headers = Some(client_headers);
        if !eos {
            {
                let abi = self.abi(key);
                abi.response_body = reply.body.clone();
                abi.response_body_live = true;
            }
            if self.stream_call(key, "proxy_on_response_body", &[reply.body.len() as i32, 1]).is_none() {
                return;
            }
            let abi = self.abi(key);
            abi.response_body_live = false;
            abi.effects.retain(|e| !matches!(e, Effect::LocalResponse(_)));
            let body = std::mem::take(&mut abi.response_body);
            self.flow(key).client.body.extend_from_slice(&body);
        }
        self.flow(key).client.complete = true;
        self.finish(key);
    }

    /// Applies deferred continue/reset/local-reply effects on every stream; true if any.
    fn apply_effects(&mut self) -> bool {
        let mut pending: Vec<((usize, u32), Vec<Effect>)> = Vec::new();
        for (w, worker) in self.workers.iter_mut().enumerate() {
            for (ctx, abi) in worker.vm.store.data_mut().streams.iter_mut() {
                if !abi.effects.is_empty() {
                    pending.push(((w, *ctx), std::mem::take(&mut abi.effects)));
                }
            }
        }
        if pending.is_empty() {
            return false;
        }
        pending.sort_by_key(|(k, _)| *k);
        for (key, effects) in pending {
            if let Some(reply) = effects.iter().find_map(|e| match e {
                Effect::LocalResponse(r) => Some(r.clone()),
                _ => None,
            }) {
                self.play_local_reply(key, reply);
                continue;
            }
            for effect in effects {
                if self.flows.get(&key).map(|f| f.finished).unwrap_or(true) {
                    break;
                }
                match effect {
                    Effect::ContinueRequest => self.resume_request(key),
                    Effect::ContinueResponse => self.resume_response(key),
                    Effect::ResetRequest | Effect::ResetResponse => {
                        self.flow(key).client.reset = true;
                        self.finish(key);
                    }
                    Effect::LocalResponse(_) => {}
                }
            }
        }
        true
    }

    fn forward_request_headers(&mut self, key: (usize, u32)) {
        let headers = to_text(&self.abi(key).request_headers);
        let flow = self.flow(key);
        if flow.upstream.headers.is_none() {
            flow.upstream.headers = Some(headers);
        }
        flow.req_headers_paused = false;
    }

    fn flush_request_body(&mut self, key: (usize, u32)) {
        let body = std::mem::take(&mut self.abi(key).request_body);
        self.abi(key).request_body_live = false;
        let flow = self.flow(key);
        flow.upstream.body.extend_from_slice(&body);
        flow.req_buffering = false;
        if flow.req_end_from_client {
            flow.upstream.complete = true;
        }
    }

    fn resume_request(&mut self, key: (usize, u32)) {
        self.forward_request_headers(key);
        if self.flow(key).req_buffering || self.flow(key).req_end_from_client {
            self.flush_request_body(key);
        }
    }

    fn forward_response_headers(&mut self, key: (usize, u32)) {
        let headers = to_text(&self.abi(key).response_headers);
        let flow = self.flow(key);
        if flow.client.headers.is_none() {
            flow.client.headers = Some(headers);
        }
        flow.resp_headers_paused = false;
    }

    fn flush_response_body(&mut self, key: (usize, u32)) {
        let body = std::mem::take(&mut self.abi(key).response_body);
        self.abi(key).response_body_live = false;
        let flow = self.flow(key);
        flow.client.body.extend_from_slice(&body);
        flow.resp_buffering = false;
        if flow.resp_end_from_upstream {
            flow.client.complete = true;
        }
        if self.flow(key).client.complete {
            self.finish(key);
        }
    }

    fn resume_response(&mut self, key: (usize, u32)) {
        self.abi(key).response_headers_live = false;
        self.forward_response_headers(key);
        if self.flow(key).resp_buffering || self.flow(key).resp_end_from_upstream {
            self.flush_response_body(key);
        }
    }

    /// The end of a stream: `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    fn finish(&mut self, key: (usize, u32)) {
        if self.flow(key).finished {
            return;
        }
        self.flow(key).finished = true;
        let (w, ctx) = key;
        if !self.flow(key).created || self.workers[w].vm.failed.is_some() {
            return;
        }
        {
            let abi = self.abi(key);
            abi.log_phase = true;
            abi.request_body_live = false;
            abi.response_body_live = false;
            abi.request_headers_live = false;
            abi.response_headers_live = false;
            abi.request_trailers_live = false;
            abi.response_trailers_live = false;
        }
        if self.call(w, "proxy_on_log", &[ctx as i32]).is_err() {
            return;
        }
        self.abi(key).log_phase = false;
        if self.call(w, "proxy_on_done", &[ctx as i32]).is_err() {
            return;
        }
        let _ = self.call(w, "proxy_on_delete", &[ctx as i32]);
        if let Some(abi) = self.workers[w].vm.store.data_mut().streams.remove(&ctx) {
            self.flow(key).filter_state = abi.filter_state;
        }
        self.shared.borrow_mut().calls.retain(|c| !(c.worker == w && c.context_id == ctx));
        self.scheduled.retain(|s| match &s.due {
            Due::Answer { call, .. } => !(call.worker == w && call.context_id == ctx),
        });
    }

    // ---- what the client and the upstream do ----------------------------------------------

    fn request_headers(&mut self, key: (usize, u32), headers: &[(&str, &str)], eos: bool) -> i32 {
        let flow = self.flow(key);
        assert!(flow.upstream.headers.is_none() && !flow.req_headers_paused, "request headers were already sent on this stream");
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        flow.req_end_from_client = eos;
        {
            let abi = self.abi(key);
            abi.request_headers = to_pairs(headers);
            abi.request_headers_live = true;
        }
        let n = headers.len() as i32;
        let Some(action) = self.stream_call(key, "proxy_on_request_headers", &[n, eos as i32]) else { return crate::abi::ACTION_PAUSE };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            self.abi(key).request_headers_live = false;
            self.forward_request_headers(key);
            if eos {
                self.flow(key).upstream.complete = true;
            }
        } else {
            self.flow(key).req_headers_paused = true;
        }
        self.settle();
        action
    }

    fn request_body(&mut self, key: (usize, u32), chunk: &[u8], eos: bool) -> i32 {
        let limit = self.settings.buffer_limit;
        let flow = self.flow(key);
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        assert!(!flow.req_end_from_client, "the client already ended the request");
        flow.req_end_from_client = eos;
        let buffering = flow.req_buffering;
        {
            let abi = self.abi(key);
            if buffering {
                abi.request_body.extend_from_slice(chunk);
            } else {
                abi.request_body = chunk.to_vec();
            }
            abi.request_body_live = true;
        }
        if buffering && self.abi(key).request_body.len() > limit {
            // Envoy's buffer overflow: a 413 of its own, encoded through the filter.
            self.play_local_reply(key, envoy_reply(413, "Payload Too Large", "request_payload_too_large"));
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        let size = self.abi(key).request_body.len() as i32;
        let Some(action) = self.stream_call(key, "proxy_on_request_body", &[size, eos as i32]) else { return crate::abi::ACTION_PAUSE };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            if self.flow(key).req_headers_paused {
                self.forward_request_headers(key);
            }
            self.flush_request_body(key);
        } else {
            self.flow(key).req_buffering = true;
        }
        self.settle();
        action
    }

    fn request_trailers(&mut self, key: (usize, u32), trailers: &[(&str, &str)]) -> i32 {
        let flow = self.flow(key);
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        flow.req_end_from_client = true;
        {
            let abi = self.abi(key);
            abi.request_trailers = to_pairs(trailers);
            abi.request_trailers_live = true;
        }
        let Some(action) = self.stream_call(key, "proxy_on_request_trailers", &[trailers.len() as i32]) else {
            return crate::abi::ACTION_PAUSE;
        };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            self.abi(key).request_trailers_live = false;
            let t = to_text(&self.abi(key).request_trailers);
            self.forward_request_headers(key);
            self.flush_request_body(key);
            self.flow(key).upstream.trailers = t;
            self.flow(key).upstream.complete = true;
        }
        self.settle();
        action
    }

    fn response_headers(&mut self, key: (usize, u32), headers: &[(&str, &str)], eos: bool) -> i32 {
        let flow = self.flow(key);
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        assert!(flow.upstream.headers.is_some(), "the upstream cannot answer a request that never reached it");
        flow.resp_end_from_upstream = eos;
        {
            let abi = self.abi(key);
            abi.response_headers = to_pairs(headers);
            abi.response_headers_live = true;
        }
        let Some(action) = self.stream_call(key, "proxy_on_response_headers", &[headers.len() as i32, eos as i32]) else {
            return crate::abi::ACTION_PAUSE;
        };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            self.abi(key).response_headers_live = false;
            self.forward_response_headers(key);
            if eos {
                self.flow(key).client.complete = true;
                self.finish(key);
            }
        } else {
            self.flow(key).resp_headers_paused = true;
        }
        self.settle();
        action
    }

    fn response_body(&mut self, key: (usize, u32), chunk: &[u8], eos: bool) -> i32 {
        let limit = self.settings.buffer_limit;
        let flow = self.flow(key);
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        assert!(!flow.resp_end_from_upstream, "the upstream already ended the response");
        flow.resp_end_from_upstream = eos;
        let buffering = flow.resp_buffering;
        {
            let abi = self.abi(key);
            if buffering {
                abi.response_body.extend_from_slice(chunk);
            } else {
                abi.response_body = chunk.to_vec();
            }
            abi.response_body_live = true;
        }
        if buffering && self.abi(key).response_body.len() > limit {
            // Envoy's response buffer overflow: 500 if nothing was sent yet, else a reset.
            self.play_local_reply(key, envoy_reply(500, "Internal Server Error", "response_payload_too_large"));
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        let size = self.abi(key).response_body.len() as i32;
        let Some(action) = self.stream_call(key, "proxy_on_response_body", &[size, eos as i32]) else {
            return crate::abi::ACTION_PAUSE;
        };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            if self.flow(key).resp_headers_paused {
                self.abi(key).response_headers_live = false;
                self.forward_response_headers(key);
            }
            self.flush_response_body(key);
        } else {
            self.flow(key).resp_buffering = true;
        }
        self.settle();
        action
    }

    fn response_trailers(&mut self, key: (usize, u32), trailers: &[(&str, &str)]) -> i32 {
        let flow = self.flow(key);
        if flow.finished {
            return crate::abi::ACTION_PAUSE;
        }
        flow.resp_end_from_upstream = true;
        {
            let abi = self.abi(key);
            abi.response_trailers = to_pairs(trailers);
            abi.response_trailers_live = true;
        }
        let Some(action) = self.stream_call(key, "proxy_on_response_trailers", &[trailers.len() as i32]) else {
            return crate::abi::ACTION_PAUSE;
        };
        if self.take_local_reply(key) {
            self.settle();
            return crate::abi::ACTION_PAUSE;
        }
        if action == crate::abi::ACTION_CONTINUE {
            self.abi(key).response_trailers_live = false;
            let t = to_text(&self.abi(key).response_trailers);
            self.forward_response_headers(key);
            self.flow(key).client.trailers = t;
            self.flush_response_body(key);
            self.flow(key).client.complete = true;
            self.finish(key);
        }
        self.settle();
        action
    }

    fn upstream_reset(&mut self, key: (usize, u32)) {
        if self.flow(key).finished {
            return;
        }
        if self.flow(key).client.headers.is_none() {
            // Envoy's router answers for the upstream, through the filter chain.
            self.play_local_reply(
                key,
                envoy_reply(
                    503,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    "upstream_reset_before_response_started{connection_termination}",
                ),
            );
        } else {
            self.flow(key).client.reset = true;
            self.finish(key);
        }
        self.settle();
    }

    fn client_reset(&mut self, key: (usize, u32)) {
        if self.flow(key).finished {
            return;
        }
        self.flow(key).client.reset = true;
        self.finish(key);
        self.settle();
    }
}

fn envoy_local(status: u16, text: &str) -> (Pairs, Vec<u8>, Pairs) {
    let headers = vec![
        (":status".to_string(), status.to_string().into_bytes()),
        ("content-length".to_string(), text.len().to_string().into_bytes()),
        ("content-type".to_string(), b"text/plain".to_vec()),
    ];
    (headers, text.as_bytes().to_vec(), Vec::new())
}

fn envoy_reply(status: u32, body: &str, details: &str) -> LocalReply {
    LocalReply { status, details: details.to_string(), body: body.as_bytes().to_vec(), headers: Vec::new(), grpc_status: -1 }
}

impl Stream {
    fn with<R>(&self, f: impl FnOnce(&mut Inner, (usize, u32)) -> R) -> R {
        let mut inner = self.inner.borrow_mut();
        f(&mut inner, self.key)
    }

    /// The worker this stream runs on, and its context id there.
    pub fn id(&self) -> (usize, u32) {
        self.key
    }

    /// The client sends request headers. Returns the filter's action (0 Continue, 1 Pause).
    pub fn request_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> i32 {
        self.with(|i, k| i.request_headers(k, headers, end_of_stream))
    }
    /// The client sends a body chunk.
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> i32 {
        self.with(|i, k| i.request_body(k, chunk, end_of_stream))
    }
    /// The client ends the request with trailers.
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> i32 {
        self.with(|i, k| i.request_trailers(k, trailers))
    }
    /// Headers, then the body in one chunk (or headers alone with end_of_stream if it is empty).
    pub fn send_request(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        self.send_request_chunked(headers, body, &[usize::MAX]);
    }
    /// Headers, then the body cut into chunks of the given sizes (the last size repeats).
    pub fn send_request_chunked(&mut self, headers: &[(&str, &str)], body: &[u8], sizes: &[usize]) {
        if body.is_empty() {
            self.request_headers(headers, true);
            return;
        }
        self.request_headers(headers, false);
        for (chunk, last) in chunks(body, sizes) {
            self.request_body(chunk, last);
        }
    }
    /// The upstream answers headers.
    pub fn response_headers(&mut self, headers: &[(&str, &str)], end_of_stream: bool) -> i32 {
        self.with(|i, k| i.response_headers(k, headers, end_of_stream))
    }
    /// The upstream sends a body chunk.
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> i32 {
        self.with(|i, k| i.response_body(k, chunk, end_of_stream))
    }
    /// The upstream ends the response with trailers.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> i32 {
        self.with(|i, k| i.response_trailers(k, trailers))
    }
    /// The upstream answers: headers, then the body in chunks of the given sizes.
    pub fn respond_chunked(&mut self, headers: &[(&str, &str)], body: &[u8], sizes: &[usize]) {
        if body.is_empty() {
            self.response_headers(headers, true);
            return;
        }
        self.response_headers(headers, false);
        for (chunk, last) in chunks(body, sizes) {
            self.response_body(chunk, last);
        }
    }
    /// The upstream answers in one body chunk.
    pub fn respond(&mut self, headers: &[(&str, &str)], body: &[u8]) {
        self.respond_chunked(headers, body, &[usize::MAX]);
    }
    /// The client goes away mid-stream.
    pub fn client_reset(&mut self) {
        self.with(|i, k| i.client_reset(k))
    }
    /// The upstream connection drops (before headers: Envoy answers 503 through the filter).
    pub fn upstream_reset(&mut self) {
        self.with(|i, k| i.upstream_reset(k))
    }

    /// What the upstream has received so far.
    pub fn upstream(&self) -> UpstreamRequest {
        self.with(|i, k| i.flow(k).upstream.clone())
    }
    /// What the client has received so far.
    pub fn client(&self) -> ClientResponse {
        self.with(|i, k| i.flow(k).client.clone())
    }
    /// Whether the stream ended (log/done/delete ran).
    pub fn finished(&self) -> bool {
        self.with(|i, k| i.flow(k).finished)
    }
    /// Filter state the filter set (`wasm.<name>`), as the access log would print it.
    pub fn filter_state(&self, key: &str) -> Option<String> {
        self.with(|i, k| {
            let (w, ctx) = k;
            let live = i.workers[w].vm.store.data().streams.get(&ctx).and_then(|a| a.filter_state.get(key).cloned());
            live.or_else(|| i.flow(k).filter_state.get(key).cloned()).map(|v| String::from_utf8_lossy(&v).into_owned())
        })
    }
    /// Every filter-state entry the stream has.
    pub fn filter_states(&self) -> BTreeMap<String, String> {
        self.with(|i, k| {
            let (w, ctx) = k;
            let map = match i.workers[w].vm.store.data().streams.get(&ctx) {
                Some(abi) => abi.filter_state.clone(),
                None => i.flow(k).filter_state.clone(),
            };
            map.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect()
        })
    }
    /// Wasm instructions the filter executed for this stream (fuel consumed by its callbacks).
    pub fn instructions(&self) -> u64 {
        self.with(|i, k| i.flow(k).fuel)
    }

    /// Asserts the request reached the upstream complete, with exactly these body bytes.
    pub fn expect_upstream_body(&self, expected: &[u8]) {
        let up = self.upstream();
        let client = self.client();
        assert!(
            client.local_reply.is_none(),
            "expected the request upstream, but the filter answered {}: {}",
            client.local_reply.as_ref().map(|r| r.status).unwrap_or(0),
            String::from_utf8_lossy(&client.body)
        );
        assert!(up.complete, "the request has not reached the upstream complete (headers sent: {})", up.headers.is_some());
        if up.body != expected {
            panic!(
                "upstream body differs\n  expected: {}\n    actual: {}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(&up.body)
            );
        }
    }

    /// Asserts the filter answered locally with `status`; returns what the client received.
    pub fn expect_local_response(&self, status: u16) -> ClientResponse {
        let client = self.client();
        let Some(reply) = &client.local_reply else {
            panic!(
                "expected a local {status} response; the client got {:?} (upstream got headers: {}, complete: {})",
                client.status(),
                self.upstream().headers.is_some(),
                self.upstream().complete
            );
        };
        assert_eq!(
            reply.status as u16, status,
            "local response status; body: {}",
            String::from_utf8_lossy(&client.body)
        );
        client
    }
}

/// Splits `body` into chunks of `sizes` (the last size repeats); yields (chunk, is_last).
pub fn chunks<'a>(body: &'a [u8], sizes: &[usize]) -> Vec<(&'a [u8], bool)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let size = sizes.get(i).or(sizes.last()).copied().unwrap_or(usize::MAX).max(1);
        let end = at.saturating_add(size).min(body.len());
        out.push((&body[at..end], end == body.len()));
        at = end;
        i += 1;
    }
    out
}
