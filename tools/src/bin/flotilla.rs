//! The `flotilla` binary: the embedded demo, the load tool, and a store
//! server of a networked cluster (`server`, `bootstrap`, `ctl`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_tools::ctl::{self, CtlArgs};
use flotilla_tools::demo::{self, DemoOptions};
use flotilla_tools::load::options::{
    MAX_BASE_TICK_MS, MAX_CLIENTS, MAX_REGIONS, parse_duration, parse_ratio,
};
use flotilla_tools::load::{self, LoadArgs, LoadError, LoadOptions};
use flotilla_tools::server::{self, ServerConfig};

/// jemalloc: glibc's per-thread arenas fragment under many small
/// per-peer allocations made and freed on several threads.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its start (its `malloc_conf` symbol,
/// with the `_rjem_` prefix of tikv-jemallocator; a NUL-ended C string;
/// `_RJEM_MALLOC_CONF` in the environment still overrides it).
///
/// `background_thread`: a jemalloc thread (one: `max_background_threads`,
/// the store's own threads are few) returns freed pages to the OS
/// as they age (its default 10 s decay). Without it pages are returned only
/// when the process allocates again, and a store whose peers all
/// hibernate hardly does: the garbage of bootstrap and election stayed
/// resident. `flotilla load` (100,000 regions x 3 stores) measured idle
/// RSS 4.86 KiB per peer without it and 3.77 KiB with it, for about 0.6%
/// of a core more at idle.
#[cfg(not(target_env = "msvc"))]
// SAFETY: exporting this symbol is sound because nothing else in the
// program defines `_rjem_malloc_conf` (tikv-jemalloc-sys only declares it,
// weakly, for exactly this use), and its type matches what jemalloc reads:
// `&[u8; N]` is one thin pointer, like the C `const char *`, to a static
// NUL-ended byte string that lives for the whole program and is never
// written.
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 48] = b"background_thread:true,max_background_threads:1\0";

/// Largest `demo --split-size-kib` accepted (1 TiB: past any region).
const MAX_SPLIT_SIZE_KIB: u64 = 1 << 30;

/// Largest `demo --hibernate-idle-ticks` accepted (a day at a 1 ms tick).
const MAX_HIBERNATE_IDLE_TICKS: i64 = 86_400_000;

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
        #[arg(long, default_value_t = 1_000,
              value_parser = clap::value_parser!(u64).range(1..=MAX_REGIONS))]
        regions: u64,
        /// Number of client threads.
        #[arg(long, default_value_t = 32,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
        clients: u32,
        /// How long to run, e.g. `30s`, `2m`, `500ms`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Fraction of operations that are writes.
        #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
        write_ratio: f64,
        /// Seed of the workload.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Store clock base tick in milliseconds.
        #[arg(long, default_value_t = 100,
              value_parser = clap::value_parser!(u64).range(1..=MAX_BASE_TICK_MS))]
        base_tick_ms: u64,
        /// Turn raft log GC off (to see the log grow without it).
        #[arg(long)]
        no_log_gc: bool,
        /// Split regions past this many KiB under load (the split checker
        /// runs every second); default: the store's 96 MiB.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_SPLIT_SIZE_KIB))]
        split_size_kib: Option<u64>,
        /// Split regions as fast as this many admin threads can beside
        /// the workload (at random keys) and report splits per second.
        #[arg(long, default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CLIENTS)))]
        split_storm: u32,
        /// Merge regions with their right neighbours as fast as this many
        /// admin threads can beside the workload and report merges per
        /// second.
        #[arg(long, default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_CLIENTS)))]
        merge_storm: u32,
        /// Idle ticks after which a leader hibernates its region; 0 turns
        /// hibernation off. Default: the store's.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=MAX_HIBERNATE_IDLE_TICKS))]
        hibernate_idle_ticks: Option<u32>,
        /// Send every committed entry through the apply pool, even when a
        /// raft poller could apply it in the round that committed it.
        #[arg(long)]
        no_apply_inline: bool,
    },
    /// Bootstrap many regions (100,000 by default) on 3 in-process stores
    /// and measure election, idle cost, uniform and hot-spot writes, and
    /// the loss and restart of a store; writes a CSV and a PNG.
    Load(LoadArgs),
    /// Run one store of a networked cluster (gRPC raft transport and
    /// client service on one port) until SIGTERM or SIGINT.
    Server {
        /// The store's TOML config (see `--print-default-config`).
        #[arg(long, required_unless_present = "print_default_config")]
        config: Option<PathBuf>,
        /// Print the default config, every field written out, and exit.
        #[arg(long)]
        print_default_config: bool,
    },
    /// Look at and change a running cluster through one of its stores
    /// (`--host`), or look into a stopped store (`--data-dir`).
    Ctl(CtlArgs),
    /// Write a new cluster's store to the data dir of its config (run once
    /// per store, with configs that agree on the cluster's stores and
    /// initial regions), before its first `flotilla server`.
    Bootstrap {
        /// The store's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Load(args) => run_load(args),
        Command::Ctl(args) => match ctl::run(&args) {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("flotilla ctl: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Command::Server {
            print_default_config: true,
            ..
        } => {
            print!("{}", ServerConfig::default_toml());
            ExitCode::SUCCESS
        }
        Command::Server { config, .. } => {
            let Some(path) = config else {
                eprintln!("flotilla server: --config is required");
                return ExitCode::from(2);
            };
            let cfg = match ServerConfig::load(&path) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("flotilla server: {e}");
                    return ExitCode::from(2);
                }
            };
            match server::serve(&cfg, &logger()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bootstrap { config } => {
            let cfg = match ServerConfig::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("flotilla bootstrap: {e}");
                    return ExitCode::from(2);
                }
            };
            match server::bootstrap(&cfg) {
                Ok(()) => {
                    println!(
                        "flotilla bootstrap: store {} of cluster {} written to {}",
                        cfg.store_id,
                        cfg.cluster_id,
                        cfg.data_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla bootstrap: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            regions,
            clients,
            duration,
            write_ratio,
            seed,
            base_tick_ms,
            no_log_gc,
            split_size_kib,
            split_storm,
            merge_storm,
            hibernate_idle_ticks,
            no_apply_inline,
        } => {
            // clap checked every range (u32 fits a usize on every target
            // RocksDB builds for).
            let opts = DemoOptions {
                regions,
                clients: clients as usize,
                duration,
                write_ratio,
                seed,
                base_tick_ms,
                log_gc: !no_log_gc,
                split_size: split_size_kib.map(|k| k << 10),
                split_storm: split_storm as usize,
                merge_storm: merge_storm as usize,
                hibernate_idle_ticks: hibernate_idle_ticks.map(|t| t as usize),
                apply_inline: !no_apply_inline,
            };
            println!(
                "flotilla demo: {} stores, {regions} regions, {clients} clients, {:?}",
                demo::DEMO_STORES,
                duration
            );
            let logger = logger();
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

/// Runs `flotilla load`: tables on stdout as the phases end, errors on
/// stderr, exit code 2 for bad usage.
fn run_load(args: LoadArgs) -> ExitCode {
    let opts = match LoadOptions::try_from(args) {
        Ok(opts) => opts,
        Err(e) => return load_failed(&e),
    };
    if let Some(addr) = opts.remote.clone() {
        println!(
            "flotilla load --remote {addr}: {} clients, phases of {:?}, seed {}",
            opts.clients, opts.phase_duration, opts.seed
        );
        return match load::remote::run(&opts, &addr, &mut |table| println!("{table}")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => load_failed(&e),
        };
    }
    println!(
        "flotilla load: {} stores, {} regions, {} clients, phases of {:?}, sync_log {}, seed {}",
        load::LOAD_STORES,
        opts.regions,
        opts.clients,
        opts.phase_duration,
        opts.sync_log,
        opts.seed
    );
    let logger = logger();
    let result = load::run(&opts, &logger, &mut |table| println!("{table}"));
    match result {
        Ok(out) => {
            println!("series (one row per second): {}", out.csv.display());
            println!("  columns: {}", load::series::CSV_HEADER);
            println!("chart: {}", out.png.display());
            if !out.png_has_text {
                println!(
                    "  (no font found, so no text in it; set {} to a .ttf file) {}",
                    load::chart::FONT_ENV,
                    load::chart::PANEL_LEGEND
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => load_failed(&e),
    }
}

fn load_failed(e: &LoadError) -> ExitCode {
    eprintln!("flotilla load: {e}");
    ExitCode::from(e.exit_code())
}

/// The stores' logger: stderr when `FLOTILLA_LOG` is set, else nothing.
fn logger() -> slog::Logger {
    if std::env::var_os("FLOTILLA_LOG").is_some() {
        use slog::Drain;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog::Logger::root(drain, slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}
