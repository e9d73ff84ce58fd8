//! BatchSplit on the apply side (admin.md §1.1): every replica computes
//! the same regions from the entry (`admin::split_regions`) and, in the
//! apply round's one write batch with the parent's apply state, writes
//! the parent's new range and the starting states of each new region it
//! may create a peer of here. The peers themselves are registered by the
//! raft side when it hears the result (`ExecResult::Split`).
//!
//! A new region's peer is not created here when the store knows better:
//! - its region state is a tombstone (it was split, then removed from
//!   this store, and this store is replaying old entries): the data it
//!   would inherit is cleared;
//! - its region state is live (a snapshot initialized it already): it
//!   keeps its own data;
//! - a peer of it exists, created by a message before this split applied
//!   (or one is being destroyed): that peer is initialized by its leader's
//!   snapshot instead, and the inherited keys are cleared now (the
//!   snapshot rewrites the range; should the peer be destroyed first, they
//!   would stay in no region).

use flotilla_engine::{Cf, Engine, WriteBatch, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    AdminResponse, BatchSplitRequest, BatchSplitResponse, admin_response,
};
use flotilla_proto::raft_serverpb::{PeerState, RaftLocalState, RegionLocalState};

use crate::store::admin::split_regions;
use crate::store::bootstrap::write_initial_states;
use crate::store::error::Result;
use crate::store::fsm::RaftRouter;
use crate::store::meta::SharedMeta;
use crate::store::msg::{ExecResult, SplitResult};
use crate::store::util::clear_data_range;

/// What the apply side needs of its store to split.
pub(crate) struct SplitCtx<'a> {
    pub engine: &'a Engine,
    pub meta: &'a SharedMeta,
    pub router: &'a RaftRouter,
}

/// Applies a BatchSplit of `region` (the apply delegate's, updated to the
/// derived region) into `wb`.
///
/// # Errors
/// The split's refusals ([`split_regions`]; no key-count limit here, as
/// every replica must decide alike whatever its config); engine reads.
pub(super) fn exec_batch_split(
    ctx: &SplitCtx<'_>,
    wb: &mut WriteBatch,
    req: &BatchSplitRequest,
    region: &mut Region,
) -> Result<(AdminResponse, ExecResult)> {
    let (derived, new) = split_regions(req, region, u64::MAX)?;
    let mut created = Vec::with_capacity(new.len());
    {
        let mut meta = ctx.meta.lock();
        for r in &new {
            let state: Option<RegionLocalState> = ctx
                .engine
                .get_msg(Cf::Raft, &keys::region_state_key(r.id))?;
            // Whether this store creates the peer, and whether the keys the
            // new region inherits here go (no peer here will own them).
            let (create, clear) = match state.as_ref().map(RegionLocalState::state) {
                Some(PeerState::Tombstone) => (false, true),
                // Initialized already (by a snapshot): its keys are its own.
                Some(_) => (false, false),
                // No peer, none being destroyed (its apply side has not
                // cleared it yet), none being created by another split: it
                // is created. Else the peer there is uninitialized and only
                // a snapshot (which rewrites the range) will initialize it:
                // the inherited keys go now, or they would stay in no
                // region should it be destroyed first.
                None => {
                    let create = ctx.router.mailbox(r.id).is_none()
                        && !meta.is_destroying(r.id)
                        && !meta.claimed_by_split(r.id);
                    (create, !create)
                }
            };
            if clear {
                clear_data_range(wb, r)?;
            }
            if create {
                let kept: Option<RaftLocalState> =
                    ctx.engine.get_msg(Cf::Raft, &keys::raft_state_key(r.id))?;
                write_initial_states(wb, r, kept.and_then(|s| s.hard_state));
                meta.claim_for_split(r.id);
            }
            created.push(create);
        }
    }
    let mut state = RegionLocalState {
        region: Some(derived.clone()),
        ..Default::default()
    };
    state.set_state(PeerState::Normal);
    wb.put_msg(Cf::Raft, &keys::region_state_key(derived.id), &state);
    *region = derived.clone();
    let mut regions: Vec<Region> = new.clone();
    regions.push(derived.clone());
    regions.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    let resp = AdminResponse {
        cmd: Some(admin_response::Cmd::BatchSplit(BatchSplitResponse {
            regions,
        })),
    };
    Ok((
        resp,
        ExecResult::Split(Box::new(SplitResult {
            derived,
            new,
            created,
        })),
    ))
}
