//! The routing config: the `spec.infrastructure.executorPrivateDNS` block of
//! an instance's `config.yaml`, plus optional runtime settings under a
//! top-level `dnsbridge:` block.
//!
//! Loading never stops at the first mistake: the file is read into a
//! positioned tree ([`yaml`]), every rule is checked, and all findings come
//! back as [`Diagnostic`]s with file positions. `serve` and `validate` both go
//! through [`parse_str`], so they cannot disagree about what is valid.

pub mod yaml;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::name::{Name, NameError};
use crate::net::{self, Cidr};
use crate::route::RouteTable;
use yaml::{Kind, Node, Pos};

/// The default TTL of a synthesized CNAME: short, so that a changed route
/// reaches clients quickly.
pub const DEFAULT_CNAME_TTL: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a config file, with the place it points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable identifier of the rule, for scripts and suppression.
    pub rule: &'static str,
    pub pos: Pos,
    /// How many characters to underline from `pos` (at least 1).
    pub len: u32,
    /// One sentence saying what is wrong.
    pub message: String,
    /// How to fix it, when there is something specific to say.
    pub hint: Option<String>,
    /// Other places involved (the first of two duplicates, the routes of a cycle).
    pub related: Vec<(Pos, String)>,
}

/// Where a route's source matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Exactly this name.
    Exact(Name),
    /// Every name strictly below this suffix, at any depth.
    Wildcard(Name),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Exact(n) => write!(f, "{n}"),
            Source::Wildcard(n) => write!(f, "*.{n}"),
        }
    }
}

/// What a routed name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Name(Name),
    /// `*.suffix2`: the matched prefix is kept in front of `suffix2`.
    Wildcard(Name),
    Ips(Vec<IpAddr>),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(n) => write!(f, "{n}"),
            Destination::Wildcard(n) => write!(f, "*.{n}"),
            Destination::Ips(ips) => {
                let s: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                f.write_str(&s.join(", "))
            }
        }
    }
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in the file's list, from 0.
    pub index: usize,
    pub source: Source,
    pub destination: Destination,
    /// Resolve the destination only through this resolver.
    pub resolver: Option<SocketAddr>,
    /// Rename final records to the source instead of answering with a CNAME.
    pub flatten: Option<bool>,
    /// TTL of the synthesized CNAME (or of the addresses of an IP destination).
    pub ttl: Option<u32>,
    pub source_pos: Pos,
    pub destination_pos: Pos,
}

/// Runtime settings: defaults, overridden by the `dnsbridge:` block, then by flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub listen: Vec<SocketAddr>,
    /// Empty means "the nameservers of /etc/resolv.conf".
    pub upstreams: Vec<SocketAddr>,
    pub allow: Vec<Cidr>,
    pub cname_ttl: u32,
    pub flatten: bool,
    pub upstream_timeout: Duration,
    pub metrics: Option<SocketAddr>,
    pub egress_set: Option<String>,
    pub egress_grace: Duration,
    /// Bytes of answers the cache may hold.
    pub cache_bytes: u64,
    /// Queries per second per non-loopback client; 0 turns limiting off.
    pub rate_limit: u32,
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime {
            listen: vec!["127.0.0.1:5353".parse().unwrap()],
            upstreams: Vec::new(),
            allow: default_allow(),
            cname_ttl: DEFAULT_CNAME_TTL,
            flatten: false,
            upstream_timeout: Duration::from_millis(1500),
            metrics: None,
            egress_set: None,
            egress_grace: Duration::from_secs(10),
            cache_bytes: 64 << 20,
            rate_limit: 2000,
        }
    }
}

/// Loopback and the executor's microVM subnet.
pub fn default_allow() -> Vec<Cidr> {
    vec![
        Cidr::v4(127, 0, 0, 0, 8),
        "::1/128".parse().unwrap(),
        Cidr::v4(10, 61, 0, 0, 16),
    ]
}

/// A whole, valid config.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub proxy_tag: Option<u64>,
    pub routes: Vec<Route>,
    pub runtime: Runtime,
    /// Warnings found while loading (a config with errors is never built).
    pub warnings: Vec<Diagnostic>,
}

/// The outcome of reading one file: the config when there are no errors, and
/// every finding either way.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: Option<Config>,
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has {count} error(s); the first: {first}")]
    Invalid {
        path: PathBuf,
        count: usize,
        first: String,
        diagnostics: Vec<Diagnostic>,
    },
}

/// Reads and validates a file.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed = parse_str(&text);
    match parsed.config {
        Some(c) => Ok(c),
        None => {
            let errors: Vec<Diagnostic> = parsed
                .diagnostics
                .into_iter()
                .filter(|d| d.severity == Severity::Error)
                .collect();
            let first = errors
                .first()
                .map(|d| format!("{}:{}: {}", path.display(), d.pos, d.message))
                .unwrap_or_default();
            Err(LoadError::Invalid {
                path: path.to_path_buf(),
                count: errors.len(),
                first,
                diagnostics: errors,
            })
        }
    }
}

/// One rule of the checker, for `validate --list-rules` and the docs.
#[derive(Debug, Clone, Copy)]
pub struct RuleInfo {
    pub id: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
}

const fn rule(id: &'static str, severity: Severity, summary: &'static str) -> RuleInfo {
    RuleInfo { id, severity, summary }
}

/// Every rule, in the order `--list-rules` prints them.
pub const RULES: &[RuleInfo] = &[
    rule("yaml-syntax", Severity::Error, "the file is not valid YAML"),
    rule(
        "type",
        Severity::Error,
        "a value has the wrong type (a list where a name goes, text where a number goes)",
    ),
    rule(
        "unknown-key",
        Severity::Error,
        "a key inside `executorPrivateDNS` or `dnsbridge` that does not exist (a typo)",
    ),
    rule(
        "duplicate-key",
        Severity::Error,
        "a key set twice in one mapping of the blocks that are read",
    ),
    rule(
        "missing-key",
        Severity::Error,
        "a route without a `source` or a `destination`",
    ),
    rule(
        "name-malformed",
        Severity::Error,
        "a source or destination that is not a valid host name (or a URL, a name with a port, a placeholder)",
    ),
    rule(
        "ip-malformed",
        Severity::Error,
        "a destination that looks like an IP address but is not one (10.0.0.300, 10.0.0.5:443)",
    ),
    rule(
        "source-is-ip",
        Severity::Error,
        "a source that is an IP address: sources are the private names clients look up",
    ),
    rule(
        "destination-mixed",
        Severity::Error,
        "a destination that lists several names, or names and addresses together",
    ),
    rule(
        "wildcard-destination",
        Severity::Error,
        "a `*.suffix` destination on an exact source",
    ),
    rule(
        "resolver-ip",
        Severity::Error,
        "a `resolverIP` that is not an IP address",
    ),
    rule(
        "resolver-ip-unused",
        Severity::Error,
        "a `resolverIP` on a route whose destination is already an IP address",
    ),
    rule("duplicate-source", Severity::Error, "two routes for the same source"),
    rule(
        "self-route",
        Severity::Error,
        "a route whose destination is its own source",
    ),
    rule(
        "route-cycle",
        Severity::Error,
        "routes that lead back into each other, or a wildcard that captures its own destination",
    ),
    rule(
        "forwarding-loop",
        Severity::Error,
        "an upstream or `resolverIP` that is the proxy's own listen address",
    ),
    rule(
        "proxy-tag",
        Severity::Error,
        "a `proxyTag` that is not a release timestamp YYYYMMDDhhmm",
    ),
    rule(
        "listen",
        Severity::Error,
        "a `dnsbridge.listen` entry that is not IP:PORT",
    ),
    rule(
        "upstream",
        Severity::Error,
        "a `dnsbridge.upstreams` entry that is not IP or IP:PORT",
    ),
    rule(
        "allow",
        Severity::Error,
        "a `dnsbridge.allow` entry that is not a CIDR block",
    ),
    rule(
        "block-not-read",
        Severity::Warning,
        "an `executorPrivateDNS` or `dnsbridge` block that is misspelled or misplaced, so it is not read",
    ),
    rule(
        "firewall-blocked-ip",
        Severity::Warning,
        "an IP destination inside the ranges the microVM firewall blocks: `dnsbridge firewall` must open it",
    ),
    rule(
        "ip-unreachable",
        Severity::Warning,
        "an IP destination a microVM cannot reach the registry at (loopback, the microVM subnet, multicast)",
    ),
    rule(
        "aws-zonal-endpoint",
        Severity::Warning,
        "an AWS zonal VPC endpoint name: it reaches one availability zone; use the regional name",
    ),
    rule(
        "aws-service-name",
        Severity::Warning,
        "an AWS endpoint service name used as a host name: it does not resolve",
    ),
];

/// The summary of a rule, if it exists.
pub fn rule_info(id: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.id == id)
}

const DNS_KEYS: &[&str] = &["proxyTag", "routes"];
const ROUTE_KEYS: &[&str] = &["source", "destination", "resolverIP", "flatten", "ttl"];
const RUNTIME_KEYS: &[&str] = &[
    "listen",
    "upstreams",
    "allow",
    "cnameTTL",
    "flatten",
    "upstreamTimeout",
    "metrics",
    "egressSet",
    "egressGrace",
    "cacheSize",
    "rateLimit",
];
const BLOCK_PATH: [&str; 3] = ["spec", "infrastructure", "executorPrivateDNS"];

struct Ctx<'t> {
    lines: Vec<&'t str>,
    diags: Vec<Diagnostic>,
    /// The file has `dnsbridge.listen`.
    file_sets_listen: bool,
}

impl<'t> Ctx<'t> {
    fn line(&self, line: u32) -> &'t str {
        self.lines.get(line.saturating_sub(1) as usize).copied().unwrap_or("")
    }

    /// Characters to underline at `pos` (see [`token_len`]).
    fn tok(&self, pos: Pos) -> u32 {
        token_len_in_line(self.line(pos.line), pos.column)
    }

    fn push_at(
        &mut self,
        severity: Severity,
        rule: &'static str,
        pos: Pos,
        len: u32,
        message: String,
        hint: Option<String>,
    ) -> &mut Diagnostic {
        debug_assert!(rule_info(rule).is_some(), "rule {rule} is not in RULES");
        self.diags.push(Diagnostic {
            severity,
            rule,
            pos,
            len: len.max(1),
            message,
            hint,
            related: Vec::new(),
        });
        self.diags.last_mut().expect("just pushed")
    }

    fn error(&mut self, rule: &'static str, node: &Node, message: String, hint: Option<String>) -> &mut Diagnostic {
        let len = self.tok(node.pos);
        self.push_at(Severity::Error, rule, node.pos, len, message, hint)
    }

    fn warn(&mut self, rule: &'static str, node: &Node, message: String, hint: Option<String>) -> &mut Diagnostic {
        let len = self.tok(node.pos);
        self.push_at(Severity::Warning, rule, node.pos, len, message, hint)
    }

    /// The source text of the token at `node` (for quoting it back as written).
    fn raw(&self, node: &Node) -> String {
        let len = self.tok(node.pos) as usize;
        self.line(node.pos.line)
            .chars()
            .skip(node.pos.column.saturating_sub(1) as usize)
            .take(len)
            .collect()
    }

    /// Reports keys of a mapping that are not in `allowed` (naming the
    /// nearest), and keys set twice.
    fn check_keys(&mut self, map: &Node, allowed: &[&str], what: &str) {
        let Kind::Map(entries) = &map.kind else {
            return;
        };
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (k, _) in entries {
            let key = k.as_key().unwrap_or_default();
            if let Some(first) = seen.get(&key).copied() {
                self.duplicate_key(k, &key, first, what);
                continue;
            }
            seen.insert(key.clone(), k.pos);
            if !allowed.contains(&key.as_str()) {
                let hint = match nearest(&key, allowed) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!(
                        "the keys allowed here are {}",
                        allowed.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ),
                };
                self.error("unknown-key", k, format!("unknown key `{key}` in {what}"), Some(hint));
            }
        }
    }

    fn duplicate_key(&mut self, k: &Node, key: &str, first: Pos, what: &str) {
        self.error(
            "duplicate-key",
            k,
            format!("`{key}` is set twice in {what}"),
            Some(format!(
                "keep one `{key}`; YAML tools disagree on which of the two wins"
            )),
        )
        .related
        .push((first, "first set here".into()));
    }

    /// Duplicate-key errors for `key` in a mapping outside the strict blocks,
    /// where a repeat decides which block is read.
    fn check_path_dup(&mut self, map: &Node, key: &str, what: &str) {
        let Kind::Map(entries) = &map.kind else {
            return;
        };
        let mut first = None;
        for (k, _) in entries {
            if k.as_key().as_deref() != Some(key) {
                continue;
            }
            match first {
                None => first = Some(k.pos),
                Some(p) => self.duplicate_key(k, key, p, what),
            }
        }
    }
}

/// Characters to underline for the node at `pos`: a quoted scalar to its
/// closing quote, a plain scalar to the end of the token (a key to its colon,
/// a flow item to its comma or bracket).
pub fn token_len(text: &str, pos: Pos) -> u32 {
    match text.lines().nth(pos.line.saturating_sub(1) as usize) {
        Some(line) => token_len_in_line(line, pos.column),
        None => 1,
    }
}

/// [`token_len`] for a token at `column` of `line`.
pub fn token_len_in_line(line: &str, column: u32) -> u32 {
    let pos = Pos { line: 0, column };
    let before: String = line.chars().take(pos.column.saturating_sub(1) as usize).collect();
    let rest: String = line.chars().skip(pos.column.saturating_sub(1) as usize).collect();
    let in_flow = flow_depth(&before) > 0;
    let mut chars = rest.chars();
    let n = match chars.next() {
        Some(q @ ('"' | '\'')) => {
            let mut prev = '\0';
            let mut n = None;
            for (i, c) in chars.enumerate() {
                if c == q && !(q == '"' && prev == '\\') {
                    n = Some(i + 2);
                    break;
                }
                prev = c;
            }
            n.unwrap_or(rest.chars().count())
        }
        Some('[') | Some('{') => {
            // To the matching bracket on this line, else to the end of it.
            let mut depth = 0i32;
            let mut end = None;
            for (i, c) in rest.chars().enumerate() {
                match c {
                    '[' | '{' => depth += 1,
                    ']' | '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end.unwrap_or_else(|| rest.trim_end().chars().count())
        }
        Some(_) => {
            let cut = rest.find(" #").unwrap_or(rest.len());
            let mut t = rest[..cut].trim_end();
            if in_flow && let Some(i) = t.find([',', ']', '}']) {
                t = t[..i].trim_end();
            }
            // A key ends at its colon.
            let t = t.split(": ").next().unwrap_or(t);
            let t = t.strip_suffix(':').unwrap_or(t);
            t.chars().count()
        }
        None => 1,
    };
    n.max(1) as u32
}

/// How many flow collections (`[`, `{`) are open at the end of `s`, outside quotes.
fn flow_depth(s: &str) -> i32 {
    let mut depth = 0;
    let mut quote = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            _ => {}
        }
    }
    depth
}

/// The closest valid key by edit distance (or by case), if close enough to be
/// a typo.
pub fn nearest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let lower = key.to_ascii_lowercase();
    candidates
        .iter()
        .map(|c| {
            let d = if c.to_ascii_lowercase() == lower {
                0
            } else {
                edit_distance(&lower, &c.to_ascii_lowercase())
            };
            (d, *c)
        })
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and adjacent transpositions ("destiantion") each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// Parses a whole file: the single entry point of both `serve` and `validate`.
pub fn parse_str(text: &str) -> Parsed {
    let mut cx = Ctx {
        lines: text.lines().collect(),
        diags: Vec::new(),
        file_sets_listen: false,
    };
    let root = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            let mut pos = e.pos;
            if e.message.contains("tab") {
                // Point at the tab itself rather than just after it.
                let line = text.lines().nth(pos.line.saturating_sub(1) as usize).unwrap_or("");
                if let Some(i) = line.chars().position(|c| c == '\t') {
                    pos.column = i as u32 + 1;
                }
            }
            let hint = if e.message.contains("tab") {
                Some("indent with spaces: YAML does not allow tabs in indentation".to_string())
            } else {
                Some("check the indentation and the quotes around this place".to_string())
            };
            let unclosed = unclosed_flow(text, pos.line);
            let hint = match unclosed {
                Some((_, c)) => Some(format!("close the `{c}` opened earlier")),
                None => hint,
            };
            let d = cx.push_at(
                Severity::Error,
                "yaml-syntax",
                pos,
                1,
                format!("the file is not valid YAML: {}", e.message),
                hint,
            );
            if let Some((at, c)) = unclosed {
                d.related.push((at, format!("this `{c}` is never closed")));
            }
            return Parsed {
                config: None,
                diagnostics: cx.diags,
            };
        }
    };
    let mut config = Config::default();
    match &root.kind {
        Kind::Map(_) | Kind::Null => {}
        _ => {
            cx.error(
                "type",
                &root,
                format!("the file must be a mapping with `spec:` at the top, not {}", root.type_name()),
                Some("an instance config.yaml starts with keys such as `spec:`; routes go under spec.infrastructure.executorPrivateDNS".into()),
            );
        }
    }
    cx.check_path_dup(&root, "dnsbridge", "the file");
    if let Some(rt) = root.get("dnsbridge") {
        cx.file_sets_listen = rt.get("listen").is_some();
        read_runtime(&mut cx, rt, &mut config.runtime);
    }
    cx.check_path_dup(&root, BLOCK_PATH[0], "the file");
    let spec = root.get(BLOCK_PATH[0]);
    if let Some(spec) = spec {
        cx.check_path_dup(spec, BLOCK_PATH[1], "`spec`");
    }
    let infra = spec.and_then(|s| s.get(BLOCK_PATH[1]));
    if let Some(infra) = infra {
        cx.check_path_dup(infra, BLOCK_PATH[2], "`spec.infrastructure`");
    }
    match infra.and_then(|i| i.get(BLOCK_PATH[2])) {
        Some(block) => read_block(&mut cx, block, &mut config),
        None => find_misplaced_block(&mut cx, &root, &mut Vec::new()),
    }
    if root.get("dnsbridge").is_none() {
        find_misspelled_runtime(&mut cx, &root);
    }
    let has_errors = cx.diags.iter().any(|d| d.severity == Severity::Error);
    let Ctx { lines, diags, .. } = &mut cx;
    diags.retain(|d| d.severity == Severity::Error || !allowed_here(lines, d));
    cx.diags.sort_by_key(|d| (d.pos, d.severity));
    if has_errors {
        return Parsed {
            config: None,
            diagnostics: cx.diags,
        };
    }
    config.warnings = cx.diags.clone();
    Parsed {
        config: Some(config),
        diagnostics: cx.diags,
    }
}

/// The marker of a comment that accepts a warning: `# dnsbridge-allow: RULE[, RULE]`.
pub const ALLOW_MARKER: &str = "dnsbridge-allow:";

/// True when a warning is accepted by a `# dnsbridge-allow: RULE` comment on
/// its own line or on the line just above it. Errors cannot be accepted.
fn allowed_here(lines: &[&str], d: &Diagnostic) -> bool {
    let line = d.pos.line as usize;
    lines
        .iter()
        .skip(line.saturating_sub(2))
        .take(if line >= 2 { 2 } else { 1 })
        .any(|l| {
            let Some(i) = l.find(ALLOW_MARKER) else {
                return false;
            };
            if !l[..i].contains('#') {
                return false;
            }
            l[i + ALLOW_MARKER.len()..]
                .split([',', ' '])
                .any(|r| r.trim() == d.rule)
        })
}

/// The last `[` or `{` still open at the start of line `upto`, outside
/// quotes and comments: the usual cause of a syntax error a few lines later.
fn unclosed_flow(text: &str, upto: u32) -> Option<(Pos, char)> {
    let mut open: Vec<(Pos, char)> = Vec::new();
    for (i, line) in text.lines().enumerate().take(upto.saturating_sub(1) as usize) {
        let mut quote = None;
        for (j, c) in line.chars().enumerate() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if j == 0 || line.chars().nth(j - 1).is_some_and(char::is_whitespace) => {
                    break;
                }
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => open.push((
                    Pos {
                        line: i as u32 + 1,
                        column: j as u32 + 1,
                    },
                    c,
                )),
                (None, ']' | '}') => {
                    open.pop();
                }
                _ => {}
            }
        }
    }
    open.pop()
}

/// Close enough to `target` to be a misspelling of it.
fn looks_like_key(key: &str, target: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['-', '_'], "");
    let (k, t) = (norm(key), norm(target));
    k == t || edit_distance(&k, &t) <= 2
}

/// When `spec.infrastructure.executorPrivateDNS` is absent: a block of that
/// name (or nearly) elsewhere would silently route nothing, so say so.
fn find_misplaced_block(cx: &mut Ctx<'_>, node: &Node, path: &mut Vec<String>) {
    let Kind::Map(entries) = &node.kind else {
        return;
    };
    if path.len() > 4 {
        return;
    }
    for (k, v) in entries {
        let Some(key) = k.as_key() else { continue };
        if looks_like_key(&key, BLOCK_PATH[2]) {
            if key == BLOCK_PATH[2] && path.iter().map(String::as_str).eq(BLOCK_PATH[..2].iter().copied()) {
                continue; // the right place, hidden by a repeated key reported as duplicate-key
            }
            let at = if path.is_empty() {
                "the top of the file".to_string()
            } else {
                format!("`{}`", path.join("."))
            };
            if key == BLOCK_PATH[2] {
                let wrong = path.iter().zip(BLOCK_PATH).find(|(p, want)| p.as_str() != *want);
                let hint = match wrong {
                    Some((p, want)) if looks_like_key(p, want) => {
                        format!("`{p}` should be spelled `{want}`")
                    }
                    _ => "move it so that it sits at spec.infrastructure.executorPrivateDNS".into(),
                };
                cx.warn(
                    "block-not-read",
                    k,
                    format!("`executorPrivateDNS` is under {at}, where it is not read, so none of its routes apply"),
                    Some(hint),
                );
            } else {
                cx.warn(
                    "block-not-read",
                    k,
                    format!("`{key}` is not read: the block of routes must be spelled `executorPrivateDNS`"),
                    Some("rename it to `executorPrivateDNS`, under spec.infrastructure".into()),
                );
            }
            continue;
        }
        path.push(key);
        find_misplaced_block(cx, v, path);
        path.pop();
    }
}

fn find_misspelled_runtime(cx: &mut Ctx<'_>, root: &Node) {
    let Kind::Map(entries) = &root.kind else {
        return;
    };
    for (k, _) in entries {
        let Some(key) = k.as_key() else { continue };
        let norm = key.to_ascii_lowercase().replace(['-', '_'], "");
        if key != "dnsbridge" && (norm == "dnsbridge" || edit_distance(&norm, "dnsbridge") <= 1) {
            cx.warn(
                "block-not-read",
                k,
                format!("`{key}` is not read: the runtime settings block must be spelled `dnsbridge`"),
                Some("rename it to `dnsbridge`".into()),
            );
        }
    }
}

fn read_block(cx: &mut Ctx<'_>, block: &Node, config: &mut Config) {
    match &block.kind {
        Kind::Map(_) => {}
        Kind::Null => return,
        _ => {
            cx.error(
                "type",
                block,
                format!(
                    "`executorPrivateDNS` must be a mapping with `proxyTag` and `routes`, not {}",
                    block.type_name()
                ),
                Some("write `proxyTag:` and `routes:` on the lines below it, indented".into()),
            );
            return;
        }
    }
    cx.check_keys(block, DNS_KEYS, "`executorPrivateDNS`");
    if let Some(tag) = block.get("proxyTag") {
        config.proxy_tag = check_proxy_tag(cx, tag);
    }
    let Some(routes) = block.get("routes") else {
        return;
    };
    let items = match &routes.kind {
        Kind::Seq(items) => items,
        Kind::Null => return,
        _ => {
            cx.error(
                "type",
                routes,
                format!("`routes` must be a list of routes, not {}", routes.type_name()),
                Some("start each route with `- source: ...` on its own line".into()),
            );
            return;
        }
    };
    // Loops are judged against the listen addresses the file sets; without
    // them the addresses come from flags, which `serve` checks itself.
    let listen = if cx.file_sets_listen {
        config.runtime.listen.clone()
    } else {
        Vec::new()
    };
    let mut sources = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Some(r) = read_route(cx, index, item, &listen, &mut sources) {
            config.routes.push(r);
        }
    }
    check_duplicates(cx, &sources);
    check_route_set(cx, &config.routes);
}

/// A proxyTag is a release timestamp `YYYYMMDDhhmm` (YAML reads it as an integer).
fn check_proxy_tag(cx: &mut Ctx<'_>, tag: &Node) -> Option<u64> {
    let text = match &tag.kind {
        Kind::Int(i) => i.to_string(),
        Kind::Str(s) => s.trim().to_string(),
        _ => String::new(),
    };
    let valid = text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) && {
        let f = |a: usize, b: usize| text[a..b].parse::<u32>().unwrap_or(99);
        let (y, mo, d, h, mi) = (f(0, 4), f(4, 6), f(6, 8), f(8, 10), f(10, 12));
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (2000..=2099).contains(&y)
            && (1..=12).contains(&mo)
            && d >= 1
            && d <= days[(mo - 1) as usize]
            && h <= 23
            && mi <= 59
    };
    if !valid {
        let shown = match &tag.kind {
            Kind::Int(_) | Kind::Str(_) | Kind::Float(_) | Kind::Bool(_) => {
                format!("`{}`", cx.raw(tag))
            }
            _ => tag.type_name().to_string(),
        };
        cx.error(
            "proxy-tag",
            tag,
            format!("proxyTag {shown} is not a release timestamp"),
            Some("use the image tag's timestamp form YYYYMMDDhhmm, such as 202311201628".into()),
        );
        return None;
    }
    text.parse().ok()
}

fn scalar_str(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => Some(s.clone()),
        Kind::Int(_) | Kind::Float(_) => node.as_key(),
        _ => None,
    }
}

/// True for text made to be an IP address that does not parse as one
/// (`10.0.0.300`, `10.0.0`, `fd00::g1`): digits and dots only, or hex digits
/// and colons.
fn looks_like_ip(s: &str) -> bool {
    let v4ish = s.contains('.') && s.chars().all(|c| c.is_ascii_digit() || c == '.');
    let v6ish = s.matches(':').count() >= 2 && s.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
    v4ish || v6ish
}

/// Why `t` is not a host name, with a fix, for the common mistakes; None when
/// it is a valid name or `*.name`.
fn name_problem(what: &str, t: &str) -> Option<(String, Option<String>)> {
    if let Some((scheme, rest)) = t.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
        let host = strip_port(host).unwrap_or(host);
        return Some((
            format!("{what} `{t}` is a URL, not a host name"),
            Some(format!(
                "write only the host name, `{host}`; the `{scheme}://` and the path do not belong in a route"
            )),
        ));
    }
    if let Some(host) = strip_port(t) {
        let port = &t[host.len() + 1..];
        return Some((
            format!("{what} `{t}` has a port, and a route maps names only"),
            Some(format!(
                "write `{host}`; the registry port is opened on the executors with `dnsbridge firewall --ports {port}`"
            )),
        ));
    }
    let holders = placeholders(t);
    if !holders.is_empty() {
        let list = holders.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ");
        let (one, many) = ("the placeholder", "the placeholders");
        return Some((
            format!(
                "{what} `{t}` still holds {} {list}",
                if holders.len() == 1 { one } else { many }
            ),
            Some(
                "replace each `<...>` with the real value (for AWS, the endpoint's DNS name is in the VPC console)"
                    .into(),
            ),
        ));
    }
    let rest = t.strip_prefix("*.").unwrap_or(t);
    match Name::parse(rest) {
        Err(e) => Some((format!("{what} `{t}` is not a valid name: {e}"), name_error_hint(&e))),
        Ok(n) => {
            let last = n.to_string().rsplit('.').next().unwrap_or("").to_string();
            if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
                Some((
                    format!("{what} `{t}` is not a valid name: its last label `{last}` is all digits"),
                    Some("a top-level domain is never numeric; if this is an IP address, check each part".into()),
                ))
            } else {
                None
            }
        }
    }
}

/// The `<...>` placeholders of a template pasted as is.
fn placeholders(t: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = t;
    while let Some(a) = rest.find('<') {
        let Some(b) = rest[a..].find('>') else { break };
        out.push(&rest[a..=a + b]);
        rest = &rest[a + b + 1..];
    }
    out
}

/// `host` when `t` is `host:PORT` with a valid-looking host.
fn strip_port(t: &str) -> Option<&str> {
    let (host, port) = t.rsplit_once(':')?;
    let port_ok = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = !host.contains(':') && (Name::parse(host).is_ok() || host.parse::<IpAddr>().is_ok());
    (port_ok && host_ok).then_some(host)
}

fn name_error_hint(e: &NameError) -> Option<String> {
    Some(match e {
        NameError::BadChar { ch, .. } if ch.is_whitespace() => "a name has no spaces; give one name per route".into(),
        NameError::BadChar { .. } => "a host name holds only letters, digits, '-' and '_', separated by dots".into(),
        NameError::MisplacedStar => "write a wildcard as `*.suffix`: the star is the whole first label".into(),
        NameError::EmptyLabel(_) => "remove the extra dot".into(),
        NameError::LabelTooLong(_) => "each part between dots is at most 63 characters".into(),
        NameError::TooLong => "a name is at most 253 characters".into(),
        NameError::Hyphen(_) => "a part of a name cannot start or end with '-'".into(),
        NameError::Empty => "give the name".into(),
    })
}

fn read_route(
    cx: &mut Ctx<'_>,
    index: usize,
    item: &Node,
    listen: &[SocketAddr],
    sources: &mut Vec<(Source, Pos, usize)>,
) -> Option<Route> {
    let nr = index + 1;
    if !matches!(item.kind, Kind::Map(_)) {
        cx.error(
            "type",
            item,
            format!(
                "route {nr} must be a mapping with `source` and `destination`, not {}",
                item.type_name()
            ),
            Some("write the route as `- source: <private name>` with `destination: <name or IP>` below it".into()),
        );
        return None;
    }
    cx.check_keys(item, ROUTE_KEYS, "a route");
    let source = match item.get("source") {
        None => {
            cx.error(
                "missing-key",
                item,
                format!("route {nr} has no `source`"),
                Some("add `source: <the private name clients look up>`".into()),
            );
            None
        }
        Some(n) => parse_source(cx, nr, n),
    };
    if let Some((src, pos)) = &source {
        // Duplicates are found even when the rest of the route is broken.
        sources.push((src.clone(), *pos, index));
    }
    let destination = match item.get("destination") {
        None => {
            cx.error(
                "missing-key",
                item,
                format!("route {nr} has no `destination`"),
                Some("add `destination: <the name or IP the registry is reachable at>`".into()),
            );
            None
        }
        Some(n) => parse_destination(cx, nr, n),
    };
    let resolver = item.get("resolverIP").and_then(|n| parse_resolver(cx, n, listen));
    let flatten = item.get("flatten").and_then(|n| match n.kind {
        Kind::Bool(b) => Some(b),
        _ => {
            cx.error(
                "type",
                n,
                format!("`flatten` must be true or false, not {}", n.type_name()),
                Some(
                    "`flatten: true` answers with the destination's addresses under the source name, without the CNAME"
                        .into(),
                ),
            );
            None
        }
    });
    let ttl = item.get("ttl").and_then(|n| match n.kind {
        Kind::Int(i) if (0..=86400).contains(&i) => Some(i as u32),
        _ => {
            cx.error(
                "type",
                n,
                "`ttl` must be a number of seconds between 0 and 86400".into(),
                Some("such as `ttl: 30`; it is the TTL of the synthesized CNAME".into()),
            );
            None
        }
    });
    let (source, source_pos) = source?;
    let (destination, destination_pos) = destination?;
    let mut ok = true;
    if let (Some((_, rnode)), Destination::Ips(_)) = (&resolver, &destination) {
        cx.error(
            "resolver-ip-unused",
            rnode,
            "resolverIP is set on a route whose destination is an IP address, so there is nothing to resolve".into(),
            Some("remove `resolverIP`, or make the destination a name".into()),
        );
        ok = false;
    }
    if let (Source::Exact(_), Destination::Wildcard(_)) = (&source, &destination) {
        let node = item.get("destination").unwrap_or(item);
        cx.error(
            "wildcard-destination",
            node,
            "a `*.suffix` destination needs a wildcard source, to know which prefix to keep".into(),
            Some("make the source `*.something`, or the destination a plain name".into()),
        );
        ok = false;
    }
    ok.then_some(Route {
        index,
        source,
        destination,
        resolver: resolver.map(|(sa, _)| sa),
        flatten,
        ttl,
        source_pos,
        destination_pos,
    })
}

fn parse_resolver<'n>(cx: &mut Ctx<'_>, n: &'n Node, listen: &[SocketAddr]) -> Option<(SocketAddr, &'n Node)> {
    let Some(s) = scalar_str(n) else {
        cx.error(
            "resolver-ip",
            n,
            format!("resolverIP must be one IP address, not {}", n.type_name()),
            Some("give the resolver's address, such as 10.0.0.2 or 10.0.0.2:53".into()),
        );
        return None;
    };
    let s = s.trim();
    match net::parse_socket(s, 53) {
        Ok(sa) => {
            if points_at_listener(sa, listen) {
                cx.error(
                    "forwarding-loop",
                    n,
                    format!(
                        "resolverIP {sa} is the proxy's own listen address, so its lookups would loop back into it"
                    ),
                    Some("give the resolver that knows the destination, such as the VPC resolver 10.0.0.2".into()),
                );
                return None;
            }
            Some((sa, n))
        }
        Err(_) if s.is_empty() => {
            cx.error(
                "resolver-ip",
                n,
                "resolverIP is empty".into(),
                Some("give the resolver's address, such as 10.0.0.2, or remove the key to use the upstreams".into()),
            );
            None
        }
        Err(_) if !looks_like_ip(s) && Name::parse(s).is_ok() => {
            cx.error(
                "resolver-ip",
                n,
                format!("resolverIP `{s}` is a name, and it must be an IP address"),
                Some("give the resolver's IP address: finding a resolver by name would need a resolver first".into()),
            );
            None
        }
        Err(_) => {
            cx.error(
                "resolver-ip",
                n,
                format!("resolverIP `{s}` is not an IP address"),
                Some("give the resolver's address, such as 10.0.0.2, 10.0.0.2:53 or [fd00::2]:53".into()),
            );
            None
        }
    }
}

/// True when sending to `target` would reach one of the proxy's own
/// listeners (same address and port, or a wildcard listener on that port and
/// a local target). Port 0 listeners (tests) never match.
pub fn points_at_listener(target: SocketAddr, listen: &[SocketAddr]) -> bool {
    let t = net::canonical(target.ip());
    listen.iter().any(|l| {
        l.port() != 0
            && l.port() == target.port()
            && (net::canonical(l.ip()) == t || (l.ip().is_unspecified() && (t.is_loopback() || t.is_unspecified())))
    })
}

fn parse_source(cx: &mut Ctx<'_>, nr: usize, n: &Node) -> Option<(Source, Pos)> {
    let text = match &n.kind {
        Kind::Null => {
            cx.error(
                "missing-key",
                n,
                format!("route {nr} has an empty `source`"),
                Some("give the private name clients look up, such as registry.corp.example".into()),
            );
            return None;
        }
        _ => match scalar_str(n) {
            Some(t) => t,
            None => {
                cx.error(
                    "type",
                    n,
                    format!("`source` must be one name, not {}", n.type_name()),
                    Some("write one route per source name".into()),
                );
                return None;
            }
        },
    };
    let t = text.trim();
    if t.parse::<IpAddr>().is_ok() || t.parse::<SocketAddr>().is_ok() || looks_like_ip(t) {
        cx.error(
            "source-is-ip",
            n,
            format!("source `{t}` is an IP address, and a source is the private name clients look up"),
            Some("write the registry's private name here; addresses can only be destinations".into()),
        );
        return None;
    }
    if let Some((message, hint)) = name_problem("source", t) {
        cx.error("name-malformed", n, message, hint);
        return None;
    }
    let (wild, rest) = match t.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, t),
    };
    let name = Name::parse(rest).ok()?;
    Some((
        if wild {
            Source::Wildcard(name)
        } else {
            Source::Exact(name)
        },
        n.pos,
    ))
}

/// One part of a destination: its text and where it stands.
struct Part {
    text: String,
    pos: Pos,
    len: u32,
}

/// The parts of a destination value: list items, or the comma/space
/// separated words of one scalar, each with its own position when the scalar
/// sits on one line.
fn destination_parts(cx: &Ctx<'_>, n: &Node) -> Result<Vec<Part>, &'static str> {
    match &n.kind {
        Kind::Seq(list) => list
            .iter()
            .map(|it| match scalar_str(it) {
                Some(s) => Ok(Part {
                    text: s.trim().to_string(),
                    pos: it.pos,
                    len: cx.tok(it.pos),
                }),
                None => Err(it.type_name()),
            })
            .collect(),
        _ => {
            let Some(s) = scalar_str(n) else {
                return Err(n.type_name());
            };
            let words: Vec<&str> = s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .collect();
            let whole = cx.tok(n.pos);
            if words.len() <= 1 {
                return Ok(words
                    .into_iter()
                    .map(|w| Part {
                        text: w.to_string(),
                        pos: n.pos,
                        len: whole,
                    })
                    .collect());
            }
            // Find each word in the token as written, left to right.
            let token: String = cx
                .line(n.pos.line)
                .chars()
                .skip(n.pos.column.saturating_sub(1) as usize)
                .take(whole as usize)
                .collect();
            let mut from = 0usize;
            Ok(words
                .into_iter()
                .map(|w| {
                    let (pos, len) = match token[from..].find(w) {
                        Some(i) => {
                            let at = from + i;
                            from = at + w.len();
                            let col = n.pos.column + token[..at].chars().count() as u32;
                            (
                                Pos {
                                    line: n.pos.line,
                                    column: col,
                                },
                                w.chars().count() as u32,
                            )
                        }
                        None => (n.pos, whole),
                    };
                    Part {
                        text: w.to_string(),
                        pos,
                        len,
                    }
                })
                .collect())
        }
    }
}

fn parse_destination(cx: &mut Ctx<'_>, nr: usize, n: &Node) -> Option<(Destination, Pos)> {
    if matches!(n.kind, Kind::Null) {
        cx.error(
            "missing-key",
            n,
            format!("route {nr} has an empty `destination`"),
            Some("give the name or IP address the registry is reachable at".into()),
        );
        return None;
    }
    let parts = match destination_parts(cx, n) {
        Ok(p) => p,
        Err(type_name) => {
            cx.error(
                "type",
                n,
                format!("`destination` must be a name or IP addresses, not {type_name}"),
                Some(
                    "write a name (`registry.lb.example.com`) or addresses (`10.0.0.5` or `[10.0.0.5, 10.0.0.6]`)"
                        .into(),
                ),
            );
            return None;
        }
    };
    if parts.is_empty() {
        cx.error(
            "missing-key",
            n,
            format!("route {nr} has an empty `destination`"),
            Some("give the name or IP address the registry is reachable at".into()),
        );
        return None;
    }
    let mut bad = false;
    let mut ips = Vec::new();
    for p in &parts {
        if let Ok(ip) = p.text.parse::<IpAddr>() {
            ips.push(ip);
        } else if let Ok(sa) = p.text.parse::<SocketAddr>() {
            cx.push_at(
                Severity::Error,
                "ip-malformed",
                p.pos,
                p.len,
                format!(
                    "destination `{}` has a port, and a route maps names to addresses only",
                    p.text
                ),
                Some(format!(
                    "write `{}`; the registry port is opened on the executors with `dnsbridge firewall --ports {}`",
                    sa.ip(),
                    sa.port()
                )),
            );
            bad = true;
        } else if looks_like_ip(&p.text) {
            cx.push_at(
                Severity::Error,
                "ip-malformed",
                p.pos,
                p.len,
                format!("destination `{}` is not a valid IP address", p.text),
                Some("an IPv4 address is four numbers from 0 to 255, such as 10.20.0.5".into()),
            );
            bad = true;
        }
    }
    if bad {
        return None;
    }
    if ips.len() == parts.len() {
        for (ip, p) in ips.iter().zip(&parts) {
            ip_warnings(cx, *ip, p);
        }
        return Some((Destination::Ips(ips), n.pos));
    }
    if parts.len() > 1 {
        let (message, hint) = if ips.is_empty() {
            (
                "a destination is one name, and this one lists several".to_string(),
                "keep one name; if the registry has several addresses, let that name's DNS return them all",
            )
        } else {
            (
                "a destination is either one name or a list of IP addresses, not both".to_string(),
                "keep only the name, or only the addresses",
            )
        };
        cx.error("destination-mixed", n, message, Some(hint.into()));
        return None;
    }
    let p = &parts[0];
    if let Some((message, hint)) = name_problem("destination", &p.text) {
        cx.push_at(Severity::Error, "name-malformed", p.pos, p.len, message, hint);
        return None;
    }
    let (wild, rest) = match p.text.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, p.text.as_str()),
    };
    let name = Name::parse(rest).ok()?;
    aws_checks(cx, n, &name);
    Some((
        if wild {
            Destination::Wildcard(name)
        } else {
            Destination::Name(name)
        },
        n.pos,
    ))
}

/// The microVM subnet: an address there is another microVM, never a registry.
const MICROVM_SUBNET: Cidr = Cidr::v4(10, 61, 0, 0, 16);

fn ip_warnings(cx: &mut Ctx<'_>, ip: IpAddr, p: &Part) {
    let ip = net::canonical(ip);
    let unreachable = if ip.is_loopback() {
        Some("a loopback address: a microVM connecting to it reaches itself, not the registry")
    } else if ip.is_unspecified() {
        Some("the unspecified address, which no connection can be made to")
    } else if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        Some("a multicast or broadcast address, which a registry is never reached at")
    } else if MICROVM_SUBNET.contains(ip) {
        Some("in the microVM subnet 10.61.0.0/16, where the firewall drops traffic between microVMs")
    } else {
        None
    };
    if let Some(why) = unreachable {
        cx.push_at(
            Severity::Warning,
            "ip-unreachable",
            p.pos,
            p.len,
            format!("destination {ip} is {why}"),
            Some(
                "use the address the executor VM reaches the registry at: its load balancer, endpoint or VPN address"
                    .into(),
            ),
        );
        return;
    }
    if let Some(block) = net::FIREWALLED.iter().find(|c| c.contains(ip)) {
        let what = if block.addr == IpAddr::from([169, 254, 0, 0]) {
            "all traffic"
        } else {
            "TCP"
        };
        cx.push_at(
            Severity::Warning,
            "firewall-blocked-ip",
            p.pos,
            p.len,
            format!("destination {ip} is in {block}, where the microVM firewall drops {what} until `dnsbridge firewall` opens it"),
            Some("run `dnsbridge firewall --apply` on the executors, so that the registry ports are opened for this address".into()),
        );
    }
}

/// Warnings for AWS PrivateLink names that work today but break later.
fn aws_checks(cx: &mut Ctx<'_>, n: &Node, name: &Name) {
    let text = name.to_string();
    let labels: Vec<&str> = text.split('.').collect();
    if text.starts_with("com.amazonaws.") || text.starts_with("cn.com.amazonaws.") {
        let svc = labels
            .iter()
            .find(|l| l.starts_with("vpce-svc-"))
            .copied()
            .unwrap_or("vpce-svc-<id>");
        let region = labels
            .get(if text.starts_with("cn.") { 4 } else { 3 })
            .copied()
            .unwrap_or("<region>");
        cx.warn(
            "aws-service-name",
            n,
            format!("`{text}` is an AWS endpoint service name, not a host name that resolves"),
            Some(format!(
                "use the VPC endpoint's regional DNS name from the AWS console, vpce-<id>-<suffix>.{svc}.{region}.vpce.amazonaws.com"
            )),
        );
        return;
    }
    let tail = if text.ends_with(".vpce.amazonaws.com") {
        4
    } else if text.ends_with(".vpce.amazonaws.com.cn") {
        5
    } else {
        return;
    };
    if labels.len() < tail + 2 {
        return;
    }
    let region = labels[labels.len() - tail];
    let first = labels[0];
    if let Some(idx) = first.rfind(&format!("-{region}")) {
        let zone = &first[idx + 1 + region.len()..];
        if zone.len() == 1 && zone.bytes().all(|b| b.is_ascii_lowercase()) {
            let regional = format!("{}.{}", &first[..idx], labels[1..].join("."));
            cx.warn(
                "aws-zonal-endpoint",
                n,
                format!(
                    "`{text}` is a zonal endpoint name, which reaches only the {} availability zone",
                    &first[idx + 1..]
                ),
                Some(format!("use the regional name, which routes to every zone: {regional}")),
            );
        }
    }
}

/// Two routes for one source (names compare lowercase, without the
/// trailing dot), reported at the second with the first as related.
fn check_duplicates(cx: &mut Ctx<'_>, sources: &[(Source, Pos, usize)]) {
    let mut first: HashMap<&Source, (Pos, usize)> = HashMap::new();
    for (src, pos, index) in sources {
        if let Some(&(prev_pos, prev_index)) = first.get(src) {
            let len = cx.tok(*pos);
            cx.push_at(
                Severity::Error,
                "duplicate-source",
                *pos,
                len,
                format!("source `{src}` is routed twice, here and in route {}", prev_index + 1),
                Some("keep one route per source (names compare without case and trailing dot)".into()),
            )
            .related
            .push((prev_pos, format!("first route for `{src}`")));
        } else {
            first.insert(src, (*pos, *index));
        }
    }
}

/// The routes of a cycle named in its message and pointed at.
const MAX_CYCLE_SHOWN: usize = 8;

/// Rules that look at the valid routes together: self routes, cycles.
fn check_route_set(cx: &mut Ctx<'_>, routes: &[Route]) {
    let mut self_routes = Vec::new();
    for r in routes {
        let same = match (&r.source, &r.destination) {
            (Source::Exact(s), Destination::Name(d)) => s == d,
            (Source::Wildcard(s), Destination::Wildcard(d)) => s == d,
            _ => false,
        };
        if same {
            self_routes.push(r.index);
            let len = cx.tok(r.destination_pos);
            cx.push_at(
                Severity::Error,
                "self-route",
                r.destination_pos,
                len,
                format!("route for `{}` points at itself", r.source),
                Some("the destination must be another name or address, the one the registry is reachable at".into()),
            );
        }
    }
    for cycle in find_cycles(routes) {
        if cycle.len() == 1 && self_routes.contains(&cycle[0].index) {
            continue;
        }
        let head = cycle[0];
        let message = if cycle.len() == 1 {
            format!(
                "route `{}` captures its own destination `{}`",
                head.source, head.destination
            )
        } else {
            let path: Vec<String> = cycle
                .iter()
                .chain(std::iter::once(&head))
                .map(|r| format!("`{}`", r.source))
                .collect();
            if path.len() > MAX_CYCLE_SHOWN + 1 {
                let n = cycle.len();
                let shown = path[..MAX_CYCLE_SHOWN].join(" -> ");
                format!("{n} routes form a cycle: {shown} -> ... -> {}", path[path.len() - 1])
            } else {
                format!("routes form a cycle: {}", path.join(" -> "))
            }
        };
        let hint = if cycle.len() == 1 {
            format!("give `{}` a destination outside the names it captures", head.source)
        } else {
            "one of these destinations must lead out of the routes, to the name the registry is reachable at"
                .to_string()
        };
        let len = cx.tok(head.destination_pos);
        let related = cycle[1..]
            .iter()
            .take(MAX_CYCLE_SHOWN)
            .map(|r| (r.destination_pos, format!("`{}` -> `{}`", r.source, r.destination)))
            .collect();
        cx.push_at(
            Severity::Error,
            "route-cycle",
            head.destination_pos,
            len,
            message,
            Some(hint),
        )
        .related = related;
    }
}

/// Cycles in the routes, each as the routes in order, starting from the one
/// earliest in the file, each reported once.
///
/// A chain is followed with the same table and matching `serve` uses: from
/// each route's source (for `*.suffix`, a probe name just below the suffix
/// that no configured name can equal), to its destination, to the route that
/// destination falls under, and so on. Revisiting a route is a cycle, which
/// also covers `*.a` -> `*.b.a`, where every step grows the name.
fn find_cycles(routes: &[Route]) -> Vec<Vec<&Route>> {
    let table = RouteTable::new(routes.to_vec());
    let slot: HashMap<usize, usize> = routes.iter().enumerate().map(|(i, r)| (r.index, i)).collect();
    let mut seen: HashSet<Vec<usize>> = HashSet::new();
    let mut cycles = Vec::new();
    // Routes whose onward chain is already explored. Only routes with a
    // fixed destination qualify: after a `*.suffix2` destination the chain
    // depends on the prefix of the name that came in.
    let mut done: HashSet<usize> = HashSet::new();
    let fixed = |r: &Route| !matches!(r.destination, Destination::Wildcard(_));
    for r in routes {
        if done.contains(&r.index) {
            continue;
        }
        // '*' cannot occur in a configured label, so the probe is matched by
        // the wildcard itself and by nothing more specific.
        let probe: Vec<u8> = match &r.source {
            Source::Exact(n) => n.wire().to_vec(),
            Source::Wildcard(s) => [&[1u8, b'*'][..], s.wire()].concat(),
        };
        let Some(mut m) = table.lookup(&probe) else {
            continue;
        };
        if m.route.index != r.index {
            continue; // a duplicate source; reported already
        }
        let mut name = probe;
        let mut path = vec![r.index];
        let mut on_path: HashMap<usize, usize> = HashMap::from([(r.index, 0)]);
        while let Some(target) = m.target(&name) {
            let Some(next) = table.lookup(target.wire()) else {
                break;
            };
            if let Some(&at) = on_path.get(&next.route.index) {
                let mut cyc = path[at..].to_vec();
                let min = cyc
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, i)| **i)
                    .map(|(k, _)| k)
                    .unwrap_or(0);
                cyc.rotate_left(min);
                if seen.insert(cyc.clone()) {
                    cycles.push(cyc.iter().map(|i| &routes[slot[i]]).collect());
                }
                break;
            }
            if done.contains(&next.route.index) && fixed(next.route) {
                break; // explored from there already
            }
            on_path.insert(next.route.index, path.len());
            path.push(next.route.index);
            name = target.wire().to_vec();
            m = next;
        }
        done.extend(path.into_iter().filter(|i| fixed(&routes[slot[i]])));
    }
    cycles.sort_by_key(|c: &Vec<&Route>| c[0].index);
    cycles
}

fn read_runtime(cx: &mut Ctx<'_>, rt: &Node, out: &mut Runtime) {
    if !matches!(rt.kind, Kind::Map(_)) {
        if !matches!(rt.kind, Kind::Null) {
            cx.error(
                "type",
                rt,
                format!("`dnsbridge` must be a mapping of settings, not {}", rt.type_name()),
                Some("write settings such as `listen:` and `upstreams:` on the lines below it, indented".into()),
            );
        }
        return;
    }
    cx.check_keys(rt, RUNTIME_KEYS, "the `dnsbridge` settings");
    let list = |n: &Node| -> Vec<(String, Node)> {
        match &n.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|i| scalar_str(i).map(|s| (s, i.clone())))
                .collect(),
            _ => scalar_str(n).map(|s| vec![(s, n.clone())]).unwrap_or_default(),
        }
    };
    if let Some(n) = rt.get("listen") {
        let mut v = Vec::new();
        for (s, node) in list(n) {
            match s.trim().parse::<SocketAddr>() {
                Ok(sa) => v.push(sa),
                Err(_) => {
                    cx.error(
                        "listen",
                        &node,
                        format!("listen address `{s}` is not IP:PORT"),
                        Some("such as 10.61.0.1:53 (the microVM bridge) or 127.0.0.1:53".into()),
                    );
                }
            }
        }
        out.listen = v;
    }
    if let Some(n) = rt.get("upstreams") {
        let mut v = Vec::new();
        for (s, node) in list(n) {
            match net::parse_socket(&s, 53) {
                Ok(sa) if rt.get("listen").is_some() && points_at_listener(sa, &out.listen) => {
                    cx.error(
                        "forwarding-loop",
                        &node,
                        format!("upstream {sa} is the proxy's own listen address, so every forwarded query would loop"),
                        Some("give the resolver the proxy forwards to, such as the VPC resolver 169.254.169.254 or 10.0.0.2".into()),
                    );
                }
                Ok(sa) => v.push(sa),
                Err(_) => {
                    cx.error(
                        "upstream",
                        &node,
                        format!("upstream `{}` is not an IP address with an optional port", s.trim()),
                        Some("such as 10.0.0.2 or 10.0.0.2:53; names are not allowed, since resolving them needs a resolver".into()),
                    );
                }
            }
        }
        out.upstreams = v;
    }
    if let Some(n) = rt.get("allow") {
        let mut v = Vec::new();
        for (s, node) in list(n) {
            match s.trim().parse::<Cidr>() {
                Ok(c) => v.push(c),
                Err(_) => {
                    cx.error(
                        "allow",
                        &node,
                        format!("allowed client `{}` is not a CIDR block", s.trim()),
                        Some("such as 10.61.0.0/16 (the microVM subnet) or 127.0.0.1".into()),
                    );
                }
            }
        }
        out.allow = v;
    }
    if let Some(n) = rt.get("cnameTTL") {
        match n.kind {
            Kind::Int(i) if (0..=86400).contains(&i) => out.cname_ttl = i as u32,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`cnameTTL` must be a number of seconds between 0 and 86400".into(),
                    Some(format!(
                        "such as `cnameTTL: {DEFAULT_CNAME_TTL}`; short, so that a changed route applies quickly"
                    )),
                );
            }
        }
    }
    if let Some(n) = rt.get("flatten") {
        match n.kind {
            Kind::Bool(b) => out.flatten = b,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`flatten` must be true or false".into(),
                    Some("such as `flatten: false`".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("upstreamTimeout") {
        match duration(n) {
            Some(d) if !d.is_zero() => out.upstream_timeout = d,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`upstreamTimeout` must be a duration above zero".into(),
                    Some("such as 1500ms or 2s".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("egressGrace") {
        match duration(n) {
            Some(d) => out.egress_grace = d,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`egressGrace` must be a duration, never negative".into(),
                    Some("such as 10s".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("metrics") {
        match scalar_str(n).and_then(|s| s.trim().parse::<SocketAddr>().ok()) {
            Some(sa) => out.metrics = Some(sa),
            None => {
                cx.error(
                    "type",
                    n,
                    "`metrics` must be IP:PORT".into(),
                    Some("such as 127.0.0.1:9153".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("cacheSize") {
        match n.kind {
            Kind::Int(i) if (0..=1i128 << 40).contains(&i) => out.cache_bytes = i as u64,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`cacheSize` must be a number of bytes".into(),
                    Some("such as 67108864 (64 MiB); 0 turns the cache off".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("rateLimit") {
        match n.kind {
            Kind::Int(i) if (0..=10_000_000).contains(&i) => out.rate_limit = i as u32,
            _ => {
                cx.error(
                    "type",
                    n,
                    "`rateLimit` must be queries per second per client".into(),
                    Some("such as 2000; 0 turns limiting off (loopback clients are never limited)".into()),
                );
            }
        }
    }
    if let Some(n) = rt.get("egressSet") {
        match scalar_str(n) {
            Some(s) if !s.is_empty() && s.len() <= 31 => out.egress_set = Some(s),
            _ => {
                cx.error(
                    "type",
                    n,
                    "`egressSet` must be an ipset name of 1 to 31 characters".into(),
                    Some("such as dnsbridge-registry".into()),
                );
            }
        }
    }
}

/// `1500ms`, `2s`, `1m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.trim().parse().ok()?;
    if !(v.is_finite() && v >= 0.0) {
        return None;
    }
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

fn duration(n: &Node) -> Option<Duration> {
    match &n.kind {
        Kind::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
        Kind::Float(f) if *f >= 0.0 => Some(Duration::from_secs_f64(*f)),
        Kind::Str(s) => parse_duration(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
