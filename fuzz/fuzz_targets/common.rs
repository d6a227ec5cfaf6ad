//! Fixtures shared by the fuzz targets: a fixed route table that reaches
//! every branch of the core, a scripted upstream, and the invariants every
//! answer must keep.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use std::time::Duration;

use dnsbridge::cache::{Cache, CacheSettings};
use dnsbridge::config;
use dnsbridge::core::{self, Action, Resolution, Settings, State, Transport, UpstreamQuery};
use dnsbridge::name::Name;
use dnsbridge::route::RouteTable;
use dnsbridge::wire::{self, MessageBuilder, Query, Response, flags, rcode, rtype};

/// Routes for every kind of source and destination: exact and wildcard
/// sources, name, `*.suffix2` and IP destinations (v4 only, v4+v6), a chain
/// of routes, a loop reachable only through an upstream CNAME, `resolverIP`,
/// per-route flatten and TTL.
pub const ROUTES: &str = r#"
spec:
  infrastructure:
    executorPrivateDNS:
      proxyTag: 202311201628
      routes:
        - source: registry.corp.example
          destination: lb.public.example
        - source: "*.npm.corp.example"
          destination: "*.npm-mirror.example"
        - source: "*.corp.example"
          destination: wild.public.example
          resolverIP: 127.0.0.1
        - source: psc.corp.example
          destination: 192.0.2.10
        - source: dual.corp.example
          destination: 192.0.2.11, 2001:db8::11
        - source: chain.corp.example
          destination: hop.internal.example
        - source: hop.internal.example
          destination: 192.0.2.12
        - source: flat.corp.example
          destination: lb.public.example
          flatten: true
          ttl: 5
        - source: loop.public.example
          destination: registry.corp.example
"#;

pub fn state() -> State {
    let p = config::parse_str(ROUTES);
    let cfg = p
        .config
        .unwrap_or_else(|| panic!("fuzz routes are invalid: {:?}", p.diagnostics));
    State {
        table: RouteTable::new(cfg.routes),
        settings: Settings {
            allow: cfg.runtime.allow,
            cname_ttl: 30,
            flatten: false,
        },
    }
}

/// A small cache, new for each input so that runs do not depend on each
/// other.
pub fn cache() -> Cache {
    Cache::new(CacheSettings {
        max_bytes: 64 << 10,
        stale_for: Duration::from_secs(86_400),
        ..CacheSettings::default()
    })
}

pub const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const DENIED: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99));

/// Takes bytes from the front of the fuzz input.
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// A scripted upstream answer to `uq`, chosen by `sel`: every shape the
/// resolution must handle (final records, CNAME chains in and out of the
/// zone, back into a routed name, NXDOMAIN, NODATA, errors, garbage, another
/// question). None means "no upstream answered".
pub fn scripted_answer(uq: &UpstreamQuery, sel: u8, extra: &[u8]) -> Option<Vec<u8>> {
    let q = Query::parse(&uq.message).expect("the core's upstream query parses");
    let id = q.id();
    let question = q.question_raw();
    let qt = uq.qtype;
    let fin = |b: &mut MessageBuilder, owner: &Name| {
        let data: &[u8] = match qt {
            rtype::AAAA => &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            rtype::MX => b"\x00\x0a\x02mx\x07example\x00",
            rtype::TXT => b"\x05hello",
            _ => &[192, 0, 2, 1],
        };
        let t = if qt == rtype::ANY { rtype::A } else { qt };
        b.put_record(1, Some(owner), t, 1, 300, data);
    };
    let soa = |b: &mut MessageBuilder| {
        let mut rd = name("example").wire().to_vec();
        rd.extend_from_slice(name("hostmaster.example").wire());
        for v in [1u32, 3600, 600, 86400, 60] {
            rd.extend_from_slice(&v.to_be_bytes());
        }
        b.put_record(2, Some(&name("example")), rtype::SOA, 1, 60, &rd);
    };
    let ok = flags::QR | flags::RD | flags::RA | flags::AD;
    let mut b = MessageBuilder::response(id, ok, question);
    match sel % 12 {
        0 => fin(&mut b, &uq.name),
        1 => {
            // In-zone chain, records out of order.
            let mid = name("cdn.edge.example");
            fin(&mut b, &mid);
            b.put_record(1, Some(&uq.name), rtype::CNAME, 1, 60, mid.wire());
        }
        2 => {
            // Chain that leaves the zone: the core must follow it.
            let out = name("elsewhere.example");
            b.put_record(1, Some(&uq.name), rtype::CNAME, 1, 60, out.wire());
        }
        3 => {
            // Back into a routed name: a loop the core must stop.
            let back = name("registry.corp.example");
            b.put_record(1, Some(&uq.name), rtype::CNAME, 1, 60, back.wire());
        }
        4 => {
            b.set_flags(ok | rcode::NXDOMAIN as u16);
            soa(&mut b);
        }
        5 => soa(&mut b),
        6 => b.set_flags(ok | rcode::SERVFAIL as u16),
        7 => return None,
        8 => {
            // Another question.
            let mut other = MessageBuilder::query(id, ok, &name("other.example"), qt);
            fin(&mut other, &name("other.example"));
            return Some(other.finish());
        }
        9 => {
            // A CNAME cycle inside the answer.
            let a = name("a.cyc.example");
            b.put_record(1, Some(&uq.name), rtype::CNAME, 1, 60, a.wire());
            b.put_record(1, Some(&a), rtype::CNAME, 1, 60, uq.name.wire());
        }
        10 => {
            // The right header and question, then fuzz bytes as the records.
            let mut m = b.finish();
            if extra.len() >= 6 {
                m[6..12].copy_from_slice(&extra[..6]);
                m.extend_from_slice(&extra[6..]);
            }
            return Some(m);
        }
        _ => {
            // Fuzz bytes as the whole message.
            return Some(extra.to_vec());
        }
    }
    if sel & 0x80 != 0 {
        b.put_opt(1232, 0, true, &[]);
    }
    Some(b.finish())
}

/// Runs a resolution to the end with `next_answer`, at most `max_steps`
/// upstream exchanges (the core must finish by itself well before).
pub fn drive(
    state: &State,
    mut res: Resolution,
    failed: &mut bool,
    mut next_answer: impl FnMut(&UpstreamQuery) -> Option<Vec<u8>>,
) -> Vec<u8> {
    let mut steps = 0;
    while let Some(uq) = res.next_query() {
        steps += 1;
        assert!(steps <= 64, "a resolution did not finish");
        assert_eq!(wire::Header(&uq.message).id(), 0);
        match next_answer(&uq) {
            Some(a) => res.on_response(&a, &state.table, &state.settings),
            None => res.on_upstream_failure(),
        }
    }
    *failed = res.upstream_failed;
    res.into_answer()
}

/// Every answer keeps the client's ID, is a response, and echoes the
/// question byte for byte; with `strict`, our own parser reads it back (not
/// for forwarded answers, whose records are the upstream's bytes untouched).
pub fn check_answer(query: &[u8], answer: &[u8], transport: Transport, strict: bool) {
    assert!(answer.len() >= wire::HEADER_LEN, "answer shorter than a header");
    assert_eq!(answer[..2], query[..2], "answer ID differs from the query's");
    let h = wire::Header(answer);
    assert!(h.qr(), "answer without QR");
    if transport == Transport::Udp
        && let Ok(q) = Query::parse(query)
    {
        assert!(
            answer.len() <= q.udp_limit(),
            "UDP answer of {} bytes over the client's limit {}",
            answer.len(),
            q.udp_limit()
        );
    }
    if transport == Transport::Tcp {
        assert!(answer.len() <= 65535, "TCP answer too long to frame");
    }
    if let Ok(q) = Query::parse(query) {
        let qr = q.question_raw();
        assert_eq!(h.qdcount(), 1);
        assert_eq!(
            &answer[wire::HEADER_LEN..wire::HEADER_LEN + qr.len()],
            qr,
            "question not echoed"
        );
        if strict {
            let r = Response::parse(answer).expect("our own answer parses");
            assert_eq!(r.qtype, q.qtype);
        }
    }
}

/// Handles `packet` through the core as the server does (cache lookup,
/// scripted upstream, cache insert, fitting to the client), then asks again
/// with the letter case flipped: fresh from the cache, then stale.
pub fn run_query(state: &State, packet: &[u8], client: IpAddr, transport: Transport, script: &[u8]) {
    let mut script = Bytes(script);
    let cache = cache();
    let now = tokio::time::Instant::now();
    // A forwarded answer holds the upstream's records untouched: our parser
    // need not accept them, in the cache either.
    let mut strict_again = true;
    match core::handle(state, &cache, packet, client, transport, now) {
        Action::Reply(a) | Action::Cached(a, _) => check_answer(packet, &a, transport, true),
        Action::Drop => {}
        Action::Forward(miss) => {
            strict_again = false;
            // The upstream echoes the question lowercased, as many do.
            let q = Query::parse(packet).expect("a forwarded query parses");
            let mut echo = q.question_raw().to_vec();
            echo.make_ascii_lowercase();
            let mut b = MessageBuilder::response(0x5555, flags::QR | flags::RA, &echo);
            for _ in 0..script.byte() % 8 {
                b.put_record(1, None, q.qtype, q.qclass, 60, script.take(40));
            }
            let resp = b.finish();
            if let Some(full) = core::finish_forward(packet, resp, Transport::Tcp) {
                cache.insert(miss.key.clone(), &full, false, now);
                check_answer(packet, &core::fit(full, &q, transport), transport, false);
            }
            if let Some(a) = core::upstream_failure(packet, miss.stale.as_deref(), transport, now) {
                check_answer(packet, &a, transport, true);
            }
        }
        Action::Resolve(res, miss) => {
            let q = Query::parse(packet).expect("a routed query parses");
            let mut failed = false;
            let a = drive(state, *res, &mut failed, |uq| {
                let sel = script.byte();
                let n = script.byte() as usize;
                let extra = script.take(n * 4);
                scripted_answer(uq, sel, extra)
            });
            check_answer(packet, &a, Transport::Tcp, true);
            if failed {
                if let Some(a) = core::upstream_failure(packet, miss.stale.as_deref(), transport, now) {
                    check_answer(packet, &a, transport, true);
                }
            } else {
                cache.insert(miss.key.clone(), &a, true, now);
                check_answer(packet, &core::fit(a, &q, transport), transport, true);
            }
        }
    }
    // Again, in another letter case: served from the cache when stored.
    let mut again = packet.to_vec();
    if let Ok(q) = Query::parse(packet) {
        again[wire::HEADER_LEN..q.qname_end].copy_from_slice(&flip_case(&packet[wire::HEADER_LEN..q.qname_end]));
    }
    for later in [now + Duration::from_secs(1), now + Duration::from_secs(86_401)] {
        match core::handle(state, &cache, &again, client, transport, later) {
            Action::Reply(a) | Action::Cached(a, _) => check_answer(&again, &a, transport, strict_again),
            Action::Drop => {}
            Action::Forward(miss) | Action::Resolve(_, miss) => {
                if let Some(a) = core::upstream_failure(&again, miss.stale.as_deref(), transport, later) {
                    check_answer(&again, &a, transport, strict_again || miss.stale.is_none());
                }
            }
        }
    }
}

/// Flips the letter case in a wire name's labels (not the length bytes).
fn flip_case(name: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    let mut i = 0;
    while i < out.len() {
        let len = out[i] as usize;
        for b in out.iter_mut().skip(i + 1).take(len) {
            if b.is_ascii_alphabetic() {
                *b ^= 0x20;
            }
        }
        i += 1 + len;
    }
    out
}
