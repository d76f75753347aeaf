//! The opening handshake: bytes as they arrive → `HeadScanner` → `Request::parse`
//! → `check_upgrade`. Must never panic; the scanner must find the same head
//! end whatever the chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::ws::deflate::{Params, negotiate, parse_extensions};
use wschat::ws::handshake::{HeadScanner, Request, check_upgrade, response_101};

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = wschat_fuzz::split(data);

    let one_shot = HeadScanner::default().scan(input);

    // The server's read buffer only grows; scan each longer prefix.
    let mut s = HeadScanner::default();
    let mut found = None;
    for end in cuts.iter().copied().chain(std::iter::once(input.len())) {
        if let Some(n) = s.scan(&input[..end]) {
            found = Some(n);
            break;
        }
    }
    assert_eq!(found, one_shot, "chunking changed where the head ends");

    let head = match one_shot {
        Some(n) => {
            assert!(n <= input.len() && n >= 2);
            assert_eq!(input[n - 1], b'\n');
            // The head is the shortest prefix that ends in a blank line.
            assert_eq!(HeadScanner::default().scan(&input[..n - 1]), None);
            &input[..n]
        }
        // An incomplete head is never parsed by the server, but parsing one
        // must still be harmless.
        None => input,
    };

    let Ok(req) = Request::parse(head) else {
        return;
    };
    let _ = (req.path(), req.query(), req.wants_upgrade());
    let _ = req.offers_protocol("wschat.v1");
    match check_upgrade(&req) {
        Ok(accept) => {
            assert_eq!(req.method, "GET");
            assert!(req.minor_version >= 1);
            assert!(req.duplicate.is_none());
            assert!(req.key.is_some() && req.host.is_some());
            // base64 of a 20-byte SHA-1.
            assert_eq!(accept.len(), 28);
            // An answer, when there is one, parses back as what it says.
            let answer = negotiate(&req.extensions).map(|p| p.emit());
            if let Some(a) = &answer {
                let exts = parse_extensions(a.as_bytes()).expect("our answer parses");
                assert_eq!(Params::parse(&exts[0]).map(|p| p.emit()).as_ref(), Ok(a));
            }
            let r = response_101(&accept, Some("wschat.v1"), answer.as_deref());
            assert!(r.ends_with(b"\r\n\r\n"));
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 426));
            assert!(!e.reason().is_empty());
        }
    }
});
