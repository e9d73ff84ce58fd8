//! Configuration of one raft node.

use super::errors::{ConfigError, Result};

/// Default number of ticks between heartbeats.
pub const DEFAULT_HEARTBEAT_TICK: usize = 2;
/// Default number of ticks of the election timeout.
pub const DEFAULT_ELECTION_TICK: usize = 20;
/// Default cap on in-flight appends per follower.
pub const DEFAULT_MAX_INFLIGHT_MSGS: usize = 256;
/// Default cap on the bytes of entries in one append.
pub const DEFAULT_MAX_SIZE_PER_MSG: u64 = 1024 * 1024;
/// Largest `max_inflight_msgs` the inflight window's 32-bit counters can hold.
pub const MAX_INFLIGHT_MSGS_LIMIT: usize = u32::MAX as usize;
/// Seed mixed with the node id when [`Config::rng_seed`] is `None`.
pub const DEFAULT_RNG_SEED_SALT: u64 = 0x5EED_F107_11A0_0000;

/// How read-only requests are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadOnlyOption {
    /// Confirm leadership with a heartbeat round to a quorum (linearizable
    /// regardless of clocks).
    #[default]
    Safe,
    /// Trust the leader lease (requires `check_quorum`); correct only when
    /// clock drift is bounded.
    LeaseBased,
}

/// Configuration of one raft node. Validate with [`Config::validate`]
/// (which [`RawNode::new`](super::RawNode::new) does).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node's id; must not be 0.
    pub id: u64,
    /// Election timeout in ticks. A follower that hears nothing from a leader
    /// for a randomized timeout in `[min_election_tick, max_election_tick)`
    /// campaigns.
    pub election_tick: usize,
    /// Ticks between leader heartbeats; must be below `election_tick`.
    pub heartbeat_tick: usize,
    /// Lower bound of the randomized election timeout; 0 means `election_tick`.
    pub min_election_tick: usize,
    /// Upper bound (exclusive) of the randomized election timeout; 0 means
    /// `2 * election_tick`.
    pub max_election_tick: usize,
    /// Index already applied by the state machine (for restart).
    pub applied: u64,
    /// Maximum bytes of entries per append message (at least one entry is
    /// always sent).
    pub max_size_per_msg: u64,
    /// Maximum in-flight append messages per follower in replicate state.
    pub max_inflight_msgs: usize,
    /// Maximum bytes of uncommitted entries the leader accepts; proposals
    /// beyond it are dropped (empty entries never are).
    pub max_uncommitted_size: u64,
    /// Maximum bytes of committed entries handed out in one `Ready`.
    pub max_committed_size_per_ready: u64,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout; followers with a live leader ignore vote requests.
    pub check_quorum: bool,
    /// Run a pre-vote round before incrementing the term.
    pub pre_vote: bool,
    /// How read-only requests are confirmed.
    pub read_only_option: ReadOnlyOption,
    /// Drop proposals on followers instead of forwarding them to the leader.
    pub disable_proposal_forwarding: bool,
    /// A node that has just started refuses vote and pre-vote requests, as
    /// if it had a live leader, until it has counted one election timeout
    /// of ticks (requires `check_quorum`). Without it a follower that
    /// acknowledged a leader's lease round and then restarted could vote
    /// for another candidate at once, inside that lease. Costs at most one
    /// election timeout of extra delay for an election right after a
    /// restart.
    pub refuse_votes_after_start: bool,
    /// Election priority: a voter refuses a candidate with lower priority
    /// whose log is equally up to date.
    pub priority: i64,
    /// Seed of the election-timeout PRNG. `None` derives a deterministic seed
    /// from `id`.
    pub rng_seed: Option<u64>,
    /// Do not broadcast an append when only the commit index changed: the
    /// next append or heartbeat carries it. A commit that covers a conf
    /// change, the tail a new leader inherited, or an index the
    /// application marked with `Raft::broadcast_commit_through` still goes
    /// out at once.
    pub skip_bcast_commit: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            id: 0,
            election_tick: DEFAULT_ELECTION_TICK,
            heartbeat_tick: DEFAULT_HEARTBEAT_TICK,
            min_election_tick: 0,
            max_election_tick: 0,
            applied: 0,
            max_size_per_msg: DEFAULT_MAX_SIZE_PER_MSG,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_uncommitted_size: u64::MAX,
            max_committed_size_per_ready: u64::MAX,
            check_quorum: false,
            refuse_votes_after_start: false,
            pre_vote: false,
            read_only_option: ReadOnlyOption::Safe,
            disable_proposal_forwarding: false,
            priority: 0,
            rng_seed: None,
            skip_bcast_commit: false,
        }
    }
}

impl Config {
    /// A default config for node `id`.
    pub fn new(id: u64) -> Self {
        Config {
            id,
            ..Default::default()
        }
    }

    /// The effective lower bound of the randomized election timeout.
    pub fn min_election_tick(&self) -> usize {
        if self.min_election_tick == 0 {
            self.election_tick
        } else {
            self.min_election_tick
        }
    }

    /// The effective (exclusive) upper bound of the randomized election timeout.
    pub fn max_election_tick(&self) -> usize {
        if self.max_election_tick == 0 {
            2 * self.election_tick
        } else {
            self.max_election_tick
        }
    }

    /// The effective PRNG seed.
    pub fn effective_rng_seed(&self) -> u64 {
        self.rng_seed
            .unwrap_or(DEFAULT_RNG_SEED_SALT ^ self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Checks that the settings are possible.
    ///
    /// # Errors
    ///
    /// [`Error::ConfigInvalid`](super::Error::ConfigInvalid) with the first
    /// [`ConfigError`] found.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(ConfigError::ZeroId.into());
        }
        if self.heartbeat_tick == 0 {
            return Err(ConfigError::ZeroHeartbeatTick.into());
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(ConfigError::ElectionTickTooSmall {
                election: self.election_tick,
                heartbeat: self.heartbeat_tick,
            }
            .into());
        }
        let (min, max) = (self.min_election_tick(), self.max_election_tick());
        if min < self.election_tick {
            return Err(ConfigError::MinElectionTickTooSmall {
                min,
                election: self.election_tick,
            }
            .into());
        }
        if max <= min {
            return Err(ConfigError::MaxElectionTickTooSmall { min, max }.into());
        }
        if self.max_inflight_msgs == 0 {
            return Err(ConfigError::ZeroMaxInflightMsgs.into());
        }
        if self.max_inflight_msgs > MAX_INFLIGHT_MSGS_LIMIT {
            return Err(ConfigError::MaxInflightMsgsTooLarge(self.max_inflight_msgs).into());
        }
        if self.read_only_option == ReadOnlyOption::LeaseBased && !self.check_quorum {
            return Err(ConfigError::LeaseWithoutCheckQuorum.into());
        }
        if self.max_uncommitted_size == 0 {
            return Err(ConfigError::ZeroMaxUncommittedSize.into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::Error;

    fn err(c: Config) -> ConfigError {
        match c.validate() {
            Err(Error::ConfigInvalid(e)) => e,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    /// checklist: election-1 (config sanity for the timeout range)
    #[test]
    fn validate_rejects_impossible_settings() {
        assert!(Config::new(1).validate().is_ok());
        assert_eq!(err(Config::new(0)), ConfigError::ZeroId);
        assert_eq!(
            err(Config {
                heartbeat_tick: 0,
                ..Config::new(1)
            }),
            ConfigError::ZeroHeartbeatTick
        );
        assert!(matches!(
            err(Config {
                election_tick: 2,
                heartbeat_tick: 2,
                ..Config::new(1)
            }),
            ConfigError::ElectionTickTooSmall { .. }
        ));
        assert!(matches!(
            err(Config {
                min_election_tick: 5,
                ..Config::new(1)
            }),
            ConfigError::MinElectionTickTooSmall { .. }
        ));
        assert!(matches!(
            err(Config {
                min_election_tick: 30,
                max_election_tick: 30,
                ..Config::new(1)
            }),
            ConfigError::MaxElectionTickTooSmall { .. }
        ));
        assert_eq!(
            err(Config {
                max_inflight_msgs: 0,
                ..Config::new(1)
            }),
            ConfigError::ZeroMaxInflightMsgs
        );
        assert_eq!(
            err(Config {
                read_only_option: ReadOnlyOption::LeaseBased,
                ..Config::new(1)
            }),
            ConfigError::LeaseWithoutCheckQuorum
        );
        assert!(
            Config {
                read_only_option: ReadOnlyOption::LeaseBased,
                check_quorum: true,
                ..Config::new(1)
            }
            .validate()
            .is_ok()
        );
        assert_eq!(
            err(Config {
                max_uncommitted_size: 0,
                ..Config::new(1)
            }),
            ConfigError::ZeroMaxUncommittedSize
        );
    }

    /// checklist: election-1 (default timeout range is [election, 2*election))
    #[test]
    fn default_election_range() {
        let c = Config::new(3);
        assert_eq!(c.min_election_tick(), c.election_tick);
        assert_eq!(c.max_election_tick(), 2 * c.election_tick);
        assert_ne!(c.effective_rng_seed(), Config::new(4).effective_rng_seed());
        let fixed = Config {
            rng_seed: Some(9),
            ..Config::new(3)
        };
        assert_eq!(fixed.effective_rng_seed(), 9);
    }
}
