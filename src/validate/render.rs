//! How findings are printed: rustc-style text for people, JSON lines for
//! scripts, workflow commands for GitHub Actions.

use std::fmt::Write as _;

use crate::config::yaml::Pos;
use crate::config::{Diagnostic, Severity, token_len_in_line};

/// ANSI styling, switched off entirely when not writing to a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn severity(&self, sev: Severity) -> &'static str {
        match sev {
            Severity::Error => "1;31",
            Severity::Warning => "1;33",
        }
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    pub fn gutter(&self, s: &str) -> String {
        self.paint("1;34", s)
    }
    pub fn sev(&self, sev: Severity, s: &str) -> String {
        self.paint(self.severity(sev), s)
    }
}

/// A file's text split into lines once, for rendering many findings.
pub struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    lines: Vec<&'a str>,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Source<'a> {
        Source {
            name,
            text,
            lines: text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l)).collect(),
        }
    }

    fn line(&self, n: u32) -> &'a str {
        self.lines.get(n.saturating_sub(1) as usize).copied().unwrap_or("")
    }
}

/// Display columns of the characters before `column` (1-based, in
/// characters), with tabs shown as four spaces.
fn display_offset(line: &str, column: u32) -> usize {
    line.chars()
        .take(column.saturating_sub(1) as usize)
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

fn display_line(line: &str) -> String {
    line.replace('\t', "    ")
}

struct Mark {
    pos: Pos,
    len: u32,
    primary: bool,
    label: String,
}

/// One finding, rustc style:
///
/// ```text
/// error[unknown-key]: unknown key `destiantion` in a route
///  --> config.yaml:7:11
///   |
/// 7 |           destiantion: b.pub
///   |           ^^^^^^^^^^^
///   |
///   = help: did you mean `destination`?
/// ```
pub fn human(src: &Source<'_>, d: &Diagnostic, style: Style) -> String {
    let mut marks = vec![Mark {
        pos: d.pos,
        len: d.len,
        primary: true,
        label: String::new(),
    }];
    for (pos, label) in &d.related {
        marks.push(Mark {
            pos: *pos,
            len: token_len_in_line(src.line(pos.line), pos.column),
            primary: false,
            label: label.clone(),
        });
    }
    marks.sort_by_key(|m| (m.pos, !m.primary));
    let width = marks.iter().map(|m| m.pos.line).max().unwrap_or(1).to_string().len();
    let pad = " ".repeat(width);
    let bar = style.gutter("|");
    let mut out = String::new();
    let sev = d.severity.to_string();
    let _ = writeln!(
        out,
        "{}{}",
        style.sev(d.severity, &format!("{sev}[{}]", d.rule)),
        style.bold(&format!(": {}", d.message))
    );
    let _ = writeln!(
        out,
        "{pad}{} {}:{}:{}",
        style.gutter("-->"),
        src.name,
        d.pos.line,
        d.pos.column
    );
    let _ = writeln!(out, "{pad} {bar}");
    let mut prev_line: Option<u32> = None;
    for m in &marks {
        let n = m.pos.line;
        if prev_line != Some(n) {
            match prev_line {
                Some(p) if n == p + 2 => {
                    let mid = display_line(src.line(p + 1));
                    let _ = writeln!(out, "{} {bar} {}", style.gutter(&format!("{:>width$}", p + 1)), mid);
                }
                Some(p) if n > p + 2 => {
                    let _ = writeln!(out, "{}", style.gutter("..."));
                }
                _ => {}
            }
            let text = display_line(src.line(n));
            let _ = writeln!(
                out,
                "{} {bar} {}",
                style.gutter(&format!("{n:>width$}")),
                text.trim_end()
            );
            prev_line = Some(n);
        }
        let line = src.line(n);
        let offset = display_offset(line, m.pos.column);
        // The display width of the underlined characters (a tab is four),
        // at least one column even past the end of the line.
        let len = (display_offset(line, m.pos.column + m.len) - offset).max(1);
        let (ch, code) = if m.primary {
            ('^', style.severity(d.severity))
        } else {
            ('-', "1;34")
        };
        let mut underline = ch.to_string().repeat(len);
        if !m.label.is_empty() {
            underline.push(' ');
            underline.push_str(&m.label);
        }
        let _ = writeln!(
            out,
            "{pad} {bar} {}{}",
            " ".repeat(offset),
            style.paint(code, &underline)
        );
    }
    if let Some(h) = &d.hint {
        let _ = writeln!(out, "{pad} {bar}");
        let _ = writeln!(out, "{pad} {} {}: {h}", style.gutter("="), style.bold("help"));
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// One finding as one line of JSON (see `validate --help` for the fields).
pub fn json(file: &str, d: &Diagnostic) -> String {
    let related: Vec<serde_json::Value> = d
        .related
        .iter()
        .map(|(p, m)| serde_json::json!({"line": p.line, "column": p.column, "message": m}))
        .collect();
    // serde_json's map is ordered by key; build the line by hand for a
    // stable, readable field order.
    format!(
        "{{\"file\":{},\"line\":{},\"column\":{},\"end_column\":{},\"length\":{},\"severity\":\"{}\",\"rule\":\"{}\",\"message\":{},\"hint\":{},\"related\":{}}}",
        json_str(file),
        d.pos.line,
        d.pos.column,
        d.pos.column + d.len.max(1) - 1,
        d.len.max(1),
        d.severity,
        d.rule,
        json_str(&d.message),
        d.hint.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
        serde_json::Value::Array(related),
    )
}

/// Escapes the message part of a workflow command.
fn gh_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a property value of a workflow command.
fn gh_prop(s: &str) -> String {
    gh_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One finding as a GitHub Actions workflow command, which the pull request
/// shows on the line it points at.
pub fn github(file: &str, d: &Diagnostic) -> String {
    let kind = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut msg = d.message.clone();
    for (p, m) in &d.related {
        msg.push_str(&format!("\nnote: line {}: {m}", p.line));
    }
    if let Some(h) = &d.hint {
        msg.push_str(&format!("\nhelp: {h}"));
    }
    format!(
        "::{kind} file={},line={},col={},endColumn={},title={}::{}",
        gh_prop(file),
        d.pos.line,
        d.pos.column,
        d.pos.column + d.len.max(1) - 1,
        gh_prop(d.rule),
        gh_data(&msg)
    )
}

/// An unreadable file as a workflow command (no position).
pub fn github_file_error(file: &str, message: &str) -> String {
    format!("::error file={},title=unreadable::{}", gh_prop(file), gh_data(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(line: u32, column: u32, len: u32) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            rule: "unknown-key",
            pos: Pos { line, column },
            len,
            message: "unknown key `destiantion` in a route".into(),
            hint: Some("did you mean `destination`?".into()),
            related: Vec::new(),
        }
    }

    #[test]
    fn human_underlines_the_token() {
        let text = "routes:\n  - source: a\n    destiantion: b\n";
        let src = Source::new("c.yaml", text);
        let out = human(&src, &diag(3, 5, 11), Style { color: false });
        assert_eq!(
            out,
            "error[unknown-key]: unknown key `destiantion` in a route\n --> c.yaml:3:5\n  |\n3 |     destiantion: b\n  |     ^^^^^^^^^^^\n  |\n  = help: did you mean `destination`?\n"
        );
    }

    #[test]
    fn tabs_keep_the_underline_aligned() {
        let text = "a:\t\"x y\"\n";
        let src = Source::new("c.yaml", text);
        let out = human(&src, &diag(1, 4, 5), Style { color: false });
        assert!(out.contains("1 | a:    \"x y\"\n  |       ^^^^^\n"), "{out}");
    }

    #[test]
    fn github_escapes() {
        let mut d = diag(2, 3, 1);
        d.message = "50% done\nnext".into();
        d.hint = None;
        assert_eq!(
            github("a,b:c.yaml", &d),
            "::error file=a%2Cb%3Ac.yaml,line=2,col=3,endColumn=3,title=unknown-key::50%25 done%0Anext"
        );
    }

    #[test]
    fn json_is_one_line_with_fields() {
        let line = json("c.yaml", &diag(3, 5, 11));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["line"], 3);
        assert_eq!(v["end_column"], 15);
        assert_eq!(v["rule"], "unknown-key");
        assert!(!line.contains('\n'));
    }
}
