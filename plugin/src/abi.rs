//! The host's way in: every callback of the proxy-wasm ABI (0.2.1) the filter exports, and the
//! contexts they reach.
//!
//! The filter used to export the SDK's dispatcher. It is replaced here for three reasons:
//! - **It trapped on what a host may do.** The SDK panics (a trap: the proxy's traffic goes with
//!   it) on a context id it does not know, an answer to an outbound call whose token it did not
//!   register, a re-entrant callback, or a host status it did not expect while switching context.
//!   Here an unknown id or token is ignored (the request continues untouched) and nothing is
//!   borrowed across a callback.
//! - **It cost every callback.** A request makes about thirty callbacks (one per body chunk). The
//!   SDK found each context in a hash map behind `dyn` and kept maps for gRPC and TCP streams
//!   the filter does not have; here an HTTP context is found by its id's slot in a table
//!   ([`StreamTable`]) and the calls are direct.
//! - **It exported callbacks the filter does not use** (TCP streams, gRPC, queues, foreign
//!   functions); a host skips a callback that is not exported.
//!
//! What a host may rely on: `proxy_on_context_create` with root id 0 makes a [`Root`] (one per
//! plugin configuration), any other id makes a [`Stream`] of the root named; `proxy_on_delete`
//! drops either; an answer to an outbound call reaches the context that made it
//! (`host::http_call` notes the caller) with that context made effective first, as the ABI asks.

use crate::filter::{Root, Stream};
use crate::host::{self, Action};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Hashes a host-assigned context id by one multiplication: the ids are
/// small consecutive integers from the host's counter, so nothing aims them at a bucket.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// HTTP streams by context id: a direct-mapped table (slot `id mod SLOTS`) in front of a map.
///
/// A host numbers contexts from one counter, so the streams alive at once have nearby ids and
/// nearly all sit in their own slot: a lookup is a mask and one comparison (it runs on every
/// callback, about thirty per request). A stream whose slot is taken (more than `SLOTS` apart
/// from a long-lived one) goes to `spill`, which is searched only when it holds any.
struct StreamTable {
    /// Empty until the first stream (so the table starts in place, without allocating).
    slots: Vec<Option<(u32, Rc<RefCell<Stream>>)>>,
    spill: IdMap<Rc<RefCell<Stream>>>,
}

impl StreamTable {
    const SLOTS: usize = 256;

    const fn new() -> StreamTable {
        StreamTable { slots: Vec::new(), spill: HashMap::with_hasher(BuildHasherDefault::new()) }
    }

    fn slot(id: u32) -> usize {
        id as usize % Self::SLOTS
    }

    fn get(&self, id: u32) -> Option<Rc<RefCell<Stream>>> {
        match self.slots.get(Self::slot(id)) {
            Some(Some((at, stream))) if *at == id => Some(Rc::clone(stream)),
            _ if self.spill.is_empty() => None,
            _ => self.spill.get(&id).cloned(),
        }
    }

    /// Adds a stream; returns the one the id had (a host reusing a live id), to be dropped by
    /// the caller.
    fn insert(&mut self, id: u32, stream: Rc<RefCell<Stream>>) -> Option<Rc<RefCell<Stream>>> {
        if self.slots.is_empty() {
            self.slots.resize_with(Self::SLOTS, || None);
        }
        let replaced = self.remove(id);
        match self.slots.get_mut(Self::slot(id)) {
            Some(slot @ None) => *slot = Some((id, stream)),
            _ => {
                self.spill.insert(id, stream);
            }
        }
        replaced
    }

    fn remove(&mut self, id: u32) -> Option<Rc<RefCell<Stream>>> {
        match self.slots.get_mut(Self::slot(id)) {
            Some(slot @ Some(_)) if slot.as_ref().is_some_and(|(at, _)| *at == id) => slot.take().map(|(_, stream)| stream),
            _ if self.spill.is_empty() => None,
            _ => self.spill.remove(&id),
        }
    }
}

/// The VM's contexts. Each is borrowed only for the callback that reaches it: the tables are
/// never borrowed while the filter runs, so a context the host creates or deletes on the way
/// finds them free.
struct Contexts {
    /// Root contexts: one per plugin configuration sharing this VM (usually one).
    roots: RefCell<Vec<(u32, Rc<RefCell<Root>>)>>,
    streams: RefCell<StreamTable>,
}

thread_local! {
    // Initialised in place (no first-use check on every callback).
    static CONTEXTS: Contexts = const {
        Contexts {
            roots: RefCell::new(Vec::new()),
            streams: RefCell::new(StreamTable::new()),
        }
    };
}

fn root(context_id: u32) -> Option<Rc<RefCell<Root>>> {
    host::enter_context(context_id);
    CONTEXTS.with(|c| {
        let roots = c.roots.try_borrow().ok()?;
        roots.iter().find(|(id, _)| *id == context_id).map(|(_, root)| Rc::clone(root))
    })
}

fn stream(context_id: u32) -> Option<Rc<RefCell<Stream>>> {
    host::enter_context(context_id);
    CONTEXTS.with(|c| c.streams.try_borrow().ok()?.get(context_id))
}

/// Runs `f` on the stream `context_id`; `otherwise` if there is none or it is already running
/// (a host calling back into a stream from inside one of its own callbacks).
fn on_stream<R>(context_id: u32, otherwise: R, f: impl FnOnce(&mut Stream) -> R) -> R {
    match stream(context_id) {
        Some(stream) => match stream.try_borrow_mut() {
            Ok(mut stream) => f(&mut stream),
            Err(_) => otherwise,
        },
        None => otherwise,
    }
}

fn on_root<R>(context_id: u32, otherwise: R, f: impl FnOnce(&mut Root) -> R) -> R {
    match root(context_id) {
        Some(root) => match root.try_borrow_mut() {
            Ok(mut root) => f(&mut root),
            Err(_) => otherwise,
        },
        None => otherwise,
    }
}

fn flag(value: u32) -> bool {
    value != 0
}

#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The WASI reactor's entry: static constructors (the contexts themselves start empty).
#[cfg(target_os = "wasi")]
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker's constructor list, run once by the host before any callback.
    unsafe { __wasm_call_ctors() }
}

/// Memory the host fills and hands over (a header map, a body chunk): the global allocator with
/// a `Vec<u8>`'s layout, so `host` takes it back with `Vec::from_raw_parts`. Null if it cannot
/// be had (the host then fails its call).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    if size == 0 {
        return std::ptr::NonNull::<u8>::dangling().as_ptr();
    }
    match std::alloc::Layout::array::<u8>(size) {
        // SAFETY: a non-zero size.
        Ok(layout) => unsafe { std::alloc::alloc(layout) },
        Err(_) => std::ptr::null_mut(),
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        let root = Rc::new(RefCell::new(Root::default()));
        CONTEXTS.with(|c| {
            if let Ok(mut roots) = c.roots.try_borrow_mut() {
                roots.retain(|(id, _)| *id != context_id);
                roots.push((context_id, root));
            }
        });
        return;
    }
    let Some(stream) = on_root(root_context_id, None, |root| Some(root.create_stream(context_id))) else {
        return;
    };
    // A stream the id replaces is dropped after the map is let go (its drop may call the host).
    let replaced = CONTEXTS.with(|c| c.streams.try_borrow_mut().ok().and_then(|mut streams| streams.insert(context_id, stream)));
    drop(replaced);
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_context_id: u32, _vm_configuration_size: usize) -> u32 {
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> u32 {
    u32::from(on_root(context_id, false, |root| root.on_configure(plugin_configuration_size)))
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(context_id: u32) {
    on_root(context_id, (), Root::on_tick);
}

#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(_context_id: u32, token: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
    let Some(caller) = host::caller_of(token) else { return };
    // The answer's header and body buffers belong to the call; host calls made while handling it
    // (resuming a paused request, answering it) act on the caller.
    if host::set_effective_context(caller).is_err() {
        return;
    }
    if let Some(stream) = stream(caller) {
        if let Ok(mut stream) = stream.try_borrow_mut() {
            stream.on_http_call_response(token, num_headers, body_size, num_trailers);
        }
    } else {
        on_root(caller, (), |root| root.on_http_call_response(token, num_headers, body_size, num_trailers));
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(context_id: u32, num_headers: usize, end_of_stream: u32) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_request_headers(num_headers, flag(end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_body(context_id: u32, body_size: usize, end_of_stream: u32) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_request_body(body_size, flag(end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, num_trailers: usize) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_request_trailers(num_trailers))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(context_id: u32, num_headers: usize, end_of_stream: u32) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_response_headers(num_headers, flag(end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_body(context_id: u32, body_size: usize, end_of_stream: u32) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_response_body(body_size, flag(end_of_stream)))
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, num_trailers: usize) -> Action {
    on_stream(context_id, Action::Continue, |s| s.on_http_response_trailers(num_trailers))
}

#[no_mangle]
pub extern "C" fn proxy_on_log(context_id: u32) {
    on_stream(context_id, (), Stream::on_log);
}

/// A stream is done at once; a root (the plugin going away) once enforcement has handed its
/// records on (`Root::on_done`).
#[no_mangle]
pub extern "C" fn proxy_on_done(context_id: u32) -> u32 {
    if stream(context_id).is_some() {
        return 1;
    }
    u32::from(on_root(context_id, true, Root::on_done))
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    // Dropped after the maps are let go: a stream's drop may call the host.
    let removed = CONTEXTS.with(|c| c.streams.try_borrow_mut().ok().and_then(|mut streams| streams.remove(context_id)));
    if removed.is_some() {
        drop(removed);
        return;
    }
    let root = CONTEXTS.with(|c| {
        let mut roots = c.roots.try_borrow_mut().ok()?;
        let at = roots.iter().position(|(id, _)| *id == context_id)?;
        Some(roots.swap_remove(at))
    });
    drop(root);
}
