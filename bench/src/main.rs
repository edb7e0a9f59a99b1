//! strom-bench: Strom's benchmark harness. Every figure is reported as a ratio
//! against a baseline measured in the same run (see bench/README.md).
//!
//! One subcommand per mode, one module per mode.

mod baseline;
mod engine;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "strom-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure this machine's raw limits: O_DIRECT write/read, 4 KiB
    /// write+fdatasync latency, loopback TCP.
    Baseline(baseline::BaselineArgs),
    /// Benchmark the partition log: append throughput, durable appends, recovery after SIGKILL.
    Engine(engine::EngineArgs),
    /// Internal: the child the engine mode kills with SIGKILL.
    #[command(hide = true)]
    EngineCrashChild(engine::CrashChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Baseline(args) => baseline::main(args),
        Command::Engine(args) => engine::main(args),
        Command::EngineCrashChild(args) => engine::crash_child(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
