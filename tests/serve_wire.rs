//! End-to-end tests of `dnsbridge serve` (issue 2), written from the wire rules
//! 1-9 of DESIGN.md: the built binary runs against real authoritative servers
//! (knot) on loopback and is queried by real clients (dig, glibc's getent) or by
//! raw packets where a client would hide the detail.
//!
//! Upstream data (knot "A" on 127.0.0.1, knot "B" on 127.0.0.2):
//!
//! | name (A)                | data                                       |
//! |-------------------------|--------------------------------------------|
//! | registry.public.test    | CNAME edge.cdn.test (TTL 600)              |
//! | edge.cdn.test           | A 192.0.2.10, AAAA 2001:db8::10, TXT, MX, HTTPS (TTL 300) |
//! | hop1.public.test        | CNAME hop2.cdn.test -> CNAME hop3.public.test -> A 192.0.2.12 |
//! | v4only.public.test      | A 192.0.2.20 only                          |
//! | v4chain.public.test     | CNAME v4edge.cdn.test -> A 192.0.2.11 only |
//! | many.public.test        | 40 A records 198.51.100.1-40               |
//! | wild.example            | A 192.0.2.49 (zone apex)                   |
//! | svc.public.test         | A 192.0.2.60 (on B: CNAME inner.private.test -> A 198.51.100.60) |
//!
//! Every test starts its own knots and its own proxy, so tests are independent
//! and run in parallel.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Upstream zones
// ---------------------------------------------------------------------------

fn public_zone() -> Zone {
    let mut text = String::from(
        "\
@ 3600 IN SOA ns.public.test. hostmaster.public.test. 1 3600 600 86400 600
@ 3600 IN NS ns
ns 3600 IN A 192.0.2.53
registry 600 IN CNAME edge.cdn.test.
hop1 300 IN CNAME hop2.cdn.test.
hop3 300 IN A 192.0.2.12
v4only 300 IN A 192.0.2.20
v4chain 300 IN CNAME v4edge.cdn.test.
wild-target 300 IN A 192.0.2.40
exact-target 300 IN A 192.0.2.41
deep-target 300 IN A 192.0.2.42
pkg.mirror 300 IN A 192.0.2.31
a.b.mirror 300 IN A 192.0.2.32
svc 300 IN A 192.0.2.60
svc3 300 IN A 192.0.2.63
other 300 IN A 192.0.2.61
back 300 IN CNAME loopy.corp.example.
",
    );
    for i in 1..=40 {
        text.push_str(&format!("many 300 IN A 198.51.100.{i}\n"));
    }
    zone("public.test", &text)
}

fn cdn_zone() -> Zone {
    zone(
        "cdn.test",
        "\
@ 3600 IN SOA ns.public.test. hostmaster.cdn.test. 1 3600 600 86400 900
@ 3600 IN NS ns.public.test.
edge 300 IN A 192.0.2.10
edge 300 IN AAAA 2001:db8::10
edge 300 IN TXT \"edge of the cdn\"
edge 300 IN MX 10 mx.cdn.test.
edge 300 IN HTTPS 1 . alpn=h2
mx 300 IN A 192.0.2.25
hop2 300 IN CNAME hop3.public.test.
v4edge 300 IN A 192.0.2.11
",
    )
}

fn wild_zone() -> Zone {
    zone(
        "wild.example",
        "\
@ 3600 IN SOA ns.public.test. hostmaster.wild.example. 1 3600 600 86400 600
@ 3600 IN NS ns.public.test.
@ 300 IN A 192.0.2.49
",
    )
}

/// knot B's view of public.test: the same names with other data.
fn b_public_zone() -> Zone {
    zone(
        "public.test",
        "\
@ 3600 IN SOA ns.public.test. other-admin.public.test. 99 3600 600 86400 600
@ 3600 IN NS ns
ns 3600 IN A 198.51.100.53
svc 300 IN CNAME inner.private.test.
other 300 IN A 198.51.100.61
registry 300 IN A 203.0.113.99
",
    )
}

fn b_private_zone() -> Zone {
    zone(
        "private.test",
        "\
@ 3600 IN SOA ns.public.test. hostmaster.private.test. 1 3600 600 86400 600
@ 3600 IN NS ns.public.test.
inner 300 IN A 198.51.100.60
",
    )
}

/// The two authoritative servers, plus a loopback port nothing listens on.
struct Upstreams {
    a: Knot,
    b: Knot,
    dead: SocketAddr,
}

impl Upstreams {
    fn start() -> Upstreams {
        Upstreams {
            a: Knot::serve(&[public_zone(), cdn_zone(), wild_zone()]),
            b: Knot::serve_at(LOCALHOST2, &[b_public_zone(), b_private_zone()]),
            dead: free_addr(LOCALHOST),
        }
    }
}

// ---------------------------------------------------------------------------
// Routes and config files
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Route {
    source: String,
    /// Written verbatim after `destination: ` when it starts with `[`, quoted
    /// otherwise.
    destination: String,
    resolver_ip: Option<String>,
    flatten: bool,
}

fn route(source: &str, destination: &str) -> Route {
    Route {
        source: source.into(),
        destination: destination.into(),
        resolver_ip: None,
        flatten: false,
    }
}

impl Route {
    fn via(mut self, resolver: impl ToString) -> Route {
        self.resolver_ip = Some(resolver.to_string());
        self
    }
    fn flatten(mut self) -> Route {
        self.flatten = true;
        self
    }
}

fn main_routes(up: &Upstreams) -> Vec<Route> {
    let b = up.b.addr_string();
    vec![
        route("*.wild.example", "wild-target.public.test"),
        route("registry.corp.example", "registry.public.test"),
        route("chain.corp.example", "hop1.public.test"),
        route("v4.corp.example", "v4only.public.test"),
        route("cdnv4.corp.example", "v4chain.public.test"),
        route("gone.corp.example", "missing.public.test"),
        route("exact.wild.example", "exact-target.public.test"),
        route("*.deep.wild.example", "deep-target.public.test"),
        route("*.src.example", "*.mirror.public.test"),
        route("ip.corp.example", "192.0.2.77, 2001:db8::77"),
        route("ip4.corp.example", "192.0.2.78"),
        route("big.corp.example", "many.public.test"),
        route("flat.corp.example", "registry.public.test").flatten(),
        route("internal.corp.example", "svc.public.test").via(&b),
        route("internal2.corp.example", "other.public.test").via(&b),
        route("internal3.corp.example", "svc3.public.test").via(&b),
        route("svc2.corp.example", "svc.public.test"),
        route("loopy.corp.example", "back.public.test"),
        route("dead.corp.example", "registry.public.test").via(up.dead),
    ]
}

/// An instance `config.yaml`: unrelated keys around the one block dnsbridge
/// reads (they must be ignored).
fn config_yaml(routes: &[Route]) -> String {
    let mut y = String::from(
        "\
apiVersion: cloud.example/v1
kind: Instance
metadata:
  name: test-instance
  labels: {tier: internal}
spec:
  domain: sourcegraph.example
  infrastructure:
    gcp:
      projectID: some-project
      region: us-central1
    executorPrivateDNS:
      proxyTag: 202311201628
      routes:
",
    );
    for r in routes {
        y.push_str(&format!("        - source: \"{}\"\n", r.source));
        if r.destination.starts_with('[') {
            y.push_str(&format!("          destination: {}\n", r.destination));
        } else {
            y.push_str(&format!("          destination: \"{}\"\n", r.destination));
        }
        if let Some(ip) = &r.resolver_ip {
            y.push_str(&format!("          resolverIP: \"{ip}\"\n"));
        }
        if r.flatten {
            y.push_str("          flatten: true\n");
        }
    }
    y.push_str("  executors:\n    replicas: 3\n");
    y
}

fn serve_args(config: &ConfigFile, upstream: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        config.arg().into(),
        "--upstream".into(),
        upstream.to_string(),
    ];
    if !extra.contains(&"--listen") {
        args.extend(["--listen".into(), "127.0.0.1:0".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn start_proxy(config: &ConfigFile, upstream: SocketAddr, extra: &[&str]) -> Proxy {
    let args = serve_args(config, upstream, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(&args)
}

/// Upstreams, the main config and a proxy over them.
struct Env {
    up: Upstreams,
    config: ConfigFile,
    proxy: Proxy,
}

impl Env {
    fn start(extra: &[&str]) -> Env {
        let up = Upstreams::start();
        let config = write_config(&config_yaml(&main_routes(&up)));
        let proxy = start_proxy(&config, up.a.addr(), extra);
        // Clients retry a truncated UDP answer over TCP on the same address and
        // port: one --listen serves both.
        assert_eq!(
            proxy.udp(),
            proxy.tcp(),
            "UDP and TCP listeners differ:\n{}",
            proxy.log()
        );
        Env { up, config, proxy }
    }

    /// `dig @proxy ARGS` (UDP unless `+tcp`; EDNS and real-client defaults).
    fn dig(&self, args: &[&str]) -> DigReply {
        let server = if args.iter().any(|a| *a == "+tcp" || *a == "+vc") {
            self.proxy.tcp()
        } else {
            self.proxy.udp()
        };
        dig_parsed(server, args)
    }

    fn udp(&self, q: &QueryBuilder) -> Wire {
        udp_wire(self.proxy.udp(), q)
    }

    fn tcp(&self, q: &QueryBuilder) -> Wire {
        tcp_wire(self.proxy.tcp(), q)
    }
}

fn udp_wire(server: SocketAddr, q: &QueryBuilder) -> Wire {
    let bytes = q.build();
    let reply = udp_exchange(server, &bytes, EXCHANGE_TIMEOUT).unwrap_or_else(|e| panic!("UDP {q:?} to {server}: {e}"));
    Wire::parse(&reply)
}

fn tcp_wire(server: SocketAddr, q: &QueryBuilder) -> Wire {
    let bytes = q.build();
    let reply = tcp_exchange(server, &bytes, EXCHANGE_TIMEOUT).unwrap_or_else(|e| panic!("TCP {q:?} to {server}: {e}"));
    Wire::parse(&reply)
}

// ---------------------------------------------------------------------------
// Assertion helpers
// ---------------------------------------------------------------------------

type Key = (String, String, String);

/// An expected record: (owner, type, rdata), compared without letter case.
fn rr(name: &str, rtype: &str, rdata: &str) -> Key {
    (name.to_ascii_lowercase(), rtype.to_string(), rdata.to_ascii_lowercase())
}

#[track_caller]
fn assert_answer(r: &DigReply, want: &[Key]) {
    assert_eq!(r.answer_keys(), want, "ANSWER section differs:\n{}", r.raw);
}

#[track_caller]
fn assert_status(r: &DigReply, status: &str) {
    assert_eq!(r.status, status, "status differs:\n{}", r.raw);
}

/// Is `ancestor` equal to `name` or one of its parent domains?
fn is_ancestor_or_self(ancestor: &str, name: &str) -> bool {
    let a = fqdn(ancestor).to_ascii_lowercase();
    let n = fqdn(name).to_ascii_lowercase();
    a == "." || n == a || n.ends_with(&format!(".{a}"))
}

/// (lower-case owner, type number, data) for the answer section of a raw reply.
fn wire_answer(w: &Wire) -> Vec<(String, u16, String)> {
    w.answers()
        .iter()
        .map(|r| {
            let data = match r.rtype {
                1 | 28 => match r.rdata.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).unwrap()).to_string(),
                    16 => IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).unwrap()).to_string(),
                    _ => hex(&r.rdata),
                },
                5 => w.rdata_name(r, 0).to_ascii_lowercase(),
                _ => hex(&r.rdata),
            };
            (r.name.to_ascii_lowercase(), r.rtype, data)
        })
        .collect()
}

fn wrr(name: &str, rtype: RecordType, data: &str) -> (String, u16, String) {
    (
        fqdn(name).to_ascii_lowercase(),
        u16::from(rtype),
        data.to_ascii_lowercase(),
    )
}

fn many_addresses() -> BTreeSet<IpAddr> {
    (1..=40).map(|i| format!("198.51.100.{i}").parse().unwrap()).collect()
}

/// OPT TTL field: extended RCODE (8 bits), version (8), DO (1), Z (15).
fn opt_do(opt: &WireRecord) -> bool {
    opt.ttl & 0x8000 != 0
}
fn opt_z(opt: &WireRecord) -> u32 {
    opt.ttl & 0x7fff
}
fn opt_version(opt: &WireRecord) -> u32 {
    (opt.ttl >> 16) & 0xff
}
fn opt_ext_rcode(opt: &WireRecord) -> u32 {
    opt.ttl >> 24
}

const A: RecordType = RecordType::A;
const AAAA: RecordType = RecordType::AAAA;
const TXT: RecordType = RecordType::TXT;

const NOERROR: u8 = 0;
const FORMERR: u8 = 1;
const SERVFAIL: u8 = 2;
const NXDOMAIN: u8 = 3;
const NOTIMP: u8 = 4;
const REFUSED: u8 = 5;

// ---------------------------------------------------------------------------
// Rule 1: CNAME plus the complete chain
// ---------------------------------------------------------------------------

#[test]
fn routed_name_is_answered_with_cname_then_the_complete_chain_across_zones() {
    let env = Env::start(&[]);

    // registry.corp.example -> registry.public.test (zone public.test), which is a
    // CNAME into another zone (cdn.test) that knot does not follow by itself.
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(
        &r,
        &[
            rr("registry.corp.example.", "CNAME", "registry.public.test."),
            rr("registry.public.test.", "CNAME", "edge.cdn.test."),
            rr("edge.cdn.test.", "A", "192.0.2.10"),
        ],
    );
    // The synthesized CNAME's TTL is "short by default".
    let ttl = r.answer[0].ttl;
    assert!(
        (1..=300).contains(&ttl),
        "default CNAME TTL {ttl} is not short:\n{}",
        r.raw
    );

    // Three hops, crossing zones twice.
    let r = env.dig(&["chain.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(
        &r,
        &[
            rr("chain.corp.example.", "CNAME", "hop1.public.test."),
            rr("hop1.public.test.", "CNAME", "hop2.cdn.test."),
            rr("hop2.cdn.test.", "CNAME", "hop3.public.test."),
            rr("hop3.public.test.", "A", "192.0.2.12"),
        ],
    );

    // Over TCP the same.
    let r = env.dig(&["+tcp", "registry.corp.example", "AAAA"]);
    assert_answer(
        &r,
        &[
            rr("registry.corp.example.", "CNAME", "registry.public.test."),
            rr("registry.public.test.", "CNAME", "edge.cdn.test."),
            rr("edge.cdn.test.", "AAAA", "2001:db8::10"),
        ],
    );
}

#[test]
fn every_query_type_follows_the_route() {
    let env = Env::start(&[]);
    for qtype in ["TXT", "MX", "HTTPS", "AAAA", "A"] {
        // What knot itself holds for the final name, in dig's rendering.
        let direct = dig_parsed(env.up.a.addr(), &["edge.cdn.test", qtype]);
        assert_eq!(direct.answer.len(), 1, "zone data for {qtype}:\n{}", direct.raw);
        let last = direct.answer[0].key();

        let r = env.dig(&["registry.corp.example", qtype]);
        assert_status(&r, "NOERROR");
        assert_answer(
            &r,
            &[
                rr("registry.corp.example.", "CNAME", "registry.public.test."),
                rr("registry.public.test.", "CNAME", "edge.cdn.test."),
                last,
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// Rule 3: NODATA, NXDOMAIN, IP destinations
// ---------------------------------------------------------------------------

#[test]
fn aaaa_for_an_ipv4_only_destination_is_nodata_with_the_destination_zone_soa() {
    let env = Env::start(&[]);

    let r = env.dig(&["v4.corp.example", "AAAA"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("v4.corp.example.", "CNAME", "v4only.public.test.")]);
    let soa = r.authority_soa();
    assert_eq!(soa.len(), 1, "one SOA in AUTHORITY:\n{}", r.raw);
    assert_eq!(soa[0].name.to_ascii_lowercase(), "public.test.", "{}", r.raw);

    // The chain ends in another zone: that zone's SOA.
    let r = env.dig(&["cdnv4.corp.example", "AAAA"]);
    assert_status(&r, "NOERROR");
    assert_answer(
        &r,
        &[
            rr("cdnv4.corp.example.", "CNAME", "v4chain.public.test."),
            rr("v4chain.public.test.", "CNAME", "v4edge.cdn.test."),
        ],
    );
    let soa = r.authority_soa();
    assert_eq!(soa.len(), 1, "one SOA in AUTHORITY:\n{}", r.raw);
    assert_eq!(soa[0].name.to_ascii_lowercase(), "cdn.test.", "{}", r.raw);

    // And A for the same name works.
    let r = env.dig(&["v4.corp.example", "A"]);
    assert_answer(
        &r,
        &[
            rr("v4.corp.example.", "CNAME", "v4only.public.test."),
            rr("v4only.public.test.", "A", "192.0.2.20"),
        ],
    );
}

#[test]
fn nxdomain_destination_gives_nxdomain_and_keeps_the_cname() {
    let env = Env::start(&[]);
    for qtype in ["A", "AAAA"] {
        let r = env.dig(&["gone.corp.example", qtype]);
        assert_status(&r, "NXDOMAIN");
        assert_answer(&r, &[rr("gone.corp.example.", "CNAME", "missing.public.test.")]);
        let soa = r.authority_soa();
        assert_eq!(soa.len(), 1, "one SOA in AUTHORITY:\n{}", r.raw);
        assert_eq!(soa[0].name.to_ascii_lowercase(), "public.test.", "{}", r.raw);
    }
}

#[test]
fn ip_destination_answers_a_and_aaaa_itself_and_nodata_with_soa_for_other_types() {
    let env = Env::start(&[]);

    let r = env.dig(&["ip.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("ip.corp.example.", "A", "192.0.2.77")]);
    let r = env.dig(&["ip.corp.example", "AAAA"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("ip.corp.example.", "AAAA", "2001:db8::77")]);

    // Other types, and AAAA of a v4-only IP destination: NODATA with an SOA
    // that applies to the name (the name itself or a parent of it).
    for (name, qtype) in [
        ("ip.corp.example", "TXT"),
        ("ip.corp.example", "MX"),
        ("ip.corp.example", "HTTPS"),
        ("ip4.corp.example", "AAAA"),
    ] {
        let r = env.dig(&[name, qtype]);
        assert_status(&r, "NOERROR");
        assert!(r.answer.is_empty(), "{name} {qtype}: no answer records:\n{}", r.raw);
        let soa = r.authority_soa();
        assert_eq!(soa.len(), 1, "{name} {qtype}: one SOA in AUTHORITY:\n{}", r.raw);
        assert!(
            is_ancestor_or_self(&soa[0].name, name),
            "{name} {qtype}: SOA owner {} does not cover the name:\n{}",
            soa[0].name,
            r.raw
        );
    }
    let r = env.dig(&["ip4.corp.example", "A"]);
    assert_answer(&r, &[rr("ip4.corp.example.", "A", "192.0.2.78")]);
}

#[test]
fn ip_destination_may_be_a_yaml_list() {
    let up = Upstreams::start();
    let config = write_config(&config_yaml(&[route(
        "list.corp.example",
        "[\"192.0.2.91\", \"192.0.2.92\", \"2001:db8::91\"]",
    )]));
    let proxy = start_proxy(&config, up.a.addr(), &[]);
    let r = dig_parsed(proxy.udp(), &["list.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    let got: BTreeSet<String> = r.answer_rdata("A").into_iter().collect();
    assert_eq!(
        got,
        BTreeSet::from(["192.0.2.91".to_string(), "192.0.2.92".to_string()]),
        "{}",
        r.raw
    );
    assert_eq!(r.answer.len(), 2, "{}", r.raw);
    let r = dig_parsed(proxy.udp(), &["list.corp.example", "AAAA"]);
    assert_answer(&r, &[rr("list.corp.example.", "AAAA", "2001:db8::91")]);
}

// ---------------------------------------------------------------------------
// Route matching
// ---------------------------------------------------------------------------

#[test]
fn wildcard_source_matches_at_two_depths_but_not_its_apex() {
    let env = Env::start(&[]);
    for name in ["a.wild.example", "b.a.wild.example"] {
        let r = env.dig(&[name, "A"]);
        assert_status(&r, "NOERROR");
        assert_answer(
            &r,
            &[
                rr(&fqdn(name), "CNAME", "wild-target.public.test."),
                rr("wild-target.public.test.", "A", "192.0.2.40"),
            ],
        );
    }
    // The apex is not routed: it is forwarded, and knot's own answer comes back.
    let r = env.dig(&["wild.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("wild.example.", "A", "192.0.2.49")]);
    assert!(r.has_flag("aa"), "forwarded as knot answered it (AA set):\n{}", r.raw);
}

#[test]
fn exact_route_beats_wildcard_and_matching_ignores_case() {
    let env = Env::start(&[]);
    for name in ["exact.wild.example", "EXACT.Wild.Example", "exact.wild.example."] {
        let r = env.dig(&[name, "A"]);
        assert_status(&r, "NOERROR");
        let keys = r.answer_keys();
        assert_eq!(keys.len(), 2, "{}", r.raw);
        assert_eq!(keys[0].1, "CNAME");
        assert_eq!(keys[0].2, "exact-target.public.test.", "{}", r.raw);
        assert_eq!(keys[1], rr("exact-target.public.test.", "A", "192.0.2.41"));
    }
    // Names below the exact source still take the wildcard.
    let r = env.dig(&["x.exact.wild.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.40"], "{}", r.raw);
    let r = env.dig(&["ReGiStRy.CORP.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.10"], "{}", r.raw);
}

#[test]
fn longest_wildcard_suffix_wins() {
    let env = Env::start(&[]);
    for (name, target, ip) in [
        ("x.deep.wild.example", "deep-target.public.test.", "192.0.2.42"),
        ("y.x.deep.wild.example", "deep-target.public.test.", "192.0.2.42"),
        // deep.wild.example is the apex of *.deep.wild.example: only *.wild.example matches.
        ("deep.wild.example", "wild-target.public.test.", "192.0.2.40"),
        ("other.wild.example", "wild-target.public.test.", "192.0.2.40"),
    ] {
        let r = env.dig(&[name, "A"]);
        assert_status(&r, "NOERROR");
        assert_answer(&r, &[rr(&fqdn(name), "CNAME", target), rr(target, "A", ip)]);
    }
}

#[test]
fn route_order_in_the_file_does_not_matter() {
    let up = Upstreams::start();
    let routes = main_routes(&up);
    let mut reversed = routes.clone();
    reversed.reverse();
    let mut interleaved: Vec<Route> = routes.iter().skip(1).step_by(2).cloned().collect();
    interleaved.extend(routes.iter().step_by(2).cloned());
    let configs: Vec<ConfigFile> = [routes, reversed, interleaved]
        .iter()
        .map(|r| write_config(&config_yaml(r)))
        .collect();
    let proxies: Vec<Proxy> = configs.iter().map(|c| start_proxy(c, up.a.addr(), &[])).collect();

    let expected = [
        ("a.wild.example", "192.0.2.40"),
        ("b.a.wild.example", "192.0.2.40"),
        ("exact.wild.example", "192.0.2.41"),
        ("x.deep.wild.example", "192.0.2.42"),
        ("deep.wild.example", "192.0.2.40"),
        ("pkg.src.example", "192.0.2.31"),
        ("registry.corp.example", "192.0.2.10"),
        ("wild.example", "192.0.2.49"),
    ];
    for (name, ip) in expected {
        let answers: Vec<Vec<Key>> = proxies
            .iter()
            .map(|p| {
                let r = dig_parsed(p.udp(), &[name, "A"]);
                assert_eq!(r.answer_rdata("A"), vec![ip], "{name}:\n{}", r.raw);
                r.answer_keys()
            })
            .collect();
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "{name}: answers differ with the order of routes: {answers:#?}"
        );
    }
}

#[test]
fn wildcard_destination_keeps_the_matched_prefix() {
    let env = Env::start(&[]);
    let r = env.dig(&["pkg.src.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(
        &r,
        &[
            rr("pkg.src.example.", "CNAME", "pkg.mirror.public.test."),
            rr("pkg.mirror.public.test.", "A", "192.0.2.31"),
        ],
    );
    let r = env.dig(&["a.b.src.example", "A"]);
    assert_answer(
        &r,
        &[
            rr("a.b.src.example.", "CNAME", "a.b.mirror.public.test."),
            rr("a.b.mirror.public.test.", "A", "192.0.2.32"),
        ],
    );
    // A prefix the destination does not have: NXDOMAIN, CNAME kept.
    let r = env.dig(&["nope.src.example", "A"]);
    assert_status(&r, "NXDOMAIN");
    assert_answer(&r, &[rr("nope.src.example.", "CNAME", "nope.mirror.public.test.")]);
}

// ---------------------------------------------------------------------------
// Rule 4: TTLs
// ---------------------------------------------------------------------------

#[test]
fn synthesized_cname_ttl_is_configurable_and_destination_records_keep_upstream_ttls() {
    let env = Env::start(&["--cname-ttl", "17"]);
    for round in 0..2 {
        if round == 1 {
            thread::sleep(Duration::from_secs(2));
        }
        let r = env.dig(&["registry.corp.example", "A"]);
        assert_eq!(r.answer.len(), 3, "{}", r.raw);
        assert_eq!(r.answer[0].rtype, "CNAME");
        // Fresh: exactly the configured TTL; from a cache: counted down from it,
        // never above.
        let synthesized = r.answer[0].ttl;
        if round == 0 {
            assert_eq!(synthesized, 17, "synthesized CNAME TTL:\n{}", r.raw);
        } else {
            assert!((1..=17).contains(&synthesized), "synthesized CNAME TTL:\n{}", r.raw);
        }
        // Upstream TTLs: 600 for the CNAME, 300 for the A (counted down if cached).
        let (cname_ttl, a_ttl) = (r.answer[1].ttl, r.answer[2].ttl);
        assert!(
            (580..=600).contains(&cname_ttl),
            "upstream CNAME TTL {cname_ttl}:\n{}",
            r.raw
        );
        assert!((280..=300).contains(&a_ttl), "upstream A TTL {a_ttl}:\n{}", r.raw);
    }
    for name in ["gone.corp.example", "a.wild.example", "pkg.src.example"] {
        let r = env.dig(&[name, "A"]);
        assert_eq!(r.answer[0].rtype, "CNAME", "{}", r.raw);
        assert_eq!(r.answer[0].ttl, 17, "{name}: synthesized CNAME TTL:\n{}", r.raw);
    }
}

// ---------------------------------------------------------------------------
// Flatten mode
// ---------------------------------------------------------------------------

#[test]
fn per_route_flatten_renames_final_records_to_the_source_and_drops_the_chain() {
    let env = Env::start(&[]);
    let r = env.dig(&["flat.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("flat.corp.example.", "A", "192.0.2.10")]);
    assert!(r.answer[0].ttl <= 600, "{}", r.raw);
    let r = env.dig(&["flat.corp.example", "AAAA"]);
    assert_answer(&r, &[rr("flat.corp.example.", "AAAA", "2001:db8::10")]);
    // Other routes are not flattened.
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_eq!(r.answer.len(), 3, "{}", r.raw);
}

#[test]
fn global_flatten_flag_flattens_every_name_route() {
    let env = Env::start(&["--flatten"]);
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_status(&r, "NOERROR");
    assert_answer(&r, &[rr("registry.corp.example.", "A", "192.0.2.10")]);
    let r = env.dig(&["chain.corp.example", "A"]);
    assert_answer(&r, &[rr("chain.corp.example.", "A", "192.0.2.12")]);
    let r = env.dig(&["a.b.src.example", "A"]);
    assert_answer(&r, &[rr("a.b.src.example.", "A", "192.0.2.32")]);

    let r = env.dig(&["+tcp", "big.corp.example", "A"]);
    assert_eq!(r.answer.len(), 40, "{}", r.raw);
    assert!(
        r.answer.iter().all(|a| a.name == "big.corp.example." && a.rtype == "A"),
        "{}",
        r.raw
    );

    let r = env.dig(&["v4.corp.example", "AAAA"]);
    assert_status(&r, "NOERROR");
    assert!(r.answer.is_empty(), "{}", r.raw);
    let r = env.dig(&["gone.corp.example", "A"]);
    assert_status(&r, "NXDOMAIN");
    assert!(r.answer.iter().all(|a| a.rtype != "CNAME"), "{}", r.raw);
}

// ---------------------------------------------------------------------------
// Rule 5: DNSSEC and EDNS hygiene (knot and a scripted upstream)
// ---------------------------------------------------------------------------

/// A scripted upstream for `*.fake.test` that misbehaves in the ways rule 5 and
/// rule 6 guard against: it sets AD on every answer, returns an OPT record
/// with a foreign buffer size (777) and every Z flag set, and answers names
/// starting with `tc` with TC=1 and no records over UDP (3 A records over TCP).
fn fake_upstream() -> FakeUpstream {
    FakeUpstream::start(|req| {
        let query = Message::from_vec(&req.bytes).ok()?;
        let question = query.queries.first()?.clone();
        let name = question.name().to_ascii().to_ascii_lowercase();
        let mut m = reply_to(&req.bytes);
        m.metadata.authentic_data = true;
        if query.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(777);
            edns.flags_mut().dnssec_ok = true;
            edns.flags_mut().z = 0x7fff;
            m.set_edns(edns);
        }
        let owner = question.name().clone();
        let truncating = name.starts_with("tc");
        if truncating && req.transport == Transport::Udp {
            m.metadata.truncation = true;
        } else if question.query_type() == RecordType::A {
            let ips: &[[u8; 4]] = if truncating {
                &[[192, 0, 2, 201], [192, 0, 2, 202], [192, 0, 2, 203]]
            } else {
                &[[192, 0, 2, 200]]
            };
            for ip in ips {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    120,
                    RData::A(Ipv4Addr::from(*ip).into()),
                ));
            }
        } else {
            let soa = hickory_proto::rr::rdata::SOA::new(
                Name::from_ascii("ns.fake.test.").unwrap(),
                Name::from_ascii("hostmaster.fake.test.").unwrap(),
                1,
                3600,
                600,
                86400,
                60,
            );
            m.add_authority(Record::from_rdata(
                Name::from_ascii("fake.test.").unwrap(),
                60,
                RData::SOA(soa),
            ));
        }
        m.to_vec().ok()
    })
}

fn fake_routes() -> Vec<Route> {
    vec![
        route("ad.corp.example", "signed.fake.test"),
        route("edns1.corp.example", "e1.fake.test"),
        route("edns2.corp.example", "e2.fake.test"),
        route("edns3.corp.example", "e3.fake.test"),
        route("cd.corp.example", "cd1.fake.test"),
        route("nocd.corp.example", "cd0.fake.test"),
        route("tc.corp.example", "tcbig.fake.test"),
    ]
}

struct FakeEnv {
    fake: FakeUpstream,
    _config: ConfigFile,
    proxy: Proxy,
}

fn fake_env() -> FakeEnv {
    let fake = fake_upstream();
    let config = write_config(&config_yaml(&fake_routes()));
    let proxy = start_proxy(&config, fake.addr(), &[]);
    FakeEnv {
        fake,
        _config: config,
        proxy,
    }
}

/// DO bit of a query as the upstream received it (false without OPT).
fn query_do(req: &FakeRequest) -> bool {
    req.wire().opts().first().is_some_and(|o| opt_do(o))
}

#[test]
fn ad_bit_is_cleared_on_routed_answers() {
    // Upstream sets AD on everything.
    let env = fake_env();
    for q in [
        QueryBuilder::new("ad.corp.example", A).ad(true).edns(4096, true),
        QueryBuilder::new("ad.corp.example", A).ad(true),
        QueryBuilder::new("ad.corp.example", A),
    ] {
        let w = udp_wire(env.proxy.udp(), &q);
        assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
        assert!(
            wire_answer(&w).contains(&wrr("signed.fake.test", A, "192.0.2.200")),
            "{}",
            w.dump()
        );
        assert!(!w.ad(), "AD must be clear on a synthesized answer:\n{}", w.dump());
    }
    // Control: the scripted upstream really sets AD (a forwarded answer keeps it,
    // byte for byte).
    let w = udp_wire(
        env.proxy.udp(),
        &QueryBuilder::new("plain.fake.test", A).ad(true).edns(4096, true),
    );
    assert!(w.ad(), "forwarded answer as the upstream sent it:\n{}", w.dump());

    // With knot as the upstream, through dig (which sets AD in queries).
    let env = Env::start(&[]);
    let r = env.dig(&["+adflag", "+dnssec", "registry.corp.example", "A"]);
    assert_eq!(r.answer.len(), 3, "{}", r.raw);
    assert!(!r.has_flag("ad"), "{}", r.raw);
}

#[test]
fn client_without_edns_gets_no_opt_and_client_with_edns_gets_one_opt_echoing_do() {
    let env = Env::start(&[]);
    // Routed (answer and NXDOMAIN), synthesized from an IP, and forwarded.
    for (name, qtype) in [
        ("registry.corp.example", A),
        ("gone.corp.example", A),
        ("ip.corp.example", A),
        ("ip.corp.example", TXT),
        ("edge.cdn.test", A),
    ] {
        let w = env.udp(&QueryBuilder::new(name, qtype));
        assert!(w.error.is_none(), "{}", w.dump());
        assert!(w.opts().is_empty(), "{name}: no OPT without EDNS:\n{}", w.dump());

        for dnssec_ok in [true, false] {
            let w = env.udp(&QueryBuilder::new(name, qtype).edns(4096, dnssec_ok));
            assert!(w.error.is_none(), "{}", w.dump());
            let opts = w.opts();
            assert_eq!(opts.len(), 1, "{name}: exactly one OPT:\n{}", w.dump());
            let opt = opts[0];
            assert_eq!(opt.section, Section::Additional);
            assert_eq!(opt.name, ".");
            assert_eq!(opt_do(opt), dnssec_ok, "{name}: DO echoed:\n{}", w.dump());
            assert_eq!(opt_version(opt), 0, "{}", w.dump());
            assert_eq!(opt_ext_rcode(opt), 0, "{}", w.dump());
            assert_eq!(opt_z(opt), 0, "{}", w.dump());
            assert!(opt.class >= 512, "{name}: buffer size {}", opt.class);
        }
    }
}

#[test]
fn opt_record_is_the_proxys_own_and_do_goes_upstream_only_when_the_client_set_it() {
    let env = fake_env();
    let udp = env.proxy.udp();

    // DO set by the client: set upstream, echoed, the upstream's OPT not copied.
    let w = udp_wire(udp, &QueryBuilder::new("edns1.corp.example", A).edns(4096, true));
    assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
    let opts = w.opts();
    assert_eq!(opts.len(), 1, "{}", w.dump());
    assert!(opt_do(opts[0]), "{}", w.dump());
    assert_eq!(
        opt_z(opts[0]),
        0,
        "upstream's Z flags must not be copied:\n{}",
        w.dump()
    );
    assert_eq!(opt_version(opts[0]), 0);
    assert_ne!(
        opts[0].class,
        777,
        "upstream's buffer size must not be copied:\n{}",
        w.dump()
    );
    let reqs = env.fake.requests_for("e1.fake.test");
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(query_do), "DO must be set upstream");

    // EDNS without DO: DO stays clear upstream and in the answer.
    let w = udp_wire(udp, &QueryBuilder::new("edns2.corp.example", A).edns(4096, false));
    let opts = w.opts();
    assert_eq!(opts.len(), 1, "{}", w.dump());
    assert!(!opt_do(opts[0]), "{}", w.dump());
    assert_eq!(opt_z(opts[0]), 0, "{}", w.dump());
    let reqs = env.fake.requests_for("e2.fake.test");
    assert!(!reqs.is_empty());
    assert!(!reqs.iter().any(query_do), "DO must not be set upstream");

    // No EDNS: no DO upstream, no OPT in the answer.
    let w = udp_wire(udp, &QueryBuilder::new("edns3.corp.example", A));
    assert!(w.opts().is_empty(), "{}", w.dump());
    assert!(
        wire_answer(&w).contains(&wrr("e3.fake.test", A, "192.0.2.200")),
        "{}",
        w.dump()
    );
    let reqs = env.fake.requests_for("e3.fake.test");
    assert!(!reqs.is_empty());
    assert!(!reqs.iter().any(query_do), "DO must not be set upstream");
}

#[test]
fn cd_bit_is_passed_through() {
    let env = fake_env();
    let udp = env.proxy.udp();

    let w = udp_wire(udp, &QueryBuilder::new("cd.corp.example", A).cd(true).edns(1232, true));
    assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
    assert!(w.cd(), "CD copied into the answer:\n{}", w.dump());
    let reqs = env.fake.requests_for("cd1.fake.test");
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| r.wire().cd()), "CD must be set upstream");

    let w = udp_wire(udp, &QueryBuilder::new("nocd.corp.example", A).edns(1232, true));
    assert!(!w.cd(), "{}", w.dump());
    let reqs = env.fake.requests_for("cd0.fake.test");
    assert!(!reqs.is_empty());
    assert!(reqs.iter().all(|r| !r.wire().cd()), "CD must be clear upstream");

    let w = udp_wire(udp, &QueryBuilder::new("fwdcd.fake.test", A).cd(true));
    assert!(w.cd(), "{}", w.dump());
    assert!(env.fake.requests_for("fwdcd.fake.test").iter().all(|r| r.wire().cd()));

    // With knot and dig.
    let env = Env::start(&[]);
    let r = env.dig(&["+cdflag", "registry.corp.example", "A"]);
    assert_eq!(r.answer.len(), 3, "{}", r.raw);
    assert!(r.has_flag("cd"), "{}", r.raw);
}

// ---------------------------------------------------------------------------
// Rule 6: size
// ---------------------------------------------------------------------------

#[test]
fn forty_record_answer_truncates_over_udp_and_comes_back_whole_over_tcp() {
    let env = Env::start(&[]);

    for (name, routed) in [("BiG.corp.example", true), ("many.public.test", false)] {
        // UDP without EDNS: TC=1 in at most 512 bytes, question echoed.
        let q = QueryBuilder::new(name, A).id(0x7e57);
        let w = env.udp(&q);
        assert!(w.qr() && w.tc(), "{name}: TC over UDP without EDNS:\n{}", w.dump());
        assert_eq!(w.id(), 0x7e57);
        assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
        assert!(w.bytes.len() <= 512, "{name}: {} bytes over UDP", w.bytes.len());
        assert_eq!(
            w.question_bytes(),
            Wire::parse(&q.build()).question_bytes(),
            "{}",
            w.dump()
        );

        // The same question over TCP: whole.
        let w = env.tcp(&q);
        assert!(!w.tc(), "{}", w.dump());
        assert!(w.error.is_none(), "{}", w.dump());
        let addrs: BTreeSet<IpAddr> = w.addresses(Section::Answer).into_iter().collect();
        assert_eq!(addrs, many_addresses(), "{name} over TCP:\n{}", w.dump());
        assert_eq!(w.ancount() as usize, if routed { 41 } else { 40 }, "{}", w.dump());

        // With a big enough EDNS buffer, whole over UDP.
        let w = env.udp(&QueryBuilder::new(name, A).edns(4096, false));
        assert!(!w.tc(), "{name}: fits in 4096 bytes:\n{}", w.dump());
        let addrs: BTreeSet<IpAddr> = w.addresses(Section::Answer).into_iter().collect();
        assert_eq!(addrs, many_addresses(), "{}", w.dump());

        // Real clients: dig +tcp, and dig over UDP without EDNS (which retries over TCP).
        let lower = name.to_ascii_lowercase();
        let r = env.dig(&["+tcp", &lower, "A"]);
        assert_eq!(r.answer_rdata("A").len(), 40, "{}", r.raw);
        let out = dig(env.proxy.udp(), &["+noedns", &lower, "A"]);
        assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
        let r = DigReply::parse(&out).unwrap();
        assert_eq!(r.answer_rdata("A").len(), 40, "{}", r.raw);
        if routed {
            assert_eq!(r.answer[0].key(), rr("big.corp.example.", "CNAME", "many.public.test."));
        }
    }
}

#[test]
fn truncated_upstream_answer_is_retried_over_tcp_by_the_proxy() {
    let env = fake_env();
    let want = ["192.0.2.201", "192.0.2.202", "192.0.2.203"];

    // Routed: the destination's UDP answer is truncated upstream.
    let w = udp_wire(
        env.proxy.udp(),
        &QueryBuilder::new("tc.corp.example", A).edns(1232, false),
    );
    assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
    assert!(!w.tc(), "the proxy fetched the whole answer itself:\n{}", w.dump());
    let got: Vec<String> = w.addresses(Section::Answer).iter().map(|a| a.to_string()).collect();
    assert_eq!(got, want, "{}", w.dump());
    let reqs = env.fake.requests_for("tcbig.fake.test");
    assert!(
        reqs.iter().any(|r| r.transport == Transport::Tcp),
        "the proxy must retry over TCP: {reqs:?}"
    );

    // Forwarded.
    let w = udp_wire(env.proxy.udp(), &QueryBuilder::new("tcfwd.fake.test", A));
    assert!(!w.tc(), "{}", w.dump());
    let got: Vec<String> = w.addresses(Section::Answer).iter().map(|a| a.to_string()).collect();
    assert_eq!(got, want, "{}", w.dump());
    assert!(
        env.fake
            .requests_for("tcfwd.fake.test")
            .iter()
            .any(|r| r.transport == Transport::Tcp)
    );
}

// ---------------------------------------------------------------------------
// resolverIP
// ---------------------------------------------------------------------------

#[test]
fn resolver_ip_destination_is_resolved_only_through_that_resolver() {
    let mut env = Env::start(&[]);
    assert_eq!(env.up.b.addr().ip(), LOCALHOST2);

    let general = [
        rr("svc2.corp.example.", "CNAME", "svc.public.test."),
        rr("svc.public.test.", "A", "192.0.2.60"),
    ];
    let private = [
        rr("internal.corp.example.", "CNAME", "svc.public.test."),
        rr("svc.public.test.", "CNAME", "inner.private.test."),
        rr("inner.private.test.", "A", "198.51.100.60"),
    ];
    // Same destination name, two resolvers: neither answer leaks into the other.
    for _ in 0..2 {
        assert_answer(&env.dig(&["svc2.corp.example", "A"]), &general);
        assert_answer(&env.dig(&["internal.corp.example", "A"]), &private);
    }

    // With the general upstream down, the resolverIP route still answers.
    env.up.a.stop();
    let r = env.dig(&["internal2.corp.example", "A"]);
    assert_answer(
        &r,
        &[
            rr("internal2.corp.example.", "CNAME", "other.public.test."),
            rr("other.public.test.", "A", "198.51.100.61"),
        ],
    );
    env.up.a.start();

    // With its resolver down, the route does not fall back to the general
    // upstream (which has svc3.public.test A 192.0.2.63).
    env.up.b.stop();
    let q = QueryBuilder::new("internal3.corp.example", A).id(0x3333);
    match udp_exchange(env.proxy.udp(), &q.build(), Duration::from_secs(12)) {
        Err(_) => {} // no answer at all is acceptable
        Ok(reply) => {
            let w = Wire::parse(&reply);
            assert!(
                !w.addresses(Section::Answer).contains(&"192.0.2.63".parse().unwrap()),
                "resolved through the general upstream:\n{}",
                w.dump()
            );
            assert_eq!(w.rcode(), SERVFAIL, "{}", w.dump());
        }
    }
}

// ---------------------------------------------------------------------------
// Rule 2: the question is echoed exactly
// ---------------------------------------------------------------------------

#[track_caller]
fn assert_echo(w: &Wire, q: &QueryBuilder, rcode: u8, path: &str) {
    let sent = Wire::parse(&q.build());
    assert!(w.qr(), "{path}: not a response:\n{}", w.dump());
    assert_eq!(w.id(), sent.id(), "{path}: ID:\n{}", w.dump());
    assert_eq!(w.rcode(), rcode, "{path}: RCODE:\n{}", w.dump());
    assert_eq!(w.qdcount(), 1, "{path}:\n{}", w.dump());
    assert_eq!(
        w.question_bytes(),
        sent.question_bytes(),
        "{path}: question not echoed byte for byte (sent {:?}, got {:?}):\n{}",
        sent.question_name(),
        w.question_name(),
        w.dump()
    );
}

#[test]
fn mixed_case_question_is_echoed_exactly_on_every_path() {
    let env = Env::start(&[]);
    let cases = [
        ("answer", QueryBuilder::new("ReGiStRy.CoRp.ExAmPlE", A), NOERROR),
        (
            "answer+edns",
            QueryBuilder::new("ReGiStRy.CoRp.ExAmPlE", AAAA).edns(1232, true),
            NOERROR,
        ),
        ("wildcard", QueryBuilder::new("X.Y.wIlD.eXaMpLe", A), NOERROR),
        ("NXDOMAIN", QueryBuilder::new("GoNe.CoRp.ExAmPlE", A), NXDOMAIN),
        ("NODATA", QueryBuilder::new("V4.CoRp.ExAmPlE", AAAA), NOERROR),
        ("IP answer", QueryBuilder::new("Ip.CoRp.ExAmPlE", A), NOERROR),
        ("IP NODATA", QueryBuilder::new("Ip.CoRp.ExAmPlE", TXT), NOERROR),
        ("truncated", QueryBuilder::new("BiG.CoRp.ExAmPlE", A), NOERROR),
        ("forwarded", QueryBuilder::new("WiLd.ExAmPlE", A), NOERROR),
        (
            "forwarded NXDOMAIN",
            QueryBuilder::new("NoThErE.PuBlIc.TeSt", A),
            NXDOMAIN,
        ),
    ];
    for (path, q, rcode) in &cases {
        let w = env.udp(q);
        assert_echo(&w, q, *rcode, path);
        if *path == "truncated" {
            assert!(w.tc(), "{}", w.dump());
        }
        if *path == "NODATA" || *path == "IP NODATA" {
            assert!(
                w.answers().iter().all(|r| r.rtype != u16::from(q_type(q))),
                "{}",
                w.dump()
            );
        }
        let w = env.tcp(q);
        assert_echo(&w, q, *rcode, &format!("{path} over TCP"));
    }

    // SERVFAIL: the route's resolver does not answer.
    let q = QueryBuilder::new("DeAd.CoRp.ExAmPlE", A).id(0x5e5e);
    let reply = udp_exchange(env.proxy.udp(), &q.build(), Duration::from_secs(15))
        .expect("a SERVFAIL answer when the route's resolver is unreachable");
    assert_echo(&Wire::parse(&reply), &q, SERVFAIL, "SERVFAIL");

    // REFUSED: a proxy that allows only 127.0.0.2, asked from 127.0.0.1.
    let refusing = start_proxy(&env.config, env.up.a.addr(), &["--allow", "127.0.0.2/32"]);
    let q = QueryBuilder::new("ReGiStRy.CoRp.ExAmPlE", A).id(0x4e4e);
    let reply = udp_exchange_from(LOCALHOST, refusing.udp(), &q.build(), EXCHANGE_TIMEOUT).expect("REFUSED answer");
    assert_echo(&Wire::parse(&reply), &q, REFUSED, "REFUSED");
}

fn q_type(q: &QueryBuilder) -> RecordType {
    q.message().queries[0].query_type()
}

// ---------------------------------------------------------------------------
// Rule 8: forwarded queries byte for byte
// ---------------------------------------------------------------------------

#[test]
fn forwarded_queries_come_back_byte_for_byte_except_the_id() {
    let env = Env::start(&[]);
    let knot = env.up.a.addr();
    let cases = [
        QueryBuilder::new("edge.cdn.test", A),
        QueryBuilder::new("edge.cdn.test", TXT),
        QueryBuilder::new("nothere.public.test", A),
        QueryBuilder::new("v4only.public.test", AAAA),
        QueryBuilder::new("wild.example", A),
        // knot answers only the first link of this out-of-zone chain: a forwarded
        // answer is not completed by the proxy.
        QueryBuilder::new("hop1.public.test", A),
        QueryBuilder::new("public.test", RecordType::NS),
    ];
    for (i, q) in cases.iter().enumerate() {
        let q = q.clone().id(0x1000 + i as u16);
        let query = q.build();
        let via_proxy = udp_exchange(env.proxy.udp(), &query, EXCHANGE_TIMEOUT).unwrap();
        let direct = udp_exchange(knot, &query, EXCHANGE_TIMEOUT).unwrap();
        assert_eq!(
            via_proxy,
            direct,
            "{q:?}: proxy's answer differs from knot's:\nproxy: {}\nknot:  {}",
            Wire::parse(&via_proxy).dump(),
            Wire::parse(&direct).dump()
        );
    }

    // Over TCP, a 40-record answer.
    let query = QueryBuilder::new("many.public.test", A).id(0x2000).build();
    let via_proxy = tcp_exchange(env.proxy.tcp(), &query, EXCHANGE_TIMEOUT).unwrap();
    let direct = tcp_exchange(knot, &query, EXCHANGE_TIMEOUT).unwrap();
    assert_eq!(
        via_proxy,
        direct,
        "proxy: {}\nknot: {}",
        Wire::parse(&via_proxy).dump(),
        Wire::parse(&direct).dump()
    );

    // The client's ID is restored whatever ID went upstream.
    for id in [0x0000u16, 0xffff, 0x8001] {
        let q = QueryBuilder::new("edge.cdn.test", AAAA).id(id);
        let w = env.udp(&q);
        assert_eq!(w.id(), id);
        assert_eq!(
            w.addresses(Section::Answer),
            vec!["2001:db8::10".parse::<IpAddr>().unwrap()]
        );
    }

    // With EDNS the OPT record may be the proxy's own; everything else is knot's.
    let query = QueryBuilder::new("mx.cdn.test", A).id(0x3000).edns(4096, true).build();
    let p = Wire::parse(&udp_exchange(env.proxy.udp(), &query, EXCHANGE_TIMEOUT).unwrap());
    let k = Wire::parse(&udp_exchange(knot, &query, EXCHANGE_TIMEOUT).unwrap());
    assert_eq!(p.bytes[..4], k.bytes[..4], "header flags:\n{}\n{}", p.dump(), k.dump());
    assert_eq!(p.question_bytes(), k.question_bytes());
    let strip = |w: &Wire| -> Vec<(Section, String, u16, u16, u32, Vec<u8>)> {
        w.records()
            .iter()
            .filter(|r| r.rtype != 41)
            .map(|r| (r.section, r.name.clone(), r.rtype, r.class, r.ttl, r.rdata.clone()))
            .collect()
    };
    assert_eq!(strip(&p), strip(&k), "\n{}\n{}", p.dump(), k.dump());
    assert_eq!(p.opts().len(), 1, "{}", p.dump());
}

// ---------------------------------------------------------------------------
// Rule 9: allowed clients only
// ---------------------------------------------------------------------------

#[test]
fn client_outside_allow_gets_refused_and_allowed_client_is_answered() {
    let up = Upstreams::start();
    let config = write_config(&config_yaml(&main_routes(&up)));
    let proxy = start_proxy(&config, up.a.addr(), &["--allow", "127.0.0.2/32"]);
    let (udp, tcp) = (proxy.udp(), proxy.tcp());

    for name in ["registry.corp.example", "wild.example", "ip.corp.example"] {
        let q = QueryBuilder::new(name, A).id(0x0bad);
        // From 127.0.0.1: outside --allow.
        let reply = udp_exchange_from(LOCALHOST, udp, &q.build(), EXCHANGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: REFUSED expected, got {e}"));
        let w = Wire::parse(&reply);
        assert_echo(&w, &q, REFUSED, name);
        assert_eq!(w.ancount(), 0, "{}", w.dump());
        assert!(!w.ra(), "an open resolver would offer recursion:\n{}", w.dump());

        // Over TCP: REFUSED or the connection is closed; never an answer.
        match tcp_exchange_from(LOCALHOST, tcp, &q.build(), EXCHANGE_TIMEOUT) {
            Ok(reply) => {
                let w = Wire::parse(&reply);
                assert_eq!(w.rcode(), REFUSED, "{}", w.dump());
                assert_eq!(w.ancount(), 0, "{}", w.dump());
            }
            Err(e) => eprintln!("{name}: TCP from a refused client closed: {e}"),
        }

        // From 127.0.0.2: answered.
        let reply = udp_exchange_from(LOCALHOST2, udp, &q.build(), EXCHANGE_TIMEOUT).unwrap();
        let w = Wire::parse(&reply);
        assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
        assert!(!w.addresses(Section::Answer).is_empty(), "{}", w.dump());
        let reply = tcp_exchange_from(LOCALHOST2, tcp, &q.build(), EXCHANGE_TIMEOUT).unwrap();
        let w = Wire::parse(&reply);
        assert_eq!(w.rcode(), NOERROR, "{}", w.dump());
        assert!(!w.addresses(Section::Answer).is_empty(), "{}", w.dump());
    }
}

// ---------------------------------------------------------------------------
// The system resolver as a client
// ---------------------------------------------------------------------------

#[test]
fn getent_ahosts_resolves_a_routed_name_through_the_proxy_on_port_53() {
    if !require_root("binding port 53 and `unshare -m`") {
        return;
    }
    let listen: SocketAddr = "127.0.2.53:53".parse().unwrap();
    if let Err(e) = UdpSocket::bind(listen) {
        panic!("{listen} is not free ({e}): is a system DNS daemon running? (see scripts/install-deps.sh)");
    }
    let up = Upstreams::start();
    let config = write_config(&config_yaml(&main_routes(&up)));
    let proxy = start_proxy(&config, up.a.addr(), &["--listen", "127.0.2.53:53"]);
    assert_eq!(proxy.udp(), listen);

    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.2.53\noptions timeout:2 attempts:2\n").unwrap();
    let nss = dir.path().join("nsswitch.conf");
    std::fs::write(&nss, "hosts: dns\n").unwrap();
    let before = std::fs::read("/etc/resolv.conf").ok();

    // Everything below happens in a private mount namespace: the machine's own
    // /etc/resolv.conf is never touched. nscd (if any) is hidden so that getent
    // really queries DNS.
    let script = r#"set -e
mount --bind "$1" /etc/resolv.conf
mount --bind "$2" /etc/nsswitch.conf
for d in /run/nscd /var/run/nscd; do
  if [ -d "$d" ]; then mount -t tmpfs none "$d"; fi
done
echo "== ahosts $3"; getent ahosts "$3"
echo "== ahostsv4 $4"; getent ahostsv4 "$4"
"#;
    let out = run_with_timeout(
        Command::new(find_program("unshare"))
            .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(&resolv)
            .arg(&nss)
            .args(["registry.corp.example", "chain.corp.example"]),
        Duration::from_secs(30),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "getent failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let (first, second) = stdout.split_once("== ahostsv4").unwrap();
    assert!(first.contains("192.0.2.10"), "{stdout}");
    assert!(first.contains("2001:db8::10"), "{stdout}");
    assert!(second.contains("192.0.2.12"), "{stdout}");
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        before,
        "/etc/resolv.conf changed"
    );
}

// ---------------------------------------------------------------------------
// Robustness: malformed input, FORMERR, NOTIMP, responses, loops
// ---------------------------------------------------------------------------

fn header(id: u16, flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        h.extend_from_slice(&c.to_be_bytes());
    }
    h
}

/// One malformed packet of kind `i % 10`.
fn malformed(rng: &mut Rng, i: usize) -> Vec<u8> {
    let id = rng.next_u64() as u16;
    match i % 10 {
        // Random bytes of any length.
        0 => {
            let n = rng.below(600) as usize;
            rng.bytes(n)
        }
        // Truncated header.
        1 => {
            let n = rng.below(12) as usize;
            rng.bytes(n)
        }
        // A label length that runs past the end.
        2 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0x3f, b'a', b'b', b'c']);
            p
        }
        // Compression pointer to itself in the question.
        3 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            p
        }
        // Two pointers pointing at each other.
        4 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            p.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
            p
        }
        // Huge counts, little data.
        5 => {
            let mut p = header(id, rng.next_u64() as u16 & 0x7fff, [0xffff, 0xffff, 0xffff, 0xffff]);
            let n = rng.below(40) as usize;
            p.extend(rng.bytes(n));
            p
        }
        // Reserved label types (0x40, 0x80) and over-long names.
        6 => {
            let mut p = header(id, 0x0100, [1, 0, 0, 0]);
            if rng.below(2) == 0 {
                p.extend_from_slice(&[0x40 | (rng.byte() & 0x3f), 1, 2, 3, 0, 0, 1, 0, 1]);
            } else {
                for _ in 0..140 {
                    p.extend_from_slice(&[1, b'x']);
                }
                p.extend_from_slice(&[0, 0, 1, 0, 1]);
            }
            p
        }
        // A valid query with random bytes flipped.
        7 => {
            let mut p = QueryBuilder::new("registry.corp.example", A)
                .id(id)
                .edns(1232, rng.below(2) == 0)
                .build();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(p.len() as u64) as usize;
                p[at] = rng.byte();
            }
            p
        }
        // A valid question followed by a broken OPT (rdlength past the end).
        8 => {
            let mut p = QueryBuilder::new("wild.example", A).id(id).build();
            p[11] = 1; // ARCOUNT = 1
            p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2]);
            p
        }
        // A question truncated inside the type/class, or cut at random.
        _ => {
            let p = QueryBuilder::new("a.wild.example", AAAA).id(id).build();
            let cut = 12 + rng.below((p.len() - 12) as u64) as usize;
            p[..cut].to_vec()
        }
    }
}

#[test]
fn malformed_packets_do_not_crash_the_proxy() {
    let mut env = Env::start(&[]);
    let server = env.proxy.udp();
    let sock = udp_socket(LOCALHOST);
    sock.set_nonblocking(true).unwrap();
    let mut rng = Rng::new(0x0005_eedd_15b4_1d6e);
    let started = Instant::now();
    let mut buf = vec![0u8; 65535];
    let mut replies = 0;
    for i in 0..1000 {
        let p = malformed(&mut rng, i);
        // A full socket buffer only drops a datagram; retry briefly.
        for _ in 0..50 {
            match udp_send(&sock, server, &p) {
                Ok(_) => break,
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        if i % 50 == 49 {
            thread::sleep(Duration::from_millis(5));
            while sock.recv_from(&mut buf).is_ok() {
                replies += 1;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "sending took too long");
    }
    eprintln!(
        "1000 malformed datagrams sent in {:?}, {replies} replies",
        started.elapsed()
    );

    // A few over TCP.
    let tcp = env.proxy.tcp();
    let mut tcp_cases: Vec<Vec<u8>> = vec![
        vec![0, 0],                               // zero-length message
        vec![0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8], // promises 65535 bytes, sends 8
        vec![0x00],                               // half a length prefix
        {
            let mut m = vec![0, 18];
            m.extend(header(7, 0x0100, [1, 0, 0, 0]));
            m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // compression loop
            m
        },
        {
            let mut m = vec![0, 200];
            m.extend(rng.bytes(200));
            m
        },
    ];
    for _ in 0..3 {
        let mut m = vec![0, 100];
        m.extend(rng.bytes(100));
        tcp_cases.push(m);
    }
    for bytes in &tcp_cases {
        if let Ok(mut s) = tcp_stream(tcp, Duration::from_millis(500)) {
            use std::io::{Read, Write};
            let _ = s.write_all(bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }

    thread::sleep(Duration::from_millis(200));
    assert!(env.proxy.is_alive(), "dnsbridge died:\n{}", env.proxy.log());
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.10"], "{}", r.raw);
    let r = env.dig(&["+tcp", "wild.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.49"], "{}", r.raw);
    assert!(
        !env.proxy.log().contains("panicked"),
        "a task panicked:\n{}",
        env.proxy.log()
    );
}

#[test]
fn malformed_question_gets_formerr_and_unknown_opcode_gets_notimp() {
    let env = Env::start(&[]);
    let server = env.proxy.udp();

    let mut bad_label = header(0xbeef, 0x0100, [1, 0, 0, 0]);
    bad_label.extend_from_slice(&[0x3f, b'a', b'b', b'c']);
    let mut cut_type = header(0xbeef, 0x0100, [1, 0, 0, 0]);
    cut_type.extend_from_slice(b"\x07example\x03com\x00\x00");
    let mut loop_name = header(0xbeef, 0x0100, [1, 0, 0, 0]);
    loop_name.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    for (what, p) in [
        ("label past the end", bad_label),
        ("cut in QTYPE", cut_type),
        ("compression loop", loop_name),
    ] {
        let reply =
            udp_exchange(server, &p, EXCHANGE_TIMEOUT).unwrap_or_else(|e| panic!("{what}: FORMERR expected, got {e}"));
        let w = Wire::parse(&reply);
        assert!(w.qr(), "{what}:\n{}", w.dump());
        assert_eq!(w.id(), 0xbeef, "{what}:\n{}", w.dump());
        assert_eq!(w.rcode(), FORMERR, "{what}:\n{}", w.dump());
        assert_eq!(w.ancount(), 0, "{what}:\n{}", w.dump());
    }

    for opcode in [1u8, 2, 3] {
        let mut p = QueryBuilder::new("registry.corp.example", A).id(0xc0de).build();
        p[2] = (p[2] & 0x87) | (opcode << 3);
        let reply = udp_exchange(server, &p, EXCHANGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("opcode {opcode}: NOTIMP expected, got {e}"));
        let w = Wire::parse(&reply);
        assert!(w.qr(), "{}", w.dump());
        assert_eq!(w.id(), 0xc0de);
        assert_eq!(w.rcode(), NOTIMP, "opcode {opcode}:\n{}", w.dump());
        assert_eq!(w.ancount(), 0, "{}", w.dump());
    }
}

#[test]
fn responses_sent_to_the_proxy_are_never_answered() {
    let env = Env::start(&[]);
    let server = env.proxy.udp();
    let sock = udp_socket(LOCALHOST);
    let mut as_response = QueryBuilder::new("registry.corp.example", A).id(0x1111).build();
    as_response[2] |= 0x80;
    let knot_answer = udp_exchange(
        env.up.a.addr(),
        &QueryBuilder::new("edge.cdn.test", A).id(0x2222).build(),
        EXCHANGE_TIMEOUT,
    )
    .unwrap();
    for p in [&as_response, &knot_answer] {
        udp_send(&sock, server, p).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let mut buf = [0u8; 4096];
    if let Ok((n, _)) = sock.recv_from(&mut buf) {
        panic!("the proxy answered a response:\n{}", Wire::parse(&buf[..n]).dump());
    }
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.10"], "{}", r.raw);
}

#[test]
fn upstream_cname_back_to_a_routed_source_is_cut_with_servfail() {
    // loopy.corp.example -> back.public.test, and upstream back.public.test is a
    // CNAME to loopy.corp.example.
    let mut env = Env::start(&[]);
    let q = QueryBuilder::new("loopy.corp.example", A).id(0x100b);
    let t = Instant::now();
    let reply = udp_exchange(env.proxy.udp(), &q.build(), Duration::from_secs(12)).expect("an answer, not silence");
    let w = Wire::parse(&reply);
    assert_echo(&w, &q, SERVFAIL, "CNAME loop");
    assert!(w.ancount() < 10, "{}", w.dump());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(env.proxy.is_alive());
    let r = env.dig(&["registry.corp.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.10"], "{}", r.raw);
}

#[test]
fn forwarding_loop_through_an_upstream_pointing_back_is_detected() {
    // The upstream is a "resolver" that forwards every query it gets back to the
    // proxy (at most 300 times): the loop must be noticed by the proxy, not run
    // until something times out.
    let up = Upstreams::start();
    let config = write_config(&config_yaml(&main_routes(&up)));
    let proxy_addr = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let relayed = Arc::new(AtomicUsize::new(0));
    let relay_sock = Arc::new(udp_socket(LOCALHOST));
    let relay = {
        let (proxy_addr, relayed, relay_sock) = (proxy_addr.clone(), relayed.clone(), relay_sock.clone());
        FakeUpstream::start(move |req| {
            if let Some(addr) = *proxy_addr.lock().unwrap()
                && relayed.fetch_add(1, Ordering::SeqCst) < 300
            {
                let _ = udp_send(&relay_sock, addr, &req.bytes);
            }
            None
        })
    };
    let mut proxy = start_proxy(&config, relay.addr(), &[]);
    *proxy_addr.lock().unwrap() = Some(proxy.udp());

    let q = QueryBuilder::new("looping.example", A).id(0x7777);
    let result = udp_exchange(proxy.udp(), &q.build(), Duration::from_secs(8));
    thread::sleep(Duration::from_secs(1));
    let n = relayed.load(Ordering::SeqCst);
    eprintln!(
        "relayed {n} times; client got {:?}",
        result.as_ref().map(|r| Wire::parse(r).rcode())
    );
    assert!(n < 20, "the query went round the loop {n} times");
    if let Ok(reply) = result {
        let w = Wire::parse(&reply);
        assert_ne!(w.rcode(), NOERROR, "{}", w.dump());
    }
    assert!(proxy.is_alive());
    // Routed names still work (they do not use this upstream... except the chain):
    // an IP destination needs no upstream at all.
    let r = dig_parsed(proxy.udp(), &["ip.corp.example", "A"]);
    assert_eq!(r.answer_rdata("A"), vec!["192.0.2.77"], "{}", r.raw);
}

// ---------------------------------------------------------------------------
// Refused at start
// ---------------------------------------------------------------------------

#[test]
fn upstream_that_is_the_proxy_itself_is_refused_at_start() {
    let config = write_config(&config_yaml(&[route("ip.corp.example", "192.0.2.77")]));
    let addr = free_addr(LOCALHOST).to_string();
    let (status, log) = Proxy::run_to_exit(
        &[
            "serve",
            "--config",
            config.arg(),
            "--listen",
            &addr,
            "--upstream",
            &addr,
        ],
        Duration::from_secs(10),
    );
    let status = status.unwrap_or_else(|| panic!("still running after 10 s with itself as upstream:\n{log}"));
    assert!(!status.success(), "exit status {status}:\n{log}");
}

#[test]
fn invalid_route_sets_are_refused_at_start_naming_the_route() {
    let upstream = free_addr(LOCALHOST).to_string(); // never contacted
    let cases: Vec<(&str, Vec<Route>)> = vec![
        (
            "duplicate source",
            vec![
                route("dup.corp.example", "a.public.test"),
                route("Dup.Corp.Example", "b.public.test"),
            ],
        ),
        (
            "source equal to destination",
            vec![route("self.corp.example", "self.corp.example")],
        ),
        (
            "cycle",
            vec![
                route("ping.corp.example", "pong.corp.example"),
                route("pong.corp.example", "ping.corp.example"),
            ],
        ),
        (
            "wildcard capturing its own destination",
            vec![route("*.corp.example", "mirror.corp.example")],
        ),
        (
            "malformed name",
            vec![route("registry..corp.example", "registry.public.test")],
        ),
        (
            "wildcard destination for an exact source",
            vec![route("exact.corp.example", "*.public.test")],
        ),
    ];
    for (what, routes) in cases {
        let yaml = config_yaml(&routes);
        let config = write_config(&yaml);
        let log = refused_at_start(what, &config, &upstream);
        // The route is named by its source, or by its position in the file.
        let lower = log.to_ascii_lowercase();
        let by_name = routes.iter().any(|r| lower.contains(&r.source.to_ascii_lowercase()));
        let by_position = route_lines(&yaml)
            .iter()
            .any(|n| log.contains(&format!("{}:{n}:", config.arg())));
        assert!(by_name || by_position, "{what}: the error must name the route:\n{log}");
    }

    // A misspelt key inside executorPrivateDNS.
    let yaml = config_yaml(&[route("typo.corp.example", "x.public.test")]).replace("destination:", "destiantion:");
    let config = write_config(&yaml);
    let log = refused_at_start("typo", &config, &upstream);
    assert!(log.contains("destiantion"), "typo: the error must name the key:\n{log}");
}

/// Runs `serve` on `config` and asserts that it exits non-zero by itself
/// within 10 s; returns its log.
fn refused_at_start(what: &str, config: &ConfigFile, upstream: &str) -> String {
    let (status, log) = Proxy::run_to_exit(
        &[
            "serve",
            "--config",
            config.arg(),
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
        ],
        Duration::from_secs(10),
    );
    let status = status.unwrap_or_else(|| panic!("{what}: still running after 10 s:\n{log}"));
    assert!(!status.success(), "{what}: exit status {status}:\n{log}");
    log
}

/// 1-based numbers of the lines that belong to route entries in `yaml`.
fn route_lines(yaml: &str) -> Vec<usize> {
    let mut in_routes = false;
    let mut lines = Vec::new();
    for (i, line) in yaml.lines().enumerate() {
        if line.trim_start().starts_with("- source:") {
            in_routes = true;
        } else if !line.starts_with("          ") {
            in_routes = false;
        }
        if in_routes {
            lines.push(i + 1);
        }
    }
    lines
}
