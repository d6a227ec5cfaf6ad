//! `dnsbridge firewall` as a stand-alone program, until the main binary's glue
//! exists: the same flags, plus `--static-ip IP` (repeatable) for the routes'
//! IP destinations that the real command reads from `--config`.
//!
//!     cargo run --example firewall_cli -- --print --static-ip 10.0.0.9

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use dnsbridge::firewall::{self, FirewallArgs};

#[derive(Parser)]
#[command(name = "firewall_cli", about = "dnsbridge firewall (stand-alone)")]
struct Cli {
    #[command(flatten)]
    fw: FirewallArgs,
    /// An IP destination of a route (repeat the flag).
    #[arg(long = "static-ip", value_name = "IP")]
    static_ip: Vec<IpAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match firewall::run(&cli.fw, &cli.static_ip) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dnsbridge firewall: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
