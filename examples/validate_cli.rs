//! Stand-in for the `validate`, `route` and `diff` subcommands of the
//! `dnsbridge` binary until `src/main.rs` wires them; the tests run it.
//!
//! `cargo run --example validate_cli -- validate examples/*.yaml`

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dnsbridge::validate::{DiffArgs, RouteArgs, ValidateArgs, run_diff, run_route, run_validate};

#[derive(Parser)]
#[command(name = "dnsbridge", about = "dnsbridge config tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check config files and report every problem with its position.
    Validate(ValidateArgs),
    /// Show which route a name matches, and why.
    Route(RouteArgs),
    /// Show the routes added, removed and changed between two configs.
    Diff(DiffArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate(a) => run_validate(&a),
        Command::Route(a) => run_route(&a),
        Command::Diff(a) => run_diff(&a),
    }
}
