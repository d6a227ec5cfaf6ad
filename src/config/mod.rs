//! The routing config: the `spec.infrastructure.executorPrivateDNS` block of
//! an instance's `config.yaml`, plus optional runtime settings under a
//! top-level `dnsbridge:` block.
//!
//! Loading never stops at the first mistake: the file is read into a
//! positioned tree ([`yaml`]), every rule is checked, and all findings come
//! back as [`Diagnostic`]s with file positions. `serve` and `validate` both go
//! through [`parse_str`], so they cannot disagree about what is valid.

pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::name::{Name, NameError};
use crate::net::{self, Cidr};
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
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub proxy_tag: Option<u64>,
    pub routes: Vec<Route>,
    pub runtime: Runtime,
    /// Warnings found while loading (a config with errors is never built).
    pub warnings: Vec<Diagnostic>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            proxy_tag: None,
            routes: Vec::new(),
            runtime: Runtime::default(),
            warnings: Vec::new(),
        }
    }
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
];

struct Ctx<'t> {
    text: &'t str,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn push(&mut self, severity: Severity, rule: &'static str, node: &Node, message: String, hint: Option<String>) {
        let len = token_len(self.text, node.pos);
        self.diags.push(Diagnostic {
            severity,
            rule,
            pos: node.pos,
            len,
            message,
            hint,
            related: Vec::new(),
        });
    }
    fn error(&mut self, rule: &'static str, node: &Node, message: String, hint: Option<String>) {
        self.push(Severity::Error, rule, node, message, hint);
    }
    fn warn(&mut self, rule: &'static str, node: &Node, message: String, hint: Option<String>) {
        self.push(Severity::Warning, rule, node, message, hint);
    }

    /// Reports keys of a mapping that are not in `allowed`, naming the nearest.
    fn check_keys(&mut self, map: &Node, allowed: &[&str], what: &str) {
        let Kind::Map(entries) = &map.kind else {
            return;
        };
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (k, _) in entries {
            let key = k.as_key().unwrap_or_default();
            if let Some(first) = seen.get(&key) {
                let first = *first;
                self.error("duplicate-key", k, format!("`{key}` is set twice in this {what}"), None);
                if let Some(d) = self.diags.last_mut() {
                    d.related.push((first, "first set here".into()));
                }
                continue;
            }
            seen.insert(key.clone(), k.pos);
            if !allowed.contains(&key.as_str()) {
                let hint = match nearest(&key, allowed) {
                    Some(n) => Some(format!("did you mean `{n}`?")),
                    None => Some(format!("valid keys here: {}", allowed.join(", "))),
                };
                self.error("unknown-key", k, format!("unknown key `{key}` in {what}"), hint);
            }
        }
    }
}

/// Characters to underline for the node at `pos`: a quoted scalar to its
/// closing quote, a plain scalar to the end of the token.
fn token_len(text: &str, pos: Pos) -> u32 {
    let Some(line) = text.lines().nth(pos.line.saturating_sub(1) as usize) else {
        return 1;
    };
    let rest: String = line.chars().skip(pos.column.saturating_sub(1) as usize).collect();
    let mut chars = rest.chars();
    let n = match chars.next() {
        Some(q @ ('"' | '\'')) => chars
            .position(|c| c == q)
            .map(|p| p + 2)
            .unwrap_or(rest.chars().count()),
        Some('[') | Some('{') => rest.trim_end().chars().count(),
        Some(_) => {
            let cut = rest.find(" #").unwrap_or(rest.len());
            let t = rest[..cut].trim_end();
            // A key ends at its colon.
            let t = t.split(": ").next().unwrap_or(t);
            let t = t.strip_suffix(':').unwrap_or(t);
            t.chars().count()
        }
        None => 1,
    };
    n.max(1) as u32
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

/// Parses a whole file.
pub fn parse_str(text: &str) -> Parsed {
    let mut cx = Ctx {
        text,
        diags: Vec::new(),
    };
    let root = match yaml::parse(text) {
        Ok(r) => r,
        Err(e) => {
            cx.diags.push(Diagnostic {
                severity: Severity::Error,
                rule: "yaml-syntax",
                pos: e.pos,
                len: 1,
                message: format!("the file is not valid YAML: {}", e.message),
                hint: None,
                related: Vec::new(),
            });
            return Parsed {
                config: None,
                diagnostics: cx.diags,
            };
        }
    };
    let mut config = Config::default();
    if let Some(rt) = root.get("dnsbridge") {
        read_runtime(&mut cx, rt, &mut config.runtime);
    }
    let block = root
        .get("spec")
        .and_then(|s| s.get("infrastructure"))
        .and_then(|i| i.get("executorPrivateDNS"));
    if let Some(block) = block {
        read_block(&mut cx, block, &mut config);
    }
    let has_errors = cx.diags.iter().any(|d| d.severity == Severity::Error);
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
                None,
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
                Some("start each route with `- source: ...`".into()),
            );
            return;
        }
    };
    for (index, item) in items.iter().enumerate() {
        if let Some(r) = read_route(cx, index, item) {
            config.routes.push(r);
        }
    }
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
            Kind::Int(_) | Kind::Str(_) => format!("`{text}`"),
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

fn name_error_hint(e: &NameError) -> Option<String> {
    match e {
        NameError::BadChar { .. } => Some("a host name holds letters, digits, '-' and '_', separated by dots".into()),
        NameError::MisplacedStar => Some("write a wildcard as `*.suffix`".into()),
        NameError::EmptyLabel(_) => Some("remove the extra dot".into()),
        _ => None,
    }
}

fn read_route(cx: &mut Ctx<'_>, index: usize, item: &Node) -> Option<Route> {
    if !matches!(item.kind, Kind::Map(_)) {
        cx.error(
            "type",
            item,
            format!(
                "route {} must be a mapping with `source` and `destination`, not {}",
                index + 1,
                item.type_name()
            ),
            None,
        );
        return None;
    }
    cx.check_keys(item, ROUTE_KEYS, "a route");
    let mut ok = true;
    let source = match item.get("source") {
        None => {
            cx.error(
                "missing-key",
                item,
                format!("route {} has no `source`", index + 1),
                Some("add `source: <private name>`".into()),
            );
            ok = false;
            None
        }
        Some(n) => parse_source(cx, n),
    };
    let destination = match item.get("destination") {
        None => {
            cx.error(
                "missing-key",
                item,
                format!("route {} has no `destination`", index + 1),
                Some("add `destination: <name or IP the registry is reachable at>`".into()),
            );
            ok = false;
            None
        }
        Some(n) => parse_destination(cx, n),
    };
    let resolver = item.get("resolverIP").and_then(|n| {
        let Some(s) = scalar_str(n) else {
            cx.error("resolver-ip", n, format!("resolverIP must be an IP address, not {}", n.type_name()), None);
            return None;
        };
        match net::parse_socket(&s, 53) {
            Ok(sa) => Some((sa, n)),
            Err(_) => {
                cx.error(
                    "resolver-ip",
                    n,
                    format!("resolverIP `{s}` is not an IP address"),
                    Some("give the resolver's address, such as 10.0.0.2 or 10.0.0.2:53; names are not allowed here, since resolving them would need a resolver too".into()),
                );
                None
            }
        }
    });
    let flatten = item.get("flatten").and_then(|n| match n.kind {
        Kind::Bool(b) => Some(b),
        _ => {
            cx.error(
                "type",
                n,
                format!("`flatten` must be true or false, not {}", n.type_name()),
                None,
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
                None,
            );
            None
        }
    });
    let (source, source_pos) = source?;
    let (destination, destination_pos) = destination?;
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

fn parse_source(cx: &mut Ctx<'_>, n: &Node) -> Option<(Source, Pos)> {
    let Some(text) = scalar_str(n) else {
        cx.error(
            "type",
            n,
            format!("`source` must be a name, not {}", n.type_name()),
            None,
        );
        return None;
    };
    let t = text.trim();
    if t.parse::<IpAddr>().is_ok() {
        cx.error(
            "source-is-ip",
            n,
            format!("source `{t}` is an IP address; a source is the private name clients look up"),
            None,
        );
        return None;
    }
    let (wild, rest) = match t.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, t),
    };
    match Name::parse(rest) {
        Ok(name) => Some((
            if wild {
                Source::Wildcard(name)
            } else {
                Source::Exact(name)
            },
            n.pos,
        )),
        Err(e) => {
            cx.error(
                "name-malformed",
                n,
                format!("source `{t}` is not a valid name: {e}"),
                name_error_hint(&e),
            );
            None
        }
    }
}

fn parse_destination(cx: &mut Ctx<'_>, n: &Node) -> Option<(Destination, Pos)> {
    let items: Vec<(String, &Node)> = match &n.kind {
        Kind::Seq(list) => {
            let mut v = Vec::new();
            for it in list {
                match scalar_str(it) {
                    Some(s) => v.push((s, it)),
                    None => {
                        cx.error(
                            "type",
                            it,
                            format!("a destination list holds IP addresses, not {}", it.type_name()),
                            None,
                        );
                        return None;
                    }
                }
            }
            v
        }
        _ => match scalar_str(n) {
            Some(s) => s
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(|p| (p.to_string(), n))
                .collect(),
            None => {
                cx.error(
                    "type",
                    n,
                    format!("`destination` must be a name or IP addresses, not {}", n.type_name()),
                    None,
                );
                return None;
            }
        },
    };
    if items.is_empty() {
        cx.error("missing-key", n, "`destination` is empty".into(), None);
        return None;
    }
    let ips: Vec<Option<IpAddr>> = items.iter().map(|(s, _)| s.parse::<IpAddr>().ok()).collect();
    if ips.iter().all(Option::is_some) {
        let ips: Vec<IpAddr> = ips.into_iter().flatten().collect();
        for (ip, (_, node)) in ips.iter().zip(&items) {
            if net::FIREWALLED.iter().any(|c| c.contains(*ip)) {
                cx.warn(
                    "firewall-blocked-ip",
                    node,
                    format!("{ip} is in a private range that the microVM firewall blocks"),
                    Some("run `dnsbridge firewall --apply` on the executors to open it for the registry ports".into()),
                );
            }
        }
        return Some((Destination::Ips(ips), n.pos));
    }
    if items.len() > 1 {
        cx.error(
            "destination-mixed",
            n,
            "a destination is either one name or a list of IP addresses".into(),
            Some("split it into separate routes, or keep only the name".into()),
        );
        return None;
    }
    let t = items[0].0.trim().to_string();
    let (wild, rest) = match t.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, t.as_str()),
    };
    let name = match Name::parse(rest) {
        Ok(name) => name,
        Err(e) => {
            cx.error(
                "name-malformed",
                n,
                format!("destination `{t}` is not a valid name: {e}"),
                name_error_hint(&e),
            );
            return None;
        }
    };
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

/// Warnings for AWS PrivateLink names that work today but break later.
fn aws_checks(cx: &mut Ctx<'_>, n: &Node, name: &Name) {
    let text = name.to_string();
    let labels: Vec<&str> = text.split('.').collect();
    if text.starts_with("com.amazonaws.") {
        cx.warn(
            "aws-service-name",
            n,
            format!("`{text}` is an AWS endpoint service name, not a host name that resolves"),
            Some("use the VPC endpoint's regional DNS name, vpce-<id>-<suffix>.vpce-svc-<id>.<region>.vpce.amazonaws.com".into()),
        );
        return;
    }
    if labels.len() >= 6 && text.ends_with(".vpce.amazonaws.com") {
        let region = labels[labels.len() - 4];
        let first = labels[0];
        if let Some(idx) = first.rfind(&format!("-{region}"))
            && first[idx + 1 + region.len()..].len() == 1
            && first[idx + 1 + region.len()..].bytes().all(|b| b.is_ascii_lowercase())
        {
            let regional = format!("{}.{}", &first[..idx], labels[1..].join("."));
            cx.warn(
                "aws-zonal-endpoint",
                n,
                format!(
                    "`{text}` is a zonal endpoint name: it reaches only the {} availability zone",
                    &first[idx + 1..]
                ),
                Some(format!("use the regional name, which routes to every zone: {regional}")),
            );
        }
    }
}

/// Rules that look at the routes together: duplicates, self routes, cycles.
fn check_route_set(cx: &mut Ctx<'_>, routes: &[Route]) {
    let mut first: HashMap<&Source, &Route> = HashMap::new();
    for r in routes {
        if let Some(prev) = first.get(&r.source) {
            let len = token_len(cx.text, r.source_pos);
            cx.diags.push(Diagnostic {
                severity: Severity::Error,
                rule: "duplicate-source",
                pos: r.source_pos,
                len,
                message: format!("source `{}` is routed twice", r.source),
                hint: Some("keep one route per source; the outcome must not depend on the order of the list".into()),
                related: vec![(prev.source_pos, format!("first route for `{}` is here", prev.source))],
            });
        } else {
            first.insert(&r.source, r);
        }
    }
    for r in routes {
        let same = match (&r.source, &r.destination) {
            (Source::Exact(s), Destination::Name(d)) => s == d,
            (Source::Wildcard(s), Destination::Wildcard(d)) => s == d,
            _ => false,
        };
        if same {
            let len = token_len(cx.text, r.destination_pos);
            cx.diags.push(Diagnostic {
                severity: Severity::Error,
                rule: "self-route",
                pos: r.destination_pos,
                len,
                message: format!("route for `{}` points at itself", r.source),
                hint: Some("the destination must be the name or address the registry is reachable at".into()),
                related: Vec::new(),
            });
        }
    }
    for cycle in find_cycles(routes) {
        let head = &routes[cycle[0]];
        let path: Vec<String> = cycle
            .iter()
            .map(|&i| routes[i].source.to_string())
            .chain(std::iter::once(head.source.to_string()))
            .collect();
        let message = if cycle.len() == 1 {
            format!(
                "route `{}` captures its own destination `{}`",
                head.source, head.destination
            )
        } else {
            format!("routes form a cycle: {}", path.join(" -> "))
        };
        let len = token_len(cx.text, head.destination_pos);
        cx.diags.push(Diagnostic {
            severity: Severity::Error,
            rule: "route-cycle",
            pos: head.destination_pos,
            len,
            message,
            hint: Some("a destination must lead out of the routes to a name the upstream resolves".into()),
            related: cycle[1..]
                .iter()
                .map(|&i| {
                    (
                        routes[i].destination_pos,
                        format!("`{}` -> `{}`", routes[i].source, routes[i].destination),
                    )
                })
                .collect(),
        });
    }
}

/// The route (if any) a destination of `r` leads into, by the same precedence
/// the server uses: exact first, then the longest wildcard suffix.
fn next_hop(routes: &[Route], r: &Route) -> Option<usize> {
    let exact = |n: &Name| routes.iter().position(|o| o.source == Source::Exact(n.clone()));
    let wild = |n: &Name, strict: bool| {
        routes
            .iter()
            .enumerate()
            .filter(|(_, o)| match &o.source {
                Source::Wildcard(s) => {
                    if strict {
                        n.is_strictly_below(s)
                    } else {
                        n.ends_with(s)
                    }
                }
                _ => false,
            })
            .max_by_key(|(_, o)| match &o.source {
                Source::Wildcard(s) => s.wire().len(),
                _ => 0,
            })
            .map(|(i, _)| i)
    };
    match &r.destination {
        Destination::Name(n) => exact(n).or_else(|| wild(n, true)),
        // `*.s2`: every name strictly below s2; caught by a wildcard whose
        // suffix is s2 or above it.
        Destination::Wildcard(s2) => wild(s2, false),
        Destination::Ips(_) => None,
    }
}

/// Cycles in the "destination leads into route" graph, each as route indexes
/// in order, each reported once.
fn find_cycles(routes: &[Route]) -> Vec<Vec<usize>> {
    let next: Vec<Option<usize>> = routes.iter().map(|r| next_hop(routes, r)).collect();
    let mut state = vec![0u8; routes.len()]; // 0 new, 1 on path, 2 done
    let mut cycles = Vec::new();
    for start in 0..routes.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path = Vec::new();
        let mut cur = Some(start);
        while let Some(i) = cur {
            match state[i] {
                0 => {
                    state[i] = 1;
                    path.push(i);
                    cur = next[i];
                }
                1 => {
                    let at = path.iter().position(|&p| p == i).unwrap_or(0);
                    cycles.push(path[at..].to_vec());
                    break;
                }
                _ => break,
            }
        }
        for p in path {
            state[p] = 2;
        }
    }
    cycles
}

fn read_runtime(cx: &mut Ctx<'_>, rt: &Node, out: &mut Runtime) {
    if !matches!(rt.kind, Kind::Map(_)) {
        if !matches!(rt.kind, Kind::Null) {
            cx.error(
                "type",
                rt,
                format!("`dnsbridge` must be a mapping of settings, not {}", rt.type_name()),
                None,
            );
        }
        return;
    }
    cx.check_keys(rt, RUNTIME_KEYS, "`dnsbridge` settings");
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
            match s.parse::<SocketAddr>() {
                Ok(sa) => v.push(sa),
                Err(_) => cx.error(
                    "listen",
                    &node,
                    format!("listen address `{s}` is not IP:PORT"),
                    Some("such as 10.61.0.1:53".into()),
                ),
            }
        }
        out.listen = v;
    }
    if let Some(n) = rt.get("upstreams") {
        let mut v = Vec::new();
        for (s, node) in list(n) {
            match net::parse_socket(&s, 53) {
                Ok(sa) => v.push(sa),
                Err(e) => cx.error(
                    "upstream",
                    &node,
                    e.to_string(),
                    Some("such as 10.0.0.2 or 10.0.0.2:53".into()),
                ),
            }
        }
        out.upstreams = v;
    }
    if let Some(n) = rt.get("allow") {
        let mut v = Vec::new();
        for (s, node) in list(n) {
            match s.parse::<Cidr>() {
                Ok(c) => v.push(c),
                Err(e) => cx.error("allow", &node, e.to_string(), None),
            }
        }
        out.allow = v;
    }
    if let Some(n) = rt.get("cnameTTL") {
        match n.kind {
            Kind::Int(i) if (0..=86400).contains(&i) => out.cname_ttl = i as u32,
            _ => cx.error(
                "type",
                n,
                "`cnameTTL` must be a number of seconds between 0 and 86400".into(),
                None,
            ),
        }
    }
    if let Some(n) = rt.get("flatten") {
        match n.kind {
            Kind::Bool(b) => out.flatten = b,
            _ => cx.error("type", n, "`flatten` must be true or false".into(), None),
        }
    }
    if let Some(n) = rt.get("upstreamTimeout") {
        match duration(n) {
            Some(d) if !d.is_zero() => out.upstream_timeout = d,
            _ => cx.error(
                "type",
                n,
                "`upstreamTimeout` must be a duration such as 1500ms or 2s".into(),
                None,
            ),
        }
    }
    if let Some(n) = rt.get("egressGrace") {
        match duration(n) {
            Some(d) => out.egress_grace = d,
            _ => cx.error(
                "type",
                n,
                "`egressGrace` must be a duration such as 10s (never negative)".into(),
                None,
            ),
        }
    }
    if let Some(n) = rt.get("metrics") {
        match scalar_str(n).and_then(|s| s.parse::<SocketAddr>().ok()) {
            Some(sa) => out.metrics = Some(sa),
            None => cx.error(
                "type",
                n,
                "`metrics` must be IP:PORT, such as 127.0.0.1:9153".into(),
                None,
            ),
        }
    }
    if let Some(n) = rt.get("egressSet") {
        match scalar_str(n) {
            Some(s) if !s.is_empty() && s.len() <= 31 => out.egress_set = Some(s),
            _ => cx.error(
                "type",
                n,
                "`egressSet` must be an ipset name of at most 31 characters".into(),
                None,
            ),
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
