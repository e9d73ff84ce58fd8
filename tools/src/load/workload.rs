//! The client side of the write phases: threads that put (and get) keys of
//! seeded random regions through one shared [`Client`], timing each
//! operation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use flotilla_raftstore::store::Client;
use flotilla_raftstore::store::bootstrap::split_key;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::LoadError;
use super::table::Percentiles;

/// Share of operations aimed at the hot regions in the hot-spot phase.
pub const HOT_OPS_SHARE: f64 = 0.9;
/// Share of the regions that are hot in the hot-spot phase.
pub const HOT_REGIONS_SHARE: f64 = 0.01;
/// Keys per region the workload draws from (an 8-byte suffix).
pub(super) const KEYS_PER_REGION: u64 = 64;
/// Highest latency the histograms record (µs); slower ops are clamped.
pub const MAX_LATENCY_US: u64 = 60_000_000;
/// Significant digits the histograms keep.
const HISTOGRAM_DIGITS: u8 = 3;
/// Random streams reserved per phase (one per client thread).
const STREAMS_PER_PHASE: u64 = 1 << 32;

/// A latency histogram with the workload's bounds.
///
/// # Errors
/// Never with these constant bounds; typed anyway.
pub fn new_histogram() -> Result<Histogram<u64>, LoadError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, HISTOGRAM_DIGITS)
        .map_err(|e| LoadError::Internal(format!("histogram: {e}")))
}

/// p50 / p99 / p999 of `h` (µs; zeros when it is empty).
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    Percentiles {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
    }
}

/// Which regions the operations go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPattern {
    /// Every region equally.
    Uniform,
    /// [`HOT_OPS_SHARE`] of the operations on `count` consecutive regions
    /// from `first` (wrapping), the rest uniform over all.
    HotSpot {
        /// First hot region (index from 0).
        first: u64,
        /// Hot regions.
        count: u64,
    },
}

impl KeyPattern {
    /// A hot spot of [`HOT_REGIONS_SHARE`] of `regions` (at least one)
    /// at a place drawn from `seed`.
    pub fn hot_spot(regions: u64, seed: u64) -> KeyPattern {
        let regions = regions.max(1);
        let count = ((regions as f64 * HOT_REGIONS_SHARE).round() as u64).clamp(1, regions);
        let first = ChaCha8Rng::seed_from_u64(seed).random_range(0..regions);
        KeyPattern::HotSpot { first, count }
    }

    /// The region (index from 0) of the next operation.
    pub fn region(&self, regions: u64, rng: &mut impl Rng) -> u64 {
        let regions = regions.max(1);
        match *self {
            KeyPattern::HotSpot { first, count } if rng.random_bool(HOT_OPS_SHARE) => {
                (first + rng.random_range(0..count)) % regions
            }
            _ => rng.random_range(0..regions),
        }
    }

    /// How it reads in a table.
    pub fn describe(&self, regions: u64) -> String {
        match *self {
            KeyPattern::Uniform => format!("uniform over {regions} regions"),
            KeyPattern::HotSpot { count, .. } => format!(
                "{:.0}% of ops on {count} regions ({:.1}%), the rest uniform",
                HOT_OPS_SHARE * 100.0,
                count as f64 * 100.0 / regions.max(1) as f64
            ),
        }
    }
}

/// Key number `suffix` of region `region` of `regions` (pre-split evenly).
pub fn key_for(region: u64, regions: u64, suffix: u64) -> Vec<u8> {
    let mut key = split_key(region, regions);
    key.extend_from_slice(&suffix.to_be_bytes());
    key
}

/// Counters and per-second histograms the client threads feed and the
/// sampler reads, for the whole run.
pub struct Live {
    writes: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    /// One per client slot: a lock only the sampler contends for.
    interval: Vec<Mutex<Histogram<u64>>>,
    merged: Mutex<Histogram<u64>>,
}

impl Live {
    /// Slots for `clients` client threads.
    ///
    /// # Errors
    /// As [`new_histogram`].
    pub fn new(clients: usize) -> Result<Live, LoadError> {
        Ok(Live {
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval: (0..clients)
                .map(|_| new_histogram().map(Mutex::new))
                .collect::<Result<_, _>>()?,
            merged: Mutex::new(new_histogram()?),
        })
    }

    /// Writes completed so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Failed operations so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The p99 write latency (µs) since the last call, if any write
    /// completed; clears the interval.
    pub fn take_interval_p99(&self) -> Option<u64> {
        let mut merged = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        merged.reset();
        for slot in &self.interval {
            let mut h = slot.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds: adding cannot fail.
            let _ = merged.add(&*h);
            h.reset();
        }
        (!merged.is_empty()).then(|| merged.value_at_quantile(0.99))
    }

    fn record_write(&self, slot: usize, us: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.interval.get(slot) {
            let _ = h.lock().unwrap_or_else(PoisonError::into_inner).record(us);
        }
    }
}

/// What the clients do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Regions of the cluster.
    pub regions: u64,
    /// Client threads.
    pub clients: usize,
    /// Fraction of operations that are writes.
    pub write_ratio: f64,
    /// Bytes per value.
    pub value_size: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

/// What one phase's clients did.
#[derive(Debug, Clone)]
pub struct PhaseLoad {
    /// Writes completed.
    pub writes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Operations that failed.
    pub errors: u64,
    /// From the clients' start to their stop.
    pub elapsed: Duration,
    /// Write latency.
    pub write_us: Percentiles,
    /// Read latency.
    pub read_us: Percentiles,
    /// When the first write succeeded, if one did.
    pub first_write: Option<Instant>,
}

impl PhaseLoad {
    /// Writes per second.
    pub fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// Reads per second.
    pub fn reads_per_s(&self) -> f64 {
        self.reads as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

struct Tally {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    errors: u64,
}

/// The client threads of one phase.
pub struct ClientPool {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Tally>>,
    started: Instant,
    first_write: Arc<OnceLock<Instant>>,
}

impl ClientPool {
    /// Starts `w.clients` threads sending `pattern` traffic; `phase` picks
    /// their random streams (the same seed and phase replay the same
    /// choices).
    ///
    /// # Errors
    /// A thread that cannot be spawned (the ones started are stopped).
    pub fn start(
        client: &Arc<Client>,
        live: &Arc<Live>,
        w: &Workload,
        pattern: KeyPattern,
        phase: u64,
    ) -> Result<ClientPool, LoadError> {
        let mut pool = ClientPool {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::with_capacity(w.clients),
            started: Instant::now(),
            first_write: Arc::new(OnceLock::new()),
        };
        let value: Arc<[u8]> = vec![b'v'; w.value_size].into();
        for slot in 0..w.clients {
            let mut rng = ChaCha8Rng::seed_from_u64(w.seed);
            rng.set_stream(phase.wrapping_mul(STREAMS_PER_PHASE) + slot as u64);
            let worker = Worker {
                client: client.clone(),
                live: live.clone(),
                stop: pool.stop.clone(),
                first_write: pool.first_write.clone(),
                value: value.clone(),
                regions: w.regions,
                write_ratio: w.write_ratio,
                pattern,
                slot,
                tally: Tally {
                    writes: new_histogram()?,
                    reads: new_histogram()?,
                    errors: 0,
                },
            };
            let spawned = thread::Builder::new()
                .name(format!("load-client-{slot}"))
                .spawn(move || worker.run(rng));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    let _ = pool.stop();
                    return Err(LoadError::Internal(format!("spawn client thread: {e}")));
                }
            }
        }
        Ok(pool)
    }

    /// Tells the threads to stop after their operation in flight.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether every thread has finished (after [`ClientPool::signal_stop`]).
    pub fn drained(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Stops the threads (each finishes its operation in flight) and sums
    /// what they did.
    ///
    /// # Errors
    /// [`LoadError::Internal`] if a client thread panicked.
    pub fn stop(self) -> Result<PhaseLoad, LoadError> {
        self.signal_stop();
        let mut writes = new_histogram()?;
        let mut reads = new_histogram()?;
        let mut errors = 0;
        let mut panicked = false;
        for t in self.threads {
            match t.join() {
                Ok(tally) => {
                    let _ = writes.add(&tally.writes);
                    let _ = reads.add(&tally.reads);
                    errors += tally.errors;
                }
                Err(_) => panicked = true,
            }
        }
        let elapsed = self.started.elapsed();
        if panicked {
            return Err(LoadError::Internal("a client thread panicked".into()));
        }
        Ok(PhaseLoad {
            writes: writes.len(),
            reads: reads.len(),
            errors,
            elapsed,
            write_us: percentiles(&writes),
            read_us: percentiles(&reads),
            first_write: self.first_write.get().copied(),
        })
    }
}

struct Worker {
    client: Arc<Client>,
    live: Arc<Live>,
    stop: Arc<AtomicBool>,
    first_write: Arc<OnceLock<Instant>>,
    value: Arc<[u8]>,
    regions: u64,
    write_ratio: f64,
    pattern: KeyPattern,
    slot: usize,
    tally: Tally,
}

impl Worker {
    fn run(mut self, mut rng: ChaCha8Rng) -> Tally {
        while !self.stop.load(Ordering::Relaxed) {
            let region = self.pattern.region(self.regions, &mut rng);
            let key = key_for(region, self.regions, rng.random_range(0..KEYS_PER_REGION));
            let is_write = rng.random_bool(self.write_ratio);
            let t = Instant::now();
            let ok = if is_write {
                self.client.put(&key, &self.value).is_ok()
            } else {
                self.client.get(&key).is_ok()
            };
            let us = u64::try_from(t.elapsed().as_micros())
                .unwrap_or(u64::MAX)
                .clamp(1, MAX_LATENCY_US);
            if !ok {
                self.tally.errors += 1;
                self.live.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if is_write {
                self.first_write.get_or_init(Instant::now);
                let _ = self.tally.writes.record(us);
                self.live.record_write(self.slot, us);
            } else {
                let _ = self.tally.reads.record(us);
                self.live.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_spot_takes_most_operations_on_few_regions() {
        let regions = 10_000;
        let p = KeyPattern::hot_spot(regions, 7);
        let KeyPattern::HotSpot { first, count } = p else {
            panic!("not a hot spot");
        };
        assert_eq!(count, 100);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 20_000;
        let hot = (0..n)
            .map(|_| p.region(regions, &mut rng))
            .filter(|r| (r + regions - first) % regions < count)
            .count();
        let share = hot as f64 / n as f64;
        assert!((0.88..0.93).contains(&share), "hot share {share}");
        assert_eq!(KeyPattern::hot_spot(regions, 7), p, "seeded");
        assert!(matches!(
            KeyPattern::hot_spot(10, 7),
            KeyPattern::HotSpot { first, count: 1 } if first < 10
        ));
    }

    #[test]
    fn keys_fall_in_their_region() {
        let regions = 1000;
        for r in [0, 1, 500, 999] {
            let k = key_for(r, regions, KEYS_PER_REGION - 1);
            assert!(k >= split_key(r, regions));
            let end = split_key(r + 1, regions);
            assert!(end.is_empty() || k < end, "region {r}");
        }
    }
}
