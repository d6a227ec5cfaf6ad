//! The `validate`, `route` and `diff` commands as a user runs them: exit
//! codes, several files, standard input, directories, help text, colour, and
//! the exact output of `route` and `diff` (golden files under tests/golden/,
//! regenerated with UPDATE_GOLDEN=1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The built `dnsbridge` binary.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_dnsbridge"))
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("NO_COLOR").output().unwrap()
}

fn text(o: &Output) -> (String, String, i32) {
    (
        String::from_utf8(o.stdout.clone()).unwrap(),
        String::from_utf8(o.stderr.clone()).unwrap(),
        o.status.code().unwrap(),
    )
}

const CLEAN: &str = "examples/public-load-balancer.yaml";
const BROKEN: &str = "tests/golden/corpus/21-route-cycle.yaml";
const WARNS: &str = "tests/golden/corpus/34-aws-zonal-endpoint.yaml";

#[test]
fn exit_codes() {
    assert_eq!(text(&run(&["validate", CLEAN])).2, 0);
    assert_eq!(text(&run(&["validate", BROKEN])).2, 1);
    assert_eq!(text(&run(&["validate", WARNS])).2, 0, "warnings alone pass");
    assert_eq!(
        text(&run(&["validate", "--strict", WARNS])).2,
        1,
        "--strict fails on warnings"
    );
    let (out, err, code) = text(&run(&["validate", CLEAN, "/nonexistent/config.yaml", BROKEN]));
    assert_eq!(code, 2, "an unreadable file is trouble");
    assert!(err.contains("/nonexistent/config.yaml: cannot read it"), "{err}");
    assert!(
        out.contains("21-route-cycle.yaml:8:24"),
        "the readable files are still checked: {out}"
    );
    assert!(
        out.ends_with("checked 2 files: 1 valid (2 routes), 1 with errors, 1 unreadable; 1 error, 0 warnings\n"),
        "{out}"
    );
    assert_eq!(text(&run(&["validate", "--format", "yaml", CLEAN])).2, 2, "usage error");
    assert_eq!(text(&run(&["validate"])).2, 2, "no file");
    let empty = tempdir("empty");
    assert_eq!(
        text(&run(&["validate", empty.to_str().unwrap()])).2,
        2,
        "a directory without YAML"
    );
}

#[test]
fn several_files_and_directories() {
    let (out, _, code) = text(&run(&["validate", "--color", "never", "examples", BROKEN, WARNS]));
    assert_eq!(code, 1);
    let n = std::fs::read_dir("examples")
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert!(
        out.contains(&format!("checked {} files: {} valid", n + 2, n + 1)),
        "{out}"
    );
    // In command-line order: the cycle before the zonal warning.
    assert!(out.find("route-cycle").unwrap() < out.find("aws-zonal-endpoint").unwrap());
}

#[test]
fn standard_input() {
    let mut child = Command::new(bin())
        .args(["validate", "--format", "json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"spec:\n  infrastructure:\n    executorPrivateDNS:\n      routes:\n        - source: 10.1.1.1\n          destination: x.example.com\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let (out, _, code) = text(&o);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["file"].as_str(), v["line"].as_u64(), v["column"].as_u64()),
        (Some("<stdin>"), Some(5), Some(19))
    );
    assert_eq!(v["rule"], "source-is-ip");
}

#[test]
fn help_documents_formats_and_exit_codes() {
    for (cmd, needles) in [
        (
            "validate",
            &[
                "--format",
                "--strict",
                "Exit status",
                "0  no errors",
                "1  at least one error",
                "2  a file could not be read",
                "JSON Lines",
            ][..],
        ),
        (
            "route",
            &[
                "--config",
                "Exit status",
                "0  a route matches",
                "1  no route matches",
                "longest suffix",
            ][..],
        ),
        (
            "diff",
            &[
                "OLD",
                "NEW",
                "Exit status",
                "0  no difference",
                "1  the configs differ",
                "2  a file",
            ][..],
        ),
    ] {
        let (out, _, code) = text(&run(&[cmd, "--help"]));
        assert_eq!(code, 0);
        for n in needles {
            assert!(out.contains(n), "`{cmd} --help` lacks {n:?}:\n{out}");
        }
    }
    let (out, _, code) = text(&run(&["validate", "--list-rules"]));
    assert_eq!(code, 0);
    assert!(out.contains("route-cycle") && out.contains("aws-zonal-endpoint"));
}

#[test]
fn colour_only_when_asked_or_on_a_terminal() {
    let (out, _, _) = text(&run(&["validate", BROKEN]));
    assert!(!out.contains('\x1b'), "no colour into a pipe");
    let (out, _, _) = text(&run(&["validate", "--color", "always", BROKEN]));
    assert!(out.contains("\x1b[1;31merror[route-cycle]"), "{out:?}");
}

#[test]
fn github_format_annotates_the_line() {
    let (out, _, code) = text(&run(&["validate", "--format", "github", BROKEN, WARNS]));
    assert_eq!(code, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with(&format!(
        "::error file={BROKEN},line=8,col=24,endColumn=37,title=route-cycle::routes form a cycle"
    )));
    assert!(lines[1].starts_with(&format!("::warning file={WARNS},line=8,col=24,")));
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dnsbridge-validate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn golden(name: &str, actual: &str) {
    let path = Path::new("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        actual,
        want,
        "{} differs (UPDATE_GOLDEN=1 regenerates it)",
        path.display()
    );
}

const ROUTE_CONFIG: &str = "tests/golden/route/config.yaml";

#[test]
fn route_explains_each_kind_of_match() {
    let cases = [
        ("exact", "Registry.Corp.Example.", 0),
        ("wildcard-prefix-kept", "npm.build.corp.example", 0),
        ("longest-suffix", "x.eu.corp.example", 0),
        ("ip-destination", "psc.corp.example", 0),
        ("flatten", "https://go.corp.example/mod/@v/list", 0),
        ("apex-not-covered", "corp.example", 1),
        ("none", "github.com", 1),
    ];
    for (name, query, want) in cases {
        let (out, err, code) = text(&run(&["route", query, "--config", ROUTE_CONFIG]));
        assert_eq!(code, want, "{name}: {err}");
        golden(&format!("route/{name}.txt"), &out);
    }
    let (out, _, code) = text(&run(&[
        "route",
        "npm.build.corp.example",
        "-c",
        ROUTE_CONFIG,
        "--format",
        "json",
    ]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "wildcard");
    assert_eq!(v["prefix"], "npm.build");
    assert_eq!(v["destination"]["name"], "npm.build.mirror.example.com");
    assert_eq!(v["resolver_kind"], "upstreams");
    assert_eq!(text(&run(&["route", "bad..name", "-c", ROUTE_CONFIG])).2, 2);
    assert_eq!(
        text(&run(&["route", "x.corp.example", "-c", BROKEN])).2,
        2,
        "an invalid config is refused"
    );
    assert_eq!(text(&run(&["route", "x.corp.example"])).2, 1, "no config: no routes");
}

#[test]
fn diff_lists_changes_by_source() {
    let (out, _, code) = text(&run(&[
        "diff",
        "tests/golden/diff/old.yaml",
        "tests/golden/diff/new.yaml",
    ]));
    assert_eq!(code, 1);
    golden("diff/old-new.txt", &out);
    let (out, _, code) = text(&run(&[
        "diff",
        "tests/golden/diff/old.yaml",
        "tests/golden/diff/same.yaml",
    ]));
    assert_eq!(code, 0, "{out}");
    assert!(out.ends_with("no difference (4 routes unchanged)\n"), "{out}");
    let (out, _, code) = text(&run(&[
        "diff",
        "--format",
        "json",
        "tests/golden/diff/old.yaml",
        "tests/golden/diff/new.yaml",
    ]));
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["added"][0]["source"], "maven.corp.example");
    assert_eq!(v["removed"][0]["source"], "old.corp.example");
    assert_eq!(v["changed"].as_array().unwrap().len(), 2);
    assert_eq!(v["unchanged"], 1);
    let (_, err, code) = text(&run(&["diff", "tests/golden/diff/old.yaml", BROKEN]));
    assert_eq!(code, 2);
    assert!(err.contains("route-cycle"), "{err}");
}
