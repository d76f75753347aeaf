//! Chat service (placeholder until the chat layer lands: same interface).
use std::rc::Rc;

pub type ConnId = usize;

#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

pub trait Outbox {
    fn send(&mut self, to: ConnId, frame: &Rc<[u8]>);
    fn close(&mut self, to: ConnId, code: u16, reason: &str);
}

#[derive(Clone, Debug, Default)]
pub struct ChatConfig {
    pub motd: String,
    pub history: usize,
    pub max_rooms_per_conn: usize,
    pub max_rooms: usize,
    pub max_text_chars: usize,
    pub rate_burst: u32,
    pub rate_per_sec: u32,
    pub room_retention_ms: u64,
}

pub struct Chat;

impl Chat {
    pub fn new(_cfg: ChatConfig, _epoch_seed: u64) -> Chat {
        Chat
    }
    pub fn connect(&mut self, _c: ConnId, _n: Option<&str>, _now: Now, _out: &mut dyn Outbox) {}
    pub fn on_text(&mut self, _c: ConnId, _m: &[u8], _now: Now, _out: &mut dyn Outbox) {}
    pub fn disconnect(&mut self, _c: ConnId, _now: Now, _out: &mut dyn Outbox) {}
    pub fn tick(&mut self, _now: Now) {}
}
