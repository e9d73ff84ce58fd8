//! Store configuration, with serde defaults and validation.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Default base tick of the store clock, in milliseconds.
pub const DEFAULT_BASE_TICK_MS: u64 = 100;
/// Default election timeout in base ticks.
pub const DEFAULT_ELECTION_TICKS: usize = 10;
/// Default heartbeat interval in base ticks.
pub const DEFAULT_HEARTBEAT_TICKS: usize = 2;
/// Default largest entry a client may propose (bytes).
pub const DEFAULT_ENTRY_MAX_SIZE: u64 = 8 << 20;
/// Default bytes per append message.
pub const DEFAULT_MAX_SIZE_PER_MSG: u64 = 1 << 20;
/// Default in-flight appends per follower.
pub const DEFAULT_MAX_INFLIGHT_MSGS: usize = 256;
/// Default bound on a leader's uncommitted bytes.
pub const DEFAULT_MAX_UNCOMMITTED_SIZE: u64 = 128 << 20;
/// Default bound on queued messages per peer mailbox.
pub const DEFAULT_MAILBOX_CAPACITY: usize = 4096;
/// Default raft messages a peer handles per poll round.
pub const DEFAULT_MESSAGES_PER_TICK: usize = 256;
/// Default queue bound for inbound raft messages, as a multiple of
/// `mailbox_capacity`: raft messages keep queueing after client commands
/// are refused, so clients cannot starve the group of its own traffic.
pub const DEFAULT_RAFT_MESSAGE_CAPACITY: usize = 4 * DEFAULT_MAILBOX_CAPACITY;
/// Default longest key a request may name (bytes).
pub const DEFAULT_MAX_KEY_SIZE: usize = 8 << 10;
/// Default most pairs one scan may ask for.
pub const DEFAULT_MAX_SCAN_LIMIT: u32 = 10_000;
/// Default bound on the key and value bytes of one scan response (4 MiB):
/// a page stops at the pair that reaches it, well under the network's
/// message limit.
pub const DEFAULT_MAX_SCAN_BYTES: u64 = 4 << 20;
/// Default bound on the bytes of committed entries handed to apply at once
/// (one apply task never holds a region's whole log).
pub const DEFAULT_MAX_APPLY_BYTES_PER_READY: u64 = 16 << 20;
/// The least spacing of two ticks a peer receives, in percent of the base
/// tick (some slack for the clock thread's jitter; see
/// [`Config::min_tick_spacing`]).
pub const MIN_TICK_SPACING_PERCENT: u64 = 90;
/// Longest base tick accepted (ms): one minute.
pub const MAX_BASE_TICK_MS: u64 = 60_000;
/// Most ticks an election timeout may span.
pub const MAX_ELECTION_TICKS: usize = 100_000;
/// Most threads in one poller pool.
pub const MAX_POOL_SIZE: usize = 256;
/// Most keys one split may take (`split_max_keys`): each new region takes
/// ids and a region's worth of state on every store.
pub const MAX_SPLIT_MAX_KEYS: u64 = 10_000;
/// Default idle ticks before a leader tries to hibernate its region: a
/// sleep and a wake cost about as many messages as one and a half
/// heartbeat rounds, so a region quiet for longer than that sleeps
/// (`flotilla demo --regions 10000 --clients 256 --write-ratio 1`: about
/// 1.3x the writes/s of waiting a whole election timeout, with 2.3x fewer
/// heartbeats). A leader holding a lease sleeps only once it expired.
pub const DEFAULT_HIBERNATE_IDLE_TICKS: usize = 3;
/// Default ticks between a leader's split checks: 10 s at the default
/// tick (TiKV's `split_region_check_tick_interval`).
pub const DEFAULT_SPLIT_CHECK_TICKS: usize = 100;

/// Default `Config::merge_max_log_gap` (TiKV's is 10; ours allows a
/// busier region to merge, at a longer tail carried).
pub const DEFAULT_MERGE_MAX_LOG_GAP: u64 = 64;

/// Default `Config::merge_check_ticks` (2 s at the default 100 ms tick,
/// TiKV's `merge_check_tick_interval`).
pub const DEFAULT_MERGE_CHECK_TICKS: usize = 20;
/// Default ticks between a leader's raft log checks: 3 s at the default
/// tick (TiKV's `raft_log_gc_tick_interval`).
pub const DEFAULT_RAFT_LOG_GC_TICK_TICKS: usize = 30;
/// Default compactable entries that make a leader compact at once (TiKV's
/// `raft_log_gc_threshold`).
pub const DEFAULT_RAFT_LOG_GC_THRESHOLD: u64 = 50;
/// Default checks after which a shorter log is compacted too (TiKV's
/// `raft_log_reserve_max_ticks`).
pub const DEFAULT_RAFT_LOG_GC_RESERVE_CHECKS: u32 = 6;
/// Default log length (entries) past which a leader compacts even what a
/// follower has not matched (forced log GC; the follower then gets a
/// snapshot): TiKV's `raft_log_gc_count_limit` (3/4 of a 96 MiB region in
/// 1 KiB entries).
pub const DEFAULT_RAFT_LOG_GC_COUNT_LIMIT: u64 = 73_728;
/// Default snapshots a store receives at once (more are refused as busy,
/// and their leaders send again later).
pub const DEFAULT_SNAP_MAX_RECEIVING: usize = 4;
/// Default clock-drift margin taken off a leader lease (ms).
pub const DEFAULT_LEASE_DRIFT_MARGIN_MS: u64 = 100;

/// How a store runs. Every field has a default (`Config::default()` or an
/// empty TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Base tick of the store clock (ms). Elections and heartbeats count it.
    pub base_tick_ms: u64,
    /// Election timeout, in base ticks.
    pub election_ticks: usize,
    /// Heartbeat interval, in base ticks.
    pub heartbeat_ticks: usize,
    /// Serve reads from the leader's lease instead of a ReadIndex round
    /// while the lease is valid (see [`Config::lease_duration`]).
    pub lease_read: bool,
    /// Clock-drift margin taken off the lease (ms): how much faster than
    /// this store's clock another store's clock may run over one lease.
    pub lease_drift_margin_ms: u64,
    /// Largest entry a client may propose (bytes).
    pub entry_max_size: u64,
    /// Bytes per append message.
    pub max_size_per_msg: u64,
    /// In-flight appends per follower.
    pub max_inflight_msgs: usize,
    /// A leader's uncommitted bytes beyond which proposals are refused.
    pub max_uncommitted_size: u64,
    /// Raft poller threads.
    pub raft_pool_size: usize,
    /// Apply poller threads.
    pub apply_pool_size: usize,
    /// Let a raft poller apply the entries a round committed itself, in
    /// that round, when the region's apply delegate is idle with nothing
    /// of its own pending (otherwise they go to the apply pool as usual).
    /// It saves each write two hand-overs between threads (the task to
    /// the apply pool and its report back), which is most of what a write
    /// costs past its own work when thousands of regions each see a few
    /// writes a second. Off: every entry goes through the apply pool.
    pub apply_inline: bool,
    /// FSMs per poll round.
    pub max_batch_size: usize,
    /// Queued messages per peer mailbox before clients get `ServerIsBusy`.
    pub mailbox_capacity: usize,
    /// Queued messages per peer mailbox before inbound raft messages are
    /// dropped (counted in `StoreMetrics::raft_messages_dropped`); at least
    /// `mailbox_capacity`.
    pub raft_message_capacity: usize,
    /// Longest key a request may name (bytes).
    pub max_key_size: usize,
    /// Most pairs one scan may ask for.
    pub max_scan_limit: u32,
    /// Key and value bytes past which a scan response stops early (it
    /// always holds at least one pair, and says `more` when it stopped
    /// before its limit).
    pub max_scan_bytes: u64,
    /// Bytes of committed entries a Ready hands to apply at most. (One apply
    /// task joins a Ready's entries with those the write of that Ready
    /// committed, so a task may carry up to twice this.)
    pub max_apply_bytes_per_ready: u64,
    /// Messages a peer handles per poll round.
    pub messages_per_round: usize,
    /// fsync the raft write of every poll round that appends log entries.
    ///
    /// With `false`, only log appends go unsynced: a machine crash (not a
    /// process crash) may lose the newest entries of this store's log, and
    /// one such crash can lose acknowledged writes: a follower that counted
    /// toward an entry's quorum and then lost it may vote with a store that
    /// never had it, and the entry is overwritten. Use it only where that
    /// is acceptable. Changes of term and vote are always synced, so a
    /// store never votes twice in one term after a crash. A round that only
    /// moves the commit index writes nothing (the commit index is
    /// recovered from the applied index and the leader on restart).
    /// With log GC on, such a follower may also find the entries it lost
    /// compacted on the leader: it would need a snapshot, which stores do
    /// not install yet (the store stops, see `Store::fatal_error`).
    pub sync_log: bool,
    /// Let idle regions hibernate: no ticks, no messages until something
    /// wakes them (DESIGN §5).
    pub hibernate_regions: bool,
    /// Ticks a leader waits after its last command before it tries to
    /// hibernate its region (it tries again every this many ticks).
    pub hibernate_idle_ticks: usize,
    /// Ticks between a leader's raft log checks (log GC; only awake
    /// leaders check). 0 turns log GC off: the log then grows forever.
    pub raft_log_gc_tick_ticks: usize,
    /// Compactable entries that make a leader compact its log at once.
    pub raft_log_gc_threshold: u64,
    /// Checks after which a leader compacts a shorter log too.
    pub raft_log_gc_reserve_checks: u32,
    /// Log length (entries past the truncated index, up to the applied
    /// one) past which a leader compacts even what a follower (down, cut
    /// off, or slow) has not matched, keeping half of this; that follower
    /// then catches up by a snapshot. 0: never (a down follower then holds
    /// the log back until it returns).
    pub raft_log_gc_count_limit: u64,
    /// Snapshots this store receives at once; more are refused as busy
    /// (their leaders send again later). At least 1.
    pub snap_max_receiving: usize,
    /// Split keys one BatchSplit may carry (at least 1; checked by the
    /// leader that proposes it).
    pub split_max_keys: u64,
    /// Leader ticks between split checks (0: no split checker). A check
    /// runs only after writes of 1/16 of `region_split_size` since the
    /// last one.
    pub split_check_ticks: usize,
    /// Bytes (keys and values) past which the split checker splits a
    /// region at its middle key (TiKV's 96 MiB by default).
    pub region_split_size: u64,
    /// Keys past which the split checker splits a region.
    pub region_split_keys: u64,
    /// Entries a peer of a merge's source may lag its leader's log by
    /// when PrepareMerge is proposed (the target carries them; TiKV's
    /// `merge_max_log_gap`).
    pub merge_max_log_gap: u64,
    /// Ticks between a merging region's peers' tries to have the target
    /// commit the merge (or to roll it back).
    pub merge_check_ticks: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_tick_ms: DEFAULT_BASE_TICK_MS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            lease_read: false,
            lease_drift_margin_ms: DEFAULT_LEASE_DRIFT_MARGIN_MS,
            entry_max_size: DEFAULT_ENTRY_MAX_SIZE,
            max_size_per_msg: DEFAULT_MAX_SIZE_PER_MSG,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_uncommitted_size: DEFAULT_MAX_UNCOMMITTED_SIZE,
            raft_pool_size: 2,
            apply_pool_size: 1,
            apply_inline: true,
            max_batch_size: 256,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            raft_message_capacity: DEFAULT_RAFT_MESSAGE_CAPACITY,
            max_key_size: DEFAULT_MAX_KEY_SIZE,
            max_scan_limit: DEFAULT_MAX_SCAN_LIMIT,
            max_scan_bytes: DEFAULT_MAX_SCAN_BYTES,
            max_apply_bytes_per_ready: DEFAULT_MAX_APPLY_BYTES_PER_READY,
            messages_per_round: DEFAULT_MESSAGES_PER_TICK,
            sync_log: true,
            hibernate_regions: true,
            hibernate_idle_ticks: DEFAULT_HIBERNATE_IDLE_TICKS,
            raft_log_gc_tick_ticks: DEFAULT_RAFT_LOG_GC_TICK_TICKS,
            raft_log_gc_threshold: DEFAULT_RAFT_LOG_GC_THRESHOLD,
            raft_log_gc_reserve_checks: DEFAULT_RAFT_LOG_GC_RESERVE_CHECKS,
            raft_log_gc_count_limit: DEFAULT_RAFT_LOG_GC_COUNT_LIMIT,
            snap_max_receiving: DEFAULT_SNAP_MAX_RECEIVING,
            split_max_keys: super::admin::DEFAULT_SPLIT_MAX_KEYS,
            split_check_ticks: DEFAULT_SPLIT_CHECK_TICKS,
            region_split_size: super::split_check::DEFAULT_REGION_SPLIT_SIZE,
            region_split_keys: super::split_check::DEFAULT_REGION_SPLIT_KEYS,
            merge_max_log_gap: DEFAULT_MERGE_MAX_LOG_GAP,
            merge_check_ticks: DEFAULT_MERGE_CHECK_TICKS,
        }
    }
}

impl Config {
    /// Checks the settings can work together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.base_tick_ms == 0 || self.base_tick_ms > MAX_BASE_TICK_MS {
            return bad("base_tick_ms must be in 1..=60000");
        }
        if self.election_ticks > MAX_ELECTION_TICKS {
            return bad("election_ticks must be <= 100000");
        }
        if self.raft_pool_size > MAX_POOL_SIZE || self.apply_pool_size > MAX_POOL_SIZE {
            return bad("pool sizes must be <= 256");
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks must be > 0");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("election_ticks must be > heartbeat_ticks");
        }
        if self.raft_pool_size == 0 || self.apply_pool_size == 0 {
            return bad("pool sizes must be > 0");
        }
        if self.max_batch_size == 0 || self.mailbox_capacity == 0 || self.messages_per_round == 0 {
            return bad("max_batch_size, mailbox_capacity and messages_per_round must be > 0");
        }
        if self.entry_max_size == 0 || self.max_inflight_msgs == 0 {
            return bad("entry_max_size and max_inflight_msgs must be > 0");
        }
        // Raft's own checks of what it takes from here: refused there, a
        // store would open and then fail to create any peer.
        if self.max_inflight_msgs > crate::raft::MAX_INFLIGHT_MSGS_LIMIT {
            return bad("max_inflight_msgs must be <= 2^32 - 1");
        }
        if self.max_uncommitted_size == 0 {
            return bad("max_uncommitted_size must be > 0");
        }
        if self.raft_message_capacity < self.mailbox_capacity {
            return bad("raft_message_capacity must be >= mailbox_capacity");
        }
        if self.max_key_size == 0
            || self.max_scan_limit == 0
            || self.max_scan_bytes == 0
            || self.max_apply_bytes_per_ready == 0
        {
            return bad(
                "max_key_size, max_scan_limit, max_scan_bytes and max_apply_bytes_per_ready must be > 0",
            );
        }
        if self.hibernate_idle_ticks == 0 {
            return bad("hibernate_idle_ticks must be > 0");
        }
        if self.snap_max_receiving == 0 {
            return bad("snap_max_receiving must be > 0");
        }
        if self.split_max_keys == 0 || self.split_max_keys > MAX_SPLIT_MAX_KEYS {
            return bad("split_max_keys must be in 1..=10000");
        }
        if self.merge_max_log_gap == 0 || self.merge_check_ticks == 0 {
            return bad("merge_max_log_gap and merge_check_ticks must be > 0");
        }
        if self.region_split_size == 0 || self.region_split_keys == 0 {
            return bad("region_split_size and region_split_keys must be > 0");
        }
        if self.lease_read && self.lease_duration().is_none() {
            return bad(
                "lease_read needs (election_ticks - 1) * base_tick_ms > lease_drift_margin_ms",
            );
        }
        // What raft itself refuses would otherwise only show when the first
        // peer is created.
        self.raft_config(1)
            .validate()
            .map_err(|e| Error::Config(format!("raft: {e}")))
    }

    /// The consensus core's settings for this store's peer `peer_id` (the
    /// peer sets its applied index and, after a restart, vote refusal).
    pub fn raft_config(&self, peer_id: u64) -> crate::raft::Config {
        let mut rc = crate::raft::Config::new(peer_id);
        rc.election_tick = self.election_ticks;
        rc.heartbeat_tick = self.heartbeat_ticks;
        rc.max_size_per_msg = self.max_size_per_msg;
        rc.max_inflight_msgs = self.max_inflight_msgs;
        rc.max_uncommitted_size = self.max_uncommitted_size;
        rc.max_committed_size_per_ready = self.max_apply_bytes_per_ready;
        rc.check_quorum = true;
        // A commit reaches the followers on the next append, heartbeat or
        // sleep beat, not in an append of its own: half the appends of a
        // write to a quiet region (admin entries still go at once).
        rc.skip_bcast_commit = true;
        rc.pre_vote = true;
        rc.disable_proposal_forwarding = true;
        // Always Safe in the core: the lease is the store's (wall clock,
        // with a drift margin), not the core's tick-based one.
        rc.read_only_option = crate::raft::ReadOnlyOption::Safe;
        rc
    }

    /// The least time between two ticks a peer receives: the store drops a
    /// tick that comes sooner after the last one (ticks that queued behind
    /// a slow poller), so peers' clocks never run fast.
    pub fn min_tick_spacing(&self) -> std::time::Duration {
        std::time::Duration::from_micros(
            self.base_tick_ms
                .saturating_mul(1000)
                .saturating_mul(MIN_TICK_SPACING_PERCENT)
                / 100,
        )
    }

    /// How long a leader may serve reads from its lease after the send time
    /// of a heartbeat round a quorum acknowledged: the shortest time before
    /// another peer can win an election, less the clock-drift margin.
    ///
    /// A follower that heard the round refuses votes until it has counted
    /// `election_ticks` ticks after it (check-quorum; after a restart,
    /// `refuse_votes_after_start`); the first of them can come at once and
    /// the others at least [`Config::min_tick_spacing`] apart, so that is
    /// `(election_ticks - 1) * min_tick_spacing`. `None` if nothing is
    /// left.
    pub fn lease_duration(&self) -> Option<std::time::Duration> {
        let spacing = self.min_tick_spacing();
        let election =
            spacing.checked_mul(u32::try_from(self.election_ticks.saturating_sub(1)).ok()?)?;
        let lease =
            election.checked_sub(std::time::Duration::from_millis(self.lease_drift_margin_ms))?;
        (!lease.is_zero()).then_some(lease)
    }

    /// The request limits of this config.
    pub fn request_limits(&self) -> super::validate::RequestLimits {
        super::validate::RequestLimits {
            max_key_size: self.max_key_size,
            max_scan_limit: self.max_scan_limit,
            max_scan_bytes: self.max_scan_bytes,
        }
    }

    /// How long store liveness keeps supporting a remote store after it
    /// last heard it: one election timeout. Hibernating regions whose
    /// leader's store stays silent that long wake and elect a new leader.
    pub fn support_duration(&self) -> std::time::Duration {
        self.base_tick()
            .saturating_mul(u32::try_from(self.election_ticks).unwrap_or(u32::MAX))
    }

    /// How long the store clock waits for a batch to a remote store before
    /// sending it a bare liveness beat: a heartbeat interval and a tick, so
    /// no bare beat goes where the pollers' flush is merely a little late.
    pub fn liveness_beat_interval(&self) -> std::time::Duration {
        self.base_tick().saturating_mul(
            u32::try_from(self.heartbeat_ticks.saturating_add(1)).unwrap_or(u32::MAX),
        )
    }

    /// The base tick as a duration.
    pub fn base_tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.base_tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random configs checked per run.
    const CONFIG_CASES: u32 = 2048;

    fn arb_config() -> impl Strategy<Value = Config> {
        (
            (any::<u64>(), any::<usize>(), any::<usize>(), any::<bool>()),
            (any::<u64>(), any::<u64>(), any::<usize>(), any::<usize>()),
            (any::<usize>(), any::<usize>(), any::<usize>(), any::<u32>()),
            (0u64..200, 0usize..40, 0usize..10, 0usize..8),
            (any::<usize>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(|(a, b, c, small, d)| {
                let mut cfg = Config {
                    base_tick_ms: a.0,
                    election_ticks: a.1,
                    heartbeat_ticks: a.2,
                    lease_read: a.3,
                    lease_drift_margin_ms: b.0,
                    max_apply_bytes_per_ready: b.1,
                    raft_pool_size: b.2,
                    apply_pool_size: b.3,
                    mailbox_capacity: c.0,
                    raft_message_capacity: c.1,
                    max_key_size: c.2,
                    max_scan_limit: c.3,
                    ..Config::default()
                };
                // A third of the cases with raft's own limits drawn too.
                if small.0 % 3 == 0 {
                    cfg.max_inflight_msgs = d.0;
                    cfg.max_uncommitted_size = d.1 % 4;
                    cfg.split_max_keys = d.2;
                }
                // Half the cases near the valid region, where the derived
                // durations are computed.
                if small.0 % 2 == 0 {
                    cfg.base_tick_ms = small.0;
                    cfg.election_ticks = small.1;
                    cfg.heartbeat_ticks = small.2;
                    cfg.raft_pool_size = small.3;
                    cfg.apply_pool_size = small.3;
                    cfg.mailbox_capacity = 1;
                    cfg.raft_message_capacity = 1;
                    cfg.max_key_size = 1;
                    cfg.max_scan_limit = 1;
                    cfg.max_apply_bytes_per_ready = 1;
                    cfg.lease_drift_margin_ms = small.0 / 2;
                }
                cfg
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: CONFIG_CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Any config, however extreme, is validated without a panic; a
        /// valid one has a positive tick spacing, a lease (when lease
        /// reads are on) shorter than the election timeout, and raft
        /// settings raft accepts (else the store would open and fail at
        /// its first peer).
        #[test]
        fn validate_never_panics(cfg in arb_config()) {
            let spacing = cfg.min_tick_spacing();
            let _ = cfg.lease_duration();
            if cfg.validate().is_ok() {
                prop_assert!(!spacing.is_zero());
                prop_assert!(cfg.raft_config(7).validate().is_ok());
                prop_assert!(cfg.split_max_keys <= MAX_SPLIT_MAX_KEYS);
                let election = cfg.base_tick() * u32::try_from(cfg.election_ticks).unwrap();
                if cfg.lease_read {
                    let lease = cfg.lease_duration().unwrap();
                    prop_assert!(lease < election);
                }
            }
        }
    }

    /// Bad input: what raft refuses is refused here, when the store is
    /// configured, not when its first peer is created; so is a split of
    /// too many keys at once.
    #[test]
    fn raft_limits_and_split_keys_are_checked_at_validate() {
        let refused = |cfg: Config| matches!(cfg.validate(), Err(Error::Config(_)));
        assert!(refused(Config {
            max_uncommitted_size: 0,
            ..Config::default()
        }));
        assert!(refused(Config {
            max_inflight_msgs: usize::MAX,
            ..Config::default()
        }));
        assert!(refused(Config {
            split_max_keys: MAX_SPLIT_MAX_KEYS + 1,
            ..Config::default()
        }));
        assert!(
            Config {
                split_max_keys: MAX_SPLIT_MAX_KEYS,
                ..Config::default()
            }
            .validate()
            .is_ok()
        );
    }

    /// The defaults are valid, and give the lease the docs quote.
    #[test]
    fn defaults_are_valid() {
        let cfg = Config {
            lease_read: true,
            ..Config::default()
        };
        cfg.validate().unwrap();
        assert_eq!(
            cfg.lease_duration(),
            Some(std::time::Duration::from_millis(710))
        );
    }
}
