//! Admin storms beside a workload (issue #12): threads that split regions
//! at random keys, and threads that merge random regions with their right
//! neighbours, each one command after another, for as long as the
//! workload runs. `flotilla demo` and `flotilla load` run them to measure
//! the splits and merges per second a cluster sustains under writes, and
//! what they cost the writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use flotilla_raftstore::store::{Client, Error};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Mixed into the seed of a split storm's threads.
const SPLIT_STORM_SEED: u64 = 0x5b17;
/// Mixed into the seed of a merge storm's threads.
const MERGE_STORM_SEED: u64 = 0x3e26;
/// Pause of a merge storm thread after a refused merge (a neighbour
/// merging already, a peer behind, the last region): not at once again.
const MERGE_STORM_BACKOFF: Duration = Duration::from_millis(10);

/// What the storm threads did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StormCounts {
    /// Splits completed.
    pub splits: u64,
    /// Splits refused or failed (a key at a region's start, a split
    /// pending, a leader moving).
    pub split_refusals: u64,
    /// Merges completed.
    pub merges: u64,
    /// Merges refused, rolled back or failed.
    pub merge_refusals: u64,
}

/// A key of the workload: `key(region, suffix)` is key `suffix` of region
/// `region` (suffix 0: the region's first key).
pub type KeyFn = Arc<dyn Fn(u64, u64) -> Vec<u8> + Send + Sync>;

/// Running storm threads.
pub struct Storm {
    stop: Arc<AtomicBool>,
    splits: Vec<JoinHandle<(u64, u64)>>,
    merges: Vec<JoinHandle<(u64, u64)>>,
}

impl Storm {
    /// Starts `split_threads` split threads and `merge_threads` merge
    /// threads on `client`, over the workload's `regions` regions of
    /// `keys_per_region` keys each (see [`KeyFn`]); `seed` drives their
    /// choices.
    pub fn start(
        client: &Arc<Client>,
        split_threads: usize,
        merge_threads: usize,
        (regions, keys_per_region): (u64, u64),
        seed: u64,
        key: &KeyFn,
    ) -> Storm {
        let stop = Arc::new(AtomicBool::new(false));
        let space = Space {
            regions: regions.max(1),
            keys_per_region: keys_per_region.max(2),
        };
        let spawn = |t: usize, mix: u64, step: Step| {
            let (client, stop, key) = (client.clone(), stop.clone(), key.clone());
            thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ mix ^ t as u64);
                let (mut done, mut refused) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if step(&client, &mut rng, space, &*key) {
                        done += 1;
                    } else {
                        refused += 1;
                    }
                }
                (done, refused)
            })
        };
        Storm {
            splits: (0..split_threads)
                .map(|t| spawn(t, SPLIT_STORM_SEED, split_once))
                .collect(),
            merges: (0..merge_threads)
                .map(|t| spawn(t, MERGE_STORM_SEED, merge_once))
                .collect(),
            stop,
        }
    }

    /// Stops the threads (each finishes its command in flight) and
    /// counts what they did.
    ///
    /// # Errors
    /// A storm thread that panicked.
    pub fn stop(self) -> Result<StormCounts, String> {
        self.stop.store(true, Ordering::Relaxed);
        let join = |hs: Vec<JoinHandle<(u64, u64)>>| -> Result<(u64, u64), String> {
            hs.into_iter().try_fold((0, 0), |(d, r), h| {
                let (dd, rr) = h
                    .join()
                    .map_err(|_| "a storm thread panicked".to_string())?;
                Ok((d + dd, r + rr))
            })
        };
        let (splits, split_refusals) = join(self.splits)?;
        let (merges, merge_refusals) = join(self.merges)?;
        Ok(StormCounts {
            splits,
            split_refusals,
            merges,
            merge_refusals,
        })
    }
}

/// The workload's key space.
#[derive(Debug, Clone, Copy)]
struct Space {
    regions: u64,
    keys_per_region: u64,
}

/// One command of a storm thread; returns whether it succeeded.
type Step =
    fn(&Client, &mut ChaCha8Rng, Space, &(dyn Fn(u64, u64) -> Vec<u8> + Send + Sync)) -> bool;

/// Splits the region of a random key (never a region's first) at that
/// key.
fn split_once(
    client: &Client,
    rng: &mut ChaCha8Rng,
    space: Space,
    key: &(dyn Fn(u64, u64) -> Vec<u8> + Send + Sync),
) -> bool {
    let at = key(
        rng.random_range(0..space.regions),
        rng.random_range(1..space.keys_per_region),
    );
    client.split_at(&at).is_ok()
}

/// Merges the right neighbour of a random region's first key into it.
/// Returns whether it did (a refusal backs off a little).
fn merge_once(
    client: &Client,
    rng: &mut ChaCha8Rng,
    space: Space,
    key: &(dyn Fn(u64, u64) -> Vec<u8> + Send + Sync),
) -> bool {
    let first = key(rng.random_range(0..space.regions), 0);
    let merged = client.locate(&first).and_then(|r| {
        if r.end_key.is_empty() {
            return Err(Error::RegionNotFound(0));
        }
        let right = client.locate(&r.end_key)?;
        client.merge(right.id, r.id)
    });
    if merged.is_err() {
        thread::sleep(MERGE_STORM_BACKOFF);
    }
    merged.is_ok()
}

#[cfg(test)]
mod tests {
    use flotilla_raftstore::store::{ClientConfig, Cluster, Config};

    use super::*;

    /// A storm of one split thread and one merge thread on a small
    /// cluster changes its regions both ways, and its counts add up to
    /// what the stores applied (each split and each merge it counts
    /// applied on every store).
    #[test]
    fn storms_split_and_merge_and_count_what_they_did() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            base_tick_ms: 10,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let regions = 4;
        let cluster = Cluster::bootstrap(dir.path(), 3, regions, cfg, &logger).unwrap();
        assert!(cluster.wait_for_leaders(regions, Duration::from_secs(20)));
        let client = Arc::new(cluster.client(ClientConfig::default()));
        let key: KeyFn = Arc::new(move |region, suffix| {
            let mut key = flotilla_raftstore::store::bootstrap::split_key(region, regions);
            if suffix > 0 {
                key.extend_from_slice(&suffix.to_be_bytes());
            }
            key
        });
        let applied = |f: fn(&flotilla_raftstore::store::StoreMetrics) -> u64| {
            cluster
                .store_ids()
                .iter()
                .map(|&s| f(cluster.store(s).unwrap().metrics()))
                .sum::<u64>()
        };
        let storm = Storm::start(&client, 1, 1, (regions, 64), 7, &key);
        // Until the stores applied a few of each (a loaded machine is
        // slow), at most 20 s.
        for _ in 0..1000 {
            if applied(|m| m.splits_applied.load(Ordering::Relaxed)) >= 6
                && applied(|m| m.merges_applied.load(Ordering::Relaxed)) >= 6
            {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let counts = storm.stop().unwrap();
        assert!(counts.splits > 0 && counts.merges > 0, "{counts:?}");
        // Every store applies each (a store may lag a moment).
        let settled = (0..200).any(|_| {
            let done = applied(|m| m.merges_applied.load(Ordering::Relaxed)) >= 3 * counts.merges;
            if !done {
                thread::sleep(Duration::from_millis(20));
            }
            done
        });
        assert!(
            settled,
            "merges counted by the storm not applied: {counts:?}"
        );
        cluster.shutdown();
    }
}
