//! Sending queries to the upstream resolvers.
//!
//! UDP queries leave from a small pool of sockets on kernel-chosen (random)
//! ports, each with a random ID; a reader task per socket hands each answer to
//! the query that waits for it only when ID, source address and question all
//! match, so a forged answer is dropped rather than believed. A truncated
//! answer is asked again over TCP. Failover goes through the upstreams in
//! order, trying the next on timeout, SERVFAIL or REFUSED.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

use crate::batch::SendBatch;
use crate::wire::{self, Header, Query, rcode};

/// UDP sockets per address family.
const POOL: usize = 8;
/// Largest answer accepted over UDP.
const MAX_UDP: usize = 65535;

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("no upstream resolver is configured")]
    NoUpstreams,
    #[error("the query to send is malformed")]
    BadQuery,
    #[error("{0}: timed out")]
    Timeout(SocketAddr),
    #[error("{0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("{0}: answer does not match the question")]
    Mismatch(SocketAddr),
    #[error("every upstream failed; last: {0}")]
    AllFailed(Box<UpstreamError>),
}

struct Pending {
    server: SocketAddr,
    qname_lower: Vec<u8>,
    qtype: u16,
    qclass: u16,
    waiter: Waiter,
}

/// Who gets the answer to a pending query.
enum Waiter {
    /// A task awaiting it.
    Task(oneshot::Sender<Vec<u8>>),
    /// A callback run by the socket's reader (or by the timeout sweep), so
    /// that a plain forwarded miss needs no task, channel or timer of its own.
    Direct {
        done: DirectDone,
        sent: Instant,
        deadline: Instant,
    },
}

/// The outcome of a direct query.
pub enum DirectReply {
    Answer(Vec<u8>),
    Timeout,
}

/// Runs once with the outcome and the time the attempt took.
pub type DirectDone = Box<dyn FnOnce(DirectReply, Duration) + Send>;

/// SERVFAIL and REFUSED answers count as failures of the upstream.
fn answer_failure(resp: &[u8]) -> Option<crate::telemetry::FailReason> {
    match Header::new(resp).map(|h| h.rcode()).unwrap_or(0) {
        rcode::SERVFAIL => Some(crate::telemetry::FailReason::Servfail),
        rcode::REFUSED => Some(crate::telemetry::FailReason::Refused),
        _ => None,
    }
}

/// Direct queries waiting to be sent: one socket of the pool per address
/// family, and the messages for it. A query whose send fails is answered by
/// the timeout sweep (and retried through another upstream).
#[derive(Default)]
pub struct DirectBatch {
    families: [Option<(Arc<Slot>, SendBatch)>; 2],
}

impl DirectBatch {
    pub fn is_empty(&self) -> bool {
        self.families
            .iter()
            .all(|f| f.as_ref().is_none_or(|(_, b)| b.is_empty()))
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) {
        for fam in self.families.iter_mut() {
            if let Some((slot, mut out)) = fam.take() {
                out.flush(&slot.sock).await;
            }
        }
    }
}

/// How often the pending table is swept for direct queries that timed out.
const SWEEP_EVERY: Duration = Duration::from_millis(25);

/// Pending queries by (family is v6, local port, query ID).
type PendingKey = (bool, u16, u16);
type PendingMap = Arc<Mutex<HashMap<PendingKey, Pending, foldhash::fast::RandomState>>>;

/// One socket of the pool and the port the kernel gave it.
struct Slot {
    sock: Arc<UdpSocket>,
    port: u16,
    /// The reader task, stopped a while after the socket is rotated out.
    reader: tokio::task::AbortHandle,
}

/// The UDP sockets of one address family. Each socket is replaced by a new
/// one (on a new random port) from time to time, so that an off-path forger
/// must guess the port as well as the 16-bit ID.
struct Family {
    ip: IpAddr,
    v6: bool,
    slots: Vec<ArcSwap<Slot>>,
}

/// Counters for telemetry.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub queries: AtomicU64,
    pub timeouts: AtomicU64,
    pub spoofed: AtomicU64,
    pub tcp_retries: AtomicU64,
}

/// Health of one upstream, learned from real traffic.
#[derive(Debug)]
pub struct Health {
    pub addr: SocketAddr,
    /// Consecutive failed attempts.
    fails: AtomicU32,
    down: AtomicBool,
}

impl Health {
    fn new(addr: SocketAddr) -> Health {
        Health {
            addr,
            fails: AtomicU32::new(0),
            down: AtomicBool::new(false),
        }
    }
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }
    fn success(&self) {
        self.fails.store(0, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(upstream = %self.addr, "upstream is answering again");
        }
    }
    fn failure(&self) {
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= DOWN_AFTER && !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.addr, "upstream marked down after {n} failed attempts; trying it last and probing it in the background");
        }
    }
}

/// Consecutive failures after which an upstream is tried last.
const DOWN_AFTER: u32 = 3;

pub struct Upstreams {
    servers: ArcSwap<Vec<Arc<Health>>>,
    timeout: Duration,
    v4: Family,
    v6: Option<Family>,
    pending: PendingMap,
    next: AtomicUsize,
    pub stats: Arc<UpstreamStats>,
    rotate_next: AtomicUsize,
    metrics: Arc<crate::telemetry::Metrics>,
    /// The local ports of every pool socket (v4 then v6), for the loop check
    /// on the hot path without touching the pools.
    own_ports: [std::sync::atomic::AtomicU16; 2 * POOL],
}

/// How often one socket of each pool is replaced.
const ROTATE_EVERY: Duration = Duration::from_secs(2);

impl Upstreams {
    /// Binds the socket pool and starts the reader tasks. Must run inside a
    /// tokio runtime.
    pub async fn new(
        servers: Vec<SocketAddr>,
        per_try: Duration,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> io::Result<Upstreams> {
        metrics.set_upstreams(servers.clone());
        let pending: PendingMap = Arc::new(Mutex::new(HashMap::default()));
        let stats = Arc::new(UpstreamStats::default());
        tokio::spawn(sweep_direct(Arc::downgrade(&pending), stats.clone()));
        let v4 = Family::bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED), &pending, &stats).await?;
        // IPv6 may be disabled on the host; only needed for v6 upstreams.
        let v6 = Family::bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED), &pending, &stats)
            .await
            .ok();
        Ok(Upstreams {
            servers: ArcSwap::from_pointee(servers.into_iter().map(|a| Arc::new(Health::new(a))).collect()),
            timeout: per_try,
            v4,
            v6,
            pending,
            next: AtomicUsize::new(0),
            stats,
            rotate_next: AtomicUsize::new(0),
            metrics,
            own_ports: Default::default(),
        })
        .inspect(|u| u.refresh_own_ports())
    }

    pub fn servers(&self) -> Vec<SocketAddr> {
        self.servers.load().iter().map(|h| h.addr).collect()
    }

    /// The health of each upstream, in configured order.
    pub fn health(&self) -> Arc<Vec<Arc<Health>>> {
        self.servers.load_full()
    }

    /// Replaces the upstream list (on reload). Known upstreams keep their health.
    pub fn set_servers(&self, servers: &[SocketAddr]) {
        let old = self.servers.load();
        let new: Vec<Arc<Health>> = servers
            .iter()
            .map(|a| {
                old.iter()
                    .find(|h| h.addr == *a)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Health::new(*a)))
            })
            .collect();
        self.servers.store(Arc::new(new));
        self.metrics.set_upstreams(servers.to_vec());
    }

    /// True when `peer` is one of this proxy's own upstream sockets: a query
    /// from there means an upstream forwards back to us (a loop).
    pub fn is_own_socket(&self, peer: SocketAddr) -> bool {
        let ip = crate::net::canonical(peer.ip());
        if !(ip.is_loopback() || ip.is_unspecified()) {
            return false;
        }
        let port = peer.port();
        self.own_ports.iter().any(|p| p.load(Ordering::Relaxed) == port)
    }

    fn refresh_own_ports(&self) {
        let ports = std::iter::once(&self.v4)
            .chain(self.v6.as_ref())
            .flat_map(|f| f.slots.iter().map(|s| s.load().port));
        for (slot, port) in self.own_ports.iter().zip(ports) {
            slot.store(port, Ordering::Relaxed);
        }
    }

    /// Replaces one socket of each pool with a fresh one on a new random
    /// port; the old one keeps reading answers to queries already sent on it
    /// until they time out. Called periodically by the server.
    pub async fn rotate(&self) {
        let i = self.rotate_next.fetch_add(1, Ordering::Relaxed) % POOL;
        for fam in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            match fam.new_slot(&self.pending, &self.stats).await {
                Ok(slot) => {
                    let old = fam.slots[i].swap(Arc::new(slot));
                    // Keep reading answers to queries already sent on the old
                    // socket until they would have timed out.
                    let linger = self.timeout * 2;
                    tokio::spawn(async move {
                        tokio::time::sleep(linger).await;
                        old.reader.abort();
                    });
                }
                Err(e) => tracing::debug!(error = %e, "could not open a new upstream socket; keeping the old one"),
            }
        }
        self.refresh_own_ports();
    }

    pub fn rotate_every() -> Duration {
        ROTATE_EVERY
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True when every upstream is marked down (or none is configured).
    pub fn all_down(&self) -> bool {
        self.servers.load().iter().all(|h| h.is_down())
    }

    /// Sends one probe to each upstream marked down; one that answers is
    /// marked up again. Called periodically by the server.
    pub async fn probe_down(&self) {
        let probe = crate::wire::MessageBuilder::query(
            0,
            crate::wire::flags::RD,
            &crate::name::Name::root(),
            crate::wire::rtype::NS,
        )
        .finish();
        let servers = self.servers.load_full();
        for h in servers.iter().filter(|h| h.is_down()) {
            if self.query_one(&probe, h.addr).await.is_ok() {
                h.success();
            }
        }
    }

    /// Sends `msg` to `servers` (or the configured upstreams), in order, and
    /// returns the first usable answer. SERVFAIL and REFUSED answers move on to
    /// the next server but are returned if nothing better comes.
    pub async fn query(&self, msg: &[u8], servers: Option<&[SocketAddr]>) -> Result<Vec<u8>, UpstreamError> {
        self.query_skip(msg, servers, None).await
    }

    /// [`Upstreams::query`], leaving out `skip` (an upstream that has just
    /// failed this very query).
    pub async fn query_skip(
        &self,
        msg: &[u8],
        servers: Option<&[SocketAddr]>,
        skip: Option<SocketAddr>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let configured = self.servers.load();
        let order: Vec<(SocketAddr, Option<&Arc<Health>>)> = match servers {
            Some(list) => list.iter().map(|a| (*a, None)).collect(),
            // Healthy upstreams first, in configured order; down ones last.
            None => configured
                .iter()
                .filter(|h| !h.is_down())
                .chain(configured.iter().filter(|h| h.is_down()))
                .filter(|h| Some(h.addr) != skip)
                .map(|h| (h.addr, Some(h)))
                .collect(),
        };
        if order.is_empty() {
            return Err(UpstreamError::NoUpstreams);
        }
        let mut last_err = None;
        let mut fallback = None;
        for (server, health) in order {
            let started = tokio::time::Instant::now();
            let result = self.query_one(msg, server).await;
            if let Some(h) = health {
                match &result {
                    Ok(_) => h.success(),
                    Err(_) => h.failure(),
                }
            }
            self.observe(server, started.elapsed(), &result);
            match result {
                Ok(resp) => {
                    let rc = Header(&resp).rcode();
                    if rc == rcode::SERVFAIL || rc == rcode::REFUSED {
                        fallback.get_or_insert(resp);
                        continue;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upstream attempt failed");
                    last_err = Some(e);
                }
            }
        }
        match (fallback, last_err) {
            (Some(resp), _) => Ok(resp),
            (None, Some(e)) => Err(UpstreamError::AllFailed(Box::new(e))),
            (None, None) => Err(UpstreamError::NoUpstreams),
        }
    }

    /// The upstream a new query goes to first: the first healthy one in
    /// configured order.
    pub fn first_server(&self) -> Option<SocketAddr> {
        let servers = self.servers.load();
        servers
            .iter()
            .find(|h| !h.is_down())
            .or(servers.first())
            .map(|h| h.addr)
    }

    /// Queues `msg` for `server` in `batch` without waiting: `done` runs
    /// with the answer (already checked against ID, source and question) or
    /// with [`DirectReply::Timeout`] after the per-attempt timeout. The
    /// queries leave when the batch is flushed, in one system call per
    /// address family, so the upstream wakes once per batch rather than once
    /// per query. Gives `done` back when the query cannot be queued.
    pub fn send_direct(
        &self,
        msg: &[u8],
        server: SocketAddr,
        done: DirectDone,
        batch: &mut DirectBatch,
    ) -> Result<(), DirectDone> {
        let Ok(q) = Query::parse(msg) else { return Err(done) };
        let Some(fam) = self.family(server) else {
            return Err(done);
        };
        let (slot, out) =
            batch.families[usize::from(fam.v6)].get_or_insert_with(|| (self.pick_slot(fam), SendBatch::default()));
        let now = Instant::now();
        let waiter = Waiter::Direct {
            done,
            sent: now,
            deadline: now + self.timeout,
        };
        let id = self.register(fam, slot, server, &q, waiter);
        let mut msg = msg.to_vec();
        wire::set_id(&mut msg, id);
        out.push(msg, server);
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Health and metrics for an attempt made with [`Upstreams::send_direct`]:
    /// `answer` is None when it timed out.
    pub fn record_direct(&self, server: SocketAddr, took: Duration, answer: Option<&[u8]>) {
        if let Some(h) = self.servers.load().iter().find(|h| h.addr == server) {
            match answer {
                Some(_) => h.success(),
                None => h.failure(),
            }
        }
        let failure = match answer {
            Some(resp) => answer_failure(resp),
            None => Some(crate::telemetry::FailReason::Timeout),
        };
        self.count(server, took, answer.is_some(), failure);
    }

    /// Latency and failure metrics for one attempt.
    fn observe(&self, server: SocketAddr, took: Duration, result: &Result<Vec<u8>, UpstreamError>) {
        use crate::telemetry::FailReason;
        let failure = match result {
            Ok(resp) => answer_failure(resp),
            Err(UpstreamError::Timeout(_)) => Some(FailReason::Timeout),
            Err(UpstreamError::Mismatch(_)) => Some(FailReason::Mismatch),
            Err(_) => Some(FailReason::Io),
        };
        self.count(server, took, result.is_ok(), failure);
    }

    /// Latency of an answered attempt, and the reason of a failed one.
    fn count(&self, server: SocketAddr, took: Duration, answered: bool, failure: Option<crate::telemetry::FailReason>) {
        let Some(idx) = self.metrics.upstream_index(server) else {
            return;
        };
        if answered {
            self.metrics.upstream_latency(idx, took);
        }
        if let Some(r) = failure {
            self.metrics.upstream_failure(idx, r);
        }
    }

    /// One server: UDP, then TCP if the answer is truncated.
    pub async fn query_one(&self, msg: &[u8], server: SocketAddr) -> Result<Vec<u8>, UpstreamError> {
        let q = Query::parse(msg).map_err(|_| UpstreamError::BadQuery)?;
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let resp = self.udp(msg, server, &q).await?;
        if !Header(&resp).tc() {
            return Ok(resp);
        }
        self.stats.tcp_retries.fetch_add(1, Ordering::Relaxed);
        let resp = timeout(self.timeout * 2, tcp_query(msg, server))
            .await
            .map_err(|_| UpstreamError::Timeout(server))?
            .map_err(|e| UpstreamError::Io(server, e))?;
        if !wire::response_matches(&resp, q.qname_lower(), q.qtype, q.qclass) {
            return Err(UpstreamError::Mismatch(server));
        }
        Ok(resp)
    }

    async fn udp(&self, msg: &[u8], server: SocketAddr, q: &Query<'_>) -> Result<Vec<u8>, UpstreamError> {
        let Some(fam) = self.family(server) else {
            return Err(UpstreamError::Io(server, io::Error::other("IPv6 is not available")));
        };
        let slot = self.pick_slot(fam);
        let sock = &slot.sock;
        let (tx, rx) = oneshot::channel();
        let id = self.register(fam, &slot, server, q, Waiter::Task(tx));
        let mut out = msg.to_vec();
        wire::set_id(&mut out, id);
        if let Err(e) = sock.send_to(&out, server).await {
            self.remove((fam.v6, slot.port, id));
            return Err(UpstreamError::Io(server, e));
        }
        match timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            _ => {
                self.remove((fam.v6, slot.port, id));
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(UpstreamError::Timeout(server))
            }
        }
    }

    /// The socket pool for `server`'s address family, if there is one.
    fn family(&self, server: SocketAddr) -> Option<&Family> {
        match server {
            SocketAddr::V4(_) => Some(&self.v4),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// The next socket of a pool, round robin.
    fn pick_slot(&self, fam: &Family) -> Arc<Slot> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % fam.slots.len();
        fam.slots[i].load_full()
    }

    /// Records a query about to be sent on `slot` under a random ID that no
    /// other pending query of that socket holds; returns the ID.
    fn register(&self, fam: &Family, slot: &Slot, server: SocketAddr, q: &Query<'_>, waiter: Waiter) -> u16 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut id: u16 = rand::random();
        let mut tries = 0;
        while p.contains_key(&(fam.v6, slot.port, id)) && tries < 64 {
            id = rand::random();
            tries += 1;
        }
        p.insert(
            (fam.v6, slot.port, id),
            Pending {
                server,
                qname_lower: q.qname_lower().to_vec(),
                qtype: q.qtype,
                qclass: q.qclass,
                waiter,
            },
        );
        id
    }

    fn remove(&self, key: PendingKey) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    }
}

impl Family {
    async fn bind(ip: IpAddr, pending: &PendingMap, stats: &Arc<UpstreamStats>) -> io::Result<Family> {
        let mut fam = Family {
            ip,
            v6: ip.is_ipv6(),
            slots: Vec::with_capacity(POOL),
        };
        for _ in 0..POOL {
            let slot = fam.new_slot(pending, stats).await?;
            fam.slots.push(ArcSwap::from_pointee(slot));
        }
        Ok(fam)
    }

    async fn new_slot(&self, pending: &PendingMap, stats: &Arc<UpstreamStats>) -> io::Result<Slot> {
        let sock = Arc::new(UdpSocket::bind(SocketAddr::new(self.ip, 0)).await?);
        let port = sock.local_addr()?.port();
        let reader = tokio::spawn(read_answers(
            sock.clone(),
            (self.v6, port),
            pending.clone(),
            stats.clone(),
        ))
        .abort_handle();
        Ok(Slot { sock, port, reader })
    }
}

async fn read_answers(sock: Arc<UdpSocket>, (v6, port): (bool, u16), pending: PendingMap, stats: Arc<UpstreamStats>) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems; keep reading.
                tracing::trace!(error = %e, "upstream socket receive error");
                continue;
            }
        };
        let resp = &buf[..n];
        let Ok(h) = Header::new(resp) else { continue };
        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let key = (v6, port, h.id());
        let ok = p
            .get(&key)
            .is_some_and(|w| w.server == from && wire::response_matches(resp, &w.qname_lower, w.qtype, w.qclass));
        if !ok {
            drop(p);
            stats.spoofed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%from, "dropped an upstream answer that matches no query");
            continue;
        }
        let Some(w) = p.remove(&key) else { continue };
        drop(p);
        match w.waiter {
            Waiter::Task(tx) => {
                let _ = tx.send(resp.to_vec());
            }
            Waiter::Direct { done, sent, .. } => done(DirectReply::Answer(resp.to_vec()), sent.elapsed()),
        }
    }
}

/// Ends direct queries whose time is up, until the pending table is gone.
async fn sweep_direct(
    pending: std::sync::Weak<Mutex<HashMap<PendingKey, Pending, foldhash::fast::RandomState>>>,
    stats: Arc<UpstreamStats>,
) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pending) = pending.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<Pending> = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<PendingKey> = p
                .iter()
                .filter(|(_, w)| matches!(w.waiter, Waiter::Direct { deadline, .. } if deadline <= now))
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| p.remove(k)).collect()
        };
        for w in expired {
            stats.timeouts.fetch_add(1, Ordering::Relaxed);
            if let Waiter::Direct { done, sent, .. } = w.waiter {
                done(DirectReply::Timeout, sent.elapsed());
            }
        }
    }
}

/// One query over a fresh TCP connection (RFC 7766 framing).
pub async fn tcp_query(msg: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(server).await?;
    s.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    framed.extend_from_slice(msg);
    s.write_all(&framed).await?;
    let len = s.read_u16().await? as usize;
    let mut resp = vec![0u8; len];
    s.read_exact(&mut resp).await?;
    if resp.len() < 2 || resp[0..2] != msg[0..2] {
        return Err(io::Error::other("TCP answer with another ID"));
    }
    Ok(resp)
}

/// The nameservers of a resolv.conf text, in order.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then(|| w.next())?
        })
        .filter_map(|a| {
            // Strip an IPv6 zone ("fe80::1%eth0"): not routable from here.
            let a = a.split('%').next()?;
            a.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let t = "# comment\nnameserver 10.0.0.2\nsearch corp\nnameserver ::1\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(t),
            vec!["10.0.0.2:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
    }
}
