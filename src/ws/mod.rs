//! The RFC 6455 protocol engine, sans-IO: bytes in, events and bytes out.
//!
//! Nothing here touches a socket or reads a clock, so each part can be
//! tested and fuzzed alone:
//! - [`handshake`]: the opening handshake (§4.2);
//! - [`frame`]: the frame header codec and masking (§5.2, §5.3);
//! - [`receive`]: frame parsing and message assembly (§5.4–§5.6, §6.2);
//! - [`utf8`]: incremental UTF-8 validation (§8.1);
//! - [`close`]: close codes and close frame bodies (§5.5.1, §7.4);
//! - [`deflate`]: permessage-deflate (RFC 7692): negotiation and codec;
//! - [`deflate_short`]: our DEFLATE encoder (RFC 1951) for short messages.
pub mod close;
pub mod deflate;
pub mod deflate_short;
pub mod frame;
pub mod handshake;
pub mod receive;
pub mod utf8;
