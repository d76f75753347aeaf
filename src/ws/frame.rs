//! Frame header codec and masking (RFC 6455 §5.2, §5.3).

/// Frame opcodes (RFC 6455 §5.2, §11.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for the reserved values 0x3–0x7 and 0xB–0xF.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// RFC 6455 §5.5: opcodes with the high bit set are control frames.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

/// Largest frame header: 2 bytes, 8 of extended length, 4 of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Writes a frame header with the shortest length form (RFC 6455 §5.2:
/// "the minimal number of bytes MUST be used to encode the length").
/// Returns the number of bytes written into `out`.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    len: u64,
    mask: Option<[u8; 4]>,
) -> usize {
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if len <= u64::from(u16::MAX) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// Encodes a whole unmasked server frame (header and payload) into `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    encode_frame_rsv1(out, opcode, payload, false);
}

/// [`encode_frame`], with RSV1 set when `compressed`: RFC 7692 §6, the
/// "Per-Message Compressed" bit of a message's (here only) frame.
pub fn encode_frame_rsv1(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], compressed: bool) {
    let mut hdr = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut hdr, true, opcode, payload.len() as u64, None);
    if compressed {
        hdr[0] |= 0x40;
    }
    out.reserve(n + payload.len());
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
}

/// XORs `data` with the masking key (RFC 6455 §5.3), `offset` being the
/// position of `data[0]` within the frame's payload (mod 4 is enough).
///
/// The loop works on 8-byte words: `j = i MOD 4` repeats every 4 bytes, so a
/// word-sized key made of the key rotated by `offset` covers each word.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    // The key as it applies from `data[0]` on: rotated by `offset` bytes,
    // then twice over in a word. (Arithmetic, not slice copies, which stay
    // calls at opt-level "s": this runs for every frame a client sends.)
    let k = u32::from_be_bytes(key)
        .rotate_left(8 * (offset % 4) as u32)
        .to_be_bytes();
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);
    // Four words a step, written out: the release build is optimised for
    // size, which neither unrolls nor vectorises loops (Cargo.toml). A
    // 64 KiB frame is 8192 words: 32.9k instructions a word a step, 14.4k
    // like this (callgrind), 5k vectorised at opt-level 3.
    let (blocks, rest) = data.as_chunks_mut::<32>();
    for b in blocks {
        let (w, _) = b.as_chunks_mut::<8>();
        w[0] = (u64::from_ne_bytes(w[0]) ^ word).to_ne_bytes();
        w[1] = (u64::from_ne_bytes(w[1]) ^ word).to_ne_bytes();
        w[2] = (u64::from_ne_bytes(w[2]) ^ word).to_ne_bytes();
        w[3] = (u64::from_ne_bytes(w[3]) ^ word).to_ne_bytes();
    }
    // The tail starts at a multiple of 4 bytes: the key's phase is `k`'s.
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_uses_the_shortest_length_form() {
        let mut h = [0u8; MAX_HEADER_LEN];
        assert_eq!(encode_header(&mut h, true, OpCode::Text, 125, None), 2);
        assert_eq!(h[..2], [0x81, 125]);
        assert_eq!(encode_header(&mut h, true, OpCode::Binary, 126, None), 4);
        assert_eq!(h[..4], [0x82, 126, 0, 126]);
        assert_eq!(encode_header(&mut h, true, OpCode::Binary, 65535, None), 4);
        assert_eq!(encode_header(&mut h, false, OpCode::Text, 65536, None), 10);
        assert_eq!(h[..10], [0x01, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let n = encode_header(&mut h, true, OpCode::Ping, 0, Some([1, 2, 3, 4]));
        assert_eq!(h[..n], [0x89, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn opcodes_round_trip_and_reserved_ones_are_refused() {
        for v in 0..16u8 {
            match OpCode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(matches!(v, 3..=7 | 0xB..=0xF)),
            }
        }
        assert!(OpCode::Close.is_control() && !OpCode::Text.is_control());
    }

    #[test]
    fn mask_matches_the_rfc_definition_at_every_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..61u8).collect();
        for start in 0..data.len() {
            let mut d = data.clone();
            apply_mask(&mut d[start..], key, start);
            for (i, b) in d.iter().enumerate().skip(start) {
                assert_eq!(*b, data[i] ^ key[i % 4]);
            }
        }
        // RFC 6455 §5.7: a masked "Hello".
        let mut hello = *b"\x7f\x9f\x4d\x51\x58";
        apply_mask(&mut hello, key, 0);
        assert_eq!(&hello, b"Hello");
    }
}
