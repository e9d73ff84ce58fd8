//! The records a replica keeps of the peers its region removed (key
//! `keys::removed_peer_key`, value `RemovedPeer`). Lifecycle: written by
//! the apply side with the conf change that removes a peer
//! ([`record_removals`]); replaced by a received snapshot's, in the batch
//! that persists it ([`replace`]); read by the leader before it adds a
//! peer ([`lookup`]: ids are never reused), by a new leader that takes up
//! the removal notes and by snapshot generation ([`read_all`]); cleared
//! with the region's peer ([`clear`], on every destroy path).

use flotilla_engine::{Cf, Engine, Snapshot, WriteBatch, keys};
use flotilla_proto::metapb::{Peer, Region};
use flotilla_proto::raft_serverpb::RemovedPeer;
use prost::Message as _;

use super::admin::removed_peers;

/// Puts a record of every peer `before` lists and `after` does not into
/// `wb`, under `after`'s `conf_ver` (no read: two changes in one batch
/// each write their own).
pub fn record_removals(wb: &mut WriteBatch, before: &Region, after: &Region) {
    let conf_ver = after.region_epoch.map_or(0, |e| e.conf_ver);
    for peer in removed_peers(before, after) {
        let record = RemovedPeer {
            peer: Some(peer),
            conf_ver,
        };
        wb.put_msg(
            Cf::Raft,
            &keys::removed_peer_key(after.id, peer.id),
            &record,
        );
    }
}

/// Puts the deletion of region `region_id`'s records into `wb`.
pub fn clear(wb: &mut WriteBatch, region_id: u64) {
    let (lo, hi) = keys::removed_peers_range(region_id);
    // `lo < hi`: the engine takes the range.
    let res = wb.delete_range(Cf::Raft, &lo, &hi);
    debug_assert!(res.is_ok(), "{res:?}");
}

/// Puts into `wb` the replacement of region `region_id`'s records by
/// `records` (a received snapshot's).
pub fn replace(wb: &mut WriteBatch, region_id: u64, records: &[RemovedPeer]) {
    clear(wb, region_id);
    for record in records {
        if let Some(peer) = record.peer {
            wb.put_msg(
                Cf::Raft,
                &keys::removed_peer_key(region_id, peer.id),
                record,
            );
        }
    }
}

/// Region `region_id`'s records in `snap`. One that does not decode is
/// left out: the records only refuse ids and prompt removal notes, and a
/// region must not stop electing or sending snapshots for one.
///
/// # Errors
/// Engine errors.
pub fn read_all(snap: &Snapshot, region_id: u64) -> flotilla_engine::Result<Vec<RemovedPeer>> {
    let (lo, hi) = keys::removed_peers_range(region_id);
    let mut records = Vec::new();
    snap.scan(Cf::Raft, &lo, &hi, |_, v| {
        records.extend(RemovedPeer::decode(v).ok());
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(records)
}

/// The removed peer `peer_id` of region `region_id`, if recorded.
///
/// # Errors
/// Engine errors (and a record that does not decode).
pub fn lookup(
    engine: &Engine,
    region_id: u64,
    peer_id: u64,
) -> flotilla_engine::Result<Option<Peer>> {
    let key = keys::removed_peer_key(region_id, peer_id);
    let record: Option<RemovedPeer> = engine.get_msg(Cf::Raft, &key)?;
    Ok(record.and_then(|r| r.peer))
}
