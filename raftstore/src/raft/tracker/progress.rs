//! The leader's view of one peer's log.

use super::inflights::Inflights;
use super::state::ProgressState;

/// What the leader knows about one peer's replication.
///
/// Invariant: `matched < next_idx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The highest index known to be replicated on the peer.
    pub matched: u64,
    /// The next index to send.
    pub next_idx: u64,
    /// The replication state.
    pub state: ProgressState,
    /// In probe state: an append was sent and the leader waits for its
    /// answer (or the next heartbeat) before sending another.
    pub probe_sent: bool,
    /// In snapshot state: the index of the snapshot being sent.
    pub pending_snapshot: u64,
    /// Whether the peer was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The peer is a learner (not counted in any quorum).
    pub is_learner: bool,
    /// An append that asks for an answer went to the peer since the last
    /// heartbeat did: the next periodic heartbeat may be skipped (see
    /// `Raft::bcast_periodic_heartbeat`).
    pub appended_since_beat: bool,
    /// The peer asked for a snapshot at or past this index (its
    /// application cannot apply its log from where it is; 0: no request):
    /// the next send to it is one. Cleared by any state change, a
    /// snapshot sent among them.
    pub snapshot_request: u64,
    /// The commit index the leader last told the peer (bounds heartbeats).
    pub committed_index: u64,
    /// Appends in flight (replicate state).
    pub ins: Inflights,
}

impl Progress {
    /// A progress in probe state that will next send `next_idx`.
    pub fn new(next_idx: u64, max_inflight: usize) -> Self {
        Progress {
            matched: 0,
            next_idx,
            state: ProgressState::Probe,
            probe_sent: false,
            pending_snapshot: 0,
            recent_active: false,
            is_learner: false,
            appended_since_beat: false,
            snapshot_request: 0,
            committed_index: 0,
            ins: Inflights::new(max_inflight),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.appended_since_beat = false;
        self.snapshot_request = 0;
        self.pending_snapshot = 0;
        self.state = state;
        self.ins.reset();
    }

    /// Resets for a new leader term: probe from `next_idx`, nothing matched.
    pub fn reset(&mut self, next_idx: u64) {
        self.matched = 0;
        self.next_idx = next_idx;
        self.committed_index = 0;
        self.recent_active = false;
        self.reset_state(ProgressState::Probe);
    }

    /// Moves to probe state. Leaving snapshot state, the next index is past
    /// the snapshot that was being sent.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next_idx = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next_idx = self.matched + 1;
        }
    }

    /// Moves to replicate state, sending from `matched + 1`.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_idx = self.matched + 1;
    }

    /// Moves to snapshot state while the snapshot at `snapshot_idx` is sent.
    pub fn become_snapshot(&mut self, snapshot_idx: u64) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_idx;
    }

    /// The snapshot being sent failed: forget it.
    pub fn snapshot_failure(&mut self) {
        self.pending_snapshot = 0;
    }

    /// In snapshot state, true once the peer has caught up past the snapshot.
    pub fn is_snapshot_caught_up(&self) -> bool {
        self.state == ProgressState::Snapshot && self.matched >= self.pending_snapshot
    }

    /// Updates after an acknowledgement of `n`. Returns false if the
    /// acknowledgement is stale (`n <= matched`).
    #[inline]
    pub fn maybe_update(&mut self, n: u64) -> bool {
        let updated = self.matched < n;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next_idx = self.next_idx.max(n + 1);
        updated
    }

    /// Records that the peer has been told commit index `ci`.
    #[inline]
    pub fn update_committed(&mut self, ci: u64) {
        self.committed_index = self.committed_index.max(ci);
    }

    /// Optimistically advances `next_idx` after sending up to `n`
    /// (replicate state).
    #[inline]
    pub fn optimistic_update(&mut self, n: u64) {
        self.next_idx = n + 1;
    }

    /// Handles a rejection of the append at `rejected`; `match_hint` is the
    /// highest index the leader may resume from (from the follower's hint,
    /// refined by term). Returns false if the rejection is stale.
    pub fn maybe_decr_to(&mut self, rejected: u64, match_hint: u64) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next_idx = self.matched + 1;
            return true;
        }
        if self.next_idx == 0 || self.next_idx - 1 != rejected {
            return false;
        }
        self.next_idx = rejected.min(match_hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// True if the leader must not send appends now.
    #[inline]
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.ins.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr(matched: u64, next: u64, state: ProgressState) -> Progress {
        let mut p = Progress::new(next, 256);
        p.matched = matched;
        p.state = state;
        p
    }

    /// checklist: log-7 (probe pauses after one append; replicate pauses only when full)
    #[test]
    fn paused_by_state() {
        let mut p = pr(0, 1, ProgressState::Probe);
        assert!(!p.is_paused());
        p.probe_sent = true;
        assert!(p.is_paused());
        let mut r = Progress::new(1, 1);
        r.become_replicate();
        assert!(!r.is_paused());
        r.ins.add(1);
        assert!(r.is_paused());
        assert!(pr(0, 1, ProgressState::Snapshot).is_paused());
    }

    /// checklist: log-6 (decrement uses the hint; stale rejections are ignored)
    #[test]
    fn maybe_decr_to_table() {
        use ProgressState::*;
        // (state, matched, next, rejected, hint, ok, want_next)
        let cases = [
            (Replicate, 5, 10, 5, 5, false, 10),
            (Replicate, 5, 10, 4, 4, false, 10),
            (Replicate, 5, 10, 9, 9, true, 6),
            (Probe, 0, 0, 0, 0, false, 0),
            (Probe, 0, 10, 5, 5, false, 10),
            (Probe, 0, 10, 9, 9, true, 9),
            (Probe, 0, 2, 1, 1, true, 1),
            (Probe, 0, 10, 9, 2, true, 3),
            (Probe, 0, 10, 9, 0, true, 1),
            (Probe, 3, 10, 9, 0, true, 4),
        ];
        for (i, (st, m, n, rej, hint, ok, want)) in cases.into_iter().enumerate() {
            let mut p = pr(m, n, st);
            assert_eq!(p.maybe_decr_to(rej, hint), ok, "case {i}");
            assert_eq!(p.next_idx, want, "case {i}");
        }
    }

    /// checklist: log-7 (acks move match/next; stale acks are ignored)
    #[test]
    fn maybe_update_table() {
        let (prev_m, prev_n) = (3, 5);
        let cases = [
            (prev_m - 1, false, prev_m, prev_n),
            (prev_m, false, prev_m, prev_n),
            (prev_m + 1, true, prev_m + 1, prev_n),
            (prev_m + 2, true, prev_m + 2, prev_n + 1),
        ];
        for (update, ok, wm, wn) in cases {
            let mut p = pr(prev_m, prev_n, ProgressState::Probe);
            assert_eq!(p.maybe_update(update), ok);
            assert_eq!((p.matched, p.next_idx), (wm, wn));
        }
    }

    /// checklist: snap-2 (leaving snapshot state resumes past the snapshot)
    #[test]
    fn become_probe_from_snapshot() {
        let mut p = pr(1, 5, ProgressState::Replicate);
        p.become_snapshot(10);
        assert!(p.is_paused());
        p.become_probe();
        assert_eq!(p.next_idx, 11);
        let mut q = pr(1, 5, ProgressState::Snapshot);
        q.pending_snapshot = 10;
        q.snapshot_failure();
        q.become_probe();
        assert_eq!(q.next_idx, 2);
        let mut r = pr(1, 5, ProgressState::Replicate);
        r.become_probe();
        assert_eq!(r.next_idx, 2);
    }
}
