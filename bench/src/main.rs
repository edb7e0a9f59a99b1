//! strom-bench: Strom's benchmark harness. Every figure is reported as a ratio
//! against a baseline measured in the same run (see bench/README.md).
//!
//! One subcommand per mode, one module per mode.

mod baseline;
mod compare;
mod consume;
mod engine;
mod kafka;
mod load;
mod plot;
mod produce;
mod report;
mod requests;
mod scenario;
mod spawn;
mod wire;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "strom-bench", version, about, args_override_self = true)]
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
    /// Produce over the network: throughput and ack latency.
    Produce(load::LoadArgs),
    /// Consume over the network (by default re-reading the server's tail cache).
    Consume(load::LoadArgs),
    /// Producers and consumers together: end-to-end latency.
    E2e(load::LoadArgs),
    /// Many small produce requests from one event-loop thread: requests/s,
    /// latency and server CPU per request, against a loopback ping-pong.
    Requests(requests::RequestsArgs),
    /// Produce and fetch over the Kafka protocol, against native in the same run.
    Kafka(kafka::KafkaArgs),
    /// Run a scenario file (bench/scenarios/*.toml); flags after it are appended.
    Run(scenario::RunArgs),
    /// Ratios B/A of the figures two `--json` reports share.
    Compare(compare::CompareArgs),
    /// Internal: the child the engine mode kills with SIGKILL.
    #[command(hide = true)]
    EngineCrashChild(engine::CrashChildArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = dispatch(&cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strom-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: &Command) -> Result<(), report::BenchError> {
    match command {
        Command::Produce(args) => load::main(load::Mode::Produce, args),
        Command::Consume(args) => load::main(load::Mode::Consume, args),
        Command::E2e(args) => load::main(load::Mode::E2e, args),
        Command::Requests(args) => requests::main(args),
        Command::Kafka(args) => kafka::main(args),
        Command::Compare(args) => compare::main(args),
        Command::Run(args) => {
            let argv = scenario::load(args)?;
            eprintln!("strom-bench {}", argv.join(" "));
            let cli = Cli::try_parse_from(std::iter::once("strom-bench".to_string()).chain(argv))
                .map_err(|e| {
                report::BenchError::Config(format!("scenario {}: {e}", args.file.display()))
            })?;
            match &cli.command {
                Command::Produce(_)
                | Command::Consume(_)
                | Command::E2e(_)
                | Command::Requests(_)
                | Command::Kafka(_) => dispatch(&cli.command),
                _ => Err(report::BenchError::Config(
                    "a scenario runs produce, consume, e2e, requests or kafka".into(),
                )),
            }
        }
        Command::Baseline(args) => baseline::main(args),
        Command::Engine(args) => engine::main(args),
        Command::EngineCrashChild(args) => engine::crash_child(args),
    }
}
