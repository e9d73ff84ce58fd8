//! What the load tool reads while it runs: the process's RSS and CPU time
//! from `/proc`, and the stores' [`StoreMetrics`] summed over the cluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::store::{Cluster, StoreMetrics, WakeReason};

pub use flotilla_server::proc_stats::{
    CLOCK_TICKS_PER_S, CPU_TICK, cpu_ticks, peak_rss_bytes, rss_bytes,
};

/// Measures the CPU cores the process uses over a span of wall time.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    started: Instant,
    ticks: Option<u64>,
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn start() -> CpuMeter {
        CpuMeter {
            started: Instant::now(),
            ticks: cpu_ticks(),
        }
    }

    /// Cores used on average since [`CpuMeter::start`] (1.0 = one core
    /// busy all the time), if `/proc` tells.
    pub fn cores_used(&self) -> Option<f64> {
        let spent = cpu_ticks()?.checked_sub(self.ticks?)? as f64 / CLOCK_TICKS_PER_S;
        let wall = self.started.elapsed().as_secs_f64();
        (wall > 0.0).then(|| spent / wall)
    }
}

/// Counters of the stores, summed over them. [`Meter`] keeps them growing
/// across store restarts (a restarted store counts from zero again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Wire messages: every message handed to the transport (raft
    /// messages, coalesced heartbeat batches and bare liveness beats, one
    /// each).
    pub raft_messages: u64,
    /// Of those, the heartbeat batches: batches of beats and bare liveness
    /// beats.
    pub heartbeat_batches: u64,
    /// Of those, the bare liveness beats (sent by the store clock to a store
    /// no batch went to in a heartbeat interval).
    pub liveness_messages: u64,
    /// Synced raft writes (fsyncs).
    pub synced_writes: u64,
    /// Ticks delivered to peers (only awake peers get them).
    pub peer_ticks: u64,
    /// Ticks not sent to awake peers: they could only count.
    pub silent_ticks: u64,
    /// Times a peer went to sleep.
    pub hibernations: u64,
    /// Times a peer woke, for any reason.
    pub wakes: u64,
    /// Wakes because store liveness withdrew support from the leader's store.
    pub leader_store_down_wakes: u64,
    /// Wakes of leaders because a follower's store they slept without came
    /// back.
    pub lagging_store_back_wakes: u64,
    /// Wakes by a raft message from a peer other than the leader.
    pub peer_message_wakes: u64,
    /// Wakes by a raft message from the leader.
    pub leader_message_wakes: u64,
    /// Times a store withdrew support from another.
    pub support_withdrawals: u64,
    /// Pre-vote requests the peers sent (one per voter asked).
    pub pre_vote_requests: u64,
    /// Vote requests the peers sent (one per voter asked).
    pub vote_requests: u64,
}

impl Counters {
    /// The counters of one store.
    pub fn of(m: &StoreMetrics) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            raft_messages: get(&m.raft_messages_sent),
            heartbeat_batches: get(&m.heartbeat_batches_sent),
            liveness_messages: get(&m.liveness_messages_sent),
            synced_writes: get(&m.raft_synced_writes),
            peer_ticks: get(&m.peer_ticks),
            silent_ticks: get(&m.ticks_silent),
            hibernations: get(&m.hibernations),
            wakes: m.wakes_by_reason.iter().map(get).sum(),
            leader_store_down_wakes: m.wakes(WakeReason::LeaderStoreDown),
            lagging_store_back_wakes: m.wakes(WakeReason::LaggingStoreBack),
            peer_message_wakes: m.wakes(WakeReason::PeerMessage),
            leader_message_wakes: m.wakes(WakeReason::LeaderMessage),
            support_withdrawals: get(&m.support_withdrawals),
            pre_vote_requests: m.sent_of_type(MessageType::MsgRequestPreVote),
            vote_requests: m.sent_of_type(MessageType::MsgRequestVote),
        }
    }

    /// Messages on the wire, of every kind.
    pub fn wire_messages(&self) -> u64 {
        self.raft_messages
    }

    /// What grew from `earlier` to `self`, field by field; a field that
    /// went down (its store restarted) counts from zero.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        Counters {
            raft_messages: d(self.raft_messages, earlier.raft_messages),
            heartbeat_batches: d(self.heartbeat_batches, earlier.heartbeat_batches),
            liveness_messages: d(self.liveness_messages, earlier.liveness_messages),
            synced_writes: d(self.synced_writes, earlier.synced_writes),
            peer_ticks: d(self.peer_ticks, earlier.peer_ticks),
            silent_ticks: d(self.silent_ticks, earlier.silent_ticks),
            hibernations: d(self.hibernations, earlier.hibernations),
            wakes: d(self.wakes, earlier.wakes),
            leader_store_down_wakes: d(
                self.leader_store_down_wakes,
                earlier.leader_store_down_wakes,
            ),
            lagging_store_back_wakes: d(
                self.lagging_store_back_wakes,
                earlier.lagging_store_back_wakes,
            ),
            peer_message_wakes: d(self.peer_message_wakes, earlier.peer_message_wakes),
            leader_message_wakes: d(self.leader_message_wakes, earlier.leader_message_wakes),
            support_withdrawals: d(self.support_withdrawals, earlier.support_withdrawals),
            pre_vote_requests: d(self.pre_vote_requests, earlier.pre_vote_requests),
            vote_requests: d(self.vote_requests, earlier.vote_requests),
        }
    }

    fn add(&mut self, o: &Counters) {
        self.raft_messages += o.raft_messages;
        self.heartbeat_batches += o.heartbeat_batches;
        self.liveness_messages += o.liveness_messages;
        self.synced_writes += o.synced_writes;
        self.peer_ticks += o.peer_ticks;
        self.silent_ticks += o.silent_ticks;
        self.hibernations += o.hibernations;
        self.wakes += o.wakes;
        self.leader_store_down_wakes += o.leader_store_down_wakes;
        self.lagging_store_back_wakes += o.lagging_store_back_wakes;
        self.peer_message_wakes += o.peer_message_wakes;
        self.leader_message_wakes += o.leader_message_wakes;
        self.support_withdrawals += o.support_withdrawals;
        self.pre_vote_requests += o.pre_vote_requests;
        self.vote_requests += o.vote_requests;
    }

    /// Per second over `span` of one counter.
    pub fn rate(count: u64, span: Duration) -> f64 {
        count as f64 / span.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Sums the stores' counters into totals that only grow, however stores
/// stop and restart. Observe before stopping a store: what it counted since
/// the last observation is lost with it.
#[derive(Debug, Default)]
pub struct Meter {
    last: HashMap<u64, Counters>,
    total: Counters,
}

impl Meter {
    /// Reads every running store and returns the totals so far.
    pub fn observe(&mut self, cluster: &Cluster) -> Counters {
        for &id in cluster.store_ids() {
            match cluster.store(id) {
                Some(store) => {
                    let now = Counters::of(store.metrics());
                    let before = self.last.insert(id, now).unwrap_or_default();
                    self.total.add(&now.since(&before));
                }
                None => {
                    self.last.remove(&id);
                }
            }
        }
        self.total
    }
}

/// Gauges of the running stores, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Peers awake (ticking), over all running stores.
    pub awake_peers: u64,
    /// Peers hibernating, over all running stores.
    pub hibernated_peers: u64,
    /// Leaders, over all running stores.
    pub leaders: u64,
    /// Stores running.
    pub running_stores: u64,
}

impl Gauges {
    /// Reads the gauges of every running store.
    pub fn of(cluster: &Cluster) -> Gauges {
        let mut g = Gauges::default();
        for m in running(cluster, None) {
            g.add(&Gauges::of_store(m));
        }
        g
    }

    /// The gauges of one store (as of its last store tick).
    pub fn of_store(m: &StoreMetrics) -> Gauges {
        let load = |g: &AtomicI64| u64::try_from(g.load(Ordering::Relaxed)).unwrap_or(0);
        Gauges {
            awake_peers: load(&m.awake_peers),
            hibernated_peers: load(&m.hibernated_peers),
            leaders: load(&m.leaders),
            running_stores: 1,
        }
    }

    fn add(&mut self, o: &Gauges) {
        self.awake_peers += o.awake_peers;
        self.hibernated_peers += o.hibernated_peers;
        self.leaders += o.leaders;
        self.running_stores += o.running_stores;
    }

    /// Awake regions, estimated as awake peers per running store (every
    /// store hosts one peer of every region).
    pub fn awake_regions(&self) -> u64 {
        self.awake_peers / self.running_stores.max(1)
    }

    /// Hibernated regions, estimated the same way.
    pub fn hibernated_regions(&self) -> u64 {
        self.hibernated_peers / self.running_stores.max(1)
    }
}

/// The leaders of store `id` now (0 if it is not running).
pub fn leaders_of(cluster: &Cluster, id: u64) -> u64 {
    cluster
        .store(id)
        .map_or(0, |s| Gauges::of_store(s.metrics()).leaders)
}

/// The metrics of every running store but `except`.
pub fn running(cluster: &Cluster, except: Option<u64>) -> impl Iterator<Item = &StoreMetrics> {
    cluster
        .store_ids()
        .iter()
        .filter(move |&&id| Some(id) != except)
        .filter_map(|&id| cluster.store(id))
        .map(|s| s.metrics())
}

/// Support withdrawals so far, summed over the running stores but `except`.
pub fn support_withdrawals(cluster: &Cluster, except: Option<u64>) -> u64 {
    running(cluster, except)
        .map(|m| m.support_withdrawals.load(Ordering::Relaxed))
        .sum()
}

/// The longest poll round since each store started (µs), over the running
/// stores but `except`.
pub fn max_poll_round_us(cluster: &Cluster, except: Option<u64>) -> u64 {
    running(cluster, except)
        .map(|m| m.poll_round_max_micros.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_a_restart() {
        let before = Counters {
            raft_messages: 100,
            synced_writes: 10,
            ..Counters::default()
        };
        let after_restart = Counters {
            raft_messages: 7,
            synced_writes: 12,
            ..Counters::default()
        };
        let d = after_restart.since(&before);
        assert_eq!(d.raft_messages, 7, "restarted: counts from zero");
        assert_eq!(d.synced_writes, 2);
    }
}
