use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use dnsbridge::config::{self, Config};
use dnsbridge::core::{Settings, State};
use dnsbridge::net::{self, Cidr};
use dnsbridge::route::RouteTable;
use dnsbridge::server::{self, Shared};
use dnsbridge::upstream::{self, Upstreams};

/// Exit codes shared by every subcommand.
mod exit {
    /// The config (or a flag) is invalid.
    pub const CONFIG: u8 = 2;
    /// A listener could not be bound, or the runtime failed.
    pub const RUNTIME: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "dnsbridge",
    version,
    about = "DNS proxy and toolkit that lets executor microVMs reach private registries under their private names",
    long_about = "dnsbridge answers a route's source name (registry.corp.example) by resolving its destination \
(a load balancer, an AWS VPC endpoint, a PSC address) and forwards every other query upstream.\n\n\
The routes come from an instance's config.yaml, block spec.infrastructure.executorPrivateDNS, unchanged.",
    after_help = "Exit codes: 0 success, 2 invalid config or flags, 3 runtime failure (bind, upstream setup).\n\
Try: dnsbridge serve --config examples/ip-destination.yaml, then dig @127.0.0.1 -p 5353 registry.corp.example"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DNS proxy.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Instance config.yaml (routes under spec.infrastructure.executorPrivateDNS, runtime
    /// settings under dnsbridge:). Without it: no routes, listening on 127.0.0.1:5353.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, UDP and TCP (repeat for several). Port 0 picks a free port.
    /// Production: the microVM bridge address (10.61.0.1:53) and a loopback one.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Upstream resolver (repeat for several, tried in order). Default: the nameservers of
    /// /etc/resolv.conf, minus this proxy's own addresses.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_upstream)]
    upstream: Vec<SocketAddr>,
    /// Clients allowed to query (repeat). Others get REFUSED. Default: loopback and 10.61.0.0/16.
    #[arg(long, value_name = "CIDR")]
    allow: Vec<Cidr>,
    /// TTL in seconds of the synthesized CNAME (and of IP destination answers).
    #[arg(long, value_name = "SECS")]
    cname_ttl: Option<u32>,
    /// Answer routed names with the destination's final records renamed to the source,
    /// without the CNAME chain.
    #[arg(long)]
    flatten: bool,
    /// Time to wait for one upstream before trying the next (such as 800ms, 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    upstream_timeout: Option<std::time::Duration>,
    /// Log format.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    net::parse_socket(s, 53).map_err(|e| e.to_string())
}

fn parse_dur(s: &str) -> Result<std::time::Duration, String> {
    config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 800ms or 2s"))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DNSBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log_format);
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let code = if e.downcast_ref::<ConfigProblem>().is_some() {
                        exit::CONFIG
                    } else {
                        exit::RUNTIME
                    };
                    tracing::error!("{e:#}");
                    ExitCode::from(code)
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ConfigProblem(String);

/// Reads the config and applies the flags over it.
fn effective_config(args: &ServeArgs) -> Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => match config::load_file(path) {
            Ok(c) => c,
            Err(config::LoadError::Invalid {
                path, diagnostics, ..
            }) => {
                for d in &diagnostics {
                    tracing::error!(
                        "{}:{}: {} [{}]{}",
                        path.display(),
                        d.pos,
                        d.message,
                        d.rule,
                        d.hint
                            .as_ref()
                            .map(|h| format!(" (help: {h})"))
                            .unwrap_or_default()
                    );
                }
                return Err(ConfigProblem(format!(
                    "{} has {} error(s); nothing was started. Run `dnsbridge validate {}` for details",
                    path.display(),
                    diagnostics.len(),
                    path.display()
                ))
                .into());
            }
            Err(e) => return Err(ConfigProblem(e.to_string()).into()),
        },
        None => Config::default(),
    };
    for w in &cfg.warnings {
        tracing::warn!("config {}: {} [{}]", w.pos, w.message, w.rule);
    }
    let rt = &mut cfg.runtime;
    if !args.listen.is_empty() {
        rt.listen = args.listen.clone();
    }
    if !args.upstream.is_empty() {
        rt.upstreams = args.upstream.clone();
    }
    if !args.allow.is_empty() {
        rt.allow = args.allow.clone();
    }
    if let Some(t) = args.cname_ttl {
        rt.cname_ttl = t;
    }
    if args.flatten {
        rt.flatten = true;
    }
    if let Some(t) = args.upstream_timeout {
        rt.upstream_timeout = t;
    }
    Ok(cfg)
}

/// True when sending to `upstream` would reach one of our own listeners.
fn is_self(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        l.port() == upstream.port()
            && (l.ip() == upstream.ip()
                || (l.ip().is_unspecified()
                    && (upstream.ip().is_loopback() || upstream.ip().is_unspecified())))
    })
}

fn serve(args: ServeArgs) -> Result<()> {
    let cfg = effective_config(&args)?;
    let rt = cfg.runtime.clone();
    let mut upstreams = rt.upstreams.clone();
    if upstreams.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        upstreams = upstream::parse_resolv_conf(&text)
            .into_iter()
            .filter(|u| !is_self(*u, &rt.listen))
            .collect();
        if upstreams.is_empty() {
            tracing::warn!(
                "no upstream resolver: /etc/resolv.conf names none besides this proxy; give --upstream. Routed IP destinations still answer."
            );
        }
    } else if let Some(u) = upstreams.iter().find(|u| is_self(**u, &rt.listen)) {
        return Err(ConfigProblem(format!(
            "upstream {u} is this proxy's own listen address: that would be a forwarding loop"
        ))
        .into());
    }
    for r in &cfg.routes {
        if let Some(res) = r.resolver
            && is_self(res, &rt.listen)
        {
            return Err(ConfigProblem(format!(
                "route for {} resolves through {res}, which is this proxy itself: a forwarding loop",
                r.source
            ))
            .into());
        }
    }
    let state = State {
        table: RouteTable::new(cfg.routes.clone()),
        settings: Settings {
            allow: rt.allow.clone(),
            cname_ttl: rt.cname_ttl,
            flatten: rt.flatten,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let ups = Upstreams::new(upstreams.clone(), rt.upstream_timeout)
            .await
            .context("opening upstream sockets")?;
        let shared = Shared::new(state, ups);
        let mut tasks = Vec::new();
        for addr in &rt.listen {
            let udp = server::bind_udp(*addr).with_context(|| format!("binding UDP {addr}"))?;
            let bound = udp.local_addr()?;
            // TCP on the same port as UDP, also when the port was 0.
            let tcp = server::bind_tcp(bound).with_context(|| format!("binding TCP {bound}"))?;
            tracing::info!("bound udp {bound}");
            tracing::info!("bound tcp {}", tcp.local_addr()?);
            tasks.push(tokio::spawn(server::serve_udp(
                Arc::new(udp),
                shared.clone(),
            )));
            tasks.push(tokio::spawn(server::serve_tcp(tcp, shared.clone())));
        }
        tracing::info!(
            routes = cfg.routes.len(),
            upstreams = ?upstreams,
            "dnsbridge serving"
        );
        wait_for_shutdown().await;
        tracing::info!("shutting down");
        Ok::<(), anyhow::Error>(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

async fn wait_for_shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
