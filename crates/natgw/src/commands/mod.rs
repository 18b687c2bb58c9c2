//! One short function per command: observe → core → adapter → print.

mod bench;
mod doctor;
mod down;
mod gateway;
mod ha;
mod install;
mod lab;
mod lab_ha;
mod node;
mod persist;
mod probe;
mod run;
mod status;
mod trace;
mod up;

use crate::cli::{Cli, Command};
use crate::exit;

/// The unit's tests check that it runs natgw on this file.
#[cfg(test)]
pub use gateway::DEFAULT_CONFIG;

pub fn run(cli: Cli) -> exit::Result<i32> {
    match cli.command {
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::PackageAssets { out, date } => crate::package_assets::write(&out, date.as_deref())
            .map(|()| exit::OK)
            .map_err(exit::problem),
        Command::Up {
            gateway,
            dry_run,
            json,
        } => up::run(&gateway, dry_run, json),
        Command::Plan { gateway, json } => up::run(&gateway, true, json),
        Command::Down { json } => down::run(json),
        Command::Status {
            gateway,
            json,
            watch: Some(secs),
        } if secs > 0.0 && secs.is_finite() && !json => {
            status::watch(&gateway, std::time::Duration::from_secs_f64(secs))
        }
        Command::Status { gateway, json, .. } => status::run(&gateway, json),
        Command::Run {
            gateway,
            down_on_exit,
            observe,
        } => run::run(&gateway, down_on_exit, &observe),
        Command::Doctor { gateway, fix, json } => doctor::run(&gateway, fix, json),
        Command::Node { action } => node::run(action),
        Command::Probe(args) => probe::run(&args),
        Command::StunServer(args) => probe::stun_server(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Trace(args) => trace::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::HaNotify { role } => ha::notify(&role),
    }
}
