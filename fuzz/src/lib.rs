//! Shared input decoding for the fuzz targets.
//!
//! Targets that feed bytes "as they arrive" take a chunking from the front of
//! the input, so one corpus file holds both the bytes and how they are split:
//!
//! ```text
//! [n] [len_1] .. [len_k] payload...        k = n % 32
//! ```
//!
//! Each `len_i` is a chunk length: below 0xC0 it is the length itself
//! (0 gives an empty chunk), from 0xC0 up it is `(len_i - 0xBF) * 256`, so a
//! few bytes can also cut a 64 KiB frame. Whatever the lengths leave over is
//! the last chunk. A seed that starts with a zero byte is its payload in one
//! piece.

/// Splits `data` into the cut offsets it encodes and the payload.
/// Offsets are increasing, may repeat (an empty chunk) and never pass
/// `payload.len()`.
pub fn split(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let k = usize::from(n % 32).min(rest.len());
    let (lens, payload) = rest.split_at(k);
    let mut cuts = Vec::with_capacity(k);
    let mut at = 0usize;
    for &b in lens {
        let len = if b < 0xC0 {
            usize::from(b)
        } else {
            usize::from(b - 0xBF) * 256
        };
        at = (at + len).min(payload.len());
        cuts.push(at);
    }
    (cuts, payload)
}

/// The chunks of `payload` given by `cuts` (from [`split`]), empty ones
/// included, the rest after the last cut as the final chunk.
pub fn chunks<'a>(cuts: &[usize], payload: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&payload.len())) {
        out.push(&payload[start..c]);
        start = c;
    }
    out
}
