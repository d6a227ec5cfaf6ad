//! `dnsbridge diff OLD NEW`: what a change to the routes does, by source.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use serde_json::json;

use super::render::Style;
use super::{DiffArgs, EXIT_FINDINGS, EXIT_OK, EXIT_TROUBLE, OutputFormat, display_name, load_for_command};
use crate::config::{Config, Route, Runtime, Source};

/// A sort key that groups a wildcard with the names of its suffix.
fn key(s: &Source) -> (String, u8) {
    match s {
        Source::Exact(n) => (n.to_string(), 1),
        Source::Wildcard(n) => (n.to_string(), 0),
    }
}

fn opt<T: ToString>(v: Option<T>, none: &str) -> String {
    v.map_or_else(|| none.to_string(), |v| v.to_string())
}

/// The fields of a route a reviewer cares about, as (field, old, new) when
/// they differ.
fn route_changes(a: &Route, b: &Route) -> Vec<(&'static str, String, String)> {
    let mut v = Vec::new();
    let mut cmp = |field, x: String, y: String| {
        if x != y {
            v.push((field, x, y));
        }
    };
    cmp("destination", a.destination.to_string(), b.destination.to_string());
    cmp(
        "resolverIP",
        opt(a.resolver, "(none: the upstreams)"),
        opt(b.resolver, "(none: the upstreams)"),
    );
    cmp("flatten", opt(a.flatten, "(default)"), opt(b.flatten, "(default)"));
    cmp("ttl", opt(a.ttl, "(default)"), opt(b.ttl, "(default)"));
    v
}

fn list<T: ToString>(v: &[T]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn runtime_changes(a: &Runtime, b: &Runtime) -> Vec<(&'static str, String, String)> {
    let mut v = Vec::new();
    let mut cmp = |field, x: String, y: String| {
        if x != y {
            v.push((field, x, y));
        }
    };
    let ups = |r: &Runtime| {
        if r.upstreams.is_empty() {
            "(/etc/resolv.conf)".to_string()
        } else {
            list(&r.upstreams)
        }
    };
    cmp("dnsbridge.listen", list(&a.listen), list(&b.listen));
    cmp("dnsbridge.upstreams", ups(a), ups(b));
    cmp("dnsbridge.allow", list(&a.allow), list(&b.allow));
    cmp("dnsbridge.cnameTTL", a.cname_ttl.to_string(), b.cname_ttl.to_string());
    cmp("dnsbridge.flatten", a.flatten.to_string(), b.flatten.to_string());
    cmp(
        "dnsbridge.upstreamTimeout",
        format!("{:?}", a.upstream_timeout),
        format!("{:?}", b.upstream_timeout),
    );
    cmp("dnsbridge.metrics", opt(a.metrics, "(off)"), opt(b.metrics, "(off)"));
    cmp(
        "dnsbridge.egressSet",
        opt(a.egress_set.clone(), "(off)"),
        opt(b.egress_set.clone(), "(off)"),
    );
    cmp(
        "dnsbridge.egressGrace",
        format!("{:?}", a.egress_grace),
        format!("{:?}", b.egress_grace),
    );
    v
}

pub fn diff_to(args: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write, color: bool) -> u8 {
    let style = Style { color };
    let (Ok(old), Ok(new)) = (
        load_for_command(&args.old, err, color),
        load_for_command(&args.new, err, color),
    ) else {
        return EXIT_TROUBLE;
    };
    let (old_name, new_name) = (display_name(&args.old), display_name(&args.new));
    render(&old, &new, &old_name, &new_name, args.format, style, out)
}

/// Compares two loaded configs and prints the differences.
pub fn render(
    old: &Config,
    new: &Config,
    old_name: &str,
    new_name: &str,
    format: OutputFormat,
    style: Style,
    out: &mut dyn Write,
) -> u8 {
    let index = |c: &Config| -> BTreeMap<(String, u8), Route> {
        c.routes.iter().map(|r| (key(&r.source), r.clone())).collect()
    };
    let (a, b) = (index(old), index(new));
    let removed: Vec<&Route> = a.iter().filter(|(k, _)| !b.contains_key(*k)).map(|(_, r)| r).collect();
    let added: Vec<&Route> = b.iter().filter(|(k, _)| !a.contains_key(*k)).map(|(_, r)| r).collect();
    let mut changed = Vec::new();
    let mut unchanged = 0;
    for (k, ra) in &a {
        if let Some(rb) = b.get(k) {
            let c = route_changes(ra, rb);
            if c.is_empty() {
                unchanged += 1;
            } else {
                changed.push((ra, rb, c));
            }
        }
    }
    let tag = (old.proxy_tag != new.proxy_tag).then(|| (opt(old.proxy_tag, "(none)"), opt(new.proxy_tag, "(none)")));
    let settings = runtime_changes(&old.runtime, &new.runtime);
    let differ =
        !(removed.is_empty() && added.is_empty() && changed.is_empty() && tag.is_none() && settings.is_empty());

    if format == OutputFormat::Json {
        let route = |r: &Route, file: &str| {
            json!({
                "source": r.source.to_string(),
                "destination": r.destination.to_string(),
                "resolverIP": r.resolver.map(|s| s.to_string()),
                "flatten": r.flatten,
                "ttl": r.ttl,
                "file": file,
                "line": r.source_pos.line,
            })
        };
        let v = json!({
            "old": old_name,
            "new": new_name,
            "differ": differ,
            "added": added.iter().map(|r| route(r, new_name)).collect::<Vec<_>>(),
            "removed": removed.iter().map(|r| route(r, old_name)).collect::<Vec<_>>(),
            "changed": changed.iter().map(|(ra, rb, c)| json!({
                "source": rb.source.to_string(),
                "old_line": ra.source_pos.line,
                "new_line": rb.source_pos.line,
                "fields": c.iter().map(|(f, x, y)| json!({"field": f, "old": x, "new": y})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "unchanged": unchanged,
            "proxyTag": tag.as_ref().map(|(x, y)| json!({"old": x, "new": y})),
            "settings": settings.iter().map(|(f, x, y)| json!({"field": f, "old": x, "new": y})).collect::<Vec<_>>(),
        });
        let _ = writeln!(out, "{v}");
        return if differ { EXIT_FINDINGS } else { EXIT_OK };
    }

    let green = |s: &str| {
        if style.color {
            format!("\x1b[32m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let red = |s: &str| {
        if style.color {
            format!("\x1b[31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let yellow = |s: &str| {
        if style.color {
            format!("\x1b[33m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        style.bold(&format!("--- {old_name} ({})", count(old.routes.len())))
    );
    let _ = writeln!(
        s,
        "{}",
        style.bold(&format!("+++ {new_name} ({})", count(new.routes.len())))
    );
    let extra = |r: &Route| {
        let mut e = String::new();
        if let Some(sa) = r.resolver {
            e.push_str(&format!(", resolverIP {sa}"));
        }
        if let Some(f) = r.flatten {
            e.push_str(&format!(", flatten {f}"));
        }
        if let Some(t) = r.ttl {
            e.push_str(&format!(", ttl {t}"));
        }
        e
    };
    for r in &added {
        let _ = writeln!(
            s,
            "{}",
            green(&format!(
                "+ added    {} -> {}{}  ({new_name}:{})",
                r.source,
                r.destination,
                extra(r),
                r.source_pos.line
            ))
        );
    }
    for r in &removed {
        let _ = writeln!(
            s,
            "{}",
            red(&format!(
                "- removed  {} -> {}{}  ({old_name}:{})",
                r.source,
                r.destination,
                extra(r),
                r.source_pos.line
            ))
        );
    }
    for (_, rb, c) in &changed {
        let _ = writeln!(
            s,
            "{}",
            yellow(&format!(
                "~ changed  {}  ({new_name}:{})",
                rb.source, rb.source_pos.line
            ))
        );
        for (f, x, y) in c {
            let _ = writeln!(s, "      {f}: {x} -> {y}");
        }
    }
    if let Some((x, y)) = &tag {
        let _ = writeln!(s, "{}", yellow(&format!("~ proxyTag: {x} -> {y}")));
    }
    for (f, x, y) in &settings {
        let _ = writeln!(s, "{}", yellow(&format!("~ {f}: {x} -> {y}")));
    }
    let mut summary = format!(
        "{} added, {} removed, {} changed, {} unchanged",
        added.len(),
        removed.len(),
        changed.len(),
        unchanged
    );
    if tag.is_some() || !settings.is_empty() {
        summary.push_str(&format!(
            "; {} other setting{} changed",
            settings.len() + usize::from(tag.is_some()),
            if settings.len() + usize::from(tag.is_some()) == 1 {
                ""
            } else {
                "s"
            }
        ));
    }
    if !differ {
        summary = format!("no difference ({} unchanged)", count(unchanged));
    }
    let _ = writeln!(s, "{summary}");
    let _ = out.write_all(s.as_bytes());
    if differ { EXIT_FINDINGS } else { EXIT_OK }
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 route".into()
    } else {
        format!("{n} routes")
    }
}
