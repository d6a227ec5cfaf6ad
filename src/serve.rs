//! `dnsbridge serve`: start-up, hot reload and shutdown around the server.
//!
//! The config is read and validated whole before anything changes; a reload
//! (SIGHUP, or the file changing on disk) builds a complete new [`State`] and
//! swaps it in atomically, or keeps the old one and says why. Listeners are
//! bound once and never re-bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use thiserror::Error;
use tokio::task::JoinHandle;

use crate::cache::{self, Cache, CacheSettings};
use crate::config::{self, Config, Diagnostic, LoadError, Route};
use crate::core::{Settings, State};
use crate::net::Cidr;
use crate::ratelimit::RateLimiter;
use crate::route::RouteTable;
use crate::server::{self, Shared};
use crate::telemetry::{self, Metrics};
use crate::upstream::{self, Upstreams};

/// Settings given on the command line; each overrides the file when set.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub upstreams: Vec<SocketAddr>,
    pub allow: Vec<Cidr>,
    pub cname_ttl: Option<u32>,
    pub flatten: bool,
    pub upstream_timeout: Option<Duration>,
    pub cache_bytes: Option<u64>,
    pub rate_limit: Option<u32>,
    pub metrics: Option<SocketAddr>,
    /// Switch to this user once the listeners are bound.
    pub user: Option<String>,
    /// Log every query (client, name, type, outcome).
    pub query_log: bool,
    pub egress_set: Option<String>,
    pub egress_grace: Option<Duration>,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{path}: {count} error(s) in the config; nothing changed. Run `dnsbridge validate {path}` to see them all")]
    Invalid {
        path: String,
        count: usize,
        diagnostics: Vec<Diagnostic>,
    },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ServeError {
    pub fn is_config(&self) -> bool {
        !matches!(self, ServeError::Io(_))
    }
}

/// Loads the file (if any) and applies the overrides.
pub fn effective_config(o: &Overrides) -> Result<Config, ServeError> {
    let mut cfg = match &o.config {
        Some(path) => config::load_file(path).map_err(|e| match e {
            LoadError::Invalid { path, diagnostics, .. } => ServeError::Invalid {
                path: path.display().to_string(),
                count: diagnostics.len(),
                diagnostics,
            },
            e => ServeError::Config(e.to_string()),
        })?,
        None => Config::default(),
    };
    let rt = &mut cfg.runtime;
    if !o.listen.is_empty() {
        rt.listen = o.listen.clone();
    }
    if !o.upstreams.is_empty() {
        rt.upstreams = o.upstreams.clone();
    }
    if !o.allow.is_empty() {
        rt.allow = o.allow.clone();
    }
    if let Some(t) = o.cname_ttl {
        rt.cname_ttl = t;
    }
    if o.flatten {
        rt.flatten = true;
    }
    if let Some(t) = o.upstream_timeout {
        rt.upstream_timeout = t;
    }
    if o.metrics.is_some() {
        rt.metrics = o.metrics;
    }
    if o.egress_set.is_some() {
        rt.egress_set = o.egress_set.clone();
    }
    if let Some(g) = o.egress_grace {
        rt.egress_grace = g;
    }
    if let Some(b) = o.cache_bytes {
        rt.cache_bytes = b;
    }
    if let Some(r) = o.rate_limit {
        rt.rate_limit = r;
    }
    Ok(cfg)
}

/// True when sending to `upstream` would reach one of our own listeners.
pub fn is_self(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        l.port() == upstream.port()
            && (l.ip() == upstream.ip()
                || (l.ip().is_unspecified() && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
    })
}

/// The upstreams to use: the configured ones (refusing any that is this
/// proxy), or resolv.conf's minus this proxy.
pub fn resolve_upstreams(cfg: &Config, listen: &[SocketAddr]) -> Result<Vec<SocketAddr>, ServeError> {
    for r in &cfg.routes {
        if let Some(res) = r.resolver
            && is_self(res, listen)
        {
            return Err(ServeError::Config(format!(
                "the route for {} resolves through {res}, which is this proxy itself: a forwarding loop",
                r.source
            )));
        }
    }
    if let Some(u) = cfg.runtime.upstreams.iter().find(|u| is_self(**u, listen)) {
        return Err(ServeError::Config(format!(
            "upstream {u} is this proxy's own listen address: that would be a forwarding loop"
        )));
    }
    if !cfg.runtime.upstreams.is_empty() {
        return Ok(cfg.runtime.upstreams.clone());
    }
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    Ok(upstream::parse_resolv_conf(&text)
        .into_iter()
        .filter(|u| !is_self(*u, listen))
        .collect())
}

pub fn build_state(cfg: &Config) -> State {
    State {
        table: RouteTable::new(cfg.routes.clone()),
        settings: Settings {
            allow: cfg.runtime.allow.clone(),
            cname_ttl: cfg.runtime.cname_ttl,
            flatten: cfg.runtime.flatten,
        },
    }
}

/// Two routes answer the same way (positions in the file do not matter).
fn same_route(a: Option<&Route>, b: Option<&Route>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.source == b.source
                && a.destination == b.destination
                && a.resolver == b.resolver
                && a.flatten == b.flatten
                && a.ttl == b.ttl
        }
        _ => false,
    }
}

/// A running proxy: what reloads and shutdown act on.
pub struct Running {
    pub shared: Arc<Shared>,
    pub bound: Vec<(&'static str, SocketAddr)>,
    pub listen: Vec<SocketAddr>,
    overrides: Overrides,
    tasks: Vec<JoinHandle<()>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unix time of the last successful (re)load.
    pub last_reload_ok: AtomicU64,
    config_stamp: Option<FileStamp>,
}

impl Running {
    /// Binds every listener and starts serving.
    pub async fn start(o: Overrides) -> Result<Arc<Running>, ServeError> {
        // Taken before the file is read, so that a change made while the
        // proxy starts is seen by the watcher.
        let config_stamp = o.config.as_deref().and_then(stamp);
        let cfg = effective_config(&o)?;
        for w in &cfg.warnings {
            tracing::warn!("config {}: {} [{}]", w.pos, w.message, w.rule);
        }
        let listen = cfg.runtime.listen.clone();
        let ups = resolve_upstreams(&cfg, &listen)?;
        if ups.is_empty() {
            tracing::warn!(
                "no upstream resolver: /etc/resolv.conf names none besides this proxy; give --upstream. Routes to IP addresses still answer."
            );
        }
        let metrics = Arc::new(Metrics::new());
        let upstreams = Upstreams::new(ups.clone(), cfg.runtime.upstream_timeout, metrics.clone()).await?;
        let cache = Cache::new(CacheSettings {
            max_bytes: cfg.runtime.cache_bytes,
            ..CacheSettings::default()
        });
        let limiter = RateLimiter::new(cfg.runtime.rate_limit, true);
        let egress = match &cfg.runtime.egress_set {
            Some(set) => {
                // Created (if missing) before privileges are dropped.
                let eg = crate::egress::EgressSet::start(set.clone(), cfg.runtime.egress_grace)
                    .map_err(|e| ServeError::Config(format!("egress set {set}: {e}")))?;
                tracing::info!(set, grace = ?cfg.runtime.egress_grace, "filling the egress set with routed addresses");
                Some(eg)
            }
            None => None,
        };
        let shared = Shared::new(build_state(&cfg), upstreams, cache, limiter, egress, metrics.clone());
        metrics.set_routes(telemetry::route_labels(&cfg.routes));
        metrics.reload_succeeded();
        shared.query_log.store(o.query_log, Ordering::Relaxed);
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for addr in &listen {
            let (udp, tcp) = bind_pair(*addr)?;
            let b = udp.local_addr()?;
            tracing::info!("bound udp {b}");
            tracing::info!("bound tcp {}", tcp.local_addr()?);
            bound.push(("udp", b));
            bound.push(("tcp", tcp.local_addr()?));
            tasks.push(tokio::spawn(server::serve_udp(Arc::new(udp), shared.clone())));
            tasks.push(tokio::spawn(server::serve_tcp(tcp, shared.clone())));
        }
        let metrics_listener = match cfg.runtime.metrics {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind metrics {addr}: {e}")))?;
                tracing::info!("bound metrics {}", l.local_addr()?);
                Some(l)
            }
            None => None,
        };
        if let Some(user) = &o.user {
            crate::privdrop::drop_to(user, cfg.runtime.egress_set.is_some())
                .map_err(|e| ServeError::Config(format!("cannot drop privileges: {e}")))?;
        }
        tracing::info!(
            routes = cfg.routes.len(),
            upstreams = ?ups,
            "dnsbridge serving; reload with SIGHUP or by editing the config file"
        );
        let running = Arc::new(Running {
            shared,
            bound,
            listen,
            overrides: o,
            tasks,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok: AtomicU64::new(unix_now()),
            config_stamp,
        });
        running.shared.upstreams_prober();
        if let Some(l) = metrics_listener {
            let status: Arc<dyn telemetry::Status> =
                Arc::new(ServeStatus(Arc::downgrade(&running), Default::default()));
            tokio::spawn(telemetry::serve_http(l, metrics, status));
        }
        Ok(running)
    }

    /// Re-reads the config; swaps it in whole, or keeps the old one.
    pub fn reload(&self) -> Result<(), ServeError> {
        let result = self.try_reload();
        match &result {
            Ok(()) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.last_reload_ok.store(unix_now(), Ordering::Relaxed);
                self.shared.metrics.reload_succeeded();
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.reload_failed();
                if let ServeError::Invalid { path, diagnostics, .. } = e {
                    for d in diagnostics {
                        tracing::error!("{path}:{}: {} [{}]", d.pos, d.message, d.rule);
                    }
                }
                tracing::error!("reload failed, still serving the previous config: {e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), ServeError> {
        let cfg = effective_config(&self.overrides)?;
        if cfg.runtime.listen != self.listen {
            tracing::warn!(
                "listen addresses changed in the config; listeners are never re-bound on reload: restart to apply"
            );
        }
        let ups = resolve_upstreams(&cfg, &self.listen)?;
        let new = Arc::new(build_state(&cfg));
        let old = self.shared.state.swap(new.clone());
        self.shared.metrics.set_routes(telemetry::route_labels(&cfg.routes));
        self.shared.upstreams.set_servers(&ups);
        let settings_changed =
            old.settings.cname_ttl != new.settings.cname_ttl || old.settings.flatten != new.settings.flatten;
        // A routed answer may depend on several routes (a chain a -> b -> c):
        // drop the answers that went through a route that changed or went
        // away, and the cached answers of names whose route is new.
        let kept: std::collections::HashSet<u64> = (0..new.table.routes().len())
            .map(|i| new.table.fingerprint(i))
            .collect();
        let changed: std::collections::HashSet<u64> = (0..old.table.routes().len())
            .map(|i| old.table.fingerprint(i))
            .filter(|f| !kept.contains(f))
            .collect();
        self.shared.cache.remove_where(|k, e| {
            let name = cache::key_name(k);
            // Settings shape every routed answer; an entry stored without
            // its routes is dropped on any route change.
            (e.routed && (settings_changed || (e.routes.is_empty() && !changed.is_empty())))
                || e.routes.iter().any(|f| changed.contains(f))
                || !same_route(
                    old.table.lookup(name).map(|m| m.route),
                    new.table.lookup(name).map(|m| m.route),
                )
        });
        for w in &cfg.warnings {
            tracing::warn!("config {}: {} [{}]", w.pos, w.message, w.rule);
        }
        tracing::info!(routes = cfg.routes.len(), "config reloaded");
        Ok(())
    }

    /// Stops taking queries, waits for those in flight (bounded), and returns.
    pub async fn drain(&self, bound: Duration) {
        self.shared.draining.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        let deadline = tokio::time::Instant::now() + bound;
        while self.shared.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(unanswered = self.shared.in_flight(), "drained");
    }

    /// Watches the config file (polling its metadata, which also sees a file
    /// replaced by rename, as editors and config syncers do).
    pub fn watch_config(self: &Arc<Self>) {
        let Some(path) = self.overrides.config.clone() else {
            return;
        };
        let me = Arc::downgrade(self);
        let mut last = self.config_stamp;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                // Let a writer finish: reload once the file has stopped changing.
                tokio::time::sleep(SETTLE).await;
                let settled = stamp(&path);
                if settled != now {
                    continue;
                }
                last = settled;
                let Some(me) = me.upgrade() else { return };
                if now.is_none() {
                    tracing::warn!(path = %path.display(), "config file disappeared; still serving the previous config");
                    continue;
                }
                tracing::info!(path = %path.display(), "config file changed; reloading");
                let _ = me.reload();
            }
        });
    }
}

/// What `/readyz`, `/routes` and the scrape-time metrics read.
struct ServeStatus(std::sync::Weak<Running>, std::sync::Mutex<(u64, u64)>);

impl telemetry::Status for ServeStatus {
    fn ready(&self) -> Result<(), String> {
        let Some(r) = self.0.upgrade() else {
            return Err("shutting down".into());
        };
        if r.shared.draining.load(Ordering::Relaxed) {
            return Err("draining for shutdown".into());
        }
        let ups: Vec<(SocketAddr, bool)> = r
            .shared
            .upstreams
            .health()
            .iter()
            .map(|h| (h.addr, !h.is_down()))
            .collect();
        telemetry::readiness(!r.bound.is_empty(), &ups)
    }

    fn routes_json(&self) -> serde_json::Value {
        let Some(r) = self.0.upgrade() else {
            return serde_json::Value::Array(Vec::new());
        };
        let st = r.shared.state.load();
        telemetry::routes_json(st.table.routes(), st.settings.cname_ttl, st.settings.flatten)
    }

    fn refresh(&self, m: &Metrics) {
        let Some(r) = self.0.upgrade() else { return };
        let c = &r.shared.cache;
        m.set_cache_size(c.len() as u64, c.bytes());
        m.set_cache_totals(
            c.stats.hits.load(Ordering::Relaxed),
            c.stats.misses.load(Ordering::Relaxed),
            c.stats.stale_served.load(Ordering::Relaxed),
        );
        for h in r.shared.upstreams.health().iter() {
            if let Some(idx) = m.upstream_index(h.addr) {
                m.set_upstream_up(idx, !h.is_down());
            }
        }
        if let Some(eg) = &r.shared.egress {
            // The egress set keeps its own totals; pass on what is new.
            let st = eg.stats();
            let mut seen = self.1.lock().unwrap_or_else(|e| e.into_inner());
            m.egress_entries_added(st.added.saturating_sub(seen.0));
            for _ in 0..st.failures.saturating_sub(seen.1).min(10_000) {
                m.egress_failure();
            }
            *seen = (st.added, st.failures);
        }
    }

    fn extra_metrics(&self) -> Vec<telemetry::Extra> {
        let Some(r) = self.0.upgrade() else { return Vec::new() };
        let overloaded = telemetry::Extra::counter(
            "dnsbridge_overloaded_total",
            "Cache misses answered SERVFAIL at once because too many queries were in flight upstream.",
            r.shared.overloaded.load(Ordering::Relaxed) as f64,
        );
        let Some(eg) = &r.shared.egress else {
            return vec![overloaded];
        };
        let st = eg.stats();
        vec![
            overloaded,
            telemetry::Extra::counter(
                "dnsbridge_egress_entries_expired_total",
                "Egress set entries that reached their timeout without being renewed.",
                st.expired as f64,
            ),
            telemetry::Extra::gauge(
                "dnsbridge_egress_entries",
                "Addresses in the egress set now.",
                st.live as f64,
            ),
        ]
    }
}

/// Binds UDP and TCP on the same address and port. With port 0 the kernel
/// picks the UDP port, which another process may hold for TCP: then both are
/// tried again on a new port.
fn bind_pair(addr: SocketAddr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener), ServeError> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = server::bind_udp(addr)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
        let b = udp.local_addr()?;
        match server::bind_tcp(b) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(std::io::Error::new(e.kind(), format!("cannot bind TCP {b}: {e}"))),
        }
    }
    Err(ServeError::Io(
        last.unwrap_or_else(|| std::io::Error::other("no attempt made")),
    ))
}

const WATCH_EVERY: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_millis(100);

type FileStamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    fn upstreams_prober(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last_rotation = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(me) = me.upgrade() else { return };
                me.upstreams.probe_down().await;
                if last_rotation.elapsed() >= Upstreams::rotate_every() {
                    me.upstreams.rotate().await;
                    last_rotation = tokio::time::Instant::now();
                }
            }
        });
    }
}
