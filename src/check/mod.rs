//! `dnsbridge check`: can my executors reach my private registry?
//!
//! Runs, for each private name or URL, the stages an SRE would run by hand:
//! route (which route the name matches), DNS through the proxy (with the
//! CNAME chain, compared with the destination resolved directly upstream),
//! TCP to each address the proxy gave, TLS with SNI set to the private name
//! and the certificate checked for that name, and the registry's API. Each
//! stage has a verdict, a duration, a one-line summary and, on failure, a
//! one-line fix. The system resolver is never used: TCP and TLS go to the
//! addresses of the DNS stage.
//!
//! Exit codes: 0 all passed, 1 internal error, 2 usage or config error, then
//! the earliest failing stage over all targets: 10 route, 11 DNS, 12 TCP,
//! 13 TLS, 14 API. `--help` carries the same table ([`CheckArgs`]).
//!
//! Library use: [`prepare`] turns [`CheckArgs`] into a [`Checker`] and its
//! items, [`Checker::check_all`] returns the typed [`Report`] that `--json`
//! prints; [`run`] / [`run_blocking`] do all of it and print.

pub mod dns;
pub mod http;
pub mod report;
pub mod target;
pub mod tls;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, Destination, Source};
use crate::name::Name;
use crate::route::{MatchKind, RouteTable};

pub use report::{Report, Stage, StageReport, TargetReport, Verdict};
pub use target::{Host, Kind, Target};

pub const EXIT_OK: u8 = 0;
/// A failure of the check itself: a target that fails no stage but could not be run.
pub const EXIT_INTERNAL: u8 = 1;
/// Bad flags, an unreadable or invalid config, an unreadable --ca-file.
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_ROUTE: u8 = 10;
pub const EXIT_DNS: u8 = 11;
pub const EXIT_TCP: u8 = 12;
pub const EXIT_TLS: u8 = 13;
pub const EXIT_API: u8 = 14;

/// At most this many targets are checked at once.
const PARALLEL: usize = 8;
/// At most this many addresses of one name are tried.
const MAX_ADDRS: usize = 16;

const AFTER_HELP: &str = "\
Stages, in order (each: pass / FAIL / skip, its time, what it found, and a fix on failure):
  route  which route of --config the name matches, and its destination (skip: not routed)
  dns    A and AAAA through the proxy (--server): CNAME chain, addresses, TTLs; compared
         with the destination resolved directly from an upstream (--upstream, the
         config's upstreams, or the route's resolverIP)
  tcp    a connection to every address of the answer (never the system resolver)
  tls    handshake with SNI = the private name; the chain verified against the system
         roots plus --ca-file; the certificate must be valid for the private name
  api    docker: GET /v2/ (200, or 401 with Docker-Distribution-API-Version);
         npm: GET <base>/-/ping; pypi: GET <base>/simple/; maven, go: GET <base>/;
         http: GET the URL. 401 passes, and says which variables carry credentials.

Exit codes (the earliest failing stage over all targets):
  0   every target passed (401 'credentials needed' counts as a pass)
  1   internal error
  2   usage or config error (bad flag, unreadable --config or --ca-file)
  10  route    11  dns    12  tcp    13  tls    14  api

Credentials the jobs use, named when a registry answers 401:
  docker  DOCKER_AUTH_CONFIG        npm    NPM_TOKEN
  pypi    PIP_INDEX_URL             maven  MAVEN_USERNAME, MAVEN_PASSWORD
  go      GOAUTH or NETRC           http   NETRC

Targets: NAME, NAME:PORT, https://NAME[:PORT][/BASE/] or http://... (no TLS stage).
The kind is --kind, else http for a URL with a path, else docker. The port is the
URL's, else --port, else 443 (80 for http://). Without targets, the source of every
route in --config is checked, concurrently, with a progress line per target on stderr.
--server defaults to the config's loopback listen address (else its first), else 127.0.0.1:53.

Examples:
  dnsbridge check registry.corp.example --server 127.0.0.1:53
  dnsbridge check --config config.yaml
  dnsbridge check https://npm.corp.example/api/npm/remote/ --kind npm --ca-file corp-ca.pem
  dnsbridge check registry.corp.example:5000 --json | jq '.targets[0].failed_stage'";

/// `dnsbridge check [NAME|URL]...`
#[derive(Debug, Clone, clap::Args)]
#[command(
    about = "Check, stage by stage, that a private registry is reachable through the proxy",
    after_help = AFTER_HELP
)]
pub struct CheckArgs {
    /// Private names or URLs to check; none checks the source of every route in --config.
    #[arg(value_name = "NAME|URL")]
    pub targets: Vec<String>,

    /// The routing config (the instance's config.yaml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The DNS proxy to ask [default: the config's loopback listen address, else 127.0.0.1:53].
    #[arg(long, value_name = "ADDR:PORT", value_parser = target::parse_dns_server)]
    pub server: Option<SocketAddr>,

    /// Resolver to resolve route destinations directly, for comparison [default: the
    /// config's upstreams]. Repeat for more.
    #[arg(long = "upstream", value_name = "ADDR:PORT", value_parser = target::parse_dns_server)]
    pub upstreams: Vec<SocketAddr>,

    /// The kind of registry, which decides the API probe.
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,

    /// Extra trusted CA certificates (PEM), on top of the system roots.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,

    /// TCP port when the target gives none [default: 443, 80 for http://].
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,

    /// Time allowed for each network step (5s, 500ms, 1m).
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = target::parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// A usage or config error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Everything the stages need, shared by the concurrent checks.
pub struct Checker {
    pub server: SocketAddr,
    pub upstreams: Vec<SocketAddr>,
    pub routes: Option<RouteTable>,
    pub timeout: Duration,
    /// The config's global `flatten` (a route's own setting wins).
    flatten: bool,
    tls: Option<Arc<tls::TlsContext>>,
    ca_file: Option<PathBuf>,
}

/// What one run checks.
pub enum Item {
    Target(Target),
    /// A wildcard route source: there is no single name to check.
    Wildcard(String),
}

/// Turns the arguments into a checker and its list of targets.
pub fn prepare(args: &CheckArgs) -> Result<(Checker, Vec<Item>), UsageError> {
    let config: Option<Config> = match &args.config {
        Some(p) => Some(crate::config::load_file(p).map_err(|e| UsageError(e.to_string()))?),
        None => None,
    };
    let server = args.server.unwrap_or_else(|| {
        config
            .as_ref()
            .and_then(|c| {
                // The host reaches the proxy through its loopback listener
                // (the bridge address drops the host's own packets).
                let l = &c.runtime.listen;
                l.iter().find(|a| a.ip().is_loopback()).or(l.first()).copied()
            })
            .map(|mut sa| {
                if sa.ip().is_unspecified() {
                    sa.set_ip(if sa.is_ipv4() {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])
                    });
                }
                sa
            })
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53)))
    });
    let upstreams = if args.upstreams.is_empty() {
        config.as_ref().map(|c| c.runtime.upstreams.clone()).unwrap_or_default()
    } else {
        args.upstreams.clone()
    };
    let mut items = Vec::new();
    if args.targets.is_empty() {
        let Some(c) = &config else {
            return Err(UsageError(
                "give a NAME or URL to check, or --config FILE to check every route's source".into(),
            ));
        };
        if c.routes.is_empty() {
            return Err(UsageError(
                "the config has no routes: give a NAME or URL to check".into(),
            ));
        }
        for r in &c.routes {
            match &r.source {
                Source::Exact(n) => {
                    items.push(Item::Target(
                        target::parse_target(&n.to_string(), args.kind, args.port).map_err(UsageError)?,
                    ));
                }
                Source::Wildcard(_) => items.push(Item::Wildcard(r.source.to_string())),
            }
        }
    } else {
        for t in &args.targets {
            items.push(Item::Target(
                target::parse_target(t, args.kind, args.port).map_err(UsageError)?,
            ));
        }
    }
    let needs_tls = items.iter().any(|i| matches!(i, Item::Target(t) if t.tls));
    let tls = if needs_tls || args.ca_file.is_some() {
        Some(Arc::new(
            tls::TlsContext::new(args.ca_file.as_deref()).map_err(UsageError)?,
        ))
    } else {
        None
    };
    let checker = Checker {
        server,
        upstreams,
        flatten: config.as_ref().is_some_and(|c| c.runtime.flatten),
        routes: config.map(|c| RouteTable::new(c.routes)),
        timeout: args.timeout,
        tls,
        ca_file: args.ca_file.clone(),
    };
    Ok((checker, items))
}

/// Runs `dnsbridge check` and prints the report; returns the exit code.
pub async fn run(args: CheckArgs) -> ExitCode {
    let (checker, items) = match prepare(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dnsbridge check: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let progress = items.len() > 1;
    let report = checker.check_all(items, progress).await;
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("dnsbridge check: {e}");
                return ExitCode::from(EXIT_INTERNAL);
            }
        }
    } else {
        let stdout = std::io::stdout();
        let color = stdout.is_terminal()
            && std::env::var_os("NO_COLOR").is_none()
            && std::env::var("TERM").map_or(true, |t| t != "dumb");
        print!("{}", report::render_human(&report, color));
    }
    ExitCode::from(report.exit_code)
}

/// [`run`] on a runtime of its own, for a synchronous `main`.
pub fn run_blocking(args: CheckArgs) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => {
            eprintln!("dnsbridge check: cannot start the runtime: {e}");
            ExitCode::from(EXIT_INTERNAL)
        }
    }
}

/// A route the name matched, as the stages use it.
struct RouteInfo {
    /// The name the proxy resolves (None for IP destinations).
    dest_name: Option<Name>,
    dest_ips: Vec<IpAddr>,
    resolver: Option<SocketAddr>,
    flatten: bool,
    summary: String,
}

impl Checker {
    /// Checks every item, at most eight at once; the report keeps the
    /// order of `items`. With `progress`, a line per finished target goes to stderr.
    pub async fn check_all(self, items: Vec<Item>, progress: bool) -> Report {
        let me = Arc::new(self);
        let total = items.len();
        if progress {
            eprintln!("checking {total} targets through {}", me.server);
        }
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut set = JoinSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let me = me.clone();
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let r = match item {
                    Item::Target(t) => me.check(&t).await,
                    Item::Wildcard(src) => wildcard_report(&src),
                };
                (i, r)
            });
        }
        let mut done: Vec<Option<TargetReport>> = vec![None; total];
        let mut finished = 0;
        while let Some(res) = set.join_next().await {
            let Ok((i, r)) = res else { continue };
            finished += 1;
            if progress {
                let verdict = match r.failed_stage {
                    Some(s) => format!(
                        "FAIL at {} ({})",
                        s.as_str(),
                        r.stage(s).map_or("", |x| x.summary.as_str())
                    ),
                    None if r.stages.iter().all(|s| s.verdict == Verdict::Skip) => "skipped".to_string(),
                    None if r.needs_credentials => "ok (credentials needed)".to_string(),
                    None => "ok".to_string(),
                };
                eprintln!("[{finished}/{total}] {}: {verdict}", r.target);
            }
            done[i] = Some(r);
        }
        let targets: Vec<TargetReport> = done.into_iter().flatten().collect();
        let mut report = Report::from_targets(me.server.to_string(), targets);
        if report.targets.len() != total && report.ok {
            report.ok = false;
            report.exit_code = EXIT_INTERNAL;
        }
        report
    }

    /// Runs the stages for one target.
    pub async fn check(&self, t: &Target) -> TargetReport {
        let mut stages: Vec<StageReport> = Vec::with_capacity(5);
        let mut needs_credentials = false;

        let (route_report, route) = self.route_stage(t);
        stages.push(route_report);

        'run: {
            if failed(&stages) {
                break 'run;
            }
            let (r, ips) = self.dns_stage(t, route.as_ref()).await;
            stages.push(r);
            if failed(&stages) {
                break 'run;
            }
            let (r, streams) = self.tcp_stage(t, &ips).await;
            stages.push(r);
            if failed(&stages) {
                break 'run;
            }
            if !t.tls {
                stages.push(StageReport::skip(Stage::Tls, "plain http:// URL: no TLS"));
                let Some((_, mut s)) = streams.into_iter().next() else {
                    break 'run;
                };
                let (r, creds) = self.api_stage(t, &mut s).await;
                needs_credentials = creds;
                stages.push(r);
                break 'run;
            }
            let (r, tls_stream) = self.tls_stage(t, streams, route.as_ref()).await;
            stages.push(r);
            let Some(mut s) = tls_stream else { break 'run };
            let (r, creds) = self.api_stage(t, &mut s).await;
            needs_credentials = creds;
            stages.push(r);
        }

        let failed_stage = stages.iter().find(|s| s.verdict == Verdict::Fail).map(|s| s.stage);
        for s in Stage::ALL {
            if !stages.iter().any(|r| r.stage == s) {
                let why = match failed_stage {
                    Some(f) => format!("not run: {} failed", f.as_str()),
                    None => "not run".to_string(),
                };
                stages.push(StageReport::skip(s, why));
            }
        }
        TargetReport {
            target: t.input.clone(),
            host: t.host.to_string(),
            port: t.port,
            kind: t.kind,
            url: t.url(),
            ok: failed_stage.is_none(),
            failed_stage,
            exit_code: failed_stage.map_or(EXIT_OK, Stage::exit_code),
            needs_credentials: needs_credentials && failed_stage.is_none(),
            stages,
        }
    }

    fn route_stage(&self, t: &Target) -> (StageReport, Option<RouteInfo>) {
        let start = Instant::now();
        let name = match &t.host {
            Host::Ip(_) => {
                return (StageReport::skip(Stage::Route, "an IP address: nothing to route"), None);
            }
            Host::Name(n) => n,
        };
        let Some(table) = &self.routes else {
            return (
                StageReport::skip(Stage::Route, "no --config: the route is not checked"),
                None,
            );
        };
        let Some(m) = table.lookup_name(name) else {
            return (
                StageReport::skip(
                    Stage::Route,
                    format!("{name} is not routed: the proxy forwards it unchanged"),
                )
                .with_details(json!({ "routed": false })),
                None,
            );
        };
        let kind = match m.kind {
            MatchKind::Exact => "exact",
            MatchKind::Wildcard => "wildcard",
        };
        let r = m.route;
        let dest_name = m.target(name.wire());
        let dest_ips = match &r.destination {
            Destination::Ips(ips) => ips.clone(),
            _ => Vec::new(),
        };
        let resolved = match (&r.destination, &dest_name) {
            (Destination::Wildcard(_), Some(d)) => format!(" (here {d})"),
            _ => String::new(),
        };
        let via = r.resolver.map(|a| format!(", resolved via {a}")).unwrap_or_default();
        let summary = format!(
            "{kind} route {} -> {}{resolved}{via} (config route #{})",
            r.source,
            r.destination,
            r.index + 1
        );
        if matches!(r.destination, Destination::Wildcard(_)) && dest_name.is_none() {
            return (
                StageReport::fail(
                    Stage::Route,
                    start.elapsed(),
                    format!("{summary}: the rewritten name is longer than 255 bytes"),
                    "shorten the destination suffix of this wildcard route",
                ),
                None,
            );
        }
        let details = json!({
            "routed": true,
            "match": kind,
            "source": r.source.to_string(),
            "destination": r.destination.to_string(),
            "target": dest_name.as_ref().map(|n| n.to_string()),
            "resolver": r.resolver.map(|a| a.to_string()),
            "index": r.index,
        });
        let info = RouteInfo {
            dest_name,
            dest_ips,
            resolver: r.resolver,
            flatten: r.flatten.unwrap_or(self.flatten),
            summary: r.destination.to_string(),
        };
        (
            StageReport::pass(Stage::Route, start.elapsed(), summary).with_details(details),
            Some(info),
        )
    }

    async fn dns_stage(&self, t: &Target, route: Option<&RouteInfo>) -> (StageReport, Vec<IpAddr>) {
        let start = Instant::now();
        let name = match &t.host {
            Host::Ip(ip) => {
                return (StageReport::skip(Stage::Dns, "an IP address: no lookup"), vec![*ip]);
            }
            Host::Name(n) => n,
        };
        // The destination straight from an upstream, for comparison.
        let upstream = route
            .and_then(|r| r.resolver)
            .or_else(|| self.upstreams.first().copied());
        let compare_name = match route {
            Some(r) => r.dest_name.clone(),
            None => Some(name.clone()),
        };
        let direct = async {
            match (upstream, &compare_name) {
                (Some(up), Some(n)) => Some(dns::resolve(up, n, self.timeout).await),
                _ => None,
            }
        };
        let (proxy, direct) = tokio::join!(dns::resolve(self.server, name, self.timeout), direct);
        let took = start.elapsed();
        let server = self.server;
        let start_proxy =
            format!("start `dnsbridge serve` listening on {server}, or point --server at the proxy the executors use");
        let res = match proxy {
            Ok(r) => r,
            Err(e) => {
                let (summary, fix) = if e.refused_or_unreachable() {
                    (
                        format!("nothing answers DNS on {server} (port unreachable)"),
                        start_proxy,
                    )
                } else if let dns::DnsError::Timeout(..) = e {
                    (e.to_string(), start_proxy)
                } else {
                    (
                        e.to_string(),
                        format!("{server} does not answer as a DNS server: check --server"),
                    )
                };
                return (
                    StageReport::fail(Stage::Dns, took, summary, fix)
                        .with_details(json!({ "server": server.to_string(), "error": e.to_string() })),
                    Vec::new(),
                );
            }
        };
        let direct_json = match &direct {
            Some(Ok(d)) => json!({
                "server": d.server.to_string(),
                "name": compare_name.as_ref().map(|n| n.to_string()),
                "rcode": d.rcode,
                "chain": d.chain,
                "addresses": d.addresses,
            }),
            Some(Err(e)) => {
                json!({ "server": upstream.map(|u| u.to_string()), "error": e.to_string() })
            }
            None => serde_json::Value::Null,
        };
        let details = json!({
            "server": server.to_string(),
            "rcode": res.rcode,
            "chain": res.chain,
            "addresses": res.addresses,
            "final_name": res.final_name,
            "over_tcp": res.over_tcp,
            "notes": res.notes,
            "upstream": direct_json,
        });
        let shown = describe_resolution(name, &res);
        let dest_text = route.map(|r| r.summary.clone()).unwrap_or_default();
        let add_route = format!(
            "{name} is not routed and does not resolve upstream: add a route `- source: {name}` with the load balancer or endpoint as `destination` to spec.infrastructure.executorPrivateDNS.routes"
        );
        let stale = "restart or reload it with this config, or point --server at the proxy that has it";
        let fail = |summary: String, fix: String| {
            (
                StageReport::fail(Stage::Dns, took, summary, fix).with_details(details.clone()),
                Vec::new(),
            )
        };
        match res.rcode {
            "NOERROR" => {}
            "NXDOMAIN" => {
                let Some(r) = route else {
                    return fail(format!("NXDOMAIN for {name}"), add_route);
                };
                let through = r.dest_name.as_ref().is_some_and(|d| res.chain_has(&d.to_string()));
                let upstream_has = direct
                    .as_ref()
                    .and_then(|d| d.as_ref().ok())
                    .filter(|d| !d.addresses.is_empty());
                return match upstream_has {
                    Some(d) if !through => {
                        let ips: Vec<String> = d.ips().iter().map(|i| i.to_string()).collect();
                        fail(
                            format!(
                                "NXDOMAIN for {name}, but {dest_text} resolves upstream ({}: {})",
                                d.server,
                                ips.join(", ")
                            ),
                            format!("the proxy at {server} does not apply this route: {stale}"),
                        )
                    }
                    _ => fail(
                        format!("NXDOMAIN: {shown}"),
                        format!(
                            "the route's destination {dest_text} does not exist upstream: correct it in the config (for AWS use the regional vpce-... name)"
                        ),
                    ),
                };
            }
            "REFUSED" => {
                return fail(
                    format!("{server} REFUSED the query"),
                    "the proxy refuses this host: run the check from an allowed client (loopback or the microVM subnet), or add it to `allow`".into(),
                );
            }
            "SERVFAIL" => {
                let fix = match route {
                    Some(r) => format!(
                        "the proxy could not resolve {dest_text}: check that {} answer for it",
                        r.resolver
                            .map_or("its upstreams".to_string(), |a| format!("the route's resolverIP {a}"))
                    ),
                    None => format!("the proxy's upstreams failed for {name}: check them"),
                };
                return fail(format!("SERVFAIL: {shown}"), fix);
            }
            other => {
                return fail(
                    format!("{other} from {server}"),
                    format!("{server} does not answer queries for {name}: check --server"),
                );
            }
        }
        if res.addresses.is_empty() {
            return if !res.chain.is_empty() {
                fail(
                    format!("{shown}: the chain ends at {} with no address", res.final_name),
                    format!(
                        "clients read a bare CNAME as 'no address': the proxy must answer the addresses of {}; check that name has A/AAAA records upstream",
                        res.final_name
                    ),
                )
            } else if route.is_some() {
                fail(
                    format!("no A/AAAA records for {name}"),
                    format!("the proxy at {server} does not apply the route: {stale}"),
                )
            } else {
                fail(format!("no A/AAAA records for {name}"), add_route)
            };
        }
        // Did the proxy follow the route?
        let direct_ok = match &direct {
            Some(Ok(d)) => Some(d),
            _ => None,
        };
        let mut notes: Vec<String> = Vec::new();
        if let Some(r) = route {
            let overlap = |ips: &[IpAddr]| res.addresses.iter().any(|a| ips.contains(&a.address));
            let applied = if let Some(d) = &r.dest_name {
                let by_chain = res.chain_has(&d.to_string());
                let by_addr = direct_ok.map(|x| overlap(&x.ips()));
                match (by_chain, by_addr) {
                    (true, _) | (_, Some(true)) => true,
                    (false, Some(false)) => false,
                    (false, None) if res.chain.is_empty() && r.flatten => {
                        notes.push("flattened answer: not compared (no upstream known)".into());
                        true
                    }
                    (false, None) => false,
                }
            } else {
                overlap(&r.dest_ips)
            };
            if !applied {
                return fail(
                    format!("{shown}: the answer does not go through the route's destination {dest_text}"),
                    format!("the proxy at {server} does not apply this route: {stale}"),
                );
            }
        }
        match (&direct, upstream, &compare_name) {
            (Some(Ok(d)), _, Some(n)) => {
                let mut a = d.ips();
                let mut b = res.ips();
                a.sort();
                b.sort();
                if a == b {
                    notes.push(format!("upstream {} agrees", d.server));
                } else {
                    let list: Vec<String> = a.iter().map(|i| i.to_string()).collect();
                    notes.push(format!(
                        "upstream {} gives {n} = [{}] (differs: rotating load balancer or stale cache)",
                        d.server,
                        list.join(", ")
                    ));
                }
            }
            (Some(Err(e)), _, _) => notes.push(format!("upstream not compared: {e}")),
            (None, _, None) => notes.push("IP destination: the proxy answers it itself".into()),
            (None, None, _) => notes.push("no upstream to compare with (give --upstream)".into()),
            _ => {}
        }
        if res.over_tcp {
            notes.push("truncated over UDP, full answer over TCP".into());
        }
        notes.extend(res.notes.iter().cloned());
        let summary = if notes.is_empty() {
            shown
        } else {
            format!("{shown}; {}", notes.join("; "))
        };
        let mut ips = res.ips();
        ips.truncate(MAX_ADDRS);
        (StageReport::pass(Stage::Dns, took, summary).with_details(details), ips)
    }

    async fn tcp_stage(&self, t: &Target, ips: &[IpAddr]) -> (StageReport, Vec<(IpAddr, TcpStream)>) {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for (i, ip) in ips.iter().copied().enumerate() {
            let sa = SocketAddr::new(ip, t.port);
            let timeout = self.timeout;
            set.spawn(async move {
                let began = Instant::now();
                let r = tokio::time::timeout(timeout, TcpStream::connect(sa)).await;
                (i, sa, r, began.elapsed())
            });
        }
        let mut results = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(x) = j {
                results.push(x);
            }
        }
        results.sort_by_key(|r| r.0);
        let took = start.elapsed();
        let mut streams = Vec::new();
        let mut per_addr = Vec::new();
        let mut failures: Vec<(SocketAddr, String, &'static str)> = Vec::new();
        let mut no_v6_route = 0;
        for (_, sa, r, d) in results {
            let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
            match r {
                Ok(Ok(s)) => {
                    per_addr.push(json!({ "address": sa.to_string(), "ok": true, "ms": ms }));
                    streams.push((sa.ip(), s));
                }
                Ok(Err(e)) => {
                    let unreachable6 = sa.is_ipv6()
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NetworkUnreachable | std::io::ErrorKind::AddrNotAvailable
                        );
                    per_addr.push(json!({ "address": sa.to_string(), "ok": false, "ms": ms, "error": e.to_string(), "ignored": unreachable6 }));
                    if unreachable6 {
                        no_v6_route += 1;
                        continue;
                    }
                    let kind = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        "refused"
                    } else {
                        "error"
                    };
                    failures.push((sa, e.to_string(), kind));
                }
                Err(_) => {
                    per_addr.push(json!({ "address": sa.to_string(), "ok": false, "ms": ms, "error": "timeout" }));
                    failures.push((sa, format!("no answer within {:?}", self.timeout), "timeout"));
                }
            }
        }
        let details = json!({ "port": t.port, "addresses": per_addr });
        if let Some((sa, err, kind)) = failures.first() {
            let fix = match *kind {
                "refused" => format!(
                    "nothing listens on {sa}: check the port (in the URL or --port) and the load balancer's listener for it"
                ),
                "timeout" => format!(
                    "packets to {sa} are dropped: open the path (security group, the allowlist of the executors' NAT addresses; from microVMs a private address also needs `dnsbridge firewall`)"
                ),
                _ => format!("cannot reach {sa}: check the network path to it"),
            };
            let n_ok = streams.len();
            let summary = if n_ok > 0 {
                format!(
                    "{sa}: {err} ({n_ok} of {} addresses connect: jobs fail at random)",
                    n_ok + failures.len()
                )
            } else {
                format!("{sa}: {err}")
            };
            return (
                StageReport::fail(Stage::Tcp, took, summary, fix).with_details(details),
                Vec::new(),
            );
        }
        if streams.is_empty() {
            return (
                StageReport::fail(
                    Stage::Tcp,
                    took,
                    "no address to connect to (IPv6 only, and this host has no IPv6 route)",
                    "give the destination an IPv4 address, or check from a host with IPv6",
                )
                .with_details(details),
                Vec::new(),
            );
        }
        let list: Vec<String> = streams
            .iter()
            .map(|(ip, _)| SocketAddr::new(*ip, t.port).to_string())
            .collect();
        let mut summary = format!("connected to {}", list.join(", "));
        if no_v6_route > 0 {
            summary.push_str(&format!("; {no_v6_route} IPv6 address(es) skipped: no IPv6 route here"));
        }
        let private: Vec<String> = streams
            .iter()
            .filter(|(ip, _)| is_firewalled_range(*ip))
            .map(|(ip, _)| ip.to_string())
            .collect();
        if !private.is_empty() {
            summary.push_str(&format!(
                "; {} private: microVMs reach it only once `dnsbridge firewall` opens it",
                private.join(", ")
            ));
        }
        (
            StageReport::pass(Stage::Tcp, took, summary).with_details(details),
            streams,
        )
    }

    async fn tls_stage(
        &self,
        t: &Target,
        streams: Vec<(IpAddr, TcpStream)>,
        route: Option<&RouteInfo>,
    ) -> (StageReport, Option<tokio_rustls::client::TlsStream<TcpStream>>) {
        let start = Instant::now();
        let Some(ctx) = &self.tls else {
            return (
                StageReport::fail(
                    Stage::Tls,
                    start.elapsed(),
                    "no TLS context",
                    "internal error: report it",
                ),
                None,
            );
        };
        let sni = match tls::server_name(&t.host) {
            Ok(s) => s,
            Err(e) => {
                return (
                    StageReport::fail(Stage::Tls, start.elapsed(), e, "use a host name that is valid in TLS"),
                    None,
                );
            }
        };
        // Every address the TCP stage opened: each load balancer node may hold
        // a different certificate.
        let mut set = JoinSet::new();
        for (i, (ip, s)) in streams.into_iter().enumerate() {
            let (ctx, sni, timeout) = (ctx.clone(), sni.clone(), self.timeout);
            set.spawn(async move { (i, ip, tls::handshake(&ctx, s, sni, timeout).await) });
        }
        let mut outcomes = Vec::new();
        while let Some(j) = set.join_next().await {
            if let Ok(x) = j {
                outcomes.push(x);
            }
        }
        outcomes.sort_by_key(|o| o.0);
        let outcomes = outcomes.into_iter().map(|(_, ip, h)| (ip, h));
        let took = start.elapsed();
        let private = t.host.to_string();
        let public = route.and_then(|r| r.dest_name.as_ref()).map(|n| n.to_string());
        let mut per_addr = Vec::new();
        let mut first_ok = None;
        let mut first_fail: Option<(IpAddr, String, String)> = None;
        let mut pass_summary = String::new();
        for (ip, h) in outcomes {
            let cert_json = h.cert.as_ref().map(|c| serde_json::to_value(c).unwrap_or_default());
            let covers_private = h.cert.as_ref().map(|c| c.covers(&private));
            let covers_public = match (&h.cert, &public) {
                (Some(c), Some(p)) => Some(c.covers(p)),
                _ => None,
            };
            let presented = h.cert.as_ref().map(|c| c.names()).unwrap_or_default();
            match h.result {
                Ok(s) => {
                    per_addr.push(json!({
                        "address": ip.to_string(), "ok": true, "protocol": h.protocol, "alpn": h.alpn,
                        "certificate": cert_json, "valid_for_private_name": true,
                    }));
                    if first_ok.is_none() {
                        let c = h.cert.clone().unwrap_or_default();
                        let mut s_text = format!(
                            "{}, certificate valid for {private} (names: {}; issuer: {}; expires in {} days)",
                            h.protocol.as_deref().unwrap_or("TLS"),
                            presented.join(", "),
                            c.issuer,
                            c.days_left
                        );
                        if c.days_left < 14 {
                            s_text.push_str(&format!("; WARNING: it expires on {}, renew it", c.not_after));
                        }
                        if let Some(ca) = self.ca_file.as_ref().filter(|_| ctx.extra_roots > 0) {
                            s_text.push_str(&format!(
                                "; trusted through --ca-file {}: the jobs need that CA too",
                                ca.display()
                            ));
                        }
                        pass_summary = s_text;
                        first_ok = Some(s);
                    }
                }
                Err(e) => {
                    let (summary, fix) = explain_tls_failure(
                        &e,
                        h.cert.as_ref(),
                        &private,
                        public.as_deref(),
                        &presented,
                        self.timeout,
                        ctx.has_no_roots(),
                    );
                    per_addr.push(json!({
                        "address": ip.to_string(), "ok": false, "error": summary, "certificate": cert_json,
                        "valid_for_private_name": covers_private, "valid_for_destination": covers_public,
                    }));
                    if first_fail.is_none() {
                        first_fail = Some((ip, summary, fix));
                    }
                }
            }
        }
        let first_cert = per_addr
            .iter()
            .find_map(|a| a.get("certificate").cloned())
            .unwrap_or_default();
        let details = json!({
            "sni": private,
            "expected_name": private,
            "destination_name": public,
            "presented_names": first_cert.get("dns_names").cloned().unwrap_or_default(),
            "addresses": per_addr,
        });
        if let Some((ip, summary, fix)) = first_fail {
            return (
                StageReport::fail(Stage::Tls, took, format!("{ip}: {summary}"), fix).with_details(details),
                None,
            );
        }
        (
            StageReport::pass(Stage::Tls, took, pass_summary).with_details(details),
            first_ok,
        )
    }

    async fn api_stage<S>(&self, t: &Target, stream: &mut S) -> (StageReport, bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start = Instant::now();
        match http::get(stream, &t.host_header(), &t.path, self.timeout).await {
            Err(e) => (
                StageReport::fail(
                    Stage::Api,
                    start.elapsed(),
                    format!("GET {}: {e}", t.path),
                    "the server accepted the connection but did not answer HTTP: check what listens on this port",
                )
                .with_details(json!({ "url": t.url(), "error": e })),
                false,
            ),
            Ok(resp) => {
                let v = http::evaluate(t, &resp);
                let details = json!({
                    "url": t.url(),
                    "status": resp.status,
                    "reason": resp.reason,
                    "docker_distribution_api_version": resp.header("docker-distribution-api-version"),
                    "www_authenticate": resp.header("www-authenticate"),
                    "server_header": resp.header("server"),
                    "needs_credentials": v.needs_credentials,
                    "credential_variables": v.needs_credentials.then(|| t.kind.credential_hint()),
                });
                let took = start.elapsed();
                let r = if v.pass {
                    StageReport::pass(Stage::Api, took, v.summary)
                } else {
                    StageReport::fail(Stage::Api, took, v.summary, v.fix.unwrap_or_default())
                };
                (r.with_details(details), v.needs_credentials)
            }
        }
    }
}

fn failed(stages: &[StageReport]) -> bool {
    stages.iter().any(|s| s.verdict == Verdict::Fail)
}

fn wildcard_report(source: &str) -> TargetReport {
    let example = source.trim_start_matches("*.");
    let mut stages = vec![StageReport::skip(
        Stage::Route,
        format!("wildcard source {source}: name a host under it, e.g. `dnsbridge check registry.{example}`"),
    )];
    for s in &Stage::ALL[1..] {
        stages.push(StageReport::skip(*s, "not run: no single name to check"));
    }
    TargetReport {
        target: source.to_string(),
        host: source.to_string(),
        port: 0,
        kind: Kind::Docker,
        url: String::new(),
        ok: true,
        failed_stage: None,
        exit_code: EXIT_OK,
        needs_credentials: false,
        stages,
    }
}

/// `name CNAME a (30s) -> b (300s) -> 192.0.2.1 (60s), 2001:db8::1 (60s)`
fn describe_resolution(name: &Name, r: &dns::Resolution) -> String {
    let mut s = name.to_string();
    for l in &r.chain {
        s.push_str(&format!(" CNAME {} ({}s)", l.cname, l.ttl));
    }
    if !r.addresses.is_empty() {
        const SHOWN: usize = 8;
        let addrs: Vec<String> = r
            .addresses
            .iter()
            .take(SHOWN)
            .map(|a| format!("{} ({}s)", a.address, a.ttl))
            .collect();
        s.push_str(&format!(" -> {}", addrs.join(", ")));
        if r.addresses.len() > SHOWN {
            s.push_str(&format!(" (+{} more)", r.addresses.len() - SHOWN));
        }
    }
    s
}

/// Ranges the executor's microVM firewall drops TCP to (see DESIGN.md).
fn is_firewalled_range(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 10
                || (o[0] == 172 && (16..32).contains(&o[1]))
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 169 && o[1] == 254)
        }
        IpAddr::V6(_) => false,
    }
}

fn explain_tls_failure(
    e: &tls::HandshakeError,
    cert: Option<&tls::CertInfo>,
    private: &str,
    public: Option<&str>,
    presented: &[String],
    timeout: Duration,
    no_roots: bool,
) -> (String, String) {
    use rustls::CertificateError as CE;
    let names = if presented.is_empty() {
        "no name".to_string()
    } else {
        presented.join(", ")
    };
    let mismatch = cert.is_some_and(|c| !c.covers(private))
        || matches!(
            e,
            tls::HandshakeError::Certificate(CE::NotValidForName | CE::NotValidForNameContext { .. })
        );
    let lb_fix = format!(
        "the load balancer must pass TLS through to the registry (NLB TLS passthrough: the certificate is validated on the registry), or hold the certificate for {private} too, next to its public one"
    );
    if mismatch {
        let whose = match public {
            Some(p) if cert.is_some_and(|c| c.covers(p)) => {
                format!(" (the certificate of the route's destination {p})")
            }
            _ => String::new(),
        };
        let also = match e {
            tls::HandshakeError::Certificate(CE::UnknownIssuer) => "; its issuer is not trusted either",
            tls::HandshakeError::Certificate(CE::Expired | CE::ExpiredContext { .. }) => "; it has expired too",
            _ => "",
        };
        return (
            format!("certificate not valid for {private}: it presents {names}{whose}{also}"),
            lb_fix,
        );
    }
    match e {
        tls::HandshakeError::Certificate(ce) => match ce {
            CE::UnknownIssuer => (
                format!(
                    "certificate for {names} issued by an untrusted CA ({})",
                    cert.map_or("?".to_string(), |c| c.issuer.clone())
                ),
                if no_roots {
                    "this host has no CA certificates: install ca-certificates, or give the registry's CA with --ca-file".into()
                } else {
                    "give the CA that signed it with --ca-file (the jobs need it in their trust store too), or serve a chain to a public root".into()
                },
            ),
            CE::Expired | CE::ExpiredContext { .. } => (
                format!("certificate expired ({})", cert.map_or("?".to_string(), |c| c.not_after.clone())),
                "renew the certificate on the registry (or on the load balancer that terminates TLS)".into(),
            ),
            CE::NotValidYet | CE::NotValidYetContext { .. } => (
                "certificate not valid yet".into(),
                "check this host's clock and the certificate's notBefore".into(),
            ),
            CE::Revoked => ("certificate revoked".into(), "install a new certificate".into()),
            other => (format!("certificate rejected: {other:?}"), lb_fix),
        },
        tls::HandshakeError::Tls(rustls::Error::AlertReceived(a)) => (
            format!("the server rejected the handshake for {private} (alert {a:?})"),
            format!("the server has no certificate for SNI {private}: {lb_fix}"),
        ),
        tls::HandshakeError::Tls(
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => (
            "the port does not speak TLS".into(),
            "if the registry serves plain HTTP here, check http://HOST:PORT/ (and the jobs then need it as an insecure registry)".into(),
        ),
        tls::HandshakeError::Tls(other) => (format!("TLS error: {other}"), lb_fix),
        tls::HandshakeError::Io(err) => (
            format!("the connection broke during the handshake: {err}"),
            format!("the load balancer may route by SNI and know no backend for {private}: add it to its SNI rules, or use TLS passthrough"),
        ),
        tls::HandshakeError::Timeout => (
            format!("no TLS answer within {timeout:?}"),
            "something accepts TCP on this port but does not answer TLS: check the listener's protocol".into(),
        ),
    }
}
