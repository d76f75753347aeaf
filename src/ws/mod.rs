//! The RFC 6455 protocol engine, sans-IO: bytes in, events and bytes out.
pub mod frame;
