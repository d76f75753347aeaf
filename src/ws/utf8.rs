//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message must be valid UTF-8 as a whole, but its bytes arrive in
//! pieces: split over frames (fragmentation, §5.4) and over socket reads. The
//! connection must fail with 1007 as soon as the bytes seen so far can no
//! longer begin valid UTF-8, not only when the message is complete (Autobahn
//! 6.4.x checks exactly this). The standard library's validator does the
//! work; this type only carries the (at most 3) bytes of a character that a
//! chunk boundary cut in two.

/// The bytes seen so far cannot be the start of valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    /// Leading bytes of a character cut by a chunk boundary.
    pending: [u8; 4],
    pending_len: u8,
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next chunk of a text message.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            // Complete the cut character first, one chunk at most 4 bytes long.
            let have = self.pending_len as usize;
            let take = bytes.len().min(4 - have);
            let mut tmp = self.pending;
            tmp[have..have + take].copy_from_slice(&bytes[..take]);
            match std::str::from_utf8(&tmp[..have + take]) {
                Ok(_) => {
                    self.pending_len = 0;
                    bytes = &bytes[take..];
                }
                Err(e) if e.valid_up_to() > 0 => {
                    // The character completed; what follows it is checked below.
                    self.pending_len = 0;
                    bytes = &bytes[e.valid_up_to() - have..];
                }
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {
                    // Still a valid prefix and the chunk is used up.
                    self.pending = tmp;
                    self.pending_len = (have + take) as u8;
                    return Ok(());
                }
            }
        }
        // Most chat and echo text is ASCII, which has a much cheaper check.
        if bytes.is_ascii() {
            return Ok(());
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // A valid prefix of a character ends the chunk: keep it.
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// The message ended: a character left incomplete makes it invalid.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        *self = Self::default();
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) {
        let expect = std::str::from_utf8(bytes).is_ok();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut v = Utf8Validator::new();
                let ok = v.feed(&bytes[..a]).is_ok()
                    && v.feed(&bytes[a..b]).is_ok()
                    && v.feed(&bytes[b..]).is_ok()
                    && v.finish().is_ok();
                assert_eq!(ok, expect, "{bytes:x?} split at {a},{b}");
            }
        }
    }

    #[test]
    fn valid_text_split_at_every_boundary() {
        check_all_splits("κόσμε aé€𝄞".as_bytes());
        check_all_splits(b"");
        check_all_splits("\u{10FFFF}\u{FFFF}\u{80}".as_bytes());
    }

    #[test]
    fn invalid_sequences_split_at_every_boundary() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xf4\x90\x80\x80", // above U+10FFFF
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // surrogate
            b"ab\xe2\x82",       // truncated at the end
            b"\x80",
            b"\xf8\x88\x80\x80\x80",
        ] {
            check_all_splits(bad);
        }
    }

    #[test]
    fn fails_as_soon_as_the_proof_arrives() {
        // 0xF4 0x90 cannot start any valid character: no need to wait for more.
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok\xf4").is_ok());
        assert_eq!(v.feed(b"\x90"), Err(InvalidUtf8));
        // A lone continuation byte fails on its own.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xbf"), Err(InvalidUtf8));
    }
}
