//! The receiving side: [`StoreServer`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raftstore::store::{MessageSink, SnapError};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::NetConfig;
use crate::error::{Error, Result};
use crate::kv::{ClientService, KvService};
use crate::kvpb::kv_server::KvServer;
use crate::metrics::{ServerMetrics, add};
use crate::pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::pb::{Done, RaftBatch, SnapshotChunk};
use crate::snapshot::{SNAP_QUEUE_CHUNKS, status_of};
use crate::tls::Allowlist;
use crate::transport::destination;
use tonic::service::interceptor::InterceptedService;

/// Binds `listen` (`host:port`, port 0 for any) now, for a server on
/// `handle`'s runtime; returns the address bound.
pub(crate) fn bind(handle: &Handle, listen: &str) -> Result<(SocketAddr, tokio::net::TcpListener)> {
    let listener = std::net::TcpListener::bind(listen).map_err(|source| Error::Bind {
        addr: listen.to_string(),
        source,
    })?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let _runtime = handle.enter();
    Ok((addr, tokio::net::TcpListener::from_std(listener)?))
}

/// How long [`StoreServer::shutdown`] waits for the server's streams to
/// end before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A store's services on one TCP port: the raft service, which takes the
/// batches and snapshot streams of other stores' [`crate::GrpcTransport`]s
/// and hands them to the store, and (given the store's handle) the client
/// service (`kvpb.Kv`: commands and region lookups).
///
/// Lifecycle: [`StoreServer::start`] binds and serves on the runtime;
/// [`StoreServer::shutdown`] (or dropping it) ends every stream it serves,
/// so the senders see the store gone and reconnect later.
pub struct StoreServer {
    addr: SocketAddr,
    handle: Handle,
    metrics: Arc<ServerMetrics>,
    stop: watch::Sender<bool>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::result::Result<(), tonic::transport::Error>>>,
}

/// Who the server answers for.
#[derive(Debug, Clone, Copy)]
pub struct ServerIdentity {
    /// The cluster: batches of another are refused.
    pub cluster_id: u64,
    /// The store: batches for another are refused.
    pub store_id: u64,
}

impl StoreServer {
    /// Binds `listen` (`host:port`; port 0 picks a free one) and serves
    /// store `who.store_id` of cluster `who.cluster_id`: raft traffic goes
    /// to `sink`; with `kv`, client requests go to that store.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad `cfg`; [`Error::Io`] if the address
    /// cannot be bound.
    pub fn start(
        handle: &Handle,
        listen: &str,
        who: ServerIdentity,
        sink: Arc<dyn MessageSink>,
        kv: Option<ClientService>,
        cfg: &NetConfig,
        logger: &slog::Logger,
    ) -> Result<StoreServer> {
        cfg.validate()?;
        let (addr, listener) = bind(handle, listen)?;
        let metrics = Arc::new(ServerMetrics::default());
        let (stop, stopped) = watch::channel(false);
        let service = Service {
            who,
            sink,
            metrics: metrics.clone(),
            stopped,
            logger: logger.new(slog::o!("server" => who.store_id)),
        };
        let allow = Allowlist::new(cfg.tls.as_ref());
        let service = InterceptedService::new(
            RaftTransportServer::new(service)
                .max_decoding_message_size(cfg.max_message_bytes)
                .max_encoding_message_size(cfg.max_message_bytes),
            allow.clone(),
        );
        let kv = kv.map(|c| {
            let kv = KvServer::new(KvService {
                metrics: metrics.clone(),
                cluster_id: who.cluster_id,
                store: c.store,
                addrs: c.addrs,
                transport: c.transport,
                max_message_bytes: cfg.max_message_bytes,
            })
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
            InterceptedService::new(kv, allow.clone())
        });
        let (shutdown, on_shutdown) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &cfg.tls {
            builder = builder
                .tls_config(tls.server())
                .map_err(|e| Error::Config(format!("tls: {e}")))?;
        }
        let serve = builder
            .tcp_nodelay(true)
            .initial_stream_window_size(cfg.stream_window_bytes)
            .initial_connection_window_size(cfg.connection_window_bytes)
            .http2_keepalive_interval(Some(cfg.keepalive_interval))
            .http2_keepalive_timeout(Some(cfg.keepalive_timeout))
            .add_service(service)
            .add_optional_service(kv)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = on_shutdown.await;
            });
        let task = handle.spawn(serve);
        Ok(StoreServer {
            addr,
            handle: handle.clone(),
            metrics,
            stop,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it received and refused.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// Ends every stream, stops listening and waits (a bounded time) for
    /// the server to finish. Call from outside the runtime.
    ///
    /// # Errors
    /// [`Error::Server`] if the server had failed.
    pub fn shutdown(mut self) -> Result<()> {
        self.signal();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        let abort = task.abort_handle();
        match self
            .handle
            .block_on(async { tokio::time::timeout(SHUTDOWN_GRACE, task).await })
        {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Server(e.to_string())),
            Ok(Err(e)) => Err(Error::Server(e.to_string())),
            Err(_) => {
                abort.abort();
                Ok(())
            }
        }
    }

    fn signal(&mut self) {
        let _ = self.stop.send(true);
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.signal();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

struct Service {
    who: ServerIdentity,
    sink: Arc<dyn MessageSink>,
    metrics: Arc<ServerMetrics>,
    /// Turns true when the server shuts down: every stream ends.
    stopped: watch::Receiver<bool>,
    logger: slog::Logger,
}

impl Service {
    /// Refuses a stream of another cluster or for another store.
    fn check(&self, cluster_id: u64, to_store: u64) -> std::result::Result<(), Status> {
        let why = if cluster_id != self.who.cluster_id {
            format!(
                "cluster {cluster_id}, this store is of cluster {}",
                self.who.cluster_id
            )
        } else if to_store != self.who.store_id {
            format!("for store {to_store}, this is store {}", self.who.store_id)
        } else {
            return Ok(());
        };
        add(&self.metrics.streams_refused, 1);
        slog::info!(self.logger, "stream refused"; "why" => &why);
        Err(Status::failed_precondition(why))
    }

    /// The next item of `stream`, or an `Unavailable` status once the
    /// server stops.
    async fn next<T>(&self, stream: &mut Streaming<T>) -> std::result::Result<Option<T>, Status> {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            next = stream.message() => next,
            _ = stopped.wait_for(|s| *s) => Err(Status::unavailable("the store is stopping")),
        }
    }
}

#[tonic::async_trait]
impl RaftTransport for Service {
    async fn raft(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> std::result::Result<Response<Done>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = self.next(&mut stream).await? {
            self.check(batch.cluster_id, batch.to_store)?;
            add(&self.metrics.batches_received, 1);
            for msg in batch.msgs {
                if destination(&msg) != Some(self.who.store_id) {
                    add(&self.metrics.messages_misaddressed, 1);
                    continue;
                }
                add(&self.metrics.messages_received, 1);
                self.sink.deliver(msg);
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> std::result::Result<Response<Done>, Status> {
        let result = self.receive_snapshot(request.into_inner()).await;
        match &result {
            Ok(_) => add(&self.metrics.snapshots_received, 1),
            Err(_) => add(&self.metrics.snapshot_failures, 1),
        }
        result
    }
}

impl Service {
    async fn receive_snapshot(
        &self,
        mut stream: Streaming<SnapshotChunk>,
    ) -> std::result::Result<Response<Done>, Status> {
        let first = self
            .next(&mut stream)
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty snapshot stream"))?;
        self.check(first.cluster_id, first.to_store)?;
        let msg = first
            .message
            .ok_or_else(|| Status::invalid_argument("the first chunk carries no message"))?;
        if destination(&msg) != Some(self.who.store_id) {
            return Err(Status::invalid_argument(format!(
                "a snapshot for store {:?} sent to store {}",
                destination(&msg),
                self.who.store_id
            )));
        }
        // The store's receiver reads the chunks on a blocking thread (it
        // writes the file), fed from the stream here.
        let (tx, mut rx) =
            mpsc::channel::<std::result::Result<Vec<u8>, SnapError>>(SNAP_QUEUE_CHUNKS);
        let sink = self.sink.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut chunks = std::iter::from_fn(|| rx.blocking_recv());
            sink.receive_snapshot(msg, &mut chunks)
        });
        let mut feeding = first.data.is_empty() || tx.send(Ok(first.data.to_vec())).await.is_ok();
        while feeding {
            feeding = match self.next(&mut stream).await {
                Ok(Some(c)) => tx.send(Ok(c.data.to_vec())).await.is_ok(),
                Ok(None) => false,
                Err(_) => {
                    let _ = tx.send(Err(SnapError::Dropped)).await;
                    false
                }
            };
        }
        drop(tx);
        match job.await {
            Ok(Ok(())) => Ok(Response::new(Done {})),
            Ok(Err(e)) => Err(status_of(&e)),
            Err(_) => Err(Status::internal("the snapshot receiver failed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listen address another socket holds is refused with a typed
    /// error that names it (a second store on one host with the default
    /// status port says which address, not only "address in use").
    #[test]
    fn a_taken_address_is_refused_naming_it() {
        let runtime = crate::net_runtime(1).unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        match bind(runtime.handle(), &addr) {
            Err(e @ Error::Bind { .. }) => {
                assert!(e.to_string().contains(&addr), "{e}");
            }
            other => panic!("expected a bind error, got {other:?}"),
        }
        drop(taken);
        assert!(bind(runtime.handle(), &addr).is_ok(), "free again");
    }
}
