//! The host calls enforcement needs beyond `crate::host`: shared data, shared queues, outbound
//! HTTP calls, gauges.
//!
//! Same rules as `crate::host`: the ABI is called directly and every status becomes a value (the
//! SDK's wrappers panic on statuses they do not expect, and a panic traps the VM). Outside wasm the
//! imports are stubs that fail, so the crate builds and tests natively.

use crate::host::{check, take, HostError};

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const EMPTY: u32 = 7;
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

/// Dispatches an HTTP call to `cluster`; the answer arrives at the current context's
/// `on_http_call_response` with the returned token.
///
/// This one goes through the SDK's `hostcalls::dispatch_http_call`: its dispatcher routes the
/// answer by token and only knows tokens registered there (an unknown token panics in the SDK).
/// That wrapper panics only on a status Envoy's `httpCall` never returns (Envoy answers Ok,
/// BadArgument for an unknown cluster, or InternalFailure).
pub fn http_call(cluster: &str, headers: &[(&str, &str)], body: &[u8], timeout_ms: u64) -> Result<u32, HostError> {
    let timeout = std::time::Duration::from_millis(timeout_ms.min(u64::from(u32::MAX)));
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers.to_vec(), Some(body), Vec::new(), timeout)
        .map_err(|status| HostError(status as u32))
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
