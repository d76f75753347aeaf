//! `--log-format json`: one JSON object per line on stderr, for journald
//! and log shippers: `ts` (RFC 3339, UTC, milliseconds), `level`, `target`,
//! `message`, and any key-values the log call carries
//! (`info!(conn = k; "...")`) as fields of their own.

use log::kv::{Key, Value, VisitSource};
use serde_json::{Map, Value as Json};
use std::io::{self, Write};

/// env_logger's format function for `--log-format json`.
pub fn format(buf: &mut env_logger::fmt::Formatter, record: &log::Record<'_>) -> io::Result<()> {
    let line = line(record, std::time::SystemTime::now());
    writeln!(buf, "{line}")
}

/// One record as one line of JSON (no newline inside: strings are escaped).
pub fn line(record: &log::Record<'_>, now: std::time::SystemTime) -> String {
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        Json::String(humantime::format_rfc3339_millis(now).to_string()),
    );
    obj.insert("level".into(), Json::String(record.level().to_string()));
    obj.insert("target".into(), Json::String(record.target().to_owned()));
    obj.insert("message".into(), Json::String(record.args().to_string()));
    let mut fields = Fields(&mut obj);
    let _ = record.key_values().visit(&mut fields);
    Json::Object(obj).to_string()
}

struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let v = if let Some(n) = value.to_u64() {
            Json::from(n)
        } else if let Some(n) = value.to_i64() {
            Json::from(n)
        } else if let Some(b) = value.to_bool() {
            Json::Bool(b)
        } else {
            Json::String(value.to_string())
        };
        // A field never hides one of the four above.
        let k = key.as_str();
        let k = if matches!(k, "ts" | "level" | "target" | "message") {
            format!("field.{k}")
        } else {
            k.to_owned()
        };
        self.0.insert(k, v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_line_with_fields() {
        let kvs: &[(&str, u64)] = &[("conn", 7)];
        let rec = log::Record::builder()
            .args(format_args!("closed \"x\"\nnext"))
            .level(log::Level::Warn)
            .target("wschat::server")
            .key_values(&kvs)
            .build();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let l = line(&rec, t);
        assert!(!l.contains('\n'));
        let v: Json = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "2023-11-14T22:13:20.123Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "wschat::server");
        assert_eq!(v["message"], "closed \"x\"\nnext");
        assert_eq!(v["conn"], 7);
    }
}
