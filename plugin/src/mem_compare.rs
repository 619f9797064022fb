//! The VM's `memcmp`: eight bytes per step instead of wasi-libc's byte loop.
//!
//! Why: in wasm32 every slice or string comparison that is not done by hand (`==` on `&[u8]` and
//! `&str`, a `match` on byte-string keys such as `core::usage::paths::step`'s, a `HashMap` key's
//! equality, a header name looked up in a map) is a call to `memcmp`, and the `memcmp` Rust's
//! wasm32-wasip1 target links (wasi-libc's, built without SIMD) compares one byte per loop
//! iteration: about twenty wasm instructions per byte. A five-byte key costs ~110 before
//! anything is decided. This one compares words: eight bytes at a time, then the last eight (or
//! four) bytes, overlapping bytes already found equal, so a key of any length takes a few steps.
//!
//! The contract is C's: the sign of the difference of the first differing bytes (as unsigned),
//! 0 when the `n` bytes are equal. The linker takes this definition instead of wasi-libc's
//! (an archive member is only pulled in for a symbol nothing else defines), for every caller
//! in the module, std's included. [`compare`] is the same logic on slices, tested natively
//! against `Ord` on slices. It must not compare slices with `==` itself (that would call
//! `memcmp`, i.e. itself).

/// C `memcmp` on two equally long slices: negative, 0 or positive as the first differing byte
/// of `a` is below, equal to or above `b`'s.
#[inline(always)]
pub fn compare(a: &[u8], b: &[u8]) -> i32 {
    let n = a.len().min(b.len());
    let mut at = 0;
    // Whole words while eight or more bytes are left.
    while at + 8 <= n {
        let (x, y) = (word8(a, at), word8(b, at));
        if x != y {
            return first_difference(x, y);
        }
        at += 8;
    }
    if at == n {
        return 0;
    }
    // The rest: the last eight bytes (overlapping bytes known equal), or four and four.
    if n >= 8 {
        return first_difference(word8(a, n - 8), word8(b, n - 8));
    }
    if n >= 4 {
        let (x, y) = (word4(a, 0), word4(b, 0));
        if x != y {
            return first_difference(x, y);
        }
        return first_difference(word4(a, n - 4), word4(b, n - 4));
    }
    let mut i = 0;
    while i < n {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// The eight bytes at `at`, little-endian (so the first byte is the lowest).
#[inline(always)]
fn word8(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..).and_then(|rest| rest.first_chunk::<8>()).map_or(0, |w| u64::from_le_bytes(*w))
}

/// The four bytes at `at`, little-endian.
#[inline(always)]
fn word4(bytes: &[u8], at: usize) -> u64 {
    bytes.get(at..).and_then(|rest| rest.first_chunk::<4>()).map_or(0, |w| u64::from(u32::from_le_bytes(*w)))
}

/// The difference of the first differing bytes of two little-endian words (0 if equal).
#[inline(always)]
fn first_difference(x: u64, y: u64) -> i32 {
    if x == y {
        return 0;
    }
    let shift = (x ^ y).trailing_zeros() & !7;
    ((x >> shift) & 0xff) as i32 - ((y >> shift) & 0xff) as i32
}

/// C `memcmp`, for the whole module (see the module docs).
///
/// # Safety
/// As C's: `a` and `b` are valid for reads of `n` bytes.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    // SAFETY: the caller's contract; `n > 0`, so both pointers point at `n` readable bytes.
    let (a, b) = unsafe { (std::slice::from_raw_parts(a, n), std::slice::from_raw_parts(b, n)) };
    compare(a, b)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    fn sign(c: i32) -> Ordering {
        c.cmp(&0)
    }

    #[test]
    fn equal_bytes_of_every_length_compare_equal() {
        let bytes: Vec<u8> = (0..40u8).collect();
        for n in 0..=bytes.len() {
            assert_eq!(compare(&bytes[..n], &bytes[..n]), 0, "n = {n}");
        }
    }

    #[test]
    fn the_first_difference_decides_at_every_position_and_length() {
        for n in 1..=40usize {
            for at in 0..n {
                let a = vec![b'a'; n];
                let mut b = a.clone();
                b[at] = b'b';
                // A later difference the other way must not win.
                if at + 1 < n {
                    b[n - 1] = 0;
                }
                assert_eq!(sign(compare(&a, &b)), Ordering::Less, "n = {n}, at = {at}");
                assert_eq!(sign(compare(&b, &a)), Ordering::Greater, "n = {n}, at = {at}");
            }
        }
    }

    #[test]
    fn bytes_compare_as_unsigned() {
        assert!(compare(&[0x80], &[0x7f]) > 0);
        assert!(compare(&[0; 9], &[0, 0, 0, 0, 0, 0, 0, 0, 0xff]) < 0);
        assert_eq!(compare(&[1, 2, 3, 0xff, 5], &[1, 2, 3, 0x01, 5]), 0xff - 0x01);
    }

    proptest! {
        #[test]
        fn compare_orders_like_slices(a in prop::collection::vec(0u8..4, 0..48), b in prop::collection::vec(0u8..4, 0..48)) {
            let n = a.len().min(b.len());
            prop_assert_eq!(sign(compare(&a[..n], &b[..n])), a[..n].cmp(&b[..n]));
        }
    }
}
