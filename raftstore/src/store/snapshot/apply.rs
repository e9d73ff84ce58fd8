//! Step 5: writing a received snapshot into the engine (on the apply
//! side, after every entry committed before it).

use std::path::Path;

use flotilla_engine::{Cf, Durability, Engine, WriteOrigin, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_serverpb::{
    PeerState, RaftApplyState, RaftTruncatedState, RegionLocalState,
};

use super::{SnapError, SnapReader};
use crate::store::util::clear_data_range;

/// Bytes of key-values written per engine write while applying.
const APPLY_BATCH_BYTES: usize = 4 << 20;

/// The apply state a snapshot at (`index`, `term`) leaves.
pub fn snapshot_apply_state(index: u64, term: u64) -> RaftApplyState {
    RaftApplyState {
        applied_index: index,
        truncated_state: Some(RaftTruncatedState { index, term }),
    }
}

/// Clears `region`'s data range (and `old`, the range the peer had before
/// the snapshot, when a split or merge it missed moved its bounds) and
/// writes the file at `path` into it,
/// in batches; then writes the region `Normal` with the apply state at
/// (`index`, `term`), synced, and removes the file. Safe to run again
/// after a crash at any point (the region stays `Applying` until the last
/// write). Returns the key-values written.
///
/// # Errors
/// A file that cannot be read or is corrupt (nothing after the clearing
/// is marked `Normal`: the region stays `Applying`), engine failures.
pub fn apply_snapshot_file(
    engine: &Engine,
    region: &Region,
    old: Option<&Region>,
    path: &Path,
    index: u64,
    term: u64,
) -> Result<u64, SnapError> {
    let mut reader = SnapReader::open(path)?;
    let start = keys::data_key(&region.start_key);
    let end = keys::data_end_key(&region.end_key);
    let new_batch = || {
        let mut wb = engine.write_batch();
        wb.set_origin(WriteOrigin::Apply);
        wb
    };
    let mut wb = new_batch();
    clear_data_range(&mut wb, region)?;
    if let Some(old) =
        old.filter(|o| o.start_key != region.start_key || o.end_key != region.end_key)
    {
        clear_data_range(&mut wb, old)?;
    }
    let mut kvs = 0u64;
    while let Some((key, value)) = reader.next_kv()? {
        let data_key = keys::data_key(&key);
        if data_key < start || data_key >= end {
            return Err(SnapError::Corrupt(format!(
                "a key outside region {}'s range",
                region.id
            )));
        }
        wb.put(Cf::Default, &data_key, &value);
        kvs += 1;
        if wb.data_size() >= APPLY_BATCH_BYTES {
            engine.write(
                std::mem::replace(&mut wb, new_batch()),
                Durability::Buffered,
            )?;
        }
    }
    // Crash point: every key written, the region still `Applying`.
    fail::fail_point!("snapshot_apply_before_normal", |_| {
        engine.write(std::mem::replace(&mut wb, new_batch()), Durability::Sync)?;
        Err(SnapError::Io(std::io::Error::other(
            "failpoint snapshot_apply_before_normal",
        )))
    });
    wb.put_msg(
        Cf::Raft,
        &keys::apply_state_key(region.id),
        &snapshot_apply_state(index, term),
    );
    let mut state = RegionLocalState {
        region: Some(region.clone()),
        ..Default::default()
    };
    state.set_state(PeerState::Normal);
    wb.put_msg(Cf::Raft, &keys::region_state_key(region.id), &state);
    engine.write(wb, Durability::Sync)?;
    let _ = std::fs::remove_file(path);
    Ok(kvs)
}

#[cfg(test)]
mod tests {
    use flotilla_engine::EngineOptions;

    use super::super::SnapWriter;
    use super::*;

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region {
            id: 5,
            start_key: start.to_vec().into(),
            end_key: end.to_vec().into(),
            ..Default::default()
        }
    }

    /// A snapshot that shrinks its region (a split the peer missed) clears
    /// the keys of the old range outside the new one, where they would
    /// belong to no region of the store; the new range holds exactly the
    /// snapshot's keys.
    #[test]
    fn a_shrinking_snapshot_clears_the_old_range() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path().join("db"), &EngineOptions::default()).unwrap();
        let mut wb = engine.write_batch();
        for k in [&b"b"[..], b"m", b"x"] {
            wb.put(Cf::Default, &keys::data_key(k), b"stale");
        }
        engine.write(wb, Durability::Sync).unwrap();
        let path = dir.path().join("snap");
        let mut w = SnapWriter::create(&path).unwrap();
        w.put(b"c", b"new").unwrap();
        w.finish().unwrap();

        let new = region(b"a", b"k");
        let kvs =
            apply_snapshot_file(&engine, &new, Some(&region(b"a", b"")), &path, 9, 2).unwrap();
        assert_eq!(kvs, 1);
        let get = |k: &[u8]| engine.get(Cf::Default, &keys::data_key(k)).unwrap();
        assert_eq!(get(b"b"), None);
        assert_eq!(get(b"c").as_deref(), Some(&b"new"[..]));
        assert_eq!(
            get(b"m"),
            None,
            "a key of the old range outside the new one"
        );
        assert_eq!(get(b"x"), None);
        let state: RegionLocalState = engine
            .get_msg(Cf::Raft, &keys::region_state_key(5))
            .unwrap()
            .unwrap();
        assert_eq!(state.state(), PeerState::Normal);
    }
}
