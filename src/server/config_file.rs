//! Where the configuration comes from: the command line, `WSCHAT_*`
//! environment variables and a TOML file (`--config`), in that order of
//! precedence, above the defaults.
//!
//! Nothing here lists the settings: the file's keys and the variables'
//! names are those of the table in `config.rs` (`config::FLAGS`: the key is
//! the flag's name without its dashes, `max-message-size`; the variable is
//! `WSCHAT_MAX_MESSAGE_SIZE`), and every value goes through the flag's own
//! parser, so a flag added there is at once a key and a variable.
//!
//! Each source gives a setting's words (`--allowed-host a --allowed-host
//! b` is `["a", "b"]`); the highest source that gives a setting wins whole,
//! so a list on the command line replaces the file's rather than adding to
//! it.

use super::Server;
use super::config::{self, Config, Early, FLAGS, Flag, Kind};
use log::{info, warn};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// A configuration that cannot be used, said in a way that names its place.
#[derive(Debug)]
pub enum ConfigError {
    /// `--help` or `--version`: printed, then exit 0.
    Early(Early),
    /// A bad command line or variable: printed with a pointer to --help,
    /// then exit 2.
    Usage(String),
    /// The file cannot be read.
    Read(PathBuf, std::io::Error),
    /// A fault at a line of the file.
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// A fault of the file's settings with no one line to name (e.g.
    /// `tls-cert` in the file, and `tls-key` nowhere).
    File(PathBuf, String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Early(Early::Help(_)) => write!(f, "--help"),
            ConfigError::Early(Early::Version) => write!(f, "--version"),
            ConfigError::Usage(m) => write!(f, "{m}"),
            ConfigError::Read(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            ConfigError::At {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            ConfigError::File(p, m) => write!(f, "{}: {m}", p.display()),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the running configuration came from, kept to read it again on
/// SIGHUP.
#[derive(Debug, Clone)]
pub struct Source {
    /// The command line as given (program name first).
    args: Vec<OsString>,
    pub path: Option<PathBuf>,
    /// Every setting's words in force (by flag), to tell what a reload
    /// changes.
    values: BTreeMap<&'static str, Vec<String>>,
}

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reload {
    /// Changed and applied (flag names).
    pub applied: Vec<String>,
    /// Changed in the file but kept at the running value until a restart.
    pub need_restart: Vec<String>,
}

/// The words a variable gives a flag: a switch takes true/false (also
/// 1/0, yes/no, on/off), a list commas.
fn env_words(f: &Flag, v: &str) -> Result<Vec<String>, String> {
    Ok(match f.kind {
        Kind::Switch(_) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => vec!["true".into()],
            "false" | "0" | "no" | "off" | "" => vec!["false".into()],
            _ => return Err(format!("expects true or false, not {v:?}")),
        },
        Kind::List(..) => v.split(',').map(str::to_owned).collect(),
        Kind::One(..) => vec![v.to_owned()],
    })
}

/// The message for a value its flag's parser refused.
fn invalid(f: &Flag, w: &str, m: &str) -> String {
    format!("invalid value '{w}' for '{}': {m}", f.usage())
}

/// Reads the configuration from `args`, the environment and the file named
/// by `--config` (or `WSCHAT_CONFIG`).
pub fn load(args: Vec<OsString>) -> Result<(Config, Source), ConfigError> {
    load_with(args, |name| std::env::var_os(name))
}

/// `load` with the environment given by `env` (tests).
pub fn load_with(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<(Config, Source), ConfigError> {
    let cli = config::parse_args(&args).map_err(|e| ConfigError::Usage(e.0))?;
    if let Some(early) = cli.early {
        return Err(ConfigError::Early(early));
    }
    let mut from_env: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for f in FLAGS {
        let name = f.env();
        let Some(v) = env(&name) else { continue };
        let Some(v) = v.to_str() else {
            return Err(ConfigError::Usage(format!("{name} is not UTF-8")));
        };
        let words = env_words(f, v).map_err(|m| ConfigError::Usage(format!("{name}: {m}")))?;
        from_env.insert(f.long, words);
    }
    let given = |long: &str| cli.given.get(long).or_else(|| from_env.get(long));
    let path = given("config").and_then(|w| w.last()).map(PathBuf::from);
    let mut from_file = BTreeMap::new();
    if let Some(p) = &path {
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.clone(), e))?;
        from_file = file_values(p, &text)?;
    }
    let mut cfg = Config::defaults();
    let mut values = BTreeMap::new();
    // Each setting given: whether it came from the file.
    let mut in_file = BTreeMap::new();
    for f in FLAGS {
        // Where the words come from, for the error.
        let (words, from) = if let Some(w) = cli.given.get(f.long) {
            (w.clone(), "")
        } else if let Some(w) = from_env.get(f.long) {
            (w.clone(), "env")
        } else if let Some(w) = from_file.get(f.long) {
            (w.clone(), "file")
        } else {
            (Vec::new(), "")
        };
        // The file's values were checked with their line; the others here.
        f.apply(&mut cfg, &words).map_err(|m| {
            let w = words.last().map_or("", String::as_str);
            match (from, &path) {
                ("file", Some(p)) => ConfigError::File(p.clone(), invalid(f, w, &m)),
                ("env", _) => ConfigError::Usage(format!("{}: {}", f.env(), invalid(f, w, &m))),
                _ => ConfigError::Usage(invalid(f, w, &m)),
            }
        })?;
        in_file.insert(f.long, from == "file");
        values.insert(f.long, words);
    }
    for f in FLAGS {
        if let Some(other) = f.requires {
            let set = |l: &str| values.get(l).is_some_and(|w| !w.is_empty());
            if set(f.long) && !set(other) {
                let m = format!(
                    "the following required arguments were not provided: --{other} (with --{})",
                    f.long
                );
                // The file's fault when it set the one missing its pair;
                // otherwise the command line's (or the environment's).
                return Err(match &path {
                    Some(p) if in_file.get(f.long).copied().unwrap_or(false) => {
                        ConfigError::File(p.clone(), m)
                    }
                    _ => ConfigError::Usage(m),
                });
            }
        }
    }
    cfg.command = cli.command;
    Ok((cfg, Source { args, path, values }))
}

impl Source {
    /// Reads everything again (SIGHUP). On success `cur` holds the new
    /// values of the live settings (`Flag::live`); the others keep their
    /// running value.
    pub fn reload(&mut self, cur: &mut Config) -> Result<Reload, ConfigError> {
        let (_, src) = load(self.args.clone())?;
        let mut out = Reload::default();
        for f in FLAGS {
            let (Some(old), Some(now)) = (self.values.get(f.long), src.values.get(f.long)) else {
                continue;
            };
            if old == now {
                continue;
            }
            if f.live {
                // Parsed once already by `load`: cannot fail here.
                f.apply(cur, now).map_err(|m| match &src.path {
                    Some(p) => ConfigError::File(p.clone(), m),
                    None => ConfigError::Usage(m),
                })?;
                self.values.insert(f.long, now.clone());
                out.applied.push(f.long.to_owned());
            } else {
                out.need_restart.push(f.long.to_owned());
            }
        }
        Ok(out)
    }
}

impl Server {
    /// SIGHUP: reads the configuration again. A file with a fault changes
    /// nothing; otherwise what can change while running is applied and what
    /// cannot is named.
    pub(super) fn reload_config(&mut self) {
        let Some(src) = self.config_source.as_mut() else {
            return;
        };
        let Some(path) = src.path.clone() else {
            info!("SIGHUP: no --config file to read again");
            return;
        };
        match src.reload(&mut self.cfg) {
            Ok(r) => {
                self.sweep_every = super::sweep_every(&self.cfg);
                // The chat copied these at start: a reload hands them over.
                let c = &self.cfg;
                self.chat
                    .reconfigure(&c.motd, c.rate_burst, c.rate_per_sec, c.max_ws_message_size);
                if r.applied.is_empty() && r.need_restart.is_empty() {
                    info!("SIGHUP: {} read again: nothing changed", path.display());
                }
                if !r.applied.is_empty() {
                    info!(
                        "SIGHUP: {} read again: applied {}",
                        path.display(),
                        r.applied.join(", ")
                    );
                }
                if !r.need_restart.is_empty() {
                    warn!(
                        "SIGHUP: {}: {} changed but take effect only at a restart; running with the old values",
                        path.display(),
                        r.need_restart.join(", ")
                    );
                }
            }
            Err(e) => warn!("SIGHUP: configuration not reloaded, the running one stays: {e}"),
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The file's settings as words, each checked by its flag's own parser.
fn file_values(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<&'static str, Vec<String>>, ConfigError> {
    let at = |offset: usize, message: String| ConfigError::At {
        path: path.to_owned(),
        line: line_of(text, offset),
        message,
    };
    let table = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, format!("not TOML: {}", e.message()))
    })?;
    let mut out = BTreeMap::new();
    // Keys in the order they appear, so the first fault is the one reported.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let k = key.get_ref().as_ref();
        let line_at = key.span().start;
        let f = config::flag(k)
            .filter(|f| f.long != "config")
            .ok_or_else(|| at(line_at, unknown_key(k, value.get_ref().is_table())))?;
        let words = words_of(f, value.get_ref())
            .map_err(|m| at(value.span().start, format!("{k}: {m}")))?;
        for w in &words {
            f.check(w)
                .map_err(|m| at(value.span().start, format!("{k}: invalid value '{w}': {m}")))?;
        }
        out.insert(f.long, words);
    }
    Ok(out)
}

fn unknown_key(k: &str, table: bool) -> String {
    if table {
        return format!("[{k}]: the file has no sections; every key is a flag's name at the top");
    }
    let dashed = k.replace('_', "-");
    if dashed != k && config::flag(&dashed).is_some() {
        return format!("unknown key {k:?} (did you mean {dashed:?}? keys are the flags' names)");
    }
    format!("unknown key {k:?} (keys are the flags' names, see wschat --help)")
}

/// The words of one value: `true`/`false` for a switch.
fn words_of(f: &Flag, v: &DeValue<'_>) -> Result<Vec<String>, String> {
    match f.kind {
        Kind::Switch(_) => match v.as_bool() {
            Some(b) => Ok(vec![b.to_string()]),
            None => Err(format!("expects true or false, not {}", v.type_str())),
        },
        Kind::List(..) => match v {
            DeValue::Array(items) => items.iter().map(|i| scalar(i.get_ref())).collect(),
            other => Ok(vec![scalar(other)?]),
        },
        Kind::One(..) => Ok(vec![scalar(v)?]),
    }
}

fn scalar(v: &DeValue<'_>) -> Result<String, String> {
    match v {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("bad integer: {e}")),
        DeValue::Float(f) => Ok(f.as_str().to_owned()),
        other => Err(format!(
            "expects a string or a number, not {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, extra: &[&str]) -> Result<Config, ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("wschat-cfg-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wschat.toml");
        std::fs::write(&p, text).unwrap();
        let mut args: Vec<OsString> = vec!["wschat".into(), "--config".into(), p.clone().into()];
        args.extend(extra.iter().map(OsString::from));
        let r = load(args).map(|(c, _)| c);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn every_flag_is_named_once_and_its_default_parses() {
        let mut seen = std::collections::BTreeSet::new();
        for f in FLAGS {
            assert!(seen.insert(f.long), "--{} twice", f.long);
            assert!(
                f.long
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{}",
                f.long
            );
            assert!(!f.help.is_empty(), "--{} has no help", f.long);
            if let Some(d) = f.default {
                f.check(d)
                    .unwrap_or_else(|e| panic!("--{}'s default: {e}", f.long));
            }
            if let Some(r) = f.requires {
                assert!(config::flag(r).is_some(), "--{} requires {r}", f.long);
            }
        }
    }

    #[test]
    fn environment_between_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("wschat-cfg-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wschat.toml");
        std::fs::write(&p, "backlog = 7\nno-deflate = true\nmotd = \"file\"\n").unwrap();
        let env = |n: &str| match n {
            "WSCHAT_CONFIG" => Some(OsString::from(&p)),
            "WSCHAT_BACKLOG" => Some("8".into()),
            "WSCHAT_NO_DEFLATE" => Some("false".into()),
            "WSCHAT_ALLOWED_HOST" => Some("a.example,b.example".into()),
            _ => None,
        };
        let args = |a: &[&str]| -> Vec<OsString> {
            std::iter::once("wschat")
                .chain(a.iter().copied())
                .map(OsString::from)
                .collect()
        };
        let (c, _) = load_with(args(&[]), env).unwrap();
        assert_eq!(
            (c.backlog, c.no_deflate, c.motd.as_str()),
            (8, false, "file")
        );
        assert_eq!(c.allowed_host, ["a.example", "b.example"]);
        let (c, _) = load_with(args(&["--backlog", "9", "--no-deflate"]), env).unwrap();
        assert_eq!((c.backlog, c.no_deflate), (9, true));
        let e = load_with(args(&[]), |n: &str| {
            (n == "WSCHAT_BACKLOG").then(|| OsString::from("many"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("invalid value 'many' for '--backlog <N>'"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_values_and_flags_over_them() {
        let c = parse(
            "# comment\nmax-message-size = \"1MiB\"\nbacklog = 77\nno-deflate = true\nallowed-host = [\"a.example\", \"b.example\"]\nidle-timeout = \"3m\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.backlog, 77);
        assert!(c.no_deflate);
        assert_eq!(c.allowed_host, ["a.example", "b.example"]);
        assert_eq!(c.idle_timeout, std::time::Duration::from_secs(180));
        let c = parse(
            "backlog = 77\nallowed-host = [\"a.example\"]\n",
            &["--backlog", "5", "--allowed-host", "c.example"],
        )
        .unwrap();
        assert_eq!(c.backlog, 5);
        assert_eq!(c.allowed_host, ["c.example"]);
    }

    #[test]
    fn faults_name_the_line() {
        let e = parse("backlog = 1\n\nmax-mesage-size = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wschat.toml:3: unknown key \"max-mesage-size\""),
            "{e}"
        );
        let e = parse("motd = \"hi\"\nmax-message-size = \"12 parsecs\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":2: max-message-size: invalid value '12 parsecs'"),
            "{e}"
        );
        assert!(e.contains("unknown size unit"), "{e}");
        let e = parse("no-hsts = \"yes\"\n", &[]).unwrap_err().to_string();
        assert!(
            e.contains(":1: no-hsts: expects true or false, not string"),
            "{e}"
        );
        let e = parse("max_rooms = 3\n", &[]).unwrap_err().to_string();
        assert!(e.contains("did you mean \"max-rooms\""), "{e}");
        let e = parse("a = \n", &[]).unwrap_err().to_string();
        assert!(e.contains(":1: not TOML"), "{e}");
        let e = parse("keepalive-requests = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(":1: keepalive-requests: invalid value '0'"),
            "{e}"
        );
        let e = parse("[tls]\ncert = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains(":1: [tls]"), "{e}");
    }

    /// packaging/wschat.toml parses as it ships, and with every commented
    /// setting uncommented: each key it shows is a flag, each value valid.
    #[test]
    fn the_packaged_file_parses_with_every_line_uncommented() {
        let shipped = include_str!("../../packaging/wschat.toml");
        let c = parse(shipped, &[]).unwrap();
        assert_eq!(c.data_dir, std::path::PathBuf::from("/var/lib/wschat"));
        let mut shown = 0;
        let all: String = shipped
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(r)
                    if r.split_once(" = ").is_some_and(|(k, _)| {
                        k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                    }) =>
                {
                    shown += 1;
                    format!("{r}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        assert!(shown > 40, "{shown} commented settings");
        parse(&all, &[]).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn reload_applies_live_settings_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("wschat-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("wschat.toml");
        std::fs::write(&p, "max-head-size = \"4KiB\"\nbacklog = 10\n").unwrap();
        let args: Vec<OsString> = vec!["wschat".into(), "--config".into(), p.clone().into()];
        let (mut cfg, mut src) = load(args).unwrap();
        std::fs::write(&p, "max-head-size = \"2KiB\"\nbacklog = 20\n").unwrap();
        let r = src.reload(&mut cfg).unwrap();
        assert_eq!(r.applied, ["max-head-size"]);
        assert_eq!(r.need_restart, ["backlog"]);
        assert_eq!(cfg.max_head_size, 2048);
        assert_eq!(cfg.backlog, 10);
        std::fs::write(&p, "max-head-size = \"lots\"\n").unwrap();
        assert!(src.reload(&mut cfg).is_err());
        assert_eq!(cfg.max_head_size, 2048);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
