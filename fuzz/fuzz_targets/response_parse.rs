//! Upstream bytes: `wire::Response::parse` on arbitrary input, then the same
//! bytes (and variants with the right header and question) fed to a routed
//! query's `Resolution::on_response`, whose answer must stay a valid reply to
//! the client's question.
//!
//! Input: one byte choosing the client's query (name, type, EDNS, transport),
//! then the upstream answer bytes.

#![no_main]

mod common;

use std::sync::OnceLock;

use dnsbridge::core::{Action, State, Transport};
use dnsbridge::name::Name;
use dnsbridge::wire::{self, MessageBuilder, Response, flags, rtype};
use libfuzzer_sys::fuzz_target;

static STATE: OnceLock<State> = OnceLock::new();

const NAMES: [&str; 6] = [
    "Registry.Corp.Example",
    "a.b.NPM.corp.example",
    "x.corp.example",
    "flat.corp.example",
    "chain.corp.example",
    "loop.public.example",
];
const TYPES: [u16; 8] = [
    rtype::A,
    rtype::AAAA,
    rtype::CNAME,
    rtype::MX,
    rtype::TXT,
    rtype::HTTPS,
    rtype::ANY,
    rtype::SOA,
];

fuzz_target!(|data: &[u8]| {
    // The parser on its own, on the raw bytes.
    if let Ok(r) = Response::parse(data) {
        for rec in r.answers.iter().chain(&r.authority) {
            let _ = rec.cname_target();
            let _ = rec.soa_minimum();
            assert!(rec.ttl <= 0x7fff_ffff);
        }
    }
    let state = STATE.get_or_init(common::state);
    let mut input = common::Bytes(data);
    let sel = input.byte();
    let mode = input.byte();
    let upstream = input.0;
    let qname = Name::parse(NAMES[sel as usize % NAMES.len()]).unwrap();
    let qtype = TYPES[(sel as usize / NAMES.len()) % TYPES.len()];
    let mut b = MessageBuilder::query(0xbeef, flags::RD | flags::CD, &qname, qtype);
    if mode & 1 != 0 {
        b.put_opt(if mode & 2 != 0 { 512 } else { 4096 }, 0, mode & 4 != 0, &[]);
    }
    let mut query = b.finish();
    // Mixed case in the question, as a client may send it.
    if let Some(c) = query.get_mut(wire::HEADER_LEN + 1) {
        c.make_ascii_uppercase();
    }
    let transport = if mode & 8 != 0 { Transport::Tcp } else { Transport::Udp };
    let cache = common::cache();
    let now = tokio::time::Instant::now();
    let Action::Resolve(res, _) = dnsbridge::core::handle(state, &cache, &query, common::ALLOWED, transport, now)
    else {
        // IP destinations answer at once; checked by query_parse.
        return;
    };
    let mut step = 0u32;
    let mut failed = false;
    let answer = common::drive(state, *res, &mut failed, |uq| {
        step += 1;
        if step == 1 && mode & 0x30 == 0 {
            // The raw fuzz bytes as the answer.
            return Some(upstream.to_vec());
        }
        // The right header and question followed by fuzz records, so that
        // the record handling is reached; later hops get scripted answers.
        if step == 1 {
            let mut m = MessageBuilder::response(0, flags::QR | flags::RA, &uq.message[12..]).finish();
            // Replace counts and flags with fuzz-chosen ones.
            if upstream.len() >= 8 {
                m[2..4].copy_from_slice(&upstream[..2]);
                m[2] |= 0x80;
                m[6..12].copy_from_slice(&upstream[2..8]);
                m.extend_from_slice(&upstream[8..]);
            }
            return Some(m);
        }
        common::scripted_answer(uq, (step as u8).wrapping_mul(mode), upstream)
    });
    // Whole, as cached; then fitted to the client.
    common::check_answer(&query, &answer, Transport::Tcp, true);
    let q = dnsbridge::wire::Query::parse(&query).expect("the query parses");
    common::check_answer(&query, &dnsbridge::core::fit(answer, &q, transport), transport, true);
});
