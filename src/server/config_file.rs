//! Where the configuration comes from: the command line, `WSCHAT_*`
//! environment variables and a TOML file (`--config`), in that order of
//! precedence, above the defaults.
//!
//! Nothing here lists the settings: the file's keys and the variables'
//! names are derived from the clap definitions in `config.rs` (the key is
//! the flag's name without its dashes, `max-message-size`; the variable is
//! `WSCHAT_MAX_MESSAGE_SIZE`), and every value goes through the flag's own
//! parser, so a flag added there is at once a key and a variable.
//!
//! The file is turned into arguments placed before the command line's; a
//! setting the command line or the environment gives is left out of them,
//! so that they win (lists too: `--allowed-host` on the command line
//! replaces the file's list rather than adding to it).

use super::Server;
use super::config::Config;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};
use log::{info, warn};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// Settings that a SIGHUP applies to the running server (by clap id);
/// every other one, a flag added later included, needs a restart. Each
/// one here is read where it is used (`Server::cfg`), not copied at start,
/// but for the chat's (`motd`, `rate_*`), which a reload hands to the chat.
pub const LIVE: &[&str] = &[
    "motd",
    "rate_burst",
    "rate_per_sec",
    "allowed_host",
    "allow_origin",
    "trusted_proxy",
    "limit_loopback",
    "max_connections_per_ip",
    "handshake_rate_burst",
    "handshake_rate_per_sec",
    "max_head_size",
    "max_message_size",
    "max_ws_message_size",
    "max_pending_output",
    "no_deflate",
    "deflate_threshold",
    "handshake_timeout",
    "keepalive_timeout",
    "keepalive_requests",
    "ping_interval",
    "idle_timeout",
    "message_timeout",
    "close_timeout",
    "shutdown_timeout",
];

/// Copies the `LIVE` settings of `new` into `cur`.
pub fn apply_live(cur: &mut Config, new: &Config) {
    cur.motd = new.motd.clone();
    cur.rate_burst = new.rate_burst;
    cur.rate_per_sec = new.rate_per_sec;
    cur.allowed_host = new.allowed_host.clone();
    cur.allow_origin = new.allow_origin.clone();
    cur.trusted_proxy = new.trusted_proxy.clone();
    cur.limit_loopback = new.limit_loopback;
    cur.max_connections_per_ip = new.max_connections_per_ip;
    cur.handshake_rate_burst = new.handshake_rate_burst;
    cur.handshake_rate_per_sec = new.handshake_rate_per_sec;
    cur.max_head_size = new.max_head_size;
    cur.max_message_size = new.max_message_size;
    cur.max_ws_message_size = new.max_ws_message_size;
    cur.max_pending_output = new.max_pending_output;
    cur.no_deflate = new.no_deflate;
    cur.deflate_threshold = new.deflate_threshold;
    cur.handshake_timeout = new.handshake_timeout;
    cur.keepalive_timeout = new.keepalive_timeout;
    cur.keepalive_requests = new.keepalive_requests;
    cur.ping_interval = new.ping_interval;
    cur.idle_timeout = new.idle_timeout;
    cur.message_timeout = new.message_timeout;
    cur.close_timeout = new.close_timeout;
    cur.shutdown_timeout = new.shutdown_timeout;
}

/// Arguments that are not settings: no key, no variable.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// A configuration that cannot be used, said in a way that names its place.
#[derive(Debug)]
pub enum ConfigError {
    /// `--help`, `--version` or a bad command line: clap prints and exits.
    Clap(clap::Error),
    /// The file cannot be read.
    Read(PathBuf, std::io::Error),
    /// A fault at a line of the file.
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The settings together are refused (e.g. `tls-cert` without `tls-key`).
    Whole(Option<PathBuf>, String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Clap(e) => write!(f, "{}", first_line(&e.to_string())),
            ConfigError::Read(p, e) => write!(f, "{}: cannot read: {e}", p.display()),
            ConfigError::At {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
            ConfigError::Whole(Some(p), m) => {
                write!(f, "{} with the command line: {m}", p.display())
            }
            ConfigError::Whole(None, m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// clap's message on one line, without its "error:" and its hints.
fn first_line(s: &str) -> String {
    let words: Vec<&str> = s
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let l = words.join(" ");
    l.strip_prefix("error: ").unwrap_or(&l).to_owned()
}

/// The environment variable of a flag: `--max-message-size` is
/// `WSCHAT_MAX_MESSAGE_SIZE`.
pub fn env_name(long: &str) -> String {
    format!("WSCHAT_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The clap command with a `WSCHAT_*` variable on every flag (shown by
/// `--help`). Lists take commas in a variable.
pub fn command() -> Command {
    Config::command().mut_args(|a| {
        let id = a.get_id().as_str().to_owned();
        if id == "help" || id == "version" {
            return a;
        }
        let Some(long) = a.get_long().map(str::to_owned) else {
            return a;
        };
        let list = matches!(a.get_action(), ArgAction::Append);
        let a = a.env(env_name(&long));
        if list { a.value_delimiter(',') } else { a }
    })
}

/// Where the running configuration came from, kept to read it again on
/// SIGHUP.
#[derive(Debug, Clone)]
pub struct Source {
    /// The command line as given (program name first).
    args: Vec<OsString>,
    pub path: Option<PathBuf>,
    /// Every setting's raw values in force (by clap id), to tell what a
    /// reload changes.
    values: BTreeMap<String, Vec<OsString>>,
}

/// What a reload found.
#[derive(Debug, Default)]
pub struct Reload {
    /// Changed and applied (flag names).
    pub applied: Vec<String>,
    /// Changed in the file but kept at the running value until a restart.
    pub need_restart: Vec<String>,
}

/// Reads the configuration from `args`, the environment and the file named
/// by `--config` (or `WSCHAT_CONFIG`).
pub fn load(args: Vec<OsString>) -> Result<(Config, Source), ConfigError> {
    let cmd = command();
    // First pass, errors ignored: which settings the command line and the
    // environment give, and the file's name. The second reports the errors.
    let first = cmd
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .map_err(ConfigError::Clap)?;
    let path = first.get_one::<PathBuf>("config").cloned();
    let mut argv: Vec<OsString> = args.iter().take(1).cloned().collect();
    if let Some(p) = &path {
        let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read(p.clone(), e))?;
        let given = |id: &str| {
            matches!(
                first.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        argv.extend(file_args(&cmd, p, &text, given)?);
    }
    argv.extend(args.iter().skip(1).cloned());
    let matches = cmd.try_get_matches_from(&argv).map_err(|e| {
        if path.is_some()
            && !matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            )
        {
            ConfigError::Whole(path.clone(), first_line(&e.to_string()))
        } else {
            ConfigError::Clap(e)
        }
    })?;
    let config = Config::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    let values = raw_values(&command(), &matches);
    Ok((config, Source { args, path, values }))
}

impl Source {
    /// Reads everything again (SIGHUP). On success `cur` holds the new
    /// values of the `LIVE` settings; the others keep their running value.
    pub fn reload(&mut self, cur: &mut Config) -> Result<Reload, ConfigError> {
        let (new, src) = load(self.args.clone())?;
        let mut out = Reload::default();
        let cmd = command();
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            let (Some(old), Some(now)) = (self.values.get(id), src.values.get(id)) else {
                continue;
            };
            if old == now {
                continue;
            }
            let name = a.get_long().unwrap_or(id).to_owned();
            if LIVE.contains(&id) {
                self.values.insert(id.to_owned(), now.clone());
                out.applied.push(name);
            } else {
                out.need_restart.push(name);
            }
        }
        apply_live(cur, &new);
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
                let c = &self.cfg;
                self.chat.reconfigure(&c.motd, c.rate_burst, c.rate_per_sec);
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

fn raw_values(cmd: &Command, m: &ArgMatches) -> BTreeMap<String, Vec<OsString>> {
    cmd.get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| !NOT_SETTINGS.contains(id))
        .map(|id| {
            let v = m
                .get_raw(id)
                .map(|r| r.map(OsString::from).collect())
                .unwrap_or_default();
            (id.to_owned(), v)
        })
        .collect()
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

/// The file's settings as arguments, each value checked by its flag's own
/// parser; those `given` elsewhere are left out.
fn file_args(
    cmd: &Command,
    path: &Path,
    text: &str,
    given: impl Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigError> {
    let at = |offset: usize, message: String| ConfigError::At {
        path: path.to_owned(),
        line: line_of(text, offset),
        message,
    };
    let table = DeTable::parse(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, format!("not TOML: {}", e.message()))
    })?;
    let mut out = Vec::new();
    // Keys in the order they appear, so the first fault is the one reported.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let k = key.get_ref().as_ref();
        let line_at = key.span().start;
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(k) && !NOT_SETTINGS.contains(&a.get_id().as_str()))
            .ok_or_else(|| at(line_at, unknown_key(cmd, k, value.get_ref().is_table())))?;
        let words = words_of(arg, value.get_ref())
            .map_err(|m| at(value.span().start, format!("{k}: {m}")))?;
        for w in words.iter().flatten() {
            check_value(arg, w).map_err(|m| at(value.span().start, format!("{k}: {m}")))?;
        }
        if given(arg.get_id().as_str()) {
            continue;
        }
        for w in words {
            out.push(OsString::from(format!("--{k}")));
            if let Some(w) = w {
                out.push(OsString::from(w));
            }
        }
    }
    Ok(out)
}

fn unknown_key(cmd: &Command, k: &str, table: bool) -> String {
    if table {
        return format!("[{k}]: the file has no sections; every key is a flag's name at the top");
    }
    let dashed = k.replace('_', "-");
    if dashed != k && cmd.get_arguments().any(|a| a.get_long() == Some(&dashed)) {
        return format!("unknown key {k:?} (did you mean {dashed:?}? keys are the flags' names)");
    }
    format!("unknown key {k:?} (keys are the flags' names, see wschat --help)")
}

/// The argument words of one value: `None` for a flag that takes none.
fn words_of(arg: &Arg, v: &DeValue<'_>) -> Result<Vec<Option<String>>, String> {
    match arg.get_action() {
        ArgAction::SetTrue => match v.as_bool() {
            Some(true) => Ok(vec![None]),
            Some(false) => Ok(vec![]),
            None => Err(format!("expects true or false, not {}", v.type_str())),
        },
        ArgAction::Append => match v {
            DeValue::Array(items) => items
                .iter()
                .map(|i| scalar(i.get_ref()).map(Some))
                .collect(),
            other => Ok(vec![Some(scalar(other)?)]),
        },
        _ => Ok(vec![Some(scalar(v)?)]),
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

/// Runs `value` through the flag's own parser.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or("");
    let probe = Arg::new("v")
        .long(long.to_owned())
        .action(ArgAction::Set)
        .value_parser(arg.get_value_parser().clone());
    Command::new("wschat")
        .no_binary_name(true)
        .arg(probe)
        .try_get_matches_from([format!("--{long}"), value.to_owned()])
        .map(|_| ())
        .map_err(|e| {
            let msg = first_line(&e.to_string());
            // clap names the flag; the message says it again.
            msg.replace(&format!(" for '--{long} <v>'"), "")
        })
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
    fn every_flag_has_a_key_and_live_names_exist() {
        let cmd = command();
        for id in LIVE {
            assert!(cmd.get_arguments().any(|a| a.get_id() == *id), "{id}");
        }
        for a in cmd.get_arguments() {
            if !NOT_SETTINGS.contains(&a.get_id().as_str()) {
                assert!(a.get_long().is_some(), "{:?} has no long name", a.get_id());
                assert!(a.get_env().is_some(), "{:?} has no variable", a.get_id());
            }
        }
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
