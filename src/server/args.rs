//! The command line: flags (from `config::FLAGS`), the `account`
//! subcommand, `--help` and `--version`. The values are only collected
//! here; `config_file::load` runs them through their flags' parsers with
//! those of the environment and the file.

use super::config::{AccountCommand, Command, FLAGS, Kind, flag};

/// What the command line asks for besides settings.
#[derive(Debug)]
pub enum Early {
    /// `--help` (the text to print on stdout).
    Help(String),
    /// `--version`.
    Version,
}

/// The command line read: each setting it gives with its words (by
/// `long`), the subcommand, or `--help`/`--version`.
#[derive(Debug, Default)]
pub struct Args {
    pub given: std::collections::BTreeMap<&'static str, Vec<String>>,
    pub command: Option<Command>,
    pub early: Option<Early>,
}

/// A command line that cannot be used: the message, as `error: ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The flag nearest to an unknown `name`, for "did you mean".
fn nearest(name: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for j in 0..b.len() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != b[j]))
                    .min(row[j] + 1)
                    .min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    let name = name.replace('_', "-");
    FLAGS
        .iter()
        .filter(|f| !f.hidden)
        .map(|f| (distance(&name, f.long), f.long))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, l)| l)
}

/// The flags that mean something to `wschat account` (it opens the store
/// in `--data-dir`, which `--config` may set).
const ACCOUNT_FLAGS: &[&str] = &["data-dir", "config"];

/// Reads the command line (program name first). The values are checked
/// by their parsers when the configuration is put together.
pub fn parse_args(args: &[std::ffi::OsString]) -> Result<Args, UsageError> {
    let err = |m: String| Err(UsageError(m));
    let mut out = Args::default();
    // The subcommand's words so far: "account", then "add"/"passwd", then
    // the name.
    let mut sub: Vec<String> = Vec::new();
    let mut op = false;
    // After `--`, every word is a positional one (`account add -- -bob`:
    // a nick may start with a dash).
    let mut positional_only = false;
    let mut words = args.iter().skip(1);
    while let Some(raw) = words.next() {
        let Some(arg) = raw.to_str() else {
            return err(format!("argument is not UTF-8: {raw:?}"));
        };
        if arg == "--" && !positional_only {
            positional_only = true;
            continue;
        }
        let flag_like = !positional_only && arg.starts_with('-') && arg.len() > 1;
        if !flag_like {
            let ok = match sub.len() {
                0 => arg == "account",
                1 => arg == "add" || arg == "passwd",
                2 => true,
                _ => false,
            };
            if !ok {
                let hint = if sub.len() == 1 {
                    " ('wschat account' takes add or passwd)"
                } else {
                    ""
                };
                return err(format!("unexpected argument '{arg}' found{hint}"));
            }
            sub.push(arg.to_owned());
            continue;
        }
        if arg == "-h" || arg == "--help" {
            out.early = Some(Early::Help(if sub.is_empty() {
                help()
            } else {
                account_help()
            }));
            return Ok(out);
        }
        if arg == "-V" || arg == "--version" {
            out.early = Some(Early::Version);
            return Ok(out);
        }
        let Some(name) = arg.strip_prefix("--") else {
            return err(format!("unexpected argument '{arg}' found"));
        };
        let (name, inline) = match name.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (name, None),
        };
        if name == "op" && sub.get(1).is_some_and(|s| s == "add") {
            op = true;
            continue;
        }
        let Some(f) = flag(name) else {
            let tip = nearest(name).map_or(String::new(), |n| {
                format!(" (a similar flag exists: '--{n}')")
            });
            return err(format!("unexpected argument '--{name}' found{tip}"));
        };
        // The account commands read only where the store is: a server
        // flag after `account` would be taken and silently unused.
        if !sub.is_empty() && !ACCOUNT_FLAGS.contains(&f.long) {
            return err(format!(
                "'--{}' is a server flag; 'wschat account' takes --data-dir, --config and, with add, --op",
                f.long
            ));
        }
        if !matches!(f.kind, Kind::List(..)) && out.given.contains_key(f.long) {
            return err(format!(
                "the argument '{}' cannot be used multiple times",
                f.usage()
            ));
        }
        let word = match f.kind {
            Kind::Switch(_) => {
                if inline.is_some() {
                    return err(format!("'--{}' takes no value", f.long));
                }
                "true".to_owned()
            }
            Kind::One(..) | Kind::List(..) => {
                // A next word that is itself a flag is not taken as the
                // value (`--motd --fsync`: a forgotten value, not a motd);
                // a value that starts with `--` is given as `--motd=--x`.
                let next = || match words.clone().next().and_then(|w| w.to_str()) {
                    Some(w) if w.starts_with("--") && w.len() > 2 => None,
                    _ => words.next().and_then(|w| w.to_str()).map(str::to_owned),
                };
                match inline.or_else(next) {
                    Some(w) => w,
                    None => {
                        return err(format!(
                            "a value is required for '{}' but none was supplied",
                            f.usage()
                        ));
                    }
                }
            }
        };
        out.given.entry(f.long).or_default().push(word);
    }
    out.command = match sub.as_slice() {
        [] => None,
        [_, add, name] if add == "add" => Some(Command::Account(AccountCommand::Add {
            name: name.clone(),
            op,
        })),
        [_, _, name] => Some(Command::Account(AccountCommand::Passwd {
            name: name.clone(),
        })),
        [_, _] => return err("the following required arguments were not provided: <NAME>".into()),
        _ => {
            return err(
                "'wschat account' requires a subcommand: add NAME [--op] or passwd NAME".into(),
            );
        }
    };
    Ok(out)
}

/// `text` wrapped to `width` columns, each line indented by `indent`.
fn wrap(out: &mut String, text: &str, indent: usize, width: usize) {
    let mut col = 0;
    for word in text.split_whitespace() {
        if col > 0 && col + 1 + word.len() > width {
            out.push('\n');
            col = 0;
        }
        if col == 0 {
            out.extend(std::iter::repeat_n(' ', indent));
            col = indent;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.chars().count();
    }
    out.push('\n');
}

/// `wschat --help`: every flag with its variable and default.
pub fn help() -> String {
    let mut s = String::new();
    s.push_str("wschat: a small real-time chat server with a hand-written RFC 6455 engine.\n\n");
    wrap(
        &mut s,
        "Serves the web client over HTTP and WebSocket on one port: `/` (the web client), \
         `/ws` (chat), `/echo` (plain echo), `/healthz`. Durations take units (500ms, 10s, \
         2m, 24h); sizes take B, KiB, MiB, GiB.",
        0,
        80,
    );
    s.push('\n');
    wrap(
        &mut s,
        "Every flag is also a key of the --config file (its name without the dashes: \
         `max-message-size = \"1MiB\"`) and an environment variable \
         (WSCHAT_MAX_MESSAGE_SIZE; lists separated by commas). Flags win over the \
         environment, which wins over the file.",
        0,
        80,
    );
    s.push_str(
        "\nUsage: wschat [OPTIONS] [COMMAND]\n\nCommands:\n  account  Manage accounts in \
         --data-dir (wschat account --help)\n\nOptions:\n",
    );
    for f in FLAGS.iter().filter(|f| !f.hidden) {
        s.push_str("      ");
        s.push_str(&f.usage());
        s.push('\n');
        wrap(&mut s, f.help, 10, 80);
        let mut tail = format!("[env: {}]", f.env());
        if let Some(d) = f.default {
            tail.push_str(&format!(" [default: {d}]"));
        }
        if matches!(f.kind, Kind::List(..)) {
            tail.push_str(" (repeatable)");
        }
        s.push('\n');
        wrap(&mut s, &tail, 10, 80);
        s.push('\n');
    }
    s.push_str("  -h, --help\n          Print help\n\n  -V, --version\n          Print version\n");
    s
}

fn account_help() -> String {
    let mut s = String::new();
    wrap(
        &mut s,
        "Manage accounts in --data-dir (the server must be stopped: it holds the \
         directory). The password is prompted for on a terminal, or read as one line from \
         standard input otherwise.",
        0,
        80,
    );
    s.push_str(
        "\nUsage: wschat [--data-dir DIR] account <COMMAND>\n\nCommands:\n  add NAME [--op]  \
         Create an account (--op: a server operator)\n  passwd NAME      Set an account's \
         password (ends all its sessions)\n\n",
    );
    wrap(
        &mut s,
        "A NAME that starts with '-' comes after '--' (wschat account add -- -bob). \
         After 'account', only --data-dir and --config are taken.",
        0,
        80,
    );
    s
}
