//! The `flotilla` binary: the embedded demo (more to come: server, ctl).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_tools::demo::{self, DemoOptions};

/// flotilla: a multi-raft sharding engine.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an embedded 3-store cluster under a mixed read/write workload.
    Demo {
        /// Number of regions to bootstrap.
        #[arg(long, default_value_t = 1_000)]
        regions: u64,
        /// Number of client threads.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// How long to run, e.g. `30s`, `2m`, `500ms`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Fraction of operations that are writes.
        #[arg(long, default_value_t = 0.5)]
        write_ratio: f64,
        /// Seed of the workload.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Store clock base tick in milliseconds.
        #[arg(long, default_value_t = 100)]
        base_tick_ms: u64,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            regions,
            clients,
            duration,
            write_ratio,
            seed,
            base_tick_ms,
        } => {
            if !(0.0..=1.0).contains(&write_ratio) || clients == 0 || regions == 0 {
                eprintln!("flotilla demo: need regions > 0, clients > 0 and write_ratio in [0, 1]");
                return ExitCode::from(2);
            }
            let opts = DemoOptions {
                regions,
                clients,
                duration,
                write_ratio,
                seed,
                base_tick_ms,
            };
            println!(
                "flotilla demo: {} stores, {regions} regions, {clients} clients, {:?}",
                demo::DEMO_STORES,
                duration
            );
            let logger = slog::Logger::root(slog::Discard, slog::o!());
            match demo::run(&opts, &logger) {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
