//! natgw: turn a Linux host into the outbound NAT gateway of its private network.

mod cli;
mod commands;
mod config_file;
mod exit;
mod output;

use clap::Parser;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("NATGW_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("natgw: error: {:#}", failure.error);
            failure.code
        }
    };
    std::process::exit(code);
}
