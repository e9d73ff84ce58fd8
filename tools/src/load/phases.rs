//! The phases of a load run, on one [`Run`] that owns the cluster and the
//! meters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flotilla_engine::{Engine, EngineOptions};
use flotilla_raftstore::store::{Client, ClientConfig, Cluster, Config, store_dir};
use indicatif::{ProgressBar, ProgressStyle};
use slog::Logger;

use super::arrivals::Arrivals;
use super::chart::draw_chart;
use super::series::{Reading, Sampler, write_csv_file};
use super::stats::{Counters, CpuMeter, Gauges, Meter, leaders_of, rss_bytes};
use super::table::{Table, fmt_bytes, fmt_duration, fmt_rate};
use super::workload::{ClientPool, KeyPattern, Live, PhaseLoad, Workload};
use super::{CSV_NAME, LOAD_STORES, LoadError, LoadOptions, LoadOutput, PNG_NAME, STORE_PAIRS};

/// How often waits look at the cluster (leader counts, the series).
const POLL: Duration = Duration::from_millis(10);
/// How often spinners redraw.
const SPINNER_TICK: Duration = Duration::from_millis(100);
/// Least time the election phase waits for every region to get a leader.
const ELECTION_WAIT_MIN: Duration = Duration::from_secs(120);
/// ... or this many election timeouts, if longer.
const ELECTION_WAIT_TIMEOUTS: u32 = 60;
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

/// The phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// (a) every region elects a leader.
    Election,
    /// (b) no client traffic.
    Idle,
    /// (c) writes spread over every region.
    Uniform,
    /// (d) writes mostly on a few regions.
    HotSpot,
    /// (e) the store leading the most regions dies.
    Kill,
    /// (f) it comes back.
    Restart,
}

impl Phase {
    /// Its name in the CSV and the chart.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Election => "election",
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
            Phase::Idle => "(b) idle: the cost of regions doing nothing",
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
        })
    }

    /// Every phase in order, each table handed to `on_table`.
    ///
    /// # Errors
    /// The first phase that fails.
    pub(super) fn all_phases(
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
        self.close_row();
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
        thread::sleep(POLL);
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

    /// Waits out the phase duration from `started`, showing `msg()`.
    fn wait_phase(&mut self, phase: Phase, started: Instant, msg: impl Fn(&Self) -> String) {
        let bar = self.timed_bar(phase);
        while started.elapsed() < self.opts.phase_duration {
            self.pause();
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
            arrival_quantiles(&arrivals),
        );
        t.row("election timeout", self.describe_election_timeout());
        t.row("RSS", rss_row(self.peers()));
        t
    }

    /// (b): no traffic for the phase duration.
    fn idle(&mut self) -> Table {
        self.enter(Phase::Idle);
        let before = self.meter.observe(&self.cluster);
        let cpu = CpuMeter::start();
        let started = Instant::now();
        self.wait_phase(Phase::Idle, started, |_| String::new());
        let span = started.elapsed();
        let d = self.meter.observe(&self.cluster).since(&before);
        let g = Gauges::of(&self.cluster);
        let mut t = Table::new(Phase::Idle.title());
        t.row("duration", fmt_duration(span));
        t.row("RSS", rss_row(self.peers()));
        t.row("CPU cores used", fmt_cores(cpu.cores_used()));
        wire_rows(&mut t, &d, span);
        t.row(
            "hibernated peers (sum over stores)",
            g.hibernated_peers.to_string(),
        );
        t.row("awake peers (sum over stores)", g.awake_peers.to_string());
        t.row("hibernations during the phase", d.hibernations.to_string());
        t
    }

    /// (c) and (d): clients send `pattern` traffic for the phase duration.
    fn writes(&mut self, phase: Phase, pattern: KeyPattern) -> Result<Table, LoadError> {
        self.enter(phase);
        let before = self.meter.observe(&self.cluster);
        let cpu = CpuMeter::start();
        let started = Instant::now();
        let writes_before = self.live.writes();
        let pool = ClientPool::start(
            &self.client,
            &self.live,
            &self.workload(),
            pattern,
            phase as u64,
        )?;
        self.wait_phase(phase, started, |run| {
            let done = run.live.writes() - writes_before;
            format!("{:.0} writes/s", Counters::rate(done, started.elapsed()))
        });
        let load = self.drain(pool)?;
        let span = started.elapsed();
        let d = self.meter.observe(&self.cluster).since(&before);
        let g = Gauges::of(&self.cluster);
        let mut t = Table::new(phase.title());
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
    /// leaders from the leader counts of the others. No client traffic
    /// (nothing wakes the regions but the loss of their leader's store).
    /// Returns the table and the store stopped.
    fn kill(&mut self) -> (Table, u64) {
        self.enter(Phase::Kill);
        let before = self.meter.observe(&self.cluster);
        let g_before = Gauges::of(&self.cluster);
        let (victim, led) = self.busiest_leader();
        let survivors_base = g_before.leaders.saturating_sub(led);
        let e = self.election_timeout();
        let deadline = e.saturating_mul(FAILOVER_DEADLINE_TIMEOUTS);
        let wait = FAILOVER_WAIT_MIN.max(e.saturating_mul(FAILOVER_WAIT_TIMEOUTS));
        let mut arrivals = Arrivals::new(survivors_base, led);
        let bar = spinner("{spinner} kill: {msg} ({elapsed})");
        let started = Instant::now();
        self.cluster.stop_store(victim);
        let stop_took = started.elapsed();
        loop {
            let at = started.elapsed();
            arrivals.observe(self.cluster.leader_count(), at);
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
        let d = self.meter.observe(&self.cluster).since(&before);
        let g_after = Gauges::of(&self.cluster);
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
        let all = match arrivals.last() {
            Some(last) if arrivals.complete() => fmt_duration(last),
            None if arrivals.complete() => "none to elect".into(),
            _ => format!(
                "not within {}: {} still without",
                fmt_duration(started.elapsed()),
                led - arrivals.arrived()
            ),
        };
        t.row("all its regions with a new leader after", all);
        t.row(
            "new leader after p50 / p99 / max",
            arrival_quantiles(&arrivals),
        );
        t.row(
            format!(
                "regions without a leader after {FAILOVER_DEADLINE_TIMEOUTS} election timeouts"
            ),
            arrivals.missing_at(deadline).to_string(),
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
            "measured by",
            format!(
                "the others' leader counts, every {} ms, from the stop",
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
        let loaded = self.cluster.store(victim).map_or(0, |s| s.regions().len());
        bar.finish_and_clear();
        self.tick();

        let before = self.meter.observe(&self.cluster);
        let traffic_started = Instant::now();
        let pool = ClientPool::start(
            &self.client,
            &self.live,
            &self.workload(),
            KeyPattern::Uniform,
            Phase::Restart as u64,
        )?;
        let mut all_leaders: Option<Duration> = None;
        let bar = self.timed_bar(Phase::Restart);
        while traffic_started.elapsed() < self.opts.phase_duration {
            if all_leaders.is_none() && self.cluster.leader_count() >= self.opts.regions {
                all_leaders = Some(started.elapsed());
            }
            self.pause();
            bar.set_position(traffic_started.elapsed().as_secs());
        }
        bar.finish_and_clear();
        let load = self.drain(pool)?;
        let first_write = load.first_write.map(|at| at.duration_since(started));
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
        t.row("fsyncs/s", fmt_rate(Counters::rate(d.synced_writes, span)));
        if let Some(s) = self.cluster.store(victim) {
            let m = s.metrics();
            let get = |g: &std::sync::atomic::AtomicI64| {
                g.load(std::sync::atomic::Ordering::Relaxed).max(0)
            };
            t.row(
                "restarted store: leaders / awake / hibernated peers",
                format!(
                    "{} / {} / {}",
                    get(&m.leaders),
                    get(&m.awake_peers),
                    get(&m.hibernated_peers)
                ),
            );
        }
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

/// The rows of what the clients did.
fn load_rows(t: &mut Table, load: &PhaseLoad) {
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
        "  raft / lone liveness messages/s, all stores",
        format!(
            "{} / {}",
            fmt_rate(Counters::rate(d.raft_messages, span)),
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

fn arrival_quantiles(a: &Arrivals) -> String {
    let q = |q: f64| a.quantile(q).map_or_else(|| "-".into(), fmt_duration);
    let max = a.last().map_or_else(|| "-".into(), fmt_duration);
    format!("{} / {} / {max}", q(0.5), q(0.99))
}
