//! Property tests of the core against an independent DNS parser
//! (hickory-proto): for any valid route set, any query name (in any letter
//! case) and type, and any upstream answer built from generated records,
//! every answer the core produces is a well-formed DNS message with the
//! query's ID and the query's question section byte for byte; nothing makes
//! the core panic. The parser of client packets never panics either.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use proptest::prelude::*;
use proptest::test_runner::Config as PropConfig;
use tokio::time::Instant;

use dnsbridge::cache::{Cache, CacheSettings};
use dnsbridge::config::yaml::Pos;
use dnsbridge::config::{self, Destination, Route, Source};
use dnsbridge::core::{self, Action, Settings, State, Transport, UpstreamQuery};
use dnsbridge::name::Name;
use dnsbridge::route::RouteTable;
use dnsbridge::wire::{self, Query, rcode, rtype};

const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));

/// Labels the generated names are made of: a small alphabet so that
/// generated queries, routes and upstream records meet often.
const LABELS: [&str; 8] = ["registry", "npm", "a", "b", "eu", "x-1", "cdn", "edge"];
const ZONES: [&str; 3] = ["corp.test", "pub.test", "mirror.test"];

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(&LABELS[..]).prop_map(str::to_string),
        1 => "[a-z0-9]{1,10}",
    ]
}

/// A host name of 1-3 labels under one of the zones.
fn host() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(label(), 1..=3),
        proptest::sample::select(&ZONES[..]),
    )
        .prop_map(|(ls, z)| format!("{}.{z}", ls.join(".")))
}

#[derive(Debug, Clone)]
enum DestSpec {
    Name(String),
    /// `*.suffix2` (only kept for a wildcard source).
    Wild(String),
    Ips(Vec<IpAddr>),
    /// The source of a later exact route: a chain of routes.
    Chain(usize),
}

#[derive(Debug, Clone)]
struct RouteSpec {
    wildcard: bool,
    source: String,
    dest: DestSpec,
    resolver: bool,
    flatten: Option<bool>,
    ttl: Option<u32>,
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn dest() -> impl Strategy<Value = DestSpec> {
    prop_oneof![
        3 => host().prop_map(DestSpec::Name),
        1 => host().prop_map(DestSpec::Wild),
        2 => proptest::collection::vec(ip(), 1..=3).prop_map(DestSpec::Ips),
        2 => (0usize..8).prop_map(DestSpec::Chain),
    ]
}

fn route_spec() -> impl Strategy<Value = RouteSpec> {
    (
        any::<bool>(),
        host(),
        dest(),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
        proptest::option::of(0u32..=86400),
    )
        .prop_map(|(wildcard, source, dest, resolver, flatten, ttl)| RouteSpec {
            wildcard,
            source,
            dest,
            resolver,
            flatten,
            ttl,
        })
}

/// Writes the specs as an instance config.yaml, keeping only what can be
/// valid: distinct sources, chains only to later exact routes (no cycles).
fn to_yaml(specs: &[RouteSpec]) -> String {
    let mut seen = BTreeSet::new();
    let specs: Vec<&RouteSpec> = specs
        .iter()
        .filter(|s| seen.insert(s.source.to_ascii_lowercase()))
        .collect();
    let mut y = String::from(
        "spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: 202311201628\n      routes:\n",
    );
    if specs.is_empty() {
        y.push_str("        []\n");
    }
    for (i, s) in specs.iter().enumerate() {
        let src = if s.wildcard {
            format!("\"*.{}\"", s.source)
        } else {
            s.source.clone()
        };
        let mut name_dest = true;
        let dst = match &s.dest {
            DestSpec::Name(n) => n.clone(),
            DestSpec::Wild(n) if s.wildcard => format!("\"*.{n}\""),
            DestSpec::Wild(n) => n.clone(),
            DestSpec::Ips(ips) => {
                name_dest = false;
                let v: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                format!("\"{}\"", v.join(", "))
            }
            DestSpec::Chain(k) => match specs.get(i + 1 + k) {
                Some(t) if !t.wildcard => t.source.clone(),
                _ => "lb.pub.test".into(),
            },
        };
        y.push_str(&format!("        - source: {src}\n          destination: {dst}\n"));
        if s.resolver && name_dest {
            y.push_str("          resolverIP: 127.0.0.1\n");
        }
        if let Some(f) = s.flatten {
            y.push_str(&format!("          flatten: {f}\n"));
        }
        if let Some(t) = s.ttl {
            y.push_str(&format!("          ttl: {t}\n"));
        }
    }
    y
}

/// A query name: a route's source (a wildcard's with a prefix), a
/// destination, or anything; then letter case flipped by `case_bits`.
fn pick_qname(specs: &[RouteSpec], pick: usize, prefix: &str, other: &str) -> String {
    if specs.is_empty() || pick % 8 == 7 {
        return other.to_string();
    }
    let s = &specs[(pick / 8) % specs.len()];
    match (pick % 8, s.wildcard) {
        (0..=5, false) => s.source.clone(),
        (0..=5, true) => format!("{prefix}.{}", s.source),
        _ => match &s.dest {
            DestSpec::Name(n) | DestSpec::Wild(n) => n.clone(),
            _ => s.source.clone(),
        },
    }
}

fn mix_case(name: &str, bits: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// The client's query, encoded by hand (not by the crate under test).
#[derive(Debug, Clone)]
struct ClientQuery {
    id: u16,
    rd: bool,
    cd: bool,
    qtype: u16,
    edns: Option<(u16, bool)>,
    tcp: bool,
    denied: bool,
}

fn encode_name(out: &mut Vec<u8>, name: &str) {
    for l in name.trim_end_matches('.').split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
}

fn encode_query(q: &ClientQuery, qname: &str) -> Vec<u8> {
    let mut m = q.id.to_be_bytes().to_vec();
    let mut f = 0u16;
    if q.rd {
        f |= 0x0100;
    }
    if q.cd {
        f |= 0x0010;
    }
    m.extend_from_slice(&f.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(q.edns.is_some())]);
    encode_name(&mut m, qname);
    m.extend_from_slice(&q.qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    if let Some((size, d)) = q.edns {
        m.push(0);
        m.extend_from_slice(&41u16.to_be_bytes());
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&(if d { 0x8000u32 } else { 0 }).to_be_bytes());
        m.extend_from_slice(&[0, 0]);
    }
    m
}

const QTYPES: [u16; 16] = [
    rtype::A,
    rtype::AAAA,
    rtype::CNAME,
    rtype::HTTPS,
    rtype::SVCB,
    rtype::TXT,
    rtype::MX,
    rtype::SRV,
    rtype::PTR,
    rtype::NS,
    rtype::SOA,
    rtype::ANY,
    257, // CAA
    43,  // DS
    rtype::AXFR,
    99,
];

fn client_query() -> impl Strategy<Value = ClientQuery> {
    (
        any::<u16>(),
        any::<bool>(),
        any::<bool>(),
        prop_oneof![9 => proptest::sample::select(&QTYPES[..]), 1 => any::<u16>()],
        proptest::option::of((any::<u16>(), any::<bool>())),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(id, rd, cd, qtype, edns, tcp, denied)| ClientQuery {
            id,
            rd,
            cd,
            qtype,
            edns,
            tcp,
            denied,
        })
}

/// One record of a generated upstream answer.
#[derive(Debug, Clone)]
struct GenRecord {
    /// 0: the asked name; otherwise an entry of the name pool.
    owner: usize,
    /// 0: the asked type; otherwise a type from the list below.
    kind: usize,
    ttl: u32,
    /// Pool index of a name in the RDATA (CNAME target, MX exchange...).
    target: usize,
    seed: [u8; 16],
}

#[derive(Debug, Clone)]
struct GenAnswer {
    /// 0-5 NOERROR, 6 NXDOMAIN, 7 SERVFAIL, 8 REFUSED, 9 no answer at all,
    /// 10 another question.
    outcome: u8,
    /// A CNAME chain from the asked name through these pool names.
    chain: Vec<usize>,
    /// Records at the end of the chain (of the asked type, mostly).
    finals: Vec<GenRecord>,
    /// Records at any name, of any type.
    noise: Vec<GenRecord>,
    /// Rotates the answer section, so that records come out of order.
    rotate: usize,
    /// How many times the final records are repeated (large answers, for
    /// truncation).
    repeat: usize,
    soa: bool,
    compress_owner: bool,
    opt: bool,
}

fn gen_record() -> impl Strategy<Value = GenRecord> {
    (0usize..6, 0usize..12, 0u32..100_000, 0usize..12, any::<[u8; 16]>()).prop_map(
        |(owner, kind, ttl, target, seed)| GenRecord {
            owner,
            kind,
            ttl,
            target,
            seed,
        },
    )
}

fn gen_answer() -> impl Strategy<Value = GenAnswer> {
    (
        prop_oneof![14 => 0u8..6, 2 => Just(6u8), 4 => 7u8..11],
        proptest::collection::vec(1usize..12, 0..4),
        proptest::collection::vec(
            gen_record().prop_map(|mut r| {
                // Mostly the asked type.
                if r.kind >= 8 {
                    r.kind = 0;
                }
                r
            }),
            0..4,
        ),
        proptest::collection::vec(gen_record(), 0..3),
        any::<usize>(),
        prop_oneof![9 => Just(1usize), 1 => 10usize..60],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(outcome, chain, finals, noise, rotate, repeat, soa, compress_owner, opt)| GenAnswer {
                outcome,
                chain,
                finals,
                noise,
                rotate,
                repeat,
                soa,
                compress_owner,
                opt,
            },
        )
}

/// Names upstream records may use: route names of this test, so that chains
/// loop back into routes, and names of their own.
fn name_pool(specs: &[RouteSpec], asked: &str, extra: &[String]) -> Vec<String> {
    let mut pool = vec![asked.to_string()];
    for s in specs.iter().take(4) {
        pool.push(s.source.clone());
        if let DestSpec::Name(n) = &s.dest {
            pool.push(n.clone());
        }
    }
    pool.extend(extra.iter().cloned());
    pool.push("final.pub.test".into());
    pool
}

/// Encodes a generated answer to `uq` as an upstream would (by hand, with
/// the asked question copied from the query).
fn encode_answer(uq: &UpstreamQuery, g: &GenAnswer, pool: &[String]) -> Option<Vec<u8>> {
    if g.outcome == 9 {
        return None;
    }
    let q = Query::parse(&uq.message).expect("the core's upstream query parses");
    let asked = uq.name.to_string();
    let rc = match g.outcome {
        6 => rcode::NXDOMAIN,
        7 => rcode::SERVFAIL,
        8 => rcode::REFUSED,
        _ => rcode::NOERROR,
    };
    let mut m = q.id().to_be_bytes().to_vec();
    m.extend_from_slice(&(0x8180u16 | 0x0020 | rc as u16).to_be_bytes());
    let mut question = Vec::new();
    if g.outcome == 10 {
        encode_name(&mut question, "unrelated.pub.test");
        question.extend_from_slice(&uq.qtype.to_be_bytes());
        question.extend_from_slice(&1u16.to_be_bytes());
    } else {
        question.extend_from_slice(q.question_raw());
    }
    let pick = |i: usize| -> &str { if i == 0 { &asked } else { &pool[i % pool.len()] } };
    // (owner, type, ttl, rdata) for each answer record.
    let mut records: Vec<(String, u16, u32, Vec<u8>)> = Vec::new();
    let mut cur = asked.clone();
    let mut seen = vec![asked.clone()];
    // Mostly a proper chain; one answer in five may loop.
    let may_loop = g.rotate.is_multiple_of(5);
    for &c in &g.chain {
        let next = pick(c).to_string();
        if !may_loop && seen.contains(&next) {
            continue;
        }
        seen.push(next.clone());
        let mut rd = Vec::new();
        encode_name(&mut rd, &next);
        records.push((cur, rtype::CNAME, 300, rd));
        cur = next;
    }
    let typed = |r: &GenRecord, owner: String| -> (String, u16, u32, Vec<u8>) {
        let types = [
            uq.qtype,
            rtype::CNAME,
            rtype::A,
            rtype::AAAA,
            rtype::TXT,
            rtype::MX,
            rtype::SRV,
            rtype::HTTPS,
            rtype::NS,
            rtype::PTR,
            rtype::CNAME,
            rtype::SVCB,
        ];
        let mut t = types[r.kind % types.len()];
        if t == rtype::ANY {
            t = rtype::A;
        }
        let target = pick(r.target);
        let mut rd = Vec::new();
        match t {
            rtype::A => rd.extend_from_slice(&r.seed[..4]),
            rtype::AAAA => rd.extend_from_slice(&r.seed),
            rtype::CNAME | rtype::NS | rtype::PTR => encode_name(&mut rd, target),
            rtype::MX => {
                rd.extend_from_slice(&r.seed[..2]);
                encode_name(&mut rd, target);
            }
            rtype::SRV => {
                rd.extend_from_slice(&r.seed[..6]);
                encode_name(&mut rd, target);
            }
            rtype::HTTPS | rtype::SVCB => {
                // AliasMode: priority 0, a target, no parameters.
                rd.extend_from_slice(&[0, 0]);
                encode_name(&mut rd, target);
            }
            rtype::TXT => {
                let n = (r.seed[0] % 16) as usize;
                rd.push(n as u8);
                rd.extend_from_slice(&[b'x'; 16][..n]);
            }
            _ => {
                // Types this generator does not shape (SOA, CAA, ...): an A
                // record instead.
                t = rtype::A;
                rd.extend_from_slice(&r.seed[..4]);
            }
        }
        (owner, t, r.ttl, rd)
    };
    for _ in 0..g.repeat {
        for r in &g.finals {
            records.push(typed(r, cur.clone()));
        }
    }
    for r in &g.noise {
        records.push(typed(r, pick(r.owner).to_string()));
    }
    if !records.is_empty() {
        let k = g.rotate % records.len();
        records.rotate_left(k);
    }
    let mut body = Vec::new();
    let count = records.len() as u16;
    for (owner, t, ttl, rd) in &records {
        if g.compress_owner && owner == &asked {
            body.extend_from_slice(&[0xc0, 0x0c]);
        } else {
            encode_name(&mut body, owner);
        }
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&ttl.to_be_bytes());
        body.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        body.extend_from_slice(rd);
    }
    let mut ns = 0u16;
    if g.soa {
        encode_name(&mut body, "pub.test");
        let mut rd = Vec::new();
        encode_name(&mut rd, "ns.pub.test");
        encode_name(&mut rd, "hostmaster.pub.test");
        for v in [1u32, 3600, 600, 86400, 60] {
            rd.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&rtype::SOA.to_be_bytes());
        body.extend_from_slice(&1u16.to_be_bytes());
        body.extend_from_slice(&60u32.to_be_bytes());
        body.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        body.extend_from_slice(&rd);
        ns = 1;
    }
    if g.opt {
        body.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
    }
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(&ns.to_be_bytes());
    m.extend_from_slice(&(u16::from(g.opt)).to_be_bytes());
    m.extend_from_slice(&question);
    m.extend_from_slice(&body);
    Some(m)
}

/// The checks every answer to `query` must pass.
fn check_answer(query: &[u8], answer: &[u8], transport: Transport) -> Result<(), TestCaseError> {
    let msg = Message::from_vec(answer)
        .map_err(|e| TestCaseError::fail(format!("hickory cannot parse the answer: {e}\nanswer: {answer:02x?}")))?;
    prop_assert_eq!(msg.metadata.message_type, MessageType::Response);
    prop_assert_eq!(&answer[..2], &query[..2], "ID differs");
    let q = Query::parse(query).expect("the test's query parses");
    let qr = q.question_raw();
    prop_assert_eq!(msg.queries.len(), 1);
    prop_assert!(answer.len() >= wire::HEADER_LEN + qr.len());
    prop_assert_eq!(
        &answer[wire::HEADER_LEN..wire::HEADER_LEN + qr.len()],
        qr,
        "question section not echoed byte for byte"
    );
    if transport == Transport::Udp {
        prop_assert!(
            answer.len() <= q.udp_limit(),
            "UDP answer of {} bytes over the client's {}",
            answer.len(),
            q.udp_limit()
        );
    }
    Ok(())
}

/// Runs one query through the core as the server does (cache lookup, then
/// the generated upstream answers, one per upstream exchange with the last
/// one repeated, then the cache insert) and checks what comes out. Then asks
/// again with another ID and letter case: from the cache while fresh, and
/// stale once expired with every upstream down.
#[allow(clippy::too_many_arguments)]
fn run(
    state: &State,
    cache: &Cache,
    specs: &[RouteSpec],
    query: &[u8],
    again: &[u8],
    cq: &ClientQuery,
    answers: &[GenAnswer],
    extra_names: &[String],
) -> Result<(), TestCaseError> {
    let transport = if cq.tcp { Transport::Tcp } else { Transport::Udp };
    let client = if cq.denied { DENIED } else { ALLOWED };
    let now = Instant::now();
    let parsed = Query::parse(query).unwrap();
    match core::handle(state, cache, query, client, transport, now) {
        Action::Reply(a) | Action::Cached(a, _) => check_answer(query, &a, transport)?,
        Action::Drop => prop_assert!(false, "a well-formed query was dropped"),
        Action::Forward(miss) => {
            prop_assert!(
                state.table.lookup(parsed.qname_lower()).is_none() || parsed.qclass != 1,
                "a routed name was forwarded"
            );
            let uq = UpstreamQuery {
                message: query.to_vec(),
                resolver: None,
                name: Name::from_wire_lower(parsed.qname_lower()),
                qtype: parsed.qtype,
            };
            let pool = name_pool(specs, &uq.name.to_string(), extra_names);
            if let Some(resp) = encode_answer(&uq, &answers[0], &pool)
                && let Some(full) = core::finish_forward(query, resp, Transport::Tcp)
            {
                cache.insert(miss.key.clone(), &full, false, now);
                check_answer(query, &core::fit(full, &parsed, transport), transport)?;
            }
            let a = core::upstream_failure(query, miss.stale.as_deref(), transport, now).expect("a failure answer");
            check_answer(query, &a, transport)?;
        }
        Action::Resolve(mut res, miss) => {
            let mut step = 0usize;
            while let Some(uq) = res.next_query() {
                prop_assert!(step < 64, "the resolution does not end");
                prop_assert!(Message::from_vec(&uq.message).is_ok());
                let g = &answers[step.min(answers.len() - 1)];
                let pool = name_pool(specs, &uq.name.to_string(), extra_names);
                let upstream = encode_answer(&uq, g, &pool);
                if let Some(u) = &upstream {
                    // The generator only builds valid upstream messages.
                    prop_assert!(Message::from_vec(u).is_ok(), "generator bug: {u:02x?}");
                }
                match upstream {
                    Some(u) => res.on_response(&u, &state.table, &state.settings),
                    None => res.on_upstream_failure(),
                }
                step += 1;
            }
            let failed = res.upstream_failed;
            // The whole answer, before it is fitted to the client's UDP size
            // (the server caches it whole).
            let a = res.into_answer();
            check_answer(query, &a, Transport::Tcp)?;
            if failed {
                let a = core::upstream_failure(query, miss.stale.as_deref(), transport, now).expect("a failure answer");
                check_answer(query, &a, transport)?;
            } else {
                cache.insert(miss.key.clone(), &a, true, now);
                check_answer(query, &core::fit(a, &parsed, transport), transport)?;
            }
        }
    }
    // The same question again: a fresh cache hit, then a stale one.
    for later in [now + Duration::from_secs(1), now + Duration::from_secs(86_401)] {
        match core::handle(state, cache, again, client, transport, later) {
            Action::Reply(a) | Action::Cached(a, _) => check_answer(again, &a, transport)?,
            Action::Drop => prop_assert!(false, "a well-formed query was dropped"),
            Action::Forward(miss) | Action::Resolve(_, miss) => {
                let a = core::upstream_failure(again, miss.stale.as_deref(), transport, later).expect("an answer");
                check_answer(again, &a, transport)?;
            }
        }
    }
    Ok(())
}

/// A cache as the server's, with a window that keeps expired answers for
/// serving stale.
fn cache() -> Cache {
    Cache::new(CacheSettings {
        max_bytes: 1 << 20,
        stale_for: Duration::from_secs(86_400),
        ..CacheSettings::default()
    })
}

fn state_from_yaml(yaml: &str, flatten: bool) -> Option<State> {
    let p = config::parse_str(yaml);
    let cfg = p.config?;
    Some(State {
        table: RouteTable::new(cfg.routes),
        settings: Settings {
            allow: cfg.runtime.allow,
            cname_ttl: 30,
            flatten,
        },
    })
}

proptest! {
    #![proptest_config(PropConfig {
        cases: 512,
        max_global_rejects: 4096,
        ..PropConfig::default()
    })]

    /// Valid route sets (accepted by the config loader), any query, any
    /// upstream answers.
    #[test]
    fn routed_answers_are_valid_and_echo_the_question(
        specs in proptest::collection::vec(route_spec(), 0..6),
        flatten in any::<bool>(),
        pick in any::<usize>(),
        prefix in proptest::collection::vec(label(), 1..=2),
        other in host(),
        case_bits in any::<u64>(),
        cq in client_query(),
        answers in proptest::collection::vec(gen_answer(), 1..5),
        extra_names in proptest::collection::vec(host(), 0..3),
    ) {
        let yaml = to_yaml(&specs);
        let state = state_from_yaml(&yaml, flatten);
        // Rare: a generated set the loader rejects (say, a wildcard source that
        // captures its own destination). Those are not valid route sets.
        prop_assume!(state.is_some());
        let state = state.unwrap();
        let name = pick_qname(&specs, pick, &prefix.join("."), &other);
        let query = encode_query(&cq, &mix_case(&name, case_bits));
        let again = encode_query(&ClientQuery { id: cq.id ^ 0x5a5a, ..cq.clone() }, &mix_case(&name, !case_bits));
        run(&state, &cache(), &specs, &query, &again, &cq, &answers, &extra_names)?;
    }

    /// Route sets built directly, skipping validation (cycles, a wildcard
    /// capturing its own destination, resolverIP on anything): the core may
    /// answer SERVFAIL but must stay within the same rules and never panic.
    #[test]
    fn unvalidated_route_sets_never_break_the_core(
        specs in proptest::collection::vec(route_spec(), 1..6),
        pick in any::<usize>(),
        prefix in proptest::collection::vec(label(), 1..=2),
        other in host(),
        case_bits in any::<u64>(),
        cq in client_query(),
        answers in proptest::collection::vec(gen_answer(), 1..5),
    ) {
        let routes: Vec<Route> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = Name::parse(&s.source).unwrap();
                let source = if s.wildcard { Source::Wildcard(n) } else { Source::Exact(n) };
                let destination = match &s.dest {
                    DestSpec::Name(d) => Destination::Name(Name::parse(d).unwrap()),
                    DestSpec::Wild(d) => Destination::Wildcard(Name::parse(d).unwrap()),
                    DestSpec::Ips(ips) => Destination::Ips(ips.clone()),
                    // Any route's source, earlier ones included: cycles.
                    DestSpec::Chain(k) => {
                        Destination::Name(Name::parse(&specs[k % specs.len()].source).unwrap())
                    }
                };
                Route {
                    index: i,
                    source,
                    destination,
                    resolver: s.resolver.then(|| "127.0.0.1:53".parse().unwrap()),
                    flatten: s.flatten,
                    ttl: s.ttl,
                    source_pos: Pos::default(),
                    destination_pos: Pos::default(),
                }
            })
            .collect();
        let state = State {
            table: RouteTable::new(routes),
            settings: Settings {
                allow: config::default_allow(),
                cname_ttl: 30,
                flatten: false,
            },
        };
        let name = pick_qname(&specs, pick, &prefix.join("."), &other);
        let query = encode_query(&cq, &mix_case(&name, case_bits));
        let again = encode_query(&ClientQuery { id: cq.id.wrapping_add(1), ..cq.clone() }, &name.to_ascii_uppercase());
        run(&state, &cache(), &specs, &query, &again, &cq, &answers, &[])?;
    }

    /// The packet parser on arbitrary bytes.
    #[test]
    fn query_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(q) = Query::parse(&bytes) {
            prop_assert!(q.question_end <= bytes.len());
            prop_assert_eq!(q.question_raw().len() + wire::HEADER_LEN, q.question_end);
            prop_assert!(!q.qname_lower().is_empty());
        }
    }

    /// Valid queries with bytes flipped, appended or cut: the parser and the
    /// core take them without panicking, and any answer keeps the ID.
    #[test]
    fn mutated_queries_never_break_the_core(
        cq in client_query(),
        name in host(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<usize>()),
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut q = encode_query(&cq, &name);
        for (at, b) in edits {
            let n = q.len();
            q[at % n] = b;
        }
        q.extend_from_slice(&tail);
        if let Some(c) = cut {
            q.truncate(c % (q.len() + 1));
        }
        let _ = Query::parse(&q);
        let state = state_from_yaml(
            "spec:\n  infrastructure:\n    executorPrivateDNS:\n      routes:\n        - source: \"*.corp.test\"\n          destination: lb.pub.test\n",
            false,
        )
        .unwrap();
        let transport = if cq.tcp { Transport::Tcp } else { Transport::Udp };
        if let Action::Reply(a) = core::handle(&state, &cache(), &q, ALLOWED, transport, Instant::now()) {
            prop_assert!(a.len() >= wire::HEADER_LEN);
            prop_assert_eq!(&a[..2], &q[..2]);
            prop_assert!(Message::from_vec(&a).is_ok(), "answer {:02x?}", a);
        }
    }
}

/// The generator's YAML is what the loader expects (a smoke check, so that
/// a rejected-everything generator cannot pass the property vacuously).
#[test]
fn generated_route_sets_are_mostly_valid() {
    let specs = vec![
        RouteSpec {
            wildcard: false,
            source: "registry.corp.test".into(),
            dest: DestSpec::Chain(0),
            resolver: true,
            flatten: Some(true),
            ttl: Some(5),
        },
        RouteSpec {
            wildcard: false,
            source: "hop.corp.test".into(),
            dest: DestSpec::Ips(vec!["192.0.2.1".parse().unwrap()]),
            resolver: true,
            flatten: None,
            ttl: None,
        },
        RouteSpec {
            wildcard: true,
            source: "npm.corp.test".into(),
            dest: DestSpec::Wild("mirror.test".into()),
            resolver: false,
            flatten: None,
            ttl: None,
        },
    ];
    let yaml = to_yaml(&specs);
    let p = config::parse_str(&yaml);
    assert!(p.config.is_some(), "{yaml}\n{:?}", p.diagnostics);
    assert_eq!(p.config.unwrap().routes.len(), 3);
}
