//! Envoy dynamic-module (native) counterparts of two `make bench` reference filters, to measure
//! what Tollgate's conversation with Envoy costs when it is a function call instead of a wasm
//! crossing (issue 15, "Explore and report"; BENCHMARKS.md, "Dynamic modules (explored)").
//!
//! One shared object, `libtollgate_dynamic_calls.so`, loaded by Envoy's
//! `envoy.filters.http.dynamic_modules` filter; the filter's `filter_name` picks the case:
//!
//! - `noop`: every hook continues and no per-stream state is allocated. The floor any dynamic
//!   module pays (Envoy's filter object, one indirect call per hook), beside wasm's `noop`.
//! - `calls`: the host calls of bench/noop-filter's `calls` case on the benchmark's request, and
//!   nothing else. Request headers: read them all, remove `authorization`, set
//!   `accept-encoding: identity`, read the clock, stop iteration unless the headers end the
//!   stream. Request body: buffer until the end of stream, then read the whole body into module
//!   memory, write it back, set `content-length` and a route header. Response headers: read them
//!   all. Response body: read each chunk into module memory; write the chunk that holds the
//!   OpenAI stream's usage-only event back (Tollgate strips that event). Stream complete: set one
//!   filter-state value (the access-log value). Where the native ABI differs, the nearest
//!   equivalent is used and said so beside the call: headers are lent as pointers into Envoy's
//!   map (no copy; wasm copies them into the VM), a body write is a drain plus an append (wasm's
//!   is one replace), and the clock is the module's own `SystemTime::now()` (a vDSO read, no
//!   crossing; wasm's is a host call).
//!
//! Nothing here parses, routes or meters: a native build of `core` would add its own work on top
//! of these calls, as `tollgate` adds to `calls` in the wasm table.
//!
//! Safety at the boundary: every hook runs inside `guard`, which catches a panic and answers
//! "continue" instead of unwinding into Envoy (the crate also denies the panicking clippy lints,
//! so there should be none to catch). Pointers from Envoy are only read inside the hook that
//! received them, as the ABI requires.

// The hooks are `unsafe extern "C"`: Envoy, their only caller, guarantees the pointer
// arguments (the ABI's contract). Every unsafe operation inside them is still marked.
#![deny(unsafe_op_in_unsafe_fn)]
// Their safety contract is the ABI's, stated once above, not per hook.
#![allow(clippy::missing_safety_doc)]

mod abi;

use abi::{ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, ModuleBuffer};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::SystemTime;

/// Which reference filter a configuration runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Noop,
    Calls,
}

/// The configurations, as statics: Envoy only needs a stable non-null pointer per config.
static NOOP_CONFIG: Mode = Mode::Noop;
static CALLS_CONFIG: Mode = Mode::Calls;
/// What `noop` returns as its per-stream filter: a non-null pointer to nothing it must free.
static NOOP_FILTER: u8 = 0;

/// Per-stream state of `calls`: what a real filter would keep between hooks (its start time).
struct Calls {
    started: Option<SystemTime>,
}

/// How the usage-only chunk of an OpenAI stream starts (`"choices":[]`, then the usage).
const USAGE_ONLY: &[u8] = br#""choices":[],"usage""#;

/// Runs a hook body; a panic becomes `fallback` instead of unwinding across the C boundary.
fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// The `calls` state behind a filter pointer, or None for `noop`'s sentinel.
///
/// # Safety
/// `filter` must be a pointer returned by `envoy_dynamic_module_on_http_filter_new`, not yet
/// destroyed.
unsafe fn calls<'a>(filter: *const c_void) -> Option<&'a mut Calls> {
    if filter.is_null() || std::ptr::eq(filter, (&NOOP_FILTER as *const u8).cast()) {
        None
    } else {
        // SAFETY: any other pointer is a `Calls` this module boxed (the caller's promise).
        Some(unsafe { &mut *(filter as *mut Calls) })
    }
}

/// Every header of one map, lent by Envoy (two calls: the count, then the pointers).
///
/// # Safety
/// Inside an event hook of `envoy`.
unsafe fn read_headers(envoy: FilterEnvoyPtr, header_type: u32) -> Vec<EnvoyHttpHeader> {
    // SAFETY: inside a hook of `envoy` (the caller's promise); the vector holds `count` entries.
    unsafe {
        let count = abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, header_type);
        let mut headers = vec![EnvoyHttpHeader::EMPTY; count];
        if count == 0
            || !abi::envoy_dynamic_module_callback_http_get_headers(
                envoy,
                header_type,
                headers.as_mut_ptr(),
            )
        {
            headers.clear();
        }
        headers
    }
}

/// Appends one body (received or buffered) to `out`, copied out of Envoy's slices: Tollgate's
/// scanners need the body contiguous, as the wasm filter has it after `get_http_*_body`.
///
/// # Safety
/// Inside a body hook of `envoy`.
unsafe fn copy_body(envoy: FilterEnvoyPtr, body_type: u32, out: &mut Vec<u8>) {
    // SAFETY: inside a hook of `envoy` (the caller's promise).
    unsafe {
        let count = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(envoy, body_type);
        if count == 0 {
            return;
        }
        let mut chunks = vec![EnvoyBuffer::EMPTY; count];
        if abi::envoy_dynamic_module_callback_http_get_body_chunks(
            envoy,
            body_type,
            chunks.as_mut_ptr(),
        ) {
            for chunk in &chunks {
                out.extend_from_slice(chunk.bytes());
            }
        }
    }
}

/// Sets (or with `None` removes) a request or response header.
///
/// # Safety
/// Inside an event hook of `envoy`.
unsafe fn set_header(envoy: FilterEnvoyPtr, header_type: u32, key: &[u8], value: Option<&[u8]>) {
    // SAFETY: inside a hook of `envoy` (the caller's promise).
    unsafe {
        let value = value.map_or(ModuleBuffer::NULL, ModuleBuffer::of);
        abi::envoy_dynamic_module_callback_http_set_header(
            envoy,
            header_type,
            ModuleBuffer::of(key),
            value,
        );
    }
}

/// Called once when Envoy loads the module: the ABI version it was built against.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

/// A filter configuration: `filter_name` is the case (`noop` or `calls`); anything else is
/// refused, and Envoy then rejects the configuration naming the filter.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _config_envoy: ConfigEnvoyPtr,
    name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy lends the name for the duration of this hook.
        match unsafe { name.bytes() } {
            b"noop" => (&NOOP_CONFIG as *const Mode).cast(),
            b"calls" => (&CALLS_CONFIG as *const Mode).cast(),
            _ => std::ptr::null(),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    _config: *const c_void,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _envoy: FilterEnvoyPtr,
) -> *const c_void {
    guard(std::ptr::null(), || {
        if std::ptr::eq(config, (&CALLS_CONFIG as *const Mode).cast()) {
            Box::into_raw(Box::new(Calls { started: None })) as *const c_void
        } else {
            (&NOOP_FILTER as *const u8).cast()
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard((), || {
        // SAFETY: Envoy destroys each filter once, after its last hook.
        if unsafe { calls(filter) }.is_some() {
            drop(unsafe { Box::from_raw(filter as *mut Calls) });
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::CONTINUE, || {
        // SAFETY: inside the hook, on a live filter.
        let Some(state) = (unsafe { calls(filter) }) else {
            return abi::CONTINUE;
        };
        unsafe {
            let headers = read_headers(envoy, abi::REQUEST_HEADER);
            // The benchmark request's virtual key: Tollgate keeps it from the upstream.
            set_header(envoy, abi::REQUEST_HEADER, b"authorization", None);
            set_header(
                envoy,
                abi::REQUEST_HEADER,
                b"accept-encoding",
                Some(b"identity"),
            );
            state.started = Some(SystemTime::now());
            if end_of_stream || headers.is_empty() {
                return abi::CONTINUE;
            }
        }
        abi::STOP_ITERATION
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
    end_of_stream: bool,
) -> u32 {
    guard(abi::CONTINUE, || {
        // SAFETY: inside the hook, on a live filter.
        if unsafe { calls(filter) }.is_none() {
            return abi::CONTINUE;
        }
        if !end_of_stream {
            return abi::STOP_ITERATION_AND_BUFFER;
        }
        unsafe {
            // What earlier chunks buffered, then this one: the whole body, in order.
            let buffered = abi::envoy_dynamic_module_callback_http_get_body_size(
                envoy,
                abi::BUFFERED_REQUEST_BODY,
            );
            let received = abi::envoy_dynamic_module_callback_http_get_body_size(
                envoy,
                abi::RECEIVED_REQUEST_BODY,
            );
            let mut body = Vec::with_capacity(buffered + received);
            if buffered > 0 {
                copy_body(envoy, abi::BUFFERED_REQUEST_BODY, &mut body);
            }
            copy_body(envoy, abi::RECEIVED_REQUEST_BODY, &mut body);
            if !body.is_empty() {
                // Written back whole (Tollgate splices the model): drain, then append.
                if buffered > 0 {
                    abi::envoy_dynamic_module_callback_http_drain_body(
                        envoy,
                        abi::BUFFERED_REQUEST_BODY,
                        buffered,
                    );
                }
                abi::envoy_dynamic_module_callback_http_drain_body(
                    envoy,
                    abi::RECEIVED_REQUEST_BODY,
                    received,
                );
                abi::envoy_dynamic_module_callback_http_append_body(
                    envoy,
                    abi::RECEIVED_REQUEST_BODY,
                    ModuleBuffer::of(&body),
                );
                let length = body.len().to_string();
                set_header(
                    envoy,
                    abi::REQUEST_HEADER,
                    b"content-length",
                    Some(length.as_bytes()),
                );
            }
            set_header(envoy, abi::REQUEST_HEADER, b"x-bench-route", Some(b"calls"));
        }
        abi::CONTINUE
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    abi::CONTINUE
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guard(abi::CONTINUE, || {
        // SAFETY: inside the hook, on a live filter.
        if unsafe { calls(filter) }.is_some() {
            let _headers = unsafe { read_headers(envoy, abi::RESPONSE_HEADER) };
        }
        abi::CONTINUE
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guard(abi::CONTINUE, || {
        // SAFETY: inside the hook, on a live filter.
        if unsafe { calls(filter) }.is_none() {
            return abi::CONTINUE;
        }
        unsafe {
            let size = abi::envoy_dynamic_module_callback_http_get_body_size(
                envoy,
                abi::RECEIVED_RESPONSE_BODY,
            );
            if size == 0 {
                return abi::CONTINUE;
            }
            let mut chunk = Vec::with_capacity(size);
            copy_body(envoy, abi::RECEIVED_RESPONSE_BODY, &mut chunk);
            // Tollgate rewrites the chunk holding the usage-only event it asked for (it keeps that
            // event from the client): one body write, here with the bytes unchanged.
            if chunk.windows(USAGE_ONLY.len()).any(|w| w == USAGE_ONLY) {
                abi::envoy_dynamic_module_callback_http_drain_body(
                    envoy,
                    abi::RECEIVED_RESPONSE_BODY,
                    size,
                );
                abi::envoy_dynamic_module_callback_http_append_body(
                    envoy,
                    abi::RECEIVED_RESPONSE_BODY,
                    ModuleBuffer::of(&chunk),
                );
            }
        }
        abi::CONTINUE
    })
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) -> u32 {
    abi::CONTINUE
}

/// The end of the stream, before access logs: where the wasm `calls` case publishes its
/// access-log value (`on_log`), here as filter state.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    filter: *const c_void,
) {
    guard((), || {
        // SAFETY: inside the hook, on a live filter.
        if unsafe { calls(filter) }.is_some() {
            unsafe {
                abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                    envoy,
                    ModuleBuffer::of(b"bench.calls"),
                    ModuleBuffer::of(b"calls"),
                );
            }
        }
    })
}

// Hooks Envoy 1.40 requires every HTTP module to export, for features these filters never use
// (outbound calls, streams, scheduling, flow control). Never called here; they do nothing.

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _body_chunks: *const EnvoyBuffer,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _headers: *const EnvoyHttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _trailers: *const EnvoyHttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: *const c_void,
) {
}
