//! The shortest round trip: proves the harness and the binary work together.
mod common;
use common::*;
use tungstenite::Message;

#[test]
fn echo_round_trip_with_an_independent_client() {
    let server = Server::start(&[]);
    let mut ws = client(&server, "/echo");
    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello"));
}
