//! The part of Envoy's dynamic-modules ABI this module uses, declared by hand.
//!
//! Envoy's ABI is a C header (`source/extensions/dynamic_modules/abi/abi.h` in Envoy's tree): event
//! hooks the module exports (`envoy_dynamic_module_on_*`, in `lib.rs`) and callbacks Envoy
//! exports from its own binary (`envoy_dynamic_module_callback_*`, below), which the module
//! resolves when Envoy `dlopen`s it. Envoy's Rust SDK generates bindings for the whole header
//! (hundreds of functions, bindgen at build time); this benchmark needs a dozen, so they are
//! written out here and the crate has no dependencies.
//!
//! Layout notes that matter for correctness: a buffer is passed by value as a two-word struct
//! (`{ptr, length}`); C enums are `int`-sized, so they cross as `u32`; `bool` is C's `_Bool`.

use std::ffi::c_void;

/// The ABI version this module was written against: the string Envoy 1.40's own binary carries
/// (`ENVOY_DYNAMIC_MODULES_ABI_VERSION`). Envoy logs "Dynamic module ABI version v0.2.0 matched."
/// at info level when it loads the module, and a "deprecated" warning on a mismatch (it still
/// loads: minor versions are compatible one step back).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's per-stream filter object (`DynamicModuleHttpFilter`); opaque to the module.
pub type FilterEnvoyPtr = *mut c_void;
/// Envoy's filter configuration object; opaque to the module.
pub type ConfigEnvoyPtr = *mut c_void;

/// Bytes owned by Envoy, valid until the end of the current event hook (or the next setter call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// The bytes, or an empty slice for Envoy's null buffer.
    ///
    /// # Safety
    /// Only within the event hook that received the buffer, before any setter call.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: non-null, and valid for `length` bytes while the hook runs (the caller's promise).
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// Bytes owned by the module, lent to Envoy for the duration of one callback.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    /// A null buffer: "remove" where a header value is expected.
    pub const NULL: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };

    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// One header as Envoy lends it: key and value point into Envoy's header map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

impl EnvoyHttpHeader {
    pub const EMPTY: EnvoyHttpHeader = EnvoyHttpHeader {
        key_ptr: std::ptr::null(),
        key_length: 0,
        value_ptr: std::ptr::null(),
        value_length: 0,
    };
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADER: u32 = 0;
pub const RESPONSE_HEADER: u32 = 2;

/// `envoy_dynamic_module_type_http_body_type`: the chunk this hook received, or what earlier
/// hooks buffered (`StopIterationAndBuffer`).
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;

/// Status values shared by the header hooks (`FilterHeadersStatus`) and the body hooks
/// (`FilterDataStatus`): 0 is Continue in both; 1 is StopIteration for headers and
/// StopIterationAndBuffer for a body. Trailer hooks use 0 (Continue) too.
pub const CONTINUE: u32 = 0;
pub const STOP_ITERATION: u32 = 1;
pub const STOP_ITERATION_AND_BUFFER: u32 = 1;

extern "C" {
    pub fn envoy_dynamic_module_callback_http_get_headers_size(
        filter: FilterEnvoyPtr,
        header_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoyPtr,
        header_type: u32,
        result_headers: *mut EnvoyHttpHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_body_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
        filter: FilterEnvoyPtr,
        body_type: u32,
    ) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoyPtr,
        body_type: u32,
        result_buffer_vector: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_drain_body(
        filter: FilterEnvoyPtr,
        body_type: u32,
        bytes: usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoyPtr,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoyPtr,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
}
