//! The engine on real RocksDB in temp dirs: durability across reopen,
//! atomic batches, snapshot isolation, ranges, concurrency.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::thread;

use flotilla_engine::{Cf, Durability, Engine, EngineOptions, Error, WriteOrigin, keys};
use flotilla_proto::eraftpb::{Entry, HardState};
use flotilla_proto::raft_serverpb::{RaftLocalState, RegionLocalState};
use prost::Message as _;

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path(), &EngineOptions::default()).expect("open engine")
}

fn entry(index: u64) -> Entry {
    Entry {
        term: 1,
        index,
        data: vec![index as u8; 16].into(),
        ..Default::default()
    }
}

#[test]
fn synced_write_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(&dir);
        let mut wb = engine.write_batch();
        wb.put(Cf::Default, &keys::data_key(b"k1"), b"v1");
        wb.put_msg(Cf::Raft, &keys::raft_log_key(1, 5), &entry(5));
        engine.write(wb, Durability::Sync).unwrap();
        assert_eq!(engine.stats().synced_writes(), 1);
        assert_eq!(engine.stats().writes(), 1);
        assert_eq!(engine.stats().written_ops(), 2, "one per put");
    }
    let engine = open(&dir);
    assert_eq!(
        engine
            .get(Cf::Default, &keys::data_key(b"k1"))
            .unwrap()
            .as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(
        engine
            .get_msg::<Entry>(Cf::Raft, &keys::raft_log_key(1, 5))
            .unwrap(),
        Some(entry(5))
    );
}

/// One batch with log entries, a raft state (raft CF) and data (default CF)
/// from several regions is either wholly present after reopen or not at all.
#[test]
fn batch_spanning_both_cfs_is_atomic_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let regions = [1u64, 2, 1000];
    {
        let engine = open(&dir);
        let mut wb = engine.write_batch();
        for &r in &regions {
            for i in 1..=10 {
                wb.put_msg(Cf::Raft, &keys::raft_log_key(r, i), &entry(i));
            }
            let state = RaftLocalState {
                hard_state: Some(HardState {
                    term: 1,
                    vote: 1,
                    commit: 10,
                }),
                last_index: 10,
            };
            wb.put_msg(Cf::Raft, &keys::raft_state_key(r), &state);
            wb.put(
                Cf::Default,
                &keys::data_key(format!("r{r}").as_bytes()),
                b"x",
            );
        }
        assert_eq!(wb.count(), regions.len() * 12);
        engine.write(wb, Durability::Sync).unwrap();
        // A second batch that is built but never written leaves no trace.
        let mut unwritten = engine.write_batch();
        unwritten.put(Cf::Default, b"zghost", b"boo");
        unwritten.delete(Cf::Raft, &keys::raft_state_key(1));
        drop(unwritten);
    }
    let engine = open(&dir);
    for &r in &regions {
        for i in 1..=10 {
            assert_eq!(
                engine
                    .get_msg::<Entry>(Cf::Raft, &keys::raft_log_key(r, i))
                    .unwrap(),
                Some(entry(i))
            );
        }
        let state: RaftLocalState = engine
            .get_msg(Cf::Raft, &keys::raft_state_key(r))
            .unwrap()
            .unwrap();
        assert_eq!(state.last_index, 10);
        assert!(
            engine
                .get(Cf::Default, &keys::data_key(format!("r{r}").as_bytes()))
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(engine.get(Cf::Default, b"zghost").unwrap(), None);
}

#[test]
fn buffered_write_is_visible_and_survives_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = open(&dir);
        let mut wb = engine.write_batch();
        wb.put(Cf::Default, b"za", b"1");
        engine.write(wb, Durability::Buffered).unwrap();
        assert_eq!(engine.stats().synced_writes(), 0);
        assert_eq!(
            engine.get(Cf::Default, b"za").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        engine.sync_wal().unwrap();
        assert_eq!(engine.stats().synced_writes(), 1);
    }
    assert_eq!(
        open(&dir).get(Cf::Default, b"za").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn snapshot_does_not_see_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine.put(Cf::Default, b"za", b"old").unwrap();
    engine
        .put(Cf::Raft, &keys::apply_state_key(1), b"s1")
        .unwrap();
    let snap = engine.snapshot();
    engine.put(Cf::Default, b"za", b"new").unwrap();
    engine.put(Cf::Default, b"zb", b"added").unwrap();
    engine.delete(Cf::Raft, &keys::apply_state_key(1)).unwrap();

    assert_eq!(
        snap.get(Cf::Default, b"za").unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert_eq!(snap.get(Cf::Default, b"zb").unwrap(), None);
    assert_eq!(
        snap.get(Cf::Raft, &keys::apply_state_key(1))
            .unwrap()
            .as_deref(),
        Some(&b"s1"[..])
    );
    let seen: Vec<_> = snap
        .iter(Cf::Default, keys::DATA_MIN_KEY, keys::DATA_MAX_KEY)
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(seen, vec![(b"za".to_vec(), b"old".to_vec())]);
    // The live engine sees the new state.
    assert_eq!(
        engine.get(Cf::Default, b"za").unwrap().as_deref(),
        Some(&b"new"[..])
    );
}

/// A snapshot is owned: it can move to another thread and outlive the
/// handle it was taken from.
#[test]
fn snapshot_moves_to_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine.put(Cf::Default, b"zk", b"v").unwrap();
    let snap = engine.snapshot();
    drop(engine);
    let got = thread::spawn(move || snap.get(Cf::Default, b"zk").unwrap())
        .join()
        .unwrap();
    assert_eq!(got.as_deref(), Some(&b"v"[..]));
}

#[test]
fn iteration_respects_bounds_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    for r in [1u64, 2, 3] {
        for i in [1u64, 2, 3, 255, 256, 1000] {
            engine
                .put(Cf::Raft, &keys::raft_log_key(r, i), &i.to_be_bytes())
                .unwrap();
        }
        engine
            .put(Cf::Raft, &keys::raft_state_key(r), b"state")
            .unwrap();
    }
    let snap = engine.snapshot();
    // Log entries [2, 256) of region 2 only, in index order.
    let (lo, hi) = keys::raft_log_range(2, 2, 256);
    let got: Vec<u64> = snap
        .iter(Cf::Raft, &lo, &hi)
        .map(|r| keys::decode_raft_log_key(&r.unwrap().0).unwrap())
        .map(|(region, index)| {
            assert_eq!(region, 2);
            index
        })
        .collect();
    assert_eq!(got, vec![2, 3, 255]);
    // The whole raft prefix of region 3: six entries then its state.
    let (lo, hi) = keys::region_raft_prefix_range(3);
    let all: Vec<_> = snap
        .iter(Cf::Raft, &lo, &hi)
        .map(|r| keys::decode(&r.unwrap().0).unwrap().to_owned_kind())
        .collect();
    assert_eq!(all.len(), 7);
    assert_eq!(all.last(), Some(&"raft_state".to_string()));
    // An empty end is unbounded.
    let tail = snap.iter(Cf::Raft, &keys::raft_state_key(2), b"").count();
    assert_eq!(tail, 1 + 7);
    // Scan stops when the callback breaks.
    let mut n = 0;
    snap.scan(
        Cf::Raft,
        keys::LOCAL_MIN_KEY,
        keys::LOCAL_MAX_KEY,
        |_, _| {
            n += 1;
            if n == 4 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(n, 4);
}

trait KindName {
    fn to_owned_kind(&self) -> String;
}

impl KindName for keys::Key<'_> {
    fn to_owned_kind(&self) -> String {
        match self {
            keys::Key::RaftLog { .. } => "raft_log",
            keys::Key::RaftState { .. } => "raft_state",
            keys::Key::ApplyState { .. } => "apply_state",
            keys::Key::ApplyOrigin { .. } => "apply_origin",
            keys::Key::RemovedPeer { .. } => "removed_peer",
            keys::Key::RegionState { .. } => "region_state",
            keys::Key::StoreIdent => "store_ident",
            keys::Key::StoreLiveness => "store_liveness",
            keys::Key::IdAllocator => "id_allocator",
            keys::Key::Data(_) => "data",
        }
        .to_string()
    }
}

#[test]
fn delete_range_removes_exactly_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    for i in 1..=20u64 {
        engine
            .put(Cf::Raft, &keys::raft_log_key(7, i), b"e")
            .unwrap();
    }
    engine
        .put(Cf::Raft, &keys::raft_log_key(8, 1), b"other")
        .unwrap();
    let (lo, hi) = keys::raft_log_range(7, 1, 11);
    engine.delete_range(Cf::Raft, &lo, &hi).unwrap();
    for i in 1..=20u64 {
        let present = engine
            .get(Cf::Raft, &keys::raft_log_key(7, i))
            .unwrap()
            .is_some();
        assert_eq!(present, i >= 11, "index {i}");
    }
    assert!(
        engine
            .get(Cf::Raft, &keys::raft_log_key(8, 1))
            .unwrap()
            .is_some()
    );

    // The same through a batch, over a region's whole data range.
    for k in [&b"a"[..], b"b", b"c", b"d"] {
        engine.put(Cf::Default, &keys::data_key(k), b"v").unwrap();
    }
    let mut wb = engine.write_batch();
    wb.delete_range(Cf::Default, &keys::data_key(b"b"), &keys::data_key(b"d"))
        .unwrap();
    engine.write(wb, Durability::Sync).unwrap();
    let left: Vec<_> = engine
        .snapshot()
        .iter(Cf::Default, keys::DATA_MIN_KEY, keys::DATA_MAX_KEY)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(left, vec![keys::data_key(b"a"), keys::data_key(b"d")]);
}

/// An inverted or empty range is refused before it reaches RocksDB (which
/// would log it and then fail it at memtable insertion, poisoning the
/// database), and the database keeps taking writes afterwards.
#[test]
fn inverted_or_empty_range_is_refused_and_db_stays_writable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let (a, b) = (keys::data_key(b"a"), keys::data_key(b"b"));
    let mut wb = engine.write_batch();
    for (start, end) in [(&b, &a), (&a, &a)] {
        assert!(matches!(
            wb.delete_range(Cf::Default, start, end),
            Err(Error::InvalidRange { .. })
        ));
        assert!(matches!(
            engine.delete_range(Cf::Default, start, end),
            Err(Error::InvalidRange { .. })
        ));
    }
    assert!(wb.is_empty(), "a refused range leaves the batch unchanged");
    wb.put(Cf::Default, &a, b"v");
    engine.write(wb, Durability::Sync).unwrap();
    engine.put(Cf::Default, &b, b"w").unwrap();
    assert_eq!(
        engine.get(Cf::Default, &a).unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(
        engine.get(Cf::Default, &b).unwrap().as_deref(),
        Some(&b"w"[..])
    );
}

/// Injected faults fail exactly the next `count` writes of one origin,
/// write nothing, and leave other origins alone.
#[test]
fn injected_write_faults_hit_only_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine.inject_write_faults(WriteOrigin::Apply, 2);
    let batch = |key: &[u8], origin| {
        let mut wb = engine.write_batch();
        wb.set_origin(origin);
        wb.put(Cf::Default, key, b"v");
        wb
    };
    engine
        .write(batch(b"raft", WriteOrigin::RaftLog), Durability::Sync)
        .unwrap();
    for key in [&b"x1"[..], b"x2"] {
        assert!(matches!(
            engine.write(batch(key, WriteOrigin::Apply), Durability::Sync),
            Err(Error::InjectedFault {
                origin: WriteOrigin::Apply
            })
        ));
        assert_eq!(engine.get(Cf::Default, key).unwrap(), None);
    }
    engine
        .write(batch(b"x3", WriteOrigin::Apply), Durability::Sync)
        .unwrap();
    assert!(engine.get(Cf::Default, b"x3").unwrap().is_some());
    assert!(engine.get(Cf::Default, b"raft").unwrap().is_some());
}

#[test]
fn concurrent_writers_all_land() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(open(&dir));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let engine = engine.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let mut wb = engine.write_batch();
                    wb.put_msg(Cf::Raft, &keys::raft_log_key(t, i), &entry(i));
                    wb.put(
                        Cf::Default,
                        &keys::data_key(format!("{t}-{i}").as_bytes()),
                        b"v",
                    );
                    let durability = if i % 50 == 0 {
                        Durability::Sync
                    } else {
                        Durability::Buffered
                    };
                    engine.write(wb, durability).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(engine.stats().writes(), THREADS * PER_THREAD);
    let snap = engine.snapshot();
    for t in 0..THREADS {
        let (lo, hi) = keys::raft_log_range(t, 0, PER_THREAD);
        assert_eq!(snap.iter(Cf::Raft, &lo, &hi).count() as u64, PER_THREAD);
    }
    let data = snap
        .iter(Cf::Default, keys::DATA_MIN_KEY, keys::DATA_MAX_KEY)
        .count() as u64;
    assert_eq!(data, THREADS * PER_THREAD);
}

#[test]
fn typed_messages_and_decode_errors() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let state = RegionLocalState::default();
    engine
        .put_msg(Cf::Raft, &keys::region_state_key(3), &state)
        .unwrap();
    assert_eq!(
        engine
            .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(3))
            .unwrap(),
        Some(state)
    );
    assert_eq!(
        engine
            .get_msg::<RegionLocalState>(Cf::Raft, &keys::region_state_key(4))
            .unwrap(),
        None
    );
    // A value that is not a valid message: a typed decode error naming the key.
    engine
        .put(Cf::Raft, &keys::raft_state_key(3), &[0x0a, 0xff])
        .unwrap();
    match engine.get_msg::<RaftLocalState>(Cf::Raft, &keys::raft_state_key(3)) {
        Err(Error::Decode { key, .. }) => assert_eq!(key, keys::raft_state_key(3).to_vec()),
        other => panic!("expected a decode error, got {other:?}"),
    }
    let snap = engine.snapshot();
    assert!(matches!(
        snap.get_msg::<RaftLocalState>(Cf::Raft, &keys::raft_state_key(3)),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn batch_from_another_engine_is_rejected_and_writes_nothing() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e1, e2) = (open(&d1), open(&d2));
    let mut wb = e1.write_batch();
    wb.put(Cf::Default, b"zx", b"1");
    assert!(matches!(
        e2.write(wb, Durability::Sync),
        Err(Error::ForeignBatch)
    ));
    assert_eq!(e2.get(Cf::Default, b"zx").unwrap(), None);
    assert_eq!(e1.get(Cf::Default, b"zx").unwrap(), None);
    // A cleared batch is empty and writing it is a no-op.
    let mut wb = e1.write_batch();
    wb.put(Cf::Default, b"zy", b"2");
    assert_eq!(wb.count(), 1);
    wb.clear();
    assert!(wb.is_empty());
    e1.write(wb, Durability::Sync).unwrap();
    assert_eq!(e1.get(Cf::Default, b"zy").unwrap(), None);
    assert_eq!(e1.stats().writes(), 0);
}

#[test]
fn approximate_size_grows_with_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let (lo, hi) = keys::raft_log_range(1, 0, u64::MAX);
    assert_eq!(engine.approximate_size(Cf::Raft, &lo, &hi), 0);
    let mut wb = engine.write_batch();
    // Incompressible values (xorshift), so compression cannot hide them.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for i in 0..2000u64 {
        let value: Vec<u8> = (0..1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        wb.put(Cf::Raft, &keys::raft_log_key(1, i), &value);
    }
    engine.write(wb, Durability::Buffered).unwrap();
    engine.flush(Cf::Raft).unwrap();
    let size = engine.approximate_size(Cf::Raft, &lo, &hi);
    // 2,000 values of 1 KiB: at least 1 MiB on disk.
    assert!(size > 1 << 20, "size {size}");
    // A range holding nothing stays empty.
    let (lo2, hi2) = keys::raft_log_range(2, 0, u64::MAX);
    assert_eq!(engine.approximate_size(Cf::Raft, &lo2, &hi2), 0);
}

#[test]
fn invalid_options_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        background_jobs: 0,
        ..Default::default()
    };
    assert!(matches!(
        Engine::open(dir.path(), &opts),
        Err(Error::InvalidOptions(_))
    ));
    let opts = EngineOptions {
        write_buffer_bytes: 0,
        ..Default::default()
    };
    assert!(matches!(
        Engine::open(dir.path(), &opts),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn encoded_value_size_matches_prost() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let e = entry(9);
    engine
        .put_msg(Cf::Raft, &keys::raft_log_key(1, 9), &e)
        .unwrap();
    let raw = engine
        .get(Cf::Raft, &keys::raft_log_key(1, 9))
        .unwrap()
        .unwrap();
    assert_eq!(raw, e.encode_to_vec());
}

/// The engine reports RocksDB's memory: writes fill the memtables (of
/// both column families), and a read of a flushed key fills the block
/// cache.
#[test]
fn memory_usage_counts_memtables_and_the_block_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let before = engine.memory_usage().unwrap();
    let mut wb = engine.write_batch();
    for i in 0..1_000u64 {
        wb.put(Cf::Default, &keys::data_key(&i.to_be_bytes()), &[7u8; 100]);
        wb.put_msg(Cf::Raft, &keys::raft_log_key(1, i + 1), &entry(i + 1));
    }
    engine.write(wb, Durability::Sync).unwrap();
    let written = engine.memory_usage().unwrap();
    assert!(
        written.memtables > before.memtables + 100_000,
        "{before:?} -> {written:?}"
    );
    drop(engine);
    let engine = open(&dir);
    let reopened = engine.memory_usage().unwrap();
    for i in 0..1_000u64 {
        assert!(
            engine
                .get(Cf::Default, &keys::data_key(&i.to_be_bytes()))
                .unwrap()
                .is_some()
        );
    }
    let read = engine.memory_usage().unwrap();
    assert!(
        read.block_cache > reopened.block_cache,
        "{reopened:?} -> {read:?}"
    );
}

/// The database stays open, its directory locked, while any clone of the
/// engine lives; the close watch says when the last one went, and the
/// directory opens again then (not before).
#[test]
fn close_watch_tells_when_the_last_clone_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let watch = engine.close_watch();
    let straggler = engine.clone();
    drop(engine);
    assert!(!watch.is_closed(), "closed with a clone alive");
    assert!(
        Engine::open(dir.path(), &EngineOptions::default()).is_err(),
        "opened twice at once"
    );
    drop(straggler);
    assert!(watch.is_closed());
    Engine::open(dir.path(), &EngineOptions::default()).expect("reopen");
}
