//! CompactLog on the propose side (raft log GC, conservative mode): when a
//! leader compacts its region's log, and to where.
//!
//! Conservative: never past what every peer of the region has matched
//! (learners included) nor past what the leader applied, so no follower is
//! ever cut off and needs a snapshot. A follower that is down holds the
//! log back until it returns; cutting it off (TiKV's count and size
//! limits) needs snapshots between stores, which come later.

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
pub fn compact_decision(i: &CompactInputs) -> CompactDecision {
    let to = i.replicated_index.min(i.applied_index);
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
