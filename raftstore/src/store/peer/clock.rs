//! The peer's clock (DESIGN §5, "only awake peers tick"): the store counts
//! base ticks, and an awake peer gets a `Tick` message only at the first
//! store tick where ticking may do more than count (its *due* tick). The
//! ticks before that are silent: the peer runs them itself, in a row, when
//! it next handles anything, so its clocks read the same as if each tick
//! had been delivered. A follower that hears its leader every heartbeat
//! never reaches its due tick and costs the store no message at all.
//!
//! A tick delivered late (its poller was behind) runs the silent ticks up
//! to the due one and that one, and drops the rest, as a late tick always
//! did: a peer's election clock runs slow under load, never fast.

use super::Peer;
use crate::store::config::Config;
use crate::store::hibernation::Hibernation;

impl Peer {
    /// Runs the silent ticks up to store tick `now` (never the due one),
    /// so every message meets clocks that are up to date. A sleeping
    /// peer's clock does not run: it starts again from `now` when the peer
    /// wakes.
    fn catch_up_ticks(&mut self, now: u64) {
        if self.sleep.asleep {
            self.clock = self.clock.max(now);
            self.last_full_tick = self.clock;
            return;
        }
        let until = now.min(self.tick_due().saturating_sub(1));
        while self.clock < until {
            let acted = self.raft.tick();
            debug_assert!(!acted, "a silent tick acted");
            self.clock += 1;
        }
    }

    /// Starts the clock of a peer created while the store runs (by a split
    /// or a message) at the store's tick `now`: the ticks before it was
    /// born are not its own (caught up, they would run out its election
    /// timeout at its first message and make it campaign at once).
    pub fn start_clock(&mut self, now: u64) {
        self.clock = now;
        self.last_full_tick = now;
    }

    /// The store's tick `now` reached this peer: runs the silent ticks,
    /// then the due tick if it has come (with everything a tick does:
    /// elections, heartbeats, hibernation checks), and drops the ticks
    /// after it (the peer was late).
    pub fn on_tick(&mut self, now: u64, cfg: &Config, hib: &Hibernation) {
        // Called before every message: most come within the tick the
        // clock is at already, and an awake peer then has nothing to run.
        if self.clock >= now && !self.sleep.asleep {
            return;
        }
        self.catch_up_ticks(now);
        if self.clock < now {
            // The counters of the peer (idle, log GC) count the silent
            // ticks too.
            let elapsed = now.saturating_sub(self.last_full_tick).max(1);
            self.tick(cfg, hib, elapsed);
            self.clock = now;
            self.last_full_tick = now;
        }
    }

    /// The first store tick at which a tick may do more than count for
    /// this peer.
    pub fn tick_due(&self) -> u64 {
        self.clock.saturating_add(self.ticks_to_event())
    }

    /// Ticks from the peer's clock to its next tick that may act (at
    /// least 1).
    fn ticks_to_event(&self) -> u64 {
        // A sleeping peer is not ticked (the store ticks only its awake
        // set); should the registry count it awake, its ticks are
        // delivered and ignored, as before clocks were lazy.
        if self.sleep.asleep {
            return 1;
        }
        let raft = &self.raft.raft;
        // A leader acts at its heartbeats and its election timeout (raft's
        // clock); its lease renewal, idle count and log check go at the
        // same pace, counting the ticks in between.
        if self.is_leader() {
            return u64::try_from(raft.ticks_to_event()).unwrap_or(1);
        }
        // A fresh peer waits for its stores; a quiet follower watches its
        // leader's store; a follower holding a vote request it refused
        // answers it at the tick its lease ends: each tick.
        if self.sleep.fresh_hold.is_some()
            || self.sleep.quiet_under.is_some()
            || self.sleep.asked.is_some()
        {
            return 1;
        }
        // From half an election timeout without its leader, a follower
        // nudges the leader and looks at store liveness each tick; not
        // when it knows no leader, or knows its leader's store is lost (a
        // withdrawal woke it): then only its election clock matters. (At
        // a store's death tens of thousands of followers are in that
        // state at once, waiting for their regions' first campaigners.)
        let watched = self
            .leader()
            .filter(|l| l.id != self.meta.id)
            .is_some_and(|l| self.sleep.woken_by.is_none_or(|(s, _)| s != l.store_id));
        let watch = if watched {
            let half = raft.election_timeout() / 2;
            half.saturating_sub(raft.election_elapsed())
        } else {
            usize::MAX
        };
        // The merge check counts full ticks only; the silent ticks run
        // since the last full one are counted at the next (its `elapsed`),
        // so it is due that much sooner. (Measured from the last full tick
        // instead, a peer that handles a message every few ticks would put
        // it off for good.) The probe is measured from the clock already.
        let since_full = self.clock.saturating_sub(self.last_full_tick);
        let probe = self
            .ticks_to_probe()
            .map_or(usize::MAX, |t| usize::try_from(t).unwrap_or(usize::MAX));
        let merge = self.ticks_to_merge_check().map_or(usize::MAX, |t| {
            usize::try_from(t.saturating_sub(since_full).max(1)).unwrap_or(usize::MAX)
        });
        let ticks = raft
            .ticks_to_event()
            .min(watch)
            .min(probe)
            .min(merge)
            .max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }
}
