//! Bootstrapping a new cluster: the store ident and the initial regions,
//! written identically on every store so that 100,000 regions can exist
//! from the start without a single raft message.

use flotilla_engine::{Cf, Durability, Engine, WriteBatch, keys};
use flotilla_proto::eraftpb::HardState;
use flotilla_proto::metapb::{Peer, PeerRole, Region, RegionEpoch};
use flotilla_proto::raft_serverpb::{
    PeerState, RaftApplyState, RaftLocalState, RaftTruncatedState, RegionLocalState, StoreIdent,
};

use super::error::{Error, Result};
use super::peer_storage::{RAFT_INIT_LOG_INDEX, RAFT_INIT_LOG_TERM};

/// Bits of a store-allocated id taken by the per-store counter; the store
/// id sits above them (DESIGN §6).
pub const ID_COUNTER_BITS: u32 = 40;
/// Most stores a bootstrap region can have a peer on (peer ids of initial
/// regions are `region_id * MAX_INITIAL_STORES + store index + 1`).
pub const MAX_INITIAL_STORES: u64 = 64;
/// Most regions a cluster may be bootstrapped with (far beyond what one
/// machine's memory holds; a larger count is a mistake, refused before
/// anything is allocated).
pub const MAX_INITIAL_REGIONS: u64 = 10_000_000;
/// The `conf_ver` of every bootstrapped region: only a membership change
/// moves it past this.
pub const BOOTSTRAP_CONF_VER: u64 = 1;

/// The `n`-th of `count` boundaries splitting the key space evenly: the
/// 8-byte big-endian value `n * 2^64 / count` (empty for `n == 0`, which
/// means "from the start", and for `n == count`, "to the end").
pub fn split_key(n: u64, count: u64) -> Vec<u8> {
    if n == 0 || n >= count {
        return Vec::new();
    }
    let v = ((u128::from(n) << 64) / u128::from(count)) as u64;
    v.to_be_bytes().to_vec()
}

/// The initial regions of a cluster with `regions` regions over `stores`:
/// region `i + 1` covers `[split_key(i), split_key(i + 1))` and has one
/// voter on every store.
///
/// # Errors
/// [`Error::Config`] for zero regions, more than
/// [`MAX_INITIAL_REGIONS`], no stores, too many stores, or duplicate store
/// ids.
pub fn initial_regions(stores: &[u64], regions: u64) -> Result<Vec<Region>> {
    if regions == 0 || stores.is_empty() {
        return Err(Error::Config(
            "need at least one region and one store".into(),
        ));
    }
    if regions > MAX_INITIAL_REGIONS {
        return Err(Error::Config(format!(
            "{regions} regions (at most {MAX_INITIAL_REGIONS})"
        )));
    }
    if stores.len() as u64 > MAX_INITIAL_STORES {
        return Err(Error::Config(format!(
            "at most {MAX_INITIAL_STORES} stores"
        )));
    }
    let mut sorted = stores.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != stores.len() || sorted.contains(&0) {
        return Err(Error::Config(
            "store ids must be unique and non-zero".into(),
        ));
    }
    Ok((0..regions)
        .map(|i| {
            let id = i + 1;
            Region {
                id,
                start_key: split_key(i, regions).into(),
                end_key: split_key(i + 1, regions).into(),
                region_epoch: Some(RegionEpoch {
                    conf_ver: BOOTSTRAP_CONF_VER,
                    version: 1,
                }),
                peers: stores
                    .iter()
                    .enumerate()
                    .map(|(j, &store_id)| Peer {
                        id: id * MAX_INITIAL_STORES + j as u64 + 1,
                        store_id,
                        role: PeerRole::Voter as i32,
                    })
                    .collect(),
            }
        })
        .collect())
}

/// Puts the states a region starts from into `wb`: `Normal`, an empty log
/// at (`RAFT_INIT_LOG_INDEX`, `RAFT_INIT_LOG_TERM`), everything before it
/// applied. `kept` is a hard state a peer of the region had before (an
/// uninitialized one that voted): its term and vote stay, so no peer
/// votes twice in a term.
pub fn write_initial_states(wb: &mut WriteBatch, region: &Region, kept: Option<HardState>) {
    let id = region.id;
    wb.put_msg(
        Cf::Raft,
        &keys::region_state_key(id),
        &RegionLocalState {
            state: PeerState::Normal as i32,
            region: Some(region.clone()),
            merge_state: None,
            applying_snapshot: None,
            applying_old_range: None,
        },
    );
    let (term, vote) = match kept {
        Some(hs) if hs.term > RAFT_INIT_LOG_TERM => (hs.term, hs.vote),
        _ => (RAFT_INIT_LOG_TERM, 0),
    };
    wb.put_msg(
        Cf::Raft,
        &keys::raft_state_key(id),
        &RaftLocalState {
            hard_state: Some(HardState {
                term,
                vote,
                commit: RAFT_INIT_LOG_INDEX,
            }),
            last_index: RAFT_INIT_LOG_INDEX,
        },
    );
    wb.put_msg(
        Cf::Raft,
        &keys::apply_state_key(id),
        &RaftApplyState {
            applied_index: RAFT_INIT_LOG_INDEX,
            truncated_state: Some(RaftTruncatedState {
                index: RAFT_INIT_LOG_INDEX,
                term: RAFT_INIT_LOG_TERM,
            }),
        },
    );
}

/// Writes store `store_id`'s ident and the initial states of `regions` into
/// an empty engine, in one synced batch.
///
/// # Errors
/// [`Error::Config`] if the engine is already bootstrapped, `store_id` cannot
/// prefix ids (0, or too large), or a region's epoch is below the
/// bootstrap epoch (`conf_ver` and `version` start at
/// [`BOOTSTRAP_CONF_VER`] and 1: a membership change then always moves
/// `conf_ver` past its bootstrap value); engine errors.
pub fn bootstrap_store(
    engine: &Engine,
    cluster_id: u64,
    store_id: u64,
    regions: &[Region],
) -> Result<()> {
    super::id_alloc::check_store_id(store_id)?;
    if let Some(r) = regions.iter().find(|r| {
        r.region_epoch
            .is_none_or(|e| e.conf_ver < BOOTSTRAP_CONF_VER || e.version < 1)
    }) {
        return Err(Error::Config(format!(
            "region {} starts at epoch {:?}: conf_ver must be at least {BOOTSTRAP_CONF_VER} \
             and version at least 1",
            r.id, r.region_epoch
        )));
    }
    if engine
        .get_msg::<StoreIdent>(Cf::Raft, keys::STORE_IDENT_KEY)?
        .is_some()
    {
        return Err(Error::Config("store already bootstrapped".into()));
    }
    let mut wb = engine.write_batch();
    for region in regions {
        write_initial_states(&mut wb, region, None);
    }
    // The ident goes last in the same batch: a store with an ident is
    // completely bootstrapped.
    wb.put_msg(
        Cf::Raft,
        keys::STORE_IDENT_KEY,
        &StoreIdent {
            cluster_id,
            store_id,
        },
    );
    engine.write(wb, Durability::Sync)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keys_cover_the_key_space_in_order() {
        let n = 7;
        let keys: Vec<Vec<u8>> = (0..=n).map(|i| split_key(i, n)).collect();
        assert!(keys[0].is_empty() && keys[n as usize].is_empty());
        for w in keys[1..n as usize].windows(2) {
            assert!(w[0] < w[1]);
        }
    }

    #[test]
    fn initial_regions_are_adjacent_with_unique_peers() {
        let regions = initial_regions(&[1, 2, 3], 100).unwrap();
        assert_eq!(regions.len(), 100);
        for w in regions.windows(2) {
            assert_eq!(w[0].end_key, w[1].start_key);
        }
        let mut ids: Vec<u64> = regions
            .iter()
            .flat_map(|r| r.peers.iter().map(|p| p.id))
            .collect();
        let before = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), before);
        assert!(initial_regions(&[1, 1], 1).is_err());
        assert!(initial_regions(&[], 1).is_err());
        assert!(initial_regions(&[1], 0).is_err());
    }

    /// A bootstrapped region starts at the bootstrap epoch or later (new
    /// leaders rely on it: a region still at `BOOTSTRAP_CONF_VER` removed
    /// nobody); one below is refused and nothing is written.
    #[test]
    fn regions_below_the_bootstrap_epoch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &flotilla_engine::EngineOptions::default()).unwrap();
        let good = initial_regions(&[1, 2, 3], 1).unwrap().remove(0);
        let at = |conf_ver, version| Region {
            region_epoch: Some(RegionEpoch { conf_ver, version }),
            ..good.clone()
        };
        let no_epoch = Region {
            region_epoch: None,
            ..good.clone()
        };
        for bad in [at(0, 1), at(1, 0), no_epoch] {
            let res = bootstrap_store(&engine, 1, 1, &[good.clone(), bad.clone()]);
            assert!(matches!(res, Err(Error::Config(_))), "{bad:?}: {res:?}");
            assert!(
                engine
                    .get(Cf::Raft, keys::STORE_IDENT_KEY)
                    .unwrap()
                    .is_none()
            );
        }
        bootstrap_store(&engine, 1, 1, &[at(3, 2)]).unwrap();
    }
}
