//! The proxy-wasm header-map wire format, encoded and decoded without panicking.
//!
//! The SDK's own decoder unwraps UTF-8 conversions and slice bounds; a client sending a non-UTF-8
//! header value would trap the VM and take every later request on this worker with it. Here a
//! malformed map decodes to what could be read, and non-UTF-8 values stay bytes.
//!
//! Format: `u32 count`, then `count × (u32 key_len, u32 value_len)`, then each key and value
//! followed by a NUL byte. Integers are little-endian.

/// One header: lowercase name and raw value bytes.
pub type Header = (String, Vec<u8>);

/// Decodes a serialized header map. Entries past a malformed point are dropped.
pub fn decode_map(bytes: &[u8]) -> Vec<Header> {
    let read_u32 = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(arr)).ok()
    };
    let Some(count) = read_u32(0) else { return Vec::new() };
    let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else { return Vec::new() };
    let mut out = Vec::with_capacity(count.min(256));
    for n in 0..count {
        let (Some(key_len), Some(value_len)) = (read_u32(4 + n * 8), read_u32(8 + n * 8)) else { break };
        let Some(key) = data.checked_add(key_len).and_then(|end| bytes.get(data..end)) else { break };
        data += key_len + 1;
        let Some(value) = data.checked_add(value_len).and_then(|end| bytes.get(data..end)) else { break };
        data += value_len + 1;
        out.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
    }
    out
}

/// A serialized header map read in place: one allocation for the entry offsets, none per header.
#[derive(Debug, Default)]
pub struct HeaderMap {
    bytes: Vec<u8>,
    /// (key start, key end, value start, value end) into `bytes`.
    spans: Vec<(usize, usize, usize, usize)>,
}

impl HeaderMap {
    /// Indexes a serialized map (the host's bytes). Entries past a malformed point are dropped.
    pub fn new(bytes: Vec<u8>) -> HeaderMap {
        let read_u32 = |at: usize| -> Option<usize> {
            let b = bytes.get(at..at.checked_add(4)?)?;
            let arr: [u8; 4] = b.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(arr)).ok()
        };
        let mut spans = Vec::new();
        if let Some(count) = read_u32(0) {
            if let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) {
                spans.reserve(count.min(256));
                for n in 0..count {
                    let (Some(key_len), Some(value_len)) = (read_u32(4 + n * 8), read_u32(8 + n * 8)) else { break };
                    let Some(key_end) = data.checked_add(key_len).filter(|end| *end <= bytes.len()) else { break };
                    let key_start = data;
                    data = key_end + 1;
                    let Some(value_end) = data.checked_add(value_len).filter(|end| *end <= bytes.len()) else { break };
                    spans.push((key_start, key_end, data, value_end));
                    data = value_end + 1;
                }
            }
        }
        HeaderMap { bytes, spans }
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&(ks, ke, vs, ve)| {
            (self.bytes.get(ks..ke).unwrap_or_default(), self.bytes.get(vs..ve).unwrap_or_default())
        })
    }

    /// The first value of `name` (lowercase), if it is UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name.as_bytes()).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Encodes headers for `proxy_send_local_response`.
pub fn encode_map(headers: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + headers.iter().map(|(k, v)| 10 + k.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(headers.len()));
    for (k, v) in headers {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(&len32(v.len()));
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let headers = [(":path", "/v1/messages"), ("x-a", ""), ("content-type", "application/json")];
        let decoded = decode_map(&encode_map(&headers));
        let expected: Vec<Header> = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_maps_do_not_panic() {
        let good = encode_map(&[("a", "1"), ("b", "2")]);
        for cut in 0..good.len() {
            let _ = decode_map(&good[..cut]);
        }
        assert_eq!(decode_map(&[0xff, 0xff, 0xff, 0xff]), Vec::<Header>::new());
        let mut bad_utf8 = encode_map(&[("k", "v")]);
        let at = bad_utf8.len() - 2;
        bad_utf8[at] = 0xff;
        assert_eq!(decode_map(&bad_utf8), vec![("k".to_string(), vec![0xff])]);
    }

    #[test]
    fn a_header_map_reads_in_place_like_the_decoder() {
        let good = encode_map(&[(":status", "200"), ("content-type", "text/event-stream"), ("x-a", "")]);
        let map = HeaderMap::new(good.clone());
        assert_eq!(map.get(":status"), Some("200"));
        assert_eq!(map.get("content-type"), Some("text/event-stream"));
        assert_eq!(map.get("x-a"), Some(""));
        assert_eq!(map.get("x-b"), None);
        for cut in 0..good.len() {
            let partial = HeaderMap::new(good[..cut].to_vec());
            let decoded = decode_map(&good[..cut]);
            let read: Vec<Header> = partial.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec())).collect();
            assert_eq!(read, decoded, "cut at {cut}");
        }
        let mut bad_utf8 = encode_map(&[("k", "v")]);
        let at = bad_utf8.len() - 2;
        bad_utf8[at] = 0xff;
        assert_eq!(HeaderMap::new(bad_utf8).get("k"), None, "a non-UTF-8 value is not text");
    }
}
