//! One worker VM: a wasmtime instance of the filter and the host side of every proxy-wasm import.
//!
//! Each host function answers what Envoy 1.40 (proxy-wasm-cpp-host) answers, status for status,
//! because the Rust SDK panics on any status it does not expect: a host that is kinder than Envoy
//! would let a filter pass here and trap in production. The Envoy rules that matter most:
//! - a header map is readable/writable only while Envoy holds it for the filter: during its own
//!   callback, or while the filter keeps the headers paused (after the headers callback returned
//!   `Continue`, or after `proxy_continue_stream`, `get_*_header` answers `BadArgument`, on which
//!   the SDK panics); `get_header_map_pairs` of an absent map is `Ok` and empty;
//! - a buffered body (the filter returned `Pause` from a body callback) accumulates: the next body
//!   callback sees every byte so far;
//! - empty data is returned as a null pointer and size 0;
//! - the plugin configuration is readable only during `proxy_on_configure`;
//! - filter state set by `proxy_set_property` is keyed `wasm.<path>` and needs a stream.

use crate::abi::{self, BufferType, MapType, Status};
use crate::shared::{HttpCall, Metric, Shared};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use wasmtime::{Caller, Extern, Instance, Linker, Module, Store, Val};

/// Fuel given to each callback: far above any sane request (a 1 MiB body costs tens of millions),
/// so only a runaway loop runs out, and then the callback traps instead of hanging the suite.
pub const FUEL_PER_CALLBACK: u64 = 20_000_000_000;

/// Header pairs as the host keeps them: lower-case names (Envoy lower-cases), raw byte values.
pub type Pairs = Vec<(String, Vec<u8>)>;

/// What a filter asked the host to do to its stream during a callback; applied after the
/// callback returns, as Envoy defers them ("after VM call actions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    ContinueRequest,
    ContinueResponse,
    ResetRequest,
    ResetResponse,
    LocalResponse(LocalReply),
}

/// A local response the filter sent (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub details: String,
    pub body: Vec<u8>,
    pub headers: Pairs,
    pub grpc_status: i32,
}

/// The ABI-visible state of one HTTP stream context.
#[derive(Debug, Default)]
pub struct StreamAbi {
    pub request_headers: Pairs,
    pub request_headers_live: bool,
    pub request_trailers: Pairs,
    pub request_trailers_live: bool,
    pub request_body: Vec<u8>,
    pub request_body_live: bool,
    pub response_headers: Pairs,
    pub response_headers_live: bool,
    pub response_trailers: Pairs,
    pub response_trailers_live: bool,
    pub response_body: Vec<u8>,
    pub response_body_live: bool,
    /// During `proxy_on_log`: maps read from the access-log snapshot.
    pub log_phase: bool,
    /// Envoy filter state written with `proxy_set_property` (`wasm.` + path).
    pub filter_state: BTreeMap<String, Vec<u8>>,
    /// Per-stream properties (e.g. `request.id`), path segments joined by '.'.
    pub properties: BTreeMap<String, Vec<u8>>,
    pub effects: Vec<Effect>,
}

/// The response to a dispatched call, readable during `proxy_on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    pub headers: Pairs,
    pub body: Vec<u8>,
    pub trailers: Pairs,
}

/// Everything a VM's host functions can reach.
pub struct VmState {
    pub shared: Rc<RefCell<Shared>>,
    pub worker: usize,
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    /// Set only while `proxy_on_configure` runs.
    pub plugin_config: Option<Vec<u8>>,
    pub root_context_id: u32,
    /// The context whose callback is running, and the one host calls act on
    /// (`proxy_set_effective_context` changes the latter during call responses).
    pub current_context: u32,
    pub effective_context: u32,
    pub streams: HashMap<u32, StreamAbi>,
    pub tick_period_ms: u32,
    pub call_response: Option<CallResponse>,
    pub next_call_token: u32,
    pub metric_names: HashMap<u32, String>,
    pub next_metric_id: u32,
    pub log_level: i32,
    pub done_called: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub recent_stderr: Vec<String>,
    pub rng: u64,
}

impl VmState {
    fn stream(&mut self) -> Option<&mut StreamAbi> {
        let id = self.effective_context;
        self.streams.get_mut(&id)
    }
}

/// A running worker VM.
pub struct Vm {
    pub store: Store<VmState>,
    pub instance: Instance,
    /// Set once the VM trapped; Envoy stops calling a failed VM.
    pub failed: Option<String>,
}

/// A trap, with what the filter printed just before (a Rust panic message arrives on stderr).
#[derive(Debug, Clone)]
pub struct Trap {
    pub callback: String,
    pub message: String,
    pub stderr: String,
}

impl std::fmt::Display for Trap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the filter trapped in {}: {}", self.callback, self.message)?;
        if !self.stderr.is_empty() {
            write!(f, "\nfilter stderr:\n{}", self.stderr)?;
        }
        Ok(())
    }
}

impl Vm {
    /// Instantiates the module and runs `_initialize` (reactor) or `_start` (command).
    pub fn instantiate(module: &Module, state: VmState) -> Result<Vm, Trap> {
        let engine = module.engine();
        let mut linker: Linker<VmState> = Linker::new(engine);
        define_proxy_imports(&mut linker).map_err(|e| setup_trap(e.to_string()))?;
        define_wasi_imports(&mut linker).map_err(|e| setup_trap(e.to_string()))?;
        // Anything else the module imports exists but traps, naming itself, if it is ever called.
        linker.define_unknown_imports_as_traps(module).map_err(|e| setup_trap(e.to_string()))?;
        let mut store = Store::new(engine, state);
        store.set_fuel(FUEL_PER_CALLBACK).map_err(|e| setup_trap(e.to_string()))?;
        let instance = linker.instantiate(&mut store, module).map_err(|e| setup_trap(format!("{e:?}")))?;
        let mut vm = Vm { store, instance, failed: None };
        if vm.instance.get_func(&mut vm.store, "_initialize").is_some() {
            vm.call("_initialize", &[])?;
        } else if vm.instance.get_func(&mut vm.store, "_start").is_some() {
            vm.call("_start", &[])?;
        }
        Ok(vm)
    }

    pub fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export; `Ok(None)` when the module does not export it (the host skips it, as
    /// Envoy does) or it returns nothing. Returns the i32 result and counts fuel.
    pub fn call(&mut self, name: &str, args: &[i32]) -> Result<(Option<i32>, u64), Trap> {
        if let Some(message) = &self.failed {
            return Err(Trap { callback: name.to_string(), message: format!("VM already failed: {message}"), stderr: String::new() });
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok((None, 0));
        };
        let params: Vec<Val> = args.iter().map(|a| Val::I32(*a)).collect();
        let mut results = vec![Val::I32(0); func.ty(&self.store).results().len()];
        let _ = self.store.set_fuel(FUEL_PER_CALLBACK);
        let outcome = func.call(&mut self.store, &params, &mut results);
        let used = FUEL_PER_CALLBACK.saturating_sub(self.store.get_fuel().unwrap_or(0));
        self.flush_stdio();
        match outcome {
            Ok(()) => Ok((results.first().and_then(|v| v.i32()), used)),
            Err(e) => {
                let state = self.store.data();
                let mut stderr = state.recent_stderr.join("\n");
                stderr.push_str(&String::from_utf8_lossy(&state.stderr));
                let message = format!("{e:?}");
                self.failed = Some(message.clone());
                Err(Trap { callback: name.to_string(), message, stderr })
            }
        }
    }

    /// Moves complete stdout/stderr lines to the shared log; the last stderr lines are kept for
    /// trap reports (a Rust panic message arrives there just before the trap).
    fn flush_stdio(&mut self) {
        let state = self.store.data_mut();
        let mut lines = Vec::new();
        for (level, buf) in [("stdout", &mut state.stdout), ("stderr", &mut state.stderr)] {
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                lines.push((level, String::from_utf8_lossy(&line[..line.len() - 1]).into_owned()));
            }
        }
        for (level, text) in lines {
            if level == "stderr" {
                state.recent_stderr.push(text.clone());
                if state.recent_stderr.len() > 20 {
                    state.recent_stderr.remove(0);
                }
            }
            state.shared.borrow_mut().log(state.worker, level, text);
        }
    }
}

fn setup_trap(message: String) -> Trap {
    Trap { callback: "instantiate".to_string(), message, stderr: String::new() }
}

type HostResult<T> = wasmtime::Result<T>;

fn memory(caller: &mut Caller<'_, VmState>) -> HostResult<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => wasmtime::bail!("host-tests: the module exports no memory"),
    }
}

fn read(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<Vec<u8>, Status> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(caller).map_err(|_| Status::InvalidMemoryAccess)?;
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    let data = mem.data(&*caller);
    data.get(ptr..ptr.checked_add(len).ok_or(Status::InvalidMemoryAccess)?)
        .map(|s| s.to_vec())
        .ok_or(Status::InvalidMemoryAccess)
}

fn read_str(caller: &mut Caller<'_, VmState>, ptr: i32, len: i32) -> Result<String, Status> {
    read(caller, ptr, len).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write(caller: &mut Caller<'_, VmState>, ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    let mem = memory(caller).map_err(|_| Status::InvalidMemoryAccess)?;
    mem.write(&mut *caller, ptr as u32 as usize, bytes).map_err(|_| Status::InvalidMemoryAccess)
}

fn write_u32(caller: &mut Caller<'_, VmState>, ptr: i32, value: u32) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

fn write_u64(caller: &mut Caller<'_, VmState>, ptr: i32, value: u64) -> Result<(), Status> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (its `proxy_on_memory_allocate`, or `malloc`)
/// and writes pointer and size; empty data is a null pointer and size 0, as Envoy answers.
fn copy_out(caller: &mut Caller<'_, VmState>, bytes: &[u8], ptr_ptr: i32, size_ptr: i32) -> HostResult<Status> {
    let mut ptr = 0i32;
    if !bytes.is_empty() {
        let alloc = caller
            .get_export("proxy_on_memory_allocate")
            .or_else(|| caller.get_export("malloc"))
            .and_then(|e| e.into_func());
        let Some(alloc) = alloc else {
            wasmtime::bail!("host-tests: the module exports neither proxy_on_memory_allocate nor malloc");
        };
        let alloc = alloc.typed::<i32, i32>(&*caller)?;
        ptr = alloc.call(&mut *caller, bytes.len() as i32)?;
        if ptr == 0 {
            return Ok(Status::InvalidMemoryAccess);
        }
        if let Err(s) = write(caller, ptr, bytes) {
            return Ok(s);
        }
    }
    if let Err(s) = write_u32(caller, ptr_ptr, ptr as u32) {
        return Ok(s);
    }
    if let Err(s) = write_u32(caller, size_ptr, bytes.len() as u32) {
        return Ok(s);
    }
    Ok(Status::Ok)
}

macro_rules! tryst {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(status) => return Ok(status.code()),
        }
    };
}

/// Which stored map a map type names, and whether Envoy currently exposes it.
fn map_slot(state: &mut VmState, map: MapType, for_write: bool) -> Option<&mut Pairs> {
    if matches!(map, MapType::HttpCallResponseHeaders | MapType::HttpCallResponseTrailers) {
        if for_write {
            return None;
        }
        let response = state.call_response.as_mut()?;
        return Some(if map == MapType::HttpCallResponseHeaders { &mut response.headers } else { &mut response.trailers });
    }
    let stream = state.stream()?;
    let log = stream.log_phase;
    let (pairs, live) = match map {
        MapType::RequestHeaders => (&mut stream.request_headers, stream.request_headers_live),
        MapType::RequestTrailers => (&mut stream.request_trailers, stream.request_trailers_live && !log),
        MapType::ResponseHeaders => (&mut stream.response_headers, stream.response_headers_live),
        MapType::ResponseTrailers => (&mut stream.response_trailers, stream.response_trailers_live),
        _ => return None,
    };
    // In the access-log phase Envoy reads from the log's snapshot, never writes.
    if (log && !for_write) || live {
        Some(pairs)
    } else {
        None
    }
}

/// Counts one host call by import name (`Shared::host_calls`): what a filter asks of the host per
/// request is part of its cost (each crossing into the host costs in V8).
fn note_call(c: &Caller<'_, VmState>, name: &'static str) {
    *c.data().shared.borrow_mut().host_calls.entry(name).or_insert(0) += 1;
}

/// Every proxy-wasm import, one function per ABI group.
fn define_proxy_imports(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    define_lifecycle(linker)?;
    define_buffers(linker)?;
    define_header_maps(linker)?;
    define_properties(linker)?;
    define_shared_data(linker)?;
    define_shared_queues(linker)?;
    define_stream_control(linker)?;
    define_calls(linker)?;
    define_metrics(linker)?;
    Ok(())
}

/// The ABI version, logging, the clock and the tick.
fn define_lifecycle(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_abi_version_0_2_1", || {})?;

    linker.func_wrap("env", "proxy_log", |mut c: Caller<'_, VmState>, level: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_log");
        let message = tryst!(read_str(&mut c, ptr, len));
        let state = c.data();
        state.shared.borrow_mut().log(state.worker, abi::level_name(level), message);
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap("env", "proxy_get_log_level", |mut c: Caller<'_, VmState>, ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_log_level");
        let level = c.data().log_level as u32;
        tryst!(write_u32(&mut c, ptr, level));
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Caller<'_, VmState>, ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_current_time_nanoseconds");
        let now = c.data().shared.borrow().now_ns;
        tryst!(write_u64(&mut c, ptr, now));
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Caller<'_, VmState>, period: i32| -> HostResult<i32> {
        note_call(&c, "proxy_set_tick_period_milliseconds");
        c.data_mut().tick_period_ms = period as u32;
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap("env", "proxy_done", |mut c: Caller<'_, VmState>| -> i32 {
        note_call(&c, "proxy_done");
        c.data_mut().done_called = true;
        Status::Ok.code()
    })?;

    linker.func_wrap("env", "proxy_get_status", |mut c: Caller<'_, VmState>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_status");
        tryst!(write_u32(&mut c, code_ptr, 0));
        Ok(copy_out(&mut c, &[], ptr_ptr, size_ptr)?.code())
    })?;

    linker.func_wrap("env", "proxy_set_effective_context", |mut c: Caller<'_, VmState>, id: i32| -> i32 {
        note_call(&c, "proxy_set_effective_context");
        let state = c.data_mut();
        let id = id as u32;
        if id == state.root_context_id || state.streams.contains_key(&id) {
            state.effective_context = id;
            Status::Ok.code()
        } else {
            Status::BadArgument.code()
        }
    })?;

    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 { note_call(&_c, "proxy_call_foreign_function"); Status::NotFound.code() },
    )?;
    Ok(())
}

/// Request, response, call and configuration buffers.
fn define_buffers(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, VmState>, kind: i32, start: i32, max: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_buffer_bytes");
            let Some(kind) = BufferType::from_abi(kind) else { return Ok(Status::BadArgument.code()) };
            // A scenario made reads of this buffer fail (`Gateway::fail_buffer_reads`).
            let injected = c.data().shared.borrow().failing_buffers.iter().find(|(k, _)| *k == kind).map(|(_, status)| *status);
            if let Some(status) = injected {
                return Ok(status.code());
            }
            let state = c.data_mut();
            let buffer: Option<Vec<u8>> = match kind {
                BufferType::VmConfiguration => Some(state.vm_config.clone()),
                BufferType::PluginConfiguration => state.plugin_config.clone(),
                BufferType::HttpCallResponseBody => state.call_response.as_ref().map(|r| r.body.clone()),
                BufferType::RequestBody => state.stream().filter(|s| s.request_body_live).map(|s| s.request_body.clone()),
                BufferType::ResponseBody => state.stream().filter(|s| s.response_body_live).map(|s| s.response_body.clone()),
                _ => None,
            };
            let Some(buffer) = buffer else { return Ok(Status::NotFound.code()) };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start.checked_add(max).is_none() {
                return Ok(Status::BadArgument.code());
            }
            let end = (start + max).min(buffer.len());
            let slice = buffer.get(start.min(end)..end).unwrap_or(&[]);
            if slice.is_empty() {
                // Envoy returns Ok without touching the out-pointers; the SDK's are null/0.
                return Ok(Status::Ok.code());
            }
            Ok(copy_out(&mut c, slice, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, VmState>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_set_buffer_bytes");
            let Some(kind) = BufferType::from_abi(kind) else { return Ok(Status::BadArgument.code()) };
            let data = tryst!(read(&mut c, ptr, len));
            let state = c.data_mut();
            let Some(stream) = state.stream() else { return Ok(Status::NotFound.code()) };
            let buffer = match kind {
                BufferType::RequestBody if stream.request_body_live => &mut stream.request_body,
                BufferType::ResponseBody if stream.response_body_live => &mut stream.response_body,
                BufferType::RequestBody | BufferType::ResponseBody => return Ok(Status::NotFound.code()),
                _ => return Ok(Status::BadArgument.code()),
            };
            // Envoy's Buffer::copyFrom: start 0 drains `size` bytes then prepends; start at or
            // past the end appends; anything else is refused.
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            if start == 0 {
                let drain = size.min(buffer.len());
                buffer.drain(..drain);
                let mut replaced = data;
                replaced.extend_from_slice(buffer);
                *buffer = replaced;
            } else if start >= buffer.len() {
                buffer.extend_from_slice(&data);
            } else {
                return Ok(Status::BadArgument.code());
            }
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Header maps (live only while Envoy holds them for the filter).
fn define_header_maps(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_header_map_pairs");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            // Envoy answers Ok with an empty map when the map is absent.
            let pairs = map_slot(c.data_mut(), map, false).map(|p| p.clone()).unwrap_or_default();
            let bytes = abi::serialize_pairs(&pairs);
            Ok(copy_out(&mut c, &bytes, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, VmState>, map: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_set_header_map_pairs");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            let bytes = tryst!(read(&mut c, ptr, len));
            let Some(pairs) = abi::deserialize_pairs(&bytes) else { return Ok(Status::BadArgument.code()) };
            let Some(slot) = map_slot(c.data_mut(), map, true) else { return Ok(Status::BadArgument.code()) };
            *slot = pairs.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_header_map_value");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            let key = tryst!(read_str(&mut c, key_ptr, key_len)).to_ascii_lowercase();
            let state = c.data_mut();
            let log_phase = state.stream().map(|s| s.log_phase).unwrap_or(false);
            let value = match map_slot(state, map, false) {
                None if log_phase => return Ok(Status::NotFound.code()),
                None => return Ok(Status::BadArgument.code()),
                Some(pairs) => pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()),
            };
            let Some(value) = value else { return Ok(Status::NotFound.code()) };
            Ok(copy_out(&mut c, &value, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, key_ptr: i32, key_len: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_replace_header_map_value");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            let key = tryst!(read_str(&mut c, key_ptr, key_len)).to_ascii_lowercase();
            let value = tryst!(read(&mut c, ptr, len));
            let Some(pairs) = map_slot(c.data_mut(), map, true) else { return Ok(Status::BadArgument.code()) };
            // Envoy's setCopy: replaces the first entry's value, drops later duplicates.
            if let Some(first) = pairs.iter().position(|(k, _)| *k == key) {
                pairs[first].1 = value;
                let mut seen = false;
                pairs.retain(|(k, _)| {
                    if *k != key {
                        return true;
                    }
                    let keep = !seen;
                    seen = true;
                    keep
                });
            } else {
                pairs.push((key, value));
            }
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, key_ptr: i32, key_len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_remove_header_map_value");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            let key = tryst!(read_str(&mut c, key_ptr, key_len)).to_ascii_lowercase();
            let Some(pairs) = map_slot(c.data_mut(), map, true) else { return Ok(Status::BadArgument.code()) };
            pairs.retain(|(k, _)| *k != key);
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, VmState>, map: i32, key_ptr: i32, key_len: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_add_header_map_value");
            let Some(map) = MapType::from_abi(map) else { return Ok(Status::BadArgument.code()) };
            let key = tryst!(read_str(&mut c, key_ptr, key_len)).to_ascii_lowercase();
            let value = tryst!(read(&mut c, ptr, len));
            let Some(pairs) = map_slot(c.data_mut(), map, true) else { return Ok(Status::BadArgument.code()) };
            pairs.push((key, value));
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Properties and filter state.
fn define_properties(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, VmState>, path_ptr: i32, path_len: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_property");
            let raw = tryst!(read(&mut c, path_ptr, path_len));
            let dotted = String::from_utf8_lossy(&raw).replace('\0', ".");
            let state = c.data_mut();
            let mut value = None;
            if let Some(stream) = state.stream() {
                value = stream
                    .properties
                    .get(&dotted)
                    .cloned()
                    .or_else(|| stream.filter_state.get(&format!("wasm.{}", String::from_utf8_lossy(&raw))).cloned());
                if value.is_none() {
                    value = stream_header_property(stream, &dotted);
                }
            }
            if value.is_none() {
                value = state.shared.borrow().properties.get(&dotted).cloned();
            }
            let Some(value) = value else { return Ok(Status::NotFound.code()) };
            Ok(copy_out(&mut c, &value, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, VmState>, path_ptr: i32, path_len: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_set_property");
            let path = tryst!(read(&mut c, path_ptr, path_len));
            let value = tryst!(read(&mut c, ptr, len));
            // Envoy needs a stream's info to hold filter state; a root context has none.
            let Some(stream) = c.data_mut().stream() else { return Ok(Status::NotFound.code()) };
            stream.filter_state.insert(format!("wasm.{}", String::from_utf8_lossy(&path)), value);
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Process-wide shared data with compare-and-swap.
fn define_shared_data(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, VmState>, key_ptr: i32, key_len: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_shared_data");
            let key = tryst!(read_str(&mut c, key_ptr, key_len));
            let state = c.data();
            let found = state.shared.borrow().data.get(&(state.vm_id.clone(), key)).cloned();
            let Some((value, cas)) = found else { return Ok(Status::NotFound.code()) };
            let status = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            if status != Status::Ok {
                return Ok(status.code());
            }
            tryst!(write_u32(&mut c, cas_ptr, cas));
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, VmState>, key_ptr: i32, key_len: i32, ptr: i32, len: i32, cas: i32| -> HostResult<i32> {
        note_call(&c, "proxy_set_shared_data");
            let key = tryst!(read_str(&mut c, key_ptr, key_len));
            let value = tryst!(read(&mut c, ptr, len));
            let state = c.data();
            let ok = state.shared.borrow_mut().set_data(&state.vm_id, &key, value, cas as u32);
            Ok(if ok { Status::Ok } else { Status::CasMismatch }.code())
        },
    )?;
    Ok(())
}

/// Process-wide shared queues.
fn define_shared_queues(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, VmState>, name_ptr: i32, name_len: i32, id_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_register_shared_queue");
            let name = tryst!(read_str(&mut c, name_ptr, name_len));
            let state = c.data();
            let owner = (state.worker, state.root_context_id);
            let id = {
                let mut shared = state.shared.borrow_mut();
                match shared.queues.iter().position(|q| q.vm_id == state.vm_id && q.name == name) {
                    Some(i) => {
                        shared.queues[i].owner = owner;
                        i as u32 + 1
                    }
                    None => {
                        shared.queues.push(crate::shared::Queue {
                            vm_id: state.vm_id.clone(),
                            name,
                            items: Default::default(),
                            owner,
                        });
                        shared.queues.len() as u32
                    }
                }
            };
            tryst!(write_u32(&mut c, id_ptr, id));
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, VmState>, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, id_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_resolve_shared_queue");
            let vm_id = tryst!(read_str(&mut c, vm_ptr, vm_len));
            let name = tryst!(read_str(&mut c, name_ptr, name_len));
            let found = c.data().shared.borrow().queues.iter().position(|q| q.vm_id == vm_id && q.name == name);
            let Some(i) = found else { return Ok(Status::NotFound.code()) };
            tryst!(write_u32(&mut c, id_ptr, i as u32 + 1));
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, VmState>, id: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_dequeue_shared_queue");
            let item = {
                let mut shared = c.data().shared.borrow_mut();
                let Some(queue) = shared.queues.get_mut((id as u32 as usize).wrapping_sub(1)) else {
                    return Ok(Status::NotFound.code());
                };
                queue.items.pop_front()
            };
            let Some(item) = item else { return Ok(Status::Empty.code()) };
            Ok(copy_out(&mut c, &item, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, VmState>, id: i32, ptr: i32, len: i32| -> HostResult<i32> {
        note_call(&c, "proxy_enqueue_shared_queue");
            let value = tryst!(read(&mut c, ptr, len));
            let mut shared = c.data().shared.borrow_mut();
            let Some(queue) = shared.queues.get_mut((id as u32 as usize).wrapping_sub(1)) else {
                return Ok(Status::NotFound.code());
            };
            queue.items.push_back(value);
            let (worker, root) = queue.owner;
            shared.queue_ready.push_back((worker, root, id as u32));
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Resuming, resetting and answering a stream locally.
fn define_stream_control(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_continue_stream", |mut c: Caller<'_, VmState>, kind: i32| -> HostResult<i32> {
        note_call(&c, "proxy_continue_stream");
        let effect = match kind {
            abi::STREAM_HTTP_REQUEST => Effect::ContinueRequest,
            abi::STREAM_HTTP_RESPONSE => Effect::ContinueResponse,
            abi::STREAM_DOWNSTREAM => return Ok(Status::Ok.code()),
            abi::STREAM_UPSTREAM => return Ok(Status::Unimplemented.code()),
            _ => return Ok(Status::BadArgument.code()),
        };
        if let Some(stream) = c.data_mut().stream() {
            if effect == Effect::ContinueRequest {
                // Envoy drops its pointers to the request once it continues it.
                stream.request_headers_live = false;
                stream.request_trailers_live = false;
            }
            stream.effects.push(effect);
        }
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap("env", "proxy_close_stream", |mut c: Caller<'_, VmState>, kind: i32| -> HostResult<i32> {
        note_call(&c, "proxy_close_stream");
        let effect = match kind {
            abi::STREAM_HTTP_REQUEST => Effect::ResetRequest,
            abi::STREAM_HTTP_RESPONSE => Effect::ResetResponse,
            abi::STREAM_DOWNSTREAM | abi::STREAM_UPSTREAM => return Ok(Status::Ok.code()),
            _ => return Ok(Status::BadArgument.code()),
        };
        if let Some(stream) = c.data_mut().stream() {
            stream.effects.push(effect);
        }
        Ok(Status::Ok.code())
    })?;

    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, VmState>,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32|
         -> HostResult<i32> {
        note_call(&c, "proxy_send_local_response");
            let details = tryst!(read_str(&mut c, details_ptr, details_len));
            let body = tryst!(read(&mut c, body_ptr, body_len));
            let raw_headers = tryst!(read(&mut c, headers_ptr, headers_len));
            let Some(headers) = abi::deserialize_pairs(&raw_headers) else { return Ok(Status::BadArgument.code()) };
            let headers = headers.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
            if let Some(stream) = c.data_mut().stream() {
                stream.effects.push(Effect::LocalResponse(LocalReply { status: status as u32, details, body, headers, grpc_status }));
            }
            Ok(Status::Ok.code())
        },
    )?;
    Ok(())
}

/// Outbound HTTP calls; gRPC (no services here).
fn define_calls(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, VmState>,
         up_ptr: i32,
         up_len: i32,
         h_ptr: i32,
         h_len: i32,
         b_ptr: i32,
         b_len: i32,
         t_ptr: i32,
         t_len: i32,
         timeout: i32,
         token_ptr: i32|
         -> HostResult<i32> {
        note_call(&c, "proxy_http_call");
            let cluster = tryst!(read_str(&mut c, up_ptr, up_len));
            let raw_headers = tryst!(read(&mut c, h_ptr, h_len));
            let body = tryst!(read(&mut c, b_ptr, b_len));
            let raw_trailers = tryst!(read(&mut c, t_ptr, t_len));
            let (Some(headers), Some(trailers)) = (abi::deserialize_pairs(&raw_headers), abi::deserialize_pairs(&raw_trailers)) else {
                return Ok(Status::BadArgument.code());
            };
            let text = |p: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
                p.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned())).collect()
            };
            let headers = text(headers);
            // Envoy refuses a call without :path, :method and :authority, or to an unknown cluster.
            let has = |name: &str| headers.iter().any(|(k, _)| k == name);
            if !(has(":path") && has(":method") && (has(":authority") || has("host"))) || (timeout as i64) < 0 {
                return Ok(Status::BadArgument.code());
            }
            let state = c.data_mut();
            if let Some(known) = &state.shared.borrow().clusters {
                if !known.iter().any(|k| *k == cluster) {
                    return Ok(Status::BadArgument.code());
                }
            }
            state.next_call_token += 1;
            let token = state.next_call_token;
            let call = HttpCall {
                worker: state.worker,
                context_id: state.effective_context,
                token,
                cluster,
                headers,
                body,
                trailers: text(trailers),
                timeout_ms: timeout as u32,
                dispatched_at_ms: state.shared.borrow().now_ms(),
            };
            state.shared.borrow_mut().calls.push(call);
            tryst!(write_u32(&mut c, token_ptr, token));
            Ok(Status::Ok.code())
        },
    )?;

    // gRPC: Envoy answers ParseFailure for a cluster it does not know; the host has no gRPC
    // services, so every gRPC call is "no such cluster", which the SDK turns into an Err.
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 {
        note_call(&_c, "proxy_grpc_call");
            Status::ParseFailure.code()
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 {
        note_call(&_c, "proxy_grpc_stream");
            Status::ParseFailure.code()
        },
    )?;

    linker.func_wrap("env", "proxy_grpc_send", |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32| -> i32 {
        note_call(&_c, "proxy_grpc_send");
        Status::NotFound.code()
    })?;

    linker.func_wrap("env", "proxy_grpc_cancel", |_c: Caller<'_, VmState>, _: i32| -> i32 { note_call(&_c, "proxy_grpc_cancel"); Status::NotFound.code() })?;

    linker.func_wrap("env", "proxy_grpc_close", |_c: Caller<'_, VmState>, _: i32| -> i32 { note_call(&_c, "proxy_grpc_close"); Status::NotFound.code() })?;
    Ok(())
}

/// Counters, gauges and histograms.
fn define_metrics(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, VmState>, kind: i32, name_ptr: i32, name_len: i32, id_ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_define_metric");
            if !(abi::METRIC_COUNTER..=abi::METRIC_HISTOGRAM).contains(&kind) {
                return Ok(Status::BadArgument.code());
            }
            let name = tryst!(read_str(&mut c, name_ptr, name_len));
            let state = c.data_mut();
            state.next_metric_id += 1;
            let id = (state.next_metric_id << 2) | kind as u32;
            state.metric_names.insert(id, name.clone());
            state.shared.borrow_mut().metrics.entry(name).or_insert(match kind {
                abi::METRIC_COUNTER => Metric::Counter(0),
                abi::METRIC_GAUGE => Metric::Gauge(0),
                _ => Metric::Histogram(Vec::new()),
            });
            tryst!(write_u32(&mut c, id_ptr, id));
            Ok(Status::Ok.code())
        },
    )?;

    linker.func_wrap("env", "proxy_increment_metric", |mut c: Caller<'_, VmState>, id: i32, offset: i64| -> i32 {
        note_call(&c, "proxy_increment_metric");
        let state = c.data_mut();
        let Some(name) = state.metric_names.get(&(id as u32)) else { return Status::NotFound.code() };
        let mut shared = state.shared.borrow_mut();
        match shared.metrics.get_mut(name) {
            // Envoy: a counter only goes up; a zero or negative increment is BadArgument.
            Some(Metric::Counter(v)) if offset > 0 => *v = v.saturating_add(offset as u64),
            Some(Metric::Counter(_)) => return Status::BadArgument.code(),
            Some(Metric::Gauge(v)) => *v = v.saturating_add(offset),
            Some(Metric::Histogram(_)) => return Status::BadArgument.code(),
            None => return Status::NotFound.code(),
        }
        Status::Ok.code()
    })?;

    linker.func_wrap("env", "proxy_record_metric", |mut c: Caller<'_, VmState>, id: i32, value: i64| -> i32 {
        note_call(&c, "proxy_record_metric");
        let state = c.data_mut();
        let Some(name) = state.metric_names.get(&(id as u32)) else { return Status::NotFound.code() };
        let mut shared = state.shared.borrow_mut();
        match shared.metrics.get_mut(name) {
            Some(Metric::Counter(v)) => *v = v.saturating_add(value as u64),
            Some(Metric::Gauge(v)) => *v = value,
            Some(Metric::Histogram(values)) => values.push(value as u64),
            None => return Status::NotFound.code(),
        }
        Status::Ok.code()
    })?;

    linker.func_wrap("env", "proxy_get_metric", |mut c: Caller<'_, VmState>, id: i32, ptr: i32| -> HostResult<i32> {
        note_call(&c, "proxy_get_metric");
        let value = {
            let state = c.data();
            let Some(name) = state.metric_names.get(&(id as u32)) else { return Ok(Status::NotFound.code()) };
            match state.shared.borrow().metrics.get(name) {
                Some(Metric::Counter(v)) => *v,
                Some(Metric::Gauge(v)) => *v as u64,
                Some(Metric::Histogram(_)) => return Ok(Status::BadArgument.code()),
                None => return Ok(Status::NotFound.code()),
            }
        };
        tryst!(write_u64(&mut c, ptr, value));
        Ok(Status::Ok.code())
    })?;
    Ok(())
}

/// The request/response attributes Envoy exposes as properties (`request.path`, `request.method`,
/// `request.headers.<name>`, `response.code`), read from the stream's maps.
fn stream_header_property(stream: &StreamAbi, dotted: &str) -> Option<Vec<u8>> {
    let header = |pairs: &Pairs, name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    match dotted {
        "request.path" => header(&stream.request_headers, ":path"),
        "request.method" => header(&stream.request_headers, ":method"),
        "request.host" => header(&stream.request_headers, ":authority"),
        "request.scheme" => header(&stream.request_headers, ":scheme"),
        "response.code" => {
            let status = header(&stream.response_headers, ":status")?;
            let code: u64 = String::from_utf8_lossy(&status).parse().ok()?;
            Some(code.to_le_bytes().to_vec())
        }
        _ => {
            if let Some(name) = dotted.strip_prefix("request.headers.") {
                header(&stream.request_headers, name)
            } else if let Some(name) = dotted.strip_prefix("response.headers.") {
                header(&stream.response_headers, name)
            } else {
                None
            }
        }
    }
}

// WASI preview1 errno values.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOSYS: i32 = 52;
const WASI: &str = "wasi_snapshot_preview1";

/// The WASI preview1 surface a Rust wasm32-wasip1 filter pulls in: no files, no environment, no
/// arguments; stdout/stderr captured into the log; the virtual clock; deterministic randomness.
fn define_wasi_imports(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(WASI, "args_sizes_get", |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
        note_call(&c, "wasi:args_sizes_get");
        if write_u32(&mut c, count, 0).is_err() || write_u32(&mut c, size, 0).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(WASI, "args_get", |_c: Caller<'_, VmState>, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:args_get"); ERRNO_SUCCESS })?;
    linker.func_wrap(WASI, "environ_sizes_get", |mut c: Caller<'_, VmState>, count: i32, size: i32| -> i32 {
        note_call(&c, "wasi:environ_sizes_get");
        if write_u32(&mut c, count, 0).is_err() || write_u32(&mut c, size, 0).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(WASI, "environ_get", |_c: Caller<'_, VmState>, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:environ_get"); ERRNO_SUCCESS })?;
    linker.func_wrap(WASI, "clock_res_get", |mut c: Caller<'_, VmState>, _id: i32, ptr: i32| -> i32 {
        note_call(&c, "wasi:clock_res_get");
        if write_u64(&mut c, ptr, 1_000).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(WASI, "clock_time_get", |mut c: Caller<'_, VmState>, id: i32, _precision: i64, ptr: i32| -> i32 {
        note_call(&c, "wasi:clock_time_get");
        let (wall, mono) = {
            let shared = c.data().shared.borrow();
            (shared.now_ns, shared.monotonic_ns)
        };
        let value = match id {
            0 => wall,
            1..=3 => mono,
            _ => return ERRNO_INVAL,
        };
        if write_u64(&mut c, ptr, value).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: Caller<'_, VmState>, fd: i32, iovs: i32, iovs_len: i32, written_ptr: i32| -> i32 {
        note_call(&c, "wasi:fd_write");
            if fd != 1 && fd != 2 {
                return ERRNO_BADF;
            }
            let mut total = 0u32;
            for i in 0..iovs_len.max(0) {
                let Ok(iov) = read(&mut c, iovs + i * 8, 8) else { return ERRNO_INVAL };
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = read(&mut c, ptr, len) else { return ERRNO_INVAL };
                total = total.wrapping_add(bytes.len() as u32);
                let state = c.data_mut();
                if fd == 1 { &mut state.stdout } else { &mut state.stderr }.extend_from_slice(&bytes);
            }
            if write_u32(&mut c, written_ptr, total).is_err() {
                return ERRNO_INVAL;
            }
            ERRNO_SUCCESS
        },
    )?;
    linker.func_wrap(WASI, "fd_read", |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:fd_read"); ERRNO_BADF })?;
    linker.func_wrap(WASI, "fd_close", |_c: Caller<'_, VmState>, _: i32| -> i32 { note_call(&_c, "wasi:fd_close"); ERRNO_SUCCESS })?;
    linker.func_wrap(WASI, "fd_seek", |_c: Caller<'_, VmState>, _: i32, _: i64, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:fd_seek"); ERRNO_BADF })?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: Caller<'_, VmState>, fd: i32, ptr: i32| -> i32 {
        note_call(&c, "wasi:fd_fdstat_get");
        if !(0..=2).contains(&fd) {
            return ERRNO_BADF;
        }
        // filetype 2 = character device; no flags; all rights.
        let mut stat = [0u8; 24];
        stat[0] = 2;
        stat[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        stat[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        if write(&mut c, ptr, &stat).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(WASI, "fd_prestat_get", |_c: Caller<'_, VmState>, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:fd_prestat_get"); ERRNO_BADF })?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:fd_prestat_dir_name"); ERRNO_BADF })?;
    linker.func_wrap(WASI, "sched_yield", |_c: Caller<'_, VmState>| -> i32 { note_call(&_c, "wasi:sched_yield"); ERRNO_SUCCESS })?;
    linker.func_wrap(WASI, "poll_oneoff", |_c: Caller<'_, VmState>, _: i32, _: i32, _: i32, _: i32| -> i32 { note_call(&_c, "wasi:poll_oneoff"); ERRNO_NOSYS })?;
    linker.func_wrap(WASI, "random_get", |mut c: Caller<'_, VmState>, ptr: i32, len: i32| -> i32 {
        note_call(&c, "wasi:random_get");
        let mut bytes = vec![0u8; len.max(0) as usize];
        let state = c.data_mut();
        for chunk in bytes.chunks_mut(8) {
            // SplitMix64: deterministic per worker, so a run is reproducible.
            state.rng = state.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let n = chunk.len();
            chunk.copy_from_slice(&z.to_le_bytes()[..n]);
        }
        if write(&mut c, ptr, &bytes).is_err() {
            return ERRNO_INVAL;
        }
        ERRNO_SUCCESS
    })?;
    linker.func_wrap(WASI, "proc_exit", |_c: Caller<'_, VmState>, code: i32| -> HostResult<()> {
        note_call(&_c, "wasi:proc_exit");
        wasmtime::bail!("the filter called proc_exit({code}); Envoy would abort the VM")
    })?;
    Ok(())
}
