//! The test harness proves itself, without dnsbridge: knot serves zones on
//! loopback, dig and the raw clients read the right answers, knot stops and
//! starts again on the same address, the fake upstream answers and records, and
//! the process wrapper reads the `bound udp/tcp ADDR` log contract.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ZONE: &str = "\
@ 3600 IN SOA ns hostmaster 7 3600 600 86400 600
@ IN NS ns
ns IN A 192.0.2.53
www 300 IN A 192.0.2.80
www 300 IN AAAA 2001:db8::80
alias 120 IN CNAME www
";

fn example_zone() -> Zone {
    zone("harness.test", ZONE)
}

#[test]
fn knot_answers_dig_and_raw_clients() {
    let knot = Knot::serve(&[example_zone()]);
    assert!(knot.addr().ip().is_loopback());

    let r = dig_parsed(knot.addr(), &["www.harness.test", "A", "+norec"]);
    assert_eq!(r.status, "NOERROR", "{}", r.raw);
    assert!(r.has_flag("qr") && r.has_flag("aa"), "{}", r.raw);
    assert_eq!(r.answer.len(), 1, "{}", r.raw);
    assert_eq!(r.answer[0].name, "www.harness.test.");
    assert_eq!(r.answer[0].ttl, 300);
    assert_eq!(r.answer[0].rtype, "A");
    assert_eq!(r.answer[0].rdata, "192.0.2.80");
    assert!(r.opt.is_some(), "dig sends EDNS by default: {}", r.raw);

    let r = dig_parsed(knot.addr(), &["alias.harness.test", "AAAA", "+noedns"]);
    assert!(r.opt.is_none(), "{}", r.raw);
    assert_eq!(
        r.answer_keys(),
        vec![
            ("alias.harness.test.".into(), "CNAME".into(), "www.harness.test.".into()),
            ("www.harness.test.".into(), "AAAA".into(), "2001:db8::80".into()),
        ],
        "{}",
        r.raw
    );

    let r = dig_parsed(knot.addr(), &["nope.harness.test", "A"]);
    assert_eq!(r.status, "NXDOMAIN", "{}", r.raw);
    assert_eq!(r.authority_soa().len(), 1, "{}", r.raw);
    assert_eq!(r.authority_soa()[0].name, "harness.test.");

    let r = dig_parsed(knot.addr(), &["+tcp", "www.harness.test", "AAAA"]);
    assert_eq!(r.answer_rdata("AAAA"), vec!["2001:db8::80".to_string()], "{}", r.raw);

    // Raw UDP and TCP, with exact letter case and ID.
    let q = QueryBuilder::new("WwW.HaRnEsS.TeSt", RecordType::A).id(0x4242).build();
    for reply in [
        udp_exchange(knot.addr(), &q, EXCHANGE_TIMEOUT).unwrap(),
        tcp_exchange(knot.addr(), &q, EXCHANGE_TIMEOUT).unwrap(),
    ] {
        let w = Wire::parse(&reply);
        assert!(w.error.is_none(), "{}", w.dump());
        assert_eq!(w.id(), 0x4242);
        assert!(w.qr() && w.aa() && w.rd() && !w.tc());
        assert_eq!(w.rcode(), 0);
        assert_eq!(w.question_bytes().unwrap(), Wire::parse(&q).question_bytes().unwrap());
        assert_eq!(w.question_name().unwrap(), "WwW.HaRnEsS.TeSt.");
        assert_eq!(
            w.addresses(Section::Answer),
            vec!["192.0.2.80".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(w.answers()[0].ttl, 300);
        assert!(w.opts().is_empty());
        // hickory-proto parses the same reply.
        let m = parse_message(&reply);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }

    // EDNS with DO: knot returns exactly one OPT with DO set.
    let q = QueryBuilder::new("www.harness.test", RecordType::A)
        .edns(4096, true)
        .build();
    let w = Wire::parse(&udp_exchange(knot.addr(), &q, EXCHANGE_TIMEOUT).unwrap());
    assert_eq!(w.opts().len(), 1, "{}", w.dump());
    assert_ne!(w.opts()[0].ttl & 0x8000, 0, "DO echoed: {}", w.dump());
}

#[test]
fn knot_stops_and_starts_again_on_the_same_address() {
    let mut knot = Knot::serve(&[example_zone()]);
    let addr = knot.addr();
    let q = QueryBuilder::new("www.harness.test", RecordType::A).build();
    assert!(udp_exchange(addr, &q, EXCHANGE_TIMEOUT).is_ok());

    knot.stop();
    assert!(!knot.is_running());
    let t = Instant::now();
    assert!(udp_exchange(addr, &q, Duration::from_millis(300)).is_err());
    assert!(tcp_exchange(addr, &q, Duration::from_millis(300)).is_err());
    assert!(t.elapsed() < Duration::from_secs(2));

    knot.start();
    assert!(knot.is_running());
    assert_eq!(knot.addr(), addr);
    let w = Wire::parse(&udp_exchange(addr, &q, EXCHANGE_TIMEOUT).unwrap());
    assert_eq!(w.rcode(), 0);
    assert_eq!(w.ancount(), 1);
    assert!(knot.log().contains("starting"), "{}", knot.log());
}

#[test]
fn two_knots_on_two_loopback_addresses_serve_different_data() {
    let a = Knot::serve(&[zone(
        "split.test",
        "@ SOA ns h 1 1 1 1 60\n@ NS ns\nns A 192.0.2.1\nx 60 A 192.0.2.1\n",
    )]);
    let b = Knot::serve_at(
        LOCALHOST2,
        &[zone(
            "split.test",
            "@ SOA ns h 2 1 1 1 60\n@ NS ns\nns A 192.0.2.2\nx 60 A 198.51.100.1\n",
        )],
    );
    assert_eq!(b.addr().ip(), LOCALHOST2);
    let ra = dig_parsed(a.addr(), &["x.split.test"]);
    let rb = dig_parsed(b.addr(), &["x.split.test"]);
    assert_eq!(ra.answer_rdata("A"), vec!["192.0.2.1"]);
    assert_eq!(rb.answer_rdata("A"), vec!["198.51.100.1"]);
}

#[test]
fn raw_client_can_send_from_a_chosen_loopback_address() {
    let fake = FakeUpstream::start(|req| {
        let mut m = reply_to(&req.bytes);
        let ip = match req.peer.ip() {
            std::net::IpAddr::V4(v4) => v4,
            _ => unreachable!(),
        };
        m.add_answer(Record::from_rdata(m.queries[0].name().clone(), 5, RData::A(ip.into())));
        Some(m.to_vec().unwrap())
    });
    let q = QueryBuilder::new("who.am.i", RecordType::A).build();
    for local in [LOCALHOST, LOCALHOST2] {
        let w = Wire::parse(&udp_exchange_from(local, fake.addr(), &q, EXCHANGE_TIMEOUT).unwrap());
        assert_eq!(w.addresses(Section::Answer), vec![local]);
        let w = Wire::parse(&tcp_exchange_from(local, fake.addr(), &q, EXCHANGE_TIMEOUT).unwrap());
        assert_eq!(w.addresses(Section::Answer), vec![local]);
    }
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs.iter().filter(|r| r.transport == Transport::Tcp).count(), 2);
    assert_eq!(fake.requests_for("WHO.am.i").len(), 4);
}

#[test]
fn query_builder_sets_flags_and_edns_exactly() {
    let q = QueryBuilder::new("MiXeD.Case.Example", RecordType::AAAA)
        .id(7)
        .cd(true)
        .ad(true)
        .edns(4096, true)
        .build();
    let w = Wire::parse(&q);
    assert!(w.error.is_none(), "{}", w.dump());
    assert_eq!(w.id(), 7);
    assert!(!w.qr() && w.rd() && w.cd() && w.ad());
    assert_eq!(w.question_name().unwrap(), "MiXeD.Case.Example.");
    assert_eq!(w.opts().len(), 1);
    assert_eq!(w.opts()[0].class, 4096);
    assert_eq!(w.opts()[0].ttl, 0x0000_8000);
    let q = QueryBuilder::new("a.example", RecordType::A)
        .rd(false)
        .opcode(OpCode::Status)
        .build();
    let w = Wire::parse(&q);
    assert!(!w.rd());
    assert_eq!(w.opcode(), 2);
    assert!(w.opts().is_empty());
}

#[test]
fn wire_reader_survives_garbage() {
    let mut rng = Rng::new(1);
    for _ in 0..2000 {
        let len = rng.below(80) as usize;
        let w = Wire::parse(&rng.bytes(len));
        let _ = w.dump();
    }
    // A compression loop in the question.
    let mut m = vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let w = Wire::parse(&m);
    assert!(w.error.as_deref().unwrap().contains("loop"), "{:?}", w.error);
}

#[test]
fn process_wrapper_reads_bound_lines_and_kills_on_drop() {
    let script = "echo starting; \
                  echo 'INFO dnsbridge: bound udp 127.0.0.1:40123' >&2; \
                  printf '\\033[32mINFO\\033[0m bound tcp 127.0.0.1:40124 extra=1\\n' >&2; \
                  exec sleep 30";
    let mut p = Proxy::spawn("sh", &["-c", script], READY_TIMEOUT).unwrap();
    assert_eq!(p.udp(), "127.0.0.1:40123".parse::<SocketAddr>().unwrap());
    assert_eq!(p.tcp(), "127.0.0.1:40124".parse::<SocketAddr>().unwrap());
    assert!(p.wait_for_log("starting", Duration::from_secs(2)));
    assert!(p.log().contains("[stdout] starting"), "{}", p.log());
    assert!(p.is_alive());
    let pid = p.pid();
    drop(p);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // a zombie can linger for a moment only if not reaped; we reaped it
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        }
    );

    // Two --listen arguments mean two lines of each kind are awaited.
    let script = "echo 'bound udp [::1]:5353' >&2; echo 'bound tcp [::1]:5353' >&2; \
                  echo 'bound udp 127.0.0.1:5353' >&2; echo 'bound tcp 127.0.0.1:5353' >&2; exec sleep 30";
    let p = Proxy::spawn(
        "sh",
        &["-c", script, "x", "--listen", "a", "--listen", "b"],
        READY_TIMEOUT,
    )
    .unwrap();
    assert_eq!(p.udp_addrs().len(), 2);
    assert_eq!(p.tcp_addrs()[0], "[::1]:5353".parse::<SocketAddr>().unwrap());

    // A program that exits early is reported with its log.
    let err = Proxy::spawn(
        "sh",
        &["-c", "echo 'config error: bad route' >&2; exit 3"],
        READY_TIMEOUT,
    )
    .err()
    .unwrap();
    assert!(err.contains("config error: bad route"), "{err}");

    // One that never logs is given up on in time.
    let t = Instant::now();
    let err = Proxy::spawn("sh", &["-c", "exec sleep 30"], Duration::from_millis(300))
        .err()
        .unwrap();
    assert!(err.contains("did not log"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn bound_line_parser_follows_the_contract() {
    let cases = [
        ("bound udp 127.0.0.1:40123", Some((Transport::Udp, "127.0.0.1:40123"))),
        (
            "2026-01-01T00:00:00Z INFO dnsbridge::net: bound tcp 127.0.2.53:53",
            Some((Transport::Tcp, "127.0.2.53:53")),
        ),
        ("bound udp [::1]:53 (listener 0)", Some((Transport::Udp, "[::1]:53"))),
        ("bound udp \"127.0.0.1:9\"", Some((Transport::Udp, "127.0.0.1:9"))),
        ("binding udp 127.0.0.1:9", None),
        ("bound udp nonsense", None),
    ];
    for (line, want) in cases {
        let got = parse_bound_line(line);
        let want = want.map(|(t, a)| (t, a.parse::<SocketAddr>().unwrap()));
        assert_eq!(got, want, "{line}");
    }
}

#[test]
fn config_files_and_free_ports() {
    let c = write_config("spec: {}\n");
    assert_eq!(std::fs::read_to_string(c.path()).unwrap(), "spec: {}\n");
    assert!(c.arg().ends_with("config.yaml"));
    let a = free_port(LOCALHOST);
    let b = free_port(LOCALHOST);
    assert_ne!(a, b);
    assert!(std::net::UdpSocket::bind((LOCALHOST, a)).is_ok());
    assert!(std::net::TcpListener::bind((LOCALHOST, a)).is_ok());
}

#[test]
fn dig_output_parser_reads_every_part() {
    let out = "\
; <<>> DiG 9.18.49-1~deb12u3-Debian <<>> @127.0.0.1 -p 5353 x.test
;; global options: +cmd
;; Got answer:
;; ->>HEADER<<- opcode: QUERY, status: NXDOMAIN, id: 23019
;; flags: qr rd ra ad cd; QUERY: 1, ANSWER: 1, AUTHORITY: 1, ADDITIONAL: 1

;; OPT PSEUDOSECTION:
; EDNS: version: 0, flags: do; udp: 1232
;; QUESTION SECTION:
;x.test.\t\t\tIN\tA

;; ANSWER SECTION:
x.test.\t\t30\tIN\tCNAME\ty.test.

;; AUTHORITY SECTION:
test.\t\t600\tIN\tSOA\tns.test. h.test. 1 2 3 4 5

;; Query time: 0 msec
;; MSG SIZE  rcvd: 68
";
    let r = DigReply::parse(out).unwrap();
    assert_eq!(r.status, "NXDOMAIN");
    assert_eq!(r.id, 23019);
    assert_eq!(r.flags, vec!["qr", "rd", "ra", "ad", "cd"]);
    assert_eq!(
        r.opt,
        Some(DigOpt {
            version: 0,
            flags: vec!["do".into()],
            udp: 1232
        })
    );
    assert_eq!(r.question, vec!["x.test.\t\t\tIN\tA"]);
    assert_eq!(r.answer.len(), 1);
    assert_eq!(r.answer[0].ttl, 30);
    assert_eq!(r.authority_soa()[0].rdata, "ns.test. h.test. 1 2 3 4 5");
    assert!(r.additional.is_empty());
    assert!(DigReply::parse(";; connection timed out; no servers could be reached\n").is_err());
}
