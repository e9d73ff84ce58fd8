//! The end of a run: issue #10's goals beside what the run measured, each
//! met or not; and the command line that reproduces the run.

use std::fmt;
use std::time::Duration;

use super::Table;
use super::options::{LoadOptions, shell_join};
use super::table::{fmt_bytes, fmt_duration};

const KIB: u64 = 1024;
/// The regions the goals are set for.
pub const GOALS_REGIONS: u64 = 100_000;
const GIB: u64 = 1024 * 1024 * 1024;
/// Idle RSS of the whole process (100,000 regions on 3 stores).
pub const GOAL_IDLE_RSS: u64 = 3 * GIB / 2;
/// Idle RSS per hibernated peer.
pub const GOAL_IDLE_RSS_PER_PEER: u64 = 5 * KIB;
/// Idle CPU, in cores (2% of one).
pub const GOAL_IDLE_CORES: f64 = 0.02;
/// Heartbeat wire messages per store pair per heartbeat interval, idle.
pub const GOAL_BEATS_PER_PAIR_INTERVAL: f64 = 2.0;
/// The slowest new leader after the loss of a store, in election timeouts.
pub const GOAL_FAILOVER_TIMEOUTS: f64 = 2.0;
/// From a store's restart until it serves.
pub const GOAL_RESTART: Duration = Duration::from_secs(5);
/// Peak RSS through bootstrap and election.
pub const GOAL_PEAK_RSS: u64 = 2 * GIB;
/// Columns of the goal table after the goal's name.
const HEADER: [&str; 3] = ["goal", "measured", "status"];
/// Spaces between the goal table's columns.
const COLUMN_GAP: usize = 3;

/// What the phases measured that the goals need; `None` for what was not
/// measured (a phase failed or did not get there).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    /// Peers in the cluster.
    pub peers: u64,
    /// Bootstrap (write the regions, open the stores, load the peers).
    pub bootstrap: Duration,
    /// Every region with a leader, after the bootstrap.
    pub election: Option<Duration>,
    /// Peak RSS at the end of the election phase.
    pub election_peak_rss: Option<u64>,
    /// RSS at the end of the idle measurement.
    pub idle_rss: Option<u64>,
    /// Peers hibernated at the end of the idle measurement.
    pub idle_hibernated: u64,
    /// CPU cores used during the idle measurement.
    pub idle_cores: Option<f64>,
    /// Heartbeat batches (bare liveness beats included) per store pair per
    /// heartbeat interval during the idle measurement.
    pub idle_beats_per_pair: Option<f64>,
    /// All wire messages per store pair per heartbeat interval, idle.
    pub idle_wire_per_pair: Option<f64>,
    /// The failover of the kill phase.
    pub failover: Option<Failover>,
    /// From the start of a restart until the store is open with all its
    /// peers loaded (its first engine open, which recovers, included).
    pub restart: Option<Duration>,
    /// From the start of the restart until a client write succeeded (on any
    /// store).
    pub restart_first_write: Option<Duration>,
    /// From the start of the restart until the cluster's writes/s were
    /// back to half the uniform phase's, every second from then on.
    pub restart_steady: Option<Duration>,
    /// Peak RSS of the whole run.
    pub peak_rss: Option<u64>,
}

/// How the regions of a stopped store got new leaders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failover {
    /// The election timeout.
    pub election_timeout: Duration,
    /// The last new leader, from the stop (`None`: not all got one).
    pub max: Option<Duration>,
    /// The first support withdrawal, from the stop.
    pub detect: Option<Duration>,
    /// Regions still without a leader at the end.
    pub missing: u64,
}

/// Whether a goal was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Measured, within the goal.
    Met,
    /// Measured, beyond the goal.
    NotMet,
    /// Not measured.
    Unmeasured,
    /// Reported, no goal to meet.
    Info,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Met => "met",
            Status::NotMet => "not met",
            Status::Unmeasured => "not measured",
            Status::Info => "-",
        })
    }
}

impl Status {
    /// [`Status::Met`] if `value <= limit`; [`Status::Unmeasured`] without
    /// a value.
    pub fn at_most<T: PartialOrd>(value: Option<T>, limit: T) -> Status {
        match value {
            Some(v) if v <= limit => Status::Met,
            Some(_) => Status::NotMet,
            None => Status::Unmeasured,
        }
    }
}

/// One goal and what was measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goal {
    /// What is measured.
    pub what: String,
    /// The goal, e.g. `<= 2`.
    pub goal: String,
    /// The measured value.
    pub measured: String,
    /// Whether it was met.
    pub status: Status,
}

impl Goal {
    fn new(what: &str, goal: String, measured: Option<String>, status: Status) -> Goal {
        Goal {
            what: what.into(),
            goal,
            measured: measured.unwrap_or_else(|| "-".into()),
            status,
        }
    }
}

/// The goals of issue #10 with what `f` measured.
pub fn goals(f: &Findings) -> Vec<Goal> {
    let mut g = Vec::new();
    let not_all_asleep = (f.idle_hibernated < f.peers)
        .then(|| format!(" ({} of {} peers hibernated)", f.idle_hibernated, f.peers));
    g.push(Goal::new(
        "idle RSS, all",
        format!("<= {}", fmt_bytes(GOAL_IDLE_RSS)),
        f.idle_rss.map(fmt_bytes),
        Status::at_most(f.idle_rss, GOAL_IDLE_RSS),
    ));
    let per_peer = f.idle_rss.map(|rss| rss / f.peers.max(1));
    g.push(Goal::new(
        "idle RSS per hibernated peer",
        format!("<= {}", fmt_bytes(GOAL_IDLE_RSS_PER_PEER)),
        per_peer.map(|b| fmt_bytes(b) + not_all_asleep.as_deref().unwrap_or("")),
        Status::at_most(per_peer, GOAL_IDLE_RSS_PER_PEER),
    ));
    g.push(Goal::new(
        "idle CPU",
        format!("<= {}", fmt_core_share(GOAL_IDLE_CORES)),
        f.idle_cores
            .map(|c| format!("{} ({c:.3} cores)", fmt_core_share(c))),
        Status::at_most(f.idle_cores, GOAL_IDLE_CORES),
    ));
    g.push(Goal::new(
        "idle heartbeat wire messages per store pair per heartbeat interval",
        format!("<= {GOAL_BEATS_PER_PAIR_INTERVAL}"),
        f.idle_beats_per_pair.map(|b| {
            let all = f
                .idle_wire_per_pair
                .map_or_else(String::new, |w| format!(" (all wire messages {w:.2})"));
            format!("{b:.2}{all}")
        }),
        Status::at_most(f.idle_beats_per_pair, GOAL_BEATS_PER_PAIR_INTERVAL),
    ));
    g.push(failover_goal(f.failover.as_ref()));
    g.push(Goal::new(
        "restart to serving (store open, all its peers loaded)",
        format!("<= {}", fmt_duration(GOAL_RESTART)),
        f.restart.map(|r| {
            let first = f.restart_first_write.map_or_else(String::new, |w| {
                format!("first write {}; ", fmt_duration(w))
            });
            let steady = f.restart_steady.map_or_else(
                || "writes/s not back to half of (c)'s in the phase".into(),
                |s| format!("writes/s at half of (c)'s for good at {}", fmt_duration(s)),
            );
            format!("{} ({first}{steady})", fmt_duration(r))
        }),
        Status::at_most(f.restart, GOAL_RESTART),
    ));
    g.push(Goal::new(
        "bootstrap + election (every region with a leader)",
        "-".into(),
        Some(match f.election {
            Some(e) => format!(
                "{} + {} = {}",
                fmt_duration(f.bootstrap),
                fmt_duration(e),
                fmt_duration(f.bootstrap + e)
            ),
            None => format!("{} + not every region elected", fmt_duration(f.bootstrap)),
        }),
        Status::Info,
    ));
    g.push(Goal::new(
        "peak RSS through bootstrap + election (VmHWM)",
        format!("<= {}", fmt_bytes(GOAL_PEAK_RSS)),
        f.election_peak_rss.map(fmt_bytes),
        Status::at_most(f.election_peak_rss, GOAL_PEAK_RSS),
    ));
    g.push(Goal::new(
        "peak RSS of the whole run (VmHWM)",
        "-".into(),
        f.peak_rss.map(fmt_bytes),
        Status::Info,
    ));
    g
}

fn failover_goal(f: Option<&Failover>) -> Goal {
    let what = "failover: slowest new leader, in election timeouts";
    let goal = format!("<= {GOAL_FAILOVER_TIMEOUTS}");
    let Some(f) = f else {
        return Goal::new(what, goal, None, Status::Unmeasured);
    };
    let e = f.election_timeout.as_secs_f64().max(f64::MIN_POSITIVE);
    match f.max {
        Some(max) => {
            let timeouts = max.as_secs_f64() / e;
            let from_detect = f.detect.map_or_else(String::new, |d| {
                format!(
                    ", {:.2} from detection",
                    max.saturating_sub(d).as_secs_f64() / e
                )
            });
            Goal::new(
                what,
                goal,
                Some(format!(
                    "{timeouts:.2} ({} from the stop{from_detect})",
                    fmt_duration(max)
                )),
                Status::at_most(Some(timeouts), GOAL_FAILOVER_TIMEOUTS),
            )
        }
        None => Goal::new(
            what,
            goal,
            Some(format!("{} regions never got one", f.missing)),
            Status::NotMet,
        ),
    }
}

/// `cores` as a share of one core, e.g. `1.2% of one core`.
pub fn fmt_core_share(cores: f64) -> String {
    format!("{:.1}% of one core", cores * 100.0)
}

/// The goal table of a run over `regions`: one row per goal, the goal, the
/// measured value and the status in aligned columns.
pub fn goal_table(goals: &[Goal], regions: u64) -> Table {
    let width = |pick: fn(&Goal) -> &str, head: &str| {
        goals
            .iter()
            .map(|g| pick(g).chars().count())
            .chain([head.chars().count()])
            .max()
            .unwrap_or(0)
            + COLUMN_GAP
    };
    let gw = width(|g| &g.goal, HEADER[0]);
    let mw = width(|g| &g.measured, HEADER[1]);
    let scale = if regions == GOALS_REGIONS {
        String::new()
    } else {
        format!("; this run has {regions} regions, so it cannot tell whether they are met at scale")
    };
    let mut t = Table::new(format!(
        "summary: the goals of issue #10 (set for {GOALS_REGIONS} regions on 3 stores{scale})"
    ));
    t.row(
        "",
        format!("{:<gw$}{:<mw$}{}", HEADER[0], HEADER[1], HEADER[2]),
    );
    for g in goals {
        t.row(
            g.what.clone(),
            format!("{:<gw$}{:<mw$}{}", g.goal, g.measured, g.status),
        );
    }
    t
}

/// The table that opens a run: the command line as run (`argv`, the
/// program first) and the same with every option explicit.
pub fn command_table(argv: &[String], opts: &LoadOptions) -> Table {
    let program = argv.first().map_or("flotilla", String::as_str);
    let mut t = Table::new("command line (reproduces this run)");
    t.row("as run", shell_join(argv));
    t.row(
        "every option explicit",
        shell_join(std::iter::once(program.to_string()).chain(opts.to_args())),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn findings() -> Findings {
        Findings {
            peers: 300_000,
            bootstrap: Duration::from_secs(4),
            election: Some(Duration::from_millis(12_800)),
            election_peak_rss: Some(GIB),
            idle_rss: Some(GIB),
            idle_hibernated: 300_000,
            idle_cores: Some(0.05),
            idle_beats_per_pair: Some(0.67),
            idle_wire_per_pair: Some(0.67),
            failover: Some(Failover {
                election_timeout: Duration::from_secs(1),
                max: Some(Duration::from_millis(2_500)),
                detect: Some(Duration::from_millis(1_100)),
                missing: 0,
            }),
            restart: Some(Duration::from_millis(3_000)),
            restart_first_write: Some(Duration::from_millis(3_100)),
            restart_steady: Some(Duration::from_millis(3_500)),
            peak_rss: Some(3 * GIB),
        }
    }

    fn status_of(goals: &[Goal], what: &str) -> Status {
        goals
            .iter()
            .find(|g| g.what.starts_with(what))
            .map(|g| g.status)
            .expect("goal present")
    }

    #[test]
    fn goals_are_judged_against_their_limits() {
        let g = goals(&findings());
        assert_eq!(status_of(&g, "idle RSS, all"), Status::Met);
        assert_eq!(status_of(&g, "idle RSS per"), Status::Met, "3.50 KiB");
        assert_eq!(status_of(&g, "idle CPU"), Status::NotMet, "5% > 2%");
        assert_eq!(status_of(&g, "idle heartbeat"), Status::Met);
        assert_eq!(status_of(&g, "failover"), Status::NotMet, "2.5 > 2");
        assert_eq!(status_of(&g, "restart"), Status::Met);
        let restart = g.iter().find(|g| g.what.starts_with("restart"));
        assert_eq!(
            restart.map(|g| g.measured.as_str()),
            Some("3.00 s (first write 3.10 s; writes/s at half of (c)'s for good at 3.50 s)")
        );
        assert_eq!(status_of(&g, "bootstrap"), Status::Info);
        assert_eq!(status_of(&g, "peak RSS through"), Status::Met);
        let failover = g.iter().find(|g| g.what.starts_with("failover"));
        assert_eq!(
            failover.map(|g| g.measured.as_str()),
            Some("2.50 (2.50 s from the stop, 1.40 from detection)")
        );
    }

    #[test]
    fn what_was_not_measured_is_not_met() {
        let f = Findings {
            peers: 3,
            idle_hibernated: 1,
            idle_rss: Some(3 * KIB),
            failover: Some(Failover {
                election_timeout: Duration::from_secs(1),
                max: None,
                detect: None,
                missing: 7,
            }),
            ..Findings::default()
        };
        let g = goals(&f);
        assert_eq!(status_of(&g, "idle CPU"), Status::Unmeasured);
        assert_eq!(status_of(&g, "restart"), Status::Unmeasured);
        assert_eq!(status_of(&g, "failover"), Status::NotMet);
        let per_peer = g.iter().find(|g| g.what.starts_with("idle RSS per"));
        assert_eq!(
            per_peer.map(|g| g.measured.as_str()),
            Some("1.00 KiB (1 of 3 peers hibernated)")
        );
    }

    #[test]
    fn goal_table_aligns_its_columns() {
        let g = vec![
            Goal::new("a", "<= 2".into(), Some("0.67".into()), Status::Met),
            Goal::new("bb", "-".into(), Some("12.00 s".into()), Status::Info),
            Goal::new("c", "<= 5.00 s".into(), None, Status::Unmeasured),
        ];
        let text = goal_table(&g, GOALS_REGIONS).to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "summary: the goals of issue #10 (set for 100000 regions on 3 stores)"
        );
        let lines = &lines[2..];
        assert_eq!(
            lines,
            [
                "       goal        measured   status",
                "  a    <= 2        0.67       met",
                "  bb   -           12.00 s    -",
                "  c    <= 5.00 s   -          not measured",
            ]
        );
    }

    #[test]
    fn a_small_run_says_it_cannot_judge_the_goals() {
        let title = goal_table(&[], 1000).to_string();
        assert!(title.contains("this run has 1000 regions"), "{title}");
    }

    #[test]
    fn the_command_table_has_the_run_and_every_option() {
        let argv: Vec<String> = ["target/release/flotilla", "load", "--regions", "1000"]
            .map(String::from)
            .to_vec();
        let opts = LoadOptions {
            regions: 1000,
            base_tick_ms: 100,
            clients: 32,
            phase_duration: Duration::from_secs(3),
            write_ratio: 1.0,
            value_size: 128,
            sync_log: true,
            out: None,
            seed: 42,
            split_size_kib: None,
            split_storm: 0,
            merge_storm: 0,
            remote: None,
            kill_cmd: None,
            restart_cmd: None,
        };
        let t = command_table(&argv, &opts);
        assert_eq!(t.rows()[0].1, "target/release/flotilla load --regions 1000");
        assert_eq!(
            t.rows()[1].1,
            "target/release/flotilla load --regions 1000 --base-tick-ms 100 --clients 32 \
             --phase-duration 3s --write-ratio 1 --value-size 128 --sync-log true --seed 42"
        );
    }
}
