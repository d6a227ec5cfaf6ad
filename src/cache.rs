//! The answer cache.
//!
//! Whole answers are kept as wire bytes, keyed by (name, type, class, DO, CD,
//! EDNS present), with the offsets of their TTL fields so that serving an
//! entry is a copy plus a few two-byte and four-byte patches: ID, question
//! letter case, RD, and each TTL counted down (RFC 1035 section 6.1.2).
//! Negative answers live as long as their SOA allows (RFC 2308). Expired
//! entries stay until evicted, so that they can be served stale when every
//! upstream fails (RFC 8767). The cache is bounded in bytes.
//!
//! Time is a `tokio::time::Instant` passed in by the caller, so tests can
//! pause the clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quick_cache::Weighter;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wire::{self, HEADER_LEN, Header, Query, flags, rcode, read_u16, read_u32, rtype, skip_name};

/// TTL of an answer served stale (RFC 8767 recommends 30 s).
pub const STALE_TTL: u32 = 30;

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub max_bytes: u64,
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// Cap on how long a negative answer is kept.
    pub max_negative_ttl: u32,
    /// How long past expiry an entry may still be served stale.
    pub stale_for: Duration,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            max_bytes: 64 << 20,
            min_ttl: 0,
            max_ttl: 86400,
            max_negative_ttl: 3600,
            stale_for: Duration::from_secs(86400),
        }
    }
}

/// The cache key: lowercase QNAME wire bytes, then QTYPE, QCLASS and a byte of
/// bits (DO, CD, EDNS present) that change what the answer holds.
pub type Key = Box<[u8]>;

/// Builds the key for a parsed query.
pub fn key_for(q: &Query<'_>) -> Key {
    let name = q.qname_lower();
    let mut k = Vec::with_capacity(name.len() + 5);
    k.extend_from_slice(name);
    k.extend_from_slice(&q.qtype.to_be_bytes());
    k.extend_from_slice(&q.qclass.to_be_bytes());
    let bits = u8::from(q.dnssec_ok()) | (u8::from(q.header().cd()) << 1) | (u8::from(q.edns.is_some()) << 2);
    k.push(bits);
    k.into_boxed_slice()
}

/// The lowercase QNAME part of a key.
pub fn key_name(k: &[u8]) -> &[u8] {
    &k[..k.len().saturating_sub(5)]
}

/// The leader's sender (dropped when done) and a receiver to hand out.
type InFlight = (watch::Sender<()>, watch::Receiver<()>);

#[derive(Debug)]
pub struct Entry {
    msg: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    stored: Instant,
    expires: Instant,
    /// Answered by a route.
    pub routed: bool,
    /// Fingerprints of every route the answer went through (a chain can
    /// use several): a reload that changes one of them drops the entry.
    pub routes: Box<[u64]>,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Key, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Key, val: &Arc<Entry>) -> u64 {
        (key.len() + val.msg.len() + val.ttl_offsets.len() * 2 + 96) as u64
    }
}

#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stale_served: AtomicU64,
    pub inserts: AtomicU64,
}

pub struct Cache {
    entries: quick_cache::sync::Cache<Key, Arc<Entry>, ByBytes>,
    settings: CacheSettings,
    /// Queries in flight upstream: waiters hold a receiver whose sender the
    /// leader drops when done, which wakes them even if they start waiting late.
    inflight: Mutex<HashMap<Key, InFlight, foldhash::fast::RandomState>>,
    pub stats: CacheStats,
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Expired, but within the stale window: usable only if upstreams fail.
    Stale(Arc<Entry>),
    Miss,
}

impl Cache {
    pub fn new(settings: CacheSettings) -> Cache {
        let est_items = (settings.max_bytes / 256).max(16) as usize;
        Cache {
            entries: quick_cache::sync::Cache::with_weighter(est_items, settings.max_bytes.max(4096), ByBytes),
            settings,
            inflight: Mutex::new(HashMap::default()),
            stats: CacheStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.entries.weight()
    }

    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        match self.entries.get(key) {
            Some(e) if now < e.expires => {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Fresh(e)
            }
            Some(e) if now < e.expires + self.settings.stale_for => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Stale(e)
            }
            _ => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss
            }
        }
    }

    /// Stores a complete answer (never a truncated one, never SERVFAIL).
    /// Returns false when the answer is not cacheable.
    pub fn insert(&self, key: Key, msg: &[u8], routed: bool, now: Instant) -> bool {
        self.insert_with_routes(key, msg, routed, &[], now)
    }

    /// Stores a routed answer with the fingerprints of the routes it used.
    pub fn insert_with_routes(&self, key: Key, msg: &[u8], routed: bool, routes: &[u64], now: Instant) -> bool {
        if self.settings.max_bytes == 0 {
            return false;
        }
        let Some((offsets, ttl)) = scan_ttls(msg, &self.settings) else {
            return false;
        };
        let ttl = ttl.clamp(self.settings.min_ttl, self.settings.max_ttl);
        if ttl == 0 {
            return false;
        }
        let entry = Entry {
            msg: msg.into(),
            ttl_offsets: offsets.into(),
            stored: now,
            expires: now + Duration::from_secs(ttl as u64),
            routed,
            routes: routes.into(),
        };
        self.entries.insert(key, Arc::new(entry));
        self.stats.inserts.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Drops entries the predicate selects (on reload: the names whose route changed).
    pub fn remove_where(&self, drop: impl Fn(&[u8], &Entry) -> bool) {
        self.entries.retain(|k, v| !drop(k, v));
    }

    pub fn clear(&self) {
        self.entries.clear();
    }

    /// Joins the upstream query already in flight for `key`, or becomes the
    /// one that sends it. Returns None for the leader (who must call
    /// [`Cache::done`]); a waiter gets a receiver whose `changed()` returns
    /// once the leader is done, after which it looks the cache up again.
    pub fn join(&self, key: &Key) -> Option<watch::Receiver<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rx)) = m.get(key) {
            return Some(rx.clone());
        }
        m.insert(key.clone(), watch::channel(()));
        None
    }

    /// The leader's query finished (with or without an answer).
    pub fn done(&self, key: &Key) {
        let entry = self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        // Dropping the sender ends every waiter's `changed()`.
        drop(entry);
    }
}

impl Entry {
    /// The answer for a client: the client's ID, question bytes and RD bit,
    /// TTLs counted down by the time spent in the cache (or set to
    /// [`STALE_TTL`] when served stale).
    pub fn serve(&self, q: &Query<'_>, now: Instant, stale: bool) -> Vec<u8> {
        let mut out = self.msg.to_vec();
        wire::set_id(&mut out, q.id());
        let qr = q.question_raw();
        if out.len() >= HEADER_LEN + qr.len() {
            out[HEADER_LEN..HEADER_LEN + qr.len()].copy_from_slice(qr);
        }
        let rd = q.header().flags() & flags::RD;
        let f = (Header(&out).flags() & !flags::RD) | rd;
        out[2..4].copy_from_slice(&f.to_be_bytes());
        let age = now.saturating_duration_since(self.stored).as_secs() as u32;
        for &off in self.ttl_offsets.iter() {
            let off = off as usize;
            let ttl = read_u32(&out, off).unwrap_or(0);
            let new = if stale { STALE_TTL } else { ttl.saturating_sub(age) };
            out[off..off + 4].copy_from_slice(&new.to_be_bytes());
        }
        out
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.expires
    }
}

/// Finds every TTL field (OPT excluded) and the time the answer may be kept:
/// the smallest TTL of the answer section for a positive answer, or the
/// negative TTL of RFC 2308 (min of SOA TTL and SOA MINIMUM) for NXDOMAIN and
/// NODATA. None when the answer must not be cached.
fn scan_ttls(msg: &[u8], s: &CacheSettings) -> Option<(Vec<u16>, u32)> {
    let h = Header::new(msg).ok()?;
    if h.tc() || h.qdcount() != 1 || msg.len() > u16::MAX as usize {
        return None;
    }
    let rc = h.rcode();
    if rc != rcode::NOERROR && rc != rcode::NXDOMAIN {
        return None;
    }
    let mut pos = skip_name(msg, HEADER_LEN).ok()? + 4;
    let an = h.ancount() as usize;
    let ns = h.nscount() as usize;
    let total = an + ns + h.arcount() as usize;
    let mut offsets = Vec::with_capacity(total);
    let mut min_answer = u32::MAX;
    let mut negative: Option<u32> = None;
    for i in 0..total {
        pos = skip_name(msg, pos).ok()?;
        let t = read_u16(msg, pos)?;
        let ttl = read_u32(msg, pos + 4)?;
        let rdlen = read_u16(msg, pos + 8)? as usize;
        let rd = pos + 10;
        if rd + rdlen > msg.len() {
            return None;
        }
        if t != rtype::OPT {
            offsets.push((pos + 4) as u16);
            if i < an {
                min_answer = min_answer.min(ttl);
            } else if i < an + ns && t == rtype::SOA && rdlen >= 20 {
                let minimum = read_u32(msg, rd + rdlen - 4)?;
                negative = Some(ttl.min(minimum));
            }
        }
        pos = rd + rdlen;
    }
    let positive = rc == rcode::NOERROR && an > 0 && min_answer != u32::MAX;
    // A NOERROR answer whose records are all CNAMEs but no final record is
    // also "negative" for this type when an SOA proves it; treat any answer
    // with an SOA and no data for the type as negative.
    let ttl = if rc == rcode::NXDOMAIN || !positive {
        negative?.min(s.max_negative_ttl)
    } else {
        min_answer
    };
    Some((offsets, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Name;
    use crate::wire::{MessageBuilder, class};

    fn q(name: &str) -> Vec<u8> {
        MessageBuilder::query(0x1111, flags::RD, &Name::parse(name).unwrap(), rtype::A).finish()
    }

    fn answer(name: &str, ttl: u32) -> Vec<u8> {
        let query = q(name);
        let p = Query::parse(&query).unwrap();
        let mut b = MessageBuilder::response(9, flags::QR | flags::RD | flags::RA, p.question_raw());
        b.put_record(1, None, rtype::A, class::IN, ttl, &[192, 0, 2, 1]);
        b.put_opt(1232, 0, false, &[]);
        b.finish()
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_counts_down_and_expires() {
        let c = Cache::new(CacheSettings::default());
        let query = q("WWW.example.test");
        let p = Query::parse(&query).unwrap();
        let now = Instant::now();
        assert!(c.insert(key_for(&p), &answer("www.example.test", 100), false, now));
        tokio::time::advance(Duration::from_secs(40)).await;
        let Lookup::Fresh(e) = c.lookup(&key_for(&p), Instant::now()) else {
            panic!("fresh")
        };
        let out = e.serve(&p, Instant::now(), false);
        let r = wire::Response::parse(&out).unwrap();
        assert_eq!(r.answers[0].ttl, 60);
        assert_eq!(out[0..2], [0x11, 0x11]);
        assert_eq!(&out[12..12 + p.question_raw().len()], p.question_raw(), "client's case");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(c.lookup(&key_for(&p), Instant::now()), Lookup::Stale(_)));
    }

    #[test]
    fn negative_ttl_from_soa() {
        let query = q("nx.example.test");
        let p = Query::parse(&query).unwrap();
        let mut b = MessageBuilder::response(9, flags::QR | rcode::NXDOMAIN as u16, p.question_raw());
        let zone = Name::parse("example.test").unwrap();
        let mut rd = zone.wire().to_vec();
        rd.extend_from_slice(zone.wire());
        for v in [1u32, 2, 3, 4, 45] {
            rd.extend_from_slice(&v.to_be_bytes());
        }
        b.put_record(2, Some(&zone), rtype::SOA, class::IN, 300, &rd);
        let (_, ttl) = scan_ttls(&b.finish(), &CacheSettings::default()).unwrap();
        assert_eq!(ttl, 45);
    }

    #[test]
    fn servfail_and_truncated_are_not_cached() {
        let mut a = answer("x.test", 100);
        a[3] |= rcode::SERVFAIL;
        assert!(scan_ttls(&a, &CacheSettings::default()).is_none());
        let mut a = answer("x.test", 100);
        a[2] |= 0x02;
        assert!(scan_ttls(&a, &CacheSettings::default()).is_none());
    }
}
