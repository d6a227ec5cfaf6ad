//! A client's packet through `wire::Query::parse` and `core::handle`, with a
//! scripted upstream for routed names, so that every `Action` (reply, drop,
//! forward, resolve) and the answer assembly behind it run on arbitrary
//! input.
//!
//! Input: one control byte (bit 0: denied client, bit 1: TCP), one byte
//! giving the script length, the script (upstream answer choices), then the
//! packet.

#![no_main]

mod common;

use std::sync::OnceLock;

use dnsbridge::core::{State, Transport};
use libfuzzer_sys::fuzz_target;

static STATE: OnceLock<State> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let state = STATE.get_or_init(common::state);
    let mut input = common::Bytes(data);
    let ctl = input.byte();
    let n = input.byte() as usize;
    let script = input.take(n);
    let packet = input.0;
    // The parser alone first: it must never panic, and what it reads must
    // lie inside the packet.
    if let Ok(q) = dnsbridge::wire::Query::parse(packet) {
        assert!(q.question_end <= packet.len());
        assert!(!q.qname_lower().is_empty());
        assert_eq!(q.question_raw().len() + 12, q.question_end);
    }
    let client = if ctl & 1 == 0 { common::ALLOWED } else { common::DENIED };
    let transport = if ctl & 2 == 0 { Transport::Udp } else { Transport::Tcp };
    common::run_query(state, packet, client, transport, script);
});
