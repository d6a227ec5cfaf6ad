//! `config::parse_str` on arbitrary UTF-8: it must never panic, every
//! diagnostic must point inside the text, and a config it accepts must build
//! a route table whose sources all route.

#![no_main]

use dnsbridge::config::{self, Severity, Source};
use dnsbridge::route::RouteTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = config::parse_str(text);
    // YAML breaks lines at CRLF, CR and LF (a file saved with bare CRs has
    // more lines than `str::lines` sees).
    let lines = 1 + text.replace("\r\n", "\n").matches(['\r', '\n']).count() as u32;
    for d in &parsed.diagnostics {
        assert!(d.pos.line <= lines, "diagnostic past the end: {d:?}");
        assert!(d.len >= 1);
        assert!(!d.message.is_empty());
    }
    match &parsed.config {
        Some(cfg) => {
            assert!(
                parsed.diagnostics.iter().all(|d| d.severity != Severity::Error),
                "a config was built despite errors"
            );
            let table = RouteTable::new(cfg.routes.clone());
            for r in &cfg.routes {
                if let Source::Exact(n) = &r.source {
                    let m = table.lookup(n.wire()).expect("an exact source routes");
                    assert_eq!(m.route.index, r.index);
                }
            }
            let _ = dnsbridge::telemetry::routes_json(&cfg.routes, 30, false);
        }
        None => assert!(
            parsed.diagnostics.iter().any(|d| d.severity == Severity::Error),
            "no config and no error"
        ),
    }
});
