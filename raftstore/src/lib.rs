//! flotilla's multi-raft store (being written).
