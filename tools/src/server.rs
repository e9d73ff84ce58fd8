//! `flotilla server` and `flotilla bootstrap`: one store of a networked
//! cluster per process, configured by a TOML file.
//!
//! Every store of a cluster has its own file; the files agree on the
//! cluster id, the list of stores with their addresses, and the number of
//! initial regions (`flotilla bootstrap` cuts the key space the same way
//! on each store from them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_engine::{Engine, EngineOptions};
use flotilla_raftstore::store::bootstrap::{MAX_INITIAL_REGIONS, bootstrap_store, initial_regions};
use flotilla_raftstore::{Config, Store};
use flotilla_server::{
    AddressBook, ClientService, GrpcTransport, NetConfig, ServerIdentity, StatusServer,
    StatusSources, StoreServer,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How often the server looks whether its store stopped on its own (a
/// fatal error).
const STOPPED_POLL: Duration = Duration::from_millis(200);

/// What can stop `flotilla server` or `flotilla bootstrap`.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The config file cannot be read.
    #[error("config file {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config is not valid TOML for this schema (the message names
    /// the field).
    #[error("config file {path}: {message}")]
    ParseConfig {
        /// The file.
        path: PathBuf,
        /// The parser's message (field, line and why).
        message: String,
    },
    /// A field's value cannot work.
    #[error("config field `{field}`: {why}")]
    InvalidConfig {
        /// The field, as written in the file.
        field: String,
        /// Why.
        why: String,
    },
    /// The store failed to open, bootstrap or run.
    #[error("store: {0}")]
    Store(#[from] flotilla_raftstore::Error),
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[from] flotilla_engine::Error),
    /// The network failed to start.
    #[error("network: {0}")]
    Net(#[from] flotilla_server::Error),
    /// Signal handling failed.
    #[error("signals: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(field: &str, why: impl Into<String>) -> ServerError {
    ServerError::InvalidConfig {
        field: field.to_string(),
        why: why.into(),
    }
}

/// One store of the cluster and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreAddr {
    /// The store's id.
    pub id: u64,
    /// `host:port` of its services (raft and client share the port).
    pub addr: String,
}

/// RocksDB settings (`[engine]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// Bytes of the block cache.
    pub block_cache_bytes: usize,
    /// Memtable bytes per column family.
    pub write_buffer_bytes: usize,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        let d = EngineOptions::default();
        EngineSettings {
            block_cache_bytes: d.block_cache_bytes,
            write_buffer_bytes: d.write_buffer_bytes,
            background_jobs: d.background_jobs,
        }
    }
}

impl EngineSettings {
    fn options(&self, create: bool) -> EngineOptions {
        EngineOptions {
            block_cache_bytes: self.block_cache_bytes,
            write_buffer_bytes: self.write_buffer_bytes,
            background_jobs: self.background_jobs,
            create_if_missing: create,
        }
    }
}

/// Network settings (`[network]`), durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Worker threads of the network runtime.
    pub threads: usize,
    /// Batches queued per remote store before new ones are dropped.
    pub queue_batches: usize,
    /// Byte budget of one batch of raft messages.
    pub batch_bytes: usize,
    /// Largest gRPC message sent or received.
    pub max_message_bytes: usize,
    /// How long a connection attempt may take.
    pub connect_timeout_ms: u64,
    /// First wait after a failed connection.
    pub initial_backoff_ms: u64,
    /// Longest wait between connection attempts.
    pub max_backoff_ms: u64,
    /// HTTP/2 ping interval on idle connections.
    pub keepalive_interval_ms: u64,
    /// How long a ping may go unanswered.
    pub keepalive_timeout_ms: u64,
}

/// Default worker threads of a server's network runtime.
const DEFAULT_NET_THREADS: usize = 2;
/// Most worker threads a server's network runtime may have.
pub const MAX_NET_THREADS: usize = 1024;
/// Bytes of a network message beyond its entries or scanned pairs and
/// their framing: headers.
pub const MESSAGE_HEADROOM: u64 = 1 << 20;
/// Framing bytes of one scanned pair in a scan page (tags and lengths,
/// rounded up).
const PAIR_FRAMING: u64 = 16;

impl Default for NetworkSettings {
    fn default() -> Self {
        let d = NetConfig::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        NetworkSettings {
            threads: DEFAULT_NET_THREADS,
            queue_batches: d.queue_batches,
            batch_bytes: d.batch_bytes,
            max_message_bytes: d.max_message_bytes,
            connect_timeout_ms: ms(d.connect_timeout),
            initial_backoff_ms: ms(d.initial_backoff),
            max_backoff_ms: ms(d.max_backoff),
            keepalive_interval_ms: ms(d.keepalive_interval),
            keepalive_timeout_ms: ms(d.keepalive_timeout),
        }
    }
}

impl NetworkSettings {
    fn config(&self) -> NetConfig {
        NetConfig {
            queue_batches: self.queue_batches,
            batch_bytes: self.batch_bytes,
            max_message_bytes: self.max_message_bytes,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            initial_backoff: Duration::from_millis(self.initial_backoff_ms),
            max_backoff: Duration::from_millis(self.max_backoff_ms),
            keepalive_interval: Duration::from_millis(self.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.keepalive_timeout_ms),
            ..NetConfig::default()
        }
    }
}

/// TLS settings (`[tls]`): mutual TLS for the raft and client services,
/// every certificate signed by one CA. Absent: plaintext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// This store's certificate (PEM file); it must name `server_name`.
    pub cert: PathBuf,
    /// Its private key (PEM file).
    pub key: PathBuf,
    /// The DNS name every store's certificate carries, checked by clients.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// Names a peer's certificate must carry one of; empty: any the CA
    /// signed.
    #[serde(default)]
    pub allowed_names: Vec<String>,
}

fn default_server_name() -> String {
    "flotilla".into()
}

impl TlsSettings {
    fn load(&self) -> Result<flotilla_server::TlsConfig, ServerError> {
        let read = |field: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))
        };
        let tls = flotilla_server::TlsConfig {
            ca_pem: read("tls.ca", &self.ca)?,
            cert_pem: read("tls.cert", &self.cert)?,
            key_pem: read("tls.key", &self.key)?,
            server_name: self.server_name.clone(),
            allowed_names: self.allowed_names.clone(),
        };
        tls.validate().map_err(|e| invalid("tls", e.to_string()))?;
        Ok(tls)
    }
}

/// A store server's configuration file. Every field but `store_id`,
/// `data_dir`, `listen` and `stores` has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The cluster: every store of it has the same id.
    pub cluster_id: u64,
    /// This store's id (one of `stores`).
    pub store_id: u64,
    /// Where the store keeps its RocksDB.
    pub data_dir: PathBuf,
    /// `host:port` to listen on (raft and client services).
    pub listen: String,
    /// `host:port` of the status port (`/metrics`, `/status`); empty: none.
    pub status_listen: String,
    /// Regions `flotilla bootstrap` cuts the key space into.
    pub initial_regions: u64,
    /// Every store of the cluster and where it listens.
    pub stores: Vec<StoreAddr>,
    /// The store's raft and apply settings.
    pub raftstore: Config,
    /// RocksDB settings.
    pub engine: EngineSettings,
    /// Network settings.
    pub network: NetworkSettings,
    /// Mutual TLS; absent: plaintext.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            cluster_id: flotilla_raftstore::store::CLUSTER_ID,
            store_id: 1,
            data_dir: PathBuf::from("flotilla-data/store-1"),
            listen: "127.0.0.1:20161".into(),
            status_listen: "127.0.0.1:20181".into(),
            initial_regions: 1,
            stores: (1..=3)
                .map(|id| StoreAddr {
                    id,
                    addr: format!("127.0.0.1:{}", 20160 + id),
                })
                .collect(),
            raftstore: Config::default(),
            engine: EngineSettings::default(),
            network: NetworkSettings::default(),
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ServerError::ReadConfig`], [`ServerError::ParseConfig`] (unknown
    /// fields and wrong types included, named), or
    /// [`ServerError::InvalidConfig`] naming the field.
    pub fn load(path: &std::path::Path) -> Result<ServerConfig, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: ServerConfig = toml::from_str(&text).map_err(|e| ServerError::ParseConfig {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The default configuration as TOML, every field written out.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&ServerConfig::default())
            .unwrap_or_else(|e| unreachable!("the default config serializes: {e}"))
    }

    /// Checks every field can work.
    ///
    /// # Errors
    /// [`ServerError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ServerError> {
        if self.cluster_id == 0 {
            return Err(invalid("cluster_id", "must be > 0"));
        }
        if self.store_id == 0 {
            return Err(invalid("store_id", "must be > 0"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must be set"));
        }
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", format!("{:?} is not host:port: {e}", self.listen)))?;
        if !self.status_listen.is_empty() {
            self.status_listen.parse::<SocketAddr>().map_err(|e| {
                invalid(
                    "status_listen",
                    format!("{:?} is not host:port: {e}", self.status_listen),
                )
            })?;
        }
        if self.initial_regions == 0 || self.initial_regions > MAX_INITIAL_REGIONS {
            return Err(invalid(
                "initial_regions",
                format!("must be 1 to {MAX_INITIAL_REGIONS}"),
            ));
        }
        let mut ids: Vec<u64> = self.stores.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("stores", "a store id appears twice"));
        }
        if ids.contains(&0) {
            return Err(invalid("stores", "store ids must be > 0"));
        }
        if !ids.contains(&self.store_id) {
            return Err(invalid(
                "stores",
                format!("does not list this store ({})", self.store_id),
            ));
        }
        if let Some(s) = self.stores.iter().find(|s| s.addr.trim().is_empty()) {
            return Err(invalid("stores", format!("store {} has no addr", s.id)));
        }
        self.raftstore
            .validate()
            .map_err(|e| invalid("raftstore", e.to_string()))?;
        self.engine
            .options(true)
            .validate()
            .map_err(|e| invalid("engine", e.to_string()))?;
        if self.network.threads == 0 || self.network.threads > MAX_NET_THREADS {
            return Err(invalid(
                "network.threads",
                format!("must be 1 to {MAX_NET_THREADS}"),
            ));
        }
        // The largest message the store makes must cross the network: an
        // append (a message's worth of entries plus one entry that may
        // pass it) and a scan page (its byte bound plus the pair that
        // reaches it).
        let rs = &self.raftstore;
        let append = rs.max_size_per_msg.saturating_add(rs.entry_max_size);
        let page = rs
            .max_scan_bytes
            .saturating_add(rs.entry_max_size)
            .saturating_add(rs.max_key_size as u64)
            .saturating_add(u64::from(rs.max_scan_limit).saturating_mul(PAIR_FRAMING));
        let largest = append.max(page).saturating_add(MESSAGE_HEADROOM);
        if largest > self.network.max_message_bytes as u64 {
            return Err(invalid(
                "network.max_message_bytes",
                format!(
                    "must be at least {largest}: the largest append or scan page the raftstore \
                     settings allow, plus {MESSAGE_HEADROOM} bytes of headroom"
                ),
            ));
        }
        self.network
            .config()
            .validate()
            .map_err(|e| invalid("network", e.to_string()))?;
        self.net_config()?;
        Ok(())
    }

    /// The network settings with the TLS files read.
    ///
    /// # Errors
    /// [`ServerError::InvalidConfig`] for a TLS file that cannot be read
    /// or is not PEM.
    pub fn net_config(&self) -> Result<NetConfig, ServerError> {
        let mut net = self.network.config();
        net.tls = self.tls.as_ref().map(TlsSettings::load).transpose()?;
        Ok(net)
    }
}

/// `flotilla bootstrap`: writes this store's part of a new cluster (its
/// ident and the initial regions, the same on every store) to `data_dir`.
///
/// # Errors
/// Engine errors; a store already bootstrapped is refused.
pub fn bootstrap(cfg: &ServerConfig) -> Result<(), ServerError> {
    let mut ids: Vec<u64> = cfg.stores.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    let regions = initial_regions(&ids, cfg.initial_regions)?;
    let engine = Engine::open(&cfg.data_dir, &cfg.engine.options(true))?;
    bootstrap_store(&engine, cfg.cluster_id, cfg.store_id, &regions)?;
    Ok(())
}

/// `flotilla server`: opens the store and serves it until SIGTERM or
/// SIGINT (or a fatal store error), then shuts down in order: the network
/// services stop (peers see the store gone), the store finishes its round
/// and closes RocksDB.
///
/// # Errors
/// Open, bind and runtime errors.
pub fn serve(cfg: &ServerConfig, logger: &slog::Logger) -> Result<(), ServerError> {
    let net = cfg.net_config()?;
    let runtime = flotilla_server::net_runtime(cfg.network.threads)?;
    let addrs = AddressBook::new();
    for s in &cfg.stores {
        addrs.set(s.id, s.addr.clone());
    }
    let transport = GrpcTransport::new(
        cfg.cluster_id,
        cfg.store_id,
        addrs.clone(),
        net.clone(),
        runtime.handle().clone(),
        logger,
    );
    let transport_metrics = transport.metrics().clone();
    let engine = Engine::open(&cfg.data_dir, &cfg.engine.options(false))?;
    let store = Store::start(engine, cfg.raftstore.clone(), transport, logger)?;
    let who = ServerIdentity {
        cluster_id: cfg.cluster_id,
        store_id: cfg.store_id,
    };
    let server = match StoreServer::start(
        runtime.handle(),
        &cfg.listen,
        who,
        Arc::new(store.handle()),
        Some(ClientService {
            store: store.handle(),
            addrs: addrs.clone(),
            transport: Some(transport_metrics.clone()),
        }),
        &net,
        logger,
    ) {
        Ok(s) => s,
        Err(e) => {
            store.shutdown();
            return Err(e.into());
        }
    };
    println!(
        "flotilla server: store {} of cluster {} serving on {}",
        cfg.store_id,
        cfg.cluster_id,
        server.local_addr()
    );
    let status = if cfg.status_listen.is_empty() {
        None
    } else {
        let sources = StatusSources {
            cluster_id: cfg.cluster_id,
            store: store.handle(),
            transport: transport_metrics,
            server: server.metrics().clone(),
        };
        match StatusServer::start(runtime.handle(), &cfg.status_listen, sources) {
            Ok(s) => {
                println!(
                    "flotilla server: status (/metrics, /status) on {}",
                    s.local_addr()
                );
                Some(s)
            }
            Err(e) => {
                let _ = server.shutdown();
                store.shutdown();
                return Err(e.into());
            }
        }
    };
    let handle = store.handle();
    let why = runtime.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut poll = tokio::time::interval(STOPPED_POLL);
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, std::io::Error>("SIGTERM"),
                _ = int.recv() => return Ok("SIGINT"),
                _ = poll.tick() => if handle.is_stopped() {
                    return Ok("the store stopped");
                },
            }
        }
    })?;
    println!("flotilla server: {why}: shutting down");
    drop(status);
    let served = server.shutdown();
    store.shutdown();
    println!("flotilla server: store {} closed", cfg.store_id);
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ServerError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.toml");
        std::fs::write(&path, text).unwrap();
        ServerConfig::load(&path)
    }

    /// `--print-default-config` prints a file that loads back as the
    /// defaults.
    #[test]
    fn the_default_config_round_trips() {
        let cfg = parse(&ServerConfig::default_toml()).unwrap();
        assert_eq!(cfg, ServerConfig::default());
    }

    /// A bad config is refused naming the field and why: unknown fields
    /// (top level and nested), wrong types, and values that cannot work.
    #[test]
    fn bad_configs_are_refused_by_field() {
        let base = ServerConfig::default_toml();
        let with = |line: &str| format!("{line}\n{base}");
        let parse_err = |text: String| match parse(&text) {
            Err(ServerError::ParseConfig { message, .. }) => message,
            other => panic!("not a parse error: {other:?}"),
        };
        assert!(parse_err(with("store_idd = 3")).contains("store_idd"));
        let nested = base.replace("[raftstore]\n", "[raftstore]\nbase_tik_ms = 5\n");
        assert!(parse_err(nested).contains("base_tik_ms"));
        let typed = base.replace("initial_regions = 1", "initial_regions = \"one\"");
        assert!(parse_err(typed).contains("initial_regions"));
        let field = |text: String| match parse(&text) {
            Err(ServerError::InvalidConfig { field, .. }) => field,
            other => panic!("not an invalid field: {other:?}"),
        };
        assert_eq!(
            field(base.replace("store_id = 1", "store_id = 9")),
            "stores"
        );
        assert_eq!(
            field(base.replace("listen = \"127.0.0.1:20161\"", "listen = \"nowhere\"")),
            "listen"
        );
        assert_eq!(
            field(base.replace("initial_regions = 1", "initial_regions = 0")),
            "initial_regions"
        );
        assert_eq!(
            field(base.replace(
                "status_listen = \"127.0.0.1:20181\"",
                "status_listen = \"x\""
            )),
            "status_listen"
        );
        let ticks = base.replace("heartbeat_ticks = 2", "heartbeat_ticks = 0");
        assert_ne!(ticks, base, "the default config names heartbeat_ticks");
        assert_eq!(field(ticks), "raftstore");
        let missing =
            format!("{base}\n[tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"c\"\nkey = \"k\"\n");
        assert_eq!(field(missing), "tls.ca");
        let threads = base.replace("threads = 2", "threads = 0");
        assert_eq!(field(threads), "network.threads");
        let threads = base.replace("threads = 2", "threads = 100000");
        assert_eq!(field(threads), "network.threads");
        // An entry larger than a network message could never replicate.
        let entry = base.replace(
            &format!("entry_max_size = {}", Config::default().entry_max_size),
            &format!("entry_max_size = {}", 1u64 << 30),
        );
        assert_ne!(entry, base, "the default config names entry_max_size");
        assert_eq!(field(entry), "network.max_message_bytes");
    }
}
