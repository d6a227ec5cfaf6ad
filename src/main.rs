use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use dnsbridge::config;
use dnsbridge::net::{self, Cidr};
use dnsbridge::serve::{self, Overrides, Running, ServeError};

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
    after_help = "Each subcommand documents its exit codes in its own --help.\n\
Try: dnsbridge serve --config examples/quickstart.yaml, then dig @127.0.0.1 -p 5353 registry.corp.example"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DNS proxy.
    Serve(ServeArgs),
    /// Check config files and report every problem with its position (for pull requests).
    Validate(dnsbridge::validate::ValidateArgs),
    /// Show which route a name matches, and why.
    Route(dnsbridge::validate::RouteArgs),
    /// Show the routes added, removed and changed between two configs.
    Diff(dnsbridge::validate::DiffArgs),
    /// Say stage by stage whether a private registry is reachable: route, DNS, TCP, TLS, API.
    Check(dnsbridge::check::CheckArgs),
    /// Open the microVM firewall for the registries (and DNS to the proxy), and nothing else.
    Firewall(dnsbridge::firewall::FirewallArgs),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Signals: SIGHUP reloads the config (also reloaded when the file changes on disk); \
the new file is validated whole and swapped in atomically, or the old one keeps serving and the error is \
logged and counted (dnsbridge_reloads_total{result=\"failure\"}). Listeners are never re-bound. \
SIGTERM stops taking queries, answers those in flight (up to 5 s) and exits 0.\n\n\
Exit codes: 0 clean shutdown; 2 invalid config or flags (every error is logged with file:line:column); \
3 runtime failure (a listener or the metrics address could not be bound).\n\n\
Examples:\n  dnsbridge serve --config examples/quickstart.yaml\n  \
dnsbridge serve --config /etc/dnsbridge/config.yaml --listen 10.61.0.1:53 --listen 127.0.0.1:53 \\\n      \
--upstream 169.254.169.254 --egress-set dnsbridge-registry --metrics 127.0.0.1:9153"
)]
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
    /// Cache size in bytes (answers are kept whole; default 64 MiB).
    #[arg(long, value_name = "BYTES")]
    cache_size: Option<u64>,
    /// Queries per second allowed per client (loopback exempt); 0 turns limiting off.
    #[arg(long, value_name = "QPS")]
    rate_limit: Option<u32>,
    /// Serve Prometheus metrics, /healthz, /readyz and /routes on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// After binding, run as this user (keeps only CAP_NET_ADMIN, and only when an egress set
    /// is configured).
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Log every query: client, name, type, how it was answered.
    #[arg(long)]
    query_log: bool,
    /// Keep this ipset (and NAME-v6) filled with the addresses of routed answers, each for its
    /// TTL plus --egress-grace; `dnsbridge firewall` opens the registry ports for the set.
    #[arg(long, value_name = "NAME")]
    egress_set: Option<String>,
    /// Extra time each egress set entry outlives its record's TTL (default 10s; never negative).
    #[arg(long, value_name = "DURATION", value_parser = parse_dur)]
    egress_grace: Option<Duration>,
    /// Worker threads (default: the CPUs this process may run on; 1 runs a single event loop).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
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
        Command::Check(args) => dnsbridge::check::run_blocking(args),
        Command::Validate(a) => dnsbridge::validate::run_validate(&a),
        Command::Route(a) => dnsbridge::validate::run_route(&a),
        Command::Diff(a) => dnsbridge::validate::run_diff(&a),
        Command::Firewall(args) => firewall(args),
        Command::Serve(args) => {
            init_logging(&args.log_format);
            match serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::from(if e.is_config() { exit::CONFIG } else { exit::RUNTIME })
                }
            }
        }
    }
}

/// `dnsbridge firewall`: the routes' IP destinations get static accepts, name
/// destinations go through the set that `serve --egress-set` fills.
fn firewall(args: dnsbridge::firewall::FirewallArgs) -> ExitCode {
    let mut static_ips = Vec::new();
    if let Some(path) = &args.config {
        match config::load_file(path) {
            Ok(cfg) => {
                for r in &cfg.routes {
                    if let config::Destination::Ips(ips) = &r.destination {
                        static_ips.extend(ips.iter().copied());
                    }
                }
            }
            Err(e) => {
                eprintln!("dnsbridge firewall: {e}");
                return ExitCode::from(dnsbridge::firewall::EXIT_USAGE);
            }
        }
    }
    match dnsbridge::firewall::run(&args, &static_ips) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dnsbridge firewall: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let o = Overrides {
        config: args.config,
        listen: args.listen,
        upstreams: args.upstream,
        allow: args.allow,
        cname_ttl: args.cname_ttl,
        flatten: args.flatten,
        upstream_timeout: args.upstream_timeout,
        cache_bytes: args.cache_size,
        rate_limit: args.rate_limit,
        metrics: args.metrics,
        user: args.user,
        query_log: args.query_log,
        egress_set: args.egress_set,
        egress_grace: args.egress_grace,
    };
    // Fail on a bad config before starting any thread.
    if let Err(e) = serve::effective_config(&o) {
        if let ServeError::Invalid { path, diagnostics, .. } = &e {
            for d in diagnostics {
                let hint = d.hint.as_ref().map(|h| format!(" (help: {h})")).unwrap_or_default();
                tracing::error!("{path}:{}: {} [{}]{hint}", d.pos, d.message, d.rule);
            }
        }
        return Err(e);
    }
    // One thread needs no cross-thread wake-ups: on a single CPU (or when
    // asked) the whole proxy runs on one event loop.
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(ServeError::Io)?;
    runtime.block_on(async move {
        let signals = Signals::register()?;
        let running = Running::start(o).await?;
        running.watch_config();
        wait_for_signals(&running, signals).await;
        tracing::info!("SIGTERM: draining in-flight queries");
        running.drain(Duration::from_secs(5)).await;
        Ok::<(), ServeError>(())
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// SIGTERM and SIGHUP handlers, registered before anything is bound, so that
/// a signal sent as soon as the proxy announces itself is never fatal.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Reloads on SIGHUP; returns on SIGTERM or Ctrl-C.
async fn wait_for_signals(running: &Running, signals: Signals) {
    let Signals { mut term, mut hup } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = running.reload();
            }
        }
    }
}
