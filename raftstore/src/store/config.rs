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

/// How a store runs. Every field has a default (`Config::default()` or an
/// empty TOML table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Base tick of the store clock (ms). Elections and heartbeats count it.
    pub base_tick_ms: u64,
    /// Election timeout, in base ticks.
    pub election_ticks: usize,
    /// Heartbeat interval, in base ticks.
    pub heartbeat_ticks: usize,
    /// Serve reads from the leader's lease instead of a ReadIndex round.
    pub lease_read: bool,
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
    /// FSMs per poll round.
    pub max_batch_size: usize,
    /// Queued messages per peer mailbox before clients get `ServerIsBusy`.
    pub mailbox_capacity: usize,
    /// Messages a peer handles per poll round.
    pub messages_per_round: usize,
    /// fsync the raft log write of every poll round. Turning it off trades
    /// durability of acknowledged writes on machine crash for speed.
    pub sync_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            base_tick_ms: DEFAULT_BASE_TICK_MS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            lease_read: false,
            entry_max_size: DEFAULT_ENTRY_MAX_SIZE,
            max_size_per_msg: DEFAULT_MAX_SIZE_PER_MSG,
            max_inflight_msgs: DEFAULT_MAX_INFLIGHT_MSGS,
            max_uncommitted_size: DEFAULT_MAX_UNCOMMITTED_SIZE,
            raft_pool_size: 2,
            apply_pool_size: 1,
            max_batch_size: 256,
            mailbox_capacity: DEFAULT_MAILBOX_CAPACITY,
            messages_per_round: DEFAULT_MESSAGES_PER_TICK,
            sync_log: true,
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
        if self.base_tick_ms == 0 {
            return bad("base_tick_ms must be > 0");
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
        Ok(())
    }

    /// The base tick as a duration.
    pub fn base_tick(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.base_tick_ms)
    }
}
