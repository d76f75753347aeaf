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

/// Decodes one unmasked server frame (RFC 6455 §5.2) that must be exactly
/// one final text frame; returns its payload.
pub fn server_text_payload(f: &[u8]) -> &[u8] {
    assert!(f.len() >= 2, "frame shorter than a header: {f:x?}");
    assert_eq!(f[0], 0x81, "FIN + text opcode, no RSV bits");
    assert_eq!(f[1] & 0x80, 0, "server frames are unmasked");
    let (hdr, len) = match f[1] & 0x7f {
        126 => {
            assert!(f.len() >= 4);
            let n = usize::from(u16::from_be_bytes([f[2], f[3]]));
            assert!(n >= 126, "shortest length form (§5.2)");
            (4, n)
        }
        127 => {
            assert!(f.len() >= 10);
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[2..10]);
            let n = u64::from_be_bytes(b);
            assert!(n > 0xFFFF && n >> 63 == 0, "shortest length form (§5.2)");
            (10, usize::try_from(n).expect("length fits"))
        }
        n => (2, usize::from(n)),
    };
    assert_eq!(f.len(), hdr + len, "frame length matches its header");
    &f[hdr..]
}
