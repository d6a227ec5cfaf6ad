//! Stand-in for `dnsbridge check` until the main binary wires the subcommand:
//! `cargo run --example check_cli -- check NAME ...`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dnsbridge")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Check(dnsbridge::check::CheckArgs),
}

fn main() -> ExitCode {
    let Cmd::Check(args) = Cli::parse().cmd;
    dnsbridge::check::run_blocking(args)
}
