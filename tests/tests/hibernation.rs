//! Hibernation and store liveness (issue #10, DESIGN §5), on real stores:
//! idle regions go to sleep and cost no tick and no message; a write wakes
//! exactly its region; histories stay linearizable across sleep and wake;
//! a dead leader store's regions elect new leaders; a dead follower store
//! does not keep its regions awake; lost hibernate beats cause no
//! election; late batches of a past store life are dropped.
//!
//! These tests assert on counters and states, never on wall time.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_engine::{Cf, keys};
use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::eraftpb::MessageType;
use flotilla_proto::metapb::{Peer, PeerRole, Region};
use flotilla_proto::raft_serverpb::{Beat, RaftMessage};
use flotilla_raftstore::store::{
    ClientConfig, Cluster, Config, Filter, MessageSink, StoreMetrics, WakeReason,
};
use flotilla_tests::harness::{eventually, logger};
use flotilla_tests::linearizability::History;
use flotilla_tests::workload::{
    Workload, check_history, history_client, history_seed, spawn_history_clients,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Base tick of these tests (ms): an election timeout is 10 of them.
const TICK_MS: u64 = 20;
/// Ticks after every peer sleeps before a test counts messages: the last
/// answers to the leaders' last heartbeats leave within a flush or two.
const SETTLE_TICKS: u64 = 6;
/// Regions of the small-cluster tests.
const REGIONS: u64 = 30;
/// Regions of the dead-leader-store test (the issue asks for 1,000).
const MANY_REGIONS: u64 = 1_000;
/// Its base tick (ms): slower, so a debug build keeps up on 2 cores (also
/// the tick of the test that counts heartbeats one by one).
const MANY_TICK_MS: u64 = 50;

fn config(tick_ms: u64) -> Config {
    Config {
        base_tick_ms: tick_ms,
        ..Config::default()
    }
}

fn bootstrap(dir: &tempfile::TempDir, regions: u64, cfg: Config) -> Cluster {
    let cluster = Cluster::bootstrap(dir.path(), 3, regions, cfg, &logger()).expect("bootstrap");
    assert!(
        cluster.wait_for_leaders(regions, Duration::from_secs(60)),
        "only {} of {regions} regions have a leader",
        cluster.leader_count()
    );
    cluster
}

fn metrics(cluster: &Cluster, store: u64) -> &StoreMetrics {
    cluster.store(store).expect("running store").metrics()
}

/// Sums `f` over the running stores.
fn sum(cluster: &Cluster, f: impl Fn(&StoreMetrics) -> u64) -> u64 {
    cluster
        .store_ids()
        .iter()
        .filter_map(|&id| cluster.store(id))
        .map(|s| f(s.metrics()))
        .sum()
}

/// Whether every running store has all `regions` of its peers asleep.
fn all_asleep(cluster: &Cluster, regions: u64) -> bool {
    cluster
        .store_ids()
        .iter()
        .filter_map(|&id| cluster.store(id))
        .all(|s| s.metrics().hibernated_peers.load(Ordering::Relaxed) == regions as i64)
}

/// Each running store's hibernation counters, for failure messages.
fn state(cluster: &Cluster) -> String {
    let mut out = String::new();
    for &id in cluster.store_ids() {
        let Some(s) = cluster.store(id) else { continue };
        let m = s.metrics();
        out += &format!(
            "store {id}: asleep {} awake {} slept {} wakes {:?} leaders {} withdrawals {}; ",
            m.hibernated_peers.load(Ordering::Relaxed),
            m.awake_peers.load(Ordering::Relaxed),
            m.hibernations.load(Ordering::Relaxed),
            m.wakes_by_reason
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect::<Vec<_>>(),
            m.leaders.load(Ordering::Relaxed),
            m.support_withdrawals.load(Ordering::Relaxed),
        );
    }
    out
}

/// A key inside `region`.
fn key_in(region: &Region) -> Vec<u8> {
    let mut k = region.start_key.to_vec();
    k.push(0);
    k
}

/// Raft messages the peers of a store sent, of every type.
fn peer_messages(m: &StoreMetrics) -> u64 {
    m.raft_messages_by_type
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
}

/// Vote and pre-vote requests sent so far, every running store.
fn votes(cluster: &Cluster) -> u64 {
    sum(cluster, |m| {
        m.sent_of_type(MessageType::MsgRequestPreVote) + m.sent_of_type(MessageType::MsgRequestVote)
    })
}

fn wakes(cluster: &Cluster, reason: WakeReason) -> u64 {
    sum(cluster, |m| m.wakes(reason))
}

/// Wakes for any reason, every running store.
fn all_wakes(cluster: &Cluster) -> u64 {
    sum(cluster, |m| {
        m.wakes_by_reason
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    })
}

/// Idle regions hibernate: then no peer gets a tick, no heartbeat is made
/// and the only wire messages are the bare store-liveness beats. A write
/// to one region wakes exactly that region (its leader for the command,
/// its followers by the leader's append); every other region sleeps on,
/// and the woken one sleeps again.
#[test]
fn idle_regions_sleep_and_a_write_wakes_exactly_its_region() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    let client = cluster.client(ClientConfig::default());
    let target = cluster.regions()[REGIONS as usize / 2].clone();
    // Warm the client's leader cache, so the later write goes straight to
    // the leader.
    client.put(&key_in(&target), b"v1").unwrap();
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    // The followers' answers to the leaders' last heartbeats (sent with
    // the requests to sleep) leave with the next flush.
    std::thread::sleep(Duration::from_millis(SETTLE_TICKS * TICK_MS));
    let ticks = sum(&cluster, |m| m.peer_ticks.load(Ordering::Relaxed));
    let beats = sum(&cluster, |m| m.heartbeats_sent.load(Ordering::Relaxed));
    let by_peers = sum(&cluster, peer_messages);
    let beat_batches = sum(&cluster, |m| m.beat_batches_sent.load(Ordering::Relaxed));
    let bare = sum(&cluster, |m| {
        m.liveness_messages_sent.load(Ordering::Relaxed)
    });
    // Long enough for several heartbeat intervals and ticks.
    std::thread::sleep(Duration::from_millis(30 * TICK_MS));
    assert!(all_asleep(&cluster, REGIONS), "a region woke while idle");
    assert_eq!(
        sum(&cluster, |m| m.peer_ticks.load(Ordering::Relaxed)),
        ticks,
        "a hibernating peer got a tick"
    );
    assert_eq!(
        sum(&cluster, |m| m.heartbeats_sent.load(Ordering::Relaxed)),
        beats,
        "a hibernating region made a heartbeat"
    );
    assert_eq!(
        sum(&cluster, peer_messages),
        by_peers,
        "a hibernating peer sent a raft message"
    );
    assert_eq!(
        sum(&cluster, |m| m.beat_batches_sent.load(Ordering::Relaxed)),
        beat_batches,
        "a batch with a region's beat went on the wire"
    );
    let bare_now = sum(&cluster, |m| {
        m.liveness_messages_sent.load(Ordering::Relaxed)
    });
    assert!(bare_now > bare, "stores stopped hearing each other");

    let (command, leader_msg, peer_msg) = (
        wakes(&cluster, WakeReason::Command),
        wakes(&cluster, WakeReason::LeaderMessage),
        wakes(&cluster, WakeReason::PeerMessage),
    );
    client.put(&key_in(&target), b"v2").unwrap();
    for &id in cluster.store_ids() {
        let store = cluster.store(id).unwrap();
        for r in cluster.regions().iter().filter(|r| r.id != target.id) {
            assert!(
                store.is_hibernating(r.id),
                "region {} woke on store {id} for a write to region {}",
                r.id,
                target.id
            );
        }
    }
    assert!(
        eventually(|| wakes(&cluster, WakeReason::LeaderMessage) - leader_msg == 2),
        "both followers of the region should wake on the leader's append"
    );
    assert_eq!(wakes(&cluster, WakeReason::Command) - command, 1);
    assert_eq!(wakes(&cluster, WakeReason::PeerMessage) - peer_msg, 0);
    assert_eq!(client.get(&key_in(&target)).unwrap(), Some(b"v2".to_vec()));
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "the woken region did not sleep again"
    );
    cluster.shutdown();
}

/// A write to a sleeping region and the sleep after it need no heartbeat:
/// the append that the write sends (and its acknowledgement) stands for
/// the woken leader's first heartbeats and for the periodic one, and a
/// leader that hibernates on a tick sends none on that tick. Each cycle
/// here is a write, then waiting until every region sleeps again; with a
/// heartbeat round before every sleep (the code before session 12) the
/// five cycles made ten heartbeats. A slow acknowledgement on a busy
/// machine may let one through, hence the bound of one per cycle.
///
/// Nor does it need an append of its own for the commit (session 13): the
/// sleep request carries it, and a follower that has yet to apply what it
/// just learned is committed sleeps once it has, without waking the
/// leader. One append per follower per write (the code before made two:
/// the entry, then the commit), followers do not wake their leader, and
/// every store holds the last value.
#[test]
fn a_write_and_the_sleep_after_it_send_no_heartbeat() {
    const CYCLES: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    // The slower tick gives the append's acknowledgement more room before
    // the heartbeat tick: at 20 ms a debug build sharing two cores with
    // the rest of the suite let 8 heartbeats through once in CI.
    let cluster = bootstrap(&dir, REGIONS, config(MANY_TICK_MS));
    let client = cluster.client(ClientConfig::default());
    let target = cluster.regions()[REGIONS as usize / 2].clone();
    client.put(&key_in(&target), b"warm").unwrap();
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    std::thread::sleep(Duration::from_millis(SETTLE_TICKS * MANY_TICK_MS));
    let heartbeats = || sum(&cluster, |m| m.sent_of_type(MessageType::MsgHeartbeat));
    let appends = || sum(&cluster, |m| m.sent_of_type(MessageType::MsgAppend));
    let (beats, command) = (heartbeats(), wakes(&cluster, WakeReason::Command));
    let (sent, nudged) = (appends(), wakes(&cluster, WakeReason::PeerMessage));
    // The asleep gauge lags a wake by up to a tick: each cycle waits for
    // the region's three peers to count a new hibernation instead.
    let slept = || sum(&cluster, |m| m.hibernations.load(Ordering::Relaxed));
    for i in 0..CYCLES {
        let before = slept();
        client
            .put(&key_in(&target), format!("v{i}").as_bytes())
            .unwrap();
        assert!(
            eventually(|| slept() >= before + 3 && all_asleep(&cluster, REGIONS)),
            "cycle {i}: the region did not sleep again: {}",
            state(&cluster)
        );
    }
    assert_eq!(
        wakes(&cluster, WakeReason::Command) - command,
        CYCLES,
        "every write woke the sleeping leader: {}",
        state(&cluster)
    );
    let made = heartbeats() - beats;
    assert!(
        made <= CYCLES,
        "{made} heartbeats in {CYCLES} write-and-sleep cycles"
    );
    // Two followers: two appends per write. (A heartbeat let through may
    // draw one more, to a follower whose ack it overtook.)
    let made = appends() - sent;
    assert!(
        made <= 2 * CYCLES + CYCLES / 2,
        "{made} appends in {CYCLES} write-and-sleep cycles"
    );
    // Without the deferral every cycle woke the leader; an apply slower
    // than half an election timeout on a busy machine may still nudge it.
    let nudges = wakes(&cluster, WakeReason::PeerMessage) - nudged;
    assert!(
        nudges <= CYCLES / 2,
        "followers woke their leader {nudges} times in {CYCLES} cycles: {}",
        state(&cluster)
    );
    let last = format!("v{}", CYCLES - 1);
    for &s in cluster.store_ids() {
        let engine = cluster.store(s).unwrap().engine();
        assert_eq!(
            engine
                .get(Cf::Default, &keys::data_key(&key_in(&target)))
                .unwrap()
                .as_deref(),
            Some(last.as_bytes()),
            "store {s} did not apply the last write"
        );
    }
    cluster.shutdown();
}

/// Clients pause long enough between operations for their regions to
/// hibernate, with lease reads on: every read and write wakes a sleeping
/// region, and the history is linearizable per key.
#[test]
fn history_is_linearizable_across_sleep_and_wake() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lease_read: true,
        ..config(TICK_MS)
    };
    let cluster = bootstrap(&dir, 4, cfg);
    let w = Workload {
        clients: 3,
        keys: 4,
        ops_per_client: 25,
        // Several election timeouts: the region sleeps between operations.
        pause: Duration::from_millis(TICK_MS * 25),
        seed: history_seed(11),
    };
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let slept = sum(&cluster, |m| m.hibernations.load(Ordering::Relaxed));
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    check_history(workers, &history, w.seed, 40);
    let woke = wakes(&cluster, WakeReason::Command);
    assert!(
        sum(&cluster, |m| m.hibernations.load(Ordering::Relaxed)) > slept && woke > 0,
        "the regions never slept between operations (woken by commands: {woke})"
    );
    cluster.shutdown();
}

/// The same paced history while stores die and come back: the store
/// leading the most regions is stopped (its sleeping regions wake by store
/// liveness and elect with clocks run out), restarted, and then another
/// store is cut off by a partition longer than the support duration and
/// healed. With lease reads on, a forced election clock must never let a
/// new leader serve while an old lease is valid: the history must be
/// linearizable per key.
#[test]
fn history_is_linearizable_through_leader_store_loss_and_partition() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lease_read: true,
        ..config(TICK_MS)
    };
    let mut cluster = bootstrap(&dir, 4, cfg);
    let w = Workload {
        clients: 3,
        keys: 4,
        ops_per_client: 40,
        // Long enough for regions to sleep between some operations.
        pause: Duration::from_millis(TICK_MS * 12),
        seed: history_seed(13),
    };
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let workers = spawn_history_clients(&history_client(&cluster), &history, w);
    let settle = Duration::from_millis(TICK_MS * 40);
    std::thread::sleep(settle);
    let busiest = *cluster
        .store_ids()
        .iter()
        .max_by_key(|&&id| metrics(&cluster, id).leaders.load(Ordering::Relaxed))
        .unwrap();
    cluster.stop_store(busiest);
    std::thread::sleep(settle);
    cluster.start_store(busiest).unwrap();
    std::thread::sleep(settle);
    let cut = cluster
        .store_ids()
        .iter()
        .copied()
        .find(|&s| s != busiest)
        .unwrap();
    let id = cluster.transport().isolate(cut);
    std::thread::sleep(settle);
    cluster.transport().remove_filter(id);
    check_history(workers, &history, w.seed, 40);
    assert!(
        sum(&cluster, |m| m.support_withdrawals.load(Ordering::Relaxed)) > 0,
        "no store ever withdrew support: the faults did not happen"
    );
    cluster.shutdown();
}

/// Keeps a copy of the first heartbeat batch from `from` to `to` that
/// carries a hibernate request, and lets everything pass.
struct RecordSleepBatch {
    from: u64,
    to: u64,
    batch: Mutex<Option<RaftMessage>>,
}

impl Filter for RecordSleepBatch {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        let mut kept = self.batch.lock().unwrap();
        if kept.is_some() {
            return;
        }
        *kept = msgs
            .iter()
            .find(|m| {
                m.heartbeats.as_ref().is_some_and(|h| {
                    h.from_store == self.from
                        && h.to_store == self.to
                        && h.beats.iter().any(|b| b.quiesce)
                })
            })
            .cloned();
    }
}

/// Delivers `batch` to store `to` by hand (as a late message would come)
/// and checks the store dropped it whole and sleeps nothing under its
/// sender.
fn assert_late_batch_dropped(cluster: &Cluster, to: u64, batch: RaftMessage, what: &str) {
    let from = batch.heartbeats.as_ref().map_or(0, |h| h.from_store);
    let dropped = || {
        metrics(cluster, to)
            .stale_batches_dropped
            .load(Ordering::Relaxed)
    };
    let before = dropped();
    cluster.stores().get(to).expect("running").deliver(batch);
    assert_eq!(dropped(), before + 1, "a late batch {what} was taken");
    let store = cluster.store(to).expect("running");
    assert!(
        store.hibernating_under(from).is_empty(),
        "a late batch {what} put a region to sleep"
    );
}

/// 1,000 hibernating regions; the store leading the most of them dies.
/// Store liveness withdraws its support, exactly the regions asleep under
/// it wake, and every one gets a new leader; none stays asleep under the
/// dead store. A late batch the dead store sent before it died (a real
/// hibernate request of its leaders) is dropped whole, both while the
/// store is down (it does not echo the withdrawal) and after it restarted
/// (it is of an older life), and puts nothing to sleep under it.
#[test]
fn a_dead_leader_stores_regions_elect_new_leaders() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(MANY_TICK_MS);
    let cluster = Cluster::bootstrap(dir.path(), 3, MANY_REGIONS, cfg, &logger()).unwrap();
    // Record one hibernate batch from every store to the next before the
    // regions first go to sleep.
    let ids = cluster.store_ids().to_vec();
    let recorders: Vec<Arc<RecordSleepBatch>> = ids
        .iter()
        .map(|&from| {
            let r = Arc::new(RecordSleepBatch {
                from,
                to: ids[(from as usize) % ids.len()],
                batch: Mutex::new(None),
            });
            cluster.transport().add_filter(r.clone());
            r
        })
        .collect();
    let mut cluster = cluster;
    assert!(
        cluster.wait_for_leaders(MANY_REGIONS, Duration::from_secs(60)),
        "only {} of {MANY_REGIONS} regions have a leader",
        cluster.leader_count()
    );
    assert!(
        eventually(|| all_asleep(&cluster, MANY_REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    let dead = *ids
        .iter()
        .max_by_key(|&&id| metrics(&cluster, id).leaders.load(Ordering::Relaxed))
        .unwrap();
    let recorder = &recorders[ids.iter().position(|&s| s == dead).unwrap()];
    let target = recorder.to;
    let late = recorder
        .batch
        .lock()
        .unwrap()
        .clone()
        .expect("the dead store sent a hibernate batch");
    cluster.transport().clear_filters();
    let live: Vec<u64> = ids.iter().copied().filter(|&s| s != dead).collect();
    let led = cluster.store(live[0]).unwrap().hibernating_under(dead);
    assert_eq!(
        led,
        cluster.store(live[1]).unwrap().hibernating_under(dead),
        "both followers sleep under the same leaders"
    );
    assert!(!led.is_empty());
    let old_epoch = cluster.store(dead).unwrap().liveness_epoch();
    let before: Vec<u64> = live
        .iter()
        .map(|&s| metrics(&cluster, s).wakes(WakeReason::LeaderStoreDown))
        .collect();
    cluster.stop_store(dead);
    assert!(
        eventually(|| live.iter().all(|&s| cluster
            .store(s)
            .unwrap()
            .hibernating_under(dead)
            .is_empty())),
        "regions still asleep under the dead store"
    );
    // While the store is down, its late batch revives nothing.
    assert_late_batch_dropped(&cluster, target, late.clone(), "of the dead store");
    assert!(
        eventually(|| sum(&cluster, |m| m.leaders.load(Ordering::Relaxed) as u64) == MANY_REGIONS),
        "{} of {MANY_REGIONS} regions have a leader: {}",
        cluster.leader_count(),
        state(&cluster)
    );
    for (&s, b) in live.iter().zip(&before) {
        let m = metrics(&cluster, s);
        assert!(m.support_withdrawals.load(Ordering::Relaxed) >= 1);
        assert!(
            m.wakes(WakeReason::LeaderStoreDown) > *b,
            "store {s} woke nothing for the withdrawal"
        );
    }
    // The survivors' regions sleep again, under the new leaders.
    assert!(
        eventually(|| all_asleep(&cluster, MANY_REGIONS)),
        "regions did not sleep again after the failover: {}",
        state(&cluster)
    );

    // The dead store comes back in a new life; the batch of its old life
    // is dropped whole.
    let withdrawals = metrics(&cluster, target)
        .support_withdrawals
        .load(Ordering::Relaxed);
    cluster.start_store(dead).unwrap();
    assert!(cluster.store(dead).unwrap().liveness_epoch() > old_epoch);
    assert!(
        eventually(|| metrics(&cluster, target)
            .support_withdrawals
            .load(Ordering::Relaxed)
            > withdrawals),
        "store {target} never heard the new life of store {dead}"
    );
    assert_late_batch_dropped(&cluster, target, late, "of an older life");
    cluster.shutdown();
}

/// The store leading the most sleeping regions restarts at once (before
/// its silence could be noticed): its new life tells the others, the
/// regions asleep under its old leaders wake, and every region has a
/// leader again and sleeps.
#[test]
fn a_leader_store_restart_wakes_its_regions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    let ids = cluster.store_ids().to_vec();
    let leader = *ids
        .iter()
        .max_by_key(|&&id| metrics(&cluster, id).leaders.load(Ordering::Relaxed))
        .unwrap();
    let others: Vec<u64> = ids.iter().copied().filter(|&s| s != leader).collect();
    let led = cluster.store(others[0]).unwrap().hibernating_under(leader);
    assert!(!led.is_empty());
    let woke = wakes(&cluster, WakeReason::LeaderStoreDown);
    cluster.stop_store(leader);
    cluster.start_store(leader).unwrap();
    assert!(
        eventually(|| wakes(&cluster, WakeReason::LeaderStoreDown) >= woke + led.len() as u64),
        "the regions asleep under the restarted store did not wake: {}",
        state(&cluster)
    );
    assert!(
        eventually(|| cluster.leader_count() == REGIONS && all_asleep(&cluster, REGIONS)),
        "regions without a leader or awake after the restart: {}",
        state(&cluster)
    );
    cluster.shutdown();
}

/// Election timeouts, in base ticks, of the follower-restart test: long
/// against the few ticks the sleeping leaders' beats take to reach the
/// restarted store, so its peers' clocks never run out first.
const RESTART_ELECTION_TICKS: usize = 30;

/// A store that leads no region restarts while every region sleeps: the
/// sleeping leaders send its peers their hibernate beats again (they
/// stay asleep), and its peers, which lost track of their leaders, take
/// them up and sleep too. No region wakes on the other stores, nobody
/// campaigns (not even a pre-vote), and every leader stays where it was.
/// (Before, each of its peers ran its election clock out and pre-voted,
/// waking its region on every store: at 100,000 regions that wake storm
/// stalled the cluster's writes for seconds.)
#[test]
fn a_follower_store_restart_wakes_no_region() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        election_ticks: RESTART_ELECTION_TICKS,
        ..config(TICK_MS)
    };
    let mut cluster = bootstrap(&dir, REGIONS, cfg);
    let restarted = 3;
    let client = cluster.client(ClientConfig::default());
    let leader_store = |cluster: &Cluster, region: u64| {
        cluster
            .store(1)
            .and_then(|s| {
                s.handle()
                    .region_status(region, Duration::from_secs(1))
                    .ok()
            })
            .and_then(|st| st.leader)
            .map(|l| l.store_id)
    };
    for r in cluster.regions().to_vec() {
        assert!(
            eventually(|| match leader_store(&cluster, r.id) {
                Some(s) if s != restarted => true,
                Some(_) => {
                    let _ = client.transfer_leader(r.id, 1);
                    false
                }
                None => false,
            }),
            "region {} kept its leader on store {restarted}",
            r.id
        );
    }
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    let survivors = [1, 2];
    // The survivors' wakes, by reason.
    let survivor_wakes = |cluster: &Cluster| -> Vec<[u64; 5]> {
        survivors
            .iter()
            .map(|&s| {
                let m = metrics(cluster, s);
                std::array::from_fn(|i| m.wakes_by_reason[i].load(Ordering::Relaxed))
            })
            .collect()
    };
    let woke_before = survivor_wakes(&cluster);
    // Vote and pre-vote requests of the survivors (the restarted store
    // counts from zero again).
    let survivor_votes = |cluster: &Cluster| {
        survivors
            .iter()
            .map(|&s| {
                let m = metrics(cluster, s);
                m.sent_of_type(MessageType::MsgRequestPreVote)
                    + m.sent_of_type(MessageType::MsgRequestVote)
            })
            .sum::<u64>()
    };
    let votes_before = survivor_votes(&cluster);
    cluster.stop_store(restarted);
    cluster.start_store(restarted).unwrap();
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "the restarted store's peers did not sleep: {}",
        state(&cluster)
    );
    assert_eq!(
        survivor_wakes(&cluster),
        woke_before,
        "a region woke: {}",
        state(&cluster)
    );
    assert_eq!(
        survivor_votes(&cluster),
        votes_before,
        "a survivor campaigned"
    );
    let m = metrics(&cluster, restarted);
    assert_eq!(
        m.sent_of_type(MessageType::MsgRequestPreVote)
            + m.sent_of_type(MessageType::MsgRequestVote),
        0,
        "the restarted store campaigned"
    );
    assert_eq!(cluster.leader_count(), REGIONS);
    assert_eq!(
        metrics(&cluster, restarted).leaders.load(Ordering::Relaxed),
        0
    );
    cluster.shutdown();
}

/// A follower store dies: its regions' leaders hibernate with the live
/// follower alone (the dead store is *lagging*), so nothing stays awake
/// for it. When it comes back, the leaders it lagged behind wake, catch it
/// up (it gets the writes it missed) and sleep again.
#[test]
fn a_dead_follower_store_does_not_keep_regions_awake() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    let dead = 3;
    cluster.stop_store(dead);
    let client = cluster.client(ClientConfig::default());
    // A write to every region: the ones led from the dead store elect new
    // leaders first.
    for r in cluster.regions().to_vec() {
        client.put(&key_in(&r), b"while-down").unwrap();
    }
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "regions stayed awake for a dead follower store: {}",
        state(&cluster)
    );
    let back = wakes(&cluster, WakeReason::LaggingStoreBack);
    cluster.start_store(dead).unwrap();
    assert!(
        eventually(|| wakes(&cluster, WakeReason::LaggingStoreBack) > back),
        "no leader woke when its lagging store came back"
    );
    let engine = cluster.store(dead).unwrap().engine().clone();
    assert!(
        eventually(|| cluster.regions().iter().all(|r| {
            engine
                .get(Cf::Default, &keys::data_key(&key_in(r)))
                .ok()
                .flatten()
                .as_deref()
                == Some(b"while-down".as_slice())
        })),
        "the store that came back did not catch up"
    );
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "regions did not sleep again with the store back"
    );
    cluster.shutdown();
}

/// Drops each hibernate request with probability `p` (seeded): followers
/// that miss one stay awake while their leader sleeps.
struct DropSleepRequests {
    p: f64,
    rng: Mutex<ChaCha8Rng>,
    dropped: std::sync::atomic::AtomicU64,
}

impl Filter for DropSleepRequests {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        let mut rng = self.rng.lock().unwrap();
        for m in msgs.iter_mut() {
            if let Some(hb) = m.heartbeats.as_mut() {
                hb.beats.retain(|b| {
                    let drop = b.quiesce && rng.random_bool(self.p);
                    if drop {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    !drop
                });
            }
        }
    }
}

/// Hibernate requests are lost at random: a follower that missed one wakes
/// its leader instead of campaigning, so no region holds an election (not
/// even a pre-vote), every region keeps its leader, and once the network
/// is reliable again every region sleeps.
#[test]
fn lost_hibernate_beats_cause_no_election() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    let seed = history_seed(5);
    let filter = Arc::new(DropSleepRequests {
        p: 0.3,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        dropped: Default::default(),
    });
    let before = votes(&cluster);
    let id = cluster.transport().add_filter(filter.clone());
    // Many idle windows.
    std::thread::sleep(Duration::from_millis(TICK_MS * 150));
    assert!(
        filter.dropped.load(Ordering::Relaxed) > 0,
        "no request was dropped (seed {seed})"
    );
    assert_eq!(votes(&cluster), before, "an election ran (seed {seed})");
    assert_eq!(cluster.leader_count(), REGIONS, "seed {seed}");
    cluster.transport().remove_filter(id);
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "regions did not all sleep once requests got through (seed {seed})"
    );
    assert_eq!(votes(&cluster), before, "an election ran (seed {seed})");
    cluster.shutdown();
}

/// Holds a beats batch's plain heartbeats back (with probability `p` per
/// batch, seeded; one batch's worth per store pair at a time) and delivers
/// them at the end of the next batch to the same store: when that batch
/// carries its leader's request to sleep, a follower sees the request
/// first and that leader's last heartbeat after it. (A leader sends no
/// heartbeat in the round it sleeps in, so the two never share a batch.)
struct HeartbeatsLate {
    p: f64,
    rng: Mutex<ChaCha8Rng>,
    /// Held heartbeats by (from store, to store).
    held: Mutex<HashMap<(u64, u64), Vec<Beat>>>,
    /// Late heartbeats delivered behind their own region's request to
    /// sleep.
    reordered: std::sync::atomic::AtomicU64,
}

impl Filter for HeartbeatsLate {
    fn filter(&self, msgs: &mut Vec<RaftMessage>) {
        let mut rng = self.rng.lock().unwrap();
        let mut held = self.held.lock().unwrap();
        for m in msgs.iter_mut() {
            let Some(hb) = m.heartbeats.as_mut() else {
                continue;
            };
            let key = (hb.from_store, hb.to_store);
            if let Some(late) = held.remove(&key) {
                let behind_request = late.iter().any(|l| {
                    hb.beats
                        .iter()
                        .any(|b| b.quiesce && b.region_id == l.region_id)
                });
                if behind_request {
                    self.reordered.fetch_add(1, Ordering::Relaxed);
                }
                hb.beats.extend(late);
                continue;
            }
            let plain = |b: &Beat| !b.quiesce && b.context.is_empty();
            if hb.beats.iter().any(plain) && rng.random_bool(self.p) {
                let (late, kept): (Vec<Beat>, Vec<Beat>) =
                    std::mem::take(&mut hb.beats).into_iter().partition(plain);
                hb.beats = kept;
                held.insert(key, late);
            }
        }
    }
}

/// A follower sees its leader's last heartbeat after the request to sleep
/// (reordered): it wakes again while the leader sleeps, then wakes the
/// leader instead of campaigning. No region holds an election, every
/// region keeps its leader, and once the order is right again every region
/// sleeps.
#[test]
fn reordered_hibernate_beats_cause_no_election() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    let seed = history_seed(9);
    let filter = Arc::new(HeartbeatsLate {
        p: 0.5,
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        held: Mutex::new(HashMap::new()),
        reordered: Default::default(),
    });
    let before = votes(&cluster);
    let nudged = wakes(&cluster, WakeReason::PeerMessage);
    let id = cluster.transport().add_filter(filter.clone());
    std::thread::sleep(Duration::from_millis(TICK_MS * 150));
    assert!(
        filter.reordered.load(Ordering::Relaxed) > 0,
        "nothing was reordered (seed {seed})"
    );
    assert!(
        wakes(&cluster, WakeReason::PeerMessage) > nudged,
        "no follower woken by a late heartbeat woke its leader (seed {seed})"
    );
    assert_eq!(
        votes(&cluster),
        before,
        "an election ran (seed {seed}): {}",
        state(&cluster)
    );
    assert_eq!(cluster.leader_count(), REGIONS, "seed {seed}");
    cluster.transport().remove_filter(id);
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "regions did not all sleep once the order was right (seed {seed})"
    );
    assert_eq!(votes(&cluster), before, "an election ran (seed {seed})");
    cluster.shutdown();
}

/// A store cut off from both others for several support durations: each
/// side withdraws its support from the other. Once the network heals they
/// support each other again (each learns the other's withdrawal from a
/// batch it still drops, and echoes it), every region has a leader, and
/// every region sleeps again (a follower sleeps only under a supported
/// leader store).
#[test]
fn support_comes_back_after_a_healed_partition() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(&dir, REGIONS, config(TICK_MS));
    assert!(
        eventually(|| all_asleep(&cluster, REGIONS)),
        "not every region hibernated: {}",
        state(&cluster)
    );
    let cut = 3;
    let withdrawals =
        |c: &Cluster, s: u64| metrics(c, s).support_withdrawals.load(Ordering::Relaxed);
    let before: Vec<u64> = cluster
        .store_ids()
        .iter()
        .map(|&s| withdrawals(&cluster, s))
        .collect();
    let id = cluster.transport().isolate(cut);
    assert!(
        eventually(|| cluster
            .store_ids()
            .iter()
            .zip(&before)
            .all(|(&s, &b)| withdrawals(&cluster, s) > b)),
        "the stores did not withdraw support from each other"
    );
    cluster.transport().remove_filter(id);
    assert!(
        eventually(|| cluster.leader_count() == REGIONS && all_asleep(&cluster, REGIONS)),
        "regions without a leader or awake after the partition healed: {}",
        state(&cluster)
    );
    cluster.shutdown();
}

/// scale.md T8 (a conf change while hibernating): a learner added to a
/// sleeping region on a store that joined later wakes the region, is
/// initialized and catches up, and only then does the region sleep again:
/// once all four peers sleep, the learner holds the write made before it
/// existed and has applied as far as the leader.
#[test]
fn a_learner_added_to_a_sleeping_region_catches_up_before_it_sleeps_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = bootstrap(&dir, 1, config(TICK_MS));
    let region = cluster.regions()[0].clone();
    let leader = flotilla_tests::harness::wait_leader(&cluster, region.id).expect("a leader");
    let client = cluster.client(ClientConfig::default());
    client.put(&key_in(&region), b"before").unwrap();
    assert!(
        eventually(|| all_asleep(&cluster, 1)),
        "the region never slept: {}",
        state(&cluster)
    );
    let woken = all_wakes(&cluster);
    cluster.add_store(4).unwrap();
    let id = cluster.store(leader).unwrap().alloc_id().unwrap();
    let learner = Peer {
        id,
        store_id: 4,
        role: PeerRole::Learner as i32,
    };
    let added = (0..200).find_map(|_| {
        match client.change_peer(region.id, ConfChangeType::AddLearnerNode, learner) {
            Ok(r) => Some(r),
            Err(e) if e.is_retryable() => {
                std::thread::sleep(Duration::from_millis(TICK_MS));
                None
            }
            Err(e) => panic!("adding the learner: {e}"),
        }
    });
    assert!(added.is_some(), "the learner was never added");
    assert!(all_wakes(&cluster) > woken, "the conf change woke nothing");
    assert!(
        eventually(|| all_asleep(&cluster, 1)),
        "the region did not sleep again with its learner: {}",
        state(&cluster)
    );
    let status = |store: u64| {
        cluster
            .store(store)
            .unwrap()
            .handle()
            .region_status(region.id, Duration::from_secs(5))
            .unwrap()
    };
    let (l, n) = (status(leader), status(4));
    assert_eq!(n.peer.role(), PeerRole::Learner);
    assert_eq!(
        n.applied_index, l.applied_index,
        "asleep before the learner caught up"
    );
    assert_eq!(n.last_index, l.last_index);
    let engine = cluster.store(4).unwrap().engine().clone();
    let held = engine
        .get(Cf::Default, &keys::data_key(&key_in(&region)))
        .unwrap();
    assert_eq!(held.as_deref(), Some(&b"before"[..]));
    cluster.shutdown();
}

/// scale.md T10, leader side: a ReadIndex read (no lease) of a sleeping
/// region wakes its leader, whose ReadIndex heartbeat goes out at once
/// (not at the next coalescing flush), and returns the last write; the
/// region sleeps again after.
#[test]
fn a_read_index_read_of_a_sleeping_region_sees_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        lease_read: false,
        ..config(TICK_MS)
    };
    let cluster = bootstrap(&dir, REGIONS, cfg);
    let client = cluster.client(ClientConfig::default());
    let regions = cluster.regions().to_vec();
    for (i, r) in regions.iter().enumerate() {
        client.put(&key_in(r), format!("v{i}").as_bytes()).unwrap();
    }
    for round in 0..2 {
        assert!(
            eventually(|| all_asleep(&cluster, REGIONS)),
            "round {round}: not every region slept: {}",
            state(&cluster)
        );
        let urgent = sum(&cluster, |m| {
            m.heartbeat_urgent_flushes.load(Ordering::Relaxed)
        });
        for (i, r) in regions.iter().enumerate() {
            let got = client.get(&key_in(r)).unwrap();
            assert_eq!(got, Some(format!("v{i}").into_bytes()), "region {}", r.id);
        }
        assert!(
            sum(&cluster, |m| m
                .heartbeat_urgent_flushes
                .load(Ordering::Relaxed))
                > urgent,
            "no ReadIndex round flushed its beats at once"
        );
    }
    cluster.shutdown();
}
