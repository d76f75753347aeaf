//! Our short-message DEFLATE encoder (`wschat::ws::deflate_short`),
//! differentially against flate2's inflater: for every input and window,
//! the output with the empty stored block's four octets put back (RFC 7692
//! §7.2.2) inflates to exactly the input, and is never longer than the
//! stored form, `n + 5 * ceil(n / 65535) + 1` bytes.
#![no_main]

use flate2::{Decompress, FlushDecompress, Status};
use libfuzzer_sys::fuzz_target;
use wschat::ws::deflate::TAIL;
use wschat::ws::deflate_short::compress;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    // RFC 7692 §7.1.2.1: window bits 8..15 (the server uses 9..15).
    let bits = 8 + sel % 8;
    let mut z = Vec::new();
    compress(input, bits, &mut z);
    let n = input.len();
    assert!(z.len() <= n + 5 * n.div_ceil(65535) + 1, "{} bytes for {n}", z.len());
    z.extend_from_slice(&TAIL);

    // Inflated with a window of exactly 2^bits (zlib's raw inflate takes
    // 9..15; 8 is inflated with 9, and the encoder is asked for 2^8).
    let mut d = Decompress::new_with_window_bits(false, bits.max(9));
    let mut out = Vec::with_capacity(n + 1);
    let status = d
        .decompress_vec(&z, &mut out, FlushDecompress::Sync)
        .expect("our output inflates");
    assert_ne!(status, Status::StreamEnd, "no final block: a sync flush ends no stream");
    assert_eq!(d.total_in() as usize, z.len(), "every byte taken");
    assert_eq!(out, input, "inflates to the input");
});
