//! Telemetry: Prometheus metrics and the operator's HTTP endpoints.
//!
//! [`Metrics`] is shared (in an `Arc`) by every task. Its hot-path methods
//! touch one or two `AtomicU64`s in fixed arrays indexed by small enums, so a
//! query costs no allocation and no lock. Per-route and per-upstream arrays
//! live behind an [`ArcSwap`] so that a reload can replace them; a load of it
//! is lock-free as well. Label strings are only built when `/metrics` is
//! scraped, by [`Metrics::render`], in the Prometheus text exposition format
//! 0.0.4.
//!
//! [`http::serve_http`] serves `/metrics`, `/healthz`, `/readyz` and
//! `/routes`; the server answers the questions only it can (is it ready,
//! which routes are active) through the [`Status`] trait.

pub mod http;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{Destination, Route, Source};
use crate::core::Transport;
use crate::wire::{self, rcode, rtype};

pub use http::{CONTENT_TYPE_METRICS, serve_http};

const R: Ordering = Ordering::Relaxed;

/// Query types counted under their own label; everything else is `other`.
pub const QTYPES: [(&str, u16); 12] = [
    ("A", rtype::A),
    ("AAAA", rtype::AAAA),
    ("CNAME", rtype::CNAME),
    ("HTTPS", rtype::HTTPS),
    ("SVCB", rtype::SVCB),
    ("TXT", rtype::TXT),
    ("MX", rtype::MX),
    ("SRV", rtype::SRV),
    ("PTR", rtype::PTR),
    ("NS", rtype::NS),
    ("SOA", rtype::SOA),
    ("ANY", rtype::ANY),
];
const N_QTYPE: usize = QTYPES.len() + 1;

/// Response codes counted under their own label; everything else is `other`.
pub const RCODES: [(&str, u8); 6] = [
    ("NOERROR", rcode::NOERROR),
    ("NXDOMAIN", rcode::NXDOMAIN),
    ("SERVFAIL", rcode::SERVFAIL),
    ("REFUSED", rcode::REFUSED),
    ("FORMERR", rcode::FORMERR),
    ("NOTIMP", rcode::NOTIMP),
];
const N_RCODE: usize = RCODES.len() + 1;
const N_TRANSPORT: usize = 2;

/// Bucket of a query type in the `qtype` label.
pub fn qtype_index(qtype: u16) -> usize {
    QTYPES.iter().position(|&(_, t)| t == qtype).unwrap_or(QTYPES.len())
}

/// Bucket of a response code in the `rcode` label.
pub fn rcode_index(rc: u8) -> usize {
    RCODES.iter().position(|&(_, c)| c == rc).unwrap_or(RCODES.len())
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

/// Why one upstream attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No answer within the per-attempt timeout.
    Timeout,
    /// The upstream answered SERVFAIL.
    Servfail,
    /// The upstream answered REFUSED.
    Refused,
    /// The answer did not match the query (ID, source or question): dropped.
    Mismatch,
    /// A socket error (send failed, TCP connection refused or reset).
    Io,
}

impl FailReason {
    pub const ALL: [FailReason; 5] = [
        FailReason::Timeout,
        FailReason::Servfail,
        FailReason::Refused,
        FailReason::Mismatch,
        FailReason::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::Servfail => "servfail",
            FailReason::Refused => "refused",
            FailReason::Mismatch => "mismatch",
            FailReason::Io => "io",
        }
    }
}
const N_REASON: usize = FailReason::ALL.len();

/// Upper bounds (seconds) of the upstream latency histogram buckets; `+Inf`
/// is implied. From a loopback resolver (0.25 ms) to a timeout (seconds).
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const N_BUCKET: usize = LATENCY_BUCKETS.len() + 1;
/// The bucket bounds in nanoseconds, so that an observation compares
/// integers.
const BUCKET_NANOS: [u64; 14] = {
    let mut out = [0u64; 14];
    let micros: [u64; 14] = [
        250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
        5_000_000,
    ];
    let mut i = 0;
    while i < 14 {
        out[i] = micros[i] * 1000;
        i += 1;
    }
    out
};

/// Counters of one upstream.
struct UpstreamCounters {
    addr: SocketAddr,
    /// Per bucket, not cumulative (summed at render time); last is +Inf.
    buckets: [AtomicU64; N_BUCKET],
    sum_nanos: AtomicU64,
    count: AtomicU64,
    failures: [AtomicU64; N_REASON],
    up: AtomicU64,
}

impl UpstreamCounters {
    fn new(addr: SocketAddr) -> UpstreamCounters {
        UpstreamCounters {
            addr,
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
            failures: Default::default(),
            // Presumed healthy until real traffic says otherwise.
            up: AtomicU64::new(1),
        }
    }

    fn carry_from(&self, old: &UpstreamCounters) {
        for (n, o) in self.buckets.iter().zip(&old.buckets) {
            n.fetch_add(o.load(R), R);
        }
        self.sum_nanos.fetch_add(old.sum_nanos.load(R), R);
        self.count.fetch_add(old.count.load(R), R);
        for (n, o) in self.failures.iter().zip(&old.failures) {
            n.fetch_add(o.load(R), R);
        }
        self.up.store(old.up.load(R), R);
    }
}

struct RouteCounters {
    names: Vec<String>,
    answers: Box<[AtomicU64]>,
}

/// The proxy's metrics. Create one, wrap it in an `Arc`, hand clones to every
/// task; call [`Metrics::set_routes`] and [`Metrics::set_upstreams`] at
/// start and on every reload.
pub struct Metrics {
    started: SystemTime,
    queries: [AtomicU64; N_TRANSPORT * N_QTYPE * N_RCODE],
    routes: ArcSwap<RouteCounters>,
    upstreams: ArcSwap<Vec<UpstreamCounters>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_entries: AtomicU64,
    cache_bytes: AtomicU64,
    cache_stale_served: AtomicU64,
    reloads: [AtomicU64; 2],
    last_reload_success_ms: AtomicU64,
    rate_limited: AtomicU64,
    refused: AtomicU64,
    dropped: AtomicU64,
    forwarding_loops: AtomicU64,
    tcp_connections: AtomicU64,
    egress_added: AtomicU64,
    egress_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            started: SystemTime::now(),
            queries: std::array::from_fn(|_| AtomicU64::new(0)),
            routes: ArcSwap::from_pointee(RouteCounters {
                names: Vec::new(),
                answers: Box::new([]),
            }),
            upstreams: ArcSwap::from_pointee(Vec::new()),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_entries: AtomicU64::new(0),
            cache_bytes: AtomicU64::new(0),
            cache_stale_served: AtomicU64::new(0),
            reloads: Default::default(),
            last_reload_success_ms: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            forwarding_loops: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            egress_added: AtomicU64::new(0),
            egress_failures: AtomicU64::new(0),
        }
    }

    // ---- queries ----

    /// Counts one answered query.
    pub fn query(&self, transport: Transport, qtype: u16, rc: u8) {
        let i = (transport_index(transport) * N_QTYPE + qtype_index(qtype)) * N_RCODE + rcode_index(rc);
        self.queries[i].fetch_add(1, R);
    }

    /// Counts one answer about to be sent, reading its type and rcode from
    /// the bytes (a header-only FORMERR counts as type `other`).
    pub fn answered(&self, transport: Transport, answer: &[u8]) {
        let Ok(h) = wire::Header::new(answer) else {
            return;
        };
        let qtype = if h.qdcount() == 1 {
            question_type(answer).unwrap_or(0)
        } else {
            0
        };
        self.query(transport, qtype, h.rcode());
    }

    /// The count of one `queries_total` series (for tests and the server's
    /// own checks).
    pub fn queries_count(&self, transport: Transport, qtype: u16, rc: u8) -> u64 {
        let i = (transport_index(transport) * N_QTYPE + qtype_index(qtype)) * N_RCODE + rcode_index(rc);
        self.queries[i].load(R)
    }

    // ---- routes ----

    /// Names the routes (their `source` as written, such as
    /// `*.npm.corp.example`), index for index with the route table. Counts of
    /// a route whose name survives a reload are kept.
    pub fn set_routes(&self, names: Vec<String>) {
        let answers: Box<[AtomicU64]> = names.iter().map(|_| AtomicU64::new(0)).collect();
        let new = Arc::new(RouteCounters { names, answers });
        let old = self.routes.swap(new.clone());
        // Increments that land on the old array between the swap and this
        // copy are lost; a reload is rare and the window is microseconds.
        for (i, name) in new.names.iter().enumerate() {
            if let Some(j) = old.names.iter().position(|n| n == name) {
                new.answers[i].fetch_add(old.answers[j].load(R), R);
            }
        }
    }

    /// Counts one answer produced through the route at `route_index` (its
    /// position in the config's list). Unknown indexes are ignored.
    pub fn routed(&self, route_index: usize) {
        if let Some(c) = self.routes.load().answers.get(route_index) {
            c.fetch_add(1, R);
        }
    }

    pub fn routed_count(&self, route_index: usize) -> u64 {
        self.routes.load().answers.get(route_index).map_or(0, |c| c.load(R))
    }

    // ---- upstreams ----

    /// Names the upstreams, index for index with the server's list (route
    /// `resolverIP`s may be appended). Counts of an address that survives the
    /// call are kept.
    pub fn set_upstreams(&self, addrs: Vec<SocketAddr>) {
        let new: Vec<UpstreamCounters> = addrs.into_iter().map(UpstreamCounters::new).collect();
        let new = Arc::new(new);
        let old = self.upstreams.swap(new.clone());
        for n in new.iter() {
            if let Some(o) = old.iter().find(|o| o.addr == n.addr) {
                n.carry_from(o);
            }
        }
    }

    /// The index of `addr` in the upstream list, for callers that know the
    /// address rather than the position.
    pub fn upstream_index(&self, addr: SocketAddr) -> Option<usize> {
        self.upstreams.load().iter().position(|u| u.addr == addr)
    }

    /// Records the time one attempt at upstream `idx` took until its answer.
    pub fn upstream_latency(&self, idx: usize, took: Duration) {
        let ups = self.upstreams.load();
        let Some(u) = ups.get(idx) else {
            return;
        };
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let b = BUCKET_NANOS.iter().position(|&le| nanos <= le).unwrap_or(N_BUCKET - 1);
        u.buckets[b].fetch_add(1, R);
        u.sum_nanos.fetch_add(nanos, R);
        u.count.fetch_add(1, R);
    }

    /// Counts one failed attempt at upstream `idx`.
    pub fn upstream_failure(&self, idx: usize, reason: FailReason) {
        if let Some(u) = self.upstreams.load().get(idx) {
            u.failures[reason as usize].fetch_add(1, R);
        }
    }

    /// Sets whether upstream `idx` is considered healthy.
    pub fn set_upstream_up(&self, idx: usize, up: bool) {
        if let Some(u) = self.upstreams.load().get(idx) {
            u.up.store(u64::from(up), R);
        }
    }

    /// Each upstream with its health, in list order (for `/readyz`).
    pub fn upstreams_up(&self) -> Vec<(SocketAddr, bool)> {
        self.upstreams
            .load()
            .iter()
            .map(|u| (u.addr, u.up.load(R) != 0))
            .collect()
    }

    pub fn upstream_failures_count(&self, idx: usize, reason: FailReason) -> u64 {
        self.upstreams
            .load()
            .get(idx)
            .map_or(0, |u| u.failures[reason as usize].load(R))
    }

    // ---- cache ----

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, R);
    }
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, R);
    }
    /// An expired answer served because no upstream answered (RFC 8767).
    pub fn cache_stale_served(&self) {
        self.cache_stale_served.fetch_add(1, R);
    }
    /// Sets the cache counters from totals the cache keeps itself (its own
    /// atomics), for an owner that counts there rather than here; call it
    /// from [`Status::refresh`]. Totals must only grow.
    pub fn set_cache_totals(&self, hits: u64, misses: u64, stale_served: u64) {
        self.cache_hits.store(hits, R);
        self.cache_misses.store(misses, R);
        self.cache_stale_served.store(stale_served, R);
    }

    /// The cache's size now; set by the cache owner whenever it changes (or
    /// periodically).
    pub fn set_cache_size(&self, entries: u64, bytes: u64) {
        self.cache_entries.store(entries, R);
        self.cache_bytes.store(bytes, R);
    }

    // ---- reloads ----

    /// A config load (the first one included) that was swapped in.
    pub fn reload_succeeded(&self) {
        self.reloads[0].fetch_add(1, R);
        self.last_reload_success_ms.store(now_ms(), R);
    }
    /// A reload that was rejected; the old config keeps serving.
    pub fn reload_failed(&self) {
        self.reloads[1].fetch_add(1, R);
    }
    pub fn reloads_count(&self, success: bool) -> u64 {
        self.reloads[usize::from(!success)].load(R)
    }

    // ---- clients and listeners ----

    /// A query not answered because its client went over the rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, R);
    }
    /// A query from a client outside `allow`.
    pub fn refused(&self) {
        self.refused.fetch_add(1, R);
    }
    /// A packet that got no answer at all (not a query, a response, too short).
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, R);
    }
    /// A forwarding loop seen at run time (our own query came back to us).
    pub fn forwarding_loop(&self) {
        self.forwarding_loops.fetch_add(1, R);
    }
    pub fn tcp_connection_opened(&self) {
        self.tcp_connections.fetch_add(1, R);
    }
    pub fn tcp_connection_closed(&self) {
        // Never wraps below zero, even on a mismatched call.
        let _ = self.tcp_connections.fetch_update(R, R, |v| Some(v.saturating_sub(1)));
    }
    /// Counts an open TCP connection until the guard is dropped.
    pub fn tcp_connection(self: &Arc<Self>) -> TcpConnectionGuard {
        self.tcp_connection_opened();
        TcpConnectionGuard(self.clone())
    }
    pub fn tcp_connections_open(&self) -> u64 {
        self.tcp_connections.load(R)
    }

    // ---- egress set ----

    /// Addresses added to (or refreshed in) the egress ipset.
    pub fn egress_entries_added(&self, n: u64) {
        self.egress_added.fetch_add(n, R);
    }
    pub fn egress_failure(&self) {
        self.egress_failures.fetch_add(1, R);
    }

    // ---- rendering ----

    /// The metrics in Prometheus text exposition format 0.0.4, followed by
    /// `extra` (metrics only the server can compute at scrape time).
    pub fn render(&self, extra: &[Extra]) -> String {
        let mut w = Writer {
            out: String::with_capacity(8 << 10),
        };
        w.family(
            "dnsbridge_build_info",
            "gauge",
            "The running dnsbridge version (always 1).",
        );
        w.sample("dnsbridge_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        w.family(
            "dnsbridge_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
        );
        w.sample_f("dnsbridge_start_time_seconds", &[], started);
        if let Some(rss) = resident_bytes() {
            w.family(
                "dnsbridge_resident_memory_bytes",
                "gauge",
                "Resident memory of the process.",
            );
            w.sample("dnsbridge_resident_memory_bytes", &[], rss);
        }

        let q = "dnsbridge_queries_total";
        w.family(
            q,
            "counter",
            "Answers sent to clients, by transport, query type and response code.",
        );
        for (ti, tname) in ["udp", "tcp"].iter().enumerate() {
            for qi in 0..N_QTYPE {
                let qname = QTYPES.get(qi).map_or("other", |x| x.0);
                for ri in 0..N_RCODE {
                    let v = self.queries[(ti * N_QTYPE + qi) * N_RCODE + ri].load(R);
                    // Series appear once they have counted something.
                    if v == 0 {
                        continue;
                    }
                    let rname = RCODES.get(ri).map_or("other", |x| x.0);
                    w.sample(q, &[("transport", tname), ("qtype", qname), ("rcode", rname)], v);
                }
            }
        }

        let routes = self.routes.load();
        let r = "dnsbridge_routed_answers_total";
        w.family(r, "counter", "Answers to routed names, by the route's source.");
        for (name, c) in routes.names.iter().zip(routes.answers.iter()) {
            w.sample(r, &[("route", name)], c.load(R));
        }

        for (name, help, v) in [
            (
                "dnsbridge_cache_hits_total",
                "Queries answered from the cache.",
                &self.cache_hits,
            ),
            (
                "dnsbridge_cache_misses_total",
                "Queries not found in the cache.",
                &self.cache_misses,
            ),
            (
                "dnsbridge_cache_stale_served_total",
                "Expired answers served because no upstream answered (RFC 8767).",
                &self.cache_stale_served,
            ),
        ] {
            w.family(name, "counter", help);
            w.sample(name, &[], v.load(R));
        }
        for (name, help, v) in [
            (
                "dnsbridge_cache_entries",
                "Answers held in the cache.",
                &self.cache_entries,
            ),
            ("dnsbridge_cache_bytes", "Bytes held by the cache.", &self.cache_bytes),
        ] {
            w.family(name, "gauge", help);
            w.sample(name, &[], v.load(R));
        }

        let ups = self.upstreams.load();
        let addrs: Vec<String> = ups.iter().map(|u| u.addr.to_string()).collect();
        let h = "dnsbridge_upstream_request_duration_seconds";
        w.family(
            h,
            "histogram",
            "Time from sending one attempt to an upstream until its answer.",
        );
        let bucket = format!("{h}_bucket");
        let les: Vec<String> = LATENCY_BUCKETS.iter().map(|b| fmt_f64(*b)).collect();
        for (u, a) in ups.iter().zip(&addrs) {
            let mut cum = 0;
            for (i, c) in u.buckets.iter().enumerate() {
                cum += c.load(R);
                let le = les.get(i).map_or("+Inf", |s| s.as_str());
                w.sample(&bucket, &[("upstream", a), ("le", le)], cum);
            }
            w.sample_f(
                &format!("{h}_sum"),
                &[("upstream", a)],
                u.sum_nanos.load(R) as f64 / 1e9,
            );
            w.sample(&format!("{h}_count"), &[("upstream", a)], u.count.load(R));
        }
        let f = "dnsbridge_upstream_failures_total";
        w.family(
            f,
            "counter",
            "Failed attempts at an upstream, by reason (the query then fails over to the next).",
        );
        for (u, a) in ups.iter().zip(&addrs) {
            for reason in FailReason::ALL {
                w.sample(
                    f,
                    &[("upstream", a), ("reason", reason.label())],
                    u.failures[reason as usize].load(R),
                );
            }
        }
        let up = "dnsbridge_upstream_up";
        w.family(
            up,
            "gauge",
            "1 when the upstream is considered healthy, 0 when it is being avoided.",
        );
        for (u, a) in ups.iter().zip(&addrs) {
            w.sample(up, &[("upstream", a)], u.up.load(R));
        }

        let rl = "dnsbridge_reloads_total";
        w.family(
            rl,
            "counter",
            "Config loads, by result; a failed reload keeps the previous config serving.",
        );
        w.sample(rl, &[("result", "success")], self.reloads[0].load(R));
        w.sample(rl, &[("result", "failure")], self.reloads[1].load(R));
        let ls = "dnsbridge_last_reload_success_timestamp_seconds";
        w.family(
            ls,
            "gauge",
            "When a config was last loaded successfully, in seconds since the Unix epoch (0: never).",
        );
        w.sample_f(ls, &[], self.last_reload_success_ms.load(R) as f64 / 1000.0);

        for (name, help, v) in [
            (
                "dnsbridge_rate_limited_total",
                "Queries not answered because the client went over its rate limit.",
                &self.rate_limited,
            ),
            (
                "dnsbridge_refused_total",
                "Queries refused because the client is not allowed.",
                &self.refused,
            ),
            (
                "dnsbridge_dropped_total",
                "Packets that got no answer (not a query, or unreadable).",
                &self.dropped,
            ),
            (
                "dnsbridge_forwarding_loops_total",
                "Forwarding loops detected at run time (an upstream sent our own query back).",
                &self.forwarding_loops,
            ),
            (
                "dnsbridge_egress_entries_added_total",
                "Addresses added to or refreshed in the egress firewall set.",
                &self.egress_added,
            ),
            (
                "dnsbridge_egress_failures_total",
                "Failed updates of the egress firewall set.",
                &self.egress_failures,
            ),
        ] {
            w.family(name, "counter", help);
            w.sample(name, &[], v.load(R));
        }
        let t = "dnsbridge_tcp_connections";
        w.family(t, "gauge", "TCP client connections open now.");
        w.sample(t, &[], self.tcp_connections.load(R));

        w.extra(extra);
        w.out
    }
}

/// Decrements the open-connection gauge when dropped.
#[derive(Debug)]
pub struct TcpConnectionGuard(Arc<Metrics>);

impl Drop for TcpConnectionGuard {
    fn drop(&mut self) {
        self.0.tcp_connection_closed();
    }
}

/// The QTYPE of a message's (uncompressed) question.
fn question_type(msg: &[u8]) -> Option<u16> {
    let mut pos = wire::HEADER_LEN;
    for _ in 0..128 {
        let len = *msg.get(pos)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        pos += 1 + len;
        if len == 0 {
            return wire::read_u16(msg, pos);
        }
    }
    None
}

/// Resident set size from /proc (Linux only; None elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096))
}

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// One sample the server computes at scrape time (from its own state),
/// appended after the built-in metrics. Consecutive samples with the same
/// name share one `# HELP`/`# TYPE` header. Names without the `dnsbridge_`
/// prefix get it; invalid names are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Extra {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Extra {
    pub fn gauge(name: &str, help: &str, value: f64) -> Extra {
        Extra {
            name: name.into(),
            help: help.into(),
            kind: Kind::Gauge,
            labels: Vec::new(),
            value,
        }
    }
    pub fn counter(name: &str, help: &str, value: f64) -> Extra {
        Extra {
            kind: Kind::Counter,
            ..Extra::gauge(name, help, value)
        }
    }
    pub fn with_label(mut self, key: &str, value: &str) -> Extra {
        self.labels.push((key.into(), value.into()));
        self
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// A float as Prometheus reads it.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_into(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {v}");
    }

    fn sample_f(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.out.push_str(name);
        self.labels(labels);
        let _ = writeln!(self.out, " {}", fmt_f64(v));
    }

    fn extra(&mut self, extra: &[Extra]) {
        let mut last: Option<String> = None;
        for e in extra {
            let name = if e.name.starts_with("dnsbridge_") {
                e.name.clone()
            } else {
                format!("dnsbridge_{}", e.name)
            };
            if !valid_metric_name(&name) || !e.labels.iter().all(|(k, _)| valid_label_name(k)) {
                continue;
            }
            if last.as_deref() != Some(name.as_str()) {
                let kind = match e.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                self.family(&name, kind, &e.help);
                last = Some(name.clone());
            }
            let labels: Vec<(&str, &str)> = e.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            self.sample_f(&name, &labels, e.value);
        }
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape backslash, double quote and newline.
fn escape_label_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The `route` label of each route, in table order: its source as written
/// in the config (`registry.corp.example`, `*.npm.corp.example`).
pub fn route_labels(routes: &[Route]) -> Vec<String> {
    routes.iter().map(|r| r.source.to_string()).collect()
}

/// The active routes as the `/routes` endpoint shows them, with the
/// effective `flatten` and `ttl` (the route's own, or the global default).
pub fn routes_json(routes: &[Route], default_ttl: u32, default_flatten: bool) -> serde_json::Value {
    let list: Vec<serde_json::Value> = routes
        .iter()
        .map(|r| {
            let (matching, source) = match &r.source {
                Source::Exact(_) => ("exact", r.source.to_string()),
                Source::Wildcard(_) => ("wildcard", r.source.to_string()),
            };
            let (dkind, destination) = match &r.destination {
                Destination::Name(n) => ("name", serde_json::Value::String(n.to_string())),
                Destination::Wildcard(_) => ("wildcard", serde_json::Value::String(r.destination.to_string())),
                Destination::Ips(ips) => (
                    "ip",
                    serde_json::Value::Array(ips.iter().map(|i| serde_json::Value::String(i.to_string())).collect()),
                ),
            };
            serde_json::json!({
                "index": r.index,
                "source": source,
                "match": matching,
                "destination": destination,
                "destinationKind": dkind,
                "resolver": r.resolver.map(|a| a.to_string()),
                "flatten": r.flatten.unwrap_or(default_flatten),
                "ttl": r.ttl.unwrap_or(default_ttl),
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// The `/readyz` rule, for [`Status::ready`]: every listener is bound and at
/// least one upstream is healthy. The error names what is missing.
pub fn readiness(listeners_bound: bool, upstreams: &[(SocketAddr, bool)]) -> Result<(), String> {
    if !listeners_bound {
        return Err("listeners are not bound yet".into());
    }
    if upstreams.is_empty() {
        return Err("no upstream resolver is configured".into());
    }
    if upstreams.iter().any(|(_, up)| *up) {
        return Ok(());
    }
    let names: Vec<String> = upstreams.iter().map(|(a, _)| a.to_string()).collect();
    Err(format!("no upstream is healthy ({} down)", names.join(", ")))
}

/// What the HTTP endpoints ask of the running server.
pub trait Status: Send + Sync {
    /// Ok when the listeners are bound and at least one upstream is healthy;
    /// otherwise the reason, one line, shown by `/readyz` with a 503.
    fn ready(&self) -> Result<(), String>;
    /// The active routes (see [`routes_json`]).
    fn routes_json(&self) -> serde_json::Value;
    /// Extra liveness checks for `/healthz` beyond "the HTTP task answered"
    /// (such as a listener task that died). Default: alive.
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }
    /// Called before each `/metrics` render: the place to set gauges and
    /// totals kept elsewhere ([`Metrics::set_cache_size`],
    /// [`Metrics::set_cache_totals`], [`Metrics::set_upstream_up`]).
    /// Default: nothing.
    fn refresh(&self, metrics: &Metrics) {
        let _ = metrics;
    }
    /// Samples only the server can compute at scrape time, appended to
    /// `/metrics`. Default: none.
    fn extra_metrics(&self) -> Vec<Extra> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
