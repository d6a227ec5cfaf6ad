//! What to do with one query: the proxy's decisions with no sockets and no
//! clock.
//!
//! [`handle`] looks at a client's packet and returns an [`Action`]: an answer
//! to send now, a query to forward untouched, or a [`Resolution`] for a routed
//! name. A resolution is a small state machine: the shell asks it which
//! upstream query to send next, feeds it the answer, and repeats until it is
//! done; it then yields the bytes for the client. Everything the wire rules of
//! DESIGN.md decide (question echo, CNAME chain, NODATA/NXDOMAIN with SOA, AD,
//! OPT, truncation) lives here, so it is tested in memory.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::time::Instant;

use crate::cache::{self, Cache, Entry, Key, Lookup};

use crate::config::{Destination, Route, Source};
use crate::name::Name;
use crate::net::Cidr;
use crate::route::RouteTable;
use crate::wire::{
    self, Edns, Header, MessageBuilder, OUR_UDP_SIZE, Query, QueryError, Record, Response, class, flags, rcode, rtype,
};

/// Most CNAME and route hops followed for one routed query.
pub const MAX_HOPS: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Settings the core needs, swapped with the route table on reload.
#[derive(Debug, Clone)]
pub struct Settings {
    pub allow: Vec<Cidr>,
    pub cname_ttl: u32,
    pub flatten: bool,
}

/// The active config: route table and settings, replaced as a whole.
#[derive(Debug)]
pub struct State {
    pub table: RouteTable,
    pub settings: Settings,
}

impl State {
    pub fn allowed(&self, client: IpAddr) -> bool {
        self.settings.allow.iter().any(|c| c.contains(client))
    }
}

/// A query the shell must send upstream for a resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamQuery {
    /// The wire message (ID 0: the shell picks a random one).
    pub message: Vec<u8>,
    /// Send only here (a route's `resolverIP`); None means the upstreams.
    pub resolver: Option<SocketAddr>,
    pub name: Name,
    pub qtype: u16,
}

#[derive(Debug)]
pub enum Action {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// An answer from the cache; the route index when the name is routed
    /// (for per-route counts).
    Cached(Vec<u8>, Option<u32>),
    /// Send nothing (not a query, or not worth an answer).
    Drop,
    /// Forward the client's packet upstream; pass the answer to
    /// [`finish_forward`].
    Forward(Miss),
    /// A routed name: drive the resolution.
    Resolve(Box<Resolution>, Miss),
}

/// A cache miss: the key to store the answer under, and an expired entry to
/// fall back on if no upstream answers (RFC 8767).
#[derive(Debug)]
pub struct Miss {
    pub key: Key,
    pub stale: Option<Arc<Entry>>,
}

/// What the core keeps of the client's query to build its answer.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u16,
    pub rd: bool,
    pub cd: bool,
    pub edns: Option<Edns>,
    pub question_raw: Vec<u8>,
    pub qtype: u16,
    pub qname: Name,
    pub transport: Transport,
    pub udp_limit: usize,
}

impl ClientInfo {
    fn from_query(q: &Query<'_>, transport: Transport) -> ClientInfo {
        let h = q.header();
        ClientInfo {
            id: h.id(),
            rd: h.rd(),
            cd: h.cd(),
            edns: q.edns,
            question_raw: q.question_raw().to_vec(),
            qtype: q.qtype,
            qname: Name::from_wire_lower(q.qname_lower()),
            transport,
            udp_limit: q.udp_limit(),
        }
    }

    fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }

    /// Header flags of a synthesized answer: AD always clear (the proxy
    /// rewrote the answer, so it vouches for nothing), CD and RD echoed.
    fn answer_flags(&self, rc: u8) -> u16 {
        let mut f = flags::QR | flags::RA | rc as u16;
        if self.rd {
            f |= flags::RD;
        }
        if self.cd {
            f |= flags::CD;
        }
        f
    }

    /// Adds the proxy's own OPT when the client used EDNS. The size limit
    /// is applied later by [`fit`], so that the full answer can be cached.
    fn finish(&self, mut b: MessageBuilder, ede: Option<(u16, &str)>) -> Vec<u8> {
        if let Some(e) = self.edns {
            let opts = ede.map(|(code, text)| wire::ede_option(code, text)).unwrap_or_default();
            b.put_opt(OUR_UDP_SIZE, 0, e.dnssec_ok, &opts);
        }
        b.finish()
    }

    /// An answer with no records.
    pub fn empty_answer(&self, rc: u8, ede: Option<(u16, &str)>) -> Vec<u8> {
        let b = MessageBuilder::response(self.id, self.answer_flags(rc), &self.question_raw);
        self.finish(b, ede)
    }
}

/// Decides what to do with one packet from `client`, at time `now`.
pub fn handle(
    state: &State,
    cache: &Cache,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
    now: Instant,
) -> Action {
    let q = match Query::parse(packet) {
        Ok(q) => q,
        Err(QueryError::NoHeader | QueryError::IsResponse) => return Action::Drop,
        Err(QueryError::QuestionCount | QueryError::Malformed(_)) => {
            return Action::Reply(header_only(packet, rcode::FORMERR));
        }
    };
    let h = q.header();
    if !state.allowed(client) {
        return Action::Reply(error_reply(&q, h, rcode::REFUSED));
    }
    if h.opcode() != 0 {
        return Action::Reply(error_reply(&q, h, rcode::NOTIMP));
    }
    if let Some(e) = q.edns
        && e.version > 0
    {
        // RFC 6891: BADVERS is extended rcode 16 (high bits 1 in the OPT).
        let mut b = MessageBuilder::response(h.id(), flags::QR | (h.flags() & flags::RD), q.question_raw());
        b.put_opt(OUR_UDP_SIZE, (rcode::BADVERS >> 4) as u8, e.dnssec_ok, &[]);
        return Action::Reply(b.finish());
    }
    let routed = if q.qclass == class::IN {
        state.table.lookup(q.qname_lower())
    } else {
        None
    };
    if routed.is_some() && matches!(q.qtype, rtype::AXFR | rtype::IXFR | rtype::MAILA | rtype::MAILB) {
        let info = ClientInfo::from_query(&q, transport);
        return Action::Reply(fit(info.empty_answer(rcode::NOTIMP, None), &q, transport));
    }
    let key = cache::key_for(&q);
    let stale = match cache.lookup(&key, now) {
        Lookup::Fresh(e) => {
            let route = routed.as_ref().map(|m| m.route.index as u32);
            return Action::Cached(fit(e.serve(&q, now, false), &q, transport), route);
        }
        Lookup::Stale(e) => Some(e),
        Lookup::Miss => None,
    };
    let miss = Miss { key, stale };
    let Some(m) = routed else {
        return Action::Forward(miss);
    };
    let info = ClientInfo::from_query(&q, transport);
    let target = m.target(q.qname_lower());
    let route = m.route;
    let mut res = Resolution::new(info, route, &state.settings);
    res.routes_used.push(state.table.fingerprint(route.index));
    match (&route.destination, target) {
        (Destination::Ips(ips), _) => {
            res.answer_with_ips(None, route, ips, &state.settings);
        }
        (_, None) => {
            // `*.suffix2` would make a name longer than 255 bytes.
            res.done = Some(res.client.empty_answer(rcode::YXDOMAIN, None));
        }
        (_, Some(target)) => {
            let ttl = route.ttl.unwrap_or(state.settings.cname_ttl);
            res.push_cname(None, &target, ttl);
            res.tail = target;
            res.resolver = route.resolver;
            res.follow_routes(&state.table, &state.settings);
        }
    }
    Action::Resolve(Box::new(res), miss)
}

/// A reply made of the header alone, for queries whose question cannot be
/// read.
fn header_only(packet: &[u8], rc: u8) -> Vec<u8> {
    let mut out = vec![0u8; wire::HEADER_LEN];
    out[0..2].copy_from_slice(&packet[0..2]);
    let f = Header(packet).flags();
    let bits = flags::QR | (f & (flags::OPCODE_MASK | flags::RD)) | rc as u16;
    out[2..4].copy_from_slice(&bits.to_be_bytes());
    out
}

/// REFUSED or NOTIMP with the question echoed exactly.
fn error_reply(q: &Query<'_>, h: Header<'_>, rc: u8) -> Vec<u8> {
    let bits = flags::QR | (h.flags() & (flags::OPCODE_MASK | flags::RD | flags::CD)) | rc as u16;
    let mut b = MessageBuilder::response(h.id(), bits, q.question_raw());
    if let Some(e) = q.edns {
        b.put_opt(OUR_UDP_SIZE, 0, e.dnssec_ok, &[]);
    }
    b.finish()
}

/// A record in the answer being built; `owner` None is the question name
/// (written as a pointer to it, so the client's letter case is kept).
#[derive(Debug, Clone)]
struct AnswerRecord {
    owner: Option<Name>,
    rtype: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// A routed query in progress.
#[derive(Debug)]
pub struct Resolution {
    pub client: ClientInfo,
    flatten: bool,
    /// The chain so far: synthesized and upstream CNAMEs, then final records.
    answers: Vec<AnswerRecord>,
    authority: Vec<Record>,
    /// The name still to resolve.
    tail: Name,
    resolver: Option<SocketAddr>,
    /// Names already in the chain, to stop loops.
    visited: Vec<Name>,
    done: Option<Vec<u8>>,
    /// Why the resolution failed, for logs and metrics.
    pub failure: Option<&'static str>,
    /// No upstream answered: a stale cached answer may stand in.
    pub upstream_failed: bool,
    /// The index (in the config's list) of the route the question matched.
    pub route_index: usize,
    /// Fingerprints of every route the answer went through.
    pub routes_used: Vec<u64>,
}

impl Resolution {
    fn new(client: ClientInfo, route: &Route, settings: &Settings) -> Resolution {
        let qname = client.qname.clone();
        Resolution {
            flatten: route.flatten.unwrap_or(settings.flatten),
            visited: vec![qname.clone()],
            tail: qname,
            client,
            answers: Vec::new(),
            authority: Vec::new(),
            resolver: None,
            done: None,
            failure: None,
            upstream_failed: false,
            route_index: route.index,
            routes_used: Vec::new(),
        }
    }

    fn push_cname(&mut self, owner: Option<Name>, target: &Name, ttl: u32) {
        self.answers.push(AnswerRecord {
            owner,
            rtype: rtype::CNAME,
            ttl,
            rdata: target.wire().to_vec(),
        });
    }

    /// Appends a record from an upstream answer, keeping its TTL.
    fn push_upstream(&mut self, rec: &Record) {
        let owner = self.owner_for(&rec.owner);
        self.answers.push(AnswerRecord {
            owner,
            rtype: rec.rtype,
            ttl: rec.ttl,
            rdata: rec.rdata.clone(),
        });
    }

    /// The owner to write for a record at `name`: the question pointer when
    /// it is the question name.
    fn owner_for(&self, name: &Name) -> Option<Name> {
        (name != &self.client.qname).then(|| name.clone())
    }

    /// Follows routes from the current tail: a destination that is itself a
    /// routed source is resolved through that route, so chains of routes work
    /// and loops end in SERVFAIL.
    fn follow_routes(&mut self, table: &RouteTable, settings: &Settings) {
        if self.client.qtype == rtype::CNAME && !self.flatten {
            // The synthesized CNAME is the complete answer to a CNAME query.
            self.complete(rcode::NOERROR);
            return;
        }
        while let Some(m) = table.lookup(self.tail.wire()) {
            if self.visited.contains(&self.tail) || self.visited.len() > MAX_HOPS {
                self.fail("route loop");
                return;
            }
            self.visited.push(self.tail.clone());
            let route = m.route;
            self.routes_used.push(table.fingerprint(route.index));
            match (&route.destination, m.target(self.tail.wire())) {
                (Destination::Ips(ips), _) => {
                    let owner = self.tail.clone();
                    self.answer_with_ips(Some(owner), route, ips, settings);
                    return;
                }
                (_, Some(next)) => {
                    let ttl = route.ttl.unwrap_or(settings.cname_ttl);
                    let owner = self.owner_for(&self.tail);
                    self.push_cname(owner, &next, ttl);
                    self.tail = next;
                    self.resolver = route.resolver;
                }
                (_, None) => {
                    self.done = Some(self.client.empty_answer(rcode::YXDOMAIN, None));
                    return;
                }
            }
        }
    }

    /// Answers from an IP destination: A/AAAA from the literals, NODATA with
    /// a synthesized SOA for every other type.
    fn answer_with_ips(&mut self, owner: Option<Name>, route: &Route, ips: &[IpAddr], settings: &Settings) {
        let ttl = route.ttl.unwrap_or(settings.cname_ttl);
        let owner = if self.flatten {
            None
        } else {
            owner.filter(|o| o != &self.client.qname)
        };
        let want_a = matches!(self.client.qtype, rtype::A | rtype::ANY);
        let want_aaaa = matches!(self.client.qtype, rtype::AAAA | rtype::ANY);
        let before = self.answers.len();
        for ip in ips {
            let (t, data) = match ip {
                IpAddr::V4(v4) if want_a => (rtype::A, v4.octets().to_vec()),
                IpAddr::V6(v6) if want_aaaa => (rtype::AAAA, v6.octets().to_vec()),
                _ => continue,
            };
            self.answers.push(AnswerRecord {
                owner: owner.clone(),
                rtype: t,
                ttl,
                rdata: data,
            });
        }
        if self.answers.len() == before {
            self.authority.push(synthesized_soa(route, ttl));
        }
        if self.flatten {
            self.answers.retain(|a| a.rtype != rtype::CNAME);
        }
        self.complete(rcode::NOERROR);
    }

    /// The next upstream query, or None when the answer is ready.
    pub fn next_query(&self) -> Option<UpstreamQuery> {
        if self.done.is_some() {
            return None;
        }
        let mut f = flags::RD;
        if self.client.cd {
            f |= flags::CD;
        }
        let mut b = MessageBuilder::query(0, f, &self.tail, self.client.qtype);
        // DO upstream only when the client asked for it.
        b.put_opt(OUR_UDP_SIZE, 0, self.client.dnssec_ok(), &[]);
        Some(UpstreamQuery {
            message: b.finish(),
            resolver: self.resolver,
            name: self.tail.clone(),
            qtype: self.client.qtype,
        })
    }

    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// Feeds the upstream's answer to the last query.
    pub fn on_response(&mut self, resp: &[u8], table: &RouteTable, settings: &Settings) {
        if self.done.is_some() {
            return;
        }
        let Ok(r) = Response::parse(resp) else {
            self.fail("malformed upstream answer");
            return;
        };
        if r.qname != self.tail || r.qtype != self.client.qtype {
            self.fail("upstream answered another question");
            return;
        }
        let rc = r.rcode();
        if rc != rcode::NOERROR && rc != rcode::NXDOMAIN {
            // Every upstream failed (the shell only passes SERVFAIL/REFUSED on
            // once none answered better): a stale answer may stand in.
            self.upstream_failed = true;
            self.fail("upstream failed");
            return;
        }
        let qtype = self.client.qtype;
        let dnssec = self.client.dnssec_ok();
        let mut cur = self.tail.clone();
        let mut chain: Vec<Name> = vec![cur.clone()];
        // Follow the CNAMEs the upstream already gave, in any order.
        if qtype != rtype::CNAME {
            while let Some(rec) = r.answers.iter().find(|a| a.rtype == rtype::CNAME && a.owner == cur) {
                let Some(next) = rec.cname_target() else {
                    break;
                };
                if chain.contains(&next) || self.visited.len() + chain.len() > MAX_HOPS {
                    self.fail("CNAME loop");
                    return;
                }
                self.push_upstream(rec);
                cur = next;
                chain.push(cur.clone());
            }
        }
        let finals: Vec<&Record> = r
            .answers
            .iter()
            .filter(|a| a.owner == cur && (a.rtype == qtype || qtype == rtype::ANY) && a.rtype != rtype::CNAME)
            .collect();
        let cname_query_hit =
            qtype == rtype::CNAME && r.answers.iter().any(|a| a.owner == cur && a.rtype == rtype::CNAME);
        for rec in finals.iter().copied().chain(
            r.answers
                .iter()
                .filter(|a| cname_query_hit && a.owner == cur && a.rtype == rtype::CNAME),
        ) {
            self.push_upstream(rec);
        }
        if dnssec {
            // Signatures of the chain's own records travel with them.
            for rec in r
                .answers
                .iter()
                .filter(|a| a.rtype == rtype::RRSIG && chain.contains(&a.owner))
            {
                self.push_upstream(rec);
            }
        }
        if !finals.is_empty() || cname_query_hit {
            self.finish_positive();
            return;
        }
        let has_soa = r.authority.iter().any(|a| a.rtype == rtype::SOA);
        if rc == rcode::NOERROR && cur != self.tail && !has_soa {
            // A CNAME that leaves the upstream's zone: finish the chain here,
            // since stubs treat a bare CNAME as "no address".
            self.visited.extend(chain.iter().skip(1).cloned());
            self.tail = cur;
            self.follow_routes(table, settings);
            return;
        }
        // Negative answer: keep the zone's SOA (and its proofs when DO) so the
        // client can cache the negative answer (RFC 2308).
        self.authority = r
            .authority
            .iter()
            .filter(|a| {
                a.rtype == rtype::SOA || (dnssec && matches!(a.rtype, rtype::RRSIG | rtype::NSEC | rtype::NSEC3))
            })
            .cloned()
            .collect();
        if self.flatten {
            self.answers.clear();
        }
        self.complete(rc);
    }

    fn finish_positive(&mut self) {
        if self.flatten {
            // Keep only the final records, renamed to the question name.
            self.answers
                .retain(|a| a.rtype != rtype::CNAME || self.client.qtype == rtype::CNAME);
            for a in &mut self.answers {
                a.owner = None;
            }
        }
        self.complete(rcode::NOERROR);
    }

    /// No upstream answered (or all failed): SERVFAIL with an RFC 8914 reason.
    pub fn on_upstream_failure(&mut self) {
        if self.done.is_none() {
            self.upstream_failed = true;
            self.failure = Some("no upstream answered");
            self.done = Some(
                self.client
                    .empty_answer(rcode::SERVFAIL, Some((22, "No Reachable Authority"))),
            );
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.failure = Some(why);
        self.done = Some(self.client.empty_answer(rcode::SERVFAIL, None));
    }

    fn complete(&mut self, rc: u8) {
        let c = &self.client;
        let mut b = MessageBuilder::response(c.id, c.answer_flags(rc), &c.question_raw);
        for a in &self.answers {
            b.put_record(1, a.owner.as_ref(), a.rtype, class::IN, a.ttl, &a.rdata);
        }
        for r in &self.authority {
            b.put_record(2, Some(&r.owner), r.rtype, r.class, r.ttl, &r.rdata);
        }
        self.done = Some(c.finish(b, None));
    }

    /// The answer for the client; call once [`Resolution::next_query`] is None.
    pub fn into_answer(self) -> Vec<u8> {
        self.done
            .unwrap_or_else(|| self.client.empty_answer(rcode::SERVFAIL, None))
    }
}

/// The SOA for NODATA answers of an IP destination, owned by the route's zone
/// (the exact source, or the wildcard's suffix). MINIMUM is the synthesized
/// TTL, so negative caching lasts as long as the positive answers would.
fn synthesized_soa(route: &Route, ttl: u32) -> Record {
    let zone = match &route.source {
        Source::Exact(n) | Source::Wildcard(n) => n.clone(),
    };
    let mut rdata = Vec::with_capacity(zone.wire().len() * 2 + 40);
    rdata.extend_from_slice(zone.wire());
    let rname = zone.prepend(b"\x0ahostmaster").unwrap_or_else(Name::root);
    rdata.extend_from_slice(rname.wire());
    for v in [1u32, 3600, 600, 86400, ttl] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    Record {
        owner: zone,
        rtype: rtype::SOA,
        class: class::IN,
        ttl,
        rdata,
    }
}

/// Prepares an upstream's answer to a forwarded query for the client: the
/// client's ID and question bytes (letter case) restored, everything else as
/// the upstream sent it; replaced by a TC=1 stub when too big for the client's
/// UDP buffer. Returns None when the answer is not for this query.
pub fn finish_forward(client_query: &[u8], mut resp: Vec<u8>, transport: Transport) -> Option<Vec<u8>> {
    let q = Query::parse(client_query).ok()?;
    if !wire::response_matches(&resp, q.qname_lower(), q.qtype, q.qclass) {
        return None;
    }
    wire::set_id(&mut resp, q.id());
    let qr = q.question_raw();
    resp[wire::HEADER_LEN..wire::HEADER_LEN + qr.len()].copy_from_slice(qr);
    Some(fit(resp, &q, transport))
}

/// Applies the client's UDP size limit (512 without EDNS): an answer that
/// does not fit becomes header + question (+ OPT) with TC=1, so the client
/// retries over TCP.
pub fn fit(answer: Vec<u8>, q: &Query<'_>, transport: Transport) -> Vec<u8> {
    if transport == Transport::Tcp || answer.len() <= q.udp_limit() {
        return answer;
    }
    let f = Header(&answer).flags();
    let opt = q.edns.map(|e| (OUR_UDP_SIZE, e.dnssec_ok));
    wire::truncated_reply(q.id(), f, q.question_raw(), opt)
}

/// The answer when no upstream answered: the stale entry if there is one
/// (RFC 8767), else SERVFAIL with extended error 22 "No Reachable Authority"
/// (RFC 8914).
pub fn upstream_failure(
    client_query: &[u8],
    stale: Option<&Entry>,
    transport: Transport,
    now: Instant,
) -> Option<Vec<u8>> {
    let q = Query::parse(client_query).ok()?;
    if let Some(e) = stale {
        return Some(fit(e.serve(&q, now, true), &q, transport));
    }
    let info = ClientInfo::from_query(&q, transport);
    Some(fit(
        info.empty_answer(rcode::SERVFAIL, Some((22, "No Reachable Authority"))),
        &q,
        transport,
    ))
}

#[cfg(test)]
mod tests;
