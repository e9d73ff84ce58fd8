//! What the load tool reads while it runs: the process's RSS and CPU time
//! from `/proc`, and the stores' [`StoreMetrics`] summed over the cluster.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_raftstore::store::{Cluster, StoreMetrics, WakeReason};

/// Linux reports process times in `USER_HZ` ticks, fixed at 100 per second
/// for user space on every architecture.
const CLOCK_TICKS_PER_S: f64 = 100.0;
/// `utime` is the 14th field of `/proc/<pid>/stat`, `stime` the 15th; the
/// fields after the command name start with the 3rd.
const UTIME_AFTER_COMM: usize = 14 - 3;
/// `stime`, counted the same way.
const STIME_AFTER_COMM: usize = 15 - 3;

/// The process's resident set size (bytes), if `/proc` tells.
pub fn rss_bytes() -> Option<u64> {
    crate::demo::rss_bytes()
}

/// User plus system CPU time of the process so far, in clock ticks.
pub fn cpu_ticks() -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` from the text of `/proc/<pid>/stat` (the command name,
/// in parentheses, may hold spaces and parentheses itself).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(UTIME_AFTER_COMM)?.parse().ok()?;
    let stime: u64 = fields.get(STIME_AFTER_COMM)?.parse().ok()?;
    utime.checked_add(stime)
}

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
    /// Raft messages handed to the transport (a coalesced beat batch is one).
    pub raft_messages: u64,
    /// Store-liveness messages that went on the wire alone.
    pub liveness_messages: u64,
    /// Synced raft writes (fsyncs).
    pub synced_writes: u64,
    /// Times a peer went to sleep.
    pub hibernations: u64,
    /// Wakes because store liveness withdrew support from the leader's store.
    pub leader_store_down_wakes: u64,
    /// Times a store withdrew support from another.
    pub support_withdrawals: u64,
}

impl Counters {
    /// The counters of one store.
    pub fn of(m: &StoreMetrics) -> Counters {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        Counters {
            raft_messages: get(&m.raft_messages_sent),
            liveness_messages: get(&m.liveness_messages_sent),
            synced_writes: get(&m.raft_synced_writes),
            hibernations: get(&m.hibernations),
            leader_store_down_wakes: m.wakes(WakeReason::LeaderStoreDown),
            support_withdrawals: get(&m.support_withdrawals),
        }
    }

    /// Messages on the wire: raft messages plus lone liveness messages.
    pub fn wire_messages(&self) -> u64 {
        self.raft_messages + self.liveness_messages
    }

    /// What grew from `earlier` to `self`, field by field; a field that
    /// went down (its store restarted) counts from zero.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let d = |now: u64, then: u64| now.checked_sub(then).unwrap_or(now);
        Counters {
            raft_messages: d(self.raft_messages, earlier.raft_messages),
            liveness_messages: d(self.liveness_messages, earlier.liveness_messages),
            synced_writes: d(self.synced_writes, earlier.synced_writes),
            hibernations: d(self.hibernations, earlier.hibernations),
            leader_store_down_wakes: d(
                self.leader_store_down_wakes,
                earlier.leader_store_down_wakes,
            ),
            support_withdrawals: d(self.support_withdrawals, earlier.support_withdrawals),
        }
    }

    fn add(&mut self, o: &Counters) {
        self.raft_messages += o.raft_messages;
        self.liveness_messages += o.liveness_messages;
        self.synced_writes += o.synced_writes;
        self.hibernations += o.hibernations;
        self.leader_store_down_wakes += o.leader_store_down_wakes;
        self.support_withdrawals += o.support_withdrawals;
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
        let load = |g: &std::sync::atomic::AtomicI64| g.load(Ordering::Relaxed).max(0) as u64;
        let mut g = Gauges::default();
        for &id in cluster.store_ids() {
            if let Some(s) = cluster.store(id) {
                let m = s.metrics();
                g.awake_peers += load(&m.awake_peers);
                g.hibernated_peers += load(&m.hibernated_peers);
                g.leaders += load(&m.leaders);
                g.running_stores += 1;
            }
        }
        g
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
    cluster.store(id).map_or(0, |s| {
        s.metrics().leaders.load(Ordering::Relaxed).max(0) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let stat = "4242 (tokio rt) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 500";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

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

    #[test]
    fn this_process_has_cpu_time_and_rss() {
        assert!(cpu_ticks().is_some());
        assert!(rss_bytes().is_some_and(|b| b > 0));
    }
}
