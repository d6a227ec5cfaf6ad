//! The socket shell around [`crate::core`]: UDP and TCP listeners, and the
//! tasks that drive forwarded and routed queries through the cache and the
//! upstreams.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::batch::{RecvBatch, SendBatch};
use crate::cache::{Cache, Lookup};
use crate::core::{self, Action, Miss, Resolution, State, Transport};
use crate::ratelimit::RateLimiter;
use crate::telemetry::Metrics;
use crate::upstream::{DirectBatch, DirectDone, DirectReply, Upstreams};
use crate::wire::Query;

/// Queries in flight upstream at once; beyond this, new misses get SERVFAIL
/// instead of piling up memory.
pub const MAX_IN_FLIGHT: usize = 20_000;
/// TCP connections served at once.
pub const MAX_TCP_CONNECTIONS: usize = 512;
/// Longest wait for the egress set before a routed answer is sent anyway.
const EGRESS_WAIT: Duration = Duration::from_millis(250);
/// A TCP connection with no complete query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// Everything the listener tasks share.
pub struct Shared {
    pub state: ArcSwap<State>,
    pub upstreams: Upstreams,
    pub cache: Cache,
    /// Misses answered SERVFAIL at once because too many were in flight.
    pub overloaded: AtomicU64,
    pub limiter: RateLimiter,
    in_flight: Semaphore,
    /// Set on SIGTERM: listeners stop taking new queries.
    pub draining: AtomicBool,
    /// Log one line per query.
    pub query_log: AtomicBool,
    /// The microVM firewall's set of registry addresses, filled from routed answers.
    pub egress: Option<crate::egress::EgressSet>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(
        state: State,
        upstreams: Upstreams,
        cache: Cache,
        limiter: RateLimiter,
        egress: Option<crate::egress::EgressSet>,
        metrics: Arc<Metrics>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            state: ArcSwap::from_pointee(state),
            upstreams,
            cache,
            overloaded: AtomicU64::new(0),
            limiter,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            draining: AtomicBool::new(false),
            query_log: AtomicBool::new(false),
            egress,
            metrics,
        })
    }

    /// Queries still being answered.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.in_flight.available_permits()
    }

    /// Runs a routed query to completion; returns the full (unfitted) answer
    /// and whether every upstream failed.
    async fn resolve(&self, state: &State, mut res: Resolution) -> (Vec<u8>, bool) {
        while let Some(uq) = res.next_query() {
            let only;
            let servers = match uq.resolver {
                Some(r) => {
                    only = [r];
                    Some(&only[..])
                }
                None => None,
            };
            match self.upstreams.query(&uq.message, servers).await {
                Ok(resp) => res.on_response(&resp, &state.table, &state.settings),
                Err(e) => {
                    tracing::warn!(name = %uq.name, error = %e, "no upstream answered for a routed destination");
                    res.on_upstream_failure();
                }
            }
        }
        if let Some(why) = res.failure {
            tracing::info!(name = %res.client.qname, reason = why, "routed query failed");
        }
        let failed = res.upstream_failed;
        (res.into_answer(), failed)
    }

    /// Answers a cache miss: joins an identical query already in flight, or
    /// asks the upstreams and stores the answer.
    async fn answer_miss(&self, state: &State, packet: &[u8], action: Action, transport: Transport) -> Option<Vec<u8>> {
        let (miss, res) = match action {
            Action::Forward(m) => (m, None),
            Action::Resolve(r, m) => (m, Some(r)),
            Action::Reply(b) | Action::Cached(b, _) => return Some(b),
            Action::Drop => return None,
        };
        let q = Query::parse(packet).ok()?;
        if let Some(mut wait) = self.cache.join(&miss.key) {
            // Someone else asks the upstream; wait for their answer, bounded.
            let bound = self.upstreams.timeout() * (self.upstreams.servers().len().max(1) as u32 + 1);
            let _ = tokio::time::timeout(bound, wait.changed()).await;
            if let Lookup::Fresh(e) = self.cache.lookup(&miss.key, Instant::now()) {
                return Some(core::fit(e.serve(&q, Instant::now(), false), &q, transport));
            }
            return self
                .ask_upstream(state, packet, &q, miss, res, transport, false, None)
                .await;
        }
        self.ask_upstream(state, packet, &q, miss, res, transport, true, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn ask_upstream(
        &self,
        state: &State,
        packet: &[u8],
        q: &Query<'_>,
        miss: Miss,
        res: Option<Box<Resolution>>,
        transport: Transport,
        leader: bool,
        skip: Option<SocketAddr>,
    ) -> Option<Vec<u8>> {
        let out = match res {
            Some(mut res) => {
                self.metrics.routed(res.route_index);
                let routes_used = std::mem::take(&mut res.routes_used);
                let (answer, failed) = self.resolve(state, *res).await;
                if failed {
                    core::upstream_failure(packet, miss.stale.as_deref(), transport, Instant::now())
                } else {
                    self.open_egress(&answer).await;
                    self.cache
                        .insert_with_routes(miss.key.clone(), &answer, true, &routes_used, Instant::now());
                    Some(core::fit(answer, q, transport))
                }
            }
            None => match self.upstreams.query_skip(packet, None, skip).await {
                Ok(resp) => self.complete_forward(packet, q, &miss, resp, transport),
                Err(e) => {
                    tracing::debug!(error = %e, "forwarding failed");
                    core::upstream_failure(packet, miss.stale.as_deref(), transport, Instant::now())
                }
            },
        };
        if leader {
            self.cache.done(&miss.key);
        }
        if miss.stale.is_some() && out.is_some() && self.upstreams.all_down() {
            self.cache.stats.stale_served.fetch_add(1, Ordering::Relaxed);
        }
        out
    }

    /// The client's answer from an upstream's answer to a forwarded query:
    /// cached whole, then fitted to the client. When every upstream failed
    /// with SERVFAIL or REFUSED, a stale answer stands in if there is one
    /// (RFC 8767).
    fn complete_forward(
        &self,
        packet: &[u8],
        q: &Query<'_>,
        miss: &Miss,
        resp: Vec<u8>,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let now = Instant::now();
        if miss.stale.is_some() && is_failure(&resp) {
            return core::upstream_failure(packet, miss.stale.as_deref(), transport, now);
        }
        let full = core::finish_forward(packet, resp, Transport::Tcp)?;
        self.cache.insert(miss.key.clone(), &full, false, now);
        Some(core::fit(full, q, transport))
    }

    /// Forwards a plain UDP miss without a task of its own: the upstream
    /// socket's reader completes it. Falls back to a task (which skips the
    /// upstream that failed) on timeout, SERVFAIL/REFUSED with another
    /// upstream left, or a truncated answer.
    fn forward_direct(
        self: &Arc<Self>,
        sock: &Arc<UdpSocket>,
        state: &Arc<State>,
        packet: &[u8],
        peer: SocketAddr,
        miss: Miss,
        batch: &mut DirectBatch,
    ) -> Result<(), Miss> {
        let Some(server) = self.upstreams.first_server() else {
            return Err(miss);
        };
        let shared = self.clone();
        let sock2 = sock.clone();
        let state = state.clone();
        let pkt = packet.to_vec();
        let (key, stale) = (miss.key.clone(), miss.stale.clone());
        let done: DirectDone = Box::new(move |reply, took| {
            let packet = pkt;
            let miss = Miss { key, stale };
            let answer = match reply {
                DirectReply::Answer(resp) => Some(resp),
                DirectReply::Timeout => None,
            };
            shared.upstreams.record_direct(server, took, answer.as_deref());
            let more_upstreams = shared.upstreams.servers().len() > 1;
            let skip = match &answer {
                Some(resp) if crate::wire::Header(resp).tc() => None,
                Some(resp) if is_failure(resp) && more_upstreams => Some(server),
                Some(_) => {
                    // The common case: answer the client from here.
                    let resp = answer.unwrap_or_default();
                    let out = Query::parse(&packet)
                        .ok()
                        .and_then(|q| shared.complete_forward(&packet, &q, &miss, resp, Transport::Udp));
                    shared.cache.done(&miss.key);
                    shared.finish_udp(&sock2, peer, &packet, out, "forwarded");
                    return;
                }
                None => Some(server),
            };
            tokio::spawn(async move {
                let out = match Query::parse(&packet) {
                    Ok(q) => {
                        shared
                            .ask_upstream(&state, &packet, &q, miss, None, Transport::Udp, true, skip)
                            .await
                    }
                    Err(_) => {
                        shared.cache.done(&miss.key);
                        None
                    }
                };
                shared.finish_udp(&sock2, peer, &packet, out, "forwarded");
            });
        });
        match self.upstreams.send_direct(packet, server, done, batch) {
            Ok(()) => Ok(()),
            Err(_) => Err(miss),
        }
    }

    /// Sends a UDP answer produced off the listener's loop, and releases the
    /// query's in-flight slot.
    fn finish_udp(&self, sock: &Arc<UdpSocket>, peer: SocketAddr, packet: &[u8], out: Option<Vec<u8>>, how: &str) {
        self.log_query(peer, Transport::Udp, packet, out.as_deref(), how);
        if let Some(b) = out {
            self.metrics.answered(Transport::Udp, &b);
            if sock.try_send_to(&b, peer).is_err() {
                let sock = sock.clone();
                tokio::spawn(async move {
                    let _ = sock.send_to(&b, peer).await;
                });
            }
        }
        self.in_flight.add_permits(1);
    }

    /// Puts the addresses of a routed answer into the egress set and waits
    /// (briefly) until the kernel has them: the microVM connects right after
    /// the answer, and a dropped SYN would cost it a one-second retransmit.
    async fn open_egress(&self, answer: &[u8]) {
        let Some(eg) = &self.egress else { return };
        let Ok(r) = crate::wire::Response::parse(answer) else {
            return;
        };
        let addrs: Vec<(std::net::IpAddr, u32)> = r
            .answers
            .iter()
            .filter_map(|a| match (a.rtype, a.rdata.len()) {
                (crate::wire::rtype::A, 4) => {
                    let o: [u8; 4] = a.rdata[..4].try_into().ok()?;
                    Some((std::net::IpAddr::from(o), a.ttl))
                }
                (crate::wire::rtype::AAAA, 16) => {
                    let o: [u8; 16] = a.rdata[..16].try_into().ok()?;
                    Some((std::net::IpAddr::from(o), a.ttl))
                }
                _ => None,
            })
            .collect();
        if !addrs.is_empty() && !eg.record_and_wait(&addrs, EGRESS_WAIT).await {
            tracing::warn!("egress set not updated in time; the first connection may be retried");
        }
    }

    /// Handles one packet to the end: the bytes to send back, if any.
    pub async fn answer(self: &Arc<Self>, packet: &[u8], peer: SocketAddr, transport: Transport) -> Option<Vec<u8>> {
        let state = self.state.load_full();
        let action = core::handle(&state, &self.cache, packet, peer.ip(), transport, Instant::now());
        match action {
            Action::Reply(b) => {
                self.count_reply(&state, peer);
                Some(b)
            }
            Action::Cached(b, route) => {
                if let Some(i) = route {
                    self.metrics.routed(i as usize);
                }
                Some(b)
            }
            Action::Drop => {
                self.metrics.dropped();
                None
            }
            action => self.answer_miss(&state, packet, action, transport).await,
        }
    }

    /// One query-log line: who asked what, and what they got.
    pub fn log_query(&self, peer: SocketAddr, transport: Transport, packet: &[u8], answer: Option<&[u8]>, how: &str) {
        if !self.query_log.load(Ordering::Relaxed) {
            return;
        }
        let Ok(q) = Query::parse(packet) else { return };
        let name = crate::name::Name::from_wire_lower(q.qname_lower());
        let rcode = answer.and_then(|a| crate::wire::Header::new(a).ok()).map(|h| h.rcode());
        tracing::info!(
            target: "query",
            client = %peer.ip(),
            transport = ?transport,
            name = %name,
            qtype = q.qtype,
            rcode = ?rcode,
            how,
            "query"
        );
    }

    fn count_reply(&self, state: &State, peer: SocketAddr) {
        if !state.allowed(peer.ip()) {
            self.metrics.refused();
        }
    }
}

fn is_failure(resp: &[u8]) -> bool {
    crate::wire::Header::new(resp).is_ok_and(|h| {
        let rc = h.rcode();
        rc == crate::wire::rcode::SERVFAIL || rc == crate::wire::rcode::REFUSED
    })
}

/// Binds a UDP socket. IP_FREEBIND lets the proxy listen on the microVM
/// bridge address before the bridge exists (it appears with the first VM).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    prepare(&s, addr)?;
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    // A larger receive buffer absorbs bursts from many microVMs.
    let _ = s.set_recv_buffer_size(4 << 20);
    UdpSocket::from_std(s.into())
}

pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    prepare(&s, addr)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

fn prepare(s: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        let _ = s.set_freebind_v6(true);
    } else {
        let _ = s.set_freebind_v4(true);
    }
    Ok(())
}

/// Serves one UDP socket until draining starts.
pub async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut batch = RecvBatch::new();
    let mut replies = SendBatch::default();
    let mut upstream_out = DirectBatch::default();
    loop {
        let n = match batch.recv(&sock).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                tokio::task::yield_now().await;
                continue;
            }
        };
        if shared.draining.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let state = shared.state.load_full();
        for i in 0..n {
            let Some((packet, peer)) = batch.get(i) else {
                continue;
            };
            if let Some(b) = udp_packet(&sock, &shared, &state, packet, peer, now, &mut upstream_out) {
                replies.push(b, peer);
            }
        }
        if !upstream_out.is_empty() {
            upstream_out.flush().await;
        }
        if !replies.is_empty() {
            replies.flush(&sock).await;
        }
    }
}

/// One datagram: the answer to send now, if it is ready. A miss is queued for
/// the upstream in `upstream_out` (answered by the upstream reader) or handed
/// to a task; either sends its own answer later.
fn udp_packet(
    sock: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    state: &Arc<State>,
    packet: &[u8],
    peer: SocketAddr,
    now: Instant,
    upstream_out: &mut DirectBatch,
) -> Option<Vec<u8>> {
    if shared.upstreams.is_own_socket(peer) {
        shared.metrics.forwarding_loop();
        tracing::error!(%peer, "forwarding loop: an upstream sent our own query back to us; check the upstream list");
        return None;
    }
    if !shared.limiter.allow(peer.ip(), now) {
        shared.metrics.rate_limited();
        return None;
    }
    match core::handle(state, &shared.cache, packet, peer.ip(), Transport::Udp, now) {
        Action::Reply(b) => {
            shared.count_reply(state, peer);
            shared.log_query(peer, Transport::Udp, packet, Some(&b), "answered locally");
            shared.metrics.answered(Transport::Udp, &b);
            Some(b)
        }
        Action::Cached(b, route) => {
            if let Some(i) = route {
                shared.metrics.routed(i as usize);
            }
            shared.log_query(peer, Transport::Udp, packet, Some(&b), "cache");
            shared.metrics.answered(Transport::Udp, &b);
            Some(b)
        }
        Action::Drop => {
            shared.metrics.dropped();
            None
        }
        action => {
            let Ok(permit) = shared.in_flight.try_acquire() else {
                shared.overloaded.fetch_add(1, Ordering::Relaxed);
                return core::upstream_failure(packet, None, Transport::Udp, now);
            };
            permit.forget();
            // A plain forwarded miss that no identical query is already
            // waiting for goes out at once, completed by the upstream reader.
            let action = match action {
                Action::Forward(miss) if shared.cache.join(&miss.key).is_none() => {
                    match shared.forward_direct(sock, state, packet, peer, miss, upstream_out) {
                        Ok(()) => return None,
                        Err(miss) => {
                            // Could not send now: the task below leads instead.
                            shared.cache.done(&miss.key);
                            Action::Forward(miss)
                        }
                    }
                }
                other => other,
            };
            let packet = packet.to_vec();
            let state = state.clone();
            let shared2 = shared.clone();
            let sock2 = sock.clone();
            tokio::spawn(async move {
                let how = if matches!(action, Action::Resolve(..)) {
                    "routed"
                } else {
                    "forwarded"
                };
                let out = shared2.answer_miss(&state, &packet, action, Transport::Udp).await;
                shared2.finish_udp(&sock2, peer, &packet, out, how);
            });
            None
        }
    }
}

/// Accepts TCP connections until draining starts, at most
/// [`MAX_TCP_CONNECTIONS`] at once.
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "TCP accept error");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.draining.load(Ordering::Relaxed) {
            return;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: close at once rather than let idle clients starve others.
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = shared.metrics.tcp_connection();
            let _ = serve_connection(stream, peer, shared.clone()).await;
            drop(permit);
        });
    }
}

/// One TCP connection: queries are read in a loop and answered as they
/// complete, possibly out of order (RFC 7766 pipelining).
async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let mut framed = Vec::with_capacity(msg.len() + 2);
            framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            framed.extend_from_slice(&msg);
            if wr.write_all(&framed).await.is_err() {
                break;
            }
        }
    });
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, rd.read_u16()).await {
            Ok(Ok(l)) => l as usize,
            _ => break,
        };
        let mut msg = vec![0u8; len];
        match tokio::time::timeout(TCP_IDLE, rd.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        if shared.draining.load(Ordering::Relaxed) {
            break;
        }
        if !shared.limiter.allow(peer.ip(), Instant::now()) {
            shared.metrics.rate_limited();
            continue;
        }
        let Ok(permit) = shared.in_flight.try_acquire() else {
            shared.overloaded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        permit.forget();
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let out = shared.answer(&msg, peer, Transport::Tcp).await;
            shared.log_query(peer, Transport::Tcp, &msg, out.as_deref(), "tcp");
            if let Some(out) = out {
                shared.metrics.answered(Transport::Tcp, &out);
                let _ = tx.send(out).await;
            }
            shared.in_flight.add_permits(1);
        });
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}
