//! Golden-output tests of `dnsbridge validate` over a corpus of broken
//! configs, one or more per rule.
//!
//! Each file in tests/golden/corpus/ ends with `# expect: RULE LINE:COLUMN`
//! lines: the findings must be exactly those, at exactly those positions.
//! Its human (no colour), json and github outputs must equal the files of the
//! same name in tests/golden/expected/. After an intended change of the output,
//! regenerate them with
//!
//!     UPDATE_GOLDEN=1 cargo test --test validate_golden
//!
//! and review the diff.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dnsbridge::config::{RULES, Severity, parse_str};
use dnsbridge::validate::{Color, Format, ValidateArgs, validate_to};

const CORPUS: &str = "tests/golden/corpus";
const EXPECTED: &str = "tests/golden/expected";

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .expect("corpus directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn args(files: Vec<PathBuf>, format: Format) -> ValidateArgs {
    ValidateArgs {
        files,
        format,
        strict: false,
        color: Color::Never,
        list_rules: false,
    }
}

/// Runs validate on files; returns (stdout, stderr, exit code).
fn run(files: Vec<PathBuf>, format: Format) -> (String, String, u8) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = validate_to(&args(files, format), &mut out, &mut err, false);
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap(), code)
}

fn expectations(text: &str) -> BTreeSet<(String, u32, u32)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|e| {
            let (rule, pos) = e.trim().split_once(' ').expect("`# expect: RULE L:C`");
            let (l, c) = pos.split_once(':').expect("L:C");
            (rule.to_string(), l.parse().unwrap(), c.parse().unwrap())
        })
        .collect()
}

#[test]
fn every_finding_is_where_the_corpus_says() {
    let files = corpus();
    assert!(files.len() >= 25, "the corpus must hold at least 25 broken configs");
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let want = expectations(&text);
        assert!(!want.is_empty(), "{} has no `# expect:` line", f.display());
        let got: BTreeSet<(String, u32, u32)> = parse_str(&text)
            .diagnostics
            .iter()
            .map(|d| (d.rule.to_string(), d.pos.line, d.pos.column))
            .collect();
        if got != want {
            failures.push(format!("{}:\n  want {want:?}\n  got  {got:?}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_has_a_broken_config() {
    let mut seen = BTreeSet::new();
    for f in corpus() {
        for (rule, _, _) in expectations(&std::fs::read_to_string(f).unwrap()) {
            seen.insert(rule);
        }
    }
    let missing: Vec<&str> = RULES.iter().map(|r| r.id).filter(|id| !seen.contains(*id)).collect();
    assert!(missing.is_empty(), "rules without a corpus file: {missing:?}");
}

fn check_golden(name: &str, actual: &str, failures: &mut Vec<String>) {
    let path = Path::new(EXPECTED).join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(EXPECTED).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(want) if want == actual => {}
        Ok(want) => failures.push(format!(
            "{} differs (UPDATE_GOLDEN=1 regenerates it):\n--- want\n{want}\n--- got\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!("{} is missing (UPDATE_GOLDEN=1 writes it)", path.display())),
    }
}

#[test]
fn outputs_match_the_golden_files() {
    let mut failures = Vec::new();
    for f in corpus() {
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let has_errors = parse_str(&text)
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error);
        for (format, ext) in [
            (Format::Human, "human"),
            (Format::Json, "json"),
            (Format::Github, "github"),
        ] {
            let (out, err, code) = run(vec![f.clone()], format);
            assert_eq!(err, "", "{stem}: nothing on stderr for a readable file");
            assert_eq!(code, if has_errors { 1 } else { 0 }, "{stem} {ext}: exit code");
            check_golden(&format!("{stem}.{ext}"), &out, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_whole_corpus_at_once() {
    let files = corpus();
    let (out, _, code) = run(files.clone(), Format::Human);
    assert_eq!(code, 1);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with(&format!("checked {} files: ", files.len())), "{last}");
    // Every file's findings appear, in the order of the command line.
    let mut at = 0;
    for f in &files {
        let name = f.display().to_string();
        let i = out[at..]
            .find(&format!(" --> {name}:"))
            .or_else(|| out[at..].find(&format!("--> {name}:")));
        let i = i.unwrap_or_else(|| panic!("no finding for {name}"));
        at += i;
    }
    let (json, _, _) = run(files, Format::Json);
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is one JSON object");
        for key in [
            "file",
            "line",
            "column",
            "end_column",
            "length",
            "severity",
            "rule",
            "message",
            "hint",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {line}");
        }
    }
}
