//! `flotilla ctl`: look at and change a running cluster through one of its
//! stores (`--host`), or look into a stopped store's data directory
//! (`--data-dir`), like tikv-ctl.
//!
//! Online, the store named by `--host` says which stores the cluster has
//! and where; admin commands then go through the same `Client` as the
//! embedding API (routing, retries, typed errors), over the network.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use flotilla_engine::{Cf, Engine, EngineOptions, keys};
use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::metapb::{Peer, PeerRole, Region};
use flotilla_proto::raft_serverpb::{RaftApplyState, RaftLocalState, RegionLocalState};
use flotilla_raftstore::store::{Client, ClientConfig, Stores, region_states};
use flotilla_server::{NetConfig, RemoteStore};
use thiserror::Error;

use crate::load::options::parse_duration;

/// What can make a ctl command fail.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The command line cannot work (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The store or cluster refused or failed (typed, from the store).
    #[error("{0}")]
    Store(#[from] flotilla_raftstore::Error),
    /// The data directory cannot be read.
    #[error("engine: {0}")]
    Engine(#[from] flotilla_engine::Error),
    /// The network runtime failed to start.
    #[error("network: {0}")]
    Net(#[from] flotilla_server::Error),
}

impl CtlError {
    /// The process exit code: 2 for usage, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// `flotilla ctl` arguments.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// A running store (`host:port`): online commands.
    #[arg(long, conflicts_with = "data_dir")]
    pub host: Option<String>,
    /// A stopped store's data directory: offline commands (`region`,
    /// `raft-state`, `scan`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A store's config file whose `[tls]` settings to connect with (for
    /// a TLS cluster).
    #[arg(long, value_name = "STORE_TOML")]
    pub tls_from: Option<PathBuf>,
    /// How long one request may take, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The ctl commands.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// The store: id, cluster, the stores it knows, its peer counts.
    Store,
    /// Regions of the store (online: with leader and hibernation).
    Region {
        /// Which.
        #[command(subcommand)]
        command: RegionCommand,
    },
    /// Split the region holding KEY at KEY.
    Split {
        /// The split key (UTF-8).
        #[arg(long)]
        key: String,
    },
    /// Merge region SOURCE into its neighbour TARGET.
    Merge {
        /// The region merged away.
        #[arg(long)]
        source: u64,
        /// The region that grows.
        #[arg(long)]
        target: u64,
    },
    /// Add a peer of REGION on STORE (a learner, or a voter via a learner).
    AddPeer {
        /// The region.
        #[arg(long)]
        region: u64,
        /// The store to add it on.
        #[arg(long)]
        store: u64,
        /// Leave it a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove REGION's peer on STORE.
    RemovePeer {
        /// The region.
        #[arg(long)]
        region: u64,
        /// The store whose peer goes.
        #[arg(long)]
        store: u64,
    },
    /// Move REGION's leadership to its peer on STORE.
    TransferLeader {
        /// The region.
        #[arg(long)]
        region: u64,
        /// The store to lead it.
        #[arg(long)]
        store: u64,
    },
    /// Compact REGION's raft log up to INDEX.
    CompactLog {
        /// The region.
        #[arg(long)]
        region: u64,
        /// Entries up to this index go.
        #[arg(long)]
        index: u64,
    },
    /// Offline: a region's raft state (hard state, last index) and apply
    /// state.
    RaftState {
        /// The region.
        #[arg(long)]
        region: u64,
    },
    /// Offline: the user keys of `[start, end)` with their values.
    Scan {
        /// First key (UTF-8; empty: the start of the key space).
        #[arg(long, default_value = "")]
        start: String,
        /// End key, excluded (empty: the end of the key space).
        #[arg(long, default_value = "")]
        end: String,
        /// At most this many pairs.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// `flotilla ctl region` commands.
#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// Every region of the store.
    List,
    /// One region.
    Show {
        /// The region's id.
        id: u64,
    },
}

/// Worker threads of ctl's network runtime.
const CTL_NET_THREADS: usize = 1;

/// Runs a ctl command; returns what to print.
///
/// # Errors
/// [`CtlError`]: usage, the store's typed refusal, engine or network.
pub fn run(args: &CtlArgs) -> Result<String, CtlError> {
    match (&args.host, &args.data_dir) {
        (Some(host), None) => {
            let net = match &args.tls_from {
                Some(path) => crate::server::ServerConfig::load(path)
                    .and_then(|c| c.net_config())
                    .map_err(|e| CtlError::Usage(e.to_string()))?,
                None => NetConfig::default(),
            };
            online(host, &net, args)
        }
        (None, Some(dir)) => offline(dir, &args.command),
        _ => Err(CtlError::Usage(
            "give --host ADDR (a running store) or --data-dir DIR (a stopped one)".into(),
        )),
    }
}

fn escaped(key: &[u8]) -> String {
    if key.is_empty() {
        return "\"\"".into();
    }
    let mut s = String::from("\"");
    for b in key {
        s.extend(std::ascii::escape_default(*b).map(char::from));
    }
    s.push('"');
    s
}

fn describe_region(r: &Region) -> String {
    let epoch = r.region_epoch.unwrap_or_default();
    let peers: Vec<String> = r
        .peers
        .iter()
        .map(|p| {
            let learner = if p.role == PeerRole::Learner as i32 {
                " learner"
            } else {
                ""
            };
            format!("{}@store{}{learner}", p.id, p.store_id)
        })
        .collect();
    format!(
        "region {} [{}, {}) epoch conf_ver {} version {} peers [{}]",
        r.id,
        escaped(&r.start_key),
        if r.end_key.is_empty() {
            "+inf".to_string()
        } else {
            escaped(&r.end_key)
        },
        epoch.conf_ver,
        epoch.version,
        peers.join(", ")
    )
}

fn describe_state(s: &RegionLocalState) -> String {
    let region = s.region.clone().unwrap_or_default();
    format!("{} state {:?}", describe_region(&region), s.state())
}

struct Online {
    runtime: tokio::runtime::Runtime,
    first: Arc<RemoteStore>,
    stores: Stores,
    remotes: Vec<Arc<RemoteStore>>,
    wait: Duration,
}

impl Online {
    fn connect(host: &str, net: &NetConfig, wait: Duration) -> Result<Online, CtlError> {
        let runtime = flotilla_server::net_runtime(CTL_NET_THREADS)?;
        let net = net.clone();
        let probe = RemoteStore::new(0, host, net.clone(), runtime.handle().clone());
        let info = probe.store_info(wait)?;
        let first = RemoteStore::new(info.store_id, host, net.clone(), runtime.handle().clone());
        let stores = Stores::default();
        let mut remotes = Vec::new();
        for s in &info.stores {
            let r = if s.id == info.store_id {
                first.clone()
            } else {
                RemoteStore::new(s.id, s.addr.clone(), net.clone(), runtime.handle().clone())
            };
            stores.insert_remote(r.clone());
            remotes.push(r);
        }
        if !info.stores.iter().any(|s| s.id == info.store_id) {
            stores.insert_remote(first.clone());
            remotes.push(first.clone());
        }
        Ok(Online {
            runtime,
            first,
            stores,
            remotes,
            wait,
        })
    }

    fn client(&self) -> Client {
        Client::new(
            self.stores.clone(),
            &[],
            ClientConfig {
                request_timeout: self.wait,
                operation_timeout: self.wait,
                ..ClientConfig::default()
            },
        )
    }

    /// Region `id` as its leader (or else the newest copy) knows it.
    fn region(&self, id: u64) -> Result<Region, CtlError> {
        let mut best: Option<Region> = None;
        for r in &self.remotes {
            use flotilla_raftstore::store::StoreApi as _;
            if let Ok(s) = r.region_status(id, self.wait) {
                let newer = best.as_ref().is_none_or(|b| {
                    let (a, b) = (
                        s.region.region_epoch.unwrap_or_default(),
                        b.region_epoch.unwrap_or_default(),
                    );
                    (a.version, a.conf_ver) > (b.version, b.conf_ver)
                });
                if newer {
                    best = Some(s.region);
                }
            }
        }
        best.ok_or(CtlError::Store(flotilla_raftstore::Error::RegionNotFound(
            id,
        )))
    }

    fn remote(&self, store: u64) -> Result<&Arc<RemoteStore>, CtlError> {
        self.remotes
            .iter()
            .find(|r| {
                use flotilla_raftstore::store::StoreApi as _;
                r.store_id() == store
            })
            .ok_or_else(|| CtlError::Usage(format!("store {store} is not in the cluster")))
    }
}

/// How often `add-peer` asks again to promote a learner still catching
/// up.
const PROMOTE_RETRY: Duration = Duration::from_millis(100);

/// Promotes learner `voter` of `region`, asking again while it is still
/// catching up (or another change is pending), until `wait` passes.
fn promote(client: &Client, region: u64, voter: Peer, wait: Duration) -> Result<Region, CtlError> {
    use flotilla_raftstore::store::{AdminError, Error};
    let deadline = flotilla_raftstore::store::deadline_in(wait);
    loop {
        match client.change_peer(region, ConfChangeType::AddNode, voter) {
            Err(Error::Admin(
                AdminError::LearnerNotCaughtUp { .. } | AdminError::ConfChangePending { .. },
            )) if std::time::Instant::now() < deadline => std::thread::sleep(PROMOTE_RETRY),
            other => return Ok(other?),
        }
    }
}

fn online(host: &str, net: &NetConfig, args: &CtlArgs) -> Result<String, CtlError> {
    use flotilla_raftstore::store::StoreApi as _;
    let o = Online::connect(host, net, args.timeout)?;
    let mut out = String::new();
    match &args.command {
        CtlCommand::Store => {
            let info = o.first.store_info(o.wait)?;
            let _ = writeln!(
                out,
                "store {} of cluster {}{}",
                info.store_id,
                info.cluster_id,
                if info.stopped { " (stopped)" } else { "" }
            );
            let _ = writeln!(
                out,
                "leaders {}  awake peers {}  hibernated peers {}",
                info.leaders, info.awake_peers, info.hibernated_peers
            );
            for s in info.stores {
                let _ = writeln!(out, "  store {} at {}", s.id, s.addr);
            }
        }
        CtlCommand::Region {
            command: RegionCommand::List,
        } => {
            for state in o.first.regions(o.wait)? {
                let region = state.region.clone().unwrap_or_default();
                let status = o.first.region_status(region.id, o.wait).ok();
                let leader = status
                    .as_ref()
                    .and_then(|s| s.leader)
                    .map_or("none".to_string(), |l| format!("store{}", l.store_id));
                let hibernating = status.as_ref().is_some_and(|s| s.hibernating);
                let _ = writeln!(
                    out,
                    "{} leader {leader}{}",
                    describe_state(&state),
                    if hibernating { " hibernating" } else { "" }
                );
            }
        }
        CtlCommand::Region {
            command: RegionCommand::Show { id },
        } => {
            let s = o.first.region_status(*id, o.wait)?;
            let _ = writeln!(out, "{}", describe_region(&s.region));
            let _ = writeln!(
                out,
                "peer {} leader {} term {} commit {} applied {} last {} truncated {}{}{}",
                s.peer.id,
                s.leader.map_or("none".to_string(), |l| format!(
                    "{}@store{}",
                    l.id, l.store_id
                )),
                s.term,
                s.commit_index,
                s.applied_index,
                s.last_index,
                s.truncated_index,
                if s.hibernating { " hibernating" } else { "" },
                if s.applying_snapshot {
                    " applying-snapshot"
                } else {
                    ""
                }
            );
        }
        CtlCommand::Split { key } => {
            for r in o.client().split_at(key.as_bytes())? {
                let _ = writeln!(out, "{}", describe_region(&r));
            }
        }
        CtlCommand::Merge { source, target } => {
            let r = o.client().merge(*source, *target)?;
            let _ = writeln!(out, "{}", describe_region(&r));
        }
        CtlCommand::AddPeer {
            region,
            store,
            learner,
        } => {
            let client = o.client();
            // A learner already there (an earlier add-peer that did not
            // finish promoting) is promoted; else a new one is added.
            let current = o.region(*region)?;
            let (peer, mut r) = match current.peers.iter().find(|p| p.store_id == *store) {
                Some(p) if p.role == PeerRole::Learner as i32 => (*p, current.clone()),
                Some(p) => {
                    return Err(CtlError::Usage(format!(
                        "region {region} has voter {} on store {store} already",
                        p.id
                    )));
                }
                None => {
                    let peer = Peer {
                        id: o.remote(*store)?.alloc_id(o.wait)?,
                        store_id: *store,
                        role: PeerRole::Learner as i32,
                    };
                    let r = client.change_peer(*region, ConfChangeType::AddLearnerNode, peer)?;
                    (peer, r)
                }
            };
            if !learner {
                let voter = Peer {
                    role: PeerRole::Voter as i32,
                    ..peer
                };
                r = promote(&client, *region, voter, o.wait)?;
            }
            let _ = writeln!(out, "{}", describe_region(&r));
        }
        CtlCommand::RemovePeer { region, store } => {
            let current = o.region(*region)?;
            let peer = current
                .peers
                .iter()
                .copied()
                .find(|p| p.store_id == *store)
                .ok_or_else(|| {
                    CtlError::Usage(format!("region {region} has no peer on store {store}"))
                })?;
            let r = o
                .client()
                .change_peer(*region, ConfChangeType::RemoveNode, peer)?;
            let _ = writeln!(out, "{}", describe_region(&r));
        }
        CtlCommand::TransferLeader { region, store } => {
            o.client().transfer_leader(*region, *store)?;
            let _ = writeln!(out, "region {region}: leadership moved to store {store}");
        }
        CtlCommand::CompactLog { region, index } => {
            o.client().compact_log(*region, *index)?;
            let _ = writeln!(out, "region {region}: log compacted to {index}");
        }
        CtlCommand::RaftState { .. } | CtlCommand::Scan { .. } => {
            return Err(CtlError::Usage(
                "raft-state and scan read a stopped store: use --data-dir".into(),
            ));
        }
    }
    drop(o.runtime);
    Ok(out)
}

fn offline(dir: &Path, command: &CtlCommand) -> Result<String, CtlError> {
    let opts = EngineOptions {
        create_if_missing: false,
        ..EngineOptions::default()
    };
    let engine = Engine::open(dir, &opts)?;
    let mut out = String::new();
    match command {
        CtlCommand::Region {
            command: RegionCommand::List,
        } => {
            for s in region_states(&engine)? {
                let _ = writeln!(out, "{}", describe_state(&s));
            }
        }
        CtlCommand::Region {
            command: RegionCommand::Show { id },
        } => {
            let s: RegionLocalState = engine
                .get_msg(Cf::Raft, &keys::region_state_key(*id))?
                .ok_or(flotilla_raftstore::Error::RegionNotFound(*id))?;
            let _ = writeln!(out, "{}", describe_state(&s));
            if let Some(m) = s.merge_state {
                let _ = writeln!(out, "merge state {m:?}");
            }
        }
        CtlCommand::RaftState { region } => {
            let raft: Option<RaftLocalState> =
                engine.get_msg(Cf::Raft, &keys::raft_state_key(*region))?;
            let apply: Option<RaftApplyState> =
                engine.get_msg(Cf::Raft, &keys::apply_state_key(*region))?;
            if raft.is_none() && apply.is_none() {
                return Err(flotilla_raftstore::Error::RegionNotFound(*region).into());
            }
            if let Some(r) = raft {
                let hs = r.hard_state.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "raft state: term {} vote {} commit {} last index {}",
                    hs.term, hs.vote, hs.commit, r.last_index
                );
            }
            if let Some(a) = apply {
                let t = a.truncated_state.unwrap_or_default();
                let _ = writeln!(
                    out,
                    "apply state: applied {} truncated index {} term {}",
                    a.applied_index, t.index, t.term
                );
            }
        }
        CtlCommand::Scan { start, end, limit } => {
            let snap = engine.snapshot();
            let (from, to) = (
                keys::data_key(start.as_bytes()),
                keys::data_end_key(end.as_bytes()),
            );
            for item in snap.iter(Cf::Default, &from, &to).take(*limit) {
                let (k, v) = item?;
                let key = keys::origin_key(&k).map_err(flotilla_engine::Error::from)?;
                let _ = writeln!(out, "{} = {}", escaped(key), escaped(&v));
            }
        }
        _ => {
            return Err(CtlError::Usage(
                "with --data-dir: region list|show, raft-state, scan".into(),
            ));
        }
    }
    Ok(out)
}
