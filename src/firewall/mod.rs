//! `dnsbridge firewall`: opens the executor's microVM firewall exactly for the
//! registries and for DNS to the proxy, and nothing else.
//!
//! The executor drops microVM traffic to the host (`INPUT -s 10.61.0.0/16 -j
//! DROP`) and TCP to the private ranges (`CNI-ADMIN ... -j DROP`). We insert,
//! ahead of those drops and tagged `-m comment --comment dnsbridge`:
//!
//! - `INPUT`: UDP and TCP 53 from the microVM subnet to the proxy's address(es);
//! - `CNI-ADMIN`: an accept for established connections that the microVM
//!   subnet opened (`--ctstate ESTABLISHED --ctdir ORIGINAL`): a transfer
//!   outlives the set entry that opened it; nothing new is opened by it;
//! - `CNI-ADMIN`: TCP to the registry ports for addresses in the ipset
//!   (`-m set --match-set SET dst`), which `serve` fills with the addresses it
//!   resolved for routed names (entry timeout = TTL + grace);
//! - `CNI-ADMIN`: TCP to the registry ports for each IP destination of a route.
//!
//! ipset with `-m set` is used (not an nft rule inside iptables' chain) because
//! `iptables-save` prints it faithfully, so the executor's own save and restore
//! keep its meaning.
//!
//! Exit codes of `run`: 0 done (also when nothing needed changing); 1 a system
//! command failed (the state may be half applied: `--apply` and `--remove`
//! are both safe to rerun); 2 bad arguments; 3 a prerequisite is missing
//! (`iptables`/`ipset` not installed, or not permitted: run as root).

pub mod apply;
pub mod exec;
pub mod rules;

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use thiserror::Error;

use crate::egress::{self, EgressError};
pub use apply::{Report, Table};
pub use exec::{CommandOutput, Runner, SystemRunner};
pub use rules::{Cidr, Family, Plan, Rule};

/// Exit code: a system command failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: a tool is missing or the caller lacks the privilege.
pub const EXIT_PREREQUISITE: u8 = 3;

/// Flags of `dnsbridge firewall`.
#[derive(Debug, Clone, clap::Args)]
pub struct FirewallArgs {
    /// The instance's config.yaml; the routes' IP destinations get a static
    /// accept each (name destinations go through the set that `serve` fills).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The microVM subnet: the only source the rules open anything for.
    #[arg(long, value_name = "CIDR", default_value = "10.61.0.0/16")]
    pub vm_cidr: Cidr,

    /// The proxy's address that the microVMs query (repeat the flag for more);
    /// default: the first address of --vm-cidr (the bridge, 10.61.0.1).
    #[arg(long = "dns-address", value_name = "IP")]
    pub dns_address: Vec<IpAddr>,

    /// TCP ports opened to the registries' addresses, comma-separated.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "443",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub ports: Vec<u16>,

    /// The ipset that `serve --egress-set` fills (IPv6 addresses go to NAME-v6).
    #[arg(long, value_name = "NAME", default_value = egress::DEFAULT_SET)]
    pub set: String,

    /// Seconds that `serve` adds to each entry's TTL (shown by --print; the
    /// rules themselves do not depend on it).
    #[arg(long, value_name = "SECS", default_value_t = egress::DEFAULT_GRACE_SECS)]
    pub grace: u64,

    #[command(flatten)]
    pub mode: ModeFlags,
}

/// Exactly one of `--print`, `--apply`, `--remove`.
#[derive(Debug, Clone, Copy, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ModeFlags {
    /// Print the commands that --apply would run from scratch; touch nothing.
    #[arg(long)]
    pub print: bool,
    /// Create the sets and put the rules in place (idempotent).
    #[arg(long)]
    pub apply: bool,
    /// Take out every rule tagged "dnsbridge"; the sets stay.
    #[arg(long)]
    pub remove: bool,
}

/// The mode chosen by [`ModeFlags`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Print,
    Apply,
    Remove,
}

impl ModeFlags {
    pub fn mode(&self) -> Mode {
        if self.apply {
            Mode::Apply
        } else if self.remove {
            Mode::Remove
        } else {
            Mode::Print
        }
    }
}

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("{0}")]
    Usage(String),
    #[error("{tool} is not installed (Debian: apt-get install iptables ipset)")]
    MissingTool { tool: String },
    #[error("not permitted: `{command}`: {stderr} (run as root, or with CAP_NET_ADMIN)")]
    Permission { command: String, stderr: String },
    #[error("`{command}` failed ({}): {stderr}", code.map_or("killed".to_string(), |c| format!("exit {c}")))]
    Command {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("running `{command}`: {source}")]
    Io { command: String, source: std::io::Error },
    #[error(transparent)]
    Egress(#[from] EgressError),
}

impl FirewallError {
    /// The process exit code for this error (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            FirewallError::Usage(_) => EXIT_USAGE,
            FirewallError::MissingTool { .. } | FirewallError::Permission { .. } => EXIT_PREREQUISITE,
            FirewallError::Command { .. } | FirewallError::Io { .. } => EXIT_FAILED,
            FirewallError::Egress(e) => match e {
                EgressError::InvalidSetName(_) => EXIT_USAGE,
                EgressError::MissingTool { .. } | EgressError::Permission { .. } => EXIT_PREREQUISITE,
                _ => EXIT_FAILED,
            },
        }
    }

    pub(crate) fn from_output(command: String, out: &CommandOutput) -> FirewallError {
        let stderr = out.stderr.trim().to_string();
        if is_permission_error(&stderr) {
            FirewallError::Permission { command, stderr }
        } else if is_missing_program(out) {
            FirewallError::MissingTool {
                tool: command
                    .split(' ')
                    .find(|w| w.ends_with("tables") || *w == "ipset")
                    .unwrap_or(&command)
                    .to_string(),
            }
        } else {
            FirewallError::Command {
                command,
                code: out.status,
                stderr,
            }
        }
    }
}

/// A program that could not be started behind a prefix (`ip netns exec`
/// prints `exec of "iptables" failed: No such file or directory`; a shell
/// exits 127).
pub(crate) fn is_missing_program(out: &CommandOutput) -> bool {
    out.status == Some(127) || (out.stderr.contains("exec of ") && out.stderr.contains("No such file or directory"))
}

pub(crate) fn is_permission_error(stderr: &str) -> bool {
    stderr.contains("Permission denied") || stderr.contains("Operation not permitted")
}

impl Plan {
    /// The plan for these flags and the routes' IP destinations.
    pub fn new(args: &FirewallArgs, static_ips: &[IpAddr]) -> Result<Plan, FirewallError> {
        Plan::build(
            args.vm_cidr,
            &args.dns_address,
            &args.ports,
            &args.set,
            static_ips,
            args.grace,
        )
        .map_err(FirewallError::Usage)
    }
}

/// Runs `dnsbridge firewall` on this machine. `static_ips` are the IP-literal
/// destinations of the routes (read from `--config` by the caller).
pub fn run(args: &FirewallArgs, static_ips: &[IpAddr]) -> Result<ExitCode, FirewallError> {
    let mut stdout = std::io::stdout().lock();
    run_with(args, static_ips, &SystemRunner::new(), &mut stdout)
}

/// [`run`] with an explicit runner (a network namespace in the lab) and output.
pub fn run_with(
    args: &FirewallArgs,
    static_ips: &[IpAddr],
    runner: &dyn Runner,
    out: &mut dyn Write,
) -> Result<ExitCode, FirewallError> {
    let plan = Plan::new(args, static_ips)?;
    let report = match args.mode.mode() {
        Mode::Print => {
            let _ = out.write_all(plan.script().as_bytes());
            return Ok(ExitCode::SUCCESS);
        }
        Mode::Apply => apply::apply(&plan, runner)?,
        Mode::Remove => remove_all(&plan, runner)?,
    };
    for line in &report.lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "dnsbridge firewall: {} added, {} removed, {} already in place{}",
        report.added,
        report.removed,
        report.kept,
        if report.unchanged() { " (nothing to do)" } else { "" }
    );
    Ok(ExitCode::SUCCESS)
}

/// `--remove`: the plan's family must succeed; the other family is cleaned
/// too when its tool is there (rules of an earlier run with another subnet).
pub fn remove_all(plan: &Plan, runner: &dyn Runner) -> Result<Report, FirewallError> {
    let family = plan.family();
    let mut report = apply::remove(runner, family)?;
    let other = match family {
        Family::V4 => Family::V6,
        Family::V6 => Family::V4,
    };
    // The other family only when its tool works here; its failures after
    // that are real failures.
    if apply::list(runner, other).is_ok() {
        let more = apply::remove(runner, other)?;
        report.lines.extend(more.lines);
        report.removed += more.removed;
        report.chain_deleted |= more.chain_deleted;
    }
    Ok(report)
}
