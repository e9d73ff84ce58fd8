//! The raft column family's memtable is hashed by region (a skiplist per
//! region prefix). Reads must not see the difference: a model-checked run of
//! random puts, deletes, range deletes, flushes and reopens, read back by
//! point gets, one-region log ranges (read from one bucket) and ranges across
//! regions (read in total order), each compared with a `BTreeMap`.

use std::collections::BTreeMap;

use flotilla_engine::{Cf, Engine, EngineOptions, keys};
use proptest::prelude::*;

/// Regions the generated keys belong to (few, so ranges hold several).
const REGIONS: u64 = 3;
/// Log indexes drawn per region.
const INDEXES: u64 = 12;

/// One raft-CF key of the schema's shapes.
#[derive(Debug, Clone, Copy)]
enum KeyShape {
    Log(u64, u64),
    RaftState(u64),
    ApplyState(u64),
    RegionState(u64),
    StoreIdent,
}

impl KeyShape {
    fn bytes(self) -> Vec<u8> {
        match self {
            KeyShape::Log(r, i) => keys::raft_log_key(r, i).to_vec(),
            KeyShape::RaftState(r) => keys::raft_state_key(r).to_vec(),
            KeyShape::ApplyState(r) => keys::apply_state_key(r).to_vec(),
            KeyShape::RegionState(r) => keys::region_state_key(r).to_vec(),
            KeyShape::StoreIdent => keys::STORE_IDENT_KEY.to_vec(),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put(KeyShape, u8),
    Delete(KeyShape),
    /// Deletes region `.0`'s log entries `[.1, .2)`.
    DeleteLogRange(u64, u64, u64),
    Flush,
    Reopen,
}

fn key_shape() -> impl Strategy<Value = KeyShape> {
    let region = 1..=REGIONS;
    prop_oneof![
        6 => (region.clone(), 0..INDEXES).prop_map(|(r, i)| KeyShape::Log(r, i)),
        1 => region.clone().prop_map(KeyShape::RaftState),
        1 => region.clone().prop_map(KeyShape::ApplyState),
        1 => region.prop_map(KeyShape::RegionState),
        1 => Just(KeyShape::StoreIdent),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (key_shape(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => key_shape().prop_map(Op::Delete),
        1 => (1..=REGIONS, 0..INDEXES, 0..INDEXES)
            .prop_map(|(r, a, b)| Op::DeleteLogRange(r, a.min(b), a.max(b))),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

fn model_range(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    lo: &[u8],
    hi: &[u8],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .range(lo.to_vec()..hi.to_vec())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn engine_range(engine: &Engine, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    engine
        .snapshot()
        .iter(Cf::Raft, lo, hi)
        .map(|kv| kv.expect("iterate"))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every read of the raft column family agrees with a sorted map of
    /// what was written, whether the keys sit in the memtable, in flushed
    /// files or in both, before and after a reopen.
    #[test]
    fn hashed_raft_memtable_reads_like_a_sorted_map(
        ops in proptest::collection::vec(op(), 1..80),
        ranges in proptest::collection::vec((1..=REGIONS, 0..=INDEXES, 0..=INDEXES), 4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let open = || Engine::open(dir.path(), &EngineOptions::default()).expect("open");
        let mut engine = open();
        let mut model = BTreeMap::new();
        for op in &ops {
            match *op {
                Op::Put(k, v) => {
                    engine.put(Cf::Raft, &k.bytes(), &[v]).unwrap();
                    model.insert(k.bytes(), vec![v]);
                }
                Op::Delete(k) => {
                    engine.delete(Cf::Raft, &k.bytes()).unwrap();
                    model.remove(&k.bytes());
                }
                Op::DeleteLogRange(r, a, b) => {
                    let (lo, hi) = keys::raft_log_range(r, a, b);
                    if lo < hi {
                        engine.delete_range(Cf::Raft, &lo, &hi).unwrap();
                        model.retain(|k, _| !(k.as_slice() >= &lo[..] && k.as_slice() < &hi[..]));
                    }
                }
                Op::Flush => engine.flush(Cf::Raft).unwrap(),
                Op::Reopen => {
                    drop(engine);
                    engine = open();
                }
            }
        }
        // Point reads.
        for (k, v) in &model {
            prop_assert_eq!(engine.get(Cf::Raft, k).unwrap(), Some(v.clone()));
        }
        for r in 1..=REGIONS {
            for i in 0..INDEXES {
                let k = keys::raft_log_key(r, i);
                prop_assert_eq!(engine.get(Cf::Raft, &k).unwrap(), model.get(&k[..]).cloned());
            }
        }
        // Log ranges of one region: read from that region's bucket alone.
        for &(r, a, b) in &ranges {
            let (lo, hi) = keys::raft_log_range(r, a.min(b), a.max(b));
            prop_assert_eq!(engine_range(&engine, &lo, &hi), model_range(&model, &lo, &hi));
        }
        // Ranges across buckets: a region's whole prefix, every local key,
        // and an unbounded tail.
        for r in 1..=REGIONS {
            let (lo, hi) = keys::region_raft_prefix_range(r);
            prop_assert_eq!(engine_range(&engine, &lo, &hi), model_range(&model, &lo, &hi));
        }
        let (lo, hi) = (keys::LOCAL_MIN_KEY, keys::LOCAL_MAX_KEY);
        prop_assert_eq!(engine_range(&engine, lo, hi), model_range(&model, lo, hi));
        let from = keys::raft_state_key(2);
        let tail: Vec<_> = model.range(from.to_vec()..).map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(engine_range(&engine, &from, b""), tail);
    }
}
