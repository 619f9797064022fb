//! Every host call the filter makes, with every status handled.
//!
//! The proxy-wasm SDK's `hostcalls` panic on any status they did not expect, and a panic traps the
//! VM. These wrappers call the ABI directly and turn each status into a value the filter decides
//! about. Memory the host returns is allocated through `crate::abi::proxy_on_memory_allocate`
//! (the global allocator, a `Vec<u8>`'s layout), so it is taken back with `Vec::from_raw_parts`.
//!
//! Outside wasm (native `cargo test`), the imports are replaced by stubs that report failure, so
//! the crate builds and its pure parts are tested without a host.
//!
//! The second half is what enforcement needs beyond the request path: shared data (versioned),
//! shared queues, outbound HTTP calls, gauges.

use crate::wire;

/// A non-OK status from the host (proxy-wasm status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

/// What a stream callback tells the host: go on, or hold the stream where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    /// Stop iteration: the host buffers the body and calls again with the next chunk; a paused
    /// request resumes with `proxy_continue_stream`.
    Pause = 1,
}

/// Buffers the filter reads or writes.
#[derive(Debug, Clone, Copy)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

/// Header maps.
#[derive(Debug, Clone, Copy)]
pub enum Map {
    RequestHeaders = 0,
    ResponseHeaders = 2,
    HttpCallResponseHeaders = 6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

#[cfg(target_arch = "wasm32")]
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_log_level(level: *mut u32) -> u32;
        pub fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
        pub fn proxy_get_buffer_bytes(kind: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_set_buffer_bytes(kind: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
        pub fn proxy_get_header_map_pairs(kind: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        pub fn proxy_replace_header_map_value(kind: u32, key: *const u8, key_size: usize, value: *const u8, value_size: usize) -> u32;
        pub fn proxy_remove_header_map_value(kind: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, value_size: usize) -> u32;
        pub fn proxy_get_property(path: *const u8, path_size: usize, data: *mut *mut u8, size: *mut usize) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status: u32,
            details: *const u8,
            details_size: usize,
            body: *const u8,
            body_size: usize,
            headers: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
mod abi {
    //! Native stand-ins: every call fails with `InternalFailure` (10).
    const FAIL: u32 = 10;
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_get_log_level(_: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 { FAIL }
    pub unsafe fn proxy_get_buffer_bytes(_: u32, _: usize, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 { FAIL }
    pub unsafe fn proxy_set_buffer_bytes(_: u32, _: usize, _: usize, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 { FAIL }
    pub unsafe fn proxy_replace_header_map_value(_: u32, _: *const u8, _: usize, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_get_property(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize) -> u32 { FAIL }
    pub unsafe fn proxy_send_local_response(_: u32, _: *const u8, _: usize, _: *const u8, _: usize, _: *const u8, _: usize, _: i32) -> u32 { FAIL }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 { FAIL }
    pub unsafe fn proxy_continue_stream(_: u32) -> u32 { FAIL }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 { FAIL }
}

fn check(status: u32) -> Result<(), HostError> {
    if status == OK {
        Ok(())
    } else {
        Err(HostError(status))
    }
}

/// Takes ownership of a host-allocated buffer.
///
/// # Safety
/// `data`/`size` must come from a successful host call that allocated through
/// `proxy_on_memory_allocate` (or be null).
unsafe fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: the host allocated `size` bytes at `data` with our allocator and hands them over.
        unsafe { Vec::from_raw_parts(data, size, size) }
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length describe a live &str.
    let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// The host's current log level (Info if it cannot say).
pub fn log_level() -> LogLevel {
    let mut level = 0u32;
    // SAFETY: writes one u32 to a live local.
    let status = unsafe { abi::proxy_get_log_level(&mut level) };
    match (status, level) {
        (OK, 0) => LogLevel::Trace,
        (OK, 1) => LogLevel::Debug,
        (OK, 2) => LogLevel::Info,
        (OK, 3) => LogLevel::Warn,
        (OK, _) => LogLevel::Error,
        _ => LogLevel::Info,
    }
}

/// Unix nanoseconds (0 if the host cannot say).
pub fn now_ns() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: writes one u64 to a live local.
    let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        nanos
    } else {
        0
    }
}

/// Unix milliseconds (0 if the host cannot say).
pub fn now_ms() -> i64 {
    let mut nanos = 0u64;
    // SAFETY: writes one u64 to a live local.
    let status = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
    } else {
        0
    }
}

/// Bytes `start..start+max` of a buffer (empty if the buffer is absent).
pub fn get_buffer(kind: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers to live locals.
    let status = unsafe { abi::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    match status {
        // SAFETY: a successful call hands us the buffer.
        OK => Ok(unsafe { take(data, size) }),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// A host property by path segments (`["node", "id"]`); `Ok(None)` when the host has none.
pub fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
    // proxy-wasm serializes a property path as its segments joined by NUL bytes.
    let serialized = path.join("\0").into_bytes();
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the path slice is live; out-pointers to live locals.
    let status = unsafe { abi::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut size) };
    match status {
        // SAFETY: a successful call hands us the value.
        OK => Ok(Some(unsafe { take(data, size) })),
        NOT_FOUND => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Replaces bytes `start..start+size` of a buffer with `value` (`0, whole length` replaces all).
pub fn set_buffer(kind: Buffer, start: usize, size: usize, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length describe a live slice.
    check(unsafe { abi::proxy_set_buffer_bytes(kind as u32, start, size, value.as_ptr(), value.len()) })
}

/// All headers of a map, in order.
pub fn headers(kind: Map) -> Result<wire::HeaderMap, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers to live locals.
    let status = unsafe { abi::proxy_get_header_map_pairs(kind as u32, &mut data, &mut size) };
    check(status)?;
    // SAFETY: a successful call hands us the serialized map.
    let bytes = unsafe { take(data, size) };
    Ok(wire::HeaderMap::new(bytes))
}

pub fn set_header(kind: Map, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live strings.
    check(unsafe { abi::proxy_replace_header_map_value(kind as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

pub fn remove_header(kind: Map, name: &str) -> Result<(), HostError> {
    // SAFETY: pointer and length describe a live string.
    check(unsafe { abi::proxy_remove_header_map_value(kind as u32, name.as_ptr(), name.len()) })
}

/// Sets filter state `wasm.<name>` for this request (readable in the access log as
/// `%FILTER_STATE(wasm.<name>:PLAIN)%`). `name` is a single path element such as `tollgate.cost_micros`.
pub fn set_property(name: &str, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live data.
    check(unsafe { abi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Answers the request locally; the upstream is never called.
pub fn send_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
    let map = wire::encode_map(headers);
    const DETAILS: &str = "tollgate";
    // SAFETY: pointers and lengths describe live data.
    check(unsafe {
        abi::proxy_send_local_response(
            u32::from(status),
            DETAILS.as_ptr(),
            DETAILS.len(),
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Defines a counter; Envoy names it `wasmcustom.<name>`.
pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: pointer and length describe a live string; out-pointer to a live local.
    check(unsafe { abi::proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds to a counter. Zero is skipped (Envoy refuses a zero increment).
pub fn increment(id: u32, by: u64) {
    if by == 0 {
        return;
    }
    let by = i64::try_from(by).unwrap_or(i64::MAX);
    // SAFETY: plain values.
    let _ = unsafe { abi::proxy_increment_metric(id, by) };
}

/// Resumes a request paused in a request callback.
pub fn resume_request() -> Result<(), HostError> {
    // SAFETY: plain value (0 = HTTP request stream).
    check(unsafe { abi::proxy_continue_stream(0) })
}

/// Asks for `on_tick` on the root context every `period_ms` (0 stops it).
pub fn set_tick_period_ms(period_ms: u64) -> Result<(), HostError> {
    let period = u32::try_from(period_ms).unwrap_or(u32::MAX);
    // SAFETY: plain value.
    check(unsafe { abi::proxy_set_tick_period_milliseconds(period) })
}

// ---- shared data, shared queues, outbound calls, gauges (enforcement) ----

/// Status: the queue is empty.
const EMPTY: u32 = 7;
/// Status: the shared-data key changed since it was read.
const CAS_MISMATCH: u32 = 8;

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_shared_data(key: *const u8, key_size: usize, value: *mut *mut u8, value_size: *mut usize, cas: *mut u32) -> u32;
        pub fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
        pub fn proxy_register_shared_queue(name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_enqueue_shared_queue(id: u32, value: *const u8, value_size: usize) -> u32;
        pub fn proxy_dequeue_shared_queue(id: u32, value: *mut *mut u8, value_size: *mut usize) -> u32;
        pub fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_http_call(
            upstream: *const u8,
            upstream_size: usize,
            headers: *const u8,
            headers_size: usize,
            body: *const u8,
            body_size: usize,
            trailers: *const u8,
            trailers_size: usize,
            timeout_ms: u32,
            token: *mut u32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
mod imports {
    //! Native stand-ins: every call fails with `InternalFailure` (10).
    const FAIL: u32 = 10;
    pub unsafe fn proxy_get_shared_data(_: *const u8, _: usize, _: *mut *mut u8, _: *mut usize, _: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_set_shared_data(_: *const u8, _: usize, _: *const u8, _: usize, _: u32) -> u32 { FAIL }
    pub unsafe fn proxy_register_shared_queue(_: *const u8, _: usize, _: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_enqueue_shared_queue(_: u32, _: *const u8, _: usize) -> u32 { FAIL }
    pub unsafe fn proxy_dequeue_shared_queue(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 { FAIL }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_record_metric(_: u32, _: u64) -> u32 { FAIL }
    pub unsafe fn proxy_http_call(_: *const u8, _: usize, _: *const u8, _: usize, _: *const u8, _: usize, _: *const u8, _: usize, _: u32, _: *mut u32) -> u32 { FAIL }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 { FAIL }
}

/// A shared-data value and its version (`None`: the key is absent).
pub fn get_shared(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    let mut cas = 0u32;
    // SAFETY: pointer/length of a live &str, out-pointers to live locals.
    let status = unsafe { imports::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        // SAFETY: a successful call hands the value over.
        OK => Ok((Some(unsafe { take(data, size) }), (cas != 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        other => Err(HostError(other)),
    }
}

/// What a versioned write can say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetShared {
    Written,
    /// The key changed since it was read.
    Conflict,
    Failed(HostError),
}

/// Writes `value` if the key's version is still `cas` (`None`: unconditionally, for a new key).
pub fn set_shared(key: &str, value: &[u8], cas: Option<u32>) -> SetShared {
    // SAFETY: pointers/lengths of live data.
    let status = unsafe { imports::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) };
    match status {
        OK => SetShared::Written,
        CAS_MISMATCH => SetShared::Conflict,
        other => SetShared::Failed(HostError(other)),
    }
}

/// Registers (or finds) the process-wide queue `name`.
pub fn register_queue(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: pointer/length of a live &str, out-pointer to a live local.
    check(unsafe { imports::proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn enqueue(id: u32, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer/length of a live slice.
    check(unsafe { imports::proxy_enqueue_shared_queue(id, value.as_ptr(), value.len()) })
}

/// The next queued item, `None` when the queue is empty.
pub fn dequeue(id: u32) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: out-pointers to live locals.
    let status = unsafe { imports::proxy_dequeue_shared_queue(id, &mut data, &mut size) };
    match status {
        // SAFETY: a successful call hands the item over.
        OK => Ok(Some(unsafe { take(data, size) })),
        EMPTY => Ok(None),
        other => Err(HostError(other)),
    }
}

/// Dispatches an HTTP call to `cluster`; the answer arrives at the calling context's
/// `on_http_call_response` with the returned token (`crate::abi` routes it by that token).
pub fn http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Result<u32, HostError> {
    let headers = wire::encode_map(headers);
    let trailers = wire::encode_map(&[]);
    let timeout = u32::try_from(timeout_ms).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: pointers and lengths describe live data; out-pointer to a live local.
    check(unsafe {
        imports::proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            body.as_ptr(),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout,
            &mut token,
        )
    })?;
    CALLERS.with(|c| {
        if let Ok(mut calls) = c.calls.try_borrow_mut() {
            calls.push((token, c.current.get()));
        }
    });
    Ok(token)
}

/// Which context each outbound call belongs to, so its answer reaches it.
struct Callers {
    /// (token, context) of the calls not answered yet: a handful (lease top-ups, usage batches,
    /// requests paused for a lease), searched in order.
    calls: std::cell::RefCell<Vec<(u32, u32)>>,
    /// The context whose callback is running (`enter_context`).
    current: std::cell::Cell<u32>,
}

thread_local! {
    static CALLERS: Callers = const { Callers { calls: std::cell::RefCell::new(Vec::new()), current: std::cell::Cell::new(0) } };
}

/// The host is calling into `context_id`: outbound calls made from here on are its.
pub fn enter_context(context_id: u32) {
    CALLERS.with(|c| c.current.set(context_id));
}

/// The context that made the call `token` (once: the answer is delivered once).
pub fn caller_of(token: u32) -> Option<u32> {
    CALLERS.with(|c| {
        let mut calls = c.calls.try_borrow_mut().ok()?;
        let at = calls.iter().position(|(t, _)| *t == token)?;
        Some(calls.swap_remove(at).1)
    })
}

/// Makes `context_id` the context later host calls act on (an outbound call's answer is
/// delivered outside any stream callback).
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: plain value.
    check(unsafe { imports::proxy_set_effective_context(context_id) })
}

/// Defines a gauge; Envoy names it `wasmcustom.<name>`.
pub fn define_gauge(name: &str) -> Result<u32, HostError> {
    let mut id = 0u32;
    // SAFETY: pointer/length of a live &str, out-pointer to a live local.
    check(unsafe { imports::proxy_define_metric(1, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn set_gauge(id: u32, value: u64) {
    // SAFETY: plain values.
    let _ = unsafe { imports::proxy_record_metric(id, value) };
}
