//! The wire rules of DESIGN.md, checked on the pure core with no sockets: an
//! upstream is a function from query bytes to answer bytes.

use super::*;
use crate::cache::{Cache, CacheSettings};
use crate::config::{self, Config};
use crate::wire::{Response, read_u16};

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn state(routes_yaml: &str) -> State {
    let text = format!("spec:\n  infrastructure:\n    executorPrivateDNS:\n      routes:\n{routes_yaml}");
    let p = config::parse_str(&text);
    let cfg: Config = p
        .config
        .unwrap_or_else(|| panic!("invalid test config: {:?}", p.diagnostics));
    state_from(cfg)
}

fn state_from(cfg: Config) -> State {
    State {
        table: RouteTable::new(cfg.routes),
        settings: Settings {
            allow: cfg.runtime.allow,
            cname_ttl: 30,
            flatten: false,
        },
    }
}

/// A client query with the name written exactly as given (letter case kept).
fn query(name: &str, qtype: u16, edns: Option<(u16, bool)>, extra_flags: u16) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd];
    q.extend_from_slice(&(flags::RD | extra_flags).to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for l in name.trim_end_matches('.').split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some((size, d)) = edns {
        q.push(0);
        q.extend_from_slice(&rtype::OPT.to_be_bytes());
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&(if d { wire::EDNS_DO } else { 0 }).to_be_bytes());
        q.extend_from_slice(&[0, 0]);
    }
    q
}

/// A tiny authoritative "zone": name -> records, answered like a recursive
/// resolver that does not follow CNAMEs across zones.
struct Zone {
    records: Vec<(&'static str, u16, u32, Vec<u8>)>,
    soa: (&'static str, u32),
}

impl Zone {
    fn answer(&self, q: &[u8]) -> Vec<u8> {
        let p = Query::parse(q).unwrap();
        let qname = Name::from_wire_lower(p.qname_lower());
        let mut b = MessageBuilder::response(p.id(), flags::QR | flags::RD | flags::RA | flags::AD, p.question_raw());
        let mut any = false;
        let mut exists = false;
        for (n, t, ttl, data) in &self.records {
            let owner = Name::parse(n).unwrap();
            if owner == qname {
                exists = true;
                if *t == p.qtype || *t == rtype::CNAME {
                    b.put_record(1, Some(&owner), *t, 1, *ttl, data);
                    any = true;
                }
            }
        }
        let mut rc = 0;
        if !any {
            let zone = Name::parse(self.soa.0).unwrap();
            let mut rd = zone.wire().to_vec();
            rd.extend_from_slice(zone.wire());
            for v in [1u32, 2, 3, 4, self.soa.1] {
                rd.extend_from_slice(&v.to_be_bytes());
            }
            b.put_record(2, Some(&zone), rtype::SOA, 1, self.soa.1, &rd);
            if !exists {
                rc = rcode::NXDOMAIN;
            }
        }
        let mut m = b.finish();
        m[3] |= rc;
        m
    }
}

fn a(ip: [u8; 4]) -> Vec<u8> {
    ip.to_vec()
}

fn name_rdata(n: &str) -> Vec<u8> {
    Name::parse(n).unwrap().wire().to_vec()
}

/// Drives a query through the core against `zone`; returns the answer and the
/// upstream queries seen.
fn run(st: &State, q: &[u8], zone: &Zone, transport: Transport) -> (Vec<u8>, Vec<UpstreamQuery>) {
    match handle(
        st,
        &Cache::new(CacheSettings::default()),
        q,
        LOCAL,
        transport,
        Instant::now(),
    ) {
        Action::Reply(b) | Action::Cached(b, _) => (b, vec![]),
        Action::Drop => (vec![], vec![]),
        Action::Forward(_) => (zone.answer(q), vec![]),
        Action::Resolve(mut res, _) => {
            let mut seen = Vec::new();
            while let Some(uq) = res.next_query() {
                let resp = zone.answer(&uq.message);
                seen.push(uq);
                res.on_response(&resp, &st.table, &st.settings);
                assert!(seen.len() < 20);
            }
            (fit(res.into_answer(), &Query::parse(q).unwrap(), transport), seen)
        }
    }
}

fn zone() -> Zone {
    let mut records = vec![
        ("registry.public.test", rtype::CNAME, 300, name_rdata("edge.cdn.test")),
        ("edge.cdn.test", rtype::A, 120, a([192, 0, 2, 10])),
        ("v4only.public.test", rtype::A, 300, a([192, 0, 2, 20])),
        ("gone.public.test", rtype::CNAME, 300, name_rdata("missing.cdn.test")),
    ];
    for i in 0..40u8 {
        records.push(("big.public.test", rtype::A, 60, a([198, 51, 100, i])));
    }
    Zone {
        records,
        soa: ("public.test", 60),
    }
}

fn parse(b: &[u8]) -> Response {
    // hickory-proto as an independent oracle that the message is valid.
    hickory_proto::op::Message::from_vec(b).expect("hickory parses our answer");
    Response::parse(b).unwrap()
}

fn routes() -> State {
    state(concat!(
        "        - source: registry.corp.example\n          destination: registry.public.test\n",
        "        - source: v4.corp.example\n          destination: v4only.public.test\n",
        "        - source: nx.corp.example\n          destination: gone.public.test\n",
        "        - source: big.corp.example\n          destination: big.public.test\n",
        "        - source: ip.corp.example\n          destination: 192.0.2.99\n",
        "        - source: \"*.w.corp.example\"\n          destination: \"*.public.test\"\n",
        "        - source: hop.corp.example\n          destination: registry.corp.example\n",
    ))
}

#[test]
fn routed_answer_has_complete_chain_and_echoes_question() {
    let st = routes();
    let q = query("ReGiStRy.Corp.Example", rtype::A, None, 0);
    let (ans, ups) = run(&st, &q, &zone(), Transport::Udp);
    // The question is echoed byte for byte.
    assert_eq!(&ans[12..12 + q.len() - 12], &q[12..]);
    assert_eq!(ans[0..2], [0xab, 0xcd]);
    let r = parse(&ans);
    assert_eq!(r.rcode(), rcode::NOERROR);
    assert_eq!(r.flags & flags::AD, 0, "AD is cleared on synthesized answers");
    let types: Vec<u16> = r.answers.iter().map(|a| a.rtype).collect();
    assert_eq!(types, vec![rtype::CNAME, rtype::CNAME, rtype::A]);
    assert_eq!(r.answers[0].ttl, 30);
    assert_eq!(r.answers[0].cname_target().unwrap().to_string(), "registry.public.test");
    assert_eq!(r.answers[2].ttl, 120, "destination records keep the upstream TTL");
    // The chain left public.test for cdn.test: the core asked for it itself.
    let asked: Vec<String> = ups.iter().map(|u| u.name.to_string()).collect();
    assert_eq!(asked, vec!["registry.public.test", "edge.cdn.test"]);
    assert!(r.edns.is_none(), "no OPT for a client without EDNS");
}

#[test]
fn nodata_for_ipv4_only_destination_keeps_soa() {
    let st = routes();
    let (ans, _) = run(
        &st,
        &query("v4.corp.example", rtype::AAAA, None, 0),
        &zone(),
        Transport::Udp,
    );
    let r = parse(&ans);
    assert_eq!(r.rcode(), rcode::NOERROR);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].rtype, rtype::CNAME);
    assert_eq!(r.authority.len(), 1);
    assert_eq!(r.authority[0].rtype, rtype::SOA);
    assert_eq!(r.authority[0].owner.to_string(), "public.test");
}

#[test]
fn nxdomain_destination_keeps_cname() {
    let st = routes();
    let (ans, _) = run(
        &st,
        &query("nx.corp.example", rtype::A, None, 0),
        &zone(),
        Transport::Udp,
    );
    let r = parse(&ans);
    assert_eq!(r.rcode(), rcode::NXDOMAIN);
    assert_eq!(r.answers[0].rtype, rtype::CNAME);
    assert!(r.authority.iter().any(|a| a.rtype == rtype::SOA));
}

#[test]
fn ip_destination_answers_itself() {
    let st = routes();
    let (ans, ups) = run(
        &st,
        &query("IP.corp.example", rtype::A, None, 0),
        &zone(),
        Transport::Udp,
    );
    assert!(ups.is_empty());
    let r = parse(&ans);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].rdata, vec![192, 0, 2, 99]);
    assert_eq!(&ans[12..12 + 17], &query("IP.corp.example", rtype::A, None, 0)[12..29]);
    for t in [rtype::AAAA, rtype::TXT, rtype::MX] {
        let (ans, _) = run(&st, &query("ip.corp.example", t, None, 0), &zone(), Transport::Udp);
        let r = parse(&ans);
        assert_eq!(r.rcode(), rcode::NOERROR, "type {t}");
        assert!(r.answers.is_empty());
        assert_eq!(r.authority[0].rtype, rtype::SOA);
        assert_eq!(r.authority[0].owner.to_string(), "ip.corp.example");
        assert_eq!(r.authority[0].soa_minimum(), Some(30));
    }
}

#[test]
fn wildcard_keeps_prefix_and_apex_is_forwarded() {
    let st = routes();
    let (ans, ups) = run(
        &st,
        &query("v4only.w.corp.example", rtype::A, None, 0),
        &zone(),
        Transport::Udp,
    );
    assert_eq!(ups[0].name.to_string(), "v4only.public.test");
    let r = parse(&ans);
    assert_eq!(r.answers.last().unwrap().rdata, vec![192, 0, 2, 20]);
    assert!(matches!(
        handle(
            &st,
            &Cache::new(CacheSettings::default()),
            &query("w.corp.example", rtype::A, None, 0),
            LOCAL,
            Transport::Udp,
            Instant::now()
        ),
        Action::Forward(_)
    ));
}

#[test]
fn route_chain_is_followed() {
    let st = routes();
    let (ans, ups) = run(
        &st,
        &query("hop.corp.example", rtype::A, None, 0),
        &zone(),
        Transport::Udp,
    );
    let r = parse(&ans);
    let targets: Vec<String> = r
        .answers
        .iter()
        .filter_map(|a| a.cname_target())
        .map(|n| n.to_string())
        .collect();
    assert_eq!(
        targets,
        vec!["registry.corp.example", "registry.public.test", "edge.cdn.test"]
    );
    assert_eq!(ups[0].name.to_string(), "registry.public.test");
}

#[test]
fn route_loop_at_run_time_is_servfail() {
    // Validation refuses this config; build the table directly to prove the
    // core still stops.
    let mut cfg = config::parse_str(
        "spec:\n  infrastructure:\n    executorPrivateDNS:\n      routes:\n        - source: a.corp\n          destination: b.pub\n        - source: b.corp\n          destination: c.pub\n",
    )
    .config
    .unwrap();
    cfg.routes[0].destination = config::Destination::Name(Name::parse("b.corp").unwrap());
    cfg.routes[1].destination = config::Destination::Name(Name::parse("a.corp").unwrap());
    let st = state_from(cfg);
    let (ans, ups) = run(&st, &query("a.corp", rtype::A, None, 0), &zone(), Transport::Udp);
    assert!(ups.is_empty());
    assert_eq!(parse(&ans).rcode(), rcode::SERVFAIL);
}

#[test]
fn flatten_renames_final_records() {
    let mut st = routes();
    st.settings.flatten = true;
    let (ans, _) = run(
        &st,
        &query("registry.corp.example", rtype::A, None, 0),
        &zone(),
        Transport::Udp,
    );
    let r = parse(&ans);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].rtype, rtype::A);
    assert_eq!(r.answers[0].owner.to_string(), "registry.corp.example");
    assert_eq!(r.answers[0].ttl, 120);
}

#[test]
fn edns_is_our_own_and_do_follows_client() {
    let st = routes();
    let q = query("registry.corp.example", rtype::A, Some((4096, true)), flags::CD);
    let (ans, ups) = run(&st, &q, &zone(), Transport::Udp);
    let r = parse(&ans);
    let e = r.edns.unwrap();
    assert_eq!(e.udp_size, OUR_UDP_SIZE);
    assert!(e.dnssec_ok);
    assert_ne!(r.flags & flags::CD, 0, "CD passes through");
    let up = Query::parse(&ups[0].message).unwrap();
    assert!(up.dnssec_ok());
    assert!(up.header().cd());
    // Without DO from the client, none upstream.
    let q = query("registry.corp.example", rtype::A, Some((1232, false)), 0);
    let (_, ups) = run(&st, &q, &zone(), Transport::Udp);
    assert!(!Query::parse(&ups[0].message).unwrap().dnssec_ok());
}

#[test]
fn oversize_udp_answer_is_truncated_and_whole_over_tcp() {
    let st = routes();
    let q = query("big.corp.example", rtype::A, None, 0);
    let (ans, _) = run(&st, &q, &zone(), Transport::Udp);
    assert!(ans.len() <= 512);
    let h = Header(&ans);
    assert!(h.tc());
    assert_eq!(h.ancount(), 0);
    assert_eq!(&ans[12..], &q[12..], "question echoed in the TC answer");
    let (ans, _) = run(&st, &q, &zone(), Transport::Tcp);
    let r = parse(&ans);
    assert!(!r.truncated());
    assert_eq!(r.answers.iter().filter(|a| a.rtype == rtype::A).count(), 40);
    // With a big EDNS buffer it fits over UDP too.
    let q = query("big.corp.example", rtype::A, Some((4096, false)), 0);
    let (ans, _) = run(&st, &q, &zone(), Transport::Udp);
    assert!(!Header(&ans).tc());
}

#[test]
fn refused_and_malformed() {
    let mut st = routes();
    st.settings.allow = vec!["10.61.0.0/16".parse().unwrap()];
    let q = query("ReGistry.corp.example", rtype::A, None, 0);
    let Action::Reply(b) = handle(
        &st,
        &Cache::new(CacheSettings::default()),
        &q,
        LOCAL,
        Transport::Udp,
        Instant::now(),
    ) else {
        panic!()
    };
    assert_eq!(Header(&b).rcode(), rcode::REFUSED);
    assert_eq!(&b[12..], &q[12..]);
    let st = routes();
    // Label length running past the end.
    let mut bad = query("a.corp", rtype::A, None, 0);
    bad[12] = 60;
    let Action::Reply(b) = handle(
        &st,
        &Cache::new(CacheSettings::default()),
        &bad,
        LOCAL,
        Transport::Udp,
        Instant::now(),
    ) else {
        panic!()
    };
    assert_eq!(Header(&b).rcode(), rcode::FORMERR);
    assert_eq!(b[0..2], [0xab, 0xcd]);
    // Responses and runts are never answered.
    let mut resp = q.clone();
    resp[2] |= 0x80;
    assert!(matches!(
        handle(
            &st,
            &Cache::new(CacheSettings::default()),
            &resp,
            LOCAL,
            Transport::Udp,
            Instant::now()
        ),
        Action::Drop
    ));
    assert!(matches!(
        handle(
            &st,
            &Cache::new(CacheSettings::default()),
            &q[..5],
            LOCAL,
            Transport::Udp,
            Instant::now()
        ),
        Action::Drop
    ));
    // NOTIFY (opcode 4) is not implemented.
    let mut notify = q.clone();
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let Action::Reply(b) = handle(
        &st,
        &Cache::new(CacheSettings::default()),
        &notify,
        LOCAL,
        Transport::Udp,
        Instant::now(),
    ) else {
        panic!()
    };
    assert_eq!(Header(&b).rcode(), rcode::NOTIMP);
}

#[test]
fn forwarded_answer_restores_id_and_case() {
    let q = query("WwW.Example.Test", rtype::A, None, 0);
    let mut up = q.clone();
    wire::set_id(&mut up, 7);
    for b in &mut up[12..] {
        b.make_ascii_lowercase();
    }
    up[2] |= 0x80;
    let out = finish_forward(&q, up.clone(), Transport::Udp).unwrap();
    assert_eq!(out[0..2], [0xab, 0xcd]);
    assert_eq!(&out[12..], &q[12..]);
    assert_eq!(&out[2..12], &up[2..12]);
    // An answer to another question is not passed on.
    let other = query("other.test", rtype::A, None, 0);
    let mut o = other.clone();
    o[2] |= 0x80;
    assert!(finish_forward(&q, o, Transport::Udp).is_none());
    assert_eq!(read_u16(&out, 4), Some(1));
}

#[test]
fn cname_query_gets_the_synthesized_cname_only() {
    let st = routes();
    let (ans, ups) = run(
        &st,
        &query("registry.corp.example", rtype::CNAME, None, 0),
        &zone(),
        Transport::Udp,
    );
    assert!(ups.is_empty());
    let r = parse(&ans);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].cname_target().unwrap().to_string(), "registry.public.test");
}
