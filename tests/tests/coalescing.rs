//! Coalesced heartbeats (issue #10, DESIGN §5): with many regions, the
//! heartbeats between two stores travel as at most one batch of beats and
//! one of responses per heartbeat interval, whatever the region count, and
//! the regions stay led and serving. Awake followers that hear their
//! leader cost no tick messages.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::store::{ClientConfig, Cluster, Config, StoreMetrics};
use flotilla_tests::harness::logger;

/// Regions in the idle-coalescing test (the issue asks for 1,000).
const REGIONS: u64 = 1_000;
/// Base tick (ms) of that test: slower than the fast tests' so a debug
/// build keeps up with 1,000 regions on 2 cores.
const TICK_MS: u64 = 50;
/// How long the idle cluster is watched.
const IDLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    beats: u64,
    batches: u64,
    flushes: u64,
    urgent: u64,
    received: u64,
    /// Ticks sent to awake peers, and those not sent (silent).
    ticks: u64,
    silent: u64,
}

fn counters(m: &StoreMetrics) -> Counters {
    Counters {
        beats: m.heartbeats_sent.load(Ordering::Relaxed),
        // Batches carrying beats; the store clock's bare liveness beats
        // (sent when a flush is late) are not heartbeat coalescing.
        batches: m.beat_batches_sent.load(Ordering::Relaxed),
        flushes: m.heartbeat_flushes.load(Ordering::Relaxed),
        urgent: m.heartbeat_urgent_flushes.load(Ordering::Relaxed),
        received: m.heartbeat_batches_received.load(Ordering::Relaxed),
        ticks: m.peer_ticks.load(Ordering::Relaxed) + m.ticks_coalesced.load(Ordering::Relaxed),
        silent: m.ticks_silent.load(Ordering::Relaxed),
    }
}

fn all_counters(cluster: &Cluster) -> Vec<Counters> {
    cluster
        .store_ids()
        .iter()
        .map(|&id| counters(cluster.store(id).unwrap().metrics()))
        .collect()
}

/// 1,000 idle regions on 3 stores: every flush sends at most one batch of
/// beats and one of responses to each other store, so the wire carries at
/// most 2 heartbeat messages per store pair per heartbeat interval, while
/// the peers generate hundreds of beats per batch. Afterwards every region
/// still has its leader and serves a write and a read, and a read's beats
/// are flushed at once (an urgent flush), not after an interval.
#[test]
fn idle_heartbeats_are_coalesced_per_store_pair() {
    let dir = tempfile::tempdir().unwrap();
    // Awake regions are what is coalesced: hibernation would put these
    // idle ones to sleep (see tests/hibernation.rs).
    let cfg = Config {
        base_tick_ms: TICK_MS,
        hibernate_regions: false,
        ..Config::default()
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, REGIONS, cfg.clone(), &logger()).unwrap();
    assert!(
        cluster.wait_for_leaders(REGIONS, Duration::from_secs(60)),
        "only {} of {REGIONS} regions have a leader",
        cluster.leader_count()
    );
    let before = all_counters(&cluster);
    std::thread::sleep(IDLE);
    let after = all_counters(&cluster);
    let peers_per_store = cluster.store_ids().len() as u64 - 1;
    let (mut beats, mut batches) = (0, 0);
    for (b, a) in before.iter().zip(&after) {
        let flushes = a.flushes - b.flushes;
        let sent = a.batches - b.batches;
        assert!(flushes > 0, "no heartbeat flush in {IDLE:?}");
        // One batch of beats and one of responses per other store, per
        // flush: 2 wire messages per store pair per heartbeat interval.
        assert!(
            sent <= 2 * peers_per_store * flushes,
            "{sent} batches in {flushes} flushes to {peers_per_store} stores"
        );
        assert!(a.received > b.received, "no batch received");
        beats += a.beats - b.beats;
        batches += sent;
    }
    assert!(batches > 0);
    assert!(
        beats >= 100 * batches,
        "{beats} beats in {batches} batches: not coalesced"
    );
    // Lazy clocks: a follower that hears its leader every heartbeat is
    // never due, so the store sends it no tick. Two peers in three are
    // followers; allow for the ones a slow debug round made wait.
    let (sent, silent) = before.iter().zip(&after).fold((0, 0), |(t, s), (b, a)| {
        (t + a.ticks - b.ticks, s + a.silent - b.silent)
    });
    assert!(
        silent >= sent,
        "{silent} silent ticks vs {sent} sent: awake followers were ticked"
    );

    // Still led and serving; a read flushes its beats at once.
    let urgent_before: u64 = after.iter().map(|c| c.urgent).sum();
    let client = cluster.client(ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    });
    for region in cluster.regions().iter().step_by(50) {
        let mut key = region.start_key.to_vec();
        key.extend_from_slice(b"\0k");
        client.put(&key, b"v").unwrap();
        assert_eq!(client.get(&key).unwrap().as_deref(), Some(&b"v"[..]));
    }
    let urgent_after: u64 = all_counters(&cluster).iter().map(|c| c.urgent).sum();
    assert!(
        urgent_after > urgent_before,
        "reads waited for the interval flush"
    );
    assert!(cluster.wait_for_leaders(REGIONS, Duration::from_secs(30)));
    // The per-type counters account for every beat, and rounds are timed.
    for &id in cluster.store_ids() {
        let m = cluster.store(id).unwrap().metrics();
        // The two counters move one after the other on a live store: read
        // them until no beat is between the two (the store goes quiet).
        let counted = || {
            let total = m.heartbeats_sent.load(Ordering::Relaxed);
            let by_type = m.sent_of_type(MessageType::MsgHeartbeat)
                + m.sent_of_type(MessageType::MsgHeartbeatResponse);
            (by_type, total)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (mut by_type, mut total) = counted();
        while by_type != total && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            (by_type, total) = counted();
        }
        assert_eq!(by_type, total, "store {id}: beats by type vs all beats");
        assert!(m.sent_of_type(MessageType::MsgAppend) > 0);
        assert!(m.poll_rounds.load(Ordering::Relaxed) > 0);
        assert!(
            m.poll_round_max_micros.load(Ordering::Relaxed) * m.poll_rounds.load(Ordering::Relaxed)
                >= m.poll_round_micros.load(Ordering::Relaxed)
        );
    }
    cluster.shutdown();
}
