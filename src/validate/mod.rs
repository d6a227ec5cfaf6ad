//! `dnsbridge validate`, `dnsbridge route` and `dnsbridge diff`: the tools
//! for the pull request that changes an instance's routes.
//!
//! All three read files through [`crate::config::parse_str`], the function
//! `serve` loads its config with, so a file `validate` accepts is a file
//! `serve` runs, and `route` answers with the route table `serve` uses.
//!
//! Each command has a `*_to` form that writes to any `Write` and returns the
//! exit code, for tests and for embedding; `run_*` binds it to the process's
//! standard output and error.

mod diff;
mod lookup;
pub mod render;

use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::config::{self, Diagnostic, RULES, Severity};
use render::{Source, Style};

pub use diff::diff_to;
pub use lookup::route_to;

/// Exit code: nothing wrong (for `diff`: no difference).
pub const EXIT_OK: u8 = 0;
/// Exit code: findings that fail the check (for `route`: no route matches;
/// for `diff`: the configs differ).
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: an input could not be read or parsed, or the command line is wrong.
pub const EXIT_TROUBLE: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// rustc-style: file:line:column, the source line, the offending text
    /// underlined, a help line; then a summary.
    Human,
    /// One JSON object per finding, one per line (JSON Lines).
    Json,
    /// GitHub Actions workflow commands (`::error file=...::message`), which
    /// show on the pull request's diff; then a summary.
    Github,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    /// Colour only when writing to a terminal and NO_COLOR is not set.
    Auto,
    Always,
    Never,
}

impl Color {
    fn enabled(self, terminal: bool) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

const VALIDATE_AFTER: &str = "\
What is checked:
  Only spec.infrastructure.executorPrivateDNS (strictly: a misspelled key is an
  error naming the nearest valid one) and the optional top-level `dnsbridge:`
  block of runtime settings. Every other key of the file is ignored. `serve`
  loads files with the same code, so a file that passes here is a file it runs.
  `dnsbridge validate --list-rules` prints every rule.
  A warning that is understood (say, an address `dnsbridge firewall` opens) is
  accepted by a `# dnsbridge-allow: RULE` comment on its line or the line above;
  errors cannot be accepted.

Output:
  human   for each finding: severity[rule]: one sentence, the file:line:column,
          the source line with the offending text underlined, and a help line.
          Then one summary line. Colours only on a terminal (see --color).
  json    one JSON object per finding per line (JSON Lines, no summary):
          {\"file\", \"line\", \"column\", \"end_column\" (last underlined column,
          inclusive), \"length\", \"severity\" (\"error\"|\"warning\"), \"rule\",
          \"message\", \"hint\" (string or null), \"related\": [{\"line\",
          \"column\", \"message\"}]}. An unreadable file gives an object with
          rule \"unreadable\" and line/column null.
  github  ::error file=F,line=L,col=C,endColumn=E,title=RULE::message (and
          ::warning), for GitHub Actions, then the summary line.
  Lines and columns count from 1; columns count characters.

Exit status:
  0  no errors (warnings are allowed unless --strict)
  1  at least one error, or at least one warning with --strict
  2  a file could not be read (missing, a directory without YAML files, not
     UTF-8), or the command line is wrong; the readable files are still checked

Examples:
  dnsbridge validate config.yaml
  dnsbridge validate --format github instances/
  dnsbridge validate --strict --format json a.yaml b.yaml | jq -r .message";

/// Checks config files (instance `config.yaml` and dnsbridge configs) and
/// reports every problem of every file at once, each with its position.
#[derive(Debug, Clone, Args)]
#[command(after_help = VALIDATE_AFTER)]
pub struct ValidateArgs {
    /// Files to check. A directory stands for every *.yaml and *.yml file
    /// below it (sorted); `-` reads standard input.
    #[arg(value_name = "FILE", required_unless_present = "list_rules")]
    pub files: Vec<PathBuf>,

    /// How to print the findings.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,

    /// Fail (exit 1) on warnings as well as errors.
    #[arg(long)]
    pub strict: bool,

    /// When to colour the human output.
    #[arg(long, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,

    /// Print every rule with its severity and what it catches, then exit.
    #[arg(long)]
    pub list_rules: bool,
}

/// The outcome of checking one file.
pub struct FileReport {
    pub name: String,
    pub text: String,
    pub diagnostics: Vec<Diagnostic>,
    /// Routes of a file without errors.
    pub routes: usize,
}

/// Expands the command line's files: directories into their YAML files.
fn expand(paths: &[PathBuf]) -> Vec<Result<PathBuf, (PathBuf, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" || !p.is_dir() {
            out.push(Ok(p.clone()));
            continue;
        }
        let mut found = Vec::new();
        let mut stack = vec![p.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    out.push(Err((dir, format!("cannot read the directory: {e}"))));
                    continue;
                }
            };
            for e in entries.flatten() {
                let path = e.path();
                if path.is_dir() {
                    stack.push(path);
                } else if matches!(path.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                    found.push(path);
                }
            }
        }
        if found.is_empty() {
            out.push(Err((p.clone(), "the directory holds no .yaml or .yml file".into())));
        }
        found.sort();
        out.extend(found.into_iter().map(Ok));
    }
    out
}

fn read_input(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        return io::stdin()
            .read_to_string(&mut s)
            .map(|_| s)
            .map_err(|e| format!("cannot read standard input: {e}"));
    }
    std::fs::read_to_string(path).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => "cannot read it: the file is not UTF-8 text".to_string(),
        _ => format!("cannot read it: {e}"),
    })
}

/// Checks one file's text.
pub fn check_text(name: &str, text: String) -> FileReport {
    let parsed = config::parse_str(&text);
    FileReport {
        name: name.to_string(),
        routes: parsed.config.as_ref().map_or(0, |c| c.routes.len()),
        diagnostics: parsed.diagnostics,
        text,
    }
}

fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".into()
    } else {
        path.display().to_string()
    }
}

/// Reads and checks every file, in parallel, keeping the command line's order.
fn check_all(inputs: Vec<Result<PathBuf, (PathBuf, String)>>) -> Vec<Result<FileReport, (String, String)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    let one = |input: &Result<PathBuf, (PathBuf, String)>| match input {
        Err((p, e)) => Err((display_name(p), e.clone())),
        Ok(p) => {
            let name = display_name(p);
            match read_input(p) {
                Ok(text) => Ok(check_text(&name, text)),
                Err(e) => Err((name, e)),
            }
        }
    };
    if threads <= 1 || inputs.len() < 8 {
        return inputs.iter().map(one).collect();
    }
    let chunk = inputs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a validate worker panicked"))
            .collect()
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `validate`, writing findings to `out` and trouble to `err`; returns the
/// exit code.
pub fn validate_to(args: &ValidateArgs, out: &mut dyn Write, err: &mut dyn Write, color: bool) -> u8 {
    if args.list_rules {
        let width = RULES.iter().map(|r| r.id.len()).max().unwrap_or(0);
        for r in RULES {
            let _ = writeln!(out, "{:<width$}  {:<7}  {}", r.id, r.severity.to_string(), r.summary);
        }
        return EXIT_OK;
    }
    let style = Style { color };
    let reports = check_all(expand(&args.files));
    let (mut errors, mut warnings, mut unreadable, mut bad_files, mut routes) = (0, 0, 0, 0, 0);
    let mut valid = 0;
    for r in &reports {
        match r {
            Err((name, msg)) => {
                unreadable += 1;
                match args.format {
                    Format::Human => {
                        let _ = writeln!(
                            err,
                            "{}: {name}: {msg}",
                            style.sev(Severity::Error, "error[unreadable]")
                        );
                    }
                    Format::Json => {
                        let _ = writeln!(
                            out,
                            "{{\"file\":{},\"line\":null,\"column\":null,\"end_column\":null,\"length\":null,\"severity\":\"error\",\"rule\":\"unreadable\",\"message\":{},\"hint\":null,\"related\":[]}}",
                            render::json_str(name),
                            render::json_str(msg)
                        );
                    }
                    Format::Github => {
                        let _ = writeln!(out, "{}", render::github_file_error(name, msg));
                    }
                }
            }
            Ok(rep) => {
                let src = Source::new(&rep.name, &rep.text);
                let e = rep.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
                errors += e;
                warnings += rep.diagnostics.len() - e;
                if e > 0 {
                    bad_files += 1;
                } else {
                    valid += 1;
                    routes += rep.routes;
                }
                for d in &rep.diagnostics {
                    let _ = match args.format {
                        Format::Human => writeln!(out, "{}", render::human(&src, d, style)),
                        Format::Json => writeln!(out, "{}", render::json(&rep.name, d)),
                        Format::Github => writeln!(out, "{}", render::github(&rep.name, d)),
                    };
                }
            }
        }
    }
    let failed = errors > 0 || (args.strict && warnings > 0);
    if args.format != Format::Json {
        let checked = reports.len() - unreadable;
        let mut line = format!(
            "checked {}: {} valid ({})",
            plural(checked, "file", "files"),
            valid,
            plural(routes, "route", "routes")
        );
        if bad_files > 0 {
            line.push_str(&format!(", {bad_files} with errors"));
        }
        if unreadable > 0 {
            line.push_str(&format!(", {unreadable} unreadable"));
        }
        line.push_str(&format!(
            "; {}, {}",
            plural(errors, "error", "errors"),
            plural(warnings, "warning", "warnings")
        ));
        if args.strict && warnings > 0 && errors == 0 {
            line.push_str(" (--strict: warnings fail)");
        }
        let line = if failed || unreadable > 0 {
            style.sev(Severity::Error, &line)
        } else {
            style.bold(&line)
        };
        let _ = writeln!(out, "{line}");
    }
    if unreadable > 0 {
        EXIT_TROUBLE
    } else if failed {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    }
}

fn exit(code: u8) -> ExitCode {
    ExitCode::from(code)
}

/// `dnsbridge validate`, on the process's stdout and stderr.
pub fn run_validate(args: &ValidateArgs) -> ExitCode {
    let stdout = io::stdout();
    let color = args.color.enabled(stdout.is_terminal());
    let mut out = io::BufWriter::new(stdout.lock());
    let code = validate_to(args, &mut out, &mut io::stderr(), color);
    let _ = out.flush();
    exit(code)
}

/// `dnsbridge route`, on the process's stdout and stderr.
pub fn run_route(args: &RouteArgs) -> ExitCode {
    let stdout = io::stdout();
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut out = stdout.lock();
    exit(route_to(args, &mut out, &mut io::stderr(), color))
}

/// `dnsbridge diff`, on the process's stdout and stderr.
pub fn run_diff(args: &DiffArgs) -> ExitCode {
    let stdout = io::stdout();
    let color = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut out = stdout.lock();
    exit(diff_to(args, &mut out, &mut io::stderr(), color))
}

/// Loads a config for `route` and `diff`: any error is reported in full on
/// `err` and the command stops, since `serve` would refuse the file too.
fn load_for_command(path: &Path, err: &mut dyn Write, color: bool) -> Result<config::Config, ()> {
    let name = display_name(path);
    let text = match read_input(path) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "error: {name}: {e}");
            return Err(());
        }
    };
    let parsed = config::parse_str(&text);
    match parsed.config {
        Some(c) => Ok(c),
        None => {
            let src = Source::new(&name, &text);
            let style = Style { color };
            for d in parsed.diagnostics.iter().filter(|d| d.severity == Severity::Error) {
                let _ = writeln!(err, "{}", render::human(&src, d, style));
            }
            let n = parsed
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            let _ = writeln!(
                err,
                "error: {name} has {}; `serve` would refuse it (details: dnsbridge validate {name})",
                plural(n, "error", "errors")
            );
            Err(())
        }
    }
}

const ROUTE_AFTER: &str = "\
How a name is matched (the same table `serve` uses):
  1. an exact source equal to the name (letter case and a trailing dot do not
     matter) wins;
  2. otherwise the wildcard `*.suffix` with the longest suffix the name lies
     strictly below (`*.corp.example` covers a.corp.example and
     a.b.corp.example, not corp.example itself);
  3. otherwise no route: the query is forwarded unchanged to the upstreams.
  The order of the routes in the file never matters.

Exit status:
  0  a route matches the name
  1  no route matches: the name is forwarded to the upstreams
  2  the config cannot be read or has errors, or NAME is not a valid name

Examples:
  dnsbridge route registry.corp.example --config config.yaml
  dnsbridge route https://npm.corp.example/some/package -c config.yaml --format json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Text for people.
    Human,
    /// One JSON object, for scripts.
    Json,
}

/// Shows which route a name matches and why, where it resolves to, and
/// through which resolver.
#[derive(Debug, Clone, Args)]
#[command(after_help = ROUTE_AFTER)]
pub struct RouteArgs {
    /// The name a client would look up, such as registry.corp.example. A URL
    /// (https://host/path) or host:port is reduced to its host.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The config to read: an instance config.yaml or a dnsbridge config.
    /// Without it, the built-in default of `serve`: no routes.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How to print the answer.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
}

const DIFF_AFTER: &str = "\
What is compared:
  The meaning of the two configs, not their text: routes are matched by source
  (letter case and a trailing dot do not matter), so reordering the list,
  reformatting or editing comments is no difference. A route is changed when
  its destination, resolverIP, flatten or ttl differs. proxyTag and the
  `dnsbridge:` runtime settings are compared too.

Exit status (like diff(1)):
  0  no difference
  1  the configs differ
  2  a file cannot be read or has errors (run `dnsbridge validate` on it)

Example:
  git show main:config.yaml > /tmp/old.yaml && dnsbridge diff /tmp/old.yaml config.yaml";

/// Lists the routes added, removed and changed between two configs, for the
/// reviewer of the pull request that changes them.
#[derive(Debug, Clone, Args)]
#[command(after_help = DIFF_AFTER)]
pub struct DiffArgs {
    /// The config before the change (`-` for standard input).
    #[arg(value_name = "OLD")]
    pub old: PathBuf,

    /// The config after the change.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,

    /// How to print the differences.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
}
