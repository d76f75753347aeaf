//! Frame parsing and message assembly, differentially: however the bytes
//! are chunked, `Receiver` must produce the same events and the same error,
//! with permessage-deflate (RFC 7692) negotiated or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::ws::close::is_valid_received;
use wschat::ws::receive::{Outcome, run_chunked_with};

/// Message size limits: tiny ones so the 1009 paths are hit with short
/// inputs, and the server's default (64 KiB) and larger.
const MAXES: [usize; 8] = [0, 1, 7, 125, 126, 1000, 64 * 1024, 1 << 20];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else {
        return;
    };
    let max = MAXES[usize::from(sel % 8)];
    // Bit 3: permessage-deflate negotiated, so RSV1 marks compressed
    // messages that are inflated as they arrive.
    let deflate = sel & 8 != 0;
    let (cuts, input) = wschat_fuzz::split(data);

    let whole = run_chunked_with(max, deflate, input, &[]);
    let chunked = run_chunked_with(max, deflate, input, &cuts);
    let bytewise = (input.len() <= 256).then(|| {
        let cuts: Vec<usize> = (0..input.len()).collect();
        run_chunked_with(max, deflate, input, &cuts)
    });
    // Compressed input too, corrupt or not: the inflater is fed at fixed
    // offsets of each message's compressed bytes (`INFLATE_STEP`), so the
    // fault named and the moment it is seen do not depend on the reads.
    assert_eq!(chunked, whole, "chunking {cuts:?} changed the outcome");
    if let Some(b) = &bytewise {
        assert_eq!(b, &whole, "byte by byte");
    }

    check(&whole, max);
});

/// What any outcome must look like.
fn check(outcomes: &[Outcome], max: usize) {
    for (i, o) in outcomes.iter().enumerate() {
        let last = i + 1 == outcomes.len();
        match o {
            Outcome::Text(t) => {
                assert!(std::str::from_utf8(t).is_ok(), "text is UTF-8 (§8.1)");
                assert!(t.len() <= max, "message within the limit");
            }
            Outcome::Binary(b) => assert!(b.len() <= max, "message within the limit"),
            // §5.5: control payloads are at most 125 bytes.
            Outcome::Ping(p) | Outcome::Pong(p) => assert!(p.len() <= 125),
            // Nothing is read after a close frame or an error.
            Outcome::Close(code) => {
                assert!(last, "events after a close: {outcomes:?}");
                if let Some(c) = code {
                    assert!(is_valid_received(*c), "{c}");
                }
            }
            Outcome::Error(e) => {
                assert!(last, "events after an error: {outcomes:?}");
                assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
            }
        }
    }
}
