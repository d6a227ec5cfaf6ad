//! The result of a check, as typed data, as JSON and as a compact table.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::target::Kind;

/// The stages, in order. Each has the exit code used when it is the first
/// stage that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Route,
    Dns,
    Tcp,
    Tls,
    Api,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Route, Stage::Dns, Stage::Tcp, Stage::Tls, Stage::Api];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Route => "route",
            Stage::Dns => "dns",
            Stage::Tcp => "tcp",
            Stage::Tls => "tls",
            Stage::Api => "api",
        }
    }

    /// The process exit code when this is the first failing stage.
    pub fn exit_code(self) -> u8 {
        match self {
            Stage::Route => super::EXIT_ROUTE,
            Stage::Dns => super::EXIT_DNS,
            Stage::Tcp => super::EXIT_TCP,
            Stage::Tls => super::EXIT_TLS,
            Stage::Api => super::EXIT_API,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// One stage of one target.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: Stage,
    pub verdict: Verdict,
    pub duration_ms: f64,
    /// One line: what was found.
    pub summary: String,
    /// One line: what to change, on failure.
    pub fix: Option<String>,
    /// Stage-specific data (chain, addresses, certificate names, status...).
    pub details: serde_json::Value,
}

impl StageReport {
    pub fn new(stage: Stage, verdict: Verdict, took: Duration, summary: impl Into<String>) -> StageReport {
        StageReport {
            stage,
            verdict,
            duration_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            summary: summary.into(),
            fix: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn pass(stage: Stage, took: Duration, summary: impl Into<String>) -> StageReport {
        StageReport::new(stage, Verdict::Pass, took, summary)
    }
    pub fn skip(stage: Stage, summary: impl Into<String>) -> StageReport {
        StageReport::new(stage, Verdict::Skip, Duration::ZERO, summary)
    }
    pub fn fail(stage: Stage, took: Duration, summary: impl Into<String>, fix: impl Into<String>) -> StageReport {
        let mut s = StageReport::new(stage, Verdict::Fail, took, summary);
        s.fix = Some(fix.into());
        s
    }
    pub fn with_details(mut self, details: serde_json::Value) -> StageReport {
        self.details = details;
        self
    }
}

/// Everything about one name or URL.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// As given on the command line or as the route's source.
    pub target: String,
    pub host: String,
    pub port: u16,
    pub kind: Kind,
    /// The URL the API stage requests.
    pub url: String,
    /// No stage failed.
    pub ok: bool,
    pub failed_stage: Option<Stage>,
    /// The exit code this target alone would give.
    pub exit_code: u8,
    /// The registry answered 401/403: reachable, but jobs need credentials.
    pub needs_credentials: bool,
    pub stages: Vec<StageReport>,
}

impl TargetReport {
    pub fn stage(&self, s: Stage) -> Option<&StageReport> {
        self.stages.iter().find(|r| r.stage == s)
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// The process exit code: that of the earliest stage failing for any target.
    pub exit_code: u8,
    /// The DNS server asked (the proxy).
    pub server: String,
    pub targets: Vec<TargetReport>,
}

impl Report {
    pub fn from_targets(server: String, targets: Vec<TargetReport>) -> Report {
        let failed = targets.iter().filter_map(|t| t.failed_stage).min();
        Report {
            ok: failed.is_none(),
            exit_code: failed.map_or(0, Stage::exit_code),
            server,
            targets,
        }
    }
}

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn verdict(&self, v: Verdict) -> String {
        let text = format!("{:<4}", v.as_str());
        match v {
            Verdict::Pass => self.paint("32", &text),
            Verdict::Fail => self.paint("1;31", &text),
            Verdict::Skip => self.paint("2", &text),
        }
    }
}

/// Renders the human table. `color` only when stdout is a terminal.
pub fn render_human(report: &Report, color: bool) -> String {
    let st = Style { on: color };
    let mut out = String::new();
    for (i, t) in report.targets.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let status = match t.failed_stage {
            None if t.stages.iter().all(|s| s.verdict == Verdict::Skip) => st.paint("2", "NOT CHECKED"),
            None if t.needs_credentials => st.paint("1;32", "OK (credentials needed)"),
            None => st.paint("1;32", "OK"),
            Some(s) => st.paint("1;31", &format!("FAIL at {} (exit {})", s.as_str(), s.exit_code())),
        };
        let _ = writeln!(
            out,
            "{}  {}  {}",
            st.paint("1", &t.target),
            st.paint("2", &format!("{} {}", t.kind.as_str(), t.url)),
            status
        );
        for s in &t.stages {
            let took = if s.verdict == Verdict::Skip {
                "-".to_string()
            } else {
                fmt_ms(s.duration_ms)
            };
            let _ = writeln!(
                out,
                "  {:<5} {} {:>8}  {}",
                s.stage.as_str(),
                st.verdict(s.verdict),
                took,
                s.summary
            );
            if let Some(fix) = &s.fix {
                let _ = writeln!(out, "  {:<5} {} {:>8}  {}", "", st.paint("33", "fix:"), "", fix);
            }
        }
    }
    let n = report.targets.len();
    let ok = report.targets.iter().filter(|t| t.ok).count();
    let line = if report.ok {
        format!("{ok} of {n} reachable")
    } else {
        format!("{ok} of {n} reachable; exit {}", report.exit_code)
    };
    let _ = writeln!(
        out,
        "\n{}",
        if report.ok {
            st.paint("32", &line)
        } else {
            st.paint("31", &line)
        }
    );
    out
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{ms:.1}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, failed: Option<Stage>) -> TargetReport {
        let stages = Stage::ALL
            .iter()
            .map(|&s| match failed {
                Some(f) if f == s => StageReport::fail(s, Duration::from_millis(2), "broken", "mend it"),
                Some(f) if s > f => StageReport::skip(s, "not run"),
                _ => StageReport::pass(s, Duration::from_micros(1500), "fine"),
            })
            .collect();
        TargetReport {
            target: name.into(),
            host: name.into(),
            port: 443,
            kind: Kind::Docker,
            url: format!("https://{name}/v2/"),
            ok: failed.is_none(),
            failed_stage: failed,
            exit_code: failed.map_or(0, Stage::exit_code),
            needs_credentials: false,
            stages,
        }
    }

    #[test]
    fn exit_code_is_the_earliest_failing_stage() {
        let r = Report::from_targets(
            "127.0.0.1:53".into(),
            vec![target("a", Some(Stage::Api)), target("b", None)],
        );
        assert_eq!((r.ok, r.exit_code), (false, 14));
        let r = Report::from_targets(
            "s".into(),
            vec![
                target("a", Some(Stage::Api)),
                target("b", Some(Stage::Tcp)),
                target("c", Some(Stage::Tls)),
            ],
        );
        assert_eq!(r.exit_code, 12);
        let r = Report::from_targets("s".into(), vec![target("a", None)]);
        assert_eq!((r.ok, r.exit_code), (true, 0));
    }

    #[test]
    fn table_without_colour() {
        let r = Report::from_targets("s".into(), vec![target("registry.corp.example", Some(Stage::Tls))]);
        let text = render_human(&r, false);
        assert!(!text.contains('\x1b'));
        assert!(text.contains("FAIL at tls (exit 13)"));
        assert!(text.contains("  tcp   pass    1.5ms  fine"), "{text}");
        assert!(text.contains("  tls   FAIL    2.0ms  broken"), "{text}");
        assert!(text.contains("fix:") && text.contains("mend it"));
        assert!(text.contains("  api   skip        -  not run"), "{text}");
        assert!(render_human(&r, true).contains("\x1b[1;31mFAIL"));
    }
}
