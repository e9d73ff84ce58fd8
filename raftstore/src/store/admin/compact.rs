//! CompactLog on the propose side (raft log GC, conservative mode): when a
//! leader compacts its region's log, and to where.
//!
//! Conservative first: never past what every peer of the region has
//! matched (learners included) nor past what the leader applied, so no
//! follower is cut off and needs a snapshot. Forced past a count limit
//! (TiKV's `raft_log_gc_count_limit`): a follower that is down or far
//! behind no longer holds the log back, and catches up by a snapshot.

/// A compaction drops at least this many entries (fewer is not worth an
/// entry of its own: a CompactLog itself adds one to the log).
pub const MIN_COMPACT_ENTRIES: u64 = 3;

/// What a leader knows when it checks its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactInputs {
    /// The first index in the log (truncated index + 1).
    pub first_index: u64,
    /// The leader's applied index.
    pub applied_index: u64,
    /// The least index matched by every peer, the leader's own durable
    /// log included.
    pub replicated_index: u64,
    /// Checks in a row that compacted nothing.
    pub skipped_checks: u32,
    /// Entries that make a compaction worth it at once.
    pub threshold: u64,
    /// Checks after which fewer entries are compacted too.
    pub reserve_checks: u32,
    /// Log length past which what a follower has not matched is compacted
    /// too (0: never).
    pub count_limit: u64,
    /// The least index a follower is being sent a snapshot at, if one is:
    /// forced mode never compacts past it (the follower continues from
    /// the entry after it; compacting that away sends it another
    /// snapshot, again and again).
    pub snapshot_floor: Option<u64>,
}

/// A leader's decision at a log check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactDecision {
    /// Keep the log as it is.
    Skip,
    /// Propose compacting every entry up to and including `index`.
    Compact {
        /// The new truncated index.
        index: u64,
    },
}

/// Decides whether to compact and to where: up to the replicated and
/// applied index, once that drops `threshold` entries, or after
/// `reserve_checks` checks if it drops at least [`MIN_COMPACT_ENTRIES`]
/// (so an idle region's short tail goes too, but not one entry at a time).
///
/// Forced mode: once the log up to the applied index is longer than
/// `count_limit`, it is compacted to keep `count_limit / 2` entries below
/// the applied index whatever the followers matched (one that has not
/// then needs a snapshot).
pub fn compact_decision(i: &CompactInputs) -> CompactDecision {
    let mut to = i.replicated_index.min(i.applied_index);
    let length = (i.applied_index + 1).saturating_sub(i.first_index);
    if i.count_limit > 0 && length > i.count_limit {
        let forced = i.applied_index - i.count_limit / 2;
        to = to.max(i.snapshot_floor.map_or(forced, |f| forced.min(f)));
    }
    if to < i.first_index {
        return CompactDecision::Skip;
    }
    let dropped = to - i.first_index + 1;
    if dropped < MIN_COMPACT_ENTRIES
        || (dropped < i.threshold && i.skipped_checks < i.reserve_checks)
    {
        return CompactDecision::Skip;
    }
    CompactDecision::Compact { index: to }
}

/// A peer's log-GC bookkeeping (leaders use it; it resets when the peer
/// becomes leader).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LogGc {
    /// Leader ticks since the last check.
    pub ticks: u32,
    /// Checks in a row that compacted nothing.
    pub skipped: u32,
    /// The highest compact index proposed in this leadership (no
    /// proposal up to it again).
    pub proposed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> CompactInputs {
        CompactInputs {
            first_index: 6,
            applied_index: 200,
            replicated_index: 200,
            skipped_checks: 0,
            threshold: 50,
            reserve_checks: 6,
            count_limit: 0,
            snapshot_floor: None,
        }
    }

    /// admin.md scenario 1 (`gc_never_cuts_live_followers`), the decision:
    /// never past the least matched index, however long the log.
    #[test]
    fn never_past_the_slowest_peer_or_the_applied_index() {
        let mut i = inputs();
        i.replicated_index = 120;
        assert_eq!(
            compact_decision(&i),
            CompactDecision::Compact { index: 120 }
        );
        i.applied_index = 100;
        assert_eq!(
            compact_decision(&i),
            CompactDecision::Compact { index: 100 }
        );
        i.replicated_index = 5;
        assert_eq!(compact_decision(&i), CompactDecision::Skip, "peer behind");
    }

    /// Below the threshold the log is kept for `reserve_checks` checks,
    /// then compacted if that drops at least `MIN_COMPACT_ENTRIES`.
    #[test]
    fn short_logs_wait_for_the_reserve_checks() {
        let mut i = inputs();
        i.replicated_index = 20; // 15 entries
        assert_eq!(compact_decision(&i), CompactDecision::Skip);
        i.skipped_checks = 6;
        assert_eq!(compact_decision(&i), CompactDecision::Compact { index: 20 });
        i.replicated_index = 7; // 2 entries: never worth it
        assert_eq!(compact_decision(&i), CompactDecision::Skip);
        i.replicated_index = 8;
        assert_eq!(compact_decision(&i), CompactDecision::Compact { index: 8 });
    }

    /// admin.md scenario 2 (`gc_forced_cuts_partitioned_follower_then_snapshot`),
    /// the decision: past the count limit, a follower that has matched
    /// nothing no longer holds the log back; half the limit stays below
    /// the applied index. At or under the limit the log waits for it.
    #[test]
    fn forced_mode_cuts_a_follower_past_the_count_limit() {
        let mut i = inputs();
        i.replicated_index = 5;
        i.count_limit = 195; // the log holds 195 entries: 6..=200
        assert_eq!(compact_decision(&i), CompactDecision::Skip);
        i.count_limit = 194;
        assert_eq!(
            compact_decision(&i),
            CompactDecision::Compact { index: 103 }
        );
        // A follower past that point is not cut off further back.
        i.replicated_index = 150;
        assert_eq!(
            compact_decision(&i),
            CompactDecision::Compact { index: 150 }
        );
        // A follower being sent a snapshot at 90 continues from 91: not
        // compacted away under it (no snapshot loop).
        i.replicated_index = 5;
        i.snapshot_floor = Some(90);
        assert_eq!(compact_decision(&i), CompactDecision::Compact { index: 90 });
        i.snapshot_floor = None;
        i.count_limit = 0;
        assert_eq!(
            compact_decision(&i),
            CompactDecision::Skip,
            "forced mode off"
        );
    }

    /// At the threshold the log is compacted at once.
    #[test]
    fn threshold_compacts_at_once() {
        let mut i = inputs();
        i.replicated_index = 55; // exactly 50 entries
        assert_eq!(compact_decision(&i), CompactDecision::Compact { index: 55 });
        i.replicated_index = 54;
        assert_eq!(compact_decision(&i), CompactDecision::Skip);
    }
}
