//! `flotilla load`: bootstraps many regions (100,000 by default) on 3
//! stores in one process, then runs phases and prints one table each
//! (after one with the command line that reproduces the run):
//!
//! - (a) election: time until every region has a leader;
//! - (b) idle: waits until every peer hibernates, then measures the steady
//!   idle state: RSS in all and per peer, CPU, wire messages and heartbeat
//!   batches per store pair per heartbeat interval, peer ticks;
//! - (c) uniform writes and (d) hot-spot writes: throughput, latency
//!   percentiles, fsyncs, hibernated and awake peers;
//! - (e) kill the store that leads the most regions: how fast its regions
//!   get new leaders (from the stop and from the first support withdrawal,
//!   `t_detect`), and how many still have none after two election
//!   timeouts;
//! - (f) restart it: time to open, to load its peers, and to serve.
//!
//! Then a summary: issue #10's goals beside the measured values, each met
//! or not. A per-second series goes to a CSV and a PNG chart.

pub mod arrivals;
pub mod chart;
pub mod options;
mod phases;
pub mod remote;
pub mod series;
pub mod stats;
pub mod summary;
pub mod table;
pub mod workload;

use std::path::{Path, PathBuf};

use flotilla_raftstore::store::Config;
use slog::Logger;

pub use self::options::{LoadArgs, LoadOptions};
use self::phases::Run;
pub use self::table::Table;

/// Stores of the load cluster (each hosts a peer of every region).
pub const LOAD_STORES: usize = 3;
/// Ordered pairs of stores: each store sends to each other one.
pub const STORE_PAIRS: u64 = (LOAD_STORES * (LOAD_STORES - 1)) as u64;
/// File name of the per-second series in the output directory.
pub const CSV_NAME: &str = "load.csv";
/// File name of the chart in the output directory.
pub const PNG_NAME: &str = "load.png";
/// Prefix of the output directory made when `--out` is not given.
const OUT_DIR_PREFIX: &str = "flotilla-load-";
/// Leader ticks between split checks when `--split-size-kib` is given (1 s
/// at the default tick).
const SPLIT_CHECK_TICKS_LOAD: usize = 10;
/// Prefix of the temporary directory holding the stores' data.
const DATA_DIR_PREFIX: &str = "flotilla-load-data-";
/// Exit code for bad usage (as clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a run that failed.
pub const EXIT_FAILURE: u8 = 1;

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The options cannot work (exit code [`EXIT_USAGE`]).
    #[error("bad usage: {0}")]
    Usage(String),
    /// A store or the cluster failed.
    #[error("{what}: {source}")]
    Store {
        /// What was being done.
        what: String,
        /// The store's error.
        source: flotilla_raftstore::store::Error,
    },
    /// The storage engine failed.
    #[error("{what}: {source}")]
    Engine {
        /// What was being done.
        what: String,
        /// The engine's error.
        source: flotilla_engine::Error,
    },
    /// A file or directory could not be made or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The chart could not be drawn.
    #[error("chart: {0}")]
    Chart(String),
    /// Something that should not happen (a client thread panicked, a
    /// thread could not be spawned).
    #[error("{0}")]
    Internal(String),
}

impl LoadError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoadError {
        let what = what.into();
        move |source| LoadError::Io { what, source }
    }
}

/// Where a run put its files.
#[derive(Debug, Clone)]
pub struct LoadOutput {
    /// The output directory.
    pub dir: PathBuf,
    /// The per-second series.
    pub csv: PathBuf,
    /// The chart.
    pub png: PathBuf,
    /// Whether the chart has text (a font was found); without, the panels
    /// are as [`chart::PANEL_LEGEND`] says.
    pub png_has_text: bool,
}

/// The stores' config for `opts`.
///
/// # Errors
/// [`LoadError::Usage`] if the raftstore refuses it.
pub fn store_config(opts: &LoadOptions) -> Result<Config, LoadError> {
    let mut cfg = Config {
        base_tick_ms: opts.base_tick_ms,
        sync_log: opts.sync_log,
        ..Config::default()
    };
    if let Some(kib) = opts.split_size_kib {
        cfg.region_split_size = kib << 10;
        cfg.split_check_ticks = SPLIT_CHECK_TICKS_LOAD;
    }
    cfg.validate()
        .map_err(|e| LoadError::Usage(format!("store config: {e}")))?;
    Ok(cfg)
}

/// Hands the command line of the process (and the same with every option
/// explicit) to `on_table`, runs every phase, handing each phase's table
/// to `on_table` as soon as it is done, then the goal table; then writes
/// the CSV and the PNG.
///
/// # Errors
/// [`LoadError::Usage`] for options the store refuses; the first failure
/// otherwise (the series gathered so far is still written when a phase
/// fails after the cluster started).
pub fn run(
    opts: &LoadOptions,
    logger: &Logger,
    on_table: &mut dyn FnMut(&Table),
) -> Result<LoadOutput, LoadError> {
    let cfg = store_config(opts)?;
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    on_table(&summary::command_table(&argv, opts));
    let dir = prepare_out_dir(opts.out.as_deref())?;
    let data = tempfile::Builder::new()
        .prefix(DATA_DIR_PREFIX)
        .tempdir()
        .map_err(LoadError::io("temporary data directory"))?;
    let (cluster, bootstrap_took) = phases::bootstrap(opts, &cfg, data.path(), logger)?;
    let mut run = Run::new(opts, cfg, data.path(), cluster)?;
    let phases = run.all_phases(bootstrap_took, on_table);
    let files = run.write_files(&dir);
    run.shutdown();
    phases?;
    files
}

/// The output directory: `out` (created if missing) or a new directory
/// under the system temp dir, kept after the run.
fn prepare_out_dir(out: Option<&Path>) -> Result<PathBuf, LoadError> {
    match out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(LoadError::io(format!("create {}", dir.display())))?;
            Ok(dir.to_path_buf())
        }
        None => Ok(tempfile::Builder::new()
            .prefix(OUT_DIR_PREFIX)
            .tempdir()
            .map_err(LoadError::io("create an output directory"))?
            .keep()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_failures_1() {
        assert_eq!(LoadError::Usage("x".into()).exit_code(), 2);
        assert_eq!(LoadError::Chart("x".into()).exit_code(), 1);
    }

    #[test]
    fn out_dir_is_made_when_missing() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let want = tmp.path().join("a/b");
        assert_eq!(prepare_out_dir(Some(&want)).expect("made"), want);
        assert!(want.is_dir());
    }
}
