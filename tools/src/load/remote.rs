//! `flotilla load --remote ADDR[,ADDR...]`: the write phases of the load
//! tool against a networked cluster (`flotilla server` processes), through
//! the same `Client` over the stores' client services.
//!
//! What runs: (c) uniform and (d) hot-spot writes, measured the same way
//! as in process (writes/s and latency at the clients), with the stores'
//! fsyncs, raft messages and wire batches per second from their
//! `StoreInfo` counters. What does not: bootstrap and election, idle
//! memory and CPU, and the kill and restart phases, which need the stores
//! in this process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::raft_serverpb::PeerState;
use flotilla_raftstore::store::{Client, ClientConfig, Stores};
use flotilla_server::kvpb::StoreInfoResponse;
use flotilla_server::{NetConfig, RemoteStore};

use super::LoadError;
use super::options::LoadOptions;
use super::phases::load_rows;
use super::table::{Table, fmt_rate};
use super::workload::{ClientPool, KeyPattern, Live, Workload};

/// Worker threads of the load tool's network runtime.
const NET_THREADS: usize = 2;
/// How long one store query may take.
const QUERY_WAIT: Duration = Duration::from_secs(10);
/// Phase numbers (the random streams of the in-process tool's phases).
const UNIFORM_PHASE: u64 = 2;
const HOT_SPOT_PHASE: u64 = 3;

/// The summed counters of every store.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    fsyncs: u64,
    raft_messages: u64,
    wire_batches: u64,
}

impl Totals {
    fn of(infos: &[StoreInfoResponse]) -> Totals {
        infos.iter().fold(Totals::default(), |t, i| Totals {
            fsyncs: t.fsyncs + i.fsyncs,
            raft_messages: t.raft_messages + i.raft_messages_sent,
            wire_batches: t.wire_batches + i.wire_batches_sent,
        })
    }
}

fn rate(n: u64, span: Duration) -> f64 {
    n as f64 / span.as_secs_f64().max(f64::MIN_POSITIVE)
}

struct Remote {
    /// Keeps the runtime the stores' connections live on.
    _runtime: tokio::runtime::Runtime,
    stores: Vec<Arc<RemoteStore>>,
    client: Arc<Client>,
}

impl Remote {
    fn connect(addr: &str, clients: usize) -> Result<Remote, LoadError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            LoadError::Internal(format!("--remote {addr}: {what}: {e}"))
        };
        let runtime = flotilla_server::net_runtime(NET_THREADS).map_err(|e| err("runtime", &e))?;
        let net = NetConfig::default();
        let probe = RemoteStore::new(0, addr, net.clone(), runtime.handle().clone());
        let info = probe
            .store_info(QUERY_WAIT)
            .map_err(|e| err("store info", &e))?;
        let handles = Stores::default();
        let mut stores = Vec::new();
        for s in &info.stores {
            let r = RemoteStore::new(s.id, s.addr.clone(), net.clone(), runtime.handle().clone());
            handles.insert_remote(r.clone());
            stores.push(r);
        }
        let client = Arc::new(Client::new(
            handles,
            &[],
            ClientConfig {
                max_attempts: clients.max(1) * 2,
                ..ClientConfig::default()
            },
        ));
        Ok(Remote {
            _runtime: runtime,
            stores,
            client,
        })
    }

    fn infos(&self) -> Vec<StoreInfoResponse> {
        self.stores
            .iter()
            .filter_map(|s| s.store_info(QUERY_WAIT).ok())
            .collect()
    }

    /// Regions the first reachable store holds in `Normal` state.
    fn regions(&self) -> Result<u64, LoadError> {
        for s in &self.stores {
            if let Ok(states) = s.regions(QUERY_WAIT) {
                return Ok(states
                    .iter()
                    .filter(|r| r.state() == PeerState::Normal)
                    .count() as u64);
            }
        }
        Err(LoadError::Internal(
            "no store answered with its regions".into(),
        ))
    }
}

/// Runs the write phases against the cluster at `addr` (one store; the
/// others are found through it), handing each table to `on_table`.
///
/// # Errors
/// The cluster cannot be reached; a client thread failed.
pub fn run(
    opts: &LoadOptions,
    addr: &str,
    on_table: &mut dyn FnMut(&Table),
) -> Result<(), LoadError> {
    let remote = Remote::connect(addr, opts.clients)?;
    let regions = remote.regions()?;
    let infos = remote.infos();
    let mut t = Table::new("remote cluster");
    t.row(
        "stores",
        format!("{} ({} answering)", remote.stores.len(), infos.len()),
    );
    t.row("regions (Normal, on the first store)", regions.to_string());
    t.row(
        "not run remotely",
        "(a) election, (b) idle, (e) kill, (f) restart: they need the stores in this process",
    );
    on_table(&t);
    let workload = Workload {
        regions: regions.max(1),
        clients: opts.clients,
        write_ratio: opts.write_ratio,
        value_size: opts.value_size,
        seed: opts.seed,
    };
    let phases = [
        (
            "(c) uniform writes (remote)",
            KeyPattern::Uniform,
            UNIFORM_PHASE,
        ),
        (
            "(d) hot-spot writes (remote)",
            KeyPattern::hot_spot(workload.regions, opts.seed),
            HOT_SPOT_PHASE,
        ),
    ];
    for (title, pattern, phase) in phases {
        let live = Arc::new(Live::new(workload.clients)?);
        let before = Totals::of(&remote.infos());
        let started = Instant::now();
        let pool = ClientPool::start(&remote.client, &live, &workload, pattern, phase)?;
        std::thread::sleep(opts.phase_duration);
        let load = pool.stop()?;
        let span = started.elapsed();
        let after = Totals::of(&remote.infos());
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let mut t = Table::new(title);
        t.row(
            "clients",
            format!(
                "{} threads, {}, write ratio {}, {}-byte values",
                opts.clients,
                pattern.describe(workload.regions),
                opts.write_ratio,
                opts.value_size
            ),
        );
        load_rows(&mut t, &load);
        t.row(
            "fsyncs/s, all stores",
            fmt_rate(rate(d(after.fsyncs, before.fsyncs), span)),
        );
        t.row(
            "raft messages/s, all stores",
            fmt_rate(rate(d(after.raft_messages, before.raft_messages), span)),
        );
        t.row(
            "wire batches/s, all stores",
            fmt_rate(rate(d(after.wire_batches, before.wire_batches), span)),
        );
        on_table(&t);
    }
    Ok(())
}
