//! Counters of the network layer (monotonic; a metrics exporter reads
//! them).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a store's [`crate::GrpcTransport`] sent and dropped.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    /// Raft messages queued for the wire.
    pub messages_sent: AtomicU64,
    /// Batches queued for the wire (one per remote store per flush, more
    /// for a flush over the batch budget).
    pub batches_sent: AtomicU64,
    /// Messages dropped because their store's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Messages dropped because their store is cut off by the test hook.
    pub dropped_blocked: AtomicU64,
    /// Messages dropped because their connection was down.
    pub dropped_disconnected: AtomicU64,
    /// Streams opened to other stores (first connections and reconnects).
    pub connects: AtomicU64,
    /// Connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// Snapshot streams that the receiver took.
    pub snapshots_sent: AtomicU64,
    /// Snapshot streams that failed or were refused.
    pub snapshot_failures: AtomicU64,
}

/// What a store's [`crate::StoreServer`] received and refused.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Batches received and handed on.
    pub batches_received: AtomicU64,
    /// Raft messages handed to the store.
    pub messages_received: AtomicU64,
    /// Messages dropped for naming another store as their destination.
    pub messages_misaddressed: AtomicU64,
    /// Streams refused: another cluster, another store, or malformed.
    pub streams_refused: AtomicU64,
    /// Snapshot streams the store took.
    pub snapshots_received: AtomicU64,
    /// Snapshot streams the store refused or that broke.
    pub snapshot_failures: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
