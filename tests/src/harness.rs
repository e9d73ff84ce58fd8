//! Helpers for cluster tests: a quiet logger, fast configs, and asking a
//! store who leads a region.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_proto::raft_cmdpb::{
    RaftCmdRequest, RaftRequestHeader, Request, SnapRequest, request,
};
use flotilla_raftstore::store::{Cluster, Config, Error, response_error};

/// A logger that discards everything (set `FLOTILLA_LOG=1` for stderr).
pub fn logger() -> slog::Logger {
    if std::env::var_os("FLOTILLA_LOG").is_some() {
        use slog::Drain;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        slog::Logger::root(drain, slog::o!())
    } else {
        slog::Logger::root(slog::Discard, slog::o!())
    }
}

/// Base tick for tests with few regions: elections in ~100-200 ms.
pub const FAST_TICK_MS: u64 = 10;

/// A store config with a fast clock.
pub fn fast_config(base_tick_ms: u64) -> Config {
    Config {
        base_tick_ms,
        ..Config::default()
    }
}

/// Three stores bootstrapped with one region (id 1) and a fast clock,
/// once it has a leader: the cluster, the leader's store, and a client
/// that `fill` used first (to write a test's keys).
pub fn three_stores_serving(
    dir: &std::path::Path,
    fill: impl FnOnce(&flotilla_raftstore::store::Client),
) -> (Cluster, u64, flotilla_raftstore::store::Client) {
    let cluster =
        Cluster::bootstrap(dir, 3, 1, fast_config(FAST_TICK_MS), &logger()).expect("bootstrap");
    let leader = wait_leader(&cluster, 1).expect("leader");
    let client = cluster.client(flotilla_raftstore::store::ClientConfig::default());
    fill(&client);
    (cluster, leader, client)
}

/// How long tests wait for something that should happen within a few
/// election timeouts.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The store whose peer of `region_id` says it is the leader, asking each
/// running store with a linearizable `Snap` read.
pub fn leader_store(cluster: &Cluster, region_id: u64) -> Option<u64> {
    let region = cluster
        .regions()
        .iter()
        .find(|r| r.id == region_id)?
        .clone();
    for &store_id in cluster.store_ids() {
        let Some(store) = cluster.store(store_id) else {
            continue;
        };
        let peer = region
            .peers
            .iter()
            .find(|p| p.store_id == store_id)
            .copied();
        let req = RaftCmdRequest {
            header: Some(RaftRequestHeader {
                region_id,
                peer,
                region_epoch: region.region_epoch,
                ..Default::default()
            }),
            requests: vec![Request {
                cmd: Some(request::Cmd::Snap(SnapRequest {})),
            }],
            admin_request: None,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        store
            .handle()
            .propose(req, Box::new(move |r| drop(tx.send(r))));
        if let Ok(resp) = rx.recv_timeout(Duration::from_secs(2))
            && response_error(&resp).is_none()
        {
            return Some(store_id);
        }
    }
    None
}

/// Waits until `region_id` has a leader; returns its store.
pub fn wait_leader(cluster: &Cluster, region_id: u64) -> Option<u64> {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if let Some(s) = leader_store(cluster, region_id) {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The store whose peer of `region_id` says it leads it (asked with
/// `region_status`, no read through raft), once one does within
/// [`SETTLE`].
pub fn inspected_leader(cluster: &Cluster, region_id: u64) -> Option<u64> {
    let mut found = None;
    eventually(|| {
        found = cluster.store_ids().iter().copied().find(|&s| {
            cluster
                .store(s)
                .and_then(|st| st.handle().region_status(region_id, SETTLE).ok())
                .is_some_and(|st| st.leader == Some(st.peer))
        });
        found.is_some()
    });
    found
}

/// A store that leads none of `regions` (the tests that cut one store off
/// keep a merge's leaders elsewhere: a leader elected after the cut does
/// not know how far the cut-off peer got, and the merge is refused with
/// `MergeLogGapTooLarge`, rightly). The last such store in id order.
pub fn store_leading_none(cluster: &Cluster, regions: &[u64]) -> u64 {
    let leaders: Vec<u64> = regions
        .iter()
        .map(|&r| inspected_leader(cluster, r).expect("leader"))
        .collect();
    *cluster
        .store_ids()
        .iter()
        .rev()
        .find(|s| !leaders.contains(s))
        .expect("a store leading neither region")
}

/// Drops every message of region `region_id` to store `store_id` until
/// the returned filter is removed.
pub fn cut_region_to(
    cluster: &Cluster,
    region_id: u64,
    store_id: u64,
) -> flotilla_raftstore::store::FilterId {
    cluster
        .transport()
        .add_filter(std::sync::Arc::new(flotilla_raftstore::store::DropFilter {
            region_id: Some(region_id),
            to_store: Some(store_id),
            ..Default::default()
        }))
}

/// Polls `f` until it returns true or [`SETTLE`] passes.
pub fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Whether `e` leaves a write's outcome unknown.
pub fn is_unknown_outcome(e: &Error) -> bool {
    e.is_outcome_unknown()
}

/// Every region of `cluster` with the store that leads it (waiting for a
/// leader as [`wait_leader`] does).
///
/// # Panics
/// If a region has no leader within [`SETTLE`].
pub fn leaders(cluster: &Cluster) -> Vec<(flotilla_proto::metapb::Region, u64)> {
    cluster
        .regions()
        .iter()
        .map(|r| (r.clone(), wait_leader(cluster, r.id).expect("leader")))
        .collect()
}

/// The store that leads the most regions of `leaders` (ties: the lowest
/// id).
pub fn busiest_leader(leaders: &[(flotilla_proto::metapb::Region, u64)]) -> Option<u64> {
    let mut stores: Vec<u64> = leaders.iter().map(|(_, s)| *s).collect();
    stores.sort_unstable();
    stores.dedup();
    stores.into_iter().max_by_key(|&s| {
        (
            leaders.iter().filter(|(_, l)| *l == s).count(),
            std::cmp::Reverse(s),
        )
    })
}

/// Region `id`'s state in `engine`, if it has one.
///
/// # Panics
/// On an engine read error.
pub fn region_state(
    engine: &flotilla_engine::Engine,
    id: u64,
) -> Option<flotilla_proto::raft_serverpb::RegionLocalState> {
    engine
        .get_msg(
            flotilla_engine::Cf::Raft,
            &flotilla_engine::keys::region_state_key(id),
        )
        .expect("read region state")
}

/// A fast config whose leaders compact their log often: a log GC check
/// every 2 ticks, past 10 entries, and whatever followers matched once
/// the log is longer than `count_limit`.
pub fn gc_config(count_limit: u64) -> Config {
    Config {
        raft_log_gc_tick_ticks: 2,
        raft_log_gc_threshold: 10,
        raft_log_gc_count_limit: count_limit,
        ..fast_config(FAST_TICK_MS)
    }
}

/// Whether `engine`'s data holds every key `key(i)` of `range` with the
/// value `i.to_be_bytes()` (the tests' written-value convention).
///
/// # Panics
/// On an engine read error.
pub fn holds_values(
    engine: &flotilla_engine::Engine,
    range: std::ops::Range<u64>,
    key: impl Fn(u64) -> Vec<u8>,
) -> bool {
    range.into_iter().all(|i| {
        engine
            .get(
                flotilla_engine::Cf::Default,
                &flotilla_engine::keys::data_key(&key(i)),
            )
            .expect("read data")
            .is_some_and(|v| v == i.to_be_bytes())
    })
}

/// Region `id`'s last log index in `engine`'s raft state.
///
/// # Panics
/// On an engine read error or a missing raft state.
pub fn last_index(engine: &flotilla_engine::Engine, id: u64) -> u64 {
    let s: flotilla_proto::raft_serverpb::RaftLocalState = engine
        .get_msg(
            flotilla_engine::Cf::Raft,
            &flotilla_engine::keys::raft_state_key(id),
        )
        .expect("read raft state")
        .expect("raft state");
    s.last_index
}
