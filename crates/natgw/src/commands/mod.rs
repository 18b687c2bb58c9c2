//! One short function per command: observe → core → adapter → print.

mod bench;
mod doctor;
mod down;
mod gateway;
mod lab;
mod node;
mod persist;
mod probe;
mod run;
mod status;
mod trace;
mod up;

use crate::cli::{Cli, Command};
use crate::exit;

pub fn run(cli: Cli) -> exit::Result<i32> {
    match cli.command {
        Command::Up {
            gateway,
            dry_run,
            json,
        } => up::run(&gateway, dry_run, json),
        Command::Plan { gateway, json } => up::run(&gateway, true, json),
        Command::Down { json } => down::run(json),
        Command::Status { gateway, json } => status::run(&gateway, json),
        Command::Trace {
            address,
            gateway,
            json,
        } => trace::run(&gateway, address, json),
        Command::Run {
            gateway,
            down_on_exit,
        } => run::run(&gateway, down_on_exit),
        Command::Doctor { gateway, fix, json } => doctor::run(&gateway, fix, json),
        Command::Node { action } => node::run(action),
        Command::Probe(args) => probe::run(&args),
        Command::StunServer { listen, alt } => probe::stun_server(listen, alt),
        Command::Lab(args) => lab::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
