//! The filter's allocator: free lists per size class in front of the system allocator.
//!
//! Why: a request allocates and frees dozens of small buffers (each body chunk Envoy copies into
//! the VM, header values, the access-log summary, strings of the record). On wasm32-wasip1 every
//! one went through three shims (`__rust_alloc` → `__rdl_alloc` → `malloc`) into wasi-libc's
//! dlmalloc, which splits, coalesces and bins: about a fifth of the filter's wasm time on the chat
//! workload (a `perf` profile of the host-tests instruction run, docs/testing.md). A small block
//! here is a pop from a singly linked list, a free a push: no headers, no coalescing.
//!
//! The rules, which keep it correct and its memory bounded:
//! - A request of at most [`MAX_SMALL`] bytes with alignment of at most [`ALIGN`] is small: it is
//!   rounded up to a power of two (16 … 4096) and served from that class's free list, or, when
//!   the list is empty, by one block from the system allocator. Everything else goes to the system
//!   allocator untouched (the 200 KB agent body, lol_html's buffers, the price table).
//! - A freed small block goes back on its class's list and never back to the system allocator, so
//!   the small blocks a VM holds are its peak of live small blocks per class: steady traffic
//!   reaches a plateau and stays there (the 1 M-request memory run in `instructions` checks it).
//! - Which path a block took is a function of its layout alone, and Rust passes `dealloc` and
//!   `realloc` the layout the block was allocated with, so no header is needed to tell.
//! - A wasm VM without the `atomics` feature runs one thread, so the lists need no lock; the
//!   global allocator is only installed there (see `lib.rs`). Native builds (tests) use the
//!   system allocator; [`SizeClasses`] is the same logic with the backing allocator passed in,
//!   tested natively below.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;

/// The largest request served from the free lists.
pub const MAX_SMALL: usize = 4096;
/// The alignment every small block has (wasi-libc's `malloc` gives 16 too).
pub const ALIGN: usize = 16;
/// Classes: 16, 32, …, 4096 bytes.
const CLASSES: usize = 9;

/// The class of a small layout, `None` for a layout the system allocator serves.
#[inline]
fn class_of(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > ALIGN {
        return None;
    }
    // ceil(log2(size)) with 16 bytes the least: 0 for ≤ 16, 1 for ≤ 32, … 8 for ≤ 4096.
    let bits = (usize::BITS - layout.size().saturating_sub(1).leading_zeros()) as usize;
    Some(bits.saturating_sub(4))
}

#[inline]
fn class_layout(class: usize) -> Option<Layout> {
    Layout::from_size_align(16usize << class, ALIGN).ok()
}

/// The free lists: per class, the head of a list threaded through the free blocks' first word.
pub struct SizeClasses {
    heads: [*mut u8; CLASSES],
}

impl Default for SizeClasses {
    fn default() -> Self {
        Self::new()
    }
}

impl SizeClasses {
    pub const fn new() -> SizeClasses {
        SizeClasses { heads: [ptr::null_mut(); CLASSES] }
    }

    /// # Safety
    /// As [`GlobalAlloc::alloc`]; `backing` must be the allocator every call on `self` uses.
    #[inline]
    pub unsafe fn alloc(&mut self, layout: Layout, backing: &impl GlobalAlloc) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return unsafe { backing.alloc(layout) };
        };
        let Some(head) = self.heads.get_mut(class) else {
            return ptr::null_mut();
        };
        if head.is_null() {
            return match class_layout(class) {
                Some(block) => unsafe { backing.alloc(block) },
                None => ptr::null_mut(),
            };
        }
        let block = *head;
        // A free block's first word is the next free block of its class.
        *head = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    /// # Safety
    /// As [`GlobalAlloc::dealloc`]: `block` came from [`SizeClasses::alloc`] with `layout`.
    #[inline]
    pub unsafe fn dealloc(&mut self, block: *mut u8, layout: Layout, backing: &impl GlobalAlloc) {
        let Some(head) = class_of(layout).and_then(|class| self.heads.get_mut(class)) else {
            return unsafe { backing.dealloc(block, layout) };
        };
        unsafe { block.cast::<*mut u8>().write(*head) };
        *head = block;
    }

    /// # Safety
    /// As [`GlobalAlloc::realloc`].
    #[inline]
    pub unsafe fn realloc(&mut self, block: *mut u8, layout: Layout, new_size: usize, backing: &impl GlobalAlloc) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        match (class_of(layout), class_of(new_layout)) {
            // Still fits its block: nothing moves.
            (Some(old), Some(new)) if old == new => block,
            // Both the system allocator's: it may grow in place.
            (None, None) => unsafe { backing.realloc(block, layout, new_size) },
            _ => {
                let moved = unsafe { self.alloc(new_layout, backing) };
                if !moved.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout, backing);
                    }
                }
                moved
            }
        }
    }
}

/// The global allocator of a single-threaded wasm VM (installed in `lib.rs`).
pub struct SmallAlloc {
    classes: std::cell::UnsafeCell<SizeClasses>,
}

impl SmallAlloc {
    pub const fn new() -> SmallAlloc {
        SmallAlloc { classes: std::cell::UnsafeCell::new(SizeClasses::new()) }
    }
}

impl Default for SmallAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: installed only where the VM runs one thread (wasm32 without `atomics`), so the lists
// are never touched from two threads; no allocator call re-enters another (`System` does not
// call back into the global allocator).
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl Sync for SmallAlloc {}

unsafe impl GlobalAlloc for SmallAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.classes.get()).alloc(layout, &System) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        unsafe { (*self.classes.get()).dealloc(block, layout, &System) }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.classes.get()).realloc(block, layout, new_size, &System) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// The system allocator, counting what reaches it.
    #[derive(Default)]
    struct Counting {
        allocs: Cell<usize>,
        deallocs: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.deallocs.set(self.deallocs.get() + 1);
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_round_up_to_a_power_of_two_from_16_and_large_or_over_aligned_layouts_are_the_systems() {
        let cases = [
            (1, 1, Some(0)),
            (16, 8, Some(0)),
            (17, 1, Some(1)),
            (32, 16, Some(1)),
            (33, 4, Some(2)),
            (200, 1, Some(4)),
            (2048, 1, Some(7)),
            (2049, 1, Some(8)),
            (4096, 16, Some(8)),
            (4097, 1, None),
            (200 * 1024, 1, None),
            (64, 32, None),
        ];
        for (size, align, want) in cases {
            assert_eq!(class_of(layout(size, align)), want, "size {size}, align {align}");
            if let Some(class) = want {
                assert!(16usize << class >= size, "class {class} holds {size} bytes");
            }
        }
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_request_of_its_class_without_the_system_allocator() {
        let backing = Counting::default();
        let mut classes = SizeClasses::new();
        unsafe {
            let a = classes.alloc(layout(100, 1), &backing);
            classes.dealloc(a, layout(100, 1), &backing);
            let b = classes.alloc(layout(120, 8), &backing);
            assert_eq!(a, b, "same class (128): the freed block comes back");
            let c = classes.alloc(layout(100, 1), &backing);
            assert_ne!(b, c, "a live block is never handed out twice");
            assert_eq!(backing.allocs.get(), 2);
            classes.dealloc(b, layout(120, 8), &backing);
            classes.dealloc(c, layout(100, 1), &backing);
            assert_eq!(backing.deallocs.get(), 0, "small blocks stay on their lists");
            let big = classes.alloc(layout(10_000, 1), &backing);
            classes.dealloc(big, layout(10_000, 1), &backing);
            assert_eq!((backing.allocs.get(), backing.deallocs.get()), (3, 1), "large blocks are the system's");
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_whichever_way_the_block_moves() {
        let backing = Counting::default();
        let mut classes = SizeClasses::new();
        unsafe {
            let mut size = 5;
            let mut block = classes.alloc(layout(size, 1), &backing);
            // Byte values 1..=255 over and over (`1u8..` would overflow past 255 bytes).
            let pattern = || (1..=255u8).cycle();
            for (i, b) in (0..size).zip(pattern()) {
                block.add(i).write(b);
            }
            // Within the class, across classes, to the system allocator, within it, and back down.
            for new_size in [12, 16, 17, 1000, 4096, 5000, 9000, 300, 3] {
                block = classes.realloc(block, layout(size, 1), new_size, &backing);
                assert!(!block.is_null());
                for (i, b) in (0..size.min(new_size)).zip(pattern()) {
                    assert_eq!(block.add(i).read(), b, "byte {i} after {size} → {new_size}");
                }
                for (i, b) in (0..new_size).zip(pattern()) {
                    block.add(i).write(b);
                }
                size = new_size;
            }
            classes.dealloc(block, layout(size, 1), &backing);
        }
    }

    #[test]
    fn many_live_blocks_never_overlap_and_the_lists_plateau_under_a_repeating_load() {
        let backing = Counting::default();
        let mut classes = SizeClasses::new();
        let sizes: Vec<usize> = (0..400).map(|i| 1 + (i * 7919) % 6000).collect();
        let mut after_first_round = 0;
        for round in 0..5 {
            let mut live: Vec<(*mut u8, usize)> = Vec::new();
            for (n, &size) in sizes.iter().enumerate() {
                let block = unsafe { classes.alloc(layout(size, 1), &backing) };
                assert!(!block.is_null());
                unsafe { ptr::write_bytes(block, (n % 251) as u8, size) };
                live.push((block, size));
                // Free every third block at once, the rest at the end of the round.
                if n % 3 == 0 {
                    let (b, s) = live.swap_remove(live.len() / 2);
                    for i in 0..s {
                        let _ = unsafe { b.add(i).read() };
                    }
                    unsafe { classes.dealloc(b, layout(s, 1), &backing) };
                }
            }
            let mut spans: Vec<(usize, usize)> = live.iter().map(|&(b, s)| (b as usize, b as usize + s)).collect();
            spans.sort_unstable();
            assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "round {round}: live blocks overlap");
            for (b, s) in live {
                unsafe { classes.dealloc(b, layout(s, 1), &backing) };
            }
            let held = backing.allocs.get() - backing.deallocs.get();
            if round == 0 {
                after_first_round = held;
            } else {
                assert_eq!(held, after_first_round, "round {round}: the same load takes no new small blocks");
            }
        }
    }
}
