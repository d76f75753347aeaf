//! wschat: a real-time chat server with a hand-written RFC 6455 engine on mio.
#![forbid(unsafe_code)]
pub mod chat;
pub mod server;
pub mod store;
pub mod ws;
