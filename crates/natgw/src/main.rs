//! natgw: turn a Linux host into the outbound NAT gateway of its private network.

mod address_flags;
mod binding_log;
mod cli;
mod commands;
mod config_file;
mod exit;
mod logging;
mod mapping_log;
mod metrics;
mod output;
mod package_assets;
mod root_dir;
mod systemd_unit;
mod tracker;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let logging = match logging::init(cli.log_format, cli.command.changes_system(), cli.verbose) {
        Ok(logging) => logging,
        Err(e) => {
            eprintln!("natgw: error: {e:#}");
            std::process::exit(exit::USAGE);
        }
    };
    tracing::debug!(args = ?std::env::args().skip(1).collect::<Vec<_>>(), "starting");
    let code = match commands::run(cli) {
        Ok(code) => code,
        Err(failure) => {
            logging.report(&failure);
            failure.code
        }
    };
    tracing::debug!(exit_code = code, "finished");
    std::process::exit(code);
}
