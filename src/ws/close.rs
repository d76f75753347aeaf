//! Close status codes (RFC 6455 §7.4) and close frame payloads (§5.5.1).

/// Status codes this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// §7.4.1 1000: the purpose of the connection is fulfilled.
    Normal = 1000,
    /// §7.4.1 1001: the server is going down, or the peer went silent.
    GoingAway = 1001,
    /// §7.4.1 1002: a protocol error.
    ProtocolError = 1002,
    /// §7.4.1 1003: a type of data the endpoint cannot accept (binary on /ws).
    Unsupported = 1003,
    /// §7.4.1 1007: data inconsistent with the message type (bad UTF-8).
    InvalidPayload = 1007,
    /// §7.4.1 1008: a policy violation (rate-limit abuse, slow consumer).
    PolicyViolation = 1008,
    /// §7.4.1 1009: a message too big to process.
    TooBig = 1009,
    /// §7.4.1 1011: an unexpected condition on the server.
    InternalError = 1011,
}

impl CloseCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

/// Whether a code received in a close frame is one a peer may send.
///
/// RFC 6455 §7.4.1 defines 1000–1003 and 1007–1011; 1004 is reserved and
/// 1005, 1006 and 1015 "MUST NOT be set as a status code in a Close control
/// frame by an endpoint". The IANA registry (§11.7) has since added
/// 1012–1014. §7.4.2: 3000–3999 are for libraries and frameworks, 4000–4999
/// for private use; 0–999 are not used and the rest of 1000–2999 is reserved
/// for future revisions of the protocol.
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a close frame's payload is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosePayloadError {
    /// §5.5.1: a body, if present, starts with a 2-byte code; 1 byte is neither.
    OneByte,
    /// A code that §7.4 does not allow on the wire.
    InvalidCode(u16),
    /// §5.5.1: the reason "is not guaranteed to be human readable" but is UTF-8.
    InvalidReason,
}

/// Parses a received close payload into its code and reason, if any.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, ClosePayloadError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ClosePayloadError::OneByte),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_received(code) {
                return Err(ClosePayloadError::InvalidCode(code));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ClosePayloadError::InvalidReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Largest reason that fits a control frame: 125 bytes less the code (§5.5).
pub const MAX_REASON_LEN: usize = 123;

/// Builds a close payload, cutting the reason at a character boundary so
/// that the frame stays within the 125-byte control frame limit.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_class() {
        for c in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_received(c), "{c} must be refused");
        }
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_received(c), "{c} must be accepted");
        }
        for c in [3000, 3999, 4000, 4999] {
            assert!(is_valid_received(c), "{c} must be accepted");
        }
    }

    #[test]
    fn payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(
            parse_close_payload(b"\x03"),
            Err(ClosePayloadError::OneByte)
        );
        assert_eq!(parse_close_payload(b"\x03\xe8bye"), Ok(Some((1000, "bye"))));
        assert_eq!(
            parse_close_payload(b"\x03\xe8\xff"),
            Err(ClosePayloadError::InvalidReason)
        );
        assert_eq!(
            parse_close_payload(b"\x03\xed"),
            Err(ClosePayloadError::InvalidCode(1005))
        );
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let p = close_payload(1000, &reason);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
