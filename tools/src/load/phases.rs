//! The phases of a load run, on one [`Run`] that owns the cluster and the
//! meters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flotilla_engine::{Engine, EngineMemory, EngineOptions};
use flotilla_raftstore::store::{Client, ClientConfig, Cluster, Config, store_dir};
use indicatif::{ProgressBar, ProgressStyle};
use slog::Logger;

use crate::storm::{KeyFn, Storm};

use super::arrivals::Arrivals;
use super::chart::draw_chart;
use super::series::{Reading, SAMPLE_EVERY, Sampler, SeriesRow, write_csv_file};
use super::stats::{
    CPU_TICK, Counters, CpuMeter, Gauges, Meter, leaders_of, max_poll_round_us, peak_rss_bytes,
    rss_bytes, support_withdrawals,
};
use super::summary::{Failover, Findings, fmt_core_share, goal_table, goals};
use super::table::{Table, fmt_bytes, fmt_duration, fmt_micros, fmt_rate};
use super::workload::{
    ClientPool, KEYS_PER_REGION, KeyPattern, Live, PhaseLoad, Workload, key_for,
};
use super::{CSV_NAME, LOAD_STORES, LoadError, LoadOptions, LoadOutput, PNG_NAME, STORE_PAIRS};

/// How often waits look at the cluster (leader counts, the series).
const POLL: Duration = Duration::from_millis(10);
/// How often the idle measurement looks (seldom: its own CPU counts).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often spinners redraw.
const SPINNER_TICK: Duration = Duration::from_millis(100);
/// Least time the election phase waits for every region to get a leader.
const ELECTION_WAIT_MIN: Duration = Duration::from_secs(120);
/// ... or this many election timeouts, if longer.
const ELECTION_WAIT_TIMEOUTS: u32 = 60;
/// Least time the idle phase waits for every peer to hibernate before it
/// measures.
const HIBERNATE_WAIT_MIN: Duration = Duration::from_secs(30);
/// ... or this many election timeouts, if longer.
const HIBERNATE_WAIT_TIMEOUTS: u32 = 30;
/// The restart phase reports when this share of the peers hibernate again.
const REHIBERNATED_SHARE: f64 = 0.95;
/// Least time the kill phase waits for the dead store's regions.
const FAILOVER_WAIT_MIN: Duration = Duration::from_secs(30);
/// ... or this many election timeouts, if longer.
const FAILOVER_WAIT_TIMEOUTS: u32 = 20;
/// The kill phase counts regions still without a leader after this many
/// election timeouts.
const FAILOVER_DEADLINE_TIMEOUTS: u32 = 2;
const BAR_WIDTH: &str = "30";
/// A phase change closes the current series row only if it spans this
/// much (shorter rows would be noise).
const MIN_ROW_SPAN: Duration = Duration::from_millis(200);

/// The phases, in order. The values pick the random streams of a phase's
/// clients: they stay fixed, so that a phase added does not change the
/// others' workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// (a) every region elects a leader.
    Election = 0,
    /// (b), first: no client traffic until every peer hibernates.
    Hibernate = 6,
    /// (b) no client traffic, every peer hibernated: the steady idle state.
    Idle = 1,
    /// (c) writes spread over every region.
    Uniform = 2,
    /// (d) writes mostly on a few regions.
    HotSpot = 3,
    /// (e) the store leading the most regions dies.
    Kill = 4,
    /// (f) it comes back.
    Restart = 5,
}

impl Phase {
    /// Its name in the CSV and the chart.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Election => "election",
            Phase::Hibernate => "hibernate",
            Phase::Idle => "idle",
            Phase::Uniform => "uniform",
            Phase::HotSpot => "hotspot",
            Phase::Kill => "kill",
            Phase::Restart => "restart",
        }
    }

    /// The title of its table.
    pub fn title(self) -> &'static str {
        match self {
            Phase::Election => "(a) election: time until every region has a leader",
            Phase::Hibernate | Phase::Idle => {
                "(b) idle: every peer hibernated, the cost of regions doing nothing"
            }
            Phase::Uniform => "(c) uniform writes",
            Phase::HotSpot => "(d) hot-spot writes",
            Phase::Kill => "(e) kill the store that leads the most regions",
            Phase::Restart => "(f) restart it",
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn spinner(template: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(style(template));
    bar.enable_steady_tick(SPINNER_TICK);
    bar
}

/// Bootstraps the cluster (writes every region on every store, opens the
/// stores, loads the peers) under a spinner. Returns it and how long it
/// took.
///
/// # Errors
/// [`LoadError::Store`] if the cluster cannot start.
pub(super) fn bootstrap(
    opts: &LoadOptions,
    cfg: &Config,
    dir: &Path,
    logger: &Logger,
) -> Result<(Cluster, Duration), LoadError> {
    let bar = spinner("{spinner} bootstrapping {msg} ({elapsed})");
    bar.set_message(format!("{} regions on {LOAD_STORES} stores", opts.regions));
    let started = Instant::now();
    let cluster = Cluster::bootstrap(dir, LOAD_STORES, opts.regions, cfg.clone(), logger);
    bar.finish_and_clear();
    let cluster = cluster.map_err(|source| LoadError::Store {
        what: "bootstrap".into(),
        source,
    })?;
    Ok((cluster, started.elapsed()))
}

/// How the wait for every peer to hibernate ended.
#[derive(Debug, Clone, Copy)]
struct Settled {
    /// When every peer was asleep, from the start of the wait.
    took: Option<Duration>,
    /// How long the wait lasted.
    waited: Duration,
    /// Seconds from the end of the bootstrap to the end of the wait.
    since_bootstrap: f64,
    /// The gauges at its end.
    gauges: Gauges,
}

/// A load run in progress: the cluster, the client, the meters.
pub(super) struct Run<'a> {
    opts: &'a LoadOptions,
    cfg: Config,
    data_dir: PathBuf,
    cluster: Cluster,
    client: Arc<Client>,
    live: Arc<Live>,
    meter: Meter,
    sampler: Sampler,
    phase: Phase,
    findings: Findings,
    /// Writes/s of the uniform phase (c): the rate the restart phase is
    /// measured back to.
    uniform_writes_per_s: Option<f64>,
}

impl<'a> Run<'a> {
    /// Starts measuring a freshly bootstrapped cluster.
    ///
    /// # Errors
    /// As [`Live::new`].
    pub(super) fn new(
        opts: &'a LoadOptions,
        cfg: Config,
        data_dir: &Path,
        cluster: Cluster,
    ) -> Result<Run<'a>, LoadError> {
        let client = Arc::new(Client::new(
            cluster.stores(),
            cluster.regions(),
            ClientConfig::default(),
        ));
        let live = Arc::new(Live::new(opts.clients)?);
        let mut meter = Meter::default();
        let sampler = Sampler::new(&meter.observe(&cluster), live.writes());
        Ok(Run {
            opts,
            cfg,
            data_dir: data_dir.to_path_buf(),
            cluster,
            client,
            live,
            meter,
            sampler,
            phase: Phase::Election,
            uniform_writes_per_s: None,
            findings: Findings {
                peers: opts.regions * LOAD_STORES as u64,
                ..Findings::default()
            },
        })
    }

    /// Every phase in order, each table handed to `on_table`, then the
    /// goal table (with what was measured, even after a failed phase).
    ///
    /// # Errors
    /// The first phase that fails.
    pub(super) fn all_phases(
        &mut self,
        bootstrap_took: Duration,
        on_table: &mut dyn FnMut(&Table),
    ) -> Result<(), LoadError> {
        let result = self.phases(bootstrap_took, on_table);
        self.close_row();
        self.findings.peak_rss = peak_rss_bytes();
        on_table(&goal_table(&goals(&self.findings), self.opts.regions));
        result
    }

    fn phases(
        &mut self,
        bootstrap_took: Duration,
        on_table: &mut dyn FnMut(&Table),
    ) -> Result<(), LoadError> {
        on_table(&self.election(bootstrap_took));
        on_table(&self.idle());
        on_table(&self.writes(Phase::Uniform, KeyPattern::Uniform)?);
        let hot = KeyPattern::hot_spot(self.opts.regions, self.opts.seed);
        on_table(&self.writes(Phase::HotSpot, hot)?);
        let (table, victim) = self.kill();
        on_table(&table);
        on_table(&self.restart(victim)?);
        Ok(())
    }

    /// Writes the CSV and the PNG into `dir`.
    ///
    /// # Errors
    /// [`LoadError::Io`] or [`LoadError::Chart`].
    pub(super) fn write_files(&self, dir: &Path) -> Result<LoadOutput, LoadError> {
        let csv = dir.join(CSV_NAME);
        write_csv_file(self.sampler.rows(), &csv)
            .map_err(LoadError::io(format!("write {}", csv.display())))?;
        let png = dir.join(PNG_NAME);
        let png_has_text = draw_chart(self.sampler.rows(), self.sampler.phase_starts(), &png)?;
        Ok(LoadOutput {
            dir: dir.to_path_buf(),
            csv,
            png,
            png_has_text,
        })
    }

    /// Stops every store.
    pub(super) fn shutdown(self) {
        self.cluster.shutdown();
    }

    fn election_timeout(&self) -> Duration {
        let ticks = u32::try_from(self.cfg.election_ticks).unwrap_or(u32::MAX);
        self.cfg.base_tick().saturating_mul(ticks)
    }

    /// The heartbeat interval: `heartbeat_ticks` base ticks.
    fn heartbeat_interval(&self) -> Duration {
        let ticks = u32::try_from(self.cfg.heartbeat_ticks).unwrap_or(u32::MAX);
        self.cfg.base_tick().saturating_mul(ticks)
    }

    fn peers(&self) -> u64 {
        self.opts.regions * LOAD_STORES as u64
    }

    fn workload(&self) -> Workload {
        Workload {
            regions: self.opts.regions,
            clients: self.opts.clients,
            write_ratio: self.opts.write_ratio,
            value_size: self.opts.value_size,
            seed: self.opts.seed,
        }
    }

    /// Starts `phase`: closes the series row of the phase before and marks
    /// the start. (A row younger than [`MIN_ROW_SPAN`] stays open: those
    /// few milliseconds of the phase before count in the next phase's
    /// first row.)
    fn enter(&mut self, phase: Phase) {
        self.close_row();
        self.phase = phase;
        self.sampler.mark_phase(phase.name());
    }

    /// Takes a row now unless the last one is very recent.
    fn close_row(&mut self) {
        if self.sampler.since_last() >= MIN_ROW_SPAN {
            self.sample();
        }
    }

    /// Takes a row of the series if one is due.
    fn tick(&mut self) {
        if self.sampler.due() {
            self.sample();
        }
    }

    fn sample(&mut self) {
        let reading = Reading {
            phase: self.phase.name(),
            counters: self.meter.observe(&self.cluster),
            gauges: Gauges::of(&self.cluster),
            writes: self.live.writes(),
            write_p99_us: self.live.take_interval_p99(),
            rss_bytes: rss_bytes(),
        };
        self.sampler.sample(&reading);
    }

    /// Sleeps one poll interval, then ticks.
    fn pause(&mut self) {
        self.pause_for(POLL);
    }

    /// Sleeps `d`, then ticks.
    fn pause_for(&mut self, d: Duration) {
        thread::sleep(d);
        self.tick();
    }

    /// A bar counting the seconds of a timed phase.
    fn timed_bar(&self, phase: Phase) -> ProgressBar {
        let bar = ProgressBar::new(self.opts.phase_duration.as_secs());
        bar.set_style(style(&format!(
            "{} {{bar:{BAR_WIDTH}}} {{pos}}/{{len}}s {{msg}}",
            phase.name()
        )));
        bar
    }

    /// Waits out the phase duration from `started`, looking every `poll`,
    /// showing `msg()`.
    fn wait_phase(
        &mut self,
        phase: Phase,
        started: Instant,
        poll: Duration,
        msg: impl Fn(&Self) -> String,
    ) {
        let bar = self.timed_bar(phase);
        while let Some(left) = self.opts.phase_duration.checked_sub(started.elapsed()) {
            if left.is_zero() {
                break;
            }
            self.pause_for(poll.min(left));
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(msg(self));
        }
        bar.finish_and_clear();
    }

    /// Stops `pool`, sampling the series while its operations in flight
    /// finish (they may take up to the client's operation timeout).
    fn drain(&mut self, pool: ClientPool) -> Result<PhaseLoad, LoadError> {
        pool.signal_stop();
        let bar = spinner("{spinner} {msg} ({elapsed})");
        bar.set_message(format!(
            "{}: waiting for the operations in flight",
            self.phase.name()
        ));
        while !pool.drained() {
            self.pause();
        }
        bar.finish_and_clear();
        pool.stop()
    }

    /// (a): waits until every region has a leader.
    fn election(&mut self, bootstrap_took: Duration) -> Table {
        self.enter(Phase::Election);
        let regions = self.opts.regions;
        let bar = ProgressBar::new(regions);
        bar.set_style(style(&format!(
            "electing {{bar:{BAR_WIDTH}}} {{pos}}/{{len}} regions with a leader ({{elapsed}})"
        )));
        let wait = ELECTION_WAIT_MIN.max(
            self.election_timeout()
                .saturating_mul(ELECTION_WAIT_TIMEOUTS),
        );
        let started = Instant::now();
        let mut arrivals = Arrivals::new(0, regions);
        loop {
            let leaders = self.cluster.leader_count();
            arrivals.observe(leaders, started.elapsed());
            bar.set_position(leaders.min(regions));
            if arrivals.complete() || started.elapsed() >= wait {
                break;
            }
            self.pause();
        }
        bar.finish_and_clear();
        let peak_rss = peak_rss_bytes();
        self.findings.bootstrap = bootstrap_took;
        self.findings.election = arrivals.last().filter(|_| arrivals.complete());
        self.findings.election_peak_rss = peak_rss;
        let mut t = Table::new(Phase::Election.title());
        t.row(
            "cluster",
            format!(
                "{LOAD_STORES} stores x {regions} regions = {} peers",
                self.peers()
            ),
        );
        t.row(
            "bootstrap (write regions, open stores, load peers)",
            fmt_duration(bootstrap_took),
        );
        let all = match arrivals.last() {
            Some(last) if arrivals.complete() => fmt_duration(last),
            _ => format!(
                "not within {}: {} regions without a leader",
                fmt_duration(wait),
                regions - arrivals.arrived()
            ),
        };
        t.row("every region with a leader, after bootstrap", all);
        t.row(
            "leader elected at p50 / p99 / max",
            arrival_quantiles(&arrivals, Duration::ZERO),
        );
        t.row("election timeout", self.describe_election_timeout());
        t.row("RSS", rss_row(self.peers()));
        t.row(
            "peak RSS so far (VmHWM)",
            peak_rss.map_or_else(|| "unknown".into(), fmt_bytes),
        );
        t
    }

    /// (b), first: no traffic until every peer hibernates (or
    /// [`HIBERNATE_WAIT_MIN`] / [`HIBERNATE_WAIT_TIMEOUTS`] pass), so that
    /// the idle measurement sees the steady state, not the way to it.
    fn hibernate_all(&mut self) -> Settled {
        self.enter(Phase::Hibernate);
        let peers = self.peers();
        let wait = HIBERNATE_WAIT_MIN.max(
            self.election_timeout()
                .saturating_mul(HIBERNATE_WAIT_TIMEOUTS),
        );
        let bar = ProgressBar::new(peers);
        bar.set_style(style(&format!(
            "hibernating {{bar:{BAR_WIDTH}}} {{pos}}/{{len}} peers asleep ({{elapsed}})"
        )));
        let started = Instant::now();
        let took = loop {
            let g = Gauges::of(&self.cluster);
            bar.set_position(g.hibernated_peers.min(peers));
            if g.hibernated_peers >= peers {
                break Some(started.elapsed());
            }
            if started.elapsed() >= wait {
                break None;
            }
            self.pause();
        };
        bar.finish_and_clear();
        Settled {
            took,
            waited: started.elapsed(),
            since_bootstrap: self.sampler.now_s(),
            gauges: Gauges::of(&self.cluster),
        }
    }

    /// (b): waits until every peer hibernates, then measures the idle
    /// cluster (no traffic) for the phase duration.
    fn idle(&mut self) -> Table {
        let settled = self.hibernate_all();
        self.enter(Phase::Idle);
        let before = self.meter.observe(&self.cluster);
        let cpu = CpuMeter::start();
        let started = Instant::now();
        self.wait_phase(Phase::Idle, started, IDLE_POLL, |_| String::new());
        let cores = cpu.cores_used();
        let span = started.elapsed();
        let rss = rss_bytes();
        let rocks = rocksdb_memory(&self.cluster);
        let d = self.meter.observe(&self.cluster).since(&before);
        let g = Gauges::of(&self.cluster);
        let hb = self.heartbeat_interval();
        let wire = per_pair_per_interval(d.wire_messages(), span, hb);
        let beats = per_pair_per_interval(d.heartbeat_batches, span, hb);
        let bare = per_pair_per_interval(d.liveness_messages, span, hb);
        let f = &mut self.findings;
        f.idle_rss = rss;
        f.idle_hibernated = g.hibernated_peers;
        f.idle_cores = cores;
        f.idle_wire_per_pair = Some(wire);
        f.idle_beats_per_pair = Some(beats);

        let peers = self.peers();
        let mut t = Table::new(Phase::Idle.title());
        t.row(
            "every peer hibernated, after the election",
            match settled.took {
                Some(took) => format!(
                    "{} ({:.2} s after the bootstrap)",
                    fmt_duration(took),
                    settled.since_bootstrap
                ),
                None => format!(
                    "not within {}: {} of {peers} peers hibernated, {} awake",
                    fmt_duration(settled.waited),
                    settled.gauges.hibernated_peers,
                    settled.gauges.awake_peers
                ),
            },
        );
        t.row("then measured for", fmt_duration(span));
        t.row(
            "of the RSS: RocksDB memtables / block cache, all stores",
            format!(
                "{} / {} (bounded by the engine options, not by the regions)",
                fmt_bytes(rocks.memtables),
                fmt_bytes(rocks.block_cache)
            ),
        );
        if let Some(rss) = rss {
            let rest = rss.saturating_sub(rocks.memtables + rocks.block_cache);
            t.row(
                "RSS without them, all and per peer",
                format!(
                    "{} ({} per peer)",
                    fmt_bytes(rest),
                    fmt_bytes(rest / peers.max(1))
                ),
            );
        }
        t.row(
            "RSS, all and per peer",
            rss.map_or_else(
                || "unknown".into(),
                |rss| {
                    format!(
                        "{} ({} per peer)",
                        fmt_bytes(rss),
                        fmt_bytes(rss / peers.max(1))
                    )
                },
            ),
        );
        t.row(
            "CPU",
            cores.map_or_else(
                || "unknown".into(),
                |c| {
                    format!(
                        "{c:.3} cores ({}; /proc counts in {} ms ticks: +/- {:.2}% over {})",
                        fmt_core_share(c),
                        CPU_TICK.as_millis(),
                        in_units_of(CPU_TICK, span) * 100.0,
                        fmt_duration(span)
                    )
                },
            ),
        );
        t.row(
            "heartbeat interval",
            format!(
                "{} ({} ticks x {} ms)",
                fmt_duration(hb),
                self.cfg.heartbeat_ticks,
                self.cfg.base_tick_ms
            ),
        );
        t.row(
            "all wire messages per store pair per heartbeat interval",
            format!(
                "{wire:.2} ({} messages, {STORE_PAIRS} ordered pairs, {:.1} intervals)",
                d.wire_messages(),
                in_units_of(span, hb)
            ),
        );
        t.row(
            "heartbeat/liveness batches per store pair per heartbeat interval",
            format!(
                "{beats:.2} ({} batches, of which {} bare liveness beats: {bare:.2} per pair per interval)",
                d.heartbeat_batches, d.liveness_messages
            ),
        );
        t.row(
            "peer ticks delivered / silent (not sent)",
            format!("{} / {}", d.peer_ticks, d.silent_ticks),
        );
        t.row(
            "hibernated / awake peers at the end",
            format!("{} / {}", g.hibernated_peers, g.awake_peers),
        );
        t.row(
            "hibernations / wakes during the measurement",
            format!("{} / {}", d.hibernations, d.wakes),
        );
        t
    }

    /// (c) and (d): clients send `pattern` traffic for the phase duration.
    fn writes(&mut self, phase: Phase, pattern: KeyPattern) -> Result<Table, LoadError> {
        self.enter(phase);
        let before = self.meter.observe(&self.cluster);
        let cpu = CpuMeter::start();
        let started = Instant::now();
        let writes_before = self.live.writes();
        // Admin storms run beside the uniform writes only.
        let storm = (phase == Phase::Uniform && self.opts.split_storm + self.opts.merge_storm > 0)
            .then(|| {
                let regions = self.opts.regions;
                let key: KeyFn = Arc::new(move |region, suffix| key_for(region, regions, suffix));
                Storm::start(
                    &self.client,
                    self.opts.split_storm,
                    self.opts.merge_storm,
                    (regions, KEYS_PER_REGION),
                    self.opts.seed,
                    &key,
                )
            });
        let pool = ClientPool::start(
            &self.client,
            &self.live,
            &self.workload(),
            pattern,
            phase as u64,
        )?;
        self.wait_phase(phase, started, POLL, |run| {
            let done = run.live.writes() - writes_before;
            format!("{:.0} writes/s", Counters::rate(done, started.elapsed()))
        });
        let load = self.drain(pool)?;
        if phase == Phase::Uniform {
            self.uniform_writes_per_s = Some(load.writes_per_s());
        }
        let storm = storm
            .map(Storm::stop)
            .transpose()
            .map_err(LoadError::Internal)?;
        let span = started.elapsed();
        let d = self.meter.observe(&self.cluster).since(&before);
        let g = Gauges::of(&self.cluster);
        let mut t = Table::new(phase.title());
        if let Some(s) = storm {
            let rows = [
                (
                    "split storm",
                    self.opts.split_storm,
                    s.splits,
                    s.split_refusals,
                    "splits",
                ),
                (
                    "merge storm",
                    self.opts.merge_storm,
                    s.merges,
                    s.merge_refusals,
                    "merges",
                ),
            ];
            for (name, threads, done, refused, what) in rows.into_iter().filter(|r| r.1 > 0) {
                t.row(
                    name,
                    format!(
                        "{threads} threads: {done} {what} ({}), {refused} refused",
                        fmt_rate(Counters::rate(done, span))
                    ),
                );
            }
        }
        t.row(
            "clients",
            format!(
                "{} threads, {}, write ratio {}, {}-byte values",
                self.opts.clients,
                pattern.describe(self.opts.regions),
                self.opts.write_ratio,
                self.opts.value_size
            ),
        );
        load_rows(&mut t, &load);
        t.row("fsyncs/s", fmt_rate(Counters::rate(d.synced_writes, span)));
        wire_rows(&mut t, &d, span);
        t.row("CPU cores used", fmt_cores(cpu.cores_used()));
        t.row(
            "hibernated / awake peers at the end",
            format!("{} / {}", g.hibernated_peers, g.awake_peers),
        );
        t.row("RSS", rss_row(self.peers()));
        Ok(t)
    }

    /// The store leading the most regions (the lowest id on a tie) and how
    /// many it leads.
    fn busiest_leader(&self) -> (u64, u64) {
        self.cluster
            .store_ids()
            .iter()
            .map(|&id| (id, leaders_of(&self.cluster, id)))
            .fold((0, 0), |best, (id, n)| {
                if n > best.1 || best.0 == 0 {
                    (id, n)
                } else {
                    best
                }
            })
    }

    /// (e): stops the busiest leader store and times its regions' new
    /// leaders from the leader counts of the others, and the detection of
    /// its loss from their support withdrawals. No client traffic (nothing
    /// wakes the regions but the loss of their leader's store). Returns the
    /// table and the store stopped.
    fn kill(&mut self) -> (Table, u64) {
        self.enter(Phase::Kill);
        let before = self.meter.observe(&self.cluster);
        let g_before = Gauges::of(&self.cluster);
        let (victim, led) = self.busiest_leader();
        let survivors_base = g_before.leaders.saturating_sub(led);
        let withdrawals_base = support_withdrawals(&self.cluster, Some(victim));
        let round_max_before = max_poll_round_us(&self.cluster, Some(victim));
        let e = self.election_timeout();
        let deadline = e.saturating_mul(FAILOVER_DEADLINE_TIMEOUTS);
        let wait = FAILOVER_WAIT_MIN.max(e.saturating_mul(FAILOVER_WAIT_TIMEOUTS));
        let mut arrivals = Arrivals::new(survivors_base, led);
        let mut detect: Option<Duration> = None;
        let bar = spinner("{spinner} kill: {msg} ({elapsed})");
        let started = Instant::now();
        self.cluster.stop_store(victim);
        let stop_took = started.elapsed();
        loop {
            let at = started.elapsed();
            arrivals.observe(self.cluster.leader_count(), at);
            if detect.is_none()
                && support_withdrawals(&self.cluster, Some(victim)) > withdrawals_base
            {
                detect = Some(at);
            }
            bar.set_message(format!(
                "store {victim} stopped; {}/{led} of its regions have a new leader",
                arrivals.arrived()
            ));
            let past_deadline = at > deadline;
            let done = arrivals.complete() && at >= self.opts.phase_duration;
            if past_deadline && (done || at >= wait.max(self.opts.phase_duration)) {
                break;
            }
            self.pause();
        }
        bar.finish_and_clear();
        let round_max_after = max_poll_round_us(&self.cluster, Some(victim));
        let d = self.meter.observe(&self.cluster).since(&before);
        let g_after = Gauges::of(&self.cluster);
        self.findings.failover = Some(Failover {
            election_timeout: e,
            max: arrivals.last().filter(|_| arrivals.complete()),
            detect,
            missing: led - arrivals.arrived(),
        });
        let mut t = Table::new(Phase::Kill.title());
        t.row(
            "store stopped",
            format!(
                "store {victim}, leader of {led} of {} regions (stop took {})",
                self.opts.regions,
                fmt_duration(stop_took)
            ),
        );
        t.row("election timeout", self.describe_election_timeout());
        t.row(
            "t_detect: first support withdrawal on the surviving stores, from the stop",
            match detect {
                // Polling starts once the stop returns: a withdrawal seen
                // at the first look may have come earlier.
                Some(at) if at <= stop_took + POLL => {
                    format!(
                        "<= {} (seen at the first look after the stop)",
                        fmt_duration(at)
                    )
                }
                Some(at) => format!(
                    "{} (support lasts {} after the last beat heard)",
                    fmt_duration(at),
                    fmt_duration(self.cfg.support_duration())
                ),
                None => "none seen".into(),
            },
        );
        let all = match arrivals.last() {
            Some(last) if arrivals.complete() => fmt_duration(last),
            None if arrivals.complete() => "none to elect".into(),
            _ => format!(
                "not within {}: {} still without",
                fmt_duration(started.elapsed()),
                led - arrivals.arrived()
            ),
        };
        t.row("all its regions with a new leader, from the stop", all);
        t.row(
            "new leader after p50 / p99 / max, from the stop",
            arrival_quantiles(&arrivals, Duration::ZERO),
        );
        t.row(
            "new leader after p50 / p99 / max, from t_detect",
            detect.map_or_else(|| "-".into(), |at| arrival_quantiles(&arrivals, at)),
        );
        if let (Some(last), true) = (arrivals.last(), arrivals.complete()) {
            t.row(
                "slowest new leader, in election timeouts",
                format!(
                    "{:.2} from the stop{}",
                    in_units_of(last, e),
                    detect.map_or_else(String::new, |at| format!(
                        ", {:.2} from t_detect",
                        in_units_of(last.saturating_sub(at), e)
                    ))
                ),
            );
        }
        t.row(
            format!(
                "regions without a leader after {FAILOVER_DEADLINE_TIMEOUTS} election timeouts"
            ),
            arrivals.missing_at(deadline).to_string(),
        );
        t.row(
            "max poll round (since start), surviving stores",
            if round_max_after > round_max_before {
                format!(
                    "{}, reached during the phase (before it: {})",
                    fmt_micros(round_max_after),
                    fmt_micros(round_max_before)
                )
            } else {
                format!(
                    "{}, from before the phase (none longer during it)",
                    fmt_micros(round_max_after)
                )
            },
        );
        t.row(
            "hibernated peers before / after (running stores)",
            format!(
                "{} / {}",
                g_before.hibernated_peers, g_after.hibernated_peers
            ),
        );
        t.row(
            "wakes on leader store down / support withdrawals",
            format!("{} / {}", d.leader_store_down_wakes, d.support_withdrawals),
        );
        t.row(
            "pre-vote / vote requests sent (each asks one voter)",
            format!("{} / {}", d.pre_vote_requests, d.vote_requests),
        );
        t.row(
            "measured by",
            format!(
                "the others' leader counts and support withdrawals, every {} ms, from the stop",
                POLL.as_millis()
            ),
        );
        (t, victim)
    }

    /// (f): restarts `victim`, then runs uniform traffic for the phase
    /// duration. Times are from the start of the restart.
    fn restart(&mut self, victim: u64) -> Result<Table, LoadError> {
        self.enter(Phase::Restart);
        let bar = spinner("{spinner} restart: {msg} ({elapsed})");
        bar.set_message(format!("opening store {victim}"));
        let started = Instant::now();
        let started_s = self.sampler.now_s();
        let path = store_dir(&self.data_dir, victim);
        let engine =
            Engine::open(&path, &EngineOptions::default()).map_err(|source| LoadError::Engine {
                what: format!("open {}", path.display()),
                source,
            })?;
        drop(engine);
        let engine_took = started.elapsed();
        let t1 = Instant::now();
        self.cluster
            .start_store(victim)
            .map_err(|source| LoadError::Store {
                what: format!("restart store {victim}"),
                source,
            })?;
        let start_took = t1.elapsed();
        self.findings.restart = Some(engine_took + start_took);
        let loaded = self
            .cluster
            .store(victim)
            .map_or(0, flotilla_raftstore::Store::region_count);
        bar.finish_and_clear();
        self.tick();

        let before = self.meter.observe(&self.cluster);
        let traffic_started = Instant::now();
        let traffic_s = self.sampler.now_s();
        let pool = ClientPool::start(
            &self.client,
            &self.live,
            &self.workload(),
            KeyPattern::Uniform,
            Phase::Restart as u64,
        )?;
        let mut all_leaders: Option<Duration> = None;
        let mut rehibernated: Option<Duration> = None;
        let rehibernate_at = rehibernation_threshold(self.peers());
        let bar = self.timed_bar(Phase::Restart);
        while traffic_started.elapsed() < self.opts.phase_duration {
            if all_leaders.is_none() && self.cluster.leader_count() >= self.opts.regions {
                all_leaders = Some(started.elapsed());
            }
            if rehibernated.is_none()
                && Gauges::of(&self.cluster).hibernated_peers >= rehibernate_at
            {
                rehibernated = Some(started.elapsed());
            }
            self.pause();
            bar.set_position(traffic_started.elapsed().as_secs());
        }
        bar.finish_and_clear();
        let load = self.drain(pool)?;
        self.close_row();
        let first_write = load.first_write.map(|at| at.duration_since(started));
        self.findings.restart_first_write = first_write;
        let seconds: Vec<&SeriesRow> = self
            .sampler
            .rows()
            .iter()
            .filter(|r| r.phase == Phase::Restart.name())
            .collect();
        let steady = self
            .uniform_writes_per_s
            .and_then(|uniform| steady_after(&seconds, uniform * STEADY_SHARE, started_s));
        self.findings.restart_steady = steady;
        let span = traffic_started.elapsed();
        let d = self.meter.observe(&self.cluster).since(&before);
        let mut t = Table::new(Phase::Restart.title());
        t.row("store restarted", format!("store {victim}"));
        t.row(
            "engine opened (RocksDB alone, then closed)",
            fmt_duration(engine_took),
        );
        t.row(
            "store opened, all peers loaded (Store::open)",
            format!(
                "{} later ({loaded} peers), {} from the start",
                fmt_duration(start_took),
                fmt_duration(engine_took + start_took)
            ),
        );
        t.row(
            "first write served, from the start",
            first_write.map_or_else(|| "none".into(), fmt_duration),
        );
        t.row(
            "every region with a leader, from the start",
            all_leaders.map_or_else(|| "not within the phase".into(), fmt_duration),
        );
        load_rows(&mut t, &load);
        // The seconds with clients running all through (the store opened
        // before they started).
        let mut rates: Vec<f64> = seconds
            .iter()
            .filter(|r| r.time_s >= traffic_s + SAMPLE_EVERY.as_secs_f64())
            .map(|r| r.writes_per_s)
            .collect();
        rates.sort_by(f64::total_cmp);
        if let (Some(worst), Some(median)) = (rates.first(), rates.get(rates.len() / 2)) {
            t.row(
                "writes/s per second with clients running: worst / median",
                format!("{} / {}", fmt_rate(*worst), fmt_rate(*median)),
            );
        }
        if let Some(uniform) = self.uniform_writes_per_s {
            t.row(
                format!(
                    "writes/s back to >= {:.0}% of phase (c)'s {} for good, from the start",
                    STEADY_SHARE * 100.0,
                    fmt_rate(uniform)
                ),
                steady.map_or_else(|| "not within the phase".into(), fmt_duration),
            );
        }
        t.row(
            "wakes: lagging store back / peer message / leader message",
            format!(
                "{} / {} / {}",
                d.lagging_store_back_wakes, d.peer_message_wakes, d.leader_message_wakes
            ),
        );
        t.row(
            "pre-vote / vote requests sent (each asks one voter)",
            format!("{} / {}", d.pre_vote_requests, d.vote_requests),
        );
        t.row("fsyncs/s", fmt_rate(Counters::rate(d.synced_writes, span)));
        let g = Gauges::of(&self.cluster);
        t.row(
            format!(
                "back to >= {:.0}% of the peers hibernated, from the start",
                REHIBERNATED_SHARE * 100.0
            ),
            rehibernated.map_or_else(
                || {
                    format!(
                        "not within the phase ({} of {} peers hibernated at the end)",
                        g.hibernated_peers,
                        self.peers()
                    )
                },
                |at| format!("after {}", fmt_duration(at)),
            ),
        );
        t.row(
            "restarted store: leaders / awake / hibernated peers",
            self.cluster.store(victim).map_or_else(
                || "not running".into(),
                |s| {
                    let v = Gauges::of_store(s.metrics());
                    format!("{} / {} / {}", v.leaders, v.awake_peers, v.hibernated_peers)
                },
            ),
        );
        Ok(t)
    }

    fn describe_election_timeout(&self) -> String {
        format!(
            "{} ({} ticks x {} ms)",
            fmt_duration(self.election_timeout()),
            self.cfg.election_ticks,
            self.cfg.base_tick_ms
        )
    }
}

/// The share of the uniform phase's writes/s a restart must be back to,
/// every second from then on, to count as serving again.
const STEADY_SHARE: f64 = 0.5;

/// When `seconds` (rows of one phase, in order) were at `floor` writes/s or
/// more for good: the start of the first row after the last one below it,
/// in seconds from `from_s` (0 if none was below). `None` if the last row
/// is below, or there are none.
fn steady_after(seconds: &[&SeriesRow], floor: f64, from_s: f64) -> Option<Duration> {
    let last = seconds.last()?;
    if last.writes_per_s < floor {
        return None;
    }
    let since = seconds
        .iter()
        .rposition(|r| r.writes_per_s < floor)
        .map_or(from_s, |i| seconds[i].time_s);
    Some(Duration::from_secs_f64((since - from_s).max(0.0)))
}

/// The rows of what the clients did.
pub(super) fn load_rows(t: &mut Table, load: &PhaseLoad) {
    t.row(
        "writes/s",
        format!(
            "{} ({} writes, {} errors)",
            fmt_rate(load.writes_per_s()),
            load.writes,
            load.errors
        ),
    );
    if load.writes > 0 {
        t.row("write latency", load.write_us.to_string());
    }
    if load.reads > 0 {
        t.row("reads/s", fmt_rate(load.reads_per_s()));
        t.row("read latency", load.read_us.to_string());
    }
}

/// The rows of wire traffic over `span`.
fn wire_rows(t: &mut Table, d: &Counters, span: Duration) {
    t.row(
        "wire messages/s per store pair",
        format!(
            "{} ({STORE_PAIRS} ordered pairs)",
            fmt_rate(Counters::rate(d.wire_messages(), span) / STORE_PAIRS as f64)
        ),
    );
    t.row(
        "  of which heartbeat batches / bare liveness beats, /s all stores",
        format!(
            "{} / {}",
            fmt_rate(Counters::rate(d.heartbeat_batches, span)),
            fmt_rate(Counters::rate(d.liveness_messages, span))
        ),
    );
}

fn rss_row(peers: u64) -> String {
    match rss_bytes() {
        Some(rss) => format!(
            "{} ({} per peer)",
            fmt_bytes(rss),
            fmt_bytes(rss / peers.max(1))
        ),
        None => "unknown".into(),
    }
}

fn fmt_cores(cores: Option<f64>) -> String {
    cores.map_or_else(|| "unknown".into(), |c| format!("{c:.2}"))
}

/// p50 / p99 / max of the arrival times, each less `from`.
pub(super) fn arrival_quantiles(a: &Arrivals, from: Duration) -> String {
    let show = |d: Option<Duration>| {
        d.map_or_else(|| "-".into(), |d| fmt_duration(d.saturating_sub(from)))
    };
    format!(
        "{} / {} / {}",
        show(a.quantile(0.5)),
        show(a.quantile(0.99)),
        show(a.last())
    )
}

/// Hibernated peers that make [`REHIBERNATED_SHARE`] of `peers`.
fn rehibernation_threshold(peers: u64) -> u64 {
    (peers as f64 * REHIBERNATED_SHARE).ceil() as u64
}

/// `d` in units of `unit`.
fn in_units_of(d: Duration, unit: Duration) -> f64 {
    d.as_secs_f64() / unit.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// `count` messages over `span`, per ordered store pair per heartbeat
/// `interval`.
fn per_pair_per_interval(count: u64, span: Duration, interval: Duration) -> f64 {
    count as f64 / STORE_PAIRS as f64 / in_units_of(span, interval).max(f64::MIN_POSITIVE)
}

/// RocksDB's memtables and block caches, summed over the running stores.
fn rocksdb_memory(cluster: &Cluster) -> EngineMemory {
    let mut sum = EngineMemory::default();
    for s in cluster
        .store_ids()
        .iter()
        .filter_map(|&id| cluster.store(id))
    {
        if let Ok(m) = s.engine().memory_usage() {
            sum.memtables += m.memtables;
            sum.block_cache += m.block_cache;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn messages_per_pair_per_interval() {
        // 6 ordered pairs, 10 s of 200 ms intervals: 50 intervals.
        assert!((per_pair_per_interval(600, ms(10_000), ms(200)) - 2.0).abs() < 1e-9);
        assert!((per_pair_per_interval(0, ms(10_000), ms(200))).abs() < 1e-9);
        assert!(per_pair_per_interval(1, Duration::ZERO, ms(200)).is_finite());
        assert!((in_units_of(ms(2_500), ms(1_000)) - 2.5).abs() < 1e-9);
    }

    fn second(time_s: f64, writes_per_s: f64) -> SeriesRow {
        SeriesRow {
            time_s,
            phase: "restart",
            writes_per_s,
            write_p99_ms: None,
            wire_msgs_per_s: 0.0,
            awake_regions: 0,
            hibernated_regions: 0,
            rss_bytes: 0,
        }
    }

    /// A restart is back to serving from the end of its last second below
    /// the floor, not from its first good second.
    #[test]
    fn steady_serving_starts_after_the_last_slow_second() {
        let rows = [
            second(11.0, 900.0),
            second(12.0, 10.0),
            second(13.0, 800.0),
            second(14.0, 20.0),
            second(15.0, 700.0),
            second(16.0, 900.0),
        ];
        let refs: Vec<&SeriesRow> = rows.iter().collect();
        assert_eq!(steady_after(&refs, 500.0, 10.0), Some(ms(4_000)));
        assert_eq!(steady_after(&refs, 5.0, 10.0), Some(Duration::ZERO));
        assert_eq!(steady_after(&refs, 800.0, 10.0), Some(ms(5_000)));
        assert_eq!(
            steady_after(&refs, 950.0, 10.0),
            None,
            "the last second is below"
        );
        assert_eq!(steady_after(&[], 1.0, 0.0), None);
    }

    #[test]
    fn rehibernation_needs_95_percent() {
        assert_eq!(rehibernation_threshold(300_000), 285_000);
        assert_eq!(rehibernation_threshold(3), 3);
        assert_eq!(rehibernation_threshold(0), 0);
    }

    #[test]
    fn arrival_times_from_a_later_origin() {
        let mut a = Arrivals::new(0, 4);
        a.observe(2, ms(1_200));
        a.observe(4, ms(2_000));
        assert_eq!(
            arrival_quantiles(&a, Duration::ZERO),
            "1.20 s / 2.00 s / 2.00 s"
        );
        assert_eq!(
            arrival_quantiles(&a, ms(1_000)),
            "200.0 ms / 1.00 s / 1.00 s"
        );
        assert_eq!(arrival_quantiles(&Arrivals::new(0, 1), ms(5)), "- / - / -");
    }

    #[test]
    fn phase_streams_stay_fixed() {
        assert_eq!(Phase::Uniform as u64, 2);
        assert_eq!(Phase::HotSpot as u64, 3);
        assert_eq!(Phase::Restart as u64, 5);
        assert_eq!(Phase::Hibernate.title(), Phase::Idle.title());
    }
}
