//! Word-at-a-time byte searches: the inner loops of the request and response scanners.
//!
//! In wasm32 there is no `memchr`, and slice comparison is a byte loop in `memcmp`; looking at
//! each byte of a 2 KB prompt or of every SSE event costs several instructions per byte, which
//! at line rate is most of the filter's time. In the filter's wasm, built with `simd128`
//! (`.cargo/config.toml`), the searches look at sixteen bytes per step ([`lanes`]). Every other
//! build (native, the simulator, the component, `make wasm-baseline` for a host without SIMD)
//! uses the word-at-a-time code below: eight bytes per step with plain `u64` arithmetic (SWAR).
//! Searches for a first match use the cheap mask whose lowest set bit is exact; the walk over
//! every quote and backslash uses the exact per-byte mask.

mod lanes;

const LOWS: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// The byte `b` in every lane.
const fn splat(b: u8) -> u64 {
    ONES.wrapping_mul(b as u64)
}

/// The high bit of each byte of `x` that is zero, exactly (no borrow crosses lanes).
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    !(((x & LOWS).wrapping_add(LOWS)) | x | LOWS)
}

/// The high bit of the first zero byte of `x` is set (and possibly of later bytes: a borrow can
/// only travel upward from a true zero). Cheaper than [`zero_bytes`]; exact for "is there one"
/// and for the lowest set bit, which is all a search for the first match needs.
#[inline(always)]
fn first_zero_byte(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Eight bytes as a little-endian word (`chunk` is at least eight bytes long).
#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    let mut eight = [0u8; 8];
    if let Some(head) = chunk.get(..8) {
        eight.copy_from_slice(head);
    }
    u64::from_le_bytes(eight)
}

/// Lane masks of `"` and `\` in `v`.
#[inline(always)]
fn quotes_and_backslashes(v: u64) -> u64 {
    zero_bytes(v ^ splat(b'"')) | zero_bytes(v ^ splat(b'\\'))
}

/// The high bit of each lane of `v` that ends a plain string run (`"`, `\\` or a control byte
/// below 0x20) is set, and possibly of later lanes: the three tests of [`plain_string_run`]'s word
/// loop, for "is there one".
#[inline(always)]
fn run_stops(v: u64) -> u64 {
    let (q, b) = (v ^ splat(b'"'), v ^ splat(b'\\'));
    (q.wrapping_sub(ONES) & !q | b.wrapping_sub(ONES) & !b | v.wrapping_sub(splat(0x20)) & !v) & HIGHS
}

/// The length of the run of plain JSON string bytes at the start of `bytes`: up to the first
/// `"`, `\\` or control byte (below 0x20), or all of it. Also says whether the run may hold a
/// byte of 0x80 or more (then it needs UTF-8 validation; `false` means it is ASCII).
///
/// Prompts are long runs (a 200 KB agent request is one string), and in wasm every operation
/// counts: sixteen bytes per step while nothing stops the run, one branch per step, then word
/// by word ([`plain_words_run`]) to find where it stops. Measured in wasm fuel on that request,
/// this form beat a word per step, a mask shared by the three tests, and 32 bytes per step.
/// With SIMD ([`lanes::plain_string_run`]): 64 bytes per step, then block by block.
pub fn plain_string_run(bytes: &[u8]) -> (usize, bool) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::plain_string_run::<lanes::Simd128>(bytes);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    plain_string_run_words(bytes)
}

/// [`plain_string_run`] without SIMD: the build without `simd128`, and natively.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
fn plain_string_run_words(bytes: &[u8]) -> (usize, bool) {
    let mut high = 0u64;
    let mut offset = 0;
    for pair in bytes.as_chunks::<16>().0 {
        let (a, b) = pair.split_at(8);
        let a = u64::from_le_bytes(a.try_into().unwrap_or_default());
        let b = u64::from_le_bytes(b.try_into().unwrap_or_default());
        if run_stops(a) | run_stops(b) != 0 {
            break;
        }
        high |= a | b;
        offset += 16;
    }
    let (len, non_ascii) = plain_words_run(bytes.get(offset..).unwrap_or_default());
    (offset + len, non_ascii || high & HIGHS != 0)
}

/// [`plain_string_run`] that also hashes the run's whole sixteen-byte blocks with the words it
/// has already loaded (the retry guard's fingerprint, issue 12: hashing a long prompt in a second
/// pass cost more than the scan itself). If the run's first block is plain, `h` becomes
/// `fold(start(h), a, b)` over the run's plain blocks `(a, b)` in order, where `start` absorbs
/// what came before the run; otherwise `h` and `start` are left alone. Returns the run's length,
/// whether it may hold non-ASCII, and how many of its bytes were hashed (a multiple of 16).
#[inline(always)]
pub fn plain_string_run_hashing(
    bytes: &[u8],
    h: &mut u64,
    start: impl FnOnce(u64) -> u64,
    fold: impl Fn(u64, u64, u64) -> u64,
) -> (usize, bool, usize) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::plain_string_run_hashing::<lanes::Simd128>(bytes, h, start, fold);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    plain_string_run_hashing_words(bytes, h, start, fold)
}

/// [`plain_string_run_hashing`] without SIMD: the build without `simd128`, and natively.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
#[inline(always)]
fn plain_string_run_hashing_words(
    bytes: &[u8],
    h: &mut u64,
    start: impl FnOnce(u64) -> u64,
    fold: impl Fn(u64, u64, u64) -> u64,
) -> (usize, bool, usize) {
    let mut high = 0u64;
    let mut offset = 0;
    let mut blocks = bytes.as_chunks::<16>().0.iter();
    let split = |pair: &[u8; 16]| {
        let (a, b) = pair.split_at(8);
        (u64::from_le_bytes(a.try_into().unwrap_or_default()), u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    if let Some((a, b)) = blocks.next().map(split).filter(|&(a, b)| run_stops(a) | run_stops(b) == 0) {
        let mut s = fold(start(*h), a, b);
        high = a | b;
        offset = 16;
        for (a, b) in blocks.map(split) {
            if run_stops(a) | run_stops(b) != 0 {
                break;
            }
            s = fold(s, a, b);
            high |= a | b;
            offset += 16;
        }
        *h = s;
    }
    let (len, non_ascii) = plain_words_run(bytes.get(offset..).unwrap_or_default());
    (offset + len, non_ascii || high & HIGHS != 0, offset)
}

/// [`plain_string_run`] a word at a time.
fn plain_words_run(bytes: &[u8]) -> (usize, bool) {
    let mut high = 0u64;
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in words.by_ref() {
        let v = word(chunk);
        // Lowest set bit: the first `"`, `\\` or byte below 0x20 (the last mask flags a byte below
        // 0x20 exactly; a byte of 0x80 or more never borrows, so it flags nothing).
        let below_space = v.wrapping_sub(splat(0x20)) & !v & HIGHS;
        let stop = first_zero_byte(v ^ splat(b'"')) | first_zero_byte(v ^ splat(b'\\')) | below_space;
        if stop != 0 {
            let len = offset + (stop.trailing_zeros() / 8) as usize;
            let non_ascii = high & HIGHS != 0 || bytes.get(offset..len).is_some_and(|b| !b.is_ascii());
            return (len, non_ascii);
        }
        high |= v;
        offset += 8;
    }
    let rest = words.remainder();
    let len = offset + rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(rest.len());
    let non_ascii = high & HIGHS != 0 || bytes.get(offset..len).is_some_and(|b| !b.is_ascii());
    (len, non_ascii)
}

/// Calls `f(position, byte)` for every `"` and `\` in `data`, in order, until `f` returns false.
/// Returns false if `f` did.
#[inline(always)]
pub fn each_quote_or_backslash(data: &[u8], f: impl FnMut(usize, u8) -> bool) -> bool {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::each_quote_or_backslash::<lanes::Simd128>(data, f);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    each_quote_or_backslash_words(data, f)
}

/// [`each_quote_or_backslash`] a word at a time.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
#[inline(always)]
fn each_quote_or_backslash_words(data: &[u8], mut f: impl FnMut(usize, u8) -> bool) -> bool {
    let mut words = data.chunks_exact(8);
    let mut base = 0;
    for chunk in words.by_ref() {
        let v = word(chunk);
        let mut mask = quotes_and_backslashes(v);
        while mask != 0 {
            let bit = mask.trailing_zeros();
            mask &= mask.wrapping_sub(1);
            if !f(base + (bit / 8) as usize, (v >> (bit & !7)) as u8) {
                return false;
            }
        }
        base += 8;
    }
    for (i, &byte) in words.remainder().iter().enumerate() {
        if (byte == b'"' || byte == b'\\') && !f(base + i, byte) {
            return false;
        }
    }
    true
}

/// Whether every byte is printable ASCII (`!` to `~`) other than `a` and `b`: eight bytes per
/// step (the access log's check that a value needs no escaping). A tail shorter than a word is
/// padded with `!`, which passes.
pub fn graphic_ascii_without(bytes: &[u8], a: u8, b: u8) -> bool {
    let stops = |v: u64| {
        // Below `!` (space and control bytes): the borrow test is exact for "is there one"
        // among bytes without their high bit, and bytes with it are stops anyway.
        let below = v.wrapping_sub(splat(b'!')) & !v & HIGHS;
        below | (v & HIGHS) | first_zero_byte(v ^ splat(0x7F)) | first_zero_byte(v ^ splat(a)) | first_zero_byte(v ^ splat(b))
    };
    let mut words = bytes.chunks_exact(8);
    let mut found = 0;
    for chunk in words.by_ref() {
        found |= stops(word(chunk));
    }
    let rest = words.remainder();
    let mut last = [b'!'; 8];
    if let Some(to) = last.get_mut(..rest.len()) {
        to.copy_from_slice(rest);
    }
    found | stops(u64::from_le_bytes(last)) == 0
}

/// The first position of `a` or `b` in `hay`.
pub fn find_either(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::find_either::<lanes::Simd128>(hay, a, b);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    find_either_words(hay, a, b)
}

/// The first position at or after `from` of `a` or `b` in `data`. Like [`find_either`] on
/// `data[from..]`, but a tail shorter than a block is searched as the last sixteen bytes of
/// `data` (the lanes before the tail masked off) instead of byte by byte: the end of an event is
/// where its last keys and values are.
#[inline]
pub fn find_either_from(data: &[u8], from: usize, a: u8, b: u8) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::find_either_from::<lanes::Simd128>(data, from, a, b);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    find_either_words(data.get(from..)?, a, b).map(|i| from + i)
}

/// Inside a JSON string, from `from` (just past its opening quote): where its closing quote is
/// (the first `"` not escaped by a backslash) and whether the string holds an escape; `None` if
/// `data` ends first. The bytes between are not checked (control bytes, UTF-8).
#[inline]
pub fn string_end(data: &[u8], from: usize) -> Option<(usize, bool)> {
    let mut at = from;
    let mut escaped = false;
    loop {
        let found = find_either_from(data, at, b'"', b'\\')?;
        if data.get(found) == Some(&b'"') {
            return Some((found, escaped));
        }
        escaped = true;
        // The escaped byte, whatever it is, is part of the string.
        at = found + 2;
    }
}

/// [`find_either`] without SIMD: the build without `simd128`, and natively.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
fn find_either_words(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (wa, wb) = (splat(a), splat(b));
    let mut words = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in words.by_ref() {
        let v = word(chunk);
        let found = first_zero_byte(v ^ wa) | first_zero_byte(v ^ wb);
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    words.remainder().iter().position(|&c| c == a || c == b).map(|i| offset + i)
}

/// `a == b`, eight bytes per step. The words' differences are OR-ed together and tested once
/// (a branch per word costs more in wasm than an early exit saves on the short, mostly equal
/// runs compared here: event templates), and a tail shorter than a word is compared as the last
/// eight bytes, which overlap words already compared.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::same_bytes::<lanes::Simd128>(a, b);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    same_words(a, b)
}

/// [`same_bytes`] a word at a time.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
#[inline(always)]
fn same_words(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let ((wa, tail), (wb, _)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    let mut diff = wa.iter().zip(wb).fold(0u64, |diff, (x, y)| diff | (u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y)));
    if !tail.is_empty() {
        match (a.last_chunk::<8>(), b.last_chunk::<8>()) {
            (Some(x), Some(y)) => diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y),
            // Shorter than a word.
            _ => return a == b,
        }
    }
    diff == 0
}

/// Whether the eight bytes `before` come right before a `{` somewhere in `data` (`"usage":{`: a
/// usage object opens). Each `{` is found sixteen bytes per step with SIMD and the word before it
/// compared once; an event has a handful of braces.
pub fn before_a_brace(data: &[u8], before: &[u8; 8]) -> bool {
    let before = u64::from_le_bytes(*before);
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::before_a_brace::<lanes::Simd128>(data, before);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    before_a_brace_from(data, 0, before)
}

/// [`before_a_brace`] for the braces at or after `from`, a byte at a time.
fn before_a_brace_from(data: &[u8], from: usize, before: u64) -> bool {
    let rest = data.get(from..).unwrap_or_default();
    rest.iter().enumerate().any(|(i, &b)| b == b'{' && word_before(data, from + i) == Some(before))
}

/// The eight bytes before `at` as a little-endian word, if there are eight.
#[inline(always)]
fn word_before(data: &[u8], at: usize) -> Option<u64> {
    let start = at.checked_sub(8)?;
    data.get(start..at).and_then(|w| <[u8; 8]>::try_from(w).ok()).map(u64::from_le_bytes)
}

/// Whether `text` can be the inside of a JSON string as the response skimmer reads it: no `"`
/// that is not escaped, and no trailing backslash (which would escape the closing quote).
/// Other bytes are not checked (the skimmer does not check them either).
pub fn is_unterminated_string_body(text: &[u8]) -> bool {
    let mut escaped_at = usize::MAX;
    each_quote_or_backslash(text, |at, byte| {
        if at == escaped_at {
            return true;
        }
        if byte == b'"' {
            return false;
        }
        escaped_at = at + 1;
        true
    }) && escaped_at != text.len()
}

/// The length of the JSON string body at the start of `bytes` (up to its first unescaped `"`),
/// or `None` if a line break (`\n` or `\r`, escaped or not) or the end of `bytes` comes first.
pub fn string_body_on_one_line(bytes: &[u8]) -> Option<usize> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return lanes::string_body_on_one_line::<lanes::Simd128>(bytes);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    string_body_on_one_line_words(bytes)
}

/// [`string_body_on_one_line`] a word at a time.
fn string_body_on_one_line_words(bytes: &[u8]) -> Option<usize> {
    let (quote, backslash, lf, cr) = (splat(b'"'), splat(b'\\'), splat(b'\n'), splat(b'\r'));
    let mut at = 0;
    while let Some(rest) = bytes.get(at..) {
        let stop = if rest.len() >= 8 {
            let v = word(rest);
            let mask = first_zero_byte(v ^ quote) | first_zero_byte(v ^ backslash) | first_zero_byte(v ^ lf) | first_zero_byte(v ^ cr);
            if mask == 0 {
                at += 8;
                continue;
            }
            at + (mask.trailing_zeros() / 8) as usize
        } else {
            at + rest.iter().position(|&b| matches!(b, b'"' | b'\\' | b'\n' | b'\r'))?
        };
        match bytes.get(stop)? {
            b'"' => return Some(stop),
            // Skip the escaped byte, unless it breaks the line.
            b'\\' if !matches!(bytes.get(stop + 1)?, b'\n' | b'\r') => at = stop + 2,
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_usage_object_is_found_before_its_brace_and_nowhere_else() {
        let key = b"\"usage\":";
        for (data, want) in [
            (&b"{\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}"[..], true),
            (b"{\"usage\":null,\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}", false),
            (b"{\"usage\": {\"prompt_tokens\":1}}", false),
            (b"\"usage\":{", true),
            (b"usage\":{", false),
            (b"", false),
            (b"{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{\"usage\":{", true),
        ] {
            assert_eq!(before_a_brace(data, key), want, "{}", String::from_utf8_lossy(data));
        }
    }

    proptest! {
        #[test]
        fn before_a_brace_is_a_search_for_the_nine_bytes(
            data in proptest::collection::vec(prop_oneof![Just(b'{'), Just(b'"'), Just(b':'), Just(b'u'), Just(b'x')], 0..80),
            key in proptest::collection::vec(prop_oneof![Just(b'{'), Just(b'"'), Just(b':'), Just(b'u'), Just(b'x')], 8),
        ) {
            let key: [u8; 8] = key.try_into().unwrap();
            let mut pattern = key.to_vec();
            pattern.push(b'{');
            let want = data.windows(9).any(|w| w == pattern.as_slice());
            prop_assert_eq!(before_a_brace(&data, &key), want);
            prop_assert_eq!(lanes::before_a_brace::<lanes::Portable>(&data, u64::from_le_bytes(key)), want);
        }
    }

    fn naive_run(bytes: &[u8]) -> usize {
        bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len())
    }

    fn naive_string_body(text: &[u8]) -> bool {
        let mut i = 0;
        while i < text.len() {
            match text[i] {
                b'"' => return false,
                b'\\' if i + 1 == text.len() => return false,
                b'\\' => i += 2,
                _ => i += 1,
            }
        }
        true
    }

    /// Bytes drawn mostly from the ones the masks look for (and their lane neighbours).
    pub(super) fn tricky_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![
                Just(b'"'),
                Just(b'\\'),
                Just(0x1F_u8),
                Just(0x20_u8),
                Just(0x21_u8),
                Just(0x7F_u8),
                Just(0x80_u8),
                Just(0xE9_u8),
                Just(0xA2_u8),
                Just(0xDC_u8),
                Just(b'a'),
                any::<u8>()
            ],
            0..40,
        )
    }

    fn tricky_line_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'\n'), Just(b'\r'), Just(b'a'), Just(0x0B_u8), Just(0x8D_u8), any::<u8>()],
            0..40,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn graphic_ascii_without_two_bytes_is_a_byte_loop(bytes in tricky_bytes(), prefix in 0usize..20) {
            // Mostly printable first, so the stops fall in every lane of the first words.
            let bytes = [b"model-x_1!~".repeat(prefix)[..prefix].to_vec(), bytes].concat();
            let want = bytes.iter().all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'=');
            prop_assert_eq!(graphic_ascii_without(&bytes, b'%', b'='), want);
        }

        #[test]
        fn plain_string_run_stops_where_a_byte_loop_stops(bytes in tricky_bytes()) {
            let (len, non_ascii) = plain_string_run(&bytes);
            prop_assert_eq!(len, naive_run(&bytes));
            if !non_ascii {
                prop_assert!(bytes[..len].is_ascii());
            }
        }

        #[test]
        fn long_plain_runs_stop_where_a_byte_loop_stops(
            run in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b' '), Just(0x7F_u8), Just(0xC3_u8), Just(0xA9_u8)], 0..120),
            after in tricky_bytes(),
        ) {
            let bytes = [run, after].concat();
            let (len, non_ascii) = plain_string_run(&bytes);
            prop_assert_eq!(len, naive_run(&bytes));
            prop_assert_eq!(non_ascii, !bytes[..len].is_ascii(), "a run of ASCII is said to be ASCII, and one with a high byte not");
        }

        #[test]
        fn the_hashing_run_stops_where_the_plain_one_does_and_hashes_its_whole_blocks(
            run in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b' '), Just(0xC3_u8), Just(0xA9_u8)], 0..120),
            after in tricky_bytes(),
        ) {
            let bytes = [run, after].concat();
            let mut h: u64 = 7;
            let (len, non_ascii, hashed) = plain_string_run_hashing(&bytes, &mut h, |h| h + 1, |h, a, b| h.rotate_left(5) ^ a ^ b.rotate_left(1));
            prop_assert_eq!((len, non_ascii), plain_string_run(&bytes));
            prop_assert_eq!(hashed, len / 16 * 16, "every whole block of the run, from its start");
            let mut expected: u64 = if hashed > 0 { 8 } else { 7 };
            for block in bytes[..hashed].chunks(16) {
                expected = expected.rotate_left(5) ^ word(&block[..8]) ^ word(&block[8..]).rotate_left(1);
            }
            prop_assert_eq!(h, expected);
        }

        #[test]
        fn quote_and_backslash_positions_are_exact(bytes in tricky_bytes()) {
            let mut seen = Vec::new();
            each_quote_or_backslash(&bytes, |at, b| { seen.push((at, b)); true });
            let expected: Vec<_> = bytes.iter().enumerate().filter(|(_, &b)| b == b'"' || b == b'\\').map(|(i, &b)| (i, b)).collect();
            prop_assert_eq!(seen, expected);
        }

        #[test]
        fn find_either_agrees_with_position(bytes in tricky_bytes()) {
            prop_assert_eq!(find_either(&bytes, b'\n', b'"'), bytes.iter().position(|&c| c == b'\n' || c == b'"'));
        }

        #[test]
        fn same_bytes_is_equality(a in tricky_bytes(), flip in any::<prop::sample::Index>()) {
            prop_assert!(same_bytes(&a, &a));
            if !a.is_empty() {
                let mut b = a.clone();
                let i = flip.index(b.len());
                b[i] ^= 1;
                prop_assert!(!same_bytes(&a, &b));
                prop_assert!(!same_bytes(&a, &a[..a.len() - 1]));
            }
        }

        #[test]
        fn one_line_string_bodies_end_at_the_first_unescaped_quote(bytes in tricky_line_bytes()) {
            let expected = {
                let mut i = 0;
                loop {
                    match bytes.get(i) {
                        None | Some(b'\n' | b'\r') => break None,
                        Some(b'"') => break Some(i),
                        Some(b'\\') if matches!(bytes.get(i + 1), None | Some(b'\n' | b'\r')) => break None,
                        Some(b'\\') => i += 2,
                        Some(_) => i += 1,
                    }
                }
            };
            prop_assert_eq!(string_body_on_one_line(&bytes), expected);
        }

        #[test]
        fn a_string_ends_at_its_first_unescaped_quote(bytes in tricky_bytes(), from in 0usize..4) {
            let expected = {
                let (mut i, mut escaped) = (from, false);
                loop {
                    match bytes.get(i) {
                        None => break None,
                        Some(b'"') => break Some((i, escaped)),
                        Some(b'\\') => {
                            escaped = true;
                            i += 2;
                        }
                        Some(_) => i += 1,
                    }
                }
            };
            prop_assert_eq!(string_end(&bytes, from), expected);
        }

        #[test]
        fn string_bodies_are_recognised_as_a_byte_loop_does(bytes in tricky_bytes()) {
            prop_assert_eq!(is_unterminated_string_body(&bytes), naive_string_body(&bytes));
        }
    }
}
