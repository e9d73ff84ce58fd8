//! flotilla's protocol types, generated from `proto/*.proto` by prost.
//!
//! - [`eraftpb`]: the consensus core's entries, messages, hard state,
//!   membership and snapshots.
//! - [`metapb`]: stores, regions, epochs and peers.
//! - [`raft_cmdpb`]: client and admin commands, responses and typed errors.
//! - [`raft_serverpb`]: messages between stores (raft messages, coalesced
//!   heartbeats) and the states a store persists.
//!
//! Every `bytes` field is a [`bytes::Bytes`], so cloning an entry does not
//! copy its payload. Decoding goes through [`prost::Message::decode`], which
//! returns an error on malformed input and never panics.

#![allow(missing_docs)] // generated code: docs live in the .proto files

/// Raft entries, messages, hard state, membership and snapshots.
pub mod eraftpb {
    include!(concat!(env!("OUT_DIR"), "/eraftpb.rs"));
}

/// Cluster metadata: stores, regions, epochs, peers.
pub mod metapb {
    include!(concat!(env!("OUT_DIR"), "/metapb.rs"));
}

/// Client and admin commands, responses and typed errors.
pub mod raft_cmdpb {
    include!(concat!(env!("OUT_DIR"), "/raft_cmdpb.rs"));
}

/// Messages between stores and the states a store persists.
pub mod raft_serverpb {
    include!(concat!(env!("OUT_DIR"), "/raft_serverpb.rs"));
}

pub use prost::Message as ProstMessage;

#[cfg(test)]
mod tests;
