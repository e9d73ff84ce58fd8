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

/// Checks that `regions` can start serving on store `store_id`: each has
/// a non-zero id, a range whose start is below its end (or an open end),
/// the bootstrap epoch or later (`conf_ver` at least
/// [`BOOTSTRAP_CONF_VER`] and `version` at least 1, so a membership change
/// always moves `conf_ver` past its bootstrap value), at least one voter,
/// voters and learners only (no joint roles), no peer id or store id 0 and
/// none twice, and a peer on `store_id`; no two regions share an id or
/// overlap.
///
/// # Errors
/// [`Error::Config`] naming the first region that fails and why.
pub fn check_initial_regions(store_id: u64, regions: &[Region]) -> Result<()> {
    let bad = |r: &Region, why: &str| Err(Error::Config(format!("initial region {}: {why}", r.id)));
    for r in regions {
        if r.id == 0 {
            return bad(r, "region id 0");
        }
        if !r.end_key.is_empty() && r.start_key >= r.end_key {
            return bad(r, "its start key is not below its end key");
        }
        if r.region_epoch
            .is_none_or(|e| e.conf_ver < BOOTSTRAP_CONF_VER || e.version < 1)
        {
            return bad(
                r,
                &format!(
                    "epoch {:?}: conf_ver must be at least {BOOTSTRAP_CONF_VER} and version at least 1",
                    r.region_epoch
                ),
            );
        }
        let mut ids: Vec<u64> = r.peers.iter().map(|p| p.id).collect();
        let mut stores: Vec<u64> = r.peers.iter().map(|p| p.store_id).collect();
        ids.sort_unstable();
        ids.dedup();
        stores.sort_unstable();
        stores.dedup();
        if ids.len() != r.peers.len() || stores.len() != r.peers.len() {
            return bad(r, "a peer id or a store twice");
        }
        if r.peers.iter().any(|p| p.id == 0 || p.store_id == 0) {
            return bad(r, "a peer id or store id 0");
        }
        let role = |p: &Peer| PeerRole::try_from(p.role).ok();
        if r.peers
            .iter()
            .any(|p| !matches!(role(p), Some(PeerRole::Voter | PeerRole::Learner)))
        {
            return bad(r, "a peer neither a voter nor a learner");
        }
        if !r.peers.iter().any(|p| role(p) == Some(PeerRole::Voter)) {
            return bad(r, "no voter");
        }
        if !r.peers.iter().any(|p| p.store_id == store_id) {
            return bad(r, &format!("no peer on store {store_id}"));
        }
    }
    let mut by_start: Vec<&Region> = regions.iter().collect();
    by_start.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    for w in by_start.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.end_key.is_empty() || a.end_key > b.start_key {
            return bad(b, &format!("overlaps region {}", a.id));
        }
    }
    let mut ids: Vec<u64> = regions.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Config("two initial regions share an id".into()));
    }
    Ok(())
}

/// Writes store `store_id`'s ident and the initial states of `regions` into
/// an empty engine, in one synced batch.
///
/// # Errors
/// [`Error::Config`] if the engine is already bootstrapped, `store_id` cannot
/// prefix ids (0, or too large), or `regions` could not serve (see
/// [`check_initial_regions`]); engine errors. Nothing is written then.
pub fn bootstrap_store(
    engine: &Engine,
    cluster_id: u64,
    store_id: u64,
    regions: &[Region],
) -> Result<()> {
    super::id_alloc::check_store_id(store_id)?;
    check_initial_regions(store_id, regions)?;
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

    /// Bad input through the public bootstrap: initial regions that could
    /// not serve are refused with `Error::Config` and nothing is written
    /// (before, most of them bootstrapped, and the store opened with a
    /// region that could never elect or that shared keys with another).
    /// Among them a region below the bootstrap epoch (new leaders rely on
    /// it: a region still at `BOOTSTRAP_CONF_VER` removed nobody).
    #[test]
    fn initial_regions_that_could_not_serve_are_refused() {
        let good = initial_regions(&[1, 2, 3], 2).unwrap();
        let first = good[0].clone();
        let with = |f: &dyn Fn(&mut Region)| {
            let mut r = first.clone();
            f(&mut r);
            vec![r]
        };
        let cases: Vec<(&str, Vec<Region>)> = vec![
            (
                "epoch conf_ver 0",
                with(&|r| {
                    r.region_epoch = Some(RegionEpoch {
                        conf_ver: 0,
                        version: 1,
                    })
                }),
            ),
            (
                "epoch version 0",
                with(&|r| {
                    r.region_epoch = Some(RegionEpoch {
                        conf_ver: 1,
                        version: 0,
                    })
                }),
            ),
            ("no epoch", with(&|r| r.region_epoch = None)),
            ("region id 0", with(&|r| r.id = 0)),
            (
                "backwards range",
                with(&|r| {
                    r.start_key = b"z".to_vec().into();
                    r.end_key = b"a".to_vec().into();
                }),
            ),
            (
                "empty range",
                with(&|r| {
                    r.start_key = b"a".to_vec().into();
                    r.end_key = b"a".to_vec().into();
                }),
            ),
            ("no peers", with(&|r| r.peers.clear())),
            ("peer id twice", with(&|r| r.peers[1].id = r.peers[0].id)),
            (
                "store twice",
                with(&|r| r.peers[1].store_id = r.peers[0].store_id),
            ),
            ("peer id 0", with(&|r| r.peers[2].id = 0)),
            (
                "learners only",
                with(&|r| {
                    for p in &mut r.peers {
                        p.set_role(PeerRole::Learner);
                    }
                }),
            ),
            (
                "joint role",
                with(&|r| r.peers[1].set_role(PeerRole::IncomingVoter)),
            ),
            ("unknown role", with(&|r| r.peers[1].role = 9)),
            (
                "not on this store",
                with(&|r| r.peers.retain(|p| p.store_id != 1)),
            ),
            ("same region twice", vec![first.clone(), first.clone()]),
            ("overlapping", {
                let mut wide = good[1].clone();
                wide.start_key = first.start_key.clone();
                vec![first.clone(), wide]
            }),
            ("id twice", {
                let mut other = good[1].clone();
                other.id = first.id;
                vec![first.clone(), other]
            }),
        ];
        for (what, regions) in cases {
            let dir = tempfile::tempdir().unwrap();
            let engine =
                Engine::open(dir.path(), &flotilla_engine::EngineOptions::default()).unwrap();
            let res = bootstrap_store(&engine, 1, 1, &regions);
            assert!(matches!(res, Err(Error::Config(_))), "{what}: {res:?}");
            assert!(
                engine
                    .get(Cf::Raft, keys::STORE_IDENT_KEY)
                    .unwrap()
                    .is_none(),
                "{what}: bootstrapped"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &flotilla_engine::EngineOptions::default()).unwrap();
        let mut later = good.clone();
        later[0].region_epoch = Some(RegionEpoch {
            conf_ver: 3,
            version: 2,
        });
        bootstrap_store(&engine, 1, 1, &later).unwrap();
    }
}
