//! The status port: `/metrics` (Prometheus text exposition of the store's,
//! transport's and server's counters, no per-region label) and `/status`
//! (JSON, for ctl and humans).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use flotilla_proto::eraftpb::MessageType;
use flotilla_raftstore::store::{HistogramSnapshot, StoreHandle, StoreMetrics, WakeReason};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::Result;
use crate::metrics::{ServerMetrics, TransportMetrics};
use crate::server::bind;

/// Every metric name starts with this.
const PREFIX: &str = "flotilla_";
/// Microseconds per second (histograms are exported in seconds).
const MICROS_PER_SECOND: f64 = 1e6;

/// What the status port reports on.
#[derive(Clone)]
pub struct StatusSources {
    /// The cluster the store belongs to.
    pub cluster_id: u64,
    /// The store.
    pub store: StoreHandle,
    /// Its transport's counters.
    pub transport: Arc<TransportMetrics>,
    /// Its server's counters.
    pub server: Arc<ServerMetrics>,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    /// The cluster.
    pub cluster_id: u64,
    /// The store.
    pub store_id: u64,
    /// Whether it stopped (a fatal error or a shutdown).
    pub stopped: bool,
    /// Regions it leads.
    pub leaders: i64,
    /// Peers awake.
    pub awake_peers: i64,
    /// Peers hibernating.
    pub hibernated_peers: i64,
    /// Raft poll rounds so far.
    pub poll_rounds: u64,
    /// Synced raft-log writes (fsyncs) so far.
    pub fsyncs: u64,
}

/// The status server of one store.
///
/// Lifecycle: [`StatusServer::start`] binds and serves on the runtime;
/// dropping it stops serving.
pub struct StatusServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl StatusServer {
    /// Binds `listen` (`host:port`, port 0 for any) and serves `/metrics`
    /// and `/status` of `sources`.
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the address cannot be bound.
    pub fn start(handle: &Handle, listen: &str, sources: StatusSources) -> Result<StatusServer> {
        let (addr, listener) = bind(handle, listen)?;
        let metrics_sources = sources.clone();
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let s = metrics_sources.clone();
                    async move { metrics_response(&s) }
                }),
            )
            .route(
                "/status",
                get(move || {
                    let s = sources.clone();
                    async move { status_response(&s) }
                }),
            );
        let (shutdown, on_shutdown) = oneshot::channel::<()>();
        handle.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = on_shutdown.await;
                })
                .await;
        });
        Ok(StatusServer {
            addr,
            shutdown: Some(shutdown),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

fn metrics_response(s: &StatusSources) -> impl IntoResponse + use<> {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&families(s), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

fn status_response(s: &StatusSources) -> impl IntoResponse + use<> {
    match serde_json::to_vec(&status_doc(s)) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string().into_bytes(),
        ),
    }
}

/// The `/status` document of `s` now.
pub fn status_doc(s: &StatusSources) -> StatusDoc {
    let m = s.store.metrics();
    StatusDoc {
        cluster_id: s.cluster_id,
        store_id: s.store.store_id(),
        stopped: s.store.is_stopped(),
        leaders: m.leaders.load(Ordering::Relaxed),
        awake_peers: m.awake_peers.load(Ordering::Relaxed),
        hibernated_peers: m.hibernated_peers.load(Ordering::Relaxed),
        poll_rounds: m.poll_rounds.load(Ordering::Relaxed),
        fsyncs: m.raft_synced_writes.load(Ordering::Relaxed),
    }
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(format!("{PREFIX}{name}"));
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn counter_metric(value: u64, label: &[(&str, &str)]) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(label));
    m.set_counter(c);
    m
}

fn counter(name: &str, help: &str, value: &AtomicU64) -> MetricFamily {
    let v = value.load(Ordering::Relaxed);
    family(
        name,
        help,
        MetricType::COUNTER,
        vec![counter_metric(v, &[])],
    )
}

fn gauge(name: &str, help: &str, value: i64) -> MetricFamily {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    family(name, help, MetricType::GAUGE, vec![Metric::from_gauge(g)])
}

fn gauge_of(name: &str, help: &str, value: &AtomicI64) -> MetricFamily {
    gauge(name, help, value.load(Ordering::Relaxed))
}

fn histogram(name: &str, help: &str, h: &HistogramSnapshot) -> MetricFamily {
    let mut out = Histogram::default();
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum_micros as f64 / MICROS_PER_SECOND);
    out.set_bucket(
        h.cumulative
            .iter()
            .map(|&(bound, n)| {
                let mut b = Bucket::default();
                b.set_upper_bound(bound as f64 / MICROS_PER_SECOND);
                b.set_cumulative_count(n);
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(out);
    family(name, help, MetricType::HISTOGRAM, vec![m])
}

const WAKE_REASONS: [(WakeReason, &str); 5] = [
    (WakeReason::Command, "command"),
    (WakeReason::LeaderMessage, "leader_message"),
    (WakeReason::PeerMessage, "peer_message"),
    (WakeReason::LeaderStoreDown, "leader_store_down"),
    (WakeReason::LaggingStoreBack, "lagging_store_back"),
];

fn store_families(m: &StoreMetrics, out: &mut Vec<MetricFamily>) {
    let by_type = m
        .raft_messages_by_type
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let t = MessageType::try_from(i32::try_from(i).ok()?).ok()?;
            Some(counter_metric(
                c.load(Ordering::Relaxed),
                &[("type", t.as_str_name())],
            ))
        })
        .collect();
    out.push(family(
        "raft_messages_sent_total",
        "Raft messages the peers sent, by type (coalesced beats under their own type).",
        MetricType::COUNTER,
        by_type,
    ));
    let wakes = WAKE_REASONS
        .iter()
        .map(|&(r, name)| counter_metric(m.wakes(r), &[("reason", name)]))
        .collect();
    out.push(family(
        "wakes_total",
        "Hibernating peers woken, by reason.",
        MetricType::COUNTER,
        wakes,
    ));
    let counters: [(&str, &str, &AtomicU64); 28] = [
        (
            "raft_messages_dropped_total",
            "Raft messages dropped: the peer's mailbox was full.",
            &m.raft_messages_dropped,
        ),
        (
            "raft_messages_unknown_region_total",
            "Raft messages for a region this store has no peer of.",
            &m.raft_messages_unknown_region,
        ),
        (
            "heartbeats_sent_total",
            "Region heartbeats and responses generated (before coalescing).",
            &m.heartbeats_sent,
        ),
        (
            "heartbeat_batches_sent_total",
            "Coalesced heartbeat batches sent (wire messages).",
            &m.heartbeat_batches_sent,
        ),
        (
            "heartbeat_batches_received_total",
            "Coalesced heartbeat batches received.",
            &m.heartbeat_batches_received,
        ),
        (
            "liveness_messages_sent_total",
            "Bare store-liveness beats sent.",
            &m.liveness_messages_sent,
        ),
        (
            "liveness_beats_received_total",
            "Liveness stamps heard from other stores.",
            &m.liveness_beats_received,
        ),
        (
            "stale_batches_dropped_total",
            "Batches dropped as from a past life or sent before a withdrawal.",
            &m.stale_batches_dropped,
        ),
        (
            "support_withdrawals_total",
            "Times this store withdrew its support from another store.",
            &m.support_withdrawals,
        ),
        (
            "hibernations_total",
            "Peers that went to sleep.",
            &m.hibernations,
        ),
        ("poll_rounds_total", "Raft poll rounds.", &m.poll_rounds),
        (
            "raft_writes_total",
            "Raft-log write batches (one per poll round that writes).",
            &m.raft_writes,
        ),
        (
            "fsyncs_total",
            "Synced raft-log writes (each a WAL fsync).",
            &m.raft_synced_writes,
        ),
        (
            "peer_ticks_total",
            "Ticks delivered to peers.",
            &m.peer_ticks,
        ),
        (
            "snapshots_generated_total",
            "Snapshots generated.",
            &m.snapshots_generated,
        ),
        (
            "snapshot_generate_failures_total",
            "Snapshot generations that failed.",
            &m.snapshot_generate_failures,
        ),
        (
            "snapshots_sent_total",
            "Snapshot streams the receiver took.",
            &m.snapshots_sent,
        ),
        (
            "snapshot_send_failures_total",
            "Snapshot streams that failed or were refused.",
            &m.snapshot_send_failures,
        ),
        (
            "snapshots_received_total",
            "Snapshot streams received whole.",
            &m.snapshots_received,
        ),
        (
            "snapshot_receive_failures_total",
            "Snapshot streams refused or broken.",
            &m.snapshot_receive_failures,
        ),
        (
            "snapshots_applied_total",
            "Snapshots written into the engine.",
            &m.snapshots_applied,
        ),
        (
            "peers_created_total",
            "Peers created (by a message, a split or a conf change).",
            &m.peers_created,
        ),
        (
            "peers_destroyed_total",
            "Peers destroyed (removed from their region).",
            &m.peers_destroyed,
        ),
        (
            "merge_sources_waiting_for_split_total",
            "Merge notices on which a merged-away source stayed for a split here that may create its target.",
            &m.merge_sources_waiting_for_split,
        ),
        (
            "split_checks_total",
            "Regions measured by the split checker.",
            &m.split_checks,
        ),
        ("splits_applied_total", "Splits applied.", &m.splits_applied),
        (
            "merges_applied_total",
            "Merges applied on target peers.",
            &m.merges_applied,
        ),
        (
            "merges_rolled_back_total",
            "Merges rolled back on source peers.",
            &m.merges_rolled_back,
        ),
    ];
    for (name, help, v) in counters {
        out.push(counter(name, help, v));
    }
    out.push(gauge_of("leaders", "Regions this store leads.", &m.leaders));
    out.push(gauge_of("awake_peers", "Peers awake.", &m.awake_peers));
    out.push(gauge_of(
        "hibernated_peers",
        "Peers hibernating.",
        &m.hibernated_peers,
    ));
    let histograms = [
        (
            "poll_round_seconds",
            "Raft poll rounds, by duration.",
            &m.poll_round_latency,
        ),
        (
            "fsync_seconds",
            "Synced raft-log writes, by duration of the write and its fsync.",
            &m.raft_sync_write_latency,
        ),
        (
            "apply_write_seconds",
            "Apply rounds' engine writes, by duration.",
            &m.apply_write_latency,
        ),
        (
            "command_seconds",
            "Proposed commands (writes, admin), from proposal to answer.",
            &m.command_latency,
        ),
    ];
    for (name, help, h) in histograms {
        out.push(histogram(name, help, &h.snapshot()));
    }
}

fn families(s: &StatusSources) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    store_families(s.store.metrics(), &mut out);
    server_families(s, &mut out);
    // The encoder refuses a family without samples (a labelled counter
    // nothing was counted under yet).
    out.retain(|f| !f.get_metric().is_empty());
    out
}

fn server_families(s: &StatusSources, out: &mut Vec<MetricFamily>) {
    out.push(gauge(
        "store_stopped",
        "1 if the store stopped (a fatal error or a shutdown).",
        i64::from(s.store.is_stopped()),
    ));
    let t = &s.transport;
    let dropped = [
        ("queue_full", &t.dropped_queue_full),
        ("blocked", &t.dropped_blocked),
        ("disconnected", &t.dropped_disconnected),
    ]
    .iter()
    .map(|(why, c)| counter_metric(c.load(Ordering::Relaxed), &[("reason", why)]))
    .collect();
    out.push(family(
        "transport_messages_dropped_total",
        "Raft messages the transport dropped, by reason.",
        MetricType::COUNTER,
        dropped,
    ));
    let transport: [(&str, &str, &AtomicU64); 6] = [
        (
            "transport_messages_sent_total",
            "Raft messages queued for the wire.",
            &t.messages_sent,
        ),
        (
            "transport_batches_sent_total",
            "Batches queued for the wire.",
            &t.batches_sent,
        ),
        (
            "transport_connects_total",
            "Streams opened to other stores.",
            &t.connects,
        ),
        (
            "transport_connect_failures_total",
            "Connection attempts that failed.",
            &t.connect_failures,
        ),
        (
            "transport_snapshots_sent_total",
            "Snapshot streams the receiver took.",
            &t.snapshots_sent,
        ),
        (
            "transport_snapshot_failures_total",
            "Snapshot streams failed or refused.",
            &t.snapshot_failures,
        ),
    ];
    for (name, help, v) in transport {
        out.push(counter(name, help, v));
    }
    let sv = &s.server;
    let errors = sv
        .command_errors
        .lock()
        .iter()
        .map(|(kind, n)| counter_metric(*n, &[("kind", kind)]))
        .collect();
    out.push(family(
        "command_errors_total",
        "Client commands answered with an error, by kind.",
        MetricType::COUNTER,
        errors,
    ));
    let admin = sv
        .admin_commands
        .lock()
        .iter()
        .map(|((cmd, result), n)| counter_metric(*n, &[("cmd", cmd), ("result", result)]))
        .collect();
    out.push(family(
        "admin_commands_total",
        "Admin commands answered, by command and result (ok or the error kind).",
        MetricType::COUNTER,
        admin,
    ));
    let server: [(&str, &str, &AtomicU64); 6] = [
        (
            "server_batches_received_total",
            "Raft batches received.",
            &sv.batches_received,
        ),
        (
            "server_messages_received_total",
            "Raft messages handed to the store.",
            &sv.messages_received,
        ),
        (
            "server_messages_misaddressed_total",
            "Raft messages for another store, dropped.",
            &sv.messages_misaddressed,
        ),
        (
            "server_streams_refused_total",
            "Streams refused (another cluster or store, malformed).",
            &sv.streams_refused,
        ),
        (
            "server_snapshots_received_total",
            "Snapshot streams taken.",
            &sv.snapshots_received,
        ),
        (
            "server_snapshot_failures_total",
            "Snapshot streams refused or broken.",
            &sv.snapshot_failures,
        ),
    ];
    for (name, help, v) in server {
        out.push(counter(name, help, v));
    }
}
