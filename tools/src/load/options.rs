//! The options of `flotilla load`: the clap arguments, their value parsers,
//! and the checked [`LoadOptions`] the run uses.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;

use super::LoadError;

/// Regions bootstrapped by default.
pub const DEFAULT_REGIONS: u64 = 100_000;
/// Most regions accepted (far beyond what one machine's memory holds).
pub const MAX_REGIONS: u64 = flotilla_raftstore::store::bootstrap::MAX_INITIAL_REGIONS;
/// Default store clock base tick (ms), the raftstore default.
pub const DEFAULT_BASE_TICK_MS: u64 = 100;
/// Longest base tick accepted (ms), as the raftstore config allows.
pub const MAX_BASE_TICK_MS: u64 = 60_000;
/// Client threads by default.
pub const DEFAULT_CLIENTS: u32 = 32;
/// Most client threads accepted.
pub const MAX_CLIENTS: u32 = 4_096;
/// Default length of each measured phase.
pub const DEFAULT_PHASE_DURATION: &str = "10s";
/// Shortest phase accepted: the series has one row per second.
pub const MIN_PHASE_DURATION: Duration = Duration::from_secs(1);
/// Longest phase accepted.
pub const MAX_PHASE_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Fraction of operations that are writes by default (the rest are reads).
pub const DEFAULT_WRITE_RATIO: f64 = 1.0;
/// Bytes of each written value by default.
pub const DEFAULT_VALUE_SIZE: u32 = 128;
/// Largest value accepted (bytes); the store refuses entries over 8 MiB.
pub const MAX_VALUE_SIZE: u32 = 1 << 20;
/// Seed of the workload by default.
pub const DEFAULT_SEED: u64 = 42;

const S_PER_M: u64 = 60;
const S_PER_H: u64 = 60 * 60;

/// `flotilla load`: bootstrap many regions on 3 in-process stores, then
/// measure election, idle cost, uniform and hot-spot writes, and the loss
/// and restart of a store.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Number of regions to bootstrap (each has a peer on every store).
    #[arg(long, default_value_t = DEFAULT_REGIONS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_REGIONS))]
    pub regions: u64,
    /// Store clock base tick in milliseconds (the election timeout is
    /// this times the config's election ticks).
    #[arg(long, default_value_t = DEFAULT_BASE_TICK_MS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BASE_TICK_MS))]
    pub base_tick_ms: u64,
    /// Client threads of the write phases.
    #[arg(long, default_value_t = DEFAULT_CLIENTS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_CLIENTS)))]
    pub clients: u32,
    /// Length of each measured phase, e.g. `10s`, `500ms`, `2m` (at least 1s).
    #[arg(long, default_value = DEFAULT_PHASE_DURATION, value_parser = parse_phase_duration)]
    pub phase_duration: Duration,
    /// Fraction of client operations that are writes, in [0, 1] (the rest
    /// are reads).
    #[arg(long, default_value_t = DEFAULT_WRITE_RATIO, value_parser = parse_ratio)]
    pub write_ratio: f64,
    /// Bytes of each written value.
    #[arg(long, default_value_t = DEFAULT_VALUE_SIZE,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_VALUE_SIZE)))]
    pub value_size: u32,
    /// fsync the raft log on every round that appends entries
    /// (`--sync-log false` to turn it off).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub sync_log: bool,
    /// Directory for the CSV and the PNG (created if missing; default: a
    /// new directory under the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of every random choice of the workload.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Split regions past this many KiB under the write phases (the split
    /// checker runs every second); default: the store's 96 MiB, which the
    /// run's regions never reach.
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub split_size_kib: Option<u64>,
    /// Threads that split regions at random keys, one split after
    /// another, beside the uniform write phase (its table reports splits
    /// per second).
    #[arg(long, value_name = "THREADS", default_value_t = 0)]
    pub split_storm: u32,
    /// Threads that merge random regions with their right neighbours
    /// beside the uniform write phase (its table reports merges per
    /// second).
    #[arg(long, value_name = "THREADS", default_value_t = 0)]
    pub merge_storm: u32,
    /// Drive a running networked cluster (`flotilla server` processes)
    /// through the store at `host:port` instead of bootstrapping one in
    /// this process: election, idle and the write phases; kill and restart
    /// with `--kill-cmd` and `--restart-cmd`.
    #[arg(long, value_name = "ADDR")]
    pub remote: Option<String>,
    /// With `--remote`: a shell command (`sh -c`, output discarded) that
    /// kills a store, `{store}` standing for its id. The kill phase runs
    /// it on the store leading the most regions and times the failover.
    #[arg(long, value_name = "CMD", requires = "remote")]
    pub kill_cmd: Option<String>,
    /// With `--kill-cmd`: a shell command that starts the killed store
    /// again and returns (`{store}` for its id); the restart phase times
    /// the store back to serving.
    #[arg(long, value_name = "CMD", requires = "kill_cmd")]
    pub restart_cmd: Option<String>,
}

/// What a load run does, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Regions bootstrapped.
    pub regions: u64,
    /// Store clock base tick (ms).
    pub base_tick_ms: u64,
    /// Client threads of the write phases.
    pub clients: usize,
    /// Length of each measured phase.
    pub phase_duration: Duration,
    /// Fraction of operations that are writes.
    pub write_ratio: f64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Whether the stores sync their raft log writes.
    pub sync_log: bool,
    /// Where the CSV and PNG go (`None`: a new temp directory).
    pub out: Option<PathBuf>,
    /// Workload seed.
    pub seed: u64,
    /// Split regions past this many KiB (`None`: the store's default).
    pub split_size_kib: Option<u64>,
    /// Split-storm threads beside the uniform write phase.
    pub split_storm: usize,
    /// Merge-storm threads beside the uniform write phase.
    pub merge_storm: usize,
    /// A networked cluster's store to drive instead of an in-process one.
    pub remote: Option<String>,
    /// With `remote`: the shell command that kills store `{store}`.
    pub kill_cmd: Option<String>,
    /// With `kill_cmd`: the shell command that starts it again.
    pub restart_cmd: Option<String>,
}

impl TryFrom<LoadArgs> for LoadOptions {
    type Error = LoadError;

    /// Checks what clap could not check alone.
    ///
    /// # Errors
    /// [`LoadError::Usage`] for an `--out` that exists and is not a
    /// directory.
    fn try_from(a: LoadArgs) -> Result<Self, LoadError> {
        if let Some(out) = &a.out
            && out.exists()
            && !out.is_dir()
        {
            return Err(LoadError::Usage(format!(
                "--out {}: exists and is not a directory",
                out.display()
            )));
        }
        Ok(LoadOptions {
            regions: a.regions,
            base_tick_ms: a.base_tick_ms,
            clients: usize::try_from(a.clients)
                .map_err(|_| LoadError::Usage("--clients: too many".into()))?,
            phase_duration: a.phase_duration,
            write_ratio: a.write_ratio,
            value_size: usize::try_from(a.value_size)
                .map_err(|_| LoadError::Usage("--value-size: too large".into()))?,
            sync_log: a.sync_log,
            out: a.out,
            seed: a.seed,
            split_size_kib: a.split_size_kib,
            split_storm: a.split_storm as usize,
            merge_storm: a.merge_storm as usize,
            remote: a.remote,
            kill_cmd: a.kill_cmd,
            restart_cmd: a.restart_cmd,
        })
    }
}

impl LoadOptions {
    /// The arguments of `flotilla load` (from `load` on) that run with
    /// these options, every one of them explicit (so that changed defaults
    /// do not change the run).
    pub fn to_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "load".into(),
            "--regions".into(),
            self.regions.to_string(),
            "--base-tick-ms".into(),
            self.base_tick_ms.to_string(),
            "--clients".into(),
            self.clients.to_string(),
            "--phase-duration".into(),
            fmt_duration_arg(self.phase_duration),
            "--write-ratio".into(),
            self.write_ratio.to_string(),
            "--value-size".into(),
            self.value_size.to_string(),
            "--sync-log".into(),
            self.sync_log.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ];
        if let Some(kib) = self.split_size_kib {
            args.push("--split-size-kib".into());
            args.push(kib.to_string());
        }
        for (flag, threads) in [
            ("--split-storm", self.split_storm),
            ("--merge-storm", self.merge_storm),
        ] {
            if threads > 0 {
                args.push(flag.into());
                args.push(threads.to_string());
            }
        }
        if let Some(out) = &self.out {
            args.push("--out".into());
            args.push(out.to_string_lossy().into_owned());
        }
        for (flag, value) in [
            ("--remote", &self.remote),
            ("--kill-cmd", &self.kill_cmd),
            ("--restart-cmd", &self.restart_cmd),
        ] {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v.clone());
            }
        }
        args
    }
}

/// `d` as [`parse_duration`] reads it back: whole seconds as `10s`, else
/// milliseconds (`1500ms`; below a millisecond is dropped).
pub fn fmt_duration_arg(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `args` as one shell command line: each argument as is when it has only
/// characters no shell treats specially, else in single quotes.
pub fn shell_join<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    args.into_iter()
        .map(|a| {
            let a = a.as_ref();
            if !a.is_empty() && a.chars().all(plain) {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses a duration: a whole number with a unit `ms`, `s`, `m` or `h`
/// (no unit: seconds), e.g. `500ms`, `10s`, `2m`.
///
/// # Errors
/// A message for clap naming what is wrong (never a panic, even on
/// overflow).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("bad duration {s:?}: expected e.g. 10s, 500ms, 2m"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}: number too large"))?;
    let too_long = || format!("bad duration {s:?}: too long");
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(S_PER_M)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        "h" => n
            .checked_mul(S_PER_H)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        _ => Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    }
}

/// [`parse_duration`], within [`MIN_PHASE_DURATION`]..=[`MAX_PHASE_DURATION`].
///
/// # Errors
/// As [`parse_duration`], or the bounds.
pub fn parse_phase_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < MIN_PHASE_DURATION || d > MAX_PHASE_DURATION {
        return Err(format!(
            "phase duration must be between {} ms and {} h",
            MIN_PHASE_DURATION.as_millis(),
            MAX_PHASE_DURATION.as_secs() / S_PER_H
        ));
    }
    Ok(d)
}

/// Parses a fraction in `[0, 1]` (NaN refused).
///
/// # Errors
/// A message for clap.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad ratio {s:?}: expected a number in [0, 1]"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("ratio {s:?} is not in [0, 1]"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadArgs,
    }

    fn parse(args: &[&str]) -> Result<LoadArgs, clap::Error> {
        let argv = std::iter::once("load").chain(args.iter().copied());
        Wrapper::try_parse_from(argv).map(|w| w.args)
    }

    #[test]
    fn durations_parse_with_units_and_never_overflow() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "-1s", "1.5s", "10x", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration(&format!("{}m", u64::MAX)).is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 2)).is_err());
    }

    #[test]
    fn ratios_are_fractions() {
        assert_eq!(parse_ratio("0.25"), Ok(0.25));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        for bad in ["NaN", "-0.1", "1.01", "inf", "half"] {
            assert!(parse_ratio(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn defaults_and_small_runs_parse() {
        let a = parse(&[]).expect("defaults");
        assert_eq!(a.regions, DEFAULT_REGIONS);
        assert!(a.sync_log);
        assert_eq!(a.phase_duration, Duration::from_secs(10));
        let a = parse(&[
            "--regions",
            "1000",
            "--phase-duration",
            "3s",
            "--sync-log",
            "false",
            "--write-ratio",
            "0.5",
        ])
        .expect("small run");
        assert_eq!(a.regions, 1000);
        assert!(!a.sync_log);
        let o = LoadOptions::try_from(a).expect("valid");
        assert_eq!(o.phase_duration, Duration::from_secs(3));
        assert!((o.write_ratio - 0.5).abs() < f64::EPSILON);
        assert!(parse(&["--sync-log"]).expect("bare flag").sync_log);
    }

    #[test]
    fn explicit_args_give_the_same_options() {
        let a = parse(&[
            "--regions",
            "1000",
            "--phase-duration",
            "1500ms",
            "--write-ratio",
            "0.3",
            "--sync-log",
            "false",
            "--out",
            "/tmp/a dir",
        ])
        .expect("parses");
        let o = LoadOptions::try_from(a).expect("valid");
        let args = o.to_args();
        assert_eq!(args[0], "load");
        let again = LoadOptions::try_from(
            parse(&args[1..].iter().map(String::as_str).collect::<Vec<_>>()).expect("re-parses"),
        )
        .expect("valid");
        assert_eq!(again, o);
        let d = LoadOptions::try_from(parse(&[]).expect("defaults")).expect("valid");
        assert!(d.to_args().contains(&"10s".to_string()));
        assert!(!d.to_args().contains(&"--out".to_string()));
    }

    /// The kill and restart hooks need `--remote` (and the restart hook
    /// the kill hook), and survive the round trip through `to_args`.
    #[test]
    fn remote_hooks_need_remote_and_round_trip() {
        assert!(parse(&["--kill-cmd", "kill {store}"]).is_err());
        assert!(parse(&["--remote", "h:1", "--restart-cmd", "start {store}"]).is_err());
        let a = parse(&[
            "--remote",
            "h:1",
            "--kill-cmd",
            "kill -9 $(cat p{store})",
            "--restart-cmd",
            "start {store} &",
        ])
        .expect("parses");
        let o = LoadOptions::try_from(a).expect("valid");
        assert_eq!(o.kill_cmd.as_deref(), Some("kill -9 $(cat p{store})"));
        let args = o.to_args();
        let again = LoadOptions::try_from(
            parse(&args[1..].iter().map(String::as_str).collect::<Vec<_>>()).expect("re-parses"),
        )
        .expect("valid");
        assert_eq!(again, o);
    }

    #[test]
    fn command_lines_quote_only_what_a_shell_would_split() {
        assert_eq!(
            shell_join(["flotilla", "load", "--regions", "1000", "--out", "/tmp/x-1"]),
            "flotilla load --regions 1000 --out /tmp/x-1"
        );
        assert_eq!(
            shell_join(["a b", "", "it's", "$HOME"]),
            r"'a b' '' 'it'\''s' '$HOME'"
        );
        assert_eq!(fmt_duration_arg(Duration::from_secs(3)), "3s");
        assert_eq!(fmt_duration_arg(Duration::from_millis(2500)), "2500ms");
    }

    #[test]
    fn bad_options_are_usage_errors_not_panics() {
        for bad in [
            &["--regions", "0"][..],
            &["--regions", "-5"],
            &["--clients", "0"],
            &["--base-tick-ms", "0"],
            &["--base-tick-ms", "60001"],
            &["--phase-duration", "0s"],
            &["--phase-duration", "999ms"],
            &["--write-ratio", "2"],
            &["--value-size", "99999999"],
            &["--sync-log", "maybe"],
            &["--seed", "x"],
        ] {
            let e = parse(bad).expect_err("accepted bad options");
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let a = parse(&["--out", &file.path().display().to_string()]).expect("parses");
        assert!(matches!(LoadOptions::try_from(a), Err(LoadError::Usage(_))));
    }
}
