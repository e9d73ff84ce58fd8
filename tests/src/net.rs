//! [`NetCluster`]: stores in one process that talk gRPC over loopback
//! ports, as separate processes would (each store has its own transport,
//! server and port; nothing passes between them but TCP).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flotilla_proto::metapb::Region;
use flotilla_raftstore::store::{
    CLUSTER_ID, Client, ClientConfig, Config, Result, Store, Stores, bootstrap_store_dirs,
    store_dir,
};
use flotilla_server::{
    AddressBook, ClientService, GrpcTransport, NetConfig, RemoteStore, ServerIdentity, StoreServer,
};
use fxhash::FxHashMap;

/// Worker threads of the cluster's network runtime.
const NET_THREADS: usize = 2;

/// One running store and its network ends.
struct Running {
    store: Store,
    transport: GrpcTransport,
    server: StoreServer,
}

/// Stores `1..=n` of one cluster under one directory, each with its own
/// [`GrpcTransport`] and [`StoreServer`] on a loopback port.
pub struct NetCluster {
    dir: PathBuf,
    cfg: Config,
    net: NetConfig,
    runtime: tokio::runtime::Runtime,
    addrs: AddressBook,
    running: FxHashMap<u64, Running>,
    handles: Stores,
    /// The running stores' client services, over the network.
    remote: Stores,
    regions: Vec<Region>,
    store_ids: Vec<u64>,
    logger: slog::Logger,
}

impl NetCluster {
    /// Bootstraps `stores` stores with `regions` regions under `dir` and
    /// starts them.
    ///
    /// # Errors
    /// Bootstrap, engine, config or bind errors.
    pub fn bootstrap(
        dir: impl AsRef<Path>,
        stores: usize,
        regions: u64,
        cfg: Config,
        logger: &slog::Logger,
    ) -> Result<NetCluster> {
        Self::bootstrap_with(dir, stores, regions, cfg, NetConfig::default(), logger)
    }

    /// As [`NetCluster::bootstrap`], the network set by `net` (e.g. TLS).
    ///
    /// # Errors
    /// As [`NetCluster::bootstrap`].
    pub fn bootstrap_with(
        dir: impl AsRef<Path>,
        stores: usize,
        regions: u64,
        cfg: Config,
        net: NetConfig,
        logger: &slog::Logger,
    ) -> Result<NetCluster> {
        let (store_ids, initial) = bootstrap_store_dirs(dir.as_ref(), stores, regions)?;
        let runtime = flotilla_server::net_runtime(NET_THREADS)
            .map_err(|e| flotilla_raftstore::store::Error::Config(e.to_string()))?;
        let mut cluster = NetCluster {
            dir: dir.as_ref().to_path_buf(),
            cfg,
            net,
            runtime,
            addrs: AddressBook::new(),
            running: FxHashMap::default(),
            handles: Stores::default(),
            remote: Stores::default(),
            regions: initial,
            store_ids: store_ids.clone(),
            logger: logger.clone(),
        };
        for id in store_ids {
            cluster.start_store(id)?;
        }
        Ok(cluster)
    }

    /// Starts (or restarts) store `id` from its directory, on a new port.
    ///
    /// # Errors
    /// [`flotilla_raftstore::store::Error::Config`] if it is running or
    /// its server cannot bind; open errors.
    pub fn start_store(&mut self, id: u64) -> Result<()> {
        use flotilla_raftstore::store::Error;
        if self.running.contains_key(&id) {
            return Err(Error::Config(format!("store {id} is running")));
        }
        let transport = GrpcTransport::new(
            CLUSTER_ID,
            id,
            self.addrs.clone(),
            self.net.clone(),
            self.runtime.handle().clone(),
            &self.logger,
        );
        let store = Store::open(
            store_dir(&self.dir, id),
            self.cfg.clone(),
            transport.clone(),
            &self.logger,
        )?;
        let who = ServerIdentity {
            cluster_id: CLUSTER_ID,
            store_id: id,
        };
        let server = StoreServer::start(
            self.runtime.handle(),
            "127.0.0.1:0",
            who,
            Arc::new(store.handle()),
            Some(ClientService {
                store: store.handle(),
                addrs: self.addrs.clone(),
                transport: Some(transport.metrics().clone()),
            }),
            &self.net,
            &self.logger,
        )
        .map_err(|e| Error::Config(e.to_string()))?;
        self.addrs.set(id, server.local_addr().to_string());
        self.handles.insert(store.handle());
        self.remote.insert_remote(RemoteStore::new(
            id,
            server.local_addr().to_string(),
            self.net.clone(),
            self.runtime.handle().clone(),
        ));
        self.running.insert(
            id,
            Running {
                store,
                transport,
                server,
            },
        );
        Ok(())
    }

    /// Stops store `id`: its server first (its port closes, the others'
    /// streams to it break), then the store. Returns whether it ran.
    pub fn stop_store(&mut self, id: u64) -> bool {
        self.handles.remove(id);
        self.remote.remove(id);
        let Some(r) = self.running.remove(&id) else {
            return false;
        };
        let _ = r.server.shutdown();
        r.store.shutdown();
        true
    }

    /// A client over the running stores (in-process handles: the raft
    /// traffic between the stores is what goes over the network).
    pub fn client(&self, cfg: ClientConfig) -> Client {
        Client::new(self.handles.clone(), &self.regions, cfg)
    }

    /// A client that reaches the stores only through their client
    /// services ([`RemoteStore`]), knowing no region to start with (it
    /// asks the stores).
    pub fn remote_client(&self, cfg: ClientConfig) -> Client {
        Client::new(self.remote.clone(), &[], cfg)
    }

    /// The running store `id`.
    pub fn store(&self, id: u64) -> Option<&Store> {
        self.running.get(&id).map(|r| &r.store)
    }

    /// Store `id`'s transport, if it runs.
    pub fn transport(&self, id: u64) -> Option<&GrpcTransport> {
        self.running.get(&id).map(|r| &r.transport)
    }

    /// Store `id`'s server, if it runs.
    pub fn server(&self, id: u64) -> Option<&StoreServer> {
        self.running.get(&id).map(|r| &r.server)
    }

    /// Every store id (running or not).
    pub fn store_ids(&self) -> &[u64] {
        &self.store_ids
    }

    /// The regions bootstrapped.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// A client over the running stores' client services with `net`'s
    /// settings instead of the cluster's (another certificate, say).
    pub fn remote_client_with(&self, net: &NetConfig, cfg: ClientConfig) -> Client {
        let stores = Stores::default();
        for &id in self.running.keys() {
            if let Some(addr) = self.addrs.get(id) {
                stores.insert_remote(RemoteStore::new(
                    id,
                    addr,
                    net.clone(),
                    self.runtime.handle().clone(),
                ));
            }
        }
        Client::new(stores, &[], cfg)
    }

    /// Where store `id` serves, if it runs.
    pub fn addr(&self, id: u64) -> Option<String> {
        self.running.get(&id).and(self.addrs.get(id))
    }

    /// The network runtime (for raw clients in bad-input tests).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// Leaders counted over the running stores.
    pub fn leader_count(&self) -> u64 {
        self.running
            .values()
            .map(|r| r.store.metrics().leaders.load(Ordering::Relaxed).max(0) as u64)
            .sum()
    }

    /// Stops every store.
    pub fn shutdown(mut self) {
        for id in self.store_ids.clone() {
            self.stop_store(id);
        }
    }
}
