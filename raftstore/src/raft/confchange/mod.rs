//! Membership changes: computing the next [`Configuration`] from a list of
//! single changes (simple, joint enter, joint leave) and restoring a
//! configuration from a [`ConfState`](flotilla_proto::eraftpb::ConfState).

mod changer;
mod restore;

pub use changer::Changer;
pub use restore::restore;

use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2,
};

/// Converts a v1 change to the equivalent v2 change (implicit transition).
pub fn v1_to_v2(cc: &ConfChange) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(cc.change_type());
    single.node_id = cc.node_id;
    let mut v2 = ConfChangeV2 {
        changes: vec![single],
        context: cc.context.clone(),
        ..Default::default()
    };
    v2.set_transition(ConfChangeTransition::Implicit);
    v2
}

/// Whether a v2 change leaves a joint configuration (no changes listed).
pub fn leave_joint(cc: &ConfChangeV2) -> bool {
    cc.changes.is_empty()
}

/// Whether a v2 change enters a joint configuration, and if so whether it
/// leaves automatically. `None`: a simple change.
pub fn enter_joint(cc: &ConfChangeV2) -> Option<bool> {
    if cc.changes.is_empty() {
        return None;
    }
    match cc.transition() {
        ConfChangeTransition::Auto if cc.changes.len() == 1 => None,
        ConfChangeTransition::Implicit if cc.changes.len() == 1 => None,
        ConfChangeTransition::Auto | ConfChangeTransition::Implicit => Some(true),
        ConfChangeTransition::Explicit => Some(false),
    }
}

/// A single change, for building conf changes in tests and callers.
pub fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut s = ConfChangeSingle::default();
    s.set_change_type(change_type);
    s.node_id = node_id;
    s
}
