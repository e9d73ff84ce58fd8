//! One region's snapshot between stores: generate, send, apply.
//!
//! Bootstraps 3 in-process stores with one region, cuts one follower off,
//! writes `FLOTILLA_SNAP_MIB` MiB (default 64) of 16 KiB values so the
//! others compact their logs past it (forced log GC), then heals the
//! partition and times the follower's catch-up by one snapshot. Prints the
//! store's own timings of each step (generation on the leader's snapshot
//! worker, the chunked stream, the write into the follower's engine), the
//! wall time until the follower's engine holds every key, and the peak of
//! the Rust heap allocated during the catch-up (counting allocator;
//! RocksDB's C++ allocations, e.g. its memtables, are not counted).
//!
//! `cargo bench -p flotilla-benches --bench snapshot_transfer`

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_benches::Counting;
use flotilla_benches::counting::{enable, live, peak_bytes, reset_peak};
use flotilla_engine::{Cf, keys};
use flotilla_raftstore::store::{ClientConfig, Cluster, Config, StoreMetrics};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// MiB written unless `FLOTILLA_SNAP_MIB` says otherwise.
const DEFAULT_MIB: usize = 64;
/// Bytes per value.
const VALUE_BYTES: usize = 16 << 10;
/// Writers at once.
const WRITERS: usize = 8;
/// How long the catch-up may take.
const CATCH_UP_WAIT: Duration = Duration::from_secs(600);

fn key(i: usize) -> Vec<u8> {
    format!("snap{i:08}").into_bytes()
}

fn millis(micros: &std::sync::atomic::AtomicU64) -> f64 {
    micros.load(Ordering::Relaxed) as f64 / 1000.0
}

fn main() {
    let mib: usize = std::env::var("FLOTILLA_SNAP_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_MIB);
    let keys_total = (mib << 20) / VALUE_BYTES;
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temp dir: {e}"),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let cfg = Config {
        base_tick_ms: 20,
        // The writes are the set-up, not the measurement.
        sync_log: false,
        raft_log_gc_tick_ticks: 2,
        raft_log_gc_count_limit: 200,
        ..Config::default()
    };
    let cluster = match Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger) {
        Ok(c) => c,
        Err(e) => panic!("bootstrap: {e}"),
    };
    assert!(
        cluster.wait_for_leaders(1, Duration::from_secs(60)),
        "no leader"
    );
    let client = cluster.client(ClientConfig::default());
    let leader_of = || {
        cluster.store_ids().iter().copied().find(|&id| {
            cluster
                .store(id)
                .is_some_and(|s| s.metrics().leaders.load(Ordering::Relaxed) > 0)
        })
    };
    let leader = leader_of().expect("a leader store");
    let cut = cluster
        .store_ids()
        .iter()
        .copied()
        .find(|&id| id != leader)
        .expect("a follower");
    let filter = cluster.transport().isolate(cut);
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let client = &client;
            s.spawn(move || {
                let value = vec![w as u8; VALUE_BYTES];
                for i in (w..keys_total).step_by(WRITERS) {
                    client.put(&key(i), &value).expect("put");
                }
            });
        }
    });
    println!(
        "wrote {mib} MiB ({keys_total} keys of {} KiB) in {:.1} s with store {cut} cut off",
        VALUE_BYTES >> 10,
        started.elapsed().as_secs_f64()
    );
    let cut_engine = cluster.store(cut).expect("cut store").engine().clone();
    let has_all = || {
        (0..keys_total).rev().step_by(97).all(|i| {
            cut_engine
                .get(Cf::Default, &keys::data_key(&key(i)))
                .ok()
                .flatten()
                .is_some()
        }) && cut_engine
            .get(Cf::Default, &keys::data_key(&key(keys_total - 1)))
            .ok()
            .flatten()
            .is_some()
    };
    enable(true);
    reset_peak();
    let (before, _) = live();
    let healed = Instant::now();
    cluster.transport().remove_filter(filter);
    let applied = || {
        cluster
            .store(cut)
            .is_some_and(|s| s.metrics().snapshots_applied.load(Ordering::Relaxed) > 0)
    };
    while !(has_all() && applied()) && healed.elapsed() < CATCH_UP_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    let caught_up = healed.elapsed();
    let peak = peak_bytes() - before;
    enable(false);
    assert!(has_all(), "the follower did not catch up");
    let m = |id: u64| -> &StoreMetrics { cluster.store(id).expect("store").metrics() };
    let sum = |f: &dyn Fn(&StoreMetrics) -> f64| -> f64 {
        cluster.store_ids().iter().map(|&id| f(m(id))).sum()
    };
    println!(
        "snapshots: generated {}, sent {}, applied {}",
        sum(&|x| x.snapshots_generated.load(Ordering::Relaxed) as f64),
        sum(&|x| x.snapshots_sent.load(Ordering::Relaxed) as f64),
        m(cut).snapshots_applied.load(Ordering::Relaxed)
    );
    println!(
        "generate {:.0} ms, send {:.0} ms, apply {:.0} ms; healed to caught up {:.0} ms",
        sum(&|x| millis(&x.snapshot_generate_micros)),
        sum(&|x| millis(&x.snapshot_send_micros)),
        millis(&m(cut).snapshot_apply_micros),
        caught_up.as_secs_f64() * 1000.0
    );
    println!(
        "peak Rust heap allocated during the catch-up: {:.1} MiB",
        peak as f64 / f64::from(1 << 20)
    );
    cluster.shutdown();
}
