//! Batch-system configuration: serde defaults and validation.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// FSMs a poller takes into one round by default. Large enough that a busy
/// store amortises one RocksDB write over many regions, small enough that one
/// round stays short.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 256;

/// How long a poller keeps a busy FSM by default before handing it to the
/// back of the shared queue. Well above a typical round (one synced write),
/// well below anything a waiting region would notice.
pub const DEFAULT_RESCHEDULE_DURATION: Duration = Duration::from_millis(50);

/// Upper bound on `pool_size`: pollers are OS threads, and a pool this large
/// is a configuration mistake, not a tuning choice.
pub const MAX_POOL_SIZE: usize = 1024;

/// Upper bound on `max_batch_size`: a round holding more FSMs than this would
/// delay its first FSM's `end` for too long.
pub const MAX_BATCH_SIZE_LIMIT: usize = 1 << 16;

/// Poller count used when the number of CPUs cannot be determined.
const FALLBACK_POOL_SIZE: usize = 1;

/// Configuration of one [`BatchSystem`](crate::BatchSystem).
///
/// Every field has a serde default, so an empty table deserialises to
/// [`Config::default`]. Call [`Config::validate`] (the batch system does)
/// before use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Number of poller threads. Fixed for the life of the system; never per
    /// FSM. Default: the number of CPUs (at least 1).
    pub pool_size: usize,
    /// Most normal FSMs a poller holds in one round.
    pub max_batch_size: usize,
    /// A poller that has held a busy FSM (one answering
    /// [`HandleResult::KeepProcessing`](crate::HandleResult::KeepProcessing))
    /// at least this long puts it back at the end of the shared queue so
    /// another poller, or the same one later, continues it. Zero hands a busy
    /// FSM back after every round. Written in milliseconds.
    #[serde(rename = "reschedule_duration_ms", with = "millis")]
    pub reschedule_duration: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pool_size: default_pool_size(),
            max_batch_size: DEFAULT_MAX_BATCH_SIZE,
            reschedule_duration: DEFAULT_RESCHEDULE_DURATION,
        }
    }
}

impl Config {
    /// Checks that every field is in range.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first offending field when
    /// `pool_size` is not in `1..=MAX_POOL_SIZE` or `max_batch_size` is not
    /// in `1..=MAX_BATCH_SIZE_LIMIT`.
    pub fn validate(&self) -> Result<(), Error> {
        check_range("pool_size", self.pool_size, MAX_POOL_SIZE)?;
        check_range("max_batch_size", self.max_batch_size, MAX_BATCH_SIZE_LIMIT)?;
        Ok(())
    }
}

fn check_range(field: &'static str, value: usize, max: usize) -> Result<(), Error> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            field,
            reason: format!("must be in 1..={max}, got {value}"),
        })
    }
}

fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(FALLBACK_POOL_SIZE, NonZeroUsize::get)
}

/// Serde helpers writing a `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        // Saturate rather than fail: no sane duration exceeds u64 milliseconds.
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_has_at_least_one_poller() {
        let cfg = Config::default();
        assert!(cfg.pool_size >= 1);
        assert_eq!(cfg.max_batch_size, DEFAULT_MAX_BATCH_SIZE);
        assert_eq!(cfg.reschedule_duration, DEFAULT_RESCHEDULE_DURATION);
        cfg.validate().expect("default config must validate");
    }

    #[test]
    fn zero_pool_size_is_rejected() {
        let cfg = Config {
            pool_size: 0,
            ..Config::default()
        };
        let err = cfg.validate().expect_err("zero pollers must be rejected");
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "pool_size",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn oversized_pool_is_rejected() {
        let cfg = Config {
            pool_size: MAX_POOL_SIZE + 1,
            ..Config::default()
        };
        let err = cfg.validate().expect_err("huge pool must be rejected");
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    field: "pool_size",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn zero_and_oversized_batch_are_rejected() {
        for bad in [0, MAX_BATCH_SIZE_LIMIT + 1] {
            let cfg = Config {
                max_batch_size: bad,
                ..Config::default()
            };
            let err = cfg.validate().expect_err("bad batch size must be rejected");
            assert!(
                matches!(
                    err,
                    Error::InvalidConfig {
                        field: "max_batch_size",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bounds_are_inclusive() {
        let cfg = Config {
            pool_size: MAX_POOL_SIZE,
            max_batch_size: 1,
            reschedule_duration: Duration::ZERO,
        };
        cfg.validate().expect("edge values are valid");
    }

    #[test]
    fn empty_toml_gives_defaults() {
        let cfg: Config = toml::from_str("").expect("empty table");
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn toml_fields_override_defaults() {
        let cfg: Config = toml::from_str("max_batch_size = 7\nreschedule_duration_ms = 250\n")
            .expect("partial table");
        assert_eq!(cfg.max_batch_size, 7);
        assert_eq!(cfg.reschedule_duration, Duration::from_millis(250));
        assert_eq!(cfg.pool_size, Config::default().pool_size);
    }

    #[test]
    fn unknown_field_is_an_error() {
        let res: Result<Config, _> = toml::from_str("max_batch = 7\n");
        assert!(res.is_err());
    }

    #[test]
    fn toml_round_trip() {
        let cfg = Config {
            pool_size: 3,
            max_batch_size: 9,
            reschedule_duration: Duration::from_millis(12),
        };
        let text = toml::to_string(&cfg).expect("serialise");
        let back: Config = toml::from_str(&text).expect("deserialise");
        assert_eq!(back, cfg);
    }
}
