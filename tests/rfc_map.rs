//! Keeps `docs/rfc6455.md` true to the code, so that the conformance map
//! cannot rot:
//! - every row cites a real section of its RFC;
//! - every file a row cites exists and holds each function it names
//!   (`fn name`, and for `Type::name` the type as well);
//! - every test a row cites is a `#[test]` function in the file it names;
//! - a row that is not marked pending, not enforced or not applicable cites
//!   both code and at least one test;
//! - every RFC 6455 and RFC 7692 section cited in `src/ws/` has a row (a row
//!   for a subsection covers a citation of its parent section).
//!
//! Rows marked `(pending: permessage-deflate)` are skipped for code and
//! tests (their enforcement is being written), but still count as rows.
//! Plain text scanning, no parser crates: the table format is described at
//! the top of the document.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const DOC: &str = "docs/rfc6455.md";
const PENDING: &str = "(pending: permessage-deflate)";

/// The numbered sections of RFC 6455 (from its table of contents).
const RFC6455_SECTIONS: &[&str] = &[
    "1", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9", "2", "2.1", "3", "4",
    "4.1", "4.2", "4.2.1", "4.2.2", "4.3", "4.4", "5", "5.1", "5.2", "5.3", "5.4", "5.5", "5.5.1",
    "5.5.2", "5.5.3", "5.6", "5.7", "5.8", "6", "6.1", "6.2", "7", "7.1", "7.1.1", "7.1.2",
    "7.1.3", "7.1.4", "7.1.5", "7.1.6", "7.1.7", "7.2", "7.2.1", "7.2.2", "7.2.3", "7.3", "7.4",
    "7.4.1", "7.4.2", "8", "8.1", "9", "9.1", "9.2", "10", "10.1", "10.2", "10.3", "10.4", "10.5",
    "10.6", "10.7", "10.8", "11", "11.1", "11.1.1", "11.1.2", "11.2", "11.3", "11.3.1", "11.3.2",
    "11.3.3", "11.3.4", "11.3.5", "11.4", "11.5", "11.6", "11.7", "11.8", "11.9", "12", "13", "14",
    "14.1", "14.2",
];

/// The numbered sections of RFC 7692 (from its table of contents).
const RFC7692_SECTIONS: &[&str] = &[
    "1", "2", "2.1", "3", "4", "5", "5.1", "6", "6.1", "6.2", "7", "7.1", "7.1.1", "7.1.1.1",
    "7.1.1.2", "7.1.2", "7.1.2.1", "7.1.2.2", "7.1.3", "7.2", "7.2.1", "7.2.2", "7.2.3", "7.2.3.1",
    "7.2.3.2", "7.2.3.3", "7.2.3.4", "7.2.3.5", "7.2.3.6", "7.3", "8", "9", "9.1", "9.2", "10",
    "10.1", "10.2",
];

/// Sections whose text binds a server with a MUST or SHOULD: each keeps at
/// least one row, so that rows cannot quietly disappear.
const REQUIRED: &[(u32, &str)] = &[
    (6455, "4.2.1"),
    (6455, "4.2.2"),
    (6455, "4.4"),
    (6455, "5.1"),
    (6455, "5.2"),
    (6455, "5.3"),
    (6455, "5.4"),
    (6455, "5.5"),
    (6455, "5.5.1"),
    (6455, "5.5.2"),
    (6455, "5.6"),
    (6455, "5.8"),
    (6455, "6.1"),
    (6455, "6.2"),
    (6455, "7.1.1"),
    (6455, "7.1.2"),
    (6455, "7.1.7"),
    (6455, "7.2.2"),
    (6455, "7.4.1"),
    (6455, "8.1"),
    (6455, "9"),
    (6455, "9.1"),
    (7692, "5"),
    (7692, "6"),
    (7692, "7.1"),
    (7692, "7.1.2.1"),
    (7692, "7.1.2.2"),
    (7692, "7.2.1"),
    (7692, "7.2.2"),
];

fn known_sections(rfc: u32) -> &'static [&'static str] {
    match rfc {
        6455 => RFC6455_SECTIONS,
        _ => RFC7692_SECTIONS,
    }
}

/// One row of the map.
#[derive(Debug)]
struct Row {
    line: usize,
    rfc: u32,
    sections: Vec<String>,
    enforced: String,
    tests: String,
    pending: bool,
}

/// The contents of backtick code spans in `cell`, in order.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Section numbers after each `§` in `text` ("§5.5.1." gives "5.5.1").
fn section_numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in text.split('§').skip(1) {
        let num: String = part
            .trim_start_matches([' ', '§'])
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let num = num.trim_end_matches('.');
        if !num.is_empty() {
            out.push(num.to_string());
        }
    }
    out
}

/// Splits a Markdown table line into its cells (no escaped pipes in the map).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

/// Parses the map: rows of five-column tables (§, level, rule, enforced in,
/// proved by) under headings that name RFC 6455 or RFC 7692.
fn parse_rows(doc: &str, errors: &mut Vec<String>) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut rfc = None;
    for (i, line) in doc.lines().enumerate() {
        let n = i + 1;
        if line.starts_with('#') {
            if line.contains("RFC 7692") {
                rfc = Some(7692);
            } else if line.contains("RFC 6455") {
                rfc = Some(6455);
            }
            continue;
        }
        if !line.trim_start().starts_with('|') {
            continue;
        }
        let c = cells(line);
        // The header and the separator line.
        if c.first().is_some_and(|s| s == "§" || s.starts_with("---")) {
            continue;
        }
        if c.len() != 5 {
            errors.push(format!(
                "{DOC}:{n}: a row needs 5 cells (§ | level | rule | enforced in | proved by), found {}",
                c.len()
            ));
            continue;
        }
        let Some(rfc) = rfc else {
            errors.push(format!(
                "{DOC}:{n}: a row before any heading naming RFC 6455 or RFC 7692"
            ));
            continue;
        };
        let sections = section_numbers(&c[0]);
        if sections.is_empty() {
            errors.push(format!("{DOC}:{n}: no §section in the first cell"));
        }
        for s in &sections {
            if !known_sections(rfc).contains(&s.as_str()) {
                errors.push(format!("{DOC}:{n}: RFC {rfc} has no section §{s}"));
            }
        }
        if !matches!(
            c[1].as_str(),
            "MUST" | "MUST NOT" | "SHOULD" | "SHOULD NOT" | "—"
        ) {
            errors.push(format!(
                "{DOC}:{n}: level {:?} is none of MUST, MUST NOT, SHOULD, SHOULD NOT, —",
                c[1]
            ));
        }
        rows.push(Row {
            line: n,
            rfc,
            sections,
            pending: line.contains(PENDING),
            enforced: c[3].clone(),
            tests: c[4].clone(),
        });
    }
    rows
}

/// Where the sources are read from: the crate, or a test's own tree.
trait Tree {
    fn read(&self, path: &str) -> Option<String>;
}

struct Dir(PathBuf);

impl Tree for Dir {
    fn read(&self, path: &str) -> Option<String> {
        fs::read_to_string(self.0.join(path)).ok()
    }
}

/// Whether `src` defines `fn name` (followed by `(` or `<`).
fn defines_fn(src: &str, name: &str) -> bool {
    fn_lines(src, name).next().is_some()
}

/// Line numbers (0-based) of the definitions of `fn name`.
fn fn_lines<'a>(src: &'a str, name: &'a str) -> impl Iterator<Item = usize> + 'a {
    let pat = format!("fn {name}");
    src.lines().enumerate().filter_map(move |(i, l)| {
        let at = l.find(&pat)?;
        // A whole word: not `fn name_more`, not `xfn name`.
        let before_ok = at == 0 || !l.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = l[at + pat.len()..].chars().next();
        (before_ok && matches!(after, Some('(' | '<'))).then_some(i)
    })
}

/// Whether a `#[test]` (or `#[tokio::test]`-like) attribute sits on the
/// definition of `fn name`, looking up through attributes and comments.
fn defines_test(src: &str, name: &str) -> bool {
    let lines: Vec<&str> = src.lines().collect();
    fn_lines(src, name).any(|i| {
        lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .take_while(|l| l.starts_with("#[") || l.starts_with("//"))
            .any(|l| l.starts_with("#[") && l.contains("test]"))
    })
}

/// Checks the code spans of an "enforced in" or "proved by" cell: a span
/// ending in `.rs` names a file, the spans after it functions (or tests)
/// in that file. Returns how many functions were checked.
fn check_refs(
    tree: &dyn Tree,
    row: &Row,
    cell: &str,
    tests: bool,
    errors: &mut Vec<String>,
) -> usize {
    let what = if tests { "test" } else { "function" };
    let mut file: Option<(String, String)> = None;
    let mut checked = 0;
    for span in code_spans(cell) {
        if span.ends_with(".rs") {
            match tree.read(&span) {
                Some(src) => file = Some((span, src)),
                None => {
                    errors.push(format!("{DOC}:{}: no file {span}", row.line));
                    file = None;
                }
            }
            continue;
        }
        let Some((path, src)) = &file else {
            errors.push(format!(
                "{DOC}:{}: {what} `{span}` cited before any file",
                row.line
            ));
            continue;
        };
        checked += 1;
        let name = span.rsplit("::").next().unwrap_or(&span);
        let ok = if tests {
            defines_test(src, name)
        } else {
            defines_fn(src, name)
        };
        if !ok {
            errors.push(format!(
                "{DOC}:{}: {path} has no {what} `fn {name}`",
                row.line
            ));
        }
        // `Type::method`: the type must be in the file too.
        if let Some((ty, _)) = span.rsplit_once("::") {
            let ty = ty.rsplit("::").next().unwrap_or(ty);
            if !src
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|w| w == ty)
            {
                errors.push(format!("{DOC}:{}: {path} has no type `{ty}`", row.line));
            }
        }
    }
    checked
}

/// Whether a cell says the rule is not enforced or does not apply.
fn waived(cell: &str) -> bool {
    let c = cell.trim_start_matches(['*', '_']).to_ascii_lowercase();
    c.starts_with("not enforced") || c.starts_with("n/a")
}

fn check_rows(tree: &dyn Tree, rows: &[Row], errors: &mut Vec<String>) {
    for row in rows.iter().filter(|r| !r.pending) {
        let code = check_refs(tree, row, &row.enforced, false, errors);
        let tests = check_refs(tree, row, &row.tests, true, errors);
        if waived(&row.enforced) {
            continue;
        }
        if code == 0 {
            errors.push(format!(
                "{DOC}:{}: no function cited where the rule is enforced \
                 (or say \"not enforced\", \"n/a\" or {PENDING})",
                row.line
            ));
        }
        if tests == 0 {
            errors.push(format!(
                "{DOC}:{}: no test cited that proves the rule",
                row.line
            ));
        }
    }
}

/// RFC-and-section citations in one source file. A `§` takes the RFC named
/// last before it on its line; otherwise the RFC the file names first
/// (RFC 6455 when it names none).
fn citations(src: &str) -> Vec<(u32, String, usize)> {
    let rfc_at = |s: &str| -> Option<u32> {
        let rest = s.strip_prefix("RFC")?.trim_start();
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let default = src
        .match_indices("RFC")
        .find_map(|(i, _)| rfc_at(&src[i..]))
        .unwrap_or(6455);
    let mut out = Vec::new();
    for (i, line) in src.lines().enumerate() {
        if !line.contains('§') {
            continue;
        }
        let mut current = default;
        let mut rest = line;
        // Walk the line: each "RFC NNNN" switches the RFC for what follows.
        while let Some(at) = rest.find(['§', 'R']) {
            let tail = &rest[at..];
            if let Some(stripped) = tail.strip_prefix('§') {
                let end = stripped
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '§' || c == ' '))
                    .unwrap_or(stripped.len());
                for s in section_numbers(&tail[..'§'.len_utf8() + end]) {
                    out.push((current, s, i + 1));
                }
                rest = &stripped[end..];
            } else {
                if let Some(r) = rfc_at(tail) {
                    current = r;
                }
                rest = &tail[1..];
            }
        }
    }
    out
}

/// Every .rs file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every RFC 6455 or RFC 7692 section cited in `files` must have a row.
fn check_coverage(files: &[(String, String)], rows: &[Row], errors: &mut Vec<String>) {
    let mapped: BTreeSet<(u32, &str)> = rows
        .iter()
        .flat_map(|r| r.sections.iter().map(move |s| (r.rfc, s.as_str())))
        .collect();
    for (path, src) in files {
        for (rfc, sec, line) in citations(src) {
            if rfc != 6455 && rfc != 7692 {
                continue;
            }
            let sub = format!("{sec}.");
            let covered = mapped
                .iter()
                .any(|(r, s)| *r == rfc && (*s == sec || s.starts_with(&sub)));
            if !covered {
                errors.push(format!(
                    "{path}:{line}: cites RFC {rfc} §{sec}, which has no row in {DOC}"
                ));
            }
        }
    }
}

fn check(tree: &dyn Tree, doc: &str, files: &[(String, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    let rows = parse_rows(doc, &mut errors);
    check_rows(tree, &rows, &mut errors);
    check_coverage(files, &rows, &mut errors);
    errors
}

/// The REQUIRED sections that have no row.
fn missing_required(rows: &[Row]) -> Vec<String> {
    REQUIRED
        .iter()
        .filter(|(rfc, sec)| {
            !rows
                .iter()
                .any(|r| r.rfc == *rfc && r.sections.iter().any(|s| s == sec))
        })
        .map(|(rfc, sec)| format!("{DOC}: no row for RFC {rfc} §{sec}, which binds a server"))
        .collect()
}

#[test]
fn the_rfc_map_matches_the_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join(DOC)).expect("docs/rfc6455.md");
    let files: Vec<(String, String)> = rust_files(&root.join("src/ws"))
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap_or(&p).display().to_string();
            (rel, fs::read_to_string(&p).unwrap_or_default())
        })
        .collect();
    assert!(!files.is_empty(), "no sources under src/ws");
    let rows = parse_rows(&doc, &mut Vec::new());
    let pending = rows.iter().filter(|r| r.pending).count();
    if pending > 0 {
        eprintln!("{DOC}: {pending} rows still {PENDING}");
    }
    let mut errors = check(&Dir(root), &doc, &files);
    // A map that lost its rows would pass every other check.
    errors.extend(missing_required(&rows));
    assert!(
        errors.is_empty(),
        "{DOC} is out of date:\n{}",
        errors.join("\n")
    );
}

// ---- the checker's own tests --------------------------------------------------

/// A source tree in memory.
struct Fake(Vec<(&'static str, &'static str)>);

impl Tree for Fake {
    fn read(&self, path: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, s)| s.to_string())
    }
}

const FAKE_SRC: &str = "\
//! Framing (RFC 6455 §5.2).
struct Receiver;
impl Receiver {
    fn check_first_byte(&self) {}
}
fn helper() {}
#[cfg(test)]
mod tests {
    /// A doc comment between the attribute and the function is fine.
    #[test]
    fn reserved_bits_fail() {}
}
";

fn fake() -> Fake {
    Fake(vec![("src/ws/receive.rs", FAKE_SRC)])
}

fn doc_with(row: &str) -> String {
    format!(
        "## RFC 6455\n\n| § | Level | Rule | Enforced in | Proved by |\n| --- | --- | --- | --- | --- |\n{row}\n"
    )
}

const GOOD_ROW: &str = "| §5.2 | MUST | RSV bits zero | `src/ws/receive.rs` `Receiver::check_first_byte` | `src/ws/receive.rs` `reserved_bits_fail` |";

#[test]
fn checker_accepts_a_good_row() {
    let files = vec![("src/ws/receive.rs".to_string(), FAKE_SRC.to_string())];
    assert_eq!(
        check(&fake(), &doc_with(GOOD_ROW), &files),
        Vec::<String>::new()
    );
}

#[test]
fn checker_finds_a_missing_function_type_file_or_test() {
    for (from, to, expect) in [
        (
            "Receiver::check_first_byte",
            "Receiver::check_frist_byte",
            "no function `fn check_frist_byte`",
        ),
        (
            "Receiver::check_first_byte",
            "Frame::check_first_byte",
            "no type `Frame`",
        ),
        (
            "`src/ws/receive.rs` `Receiver",
            "`src/ws/recieve.rs` `Receiver",
            "no file src/ws/recieve.rs",
        ),
        (
            "`reserved_bits_fail`",
            "`reserved_bits_fails`",
            "no test `fn reserved_bits_fails`",
        ),
        // A helper is not a test.
        ("`reserved_bits_fail`", "`helper`", "no test `fn helper`"),
        // A prefix of a real name is not that name.
        (
            "Receiver::check_first_byte",
            "Receiver::check_first",
            "no function `fn check_first`",
        ),
        ("| §5.2 |", "| §5.9 |", "RFC 6455 has no section §5.9"),
        ("| MUST |", "| MAY |", "level \"MAY\""),
    ] {
        let row = GOOD_ROW.replace(from, to);
        assert_ne!(row, GOOD_ROW, "{from}");
        let errors = check(&fake(), &doc_with(&row), &[]);
        assert!(
            errors.iter().any(|e| e.contains(expect)),
            "{to}: expected {expect:?} in {errors:?}"
        );
    }
}

#[test]
fn checker_wants_code_and_a_test_unless_waived_or_pending() {
    let no_test = "| §5.2 | MUST | r | `src/ws/receive.rs` `helper` | — |";
    let errors = check(&fake(), &doc_with(no_test), &[]);
    assert!(
        errors.iter().any(|e| e.contains("no test cited")),
        "{errors:?}"
    );
    let no_code = "| §5.2 | MUST | r | somewhere | `src/ws/receive.rs` `reserved_bits_fail` |";
    let errors = check(&fake(), &doc_with(no_code), &[]);
    assert!(
        errors.iter().any(|e| e.contains("no function cited")),
        "{errors:?}"
    );
    for ok in [
        "| §5.2 | MUST | r | not enforced: why | — |",
        "| §5.2 | MUST | r | n/a: why | — |",
        "| §5.2 | MUST | r | `src/ws/nothing.rs` `f` (pending: permessage-deflate) | `nope` |",
    ] {
        assert_eq!(
            check(&fake(), &doc_with(ok), &[]),
            Vec::<String>::new(),
            "{ok}"
        );
    }
}

#[test]
fn checker_finds_a_required_section_without_a_row() {
    let rows = parse_rows(&doc_with(GOOD_ROW), &mut Vec::new());
    let missing = missing_required(&rows);
    assert_eq!(missing.len(), REQUIRED.len() - 1, "{missing:?}");
    assert!(!missing.iter().any(|m| m.contains("RFC 6455 §5.2,")));
    assert!(missing.iter().any(|m| m.contains("RFC 7692 §7.2.1,")));
}

#[test]
fn checker_finds_a_cited_section_without_a_row() {
    let src = "//! Framing (RFC 6455 §5.2).\n\
               // §5.5.1, §7.4: close bodies. RFC 9110 §5.6.1 is not ours.\n\
               // RFC 7692 §7.2.1 and §6; then RFC 6455 §5.4.\n";
    let files = vec![("src/ws/x.rs".to_string(), src.to_string())];
    let cited: Vec<(u32, String)> = citations(src).into_iter().map(|(r, s, _)| (r, s)).collect();
    assert_eq!(
        cited,
        [
            (6455, "5.2"),
            (6455, "5.5.1"),
            (6455, "7.4"),
            (9110, "5.6.1"),
            (7692, "7.2.1"),
            (7692, "6"),
            (6455, "5.4"),
        ]
        .map(|(r, s)| (r, s.to_string()))
    );
    let doc = format!(
        "{}| §7.4.1 | — | codes | n/a: x | — |\n\n## RFC 7692\n\n| § | Level | Rule | Enforced in | Proved by |\n| --- | --- | --- | --- | --- |\n| §6 | MUST | r | {PENDING} | — |\n",
        doc_with(GOOD_ROW)
    );
    let errors = check(&fake(), &doc, &files);
    // §5.2 and §6 have rows, §7.4 is covered by §7.4.1; §5.5.1, §7.2.1 and §5.4 are not.
    assert_eq!(errors.len(), 3, "{errors:?}");
    for s in ["RFC 6455 §5.5.1", "RFC 7692 §7.2.1", "RFC 6455 §5.4"] {
        assert!(errors.iter().any(|e| e.contains(s)), "{s}: {errors:?}");
    }
}
