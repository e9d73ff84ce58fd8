//! [`Cluster`]: several stores in one process over a [`ChannelTransport`],
//! for tests, the demo and embedding experiments.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use flotilla_engine::{CloseWatch, Engine, EngineOptions};
use flotilla_proto::metapb::Region;
use fxhash::FxHashMap;
use slog::Logger;

use super::bootstrap::{MAX_INITIAL_STORES, bootstrap_store, initial_regions};
use super::client::{Client, ClientConfig, Stores};
use super::config::Config;
use super::error::{Error, Result};
use super::node::Store;
use super::transport::ChannelTransport;

/// The cluster id every store of a [`Cluster`] is bootstrapped with.
pub const CLUSTER_ID: u64 = 1;
/// How often [`Cluster::wait_for_leaders`] looks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long [`Cluster::start_store`] waits for calls in flight to let go
/// of the engine of the store's last life.
pub const ENGINE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Stores `1..=n` in one process, each on its own RocksDB under one
/// directory, connected by an in-process network.
pub struct Cluster {
    dir: PathBuf,
    cfg: Config,
    transport: ChannelTransport,
    stores: FxHashMap<u64, Store>,
    handles: Stores,
    regions: Vec<Region>,
    store_ids: Vec<u64>,
    /// Stopped stores: whether their engines are closed yet.
    closing: FxHashMap<u64, CloseWatch>,
    logger: Logger,
}

/// Writes the initial state of `stores` new stores (ids `1..=stores`, each
/// under [`store_dir`] of `dir`) sharing `regions` regions pre-split
/// evenly over the key space; returns the store ids and the regions. What
/// [`Cluster::bootstrap`] does before it starts the stores, for harnesses
/// that start them some other way (over a network).
///
/// # Errors
/// Config errors (no store, no region, too many stores); engine errors.
pub fn bootstrap_store_dirs(
    dir: &Path,
    stores: usize,
    regions: u64,
) -> Result<(Vec<u64>, Vec<Region>)> {
    // Checked before the ids are listed: a count past the bound must not
    // allocate first.
    if stores as u64 > MAX_INITIAL_STORES {
        return Err(Error::Config(format!(
            "{stores} stores (at most {MAX_INITIAL_STORES})"
        )));
    }
    let store_ids: Vec<u64> = (1..=stores as u64).collect();
    let initial = initial_regions(&store_ids, regions)?;
    for &id in &store_ids {
        let engine = Engine::open(store_dir(dir, id), &EngineOptions::default())?;
        bootstrap_store(&engine, CLUSTER_ID, id, &initial)?;
    }
    Ok((store_ids, initial))
}

impl Cluster {
    /// Bootstraps `stores` stores with `regions` regions pre-split evenly
    /// over the key space under `dir` (which must be empty or absent), and
    /// starts them.
    ///
    /// # Errors
    /// Bootstrap, engine or config errors.
    pub fn bootstrap(
        dir: impl AsRef<Path>,
        stores: usize,
        regions: u64,
        cfg: Config,
        logger: &Logger,
    ) -> Result<Cluster> {
        cfg.validate()?;
        let (store_ids, initial) = bootstrap_store_dirs(dir.as_ref(), stores, regions)?;
        let mut cluster = Cluster {
            dir: dir.as_ref().to_path_buf(),
            cfg,
            transport: ChannelTransport::new(),
            stores: FxHashMap::default(),
            handles: Stores::default(),
            regions: initial,
            store_ids: store_ids.clone(),
            closing: FxHashMap::default(),
            logger: logger.clone(),
        };
        for id in store_ids {
            cluster.start_store(id)?;
        }
        Ok(cluster)
    }

    /// Bootstraps and starts a new store `id` with no peers (conf changes
    /// add them).
    ///
    /// # Errors
    /// [`Error::Config`] if the cluster has a store `id`; bootstrap and
    /// open errors.
    pub fn add_store(&mut self, id: u64) -> Result<()> {
        if self.store_ids.contains(&id) {
            return Err(Error::Config(format!("store {id} exists")));
        }
        {
            let engine = Engine::open(store_dir(&self.dir, id), &EngineOptions::default())?;
            bootstrap_store(&engine, CLUSTER_ID, id, &[])?;
        }
        // Listed once it runs: a store that failed to start is not one of
        // the cluster's.
        self.start_store(id)?;
        self.store_ids.push(id);
        Ok(())
    }

    /// Starts (or restarts) store `id` from its directory.
    ///
    /// # Errors
    /// [`Error::Config`] if it is running already; open errors.
    pub fn start_store(&mut self, id: u64) -> Result<()> {
        if self.stores.contains_key(&id) {
            return Err(Error::Config(format!("store {id} is running")));
        }
        if let Some(watch) = self.closing.remove(&id) {
            // A call in flight when the store stopped (a client's, or a
            // delivery of the in-process transport) may still hold a clone
            // of its handle, and with it the engine and RocksDB's lock on
            // the directory: it answers "store stopped" and lets go.
            let deadline = Instant::now() + ENGINE_CLOSE_WAIT;
            while !watch.is_closed() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let store = Store::open(
            store_dir(&self.dir, id),
            self.cfg.clone(),
            self.transport.clone(),
            &self.logger,
        )?;
        let handle = store.handle();
        self.transport
            .connect(id, std::sync::Arc::new(handle.clone()));
        self.handles.insert(handle);
        self.stores.insert(id, store);
        Ok(())
    }

    /// Stops store `id` (as a crash would, minus the lost page cache: its
    /// synced writes stay). Returns whether it was running.
    pub fn stop_store(&mut self, id: u64) -> bool {
        self.transport.disconnect(id);
        self.handles.remove(id);
        let Some(store) = self.stores.remove(&id) else {
            return false;
        };
        self.closing.insert(id, store.engine().close_watch());
        store.shutdown();
        true
    }

    /// Stops every store and starts them again from disk.
    ///
    /// # Errors
    /// As [`Cluster::start_store`].
    pub fn restart_all(&mut self) -> Result<()> {
        for id in self.store_ids.clone() {
            self.stop_store(id);
        }
        for id in self.store_ids.clone() {
            self.start_store(id)?;
        }
        Ok(())
    }

    /// A client over this cluster's stores.
    pub fn client(&self, cfg: ClientConfig) -> Client {
        Client::new(self.handles.clone(), &self.regions, cfg)
    }

    /// The running stores' handles, shared: the cluster updates them as
    /// stores stop and start, so a [`Client`] made from them
    /// (`Client::new(cluster.stores(), cluster.regions(), cfg)`) keeps
    /// working while fault-injection code stops, starts and restarts
    /// stores through `&mut Cluster`.
    pub fn stores(&self) -> Stores {
        self.handles.clone()
    }

    /// The in-process network (add filters to it for fault tests).
    pub fn transport(&self) -> &ChannelTransport {
        &self.transport
    }

    /// The running store `id`.
    pub fn store(&self, id: u64) -> Option<&Store> {
        self.stores.get(&id)
    }

    /// The ids of every store (running or not).
    pub fn store_ids(&self) -> &[u64] {
        &self.store_ids
    }

    /// The regions bootstrapped.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Leaders counted over running stores (a region in a leader change may
    /// briefly count twice).
    pub fn leader_count(&self) -> u64 {
        self.stores
            .values()
            .map(|s| s.metrics().leaders.load(Ordering::Relaxed).max(0) as u64)
            .sum()
    }

    /// Waits until at least `n` leaders exist, or `timeout` passes.
    /// Returns whether they did.
    pub fn wait_for_leaders(&self, n: u64, timeout: Duration) -> bool {
        let deadline = super::client::deadline_in(timeout);
        while Instant::now() < deadline {
            if self.leader_count() >= n {
                return true;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.leader_count() >= n
    }

    /// Stops every store.
    pub fn shutdown(mut self) {
        for id in self.store_ids.clone() {
            self.stop_store(id);
        }
    }
}

/// Where store `id` of a cluster under `dir` keeps its RocksDB.
pub fn store_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("store-{id}"))
}
