//! Incremental UTF-8 validation against the standard library, in any
//! chunking: same verdict, and a failure on exactly the chunk holding the
//! first byte that proves the text invalid (RFC 6455 §8.1: fail fast).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::ws::utf8::Utf8Validator;

fuzz_target!(|data: &[u8]| {
    let (cuts, bytes) = wschat_fuzz::split(data);
    let chunks = wschat_fuzz::chunks(&cuts, bytes);

    // Index of the first byte after which no continuation can make the
    // bytes valid; `None` when they are valid or only truncated.
    let proof = match std::str::from_utf8(bytes) {
        Ok(_) => None,
        Err(e) => match e.error_len() {
            None => None,
            Some(n) => {
                let end = e.valid_up_to() + n;
                // `n` bytes starting at `valid_up_to` form no character. Either
                // the last of them already rules out every continuation
                // (e.g. a lone 0x80, or 0xF4 0x90), or the byte after them does
                // (e.g. 0xE2 0x82 'A').
                let prefix_dead = std::str::from_utf8(&bytes[..end])
                    .err()
                    .is_some_and(|e| e.error_len().is_some());
                Some(if prefix_dead { end - 1 } else { end })
            }
        },
    };
    let expect_ok = std::str::from_utf8(bytes).is_ok();

    let mut v = Utf8Validator::new();
    let mut start = 0;
    let mut failed_at = None;
    for (i, c) in chunks.iter().enumerate() {
        if v.feed(c).is_err() {
            failed_at = Some((i, start, start + c.len()));
            break;
        }
        start += c.len();
    }
    match (proof, failed_at) {
        (Some(p), Some((_, s, e))) => assert!(
            s <= p && p < e,
            "failed on chunk {s}..{e}, but the proof is byte {p}"
        ),
        (Some(p), None) => panic!("byte {p} proves the text invalid, no chunk failed"),
        (None, Some((_, s, e))) => {
            panic!("chunk {s}..{e} failed but the bytes are a valid prefix")
        }
        (None, None) => {
            assert_eq!(v.finish().is_ok(), expect_ok, "verdict at the end");
            // `finish` resets: the validator is ready for the next message.
            assert!(v.feed("é".as_bytes()).is_ok() && v.finish().is_ok());
        }
    }
});
