//! Sixteen bytes per step: the searches of [`super`] written once against a 16-byte block, for
//! the filter's wasm build with `simd128`.
//!
//! Why: the scanners' inner loops are most of the filter's work on a large request (a 200 KB
//! agent prompt is one JSON string). Word-at-a-time arithmetic (SWAR) needs about fifteen
//! operations to test eight bytes for `"`, `\` and control bytes; wasm's `v128` tests sixteen in
//! a handful (`i8x16.eq`, `i8x16.lt_u`, `v128.or`, `v128.any_true`), and `i8x16.bitmask` gives
//! the first match's position directly. The filter's wasm is built with `+simd128`
//! (`.cargo/config.toml`); every other build (native, the simulator, the component, `make
//! wasm-baseline`) keeps the word-at-a-time code in [`super`].
//!
//! The algorithms are generic over [`Block`] so that they can be tested natively, where wasm's
//! `v128` does not exist: [`Portable`] is the same block as a plain `[u8; 16]`, and the unit tests
//! check the algorithms over it against the word-at-a-time functions and a byte loop. The `v128`
//! block ([`Simd128`]) is a one-line mapping of each operation onto its wasm instruction, run
//! for real by host-tests (every scenario runs the filter's wasm).

// Natively only the tests run these algorithms (the build uses the word-at-a-time ones).
#![cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]

/// Sixteen bytes, and the lane-wise operations the searches need. Lane `i` is byte `i`.
pub(super) trait Block: Copy {
    /// Every lane zero.
    fn zero() -> Self {
        Self::splat(0)
    }
    /// `byte` in every lane.
    fn splat(byte: u8) -> Self;
    fn load(bytes: &[u8; 16]) -> Self;
    fn or(self, other: Self) -> Self;
    fn xor(self, other: Self) -> Self;
    /// Lanes equal to `byte` set to `0xFF`, the others to zero.
    fn eq(self, byte: u8) -> Self;
    /// Lanes below `byte` (unsigned) set to `0xFF`, the others to zero.
    fn below(self, byte: u8) -> Self;
    /// Whether any bit is set.
    fn any(self) -> bool;
    /// Bit `i` is lane `i`'s high bit.
    fn high_bits(self) -> u32;
    /// Bytes 0..8 and 8..16 as little-endian words.
    fn words(self) -> (u64, u64);
}

/// Lanes that end a plain JSON string run: `"`, `\` or a control byte (below 0x20). A `"`
/// (0x22) with bit 1 flipped is 0x20, and a control byte stays below 0x20: one unsigned compare
/// finds both.
#[inline(always)]
fn run_stops<B: Block>(v: B) -> B {
    v.xor(B::splat(0x02)).below(0x21).or(v.eq(b'\\'))
}

/// [`super::plain_string_run`], sixteen bytes per step: the first block holding a stop gives the
/// run's end by its bitmask; a tail shorter than a block is tested as the last sixteen bytes of
/// `bytes` (overlapping bytes already known to be plain), or, in a run shorter than a block,
/// word by word.
#[inline(always)]
pub(super) fn plain_string_run<B: Block>(bytes: &[u8]) -> (usize, bool) {
    let mut high = B::zero();
    let mut offset = 0;
    // Four blocks per step while nothing stops the run: one branch per 64 bytes, and the loop's
    // own bookkeeping paid once for the four.
    for quad in bytes.as_chunks::<64>().0 {
        let [a, b, c, d] = quad.as_chunks::<16>().0 else { break };
        let (a, b, c, d) = (B::load(a), B::load(b), B::load(c), B::load(d));
        if run_stops(a).or(run_stops(b)).or(run_stops(c).or(run_stops(d))).any() {
            break;
        }
        high = high.or(a.or(b).or(c.or(d)));
        offset += 64;
    }
    // Then block by block: where it stops, or the last blocks of the run.
    let (blocks, tail) = bytes.get(offset..).unwrap_or_default().as_chunks::<16>();
    for block in blocks {
        let v = B::load(block);
        let stops = run_stops(v);
        if stops.any() {
            return stop_in(v, stops, offset, high);
        }
        high = high.or(v);
        offset += 16;
    }
    finish(bytes, tail.len(), offset, high)
}

/// The run ends in block `v` (at `offset`), whose stop lanes are `stops`; `high` holds the run's
/// earlier blocks.
#[inline(always)]
fn stop_in<B: Block>(v: B, stops: B, offset: usize, high: B) -> (usize, bool) {
    let at = stops.high_bits().trailing_zeros();
    let before = (1u32 << at) - 1;
    (offset + at as usize, high.high_bits() != 0 || v.high_bits() & before != 0)
}

/// After `offset` bytes of whole plain blocks (`high`), the `tail` last bytes of `bytes`.
#[inline(always)]
fn finish<B: Block>(bytes: &[u8], tail: usize, offset: usize, high: B) -> (usize, bool) {
    if tail == 0 {
        return (offset, high.high_bits() != 0);
    }
    match bytes.last_chunk::<16>() {
        Some(last) => {
            // The last block starts `16 - tail` bytes before `offset`; those bytes are plain.
            let v = B::load(last);
            let (shift, stops) = (16 - tail as u32, run_stops(v).high_bits());
            let plain = (1u32 << shift) - 1;
            let at = (stops | 0x1_0000).trailing_zeros();
            let before = ((1u32 << at) - 1) & !plain;
            (offset - shift as usize + at as usize, high.high_bits() != 0 || v.high_bits() & before != 0)
        }
        None => super::plain_words_run(bytes),
    }
}

/// [`super::plain_string_run_hashing`], sixteen bytes per step (the same contract: the run's
/// whole plain blocks from its start are folded, the words taken from the loaded block).
#[inline(always)]
pub(super) fn plain_string_run_hashing<B: Block>(
    bytes: &[u8],
    h: &mut u64,
    start: impl FnOnce(u64) -> u64,
    fold: impl Fn(u64, u64, u64) -> u64,
) -> (usize, bool, usize) {
    let (blocks, tail) = bytes.as_chunks::<16>();
    let mut blocks = blocks.iter();
    let Some(first) = blocks.next() else {
        let (len, non_ascii) = super::plain_words_run(bytes);
        return (len, non_ascii, 0);
    };
    let v = B::load(first);
    let stops = run_stops(v);
    if stops.any() {
        let (len, non_ascii) = stop_in(v, stops, 0, B::zero());
        return (len, non_ascii, 0);
    }
    let (a, b) = v.words();
    let mut s = fold(start(*h), a, b);
    let mut high = v;
    let mut offset = 16;
    for block in blocks {
        let v = B::load(block);
        let stops = run_stops(v);
        if stops.any() {
            *h = s;
            let (len, non_ascii) = stop_in(v, stops, offset, high);
            return (len, non_ascii, offset);
        }
        let (a, b) = v.words();
        s = fold(s, a, b);
        high = high.or(v);
        offset += 16;
    }
    *h = s;
    let (len, non_ascii) = finish(bytes, tail.len(), offset, high);
    (len, non_ascii, offset)
}

/// [`super::same_bytes`], sixteen bytes per step: the blocks' differences OR-ed together and
/// tested once, a tail as the last sixteen bytes (overlapping); shorter than a block, word by word.
#[inline(always)]
pub(super) fn same_bytes<B: Block>(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((ba, tail), (bb, _)) = (a.as_chunks::<16>(), b.as_chunks::<16>());
    if ba.is_empty() {
        return super::same_words(a, b);
    }
    let mut diff = ba.iter().zip(bb).fold(B::zero(), |diff, (x, y)| diff.or(B::load(x).xor(B::load(y))));
    if let (false, Some(x), Some(y)) = (tail.is_empty(), a.last_chunk::<16>(), b.last_chunk::<16>()) {
        diff = diff.or(B::load(x).xor(B::load(y)));
    }
    !diff.any()
}

/// [`super::find_either`]: [`find_either_from`] the start.
#[inline(always)]
pub(super) fn find_either<B: Block>(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    find_either_from::<B>(hay, 0, a, b)
}

/// [`super::find_either_from`], sixteen bytes per step; a tail shorter than a block as the last
/// sixteen bytes of `data` with the lanes before the tail shifted out (data shorter than a block
/// byte by byte).
#[inline(always)]
pub(super) fn find_either_from<B: Block>(data: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    let (blocks, tail) = data.get(from..)?.as_chunks::<16>();
    let mut offset = from;
    for block in blocks {
        let v = B::load(block);
        let found = v.eq(a).or(v.eq(b));
        if found.any() {
            return Some(offset + found.high_bits().trailing_zeros() as usize);
        }
        offset += 16;
    }
    if tail.is_empty() {
        return None;
    }
    match data.last_chunk::<16>() {
        Some(last) => {
            let v = B::load(last);
            let found = v.eq(a).or(v.eq(b)).high_bits() >> (16 - tail.len());
            (found != 0).then(|| offset + found.trailing_zeros() as usize)
        }
        None => tail.iter().position(|&c| c == a || c == b).map(|i| offset + i),
    }
}

/// [`super::each_quote_or_backslash`], sixteen bytes per step: each block's `"` and `\` lanes as
/// a bitmask, visited lowest first.
#[inline(always)]
pub(super) fn each_quote_or_backslash<B: Block>(data: &[u8], mut f: impl FnMut(usize, u8) -> bool) -> bool {
    let (blocks, tail) = data.as_chunks::<16>();
    let mut base = 0;
    for block in blocks {
        let v = B::load(block);
        let mut mask = v.eq(b'"').or(v.eq(b'\\')).high_bits();
        while mask != 0 {
            let at = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if !f(base + at, block.get(at).copied().unwrap_or_default()) {
                return false;
            }
        }
        base += 16;
    }
    super::each_quote_or_backslash_words(tail, |at, byte| f(base + at, byte))
}

/// [`super::before_a_brace`], sixteen bytes per step: each block's `{` lanes as a bitmask, the
/// word before each compared; a tail shorter than a block as the last sixteen bytes of `data`,
/// its lanes already seen masked off (data shorter than a block, byte by byte).
#[inline(always)]
pub(super) fn before_a_brace<B: Block>(data: &[u8], before: u64) -> bool {
    let brace_before = |mut mask: u32, base: usize| {
        while mask != 0 {
            let at = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if super::word_before(data, at) == Some(before) {
                return true;
            }
        }
        false
    };
    let (blocks, tail) = data.as_chunks::<16>();
    let mut base = 0;
    for block in blocks {
        if brace_before(B::load(block).eq(b'{').high_bits(), base) {
            return true;
        }
        base += 16;
    }
    match data.last_chunk::<16>() {
        _ if tail.is_empty() => false,
        Some(last) => {
            let seen = 16 - tail.len();
            brace_before(B::load(last).eq(b'{').high_bits() >> seen << seen, data.len() - 16)
        }
        None => super::before_a_brace_from(data, 0, before),
    }
}

/// [`super::string_body_on_one_line`], sixteen bytes per step; fewer than sixteen left, word by
/// word (from a byte that is not escaped, as the word-at-a-time function starts).
#[inline(always)]
pub(super) fn string_body_on_one_line<B: Block>(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let rest = bytes.get(at..)?;
        let Some(block) = rest.first_chunk::<16>() else {
            return super::string_body_on_one_line_words(rest).map(|len| at + len);
        };
        let v = B::load(block);
        let mask = v.eq(b'"').or(v.eq(b'\\')).or(v.eq(b'\n').or(v.eq(b'\r'))).high_bits();
        if mask == 0 {
            at += 16;
            continue;
        }
        let stop = at + mask.trailing_zeros() as usize;
        match bytes.get(stop)? {
            b'"' => return Some(stop),
            // Skip the escaped byte, unless it breaks the line.
            b'\\' if !matches!(bytes.get(stop + 1)?, b'\n' | b'\r') => at = stop + 2,
            _ => return None,
        }
    }
}

/// The block as a plain array: the algorithms above, runnable (and tested) where `v128` is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
pub(super) struct Portable([u8; 16]);

impl Portable {
    #[inline(always)]
    fn map(self, f: impl Fn(u8) -> u8) -> Self {
        Self(self.0.map(f))
    }

    #[inline(always)]
    fn zip(self, other: Self, f: impl Fn(u8, u8) -> u8) -> Self {
        let mut out = self.0;
        for (o, b) in out.iter_mut().zip(other.0) {
            *o = f(*o, b);
        }
        Self(out)
    }
}

impl Block for Portable {
    fn splat(byte: u8) -> Self {
        Self([byte; 16])
    }
    fn load(bytes: &[u8; 16]) -> Self {
        Self(*bytes)
    }
    fn or(self, other: Self) -> Self {
        self.zip(other, |a, b| a | b)
    }
    fn xor(self, other: Self) -> Self {
        self.zip(other, |a, b| a ^ b)
    }
    fn eq(self, byte: u8) -> Self {
        self.map(|a| if a == byte { 0xFF } else { 0 })
    }
    fn below(self, byte: u8) -> Self {
        self.map(|a| if a < byte { 0xFF } else { 0 })
    }
    fn any(self) -> bool {
        self.0.iter().any(|&a| a != 0)
    }
    fn high_bits(self) -> u32 {
        self.0.iter().enumerate().fold(0, |mask, (i, &a)| mask | u32::from(a >> 7) << i)
    }
    fn words(self) -> (u64, u64) {
        let (a, b) = self.0.split_at(8);
        (u64::from_le_bytes(a.try_into().unwrap_or_default()), u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
}

/// The block as wasm's `v128`: each operation is one instruction (two for `words`).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[derive(Clone, Copy)]
pub(super) struct Simd128(core::arch::wasm32::v128);

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
impl Block for Simd128 {
    #[inline(always)]
    fn splat(byte: u8) -> Self {
        Self(core::arch::wasm32::u8x16_splat(byte))
    }
    #[inline(always)]
    fn load(bytes: &[u8; 16]) -> Self {
        // SAFETY: `bytes` is sixteen readable bytes; `v128_load` reads exactly those, unaligned
        // loads being allowed in wasm.
        Self(unsafe { core::arch::wasm32::v128_load(bytes.as_ptr().cast()) })
    }
    #[inline(always)]
    fn or(self, other: Self) -> Self {
        Self(core::arch::wasm32::v128_or(self.0, other.0))
    }
    #[inline(always)]
    fn xor(self, other: Self) -> Self {
        Self(core::arch::wasm32::v128_xor(self.0, other.0))
    }
    #[inline(always)]
    fn eq(self, byte: u8) -> Self {
        Self(core::arch::wasm32::u8x16_eq(self.0, core::arch::wasm32::u8x16_splat(byte)))
    }
    #[inline(always)]
    fn below(self, byte: u8) -> Self {
        Self(core::arch::wasm32::u8x16_lt(self.0, core::arch::wasm32::u8x16_splat(byte)))
    }
    #[inline(always)]
    fn any(self) -> bool {
        core::arch::wasm32::v128_any_true(self.0)
    }
    #[inline(always)]
    fn high_bits(self) -> u32 {
        u32::from(core::arch::wasm32::u8x16_bitmask(self.0))
    }
    #[inline(always)]
    fn words(self) -> (u64, u64) {
        (core::arch::wasm32::u64x2_extract_lane::<0>(self.0), core::arch::wasm32::u64x2_extract_lane::<1>(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::tricky_bytes;
    use super::*;
    use proptest::prelude::*;

    fn naive_run(bytes: &[u8]) -> (usize, bool) {
        let len = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len());
        (len, !bytes[..len].is_ascii())
    }

    /// Runs of plain bytes (ASCII and high bytes) around the block size, then anything.
    fn runs() -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(prop_oneof![Just(b'a'), Just(b' '), Just(0x7F_u8), Just(0xC3_u8), Just(0xA9_u8)], 0..150),
            tricky_bytes(),
        )
            .prop_map(|(run, after)| [run, after].concat())
    }

    fn hash_fold(h: u64, a: u64, b: u64) -> u64 {
        h.rotate_left(5) ^ a ^ b.rotate_left(1)
    }

    #[test]
    fn a_table_of_runs_ends_where_the_byte_loop_ends() {
        // Stops at each lane of the first, second and a tail block; high bytes before and after.
        let mut cases: Vec<Vec<u8>> = vec![b"".to_vec(), b"\"".to_vec(), vec![b'a'; 16], vec![b'a'; 33]];
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 32, 40, 63, 64, 65, 100, 127, 128, 130] {
            for stop in [b'"', b'\\', 0x00, 0x1F] {
                let mut v = vec![b'x'; len];
                v.push(stop);
                v.extend_from_slice(&[0xC3, 0xA9, b'z', b'"']);
                cases.push(v.clone());
                v.insert(len / 2, 0xE9);
                cases.push(v);
            }
        }
        for bytes in cases {
            assert_eq!(plain_string_run::<Portable>(&bytes), naive_run(&bytes), "{bytes:?}");
            assert_eq!(plain_string_run::<Portable>(&bytes), super::super::plain_string_run(&bytes), "{bytes:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn runs_end_where_the_word_at_a_time_run_ends(bytes in runs()) {
            let got = plain_string_run::<Portable>(&bytes);
            prop_assert_eq!(got, naive_run(&bytes));
            prop_assert_eq!(got, super::super::plain_string_run(&bytes));
        }

        #[test]
        fn hashing_runs_hash_what_the_word_at_a_time_run_hashes(bytes in runs(), seed in any::<u64>()) {
            let (mut h, mut expected) = (seed, seed);
            let got = plain_string_run_hashing::<Portable>(&bytes, &mut h, |h| h ^ 0x55, hash_fold);
            let want = super::super::plain_string_run_hashing(&bytes, &mut expected, |h| h ^ 0x55, hash_fold);
            prop_assert_eq!(got, want);
            prop_assert_eq!(h, expected);
        }

        #[test]
        fn same_bytes_is_equality(a in runs(), flip in any::<prop::sample::Index>()) {
            prop_assert!(same_bytes::<Portable>(&a, &a));
            if !a.is_empty() {
                let mut b = a.clone();
                b[flip.index(a.len())] ^= 0x80;
                prop_assert!(!same_bytes::<Portable>(&a, &b));
                prop_assert!(!same_bytes::<Portable>(&a, &a[..a.len() - 1]));
            }
        }

        #[test]
        fn find_either_agrees_with_position(bytes in runs()) {
            prop_assert_eq!(find_either::<Portable>(&bytes, b'"', 0x1F), bytes.iter().position(|&c| c == b'"' || c == 0x1F));
        }

        #[test]
        fn one_line_string_bodies_end_where_the_word_at_a_time_search_ends(
            body in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'"'), Just(b'\\'), Just(b'\n'), Just(b'\r'), Just(0xC3_u8)], 0..60),
            plain in 0usize..40,
        ) {
            // Mostly plain text first, so the stop falls in every lane of the first blocks.
            let bytes = [vec![b'x'; plain], body].concat();
            prop_assert_eq!(string_body_on_one_line::<Portable>(&bytes), super::super::string_body_on_one_line_words(&bytes));
        }

        #[test]
        fn find_either_from_agrees_with_position(bytes in runs(), from in any::<prop::sample::Index>()) {
            let from = from.index(bytes.len() + 1);
            let want = bytes[from..].iter().position(|&c| c == b'"' || c == 0x1F).map(|i| from + i);
            prop_assert_eq!(find_either_from::<Portable>(&bytes, from, b'"', 0x1F), want);
            prop_assert_eq!(super::super::find_either_from(&bytes, from, b'"', 0x1F), want);
        }

        #[test]
        fn quote_and_backslash_positions_are_those_of_the_word_at_a_time_walk(bytes in runs(), stop_after in 0usize..6) {
            // Each walk stops after `stop_after + 1` visits, as a caller that bails out does.
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let got_done = each_quote_or_backslash::<Portable>(&bytes, |at, b| { got.push((at, b)); got.len() <= stop_after });
            let want_done = super::super::each_quote_or_backslash_words(&bytes, |at, b| { want.push((at, b)); want.len() <= stop_after });
            prop_assert_eq!((got, got_done), (want, want_done));
        }
    }
}
