//! Typed refusals of admin commands (DESIGN §7: one enum inside
//! `store::Error`, never a string), convertible to and from the wire.

use flotilla_proto::raft_cmdpb::{self, admin_error::Kind};
use thiserror::Error;

/// Why an admin command was refused. Grows with the commands (admin.md
/// §5.3 lists the variants split, merge and conf change will need).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AdminError {
    /// The store does not run this admin command (yet). Nothing was
    /// proposed.
    #[error("admin command {command} is not supported")]
    NotSupported {
        /// The `AdminRequest.cmd` field naming the command.
        command: String,
    },
    /// A CompactLog past the region's applied index: entries not yet
    /// applied are never compacted.
    #[error("compact index {compact_index} is past the applied index {applied_index}")]
    CompactIndexAhead {
        /// The index the command asked to compact to.
        compact_index: u64,
        /// The region's applied index when the command applied.
        applied_index: u64,
    },
}

impl AdminError {
    /// The wire form.
    pub fn to_proto(&self) -> raft_cmdpb::AdminError {
        let kind = match self.clone() {
            AdminError::NotSupported { command } => {
                Kind::NotSupported(raft_cmdpb::AdminNotSupported { command })
            }
            AdminError::CompactIndexAhead {
                compact_index,
                applied_index,
            } => Kind::CompactIndexAhead(raft_cmdpb::CompactIndexAhead {
                compact_index,
                applied_index,
            }),
        };
        raft_cmdpb::AdminError { kind: Some(kind) }
    }

    /// Back from the wire form; `None` for a kind this version does not
    /// know (from a newer peer).
    pub fn from_proto(e: raft_cmdpb::AdminError) -> Option<AdminError> {
        Some(match e.kind? {
            Kind::NotSupported(d) => AdminError::NotSupported { command: d.command },
            Kind::CompactIndexAhead(d) => AdminError::CompactIndexAhead {
                compact_index: d.compact_index,
                applied_index: d.applied_index,
            },
        })
    }
}
