use super::*;

fn wrap(routes: &str) -> String {
    format!("spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: 202311201628\n      routes:\n{routes}")
}

fn rules(text: &str) -> Vec<(&'static str, u32, u32)> {
    parse_str(text)
        .diagnostics
        .iter()
        .map(|d| (d.rule, d.pos.line, d.pos.column))
        .collect()
}

#[test]
fn seed_example_is_valid() {
    let text = wrap(
        "        - destination: customer.loadbalancer.public.domain\n          source: customer.registry.private.domain\n",
    );
    let p = parse_str(&text);
    assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
    let c = p.config.unwrap();
    assert_eq!(c.proxy_tag, Some(202311201628));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(
        c.routes[0].source,
        Source::Exact(Name::parse("customer.registry.private.domain").unwrap())
    );
}

#[test]
fn other_keys_of_the_file_are_ignored() {
    let text = format!(
        "apiVersion: v1\nspec:\n  domain: x\n  infrastructure:\n    gcp: {{}}\n{}",
        &wrap("        - source: a.corp\n          destination: b.pub\n")[20..]
    );
    let p = parse_str(&text);
    assert!(p.config.is_some(), "{:?}", p.diagnostics);
}

#[test]
fn typo_names_nearest_key() {
    let text = wrap("        - source: a.corp\n          destiantion: b.pub\n");
    let p = parse_str(&text);
    let d = p.diagnostics.iter().find(|d| d.rule == "unknown-key").unwrap();
    assert_eq!((d.pos.line, d.pos.column), (7, 11));
    assert_eq!(d.hint.as_deref(), Some("did you mean `destination`?"));
    assert_eq!(d.len, "destiantion".len() as u32);
}

#[test]
fn all_errors_reported_at_once() {
    let text = wrap(
        "        - source: a..corp\n          destination: b.pub\n        - source: c.corp\n          destination: c.corp\n        - source: d.corp\n          destination: 10.0.0.5\n          resolverIP: 10.0.0.2\n",
    );
    let r = rules(&text);
    assert!(r.contains(&("name-malformed", 6, 19)), "{r:?}");
    assert!(r.contains(&("self-route", 9, 24)), "{r:?}");
    assert!(r.contains(&("resolver-ip-unused", 12, 23)), "{r:?}");
    assert!(r.iter().any(|x| x.0 == "firewall-blocked-ip"), "{r:?}");
}

#[test]
fn cycles_are_found_and_listed_in_order() {
    let text = wrap(
        "        - source: a.corp\n          destination: b.corp\n        - source: b.corp\n          destination: a.corp\n",
    );
    let p = parse_str(&text);
    let d = p.diagnostics.iter().find(|d| d.rule == "route-cycle").unwrap();
    assert_eq!(d.message, "routes form a cycle: `a.corp` -> `b.corp` -> `a.corp`");
    let text = wrap("        - source: \"*.corp.example\"\n          destination: registry.corp.example\n");
    assert!(rules(&text).iter().any(|r| r.0 == "route-cycle"));
    let text = wrap("        - source: \"*.a.example\"\n          destination: \"*.b.a.example\"\n");
    assert!(rules(&text).iter().any(|r| r.0 == "route-cycle"));
    // A chain that leaves the routes is fine.
    let text = wrap(
        "        - source: a.corp\n          destination: b.corp\n        - source: b.corp\n          destination: c.pub\n",
    );
    assert!(parse_str(&text).config.is_some());
}

#[test]
fn duplicate_source_points_at_both() {
    let text = wrap(
        "        - source: A.corp.\n          destination: b.pub\n        - source: a.corp\n          destination: c.pub\n",
    );
    let p = parse_str(&text);
    let d = p.diagnostics.iter().find(|d| d.rule == "duplicate-source").unwrap();
    assert_eq!(d.pos.line, 8);
    assert_eq!(d.related[0].0.line, 6);
}

#[test]
fn proxy_tag_must_be_timestamp() {
    let text = "spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: latest\n";
    assert_eq!(rules(text), vec![("proxy-tag", 4, 17)]);
    let text = "spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: 202313201628\n";
    assert_eq!(rules(text), vec![("proxy-tag", 4, 17)]);
}

#[test]
fn aws_warnings() {
    let text = wrap(
        "        - source: a.corp\n          destination: vpce-0a1b2c3d4e5f60718-abcd1234-us-east-1a.vpce-svc-0123456789abcdef0.us-east-1.vpce.amazonaws.com\n        - source: b.corp\n          destination: com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0\n",
    );
    let p = parse_str(&text);
    assert!(p.config.is_some());
    let z = p.diagnostics.iter().find(|d| d.rule == "aws-zonal-endpoint").unwrap();
    assert!(
        z.hint
            .as_ref()
            .unwrap()
            .ends_with("vpce-0a1b2c3d4e5f60718-abcd1234.vpce-svc-0123456789abcdef0.us-east-1.vpce.amazonaws.com")
    );
    assert!(p.diagnostics.iter().any(|d| d.rule == "aws-service-name"));
}

#[test]
fn destinations_forms() {
    let text = wrap(
        "        - source: a.corp\n          destination: 192.0.2.1, 2001:db8::1\n        - source: \"*.w.corp\"\n          destination: \"*.w.pub\"\n        - source: c.corp\n          destination: [192.0.2.7]\n",
    );
    let c = parse_str(&text).config.unwrap();
    assert_eq!(
        c.routes[0].destination,
        Destination::Ips(vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()])
    );
    assert_eq!(
        c.routes[1].destination,
        Destination::Wildcard(Name::parse("w.pub").unwrap())
    );
    assert_eq!(
        c.routes[2].destination,
        Destination::Ips(vec!["192.0.2.7".parse().unwrap()])
    );
}

#[test]
fn runtime_block() {
    let text = "dnsbridge:\n  listen: [127.0.0.1:53, 10.61.0.1:53]\n  upstreams: 10.0.0.2\n  cnameTTL: 5\n  upstreamTimeout: 800ms\n";
    let c = parse_str(text).config.unwrap();
    assert_eq!(c.runtime.listen.len(), 2);
    assert_eq!(c.runtime.upstreams, vec!["10.0.0.2:53".parse().unwrap()]);
    assert_eq!(c.runtime.cname_ttl, 5);
    assert_eq!(c.runtime.upstream_timeout, Duration::from_millis(800));
    assert_eq!(rules("dnsbridge:\n  upstream: 1.2.3.4\n"), vec![("unknown-key", 2, 3)]);
}

#[test]
fn yaml_syntax_error_has_position() {
    let r = rules("spec:\n  infrastructure: [\n");
    assert_eq!(r[0].0, "yaml-syntax");
}

#[test]
fn forwarding_loops_only_against_the_files_own_listen() {
    // No `listen` in the file: serve's flags decide, so nothing to say here.
    let text = wrap("        - source: a.corp\n          destination: b.pub\n          resolverIP: 127.0.0.1:5353\n");
    assert!(parse_str(&text).config.is_some());
    let text = format!("dnsbridge:\n  upstreams: 127.0.0.1:5353\n{text}");
    assert!(parse_str(&text).config.is_some());
    // With it, both an upstream and a resolverIP pointing back are errors.
    let text = format!(
        "dnsbridge:\n  listen: 0.0.0.0:53\n  upstreams: [10.0.0.2, 127.0.0.1]\n{}",
        wrap("        - source: a.corp\n          destination: b.pub\n          resolverIP: 127.0.0.1\n")
    );
    assert_eq!(
        rules(&text),
        vec![("forwarding-loop", 3, 25), ("forwarding-loop", 11, 23)]
    );
}

#[test]
fn duplicates_found_even_in_broken_routes() {
    let text = wrap("        - source: a.corp\n          destination: b.pub\n        - source: A.corp\n");
    let r = rules(&text);
    assert!(r.contains(&("duplicate-source", 8, 19)), "{r:?}");
    assert!(r.contains(&("missing-key", 8, 11)), "{r:?}");
}

#[test]
fn allow_comment_accepts_a_warning_but_never_an_error() {
    let text =
        wrap("        - source: a.corp\n          destination: 10.1.2.3  # dnsbridge-allow: firewall-blocked-ip\n");
    assert!(parse_str(&text).diagnostics.is_empty());
    let text = wrap(
        "        - source: a.corp\n          # dnsbridge-allow: firewall-blocked-ip, route-cycle\n          destination: 10.1.2.3\n        - source: b.corp\n          destination: b.corp # dnsbridge-allow: self-route\n",
    );
    assert_eq!(rules(&text), vec![("self-route", 10, 24)]);
}

#[test]
fn cycle_checks_do_not_flag_chains_that_leave() {
    // Exact beats wildcard: the exact route for the destination leads out.
    let text = wrap(
        "        - source: \"*.corp.example\"\n          destination: registry.corp.example\n        - source: registry.corp.example\n          destination: lb.pub.example\n",
    );
    assert!(parse_str(&text).config.is_some(), "{:?}", parse_str(&text).diagnostics);
    // A wildcard to a sibling suffix that nothing captures.
    let text = wrap(
        "        - source: \"*.a.example\"\n          destination: \"*.b.example\"\n        - source: \"*.c.b.example\"\n          destination: x.pub\n",
    );
    assert!(parse_str(&text).config.is_some(), "{:?}", parse_str(&text).diagnostics);
}

#[test]
fn misplaced_or_misspelled_block_warns() {
    let text = "spec:\n  executorPrivateDNS:\n    routes: []\n";
    assert_eq!(rules(text), vec![("block-not-read", 2, 3)]);
    let text =
        "spec:\n  infrastructure:\n    executorPrivateDns:\n      routes: []\ndnsBridge:\n  listen: 127.0.0.1:53\n";
    assert_eq!(rules(text), vec![("block-not-read", 3, 5), ("block-not-read", 5, 1)]);
}

#[test]
fn a_long_ring_is_reported_once_and_briefly() {
    let mut routes = String::new();
    for i in 0..2000 {
        routes.push_str(&format!(
            "        - source: r{i}.corp\n          destination: r{}.corp\n",
            (i + 1) % 2000
        ));
    }
    let p = parse_str(&wrap(&routes));
    let cycles: Vec<_> = p.diagnostics.iter().filter(|d| d.rule == "route-cycle").collect();
    assert_eq!(cycles.len(), 1, "one ring, reported once");
    assert!(
        cycles[0]
            .message
            .starts_with("2000 routes form a cycle: `r0.corp` -> `r1.corp`")
    );
    assert!(cycles[0].related.len() <= 8);
}
