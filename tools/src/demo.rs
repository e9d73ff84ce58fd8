//! The embedded demo: 3 stores in one process on RocksDB in a temp
//! directory, a mixed read/write workload from many client threads for a
//! bounded time, and a report of what it measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use flotilla_engine::{Cf, keys};
use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::store::{ClientConfig, Cluster, Config, MESSAGE_TYPES, WAKE_REASONS};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::storm::{KeyFn, Storm};

/// Stores in the demo cluster.
pub const DEMO_STORES: usize = 3;
/// Bytes of each written value.
pub const VALUE_BYTES: usize = 128;
/// Highest latency the histograms record (µs); slower ops are clamped.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant digits the histograms keep.
const HISTOGRAM_DIGITS: u8 = 3;
/// Leader ticks between split checks when the demo splits regions (1 s at
/// the default tick).
const SPLIT_CHECK_TICKS_DEMO: usize = 10;
/// Keys per region the workload draws from (suffix range).
const KEYS_PER_REGION: u64 = 64;

/// What the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Regions bootstrapped, pre-split evenly.
    pub regions: u64,
    /// Client threads.
    pub clients: usize,
    /// How long the workload runs.
    pub duration: Duration,
    /// Fraction of operations that are writes (0.0 to 1.0).
    pub write_ratio: f64,
    /// Seed of the workload's key choice.
    pub seed: u64,
    /// Store clock base tick (ms).
    pub base_tick_ms: u64,
    /// Whether leaders compact their raft logs (on by default; off shows
    /// how the log grows without it).
    pub log_gc: bool,
    /// Split regions past this many bytes (the split checker runs every
    /// second); `None`: the store's default (96 MiB, which the demo's
    /// regions never reach).
    pub split_size: Option<u64>,
    /// Run a split storm beside the workload: this many threads each
    /// split the region of a random key at that key, one split after
    /// another (0: none).
    pub split_storm: usize,
    /// Run a merge storm beside the workload: this many threads each
    /// merge the region of a random key with its right neighbour, one
    /// merge after another (0: none).
    pub merge_storm: usize,
    /// Idle ticks after which a leader hibernates its region (0: never
    /// hibernate); `None`: the store's default.
    pub hibernate_idle_ticks: Option<usize>,
    /// Let the raft pollers apply what their rounds commit when the
    /// region's apply delegate is idle (`Config::apply_inline`, on by
    /// default); `false` sends every entry through the apply pool.
    pub apply_inline: bool,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Operations completed (writes + reads).
    pub ops: u64,
    /// Writes completed.
    pub writes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Wall time of the workload.
    pub elapsed: Duration,
    /// Write latency percentiles p50/p99/p999 (µs).
    pub write_us: [u64; 3],
    /// Read latency percentiles p50/p99/p999 (µs).
    pub read_us: [u64; 3],
    /// Regions with a leader at the end.
    pub leaders: u64,
    /// Time until every region had a leader.
    pub election_time: Duration,
    /// Raft messages sent by all stores during the workload.
    pub raft_messages: u64,
    /// Synced writes (fsyncs) by all stores during the workload.
    pub fsyncs: u64,
    /// Engine write batches written by all stores during the workload.
    pub engine_writes: u64,
    /// Operations in them (each one memtable insert).
    pub engine_ops: u64,
    /// Their bytes.
    pub engine_bytes: u64,
    /// Heartbeats the peers generated during the workload (each went out
    /// inside a coalesced batch).
    pub heartbeats: u64,
    /// Coalesced heartbeat batches sent during the workload.
    pub heartbeat_batches: u64,
    /// Raft messages sent during the workload by type, the most frequent
    /// first (heartbeats included; zero counts left out).
    pub messages_by_type: Vec<(MessageType, u64)>,
    /// Times a peer went to sleep during the workload (all stores).
    pub hibernations: u64,
    /// Times a peer woke during the workload, whatever the reason.
    pub wakes: u64,
    /// The same by reason: command, leader message, peer message, leader
    /// store down, lagging store back (`WakeReason` order).
    pub wakes_by_reason: [u64; WAKE_REASONS],
    /// Peers awake at the end of the workload (all stores).
    pub awake_peers: i64,
    /// Raft poll rounds during the workload, over all stores.
    pub poll_rounds: u64,
    /// Their mean time (µs).
    pub poll_round_mean_us: u64,
    /// Apply tasks the raft pollers applied themselves during the workload
    /// (`Config::apply_inline`), over all stores.
    pub applies_inline: u64,
    /// CPU cores the whole process used during the workload (clients
    /// included), if `/proc` tells.
    pub cores_used: Option<f64>,
    /// Resident set size at the end (bytes), if known.
    pub rss_bytes: Option<u64>,
    /// Raft log entries in the stores' engines at the end, all regions.
    pub raft_log_entries: u64,
    /// Their approximate size in the engines (bytes).
    pub raft_log_bytes: u64,
    /// Regions bootstrapped.
    pub regions_start: u64,
    /// Regions at the end (the most any store hosts: splits add some).
    pub regions_end: u64,
    /// Splits the split storm completed (0 without one).
    pub storm_splits: u64,
    /// Splits the split storm had refused or failed (a key at a region's
    /// start, a split pending, a leader moving).
    pub storm_refusals: u64,
    /// Merges the merge storm completed (0 without one).
    pub storm_merges: u64,
    /// Merges the merge storm had refused, rolled back or failed (a
    /// neighbour merging already, a peer behind, the last region).
    pub storm_merge_refusals: u64,
}

fn percentiles(h: &Histogram<u64>) -> [u64; 3] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
    ]
}

/// Counters summed over the running stores.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    msgs: u64,
    fsyncs: u64,
    engine_writes: u64,
    engine_ops: u64,
    engine_bytes: u64,
    heartbeats: u64,
    batches: u64,
    rounds: u64,
    round_us: u64,
    applies_inline: u64,
    hibernations: u64,
    wakes: u64,
    wakes_by_reason: [u64; WAKE_REASONS],
    awake: i64,
    by_type: [u64; MESSAGE_TYPES],
}

fn totals(cluster: &Cluster) -> Totals {
    let mut t = Totals::default();
    for &id in cluster.store_ids() {
        if let Some(s) = cluster.store(id) {
            let m = s.metrics();
            t.msgs += m.raft_messages_sent.load(Ordering::Relaxed);
            let es = s.engine().stats();
            t.fsyncs += es.synced_writes();
            t.engine_writes += es.writes();
            t.engine_ops += es.written_ops();
            t.engine_bytes += es.written_bytes();
            t.heartbeats += m.heartbeats_sent.load(Ordering::Relaxed);
            t.batches += m.heartbeat_batches_sent.load(Ordering::Relaxed);
            t.rounds += m.poll_rounds.load(Ordering::Relaxed);
            t.round_us += m.poll_round_micros.load(Ordering::Relaxed);
            t.applies_inline += m.applies_inline.load(Ordering::Relaxed);
            t.hibernations += m.hibernations.load(Ordering::Relaxed);
            for (sum, w) in t.wakes_by_reason.iter_mut().zip(&m.wakes_by_reason) {
                let n = w.load(Ordering::Relaxed);
                *sum += n;
                t.wakes += n;
            }
            t.awake += m.awake_peers.load(Ordering::Relaxed);
            for (sum, c) in t.by_type.iter_mut().zip(&m.raft_messages_by_type) {
                *sum += c.load(Ordering::Relaxed);
            }
        }
    }
    t
}

/// The raft messages sent between two readings, by type, most first.
fn by_type(before: &Totals, after: &Totals) -> Vec<(MessageType, u64)> {
    let mut v: Vec<(MessageType, u64)> = (0..MESSAGE_TYPES)
        .filter_map(|i| {
            let t = MessageType::try_from(i as i32).ok()?;
            let n = after.by_type[i].saturating_sub(before.by_type[i]);
            (n > 0).then_some((t, n))
        })
        .collect();
    v.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    v
}

/// Runs the demo.
///
/// # Errors
/// A string describing what failed to start.
pub fn run(opts: &DemoOptions, logger: &slog::Logger) -> Result<DemoReport, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let cfg = Config {
        base_tick_ms: opts.base_tick_ms,
        raft_log_gc_tick_ticks: if opts.log_gc {
            Config::default().raft_log_gc_tick_ticks
        } else {
            0
        },
        ..Config::default()
    };
    let cfg = match opts.hibernate_idle_ticks {
        Some(0) => Config {
            hibernate_regions: false,
            ..cfg
        },
        Some(ticks) => Config {
            hibernate_idle_ticks: ticks,
            ..cfg
        },
        None => cfg,
    };
    let cfg = Config {
        apply_inline: opts.apply_inline,
        ..cfg
    };
    let cfg = match opts.split_size {
        Some(bytes) => Config {
            region_split_size: bytes,
            split_check_ticks: SPLIT_CHECK_TICKS_DEMO,
            ..cfg
        },
        None => cfg,
    };
    let started = Instant::now();
    let cluster = Cluster::bootstrap(dir.path(), DEMO_STORES, opts.regions, cfg, logger)
        .map_err(|e| format!("bootstrap: {e}"))?;
    let bar = ProgressBar::new(opts.regions);
    bar.set_style(
        ProgressStyle::with_template("electing leaders {bar:40} {pos}/{len} regions")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let election_deadline = Instant::now() + Duration::from_secs(120);
    while cluster.leader_count() < opts.regions && Instant::now() < election_deadline {
        bar.set_position(cluster.leader_count().min(opts.regions));
        thread::sleep(Duration::from_millis(50));
    }
    bar.finish_and_clear();
    let election_time = started.elapsed();

    let client = Arc::new(cluster.client(ClientConfig::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let before = totals(&cluster);
    let cpu = crate::load::stats::CpuMeter::start();
    let t0 = Instant::now();
    let key: KeyFn = {
        let regions = opts.regions;
        Arc::new(move |region, suffix| {
            let mut key = flotilla_raftstore::store::bootstrap::split_key(region, regions);
            if suffix > 0 {
                key.extend_from_slice(&suffix.to_be_bytes());
            }
            key
        })
    };
    let storm = Storm::start(
        &client,
        opts.split_storm,
        opts.merge_storm,
        (opts.regions, KEYS_PER_REGION),
        opts.seed,
        &key,
    );
    let workers: Vec<_> = (0..opts.clients)
        .map(|c| {
            let (client, stop, done_ops) = (client.clone(), stop.clone(), done_ops.clone());
            let (regions, write_ratio, seed) = (opts.regions, opts.write_ratio, opts.seed);
            thread::spawn(move || {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed ^ (c as u64).wrapping_mul(0x9e37_79b9));
                let new_hist =
                    || Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_DIGITS);
                let (mut wh, mut rh) = (new_hist().ok(), new_hist().ok());
                let (mut writes, mut reads, mut errors) = (0u64, 0u64, 0u64);
                let value = vec![b'v'; VALUE_BYTES];
                while !stop.load(Ordering::Relaxed) {
                    let region = rng.random_range(0..regions);
                    let mut key = flotilla_raftstore::store::bootstrap::split_key(region, regions);
                    key.extend_from_slice(&rng.random_range(0..KEYS_PER_REGION).to_be_bytes());
                    let is_write = rng.random_bool(write_ratio);
                    let t = Instant::now();
                    let ok = if is_write {
                        client.put(&key, &value).is_ok()
                    } else {
                        client.get(&key).is_ok()
                    };
                    let us = (t.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                    if !ok {
                        errors += 1;
                        continue;
                    }
                    let hist = if is_write { &mut wh } else { &mut rh };
                    if let Some(h) = hist.as_mut() {
                        let _ = h.record(us);
                    }
                    if is_write {
                        writes += 1;
                    } else {
                        reads += 1;
                    }
                    done_ops.fetch_add(1, Ordering::Relaxed);
                }
                (wh, rh, writes, reads, errors)
            })
        })
        .collect();
    let bar = ProgressBar::new(opts.duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("running {bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while t0.elapsed() < opts.duration {
        thread::sleep(Duration::from_millis(200));
        let secs = t0.elapsed().as_secs_f64().max(0.001);
        bar.set_position(t0.elapsed().as_secs());
        bar.set_message(format!(
            "{:.0} ops/s",
            done_ops.load(Ordering::Relaxed) as f64 / secs
        ));
    }
    stop.store(true, Ordering::Relaxed);
    let storm = storm.stop()?;
    let mut wh = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_DIGITS)
        .map_err(|e| e.to_string())?;
    let mut rh = wh.clone();
    let (mut writes, mut reads, mut errors) = (0, 0, 0);
    for w in workers {
        let (w_h, r_h, w, r, e) = w
            .join()
            .map_err(|_| "a client thread panicked".to_string())?;
        if let Some(h) = w_h {
            let _ = wh.add(&h);
        }
        if let Some(h) = r_h {
            let _ = rh.add(&h);
        }
        writes += w;
        reads += r;
        errors += e;
    }
    let elapsed = t0.elapsed();
    let cores_used = cpu.cores_used();
    bar.finish_and_clear();
    let after = totals(&cluster);
    let rounds = after.rounds - before.rounds;
    let report = DemoReport {
        ops: writes + reads,
        writes,
        reads,
        errors,
        elapsed,
        write_us: percentiles(&wh),
        read_us: percentiles(&rh),
        leaders: cluster.leader_count(),
        election_time,
        raft_messages: after.msgs - before.msgs,
        fsyncs: after.fsyncs - before.fsyncs,
        engine_writes: after.engine_writes - before.engine_writes,
        engine_ops: after.engine_ops - before.engine_ops,
        engine_bytes: after.engine_bytes - before.engine_bytes,
        heartbeats: after.heartbeats - before.heartbeats,
        heartbeat_batches: after.batches - before.batches,
        messages_by_type: by_type(&before, &after),
        hibernations: after.hibernations - before.hibernations,
        wakes: after.wakes - before.wakes,
        wakes_by_reason: std::array::from_fn(|i| {
            after.wakes_by_reason[i].saturating_sub(before.wakes_by_reason[i])
        }),
        awake_peers: after.awake,
        poll_rounds: rounds,
        applies_inline: after.applies_inline - before.applies_inline,
        poll_round_mean_us: (after.round_us - before.round_us) / rounds.max(1),
        cores_used,
        rss_bytes: flotilla_server::proc_stats::rss_bytes(),
        raft_log_entries: 0,
        raft_log_bytes: 0,
        regions_start: opts.regions,
        regions_end: cluster
            .store_ids()
            .iter()
            .filter_map(|&s| cluster.store(s))
            .map(|s| s.region_count() as u64)
            .max()
            .unwrap_or(0),
        storm_splits: storm.splits,
        storm_refusals: storm.split_refusals,
        storm_merges: storm.merges,
        storm_merge_refusals: storm.merge_refusals,
    };
    let (raft_log_entries, raft_log_bytes) = raft_logs(&cluster);
    let report = DemoReport {
        raft_log_entries,
        raft_log_bytes,
        ..report
    };
    cluster.shutdown();
    Ok(report)
}

/// Raft log entries in every store's engine, and their encoded size.
fn raft_logs(cluster: &Cluster) -> (u64, u64) {
    let (mut entries, mut bytes) = (0u64, 0u64);
    for &id in cluster.store_ids() {
        let Some(store) = cluster.store(id) else {
            continue;
        };
        let snap = store.engine().snapshot();
        // Every region the store has: splits add regions.
        let ids: Vec<u64> = flotilla_raftstore::store::region_states(store.engine())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.region.as_ref().map(|r| r.id))
            .collect();
        for id in ids {
            let (lo, hi) = keys::raft_log_range(id, 0, u64::MAX);
            let _ = snap.scan(Cf::Raft, &lo, &hi, |k, v| {
                entries += 1;
                bytes += (k.len() + v.len()) as u64;
                std::ops::ControlFlow::Continue(())
            });
        }
    }
    (entries, bytes)
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            f,
            "elapsed            {:.1} s (leaders elected in {:.1} s)",
            secs,
            self.election_time.as_secs_f64()
        )?;
        writeln!(
            f,
            "throughput         {:.0} ops/s ({:.0} writes/s, {:.0} reads/s), {} errors",
            self.ops as f64 / secs,
            self.writes as f64 / secs,
            self.reads as f64 / secs,
            self.errors
        )?;
        if let Some(cores) = self.cores_used {
            writeln!(
                f,
                "cpu                {:.2} cores, {:.0} µs per op (clients included)",
                cores,
                cores * secs * 1e6 / self.ops.max(1) as f64
            )?;
        }
        writeln!(
            f,
            "write latency      p50 {} µs  p99 {} µs  p999 {} µs",
            self.write_us[0], self.write_us[1], self.write_us[2]
        )?;
        writeln!(
            f,
            "read latency       p50 {} µs  p99 {} µs  p999 {} µs",
            self.read_us[0], self.read_us[1], self.read_us[2]
        )?;
        writeln!(f, "regions with leader {}", self.leaders)?;
        if self.storm_splits + self.storm_refusals > 0 {
            writeln!(
                f,
                "split storm        {} splits ({:.0}/s), {} refused",
                self.storm_splits,
                self.storm_splits as f64 / secs,
                self.storm_refusals
            )?;
        }
        if self.storm_merges + self.storm_merge_refusals > 0 {
            writeln!(
                f,
                "merge storm        {} merges ({:.0}/s), {} refused",
                self.storm_merges,
                self.storm_merges as f64 / secs,
                self.storm_merge_refusals
            )?;
        }
        if self.regions_end != self.regions_start {
            writeln!(
                f,
                "regions            {} at the start, {} at the end (splits and merges under load)",
                self.regions_start, self.regions_end
            )?;
        }
        writeln!(
            f,
            "raft messages      {} ({:.0}/s)",
            self.raft_messages,
            self.raft_messages as f64 / secs
        )?;
        if !self.messages_by_type.is_empty() {
            let per_op = |n: u64| n as f64 / self.ops.max(1) as f64;
            let parts: Vec<String> = self
                .messages_by_type
                .iter()
                .map(|&(t, n)| {
                    format!(
                        "{} {:.2}",
                        t.as_str_name().trim_start_matches("Msg"),
                        per_op(n)
                    )
                })
                .collect();
            writeln!(f, "messages per op    {}", parts.join(", "))?;
        }
        writeln!(
            f,
            "heartbeats         {} in {} coalesced batches ({:.0} batches/s)",
            self.heartbeats,
            self.heartbeat_batches,
            self.heartbeat_batches as f64 / secs
        )?;
        writeln!(
            f,
            "hibernation        {} sleeps, {} wakes ({:.0}/s: {} by commands, {} leader / {} peer messages, {} leader store down, {} lagging store back), {} peers awake at the end",
            self.hibernations,
            self.wakes,
            self.wakes as f64 / secs,
            self.wakes_by_reason[0],
            self.wakes_by_reason[1],
            self.wakes_by_reason[2],
            self.wakes_by_reason[3],
            self.wakes_by_reason[4],
            self.awake_peers
        )?;
        writeln!(
            f,
            "fsyncs             {} ({:.0}/s)",
            self.fsyncs,
            self.fsyncs as f64 / secs
        )?;
        let per_op = |n: u64| n as f64 / self.ops.max(1) as f64;
        writeln!(
            f,
            "engine writes      {} batches ({:.2} per op), {:.1} operations and {:.0} bytes per op (all stores)",
            self.engine_writes,
            per_op(self.engine_writes),
            per_op(self.engine_ops),
            per_op(self.engine_bytes)
        )?;
        writeln!(
            f,
            "raft poll rounds   {} ({:.0}/s, mean {} µs), {:.2} inline applies per op",
            self.poll_rounds,
            self.poll_rounds as f64 / secs,
            self.poll_round_mean_us,
            per_op(self.applies_inline)
        )?;
        writeln!(
            f,
            "raft logs          {} entries, {:.1} MiB in the engines (all stores)",
            self.raft_log_entries,
            self.raft_log_bytes as f64 / (1 << 20) as f64
        )?;
        match self.rss_bytes {
            Some(b) => write!(
                f,
                "RSS                {:.1} MiB",
                b as f64 / (1 << 20) as f64
            ),
            None => write!(f, "RSS                unknown"),
        }
    }
}
