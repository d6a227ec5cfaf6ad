//! `dnsbridge route NAME`: which route a name matches, explained.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;

use serde_json::json;

use super::render::Style;
use super::{EXIT_FINDINGS, EXIT_OK, EXIT_TROUBLE, OutputFormat, RouteArgs, display_name, load_for_command};
use crate::config::{Config, Destination, Route, Source};
use crate::name::Name;
use crate::route::{MatchKind, RouteTable};

/// The host of a URL or `host:port`, as typed otherwise.
fn host_of(input: &str) -> &str {
    let t = input.trim();
    let t = match t.split_once("://") {
        Some((_, rest)) => {
            let h = rest.split(['/', '?', '#']).next().unwrap_or("");
            h.rsplit_once('@').map_or(h, |(_, h)| h)
        }
        None => t,
    };
    match t.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => t,
    }
}

fn resolver_text(cfg: &Config, route: Option<&Route>) -> (String, &'static str) {
    if let Some(r) = route {
        if matches!(r.destination, Destination::Ips(_)) {
            return ("none: the proxy answers with the addresses itself".into(), "none");
        }
        if let Some(sa) = r.resolver {
            return (format!("{sa}, this route's resolverIP, and only it"), "route");
        }
    }
    if cfg.runtime.upstreams.is_empty() {
        (
            "the upstreams: the nameservers of /etc/resolv.conf (the config sets no `dnsbridge.upstreams`), minus the proxy's own addresses".into(),
            "resolv.conf",
        )
    } else {
        let list: Vec<String> = cfg.runtime.upstreams.iter().map(|u| u.to_string()).collect();
        (format!("the upstreams: {}", list.join(", ")), "upstreams")
    }
}

fn pos_text(file: &str, r: &Route) -> String {
    format!("{file}:{}:{}", r.source_pos.line, r.source_pos.column)
}

pub fn route_to(args: &RouteArgs, out: &mut dyn Write, err: &mut dyn Write, color: bool) -> u8 {
    let style = Style { color };
    let (cfg, file) = match &args.config {
        Some(p) => match load_for_command(p, err, color) {
            Ok(c) => (c, display_name(p)),
            Err(()) => return EXIT_TROUBLE,
        },
        None => (Config::default(), "(built-in default)".to_string()),
    };
    let host = host_of(&args.name);
    let shown = host.strip_suffix('.').unwrap_or(host);
    let name = match Name::parse(host) {
        Ok(n) => n,
        Err(e) => {
            let _ = writeln!(err, "error: `{}` is not a valid name: {e}", args.name);
            return EXIT_TROUBLE;
        }
    };
    let table = RouteTable::new(cfg.routes.clone());
    let m = table.lookup_name(&name);

    // Wildcards the name also lies under, beyond the one that matched.
    let covering: Vec<&Route> = cfg
        .routes
        .iter()
        .filter(|r| match &r.source {
            Source::Wildcard(s) => name.is_strictly_below(s),
            Source::Exact(_) => false,
        })
        .filter(|r| m.as_ref().is_none_or(|m| m.route.index != r.index))
        .collect();
    let apex_of: Vec<&Route> = cfg
        .routes
        .iter()
        .filter(|r| matches!(&r.source, Source::Wildcard(s) if *s == name))
        .collect();

    let Some(m) = m else {
        let (resolver, resolver_kind) = resolver_text(&cfg, None);
        if args.format == OutputFormat::Json {
            let v = json!({
                "name": shown,
                "matched": false,
                "config": file,
                "forwarded_to": resolver_kind,
                "resolver": resolver,
                "notes": apex_of.iter().map(|r| format!("`{}` does not cover {} itself", r.source, name)).collect::<Vec<_>>(),
            });
            let _ = writeln!(out, "{v}");
            return EXIT_FINDINGS;
        }
        let mut s = String::new();
        let _ = writeln!(s, "{}", style.bold(&format!("{shown}: no route")));
        let _ = writeln!(
            s,
            "  why:         no exact source equals it, and no `*.suffix` source has a suffix above it ({} in {file})",
            if cfg.routes.len() == 1 {
                "1 route".to_string()
            } else {
                format!("{} routes", cfg.routes.len())
            }
        );
        let _ = writeln!(
            s,
            "  answer:      the query is forwarded unchanged, and the upstream's answer returned as it is"
        );
        let _ = writeln!(s, "  resolver:    {resolver}");
        for r in apex_of {
            let _ = writeln!(
                s,
                "  note:        `{}` (route {}, {}) does not cover {name} itself, only names below it; add an exact route for it if needed",
                r.source,
                r.index + 1,
                pos_text(&file, r)
            );
        }
        let _ = out.write_all(s.as_bytes());
        return EXIT_FINDINGS;
    };

    let r = m.route;
    let kind = match m.kind {
        MatchKind::Exact => "exact",
        MatchKind::Wildcard => "wildcard",
    };
    let prefix = match &r.source {
        Source::Wildcard(s) => {
            let full = name.to_string();
            full.strip_suffix(&format!(".{s}")).map(str::to_string)
        }
        Source::Exact(_) => None,
    };
    let target = m.target(name.wire());
    let flatten = r.flatten.unwrap_or(cfg.runtime.flatten);
    let ttl = r.ttl.unwrap_or(cfg.runtime.cname_ttl);
    let ttl_from = if r.ttl.is_some() {
        "this route's ttl"
    } else if cfg.runtime.cname_ttl == crate::config::DEFAULT_CNAME_TTL {
        "the default"
    } else {
        "dnsbridge.cnameTTL"
    };
    let (resolver, resolver_kind) = resolver_text(&cfg, Some(r));
    let next = target.as_ref().and_then(|t| table.lookup_name(t)).map(|n| n.route);

    if args.format == OutputFormat::Json {
        let destination = match (&r.destination, &target) {
            (Destination::Ips(ips), _) => {
                json!({"type": "ips", "ips": ips.iter().map(|i| i.to_string()).collect::<Vec<_>>()})
            }
            (_, Some(t)) => json!({"type": "name", "name": t.to_string()}),
            (_, None) => {
                json!({"type": "name", "name": null, "error": "the rewritten name would be longer than 253 characters"})
            }
        };
        let v = json!({
            "name": shown,
            "matched": true,
            "config": file,
            "route": {
                "number": r.index + 1,
                "line": r.source_pos.line,
                "column": r.source_pos.column,
                "source": r.source.to_string(),
                "destination": r.destination.to_string(),
            },
            "kind": kind,
            "prefix": prefix,
            "destination": destination,
            "resolver": resolver,
            "resolver_kind": resolver_kind,
            "resolver_address": r.resolver.map(|s| s.to_string()),
            "flatten": flatten,
            "cname_ttl": ttl,
            "also_covered_by": covering.iter().map(|c| c.source.to_string()).collect::<Vec<_>>(),
        });
        let _ = writeln!(out, "{v}");
        return EXIT_OK;
    }

    let mut s = String::new();
    let _ = writeln!(s, "{}", style.bold(&format!("{shown}: route {}, {kind}", r.index + 1)));
    let _ = writeln!(s, "  source:      {} ({})", r.source, pos_text(&file, r));
    match (&r.source, &prefix) {
        (Source::Exact(_), _) => {
            let _ = writeln!(
                s,
                "  why:         the name equals this exact source, and an exact route beats any wildcard"
            );
        }
        (Source::Wildcard(suf), p) => {
            let _ = writeln!(
                s,
                "  why:         the name lies below {suf} (prefix `{}`), and no exact route or longer wildcard suffix matches it",
                p.as_deref().unwrap_or("")
            );
        }
    }
    if !covering.is_empty() {
        let list: Vec<String> = covering
            .iter()
            .map(|c| format!("`{}` (route {})", c.source, c.index + 1))
            .collect();
        let why = if m.kind == MatchKind::Exact {
            "an exact route beats a wildcard"
        } else {
            "the longest suffix wins"
        };
        let _ = writeln!(s, "  also under:  {}, but {why}", list.join(", "));
    }
    match (&r.destination, &target) {
        (Destination::Ips(ips), _) => {
            let v4: Vec<String> = ips
                .iter()
                .filter(|i| matches!(i, IpAddr::V4(_)))
                .map(|i| i.to_string())
                .collect();
            let v6: Vec<String> = ips
                .iter()
                .filter(|i| matches!(i, IpAddr::V6(_)))
                .map(|i| i.to_string())
                .collect();
            let _ = writeln!(s, "  destination: {}", r.destination);
            let a = if v4.is_empty() {
                "no data".to_string()
            } else {
                v4.join(", ")
            };
            let aaaa = if v6.is_empty() {
                "no data".to_string()
            } else {
                v6.join(", ")
            };
            let _ = writeln!(
                s,
                "  answer:      A {a}; AAAA {aaaa} (TTL {ttl} s, {ttl_from}); any other type: no data, with a synthesized SOA"
            );
        }
        (Destination::Wildcard(suf), Some(t)) => {
            let _ = writeln!(
                s,
                "  destination: {t} (the prefix `{}` kept in front of `*.{suf}`)",
                prefix.as_deref().unwrap_or("")
            );
            let _ = writeln!(s, "  answer:      {}", answer_text(shown, t, flatten, ttl, ttl_from));
        }
        (_, Some(t)) => {
            let _ = writeln!(s, "  destination: {t}");
            let _ = writeln!(s, "  answer:      {}", answer_text(shown, t, flatten, ttl, ttl_from));
        }
        (_, None) => {
            let _ = writeln!(
                s,
                "  destination: none: the prefix in front of `{}` would make a name longer than 253 characters",
                r.destination
            );
        }
    }
    let _ = writeln!(s, "  resolver:    {resolver}");
    if let (Some(n), Some(t)) = (next, &target) {
        let _ = writeln!(
            s,
            "  note:        the destination {t} is itself the source of route {} (`{}` -> `{}`)",
            n.index + 1,
            n.source,
            n.destination
        );
    }
    let _ = out.write_all(s.as_bytes());
    EXIT_OK
}

fn answer_text(qname: &str, target: &Name, flatten: bool, ttl: u32, ttl_from: &str) -> String {
    if flatten {
        format!("{target}'s final records, renamed to {qname} (flatten: no CNAME, no chain)")
    } else {
        format!(
            "{qname} CNAME {target} (TTL {ttl} s, {ttl_from}), then {target}'s whole chain and records as the resolver returns them"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_from_urls_and_ports() {
        assert_eq!(host_of("https://npm.corp.example/a/b?c"), "npm.corp.example");
        assert_eq!(host_of("registry.corp.example:5000"), "registry.corp.example");
        assert_eq!(host_of("user@x://h.example"), "h.example");
        assert_eq!(host_of(" Registry.Corp.Example. "), "Registry.Corp.Example.");
    }
}
