//! Heap bytes per peer of running stores, and their idle heartbeat traffic.
//!
//! Bootstraps 3 in-process stores with `FLOTILLA_MEM_REGIONS` regions each
//! (default 10,000), waits until every region has a leader and (unless
//! `FLOTILLA_MEM_HIBERNATE=0`) every peer hibernates, lets them idle for a
//! few heartbeat intervals, and prints:
//! - Rust heap bytes per peer (counting global allocator: every per-peer
//!   structure — PeerFsm, RawNode, PeerStorage and its entry cache, mailbox,
//!   router entry, ApplyFsm, region metadata — and the store-level ones
//!   divided among the peers; RocksDB's C++ allocations are not counted);
//! - the fixed sizes of the main per-peer types;
//! - idle heartbeats generated vs coalesced wire batches per store pair per
//!   heartbeat interval.
//!
//! `cargo bench -p flotilla-benches --bench store_memory`
//! (`FLOTILLA_MEM_REGIONS=100000` for the 100k-region figure).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_benches::Counting;
use flotilla_benches::counting::{enable, live};
use flotilla_raftstore::raft::RawNode;
use flotilla_raftstore::store::{Cluster, Config, PeerStorage};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Regions per store unless `FLOTILLA_MEM_REGIONS` says otherwise.
const DEFAULT_REGIONS: u64 = 10_000;
/// Stores in the cluster.
const STORES: usize = 3;
/// How long the cluster idles before it is measured.
const IDLE: Duration = Duration::from_secs(3);
/// How long elections may take.
const ELECTION_WAIT: Duration = Duration::from_secs(600);
/// How long every peer may take to hibernate once led.
const HIBERNATE_WAIT: Duration = Duration::from_secs(300);

fn main() {
    let regions: u64 = std::env::var("FLOTILLA_MEM_REGIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_REGIONS);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("temp dir: {e}"),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let hibernate = std::env::var("FLOTILLA_MEM_HIBERNATE").map_or(true, |v| v != "0");
    let cfg = Config {
        hibernate_regions: hibernate,
        ..Config::default()
    };
    enable(true);
    let (bytes0, allocs0) = live();
    let started = Instant::now();
    let cluster = match Cluster::bootstrap(dir.path(), STORES, regions, cfg.clone(), &logger) {
        Ok(c) => c,
        Err(e) => panic!("bootstrap: {e}"),
    };
    let opened = started.elapsed();
    assert!(
        cluster.wait_for_leaders(regions, ELECTION_WAIT),
        "only {} of {regions} regions elected",
        cluster.leader_count()
    );
    let elected = started.elapsed();
    let asleep = |c: &Cluster| -> i64 {
        c.store_ids()
            .iter()
            .filter_map(|&id| c.store(id))
            .map(|s| s.metrics().hibernated_peers.load(Ordering::Relaxed))
            .sum()
    };
    let all = regions as i64 * STORES as i64;
    if hibernate {
        let deadline = Instant::now() + HIBERNATE_WAIT;
        while asleep(&cluster) < all && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let slept = started.elapsed();
    let beats = |c: &Cluster| -> (u64, u64, u64, u64) {
        c.store_ids()
            .iter()
            .fold((0, 0, 0, 0), |(b, w, f, l), &id| {
                let m = c.store(id).map(|s| s.metrics());
                m.map_or((b, w, f, l), |m| {
                    (
                        b + m.heartbeats_sent.load(Ordering::Relaxed),
                        w + m.heartbeat_batches_sent.load(Ordering::Relaxed),
                        f + m.heartbeat_flushes.load(Ordering::Relaxed),
                        l + m.liveness_messages_sent.load(Ordering::Relaxed),
                    )
                })
            })
    };
    let (b0, w0, f0, l0) = beats(&cluster);
    std::thread::sleep(IDLE);
    let (b1, w1, f1, l1) = beats(&cluster);
    let hibernated = asleep(&cluster);
    let (bytes1, allocs1) = live();
    let peers = regions as f64 * STORES as f64;
    let per_peer = (bytes1 - bytes0) as f64 / peers;
    let allocs_per_peer = (allocs1 - allocs0) as f64 / peers;
    println!("store_memory: {STORES} stores x {regions} regions");
    println!(
        "  bootstrap + open {:.1} s, every region led after {:.1} s",
        opened.as_secs_f64(),
        elapsed_s(elected)
    );
    println!(
        "  hibernation {}: {hibernated} of {all} peers asleep ({:.1} s after start)",
        if hibernate { "on" } else { "off" },
        elapsed_s(slept)
    );
    println!(
        "  idle Rust heap per peer: {per_peer:.0} B ({:.2} KiB) in {allocs_per_peer:.1} allocations",
        per_peer / 1024.0
    );
    println!(
        "  size_of: RawNode<PeerStorage> {} B, PeerStorage {} B",
        std::mem::size_of::<RawNode<PeerStorage>>(),
        std::mem::size_of::<PeerStorage>()
    );
    let pairs = (STORES * (STORES - 1)) as f64;
    let flushes = (f1 - f0) as f64 / STORES as f64;
    println!(
        "  idle {:.1} s: {} heartbeats generated, {} wire batches, {:.1} flushes per store;",
        IDLE.as_secs_f64(),
        b1 - b0,
        w1 - w0,
        flushes
    );
    if flushes > 0.0 {
        println!(
            "  wire heartbeat messages per store pair per interval: {:.2}, of which bare liveness beats {:.2} (beats per batch {:.0})",
            (w1 - w0) as f64 / pairs / flushes,
            (l1 - l0) as f64 / pairs / flushes,
            (b1 - b0) as f64 / (w1 - w0).max(1) as f64
        );
    }
    cluster.shutdown();
}

fn elapsed_s(d: Duration) -> f64 {
    d.as_secs_f64()
}
