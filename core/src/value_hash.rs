//! The 64-bit hash the retry guard's fingerprint is made of (`guard::fingerprint`), apart from
//! both of its users: the fingerprint, and the JSON scan that folds a member's value into it while
//! it reads the body (`json::scan_object_fingerprinting`). A leaf module, so the scan (below the
//! guard) and the guard (which reads the scan's members) share it without an import circle.

/// The multiplier of every step (2^64 / φ, odd).
pub const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Where the hash of a member's value starts (`json::scan_object_fingerprinting`).
pub const VALUE_SEED: u64 = 5;

/// One step of the hash: two words folded into the chain with one rotation per pair. Each fold
/// is a bijection of the state for fixed words and of each word for a fixed state, so a changed
/// word always changes the result before the final avalanche. The only differences that cancel
/// for sure (a difference in a word's top bit alone passes a multiply unchanged) need the 0x80
/// bit of one byte flipped with the bytes around it left as they are, which turns valid UTF-8
/// into invalid: two bodies the scan accepts cannot differ that way, so they collide only by
/// chance (one in 2^64 for two given requests).
#[inline(always)]
pub fn fold(h: u64, x: u64, y: u64) -> u64 {
    (((h ^ x).wrapping_mul(K)) ^ y).wrapping_mul(K).rotate_left(29)
}

/// Hashes `bytes` with `seed`, sixteen bytes per loop step ([`fold`]: half the loop bookkeeping
/// and rotations of a word per step, the guard's wasm fuel, issue 12), then a last word and the
/// tail, then the final avalanche.
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    finish(absorb(seed, bytes))
}

/// [`hash_bytes`] without the final avalanche: chained over several fields (the length of each
/// folded in first, so no two splits of the same bytes agree), the avalanche is paid once at the
/// end ([`finish`]) instead of once per field.
pub fn absorb(seed: u64, bytes: &[u8]) -> u64 {
    let word = |chunk: &[u8]| u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(K);
    let mut pairs = bytes.chunks_exact(16);
    for pair in &mut pairs {
        let (x, y) = pair.split_at(8);
        h = fold(h, word(x), word(y));
    }
    let mut words = pairs.remainder().chunks_exact(8);
    for w in &mut words {
        h = (h ^ word(w)).wrapping_mul(K).rotate_left(29);
    }
    (h ^ tail_word(words.remainder(), bytes)).wrapping_mul(K)
}

/// The last `rest.len()` (< 8) bytes of `bytes`, as a little-endian word padded with zeros:
/// from the last eight bytes shifted (one load) when there are eight, else in at most three
/// steps (keys and principal fields are often shorter than a word: this is per field).
#[inline(always)]
fn tail_word(rest: &[u8], bytes: &[u8]) -> u64 {
    let n = rest.len();
    if n == 0 {
        return 0;
    }
    if let Some(last) = bytes.len().checked_sub(8).and_then(|start| bytes.get(start..)) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(last).unwrap_or([0; 8]));
        return word >> (8 * (8 - n as u32));
    }
    let mut word = 0u64;
    let mut at = 0;
    if let Some(four) = rest.get(..4) {
        word = u64::from(u32::from_le_bytes(<[u8; 4]>::try_from(four).unwrap_or([0; 4])));
        at = 4;
    }
    if let Some(two) = rest.get(at..at + 2) {
        word |= u64::from(u16::from_le_bytes(<[u8; 2]>::try_from(two).unwrap_or([0; 2]))) << (8 * at);
        at += 2;
    }
    if let Some(&one) = rest.get(at) {
        word |= u64::from(one) << (8 * at);
    }
    word
}

/// A final avalanche, so nearby inputs give unrelated outputs.
pub fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tail as it was read before [`tail_word`]: byte by byte into a zeroed word.
    fn tail_bytewise(rest: &[u8]) -> u64 {
        let mut tail = [0u8; 8];
        for (slot, byte) in tail.iter_mut().zip(rest) {
            *slot = *byte;
        }
        u64::from_le_bytes(tail)
    }

    #[test]
    fn the_tail_word_is_the_bytes_padded_with_zeros() {
        let bytes: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37).wrapping_add(0x81)).collect();
        for len in 0..bytes.len() {
            let whole = &bytes[..len];
            let rest = &whole[len - len % 8..];
            assert_eq!(tail_word(rest, whole), tail_bytewise(rest), "{len}");
        }
    }
}
