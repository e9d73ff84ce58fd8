//! `flotilla load --remote ADDR[,ADDR...]`: the load tool's phases
//! against a networked cluster (`flotilla server` processes), through the
//! same `Client` over the stores' client services.
//!
//! What runs: (a) election, as the time from connecting until every
//! region has a leader (the sum of the stores' leader counts); (b) idle:
//! the wait until the peers hibernate, then each store's RSS, CPU and wire
//! batches over the phase; (c) uniform and (d) hot-spot writes, measured
//! the same way as in process (writes/s and latency at the clients), with
//! the stores' fsyncs, raft messages and wire batches per second from
//! their `StoreInfo` counters; with `--kill-cmd` (and `--restart-cmd`),
//! (e) kill the store leading the most regions through the operator's
//! command and time the failover from the other stores' leader counts,
//! and (f) start it again and time it back to serving. Bootstrap is not
//! run: the cluster exists already.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flotilla_proto::raft_serverpb::PeerState;
use flotilla_raftstore::store::{Client, ClientConfig, StoreApi, Stores};
use flotilla_server::kvpb::StoreInfoResponse;
use flotilla_server::{NetConfig, RemoteStore};

use super::LoadError;
use super::arrivals::Arrivals;
use super::options::LoadOptions;
use super::phases::{arrival_quantiles, load_rows};
use super::stats::CLOCK_TICKS_PER_S;
use super::summary::fmt_core_share;
use super::table::{Table, fmt_bytes, fmt_duration, fmt_rate};
use super::workload::{ClientPool, KeyPattern, Live, Workload};

/// Worker threads of the load tool's network runtime.
const NET_THREADS: usize = 2;
/// How long one store query may take.
const QUERY_WAIT: Duration = Duration::from_secs(10);
/// How often the election and hibernation waits ask the stores.
const POLL: Duration = Duration::from_millis(200);
/// Longest wait for every region to have a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(120);
/// Longest wait for every peer to hibernate before the idle measurement.
const HIBERNATE_WAIT: Duration = Duration::from_secs(60);
/// How often the kill and restart phases ask the stores (their arrival
/// times are this fine).
const FAILOVER_POLL: Duration = Duration::from_millis(10);
/// How long one store query of the kill and restart phases may take.
const FAILOVER_QUERY_WAIT: Duration = Duration::from_secs(1);
/// Longest wait for the killed store's regions to get new leaders, and
/// for the restarted store to serve.
const FAILOVER_WAIT: Duration = Duration::from_secs(60);
/// Phase numbers (the random streams of the in-process tool's phases).
const UNIFORM_PHASE: u64 = 2;
const HOT_SPOT_PHASE: u64 = 3;

/// The summed counters of every store.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    fsyncs: u64,
    raft_messages: u64,
    wire_batches: u64,
    leaders: i64,
    peers: i64,
    hibernated: i64,
    awake: i64,
}

impl Totals {
    fn of(infos: &[StoreInfoResponse]) -> Totals {
        infos.iter().fold(Totals::default(), |t, i| Totals {
            fsyncs: t.fsyncs + i.fsyncs,
            raft_messages: t.raft_messages + i.raft_messages_sent,
            wire_batches: t.wire_batches + i.wire_batches_sent,
            leaders: t.leaders + i.leaders,
            peers: t.peers + i.peers,
            hibernated: t.hibernated + i.hibernated_peers,
            awake: t.awake + i.awake_peers,
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
    let connected = Instant::now();
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
        if opts.kill_cmd.is_some() {
            "bootstrap (the cluster exists)"
        } else {
            "bootstrap (the cluster exists); (e) kill and (f) restart need --kill-cmd / --restart-cmd"
        },
    );
    on_table(&t);
    on_table(&election(&remote, regions, connected));
    on_table(&idle(&remote, opts.phase_duration));
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
    if let Some(kill_cmd) = &opts.kill_cmd {
        let (t, killed) = kill(&remote, regions, kill_cmd);
        on_table(&t);
        if let (Some(restart_cmd), Some(killed)) = (&opts.restart_cmd, killed) {
            on_table(&restart(&remote, regions, restart_cmd, killed));
        }
    }
    Ok(())
}

/// Polls the stores until `until` holds of their summed counters or `wait`
/// passes; the time it took, if it held.
fn wait_for(
    remote: &Remote,
    since: Instant,
    wait: Duration,
    until: impl Fn(&Totals) -> bool,
) -> (Option<Duration>, Totals) {
    loop {
        let t = Totals::of(&remote.infos());
        if until(&t) {
            return (Some(since.elapsed()), t);
        }
        if since.elapsed() >= wait {
            return (None, t);
        }
        thread::sleep(POLL);
    }
}

/// (a): the time from connecting until the stores lead `regions` regions
/// between them (a cluster started just before the tool measures its
/// election; a running one answers at once).
fn election(remote: &Remote, regions: u64, connected: Instant) -> Table {
    let (took, t) = wait_for(remote, connected, ELECTION_WAIT, |t| {
        u64::try_from(t.leaders).is_ok_and(|l| l >= regions)
    });
    let mut table = Table::new("(a) election (remote)");
    table.row(
        "every region with a leader, after connecting",
        match took {
            Some(d) => fmt_duration(d),
            None => format!(
                "not within {}: {} leaders for {regions} regions",
                fmt_duration(ELECTION_WAIT),
                t.leaders
            ),
        },
    );
    table.row("peers on all stores", t.peers.to_string());
    table
}

/// One store's process figures at one moment.
#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    store_id: u64,
    rss: Option<u64>,
    cpu_ticks: Option<u64>,
    peers: i64,
    wire_batches: u64,
}

fn process_samples(remote: &Remote) -> Vec<ProcessSample> {
    remote
        .infos()
        .iter()
        .map(|i| ProcessSample {
            store_id: i.store_id,
            rss: i.rss_bytes,
            cpu_ticks: i.cpu_ticks,
            peers: i.peers,
            wire_batches: i.wire_batches_sent,
        })
        .collect()
}

/// (b): waits until every peer hibernates, then measures each store
/// process over `span` with no client traffic: RSS (all and per peer), CPU
/// cores, and wire batches per second to each other store.
fn idle(remote: &Remote, span: Duration) -> Table {
    let started = Instant::now();
    let (took, settled) = wait_for(remote, started, HIBERNATE_WAIT, |t| {
        t.peers > 0 && t.hibernated >= t.peers
    });
    let before = process_samples(remote);
    let measured_from = Instant::now();
    thread::sleep(span);
    let after = process_samples(remote);
    let span = measured_from.elapsed();
    let end = Totals::of(&remote.infos());
    let others = before.len().saturating_sub(1).max(1) as f64;

    let mut table = Table::new("(b) idle (remote)");
    table.row(
        "every peer hibernated",
        match took {
            Some(d) => fmt_duration(d),
            None => format!(
                "not within {}: {} of {} peers hibernated, {} awake",
                fmt_duration(HIBERNATE_WAIT),
                settled.hibernated,
                settled.peers,
                settled.awake
            ),
        },
    );
    table.row("then measured for", fmt_duration(span));
    for a in &after {
        let Some(b) = before.iter().find(|b| b.store_id == a.store_id) else {
            continue;
        };
        let rss = a.rss.map_or_else(
            || "RSS unknown".into(),
            |r| {
                format!(
                    "RSS {} ({} per peer)",
                    fmt_bytes(r),
                    fmt_bytes(r / u64::try_from(a.peers).unwrap_or(0).max(1))
                )
            },
        );
        let cpu = match (b.cpu_ticks, a.cpu_ticks) {
            (Some(b), Some(a)) => {
                let cores = a.saturating_sub(b) as f64
                    / CLOCK_TICKS_PER_S
                    / span.as_secs_f64().max(f64::MIN_POSITIVE);
                format!("CPU {}", fmt_core_share(cores))
            }
            _ => "CPU unknown".into(),
        };
        let wire = rate(a.wire_batches.saturating_sub(b.wire_batches), span) / others;
        table.row(
            format!("store {}", a.store_id),
            format!(
                "{} peers; {rss}; {cpu}; {wire:.2} wire batches/s to each other store",
                a.peers
            ),
        );
    }
    table.row(
        "hibernated / awake peers at the end",
        format!("{} / {}", end.hibernated, end.awake),
    );
    table
}

/// Runs an operator's hook, `{store}` replaced by `store`, through `sh -c`
/// (its output discarded: a command that starts a server must not hold
/// this tool's pipes). Waits for it to exit.
fn run_hook(cmd: &str, store: u64) -> Result<(), String> {
    let cmd = cmd.replace("{store}", &store.to_string());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("`{cmd}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}`: {status}"))
    }
}

/// Leaders summed over `stores` (those that answer within
/// [`FAILOVER_QUERY_WAIT`]).
fn leaders_on(stores: &[&Arc<RemoteStore>]) -> u64 {
    stores
        .iter()
        .filter_map(|s| s.store_info(FAILOVER_QUERY_WAIT).ok())
        .map(|i| u64::try_from(i.leaders).unwrap_or(0))
        .sum()
}

/// What the kill phase hands the restart phase: the store it killed and
/// how many peers that store had.
#[derive(Debug, Clone, Copy)]
struct Killed {
    store_id: u64,
    peers: i64,
}

/// (e): kills the store leading the most regions with the operator's
/// command, then samples the other stores' leader counts until they lead
/// every region: the arrival times are the new leaders' (to
/// [`FAILOVER_POLL`]), from the moment the command was started.
fn kill(remote: &Remote, regions: u64, cmd: &str) -> (Table, Option<Killed>) {
    let mut table = Table::new("(e) kill (remote)");
    let infos = remote.infos();
    let Some(victim) = infos
        .iter()
        .max_by_key(|i| (i.leaders, std::cmp::Reverse(i.store_id)))
    else {
        table.row("store killed", "none: no store answered");
        return (table, None);
    };
    let others: Vec<&Arc<RemoteStore>> = remote
        .stores
        .iter()
        .filter(|s| s.store_id() != victim.store_id)
        .collect();
    let base = leaders_on(&others);
    let started = Instant::now();
    if let Err(e) = run_hook(cmd, victim.store_id) {
        table.row("kill command failed", e);
        return (table, None);
    }
    let hook_took = started.elapsed();
    let mut arrivals = Arrivals::new(base, regions.saturating_sub(base));
    while !arrivals.complete() && started.elapsed() < FAILOVER_WAIT {
        arrivals.observe(leaders_on(&others), started.elapsed());
        thread::sleep(FAILOVER_POLL);
    }
    table.row(
        "store killed",
        format!(
            "store {}, leader of {} of {regions} regions (the command took {})",
            victim.store_id,
            victim.leaders,
            fmt_duration(hook_took)
        ),
    );
    table.row(
        "all its regions with a new leader, from the kill",
        match arrivals.last() {
            Some(last) if arrivals.complete() => fmt_duration(last),
            _ if arrivals.complete() => "at once (it led none)".into(),
            _ => format!(
                "not within {}: {} regions without a leader",
                fmt_duration(FAILOVER_WAIT),
                arrivals.expected() - arrivals.arrived()
            ),
        },
    );
    table.row(
        "new leader after p50 / p99 / max, from the kill",
        arrival_quantiles(&arrivals, Duration::ZERO),
    );
    (
        table,
        Some(Killed {
            store_id: victim.store_id,
            peers: victim.peers,
        }),
    )
}

/// (f): starts the killed store again with the operator's command, then
/// times it: answering its client service, reporting as many peers as
/// before, and every region with a leader on the whole cluster.
fn restart(remote: &Remote, regions: u64, cmd: &str, killed: Killed) -> Table {
    let mut table = Table::new("(f) restart (remote)");
    let Some(store) = remote
        .stores
        .iter()
        .find(|s| s.store_id() == killed.store_id)
    else {
        table.row("restart", "the killed store is not in the address book");
        return table;
    };
    let started = Instant::now();
    if let Err(e) = run_hook(cmd, killed.store_id) {
        table.row("restart command failed", e);
        return table;
    }
    let mut answered = None;
    let mut loaded = None;
    while loaded.is_none() && started.elapsed() < FAILOVER_WAIT {
        if let Ok(info) = store.store_info(FAILOVER_QUERY_WAIT) {
            answered.get_or_insert(started.elapsed());
            if info.peers >= killed.peers {
                loaded = Some(started.elapsed());
            }
        }
        thread::sleep(FAILOVER_POLL);
    }
    let all: Vec<&Arc<RemoteStore>> = remote.stores.iter().collect();
    let mut led = None;
    while loaded.is_some() && led.is_none() && started.elapsed() < FAILOVER_WAIT {
        if leaders_on(&all) >= regions {
            led = Some(started.elapsed());
        }
        thread::sleep(FAILOVER_POLL);
    }
    let show = |d: Option<Duration>| {
        d.map_or_else(
            || format!("not within {}", fmt_duration(FAILOVER_WAIT)),
            fmt_duration,
        )
    };
    table.row("store restarted", format!("store {}", killed.store_id));
    table.row(
        "answers its client service, from the command",
        show(answered),
    );
    table.row(
        format!("all its {} peers loaded", killed.peers),
        show(loaded),
    );
    table.row("every region with a leader", show(led));
    table
}
