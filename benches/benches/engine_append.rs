//! The physical ceiling: raft-log-shaped appends through the engine.
//!
//! Keys come from `engine::keys::raft_log_key`, values are 128 bytes. Each
//! iteration writes one `WriteBatch` of `batch` entries, spread round-robin
//! over `regions` regions (1, or 1,000 interleaved), synced or buffered.
//! Throughput is reported in entries per second.
//!
//! `cargo bench -p flotilla-benches --bench engine_append`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flotilla_engine::{Cf, Durability, Engine, EngineOptions, keys};

/// Bytes of each appended value (an entry-sized payload).
const VALUE_BYTES: usize = 128;
/// Region counts compared: one hot region vs many interleaved in one batch.
const REGION_COUNTS: [usize; 2] = [1, 1_000];
/// Entries per write batch.
const BATCH_SIZES: [u64; 3] = [1, 100, 1_000];

fn bench_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), &EngineOptions::default()).expect("open engine");
    let value = vec![0xab_u8; VALUE_BYTES];
    let mut group = c.benchmark_group("engine_append");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (durability, name) in [(Durability::Sync, "sync"), (Durability::Buffered, "nosync")] {
        for regions in REGION_COUNTS {
            for batch in BATCH_SIZES {
                group.throughput(Throughput::Elements(batch));
                let id = BenchmarkId::new(
                    format!("{name}/regions_{regions}"),
                    format!("batch_{batch}"),
                );
                let mut next_index = vec![1u64; regions];
                let mut cursor = 0usize;
                group.bench_function(id, |b| {
                    b.iter(|| {
                        let mut wb = engine.write_batch();
                        for _ in 0..batch {
                            let region = cursor % regions;
                            cursor += 1;
                            let key = keys::raft_log_key(region as u64 + 1, next_index[region]);
                            next_index[region] += 1;
                            wb.put(Cf::Raft, &key, &value);
                        }
                        engine.write(wb, durability).expect("write");
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
