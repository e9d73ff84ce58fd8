//! The client service: [`KvService`] serves a store's commands and
//! lookups; [`RemoteStore`] is the client side, a
//! [`StoreApi`](flotilla_raftstore::store::StoreApi) over the network, so
//! a [`Client`](flotilla_raftstore::Client) routes, retries and caches
//! regions the same way over the network as in process.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{RaftCmdRequest, RaftCmdResponse, request};
use flotilla_proto::raft_serverpb::RegionLocalState;
use flotilla_raftstore::store::{
    Error as StoreError, RegionStatus, Result as StoreResult, StoreApi, StoreHandle, err_response,
};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::address::AddressBook;
use crate::config::NetConfig;
use crate::kvpb;
use crate::kvpb::kv_client::KvClient;
use crate::kvpb::kv_server::Kv;
use crate::metrics::{ServerMetrics, TransportMetrics, admin_kind};

/// Longest a command waits for its answer on the server, whatever the
/// client's deadline (a client's own deadline cuts it shorter).
pub const MAX_COMMAND_WAIT: Duration = Duration::from_secs(60);

/// What tonic's message size checks say (as `OutOfRange`) when a message
/// passes a `max_message_bytes` limit.
const TONIC_SIZE_LIMIT: &str = "message length too large";

/// What tonic's decoder says when a received message passes its limit.
const TONIC_DECODE_LIMIT: &str = "decoded message length too large: found ";

/// Whether a tonic size-limit error `message` on a request of `sent`
/// encoded bytes says the server refused that request at decode, before it
/// ran: only a decoder's refusal of exactly `sent` bytes, under a limit
/// `sent` passes, qualifies. This end never sends past its own limit, so
/// that decoder is the server's. (Its encoder's refusal of a large answer
/// comes after the command ran; our own decoder's refusal of an answer
/// names our limit, which `sent` does not pass.)
fn refused_at_decode(message: &str, sent: usize) -> bool {
    let Some((_, tail)) = message.split_once(TONIC_DECODE_LIMIT) else {
        return false;
    };
    let Some((found, tail)) = tail.split_once(" bytes, the limit is: ") else {
        return false;
    };
    let limit = tail
        .strip_suffix(" bytes")
        .and_then(|l| l.parse::<usize>().ok());
    found.parse::<usize>().ok() == Some(sent) && limit.is_some_and(|limit| sent > limit)
}

/// Part of a `max_message_bytes` kept for what surrounds the pairs of the
/// scan pages in an answer (header, region, framing): the pairs get the
/// rest ([`scan_budget`]), at least [`MIN_SCAN_HEADROOM`].
const SCAN_HEADROOM_DIVISOR: usize = 8;

/// The least headroom [`scan_budget`] keeps: an answer's header and
/// framing around its pages, whatever the limit.
const MIN_SCAN_HEADROOM: usize = 256;

/// The bytes of pairs the `scans` scan pages of one answer may carry in
/// all to pass over a link whose messages are at most `max_message_bytes`:
/// seven eighths of it (less at least [`MIN_SCAN_HEADROOM`]), shared
/// evenly; each page gets at least 1 byte (a page always holds its first
/// pair; one larger than the link is refused by the size check).
fn scan_budget(max_message_bytes: usize, scans: usize) -> u64 {
    let headroom = (max_message_bytes / SCAN_HEADROOM_DIVISOR).max(MIN_SCAN_HEADROOM);
    let budget = max_message_bytes.saturating_sub(headroom) / scans.max(1);
    (budget as u64).max(1)
}

/// Bounds every scan page of `request` by its share of
/// [`scan_budget`]`(max_message_bytes, ..)`, keeping a caller's smaller
/// bound: the store stops a page before the pair that would pass it and
/// says `more`.
fn bound_scans(request: &mut RaftCmdRequest, max_message_bytes: usize) {
    let scans = request
        .requests
        .iter()
        .filter(|r| matches!(r.cmd, Some(request::Cmd::Scan(_))))
        .count();
    if scans == 0 {
        return;
    }
    let budget = scan_budget(max_message_bytes, scans);
    for r in &mut request.requests {
        if let Some(request::Cmd::Scan(s)) = &mut r.cmd {
            s.max_bytes = match s.max_bytes {
                0 => budget,
                asked => asked.min(budget),
            };
        }
    }
}

/// What a [`crate::StoreServer`] needs to serve a store's clients.
#[derive(Clone)]
pub struct ClientService {
    /// The store.
    pub store: StoreHandle,
    /// Where the cluster's stores listen (told to clients that ask).
    pub addrs: AddressBook,
    /// The store's transport counters, if it has a network transport.
    pub transport: Option<Arc<TransportMetrics>>,
}

/// Serves one store's client requests.
pub(crate) struct KvService {
    pub(crate) metrics: Arc<ServerMetrics>,
    pub(crate) cluster_id: u64,
    pub(crate) store: StoreHandle,
    pub(crate) addrs: AddressBook,
    pub(crate) transport: Option<Arc<TransportMetrics>>,
    /// The server's message limit: its answers' scan pages are bounded to
    /// fit it, whatever the client asked.
    pub(crate) max_message_bytes: usize,
}

impl KvService {
    /// Runs `call` on the store off the runtime's workers (it may block);
    /// answers `respond(error, value)`, the store's error typed.
    async fn on_store<T: Send + 'static, R>(
        &self,
        call: impl FnOnce(&StoreHandle) -> StoreResult<T> + Send + 'static,
        respond: impl FnOnce(Option<flotilla_proto::raft_cmdpb::Error>, Option<T>) -> R,
    ) -> Result<Response<R>, Status> {
        let store = self.store.clone();
        let out = tokio::task::spawn_blocking(move || call(&store))
            .await
            .map_err(|_| Status::internal("the store call failed"))?;
        Ok(Response::new(match out {
            Ok(v) => respond(None, Some(v)),
            Err(e) => respond(Some(e.to_proto()), None),
        }))
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn command(
        &self,
        request: Request<RaftCmdRequest>,
    ) -> Result<Response<RaftCmdResponse>, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut request = request.into_inner();
        // An answer past this server's own limit could not be sent: its
        // scan pages stop in time, saying `more` (a client with a smaller
        // limit asks for less itself).
        bound_scans(&mut request, self.max_message_bytes);
        let admin = admin_kind(&request);
        self.store.propose(
            request,
            Box::new(move |resp| {
                let _ = tx.send(resp);
            }),
        );
        let resp = match tokio::time::timeout(MAX_COMMAND_WAIT, rx).await {
            Ok(Ok(resp)) => resp,
            // The store answers every callback; a dropped one means it
            // stopped after taking the command.
            Ok(Err(_)) => err_response(StoreError::StoreStopped { in_flight: true }),
            Err(_) => err_response(StoreError::Timeout),
        };
        self.metrics.count_command(admin, &resp);
        Ok(Response::new(resp))
    }

    async fn region_status(
        &self,
        request: Request<kvpb::RegionStatusRequest>,
    ) -> Result<Response<kvpb::RegionStatusResponse>, Status> {
        let region_id = request.into_inner().region_id;
        self.on_store(
            move |s| s.region_status(region_id, MAX_COMMAND_WAIT),
            |error, status| kvpb::RegionStatusResponse {
                error,
                status: status.map(status_to_wire),
            },
        )
        .await
    }

    async fn region_state(
        &self,
        request: Request<kvpb::RegionStateRequest>,
    ) -> Result<Response<kvpb::RegionStateResponse>, Status> {
        let region_id = request.into_inner().region_id;
        self.on_store(
            move |s| s.region_state(region_id),
            |error, state| kvpb::RegionStateResponse {
                error,
                state: state.flatten(),
            },
        )
        .await
    }

    async fn locate(
        &self,
        request: Request<kvpb::LocateRequest>,
    ) -> Result<Response<kvpb::LocateResponse>, Status> {
        let key = request.into_inner().key;
        self.on_store(
            move |s| s.locate(&key, MAX_COMMAND_WAIT),
            |error, region| kvpb::LocateResponse {
                error,
                region: region.flatten(),
            },
        )
        .await
    }

    async fn store_info(
        &self,
        _request: Request<kvpb::StoreInfoRequest>,
    ) -> Result<Response<kvpb::StoreInfoResponse>, Status> {
        let m = self.store.metrics();
        Ok(Response::new(kvpb::StoreInfoResponse {
            cluster_id: self.cluster_id,
            store_id: self.store.store_id(),
            stores: self
                .addrs
                .all()
                .into_iter()
                .map(|(id, addr)| kvpb::StoreAddress { id, addr })
                .collect(),
            leaders: m.leaders.load(Ordering::Relaxed),
            awake_peers: m.awake_peers.load(Ordering::Relaxed),
            hibernated_peers: m.hibernated_peers.load(Ordering::Relaxed),
            stopped: self.store.is_stopped(),
            fsyncs: m.raft_synced_writes.load(Ordering::Relaxed),
            raft_messages_sent: m.raft_messages_sent.load(Ordering::Relaxed),
            wire_batches_sent: self
                .transport
                .as_ref()
                .map_or(0, |t| t.batches_sent.load(Ordering::Relaxed)),
            poll_rounds: m.poll_rounds.load(Ordering::Relaxed),
            rss_bytes: crate::proc_stats::rss_bytes(),
            cpu_ticks: crate::proc_stats::cpu_ticks(),
            peers: m.awake_peers.load(Ordering::Relaxed)
                + m.hibernated_peers.load(Ordering::Relaxed),
        }))
    }

    async fn alloc_id(
        &self,
        _request: Request<kvpb::AllocIdRequest>,
    ) -> Result<Response<kvpb::AllocIdResponse>, Status> {
        self.on_store(
            |s| s.alloc_id(),
            |error, id| kvpb::AllocIdResponse {
                error,
                id: id.unwrap_or(0),
            },
        )
        .await
    }

    async fn regions(
        &self,
        _request: Request<kvpb::RegionsRequest>,
    ) -> Result<Response<kvpb::RegionsResponse>, Status> {
        self.on_store(
            |s| s.region_states(),
            |error, regions| kvpb::RegionsResponse {
                error,
                regions: regions.unwrap_or_default(),
            },
        )
        .await
    }
}

fn status_to_wire(s: RegionStatus) -> kvpb::RegionStatus {
    kvpb::RegionStatus {
        region: Some(s.region),
        peer: Some(s.peer),
        leader: s.leader,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_index: s.last_index,
        truncated_index: s.truncated_index,
        hibernating: s.hibernating,
        applying_snapshot: s.applying_snapshot,
    }
}

fn status_from_wire(s: kvpb::RegionStatus) -> RegionStatus {
    RegionStatus {
        region: s.region.unwrap_or_default(),
        peer: s.peer.unwrap_or_default(),
        leader: s.leader,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_index: s.last_index,
        truncated_index: s.truncated_index,
        hibernating: s.hibernating,
        applying_snapshot: s.applying_snapshot,
    }
}

/// One store's client service, reached over gRPC: a
/// [`StoreApi`](flotilla_raftstore::store::StoreApi) for a
/// [`Client`](flotilla_raftstore::Client) (`Stores::insert_remote`).
///
/// It keeps one connection and opens it again after a failure. Calls
/// block the calling thread (never call from a runtime worker). A command
/// that could not be sent (no connection) fails with `StoreStopped`
/// without `in_flight`; one whose connection broke after sending, or
/// whose deadline passed, has an unknown outcome (`StoreStopped` with
/// `in_flight`, or `Timeout`).
pub struct RemoteStore {
    store_id: u64,
    addr: String,
    cfg: NetConfig,
    handle: Handle,
    client: Mutex<Option<KvClient<Channel>>>,
}

impl RemoteStore {
    /// Store `store_id`, listening at `addr` (`host:port`), reached on
    /// `handle`'s runtime. Connects on first use.
    pub fn new(
        store_id: u64,
        addr: impl Into<String>,
        cfg: NetConfig,
        handle: Handle,
    ) -> Arc<Self> {
        Arc::new(RemoteStore {
            store_id,
            addr: addr.into(),
            cfg,
            handle,
            client: Mutex::new(None),
        })
    }

    /// The connected client, connecting if there is none (within `wait`).
    fn client(&self, wait: Duration) -> StoreResult<KvClient<Channel>> {
        if let Some(c) = self.client.lock().as_ref() {
            return Ok(c.clone());
        }
        let cfg = &self.cfg;
        let endpoint = cfg
            .endpoint(&self.addr)
            .map_err(StoreError::Config)?
            .connect_timeout(cfg.connect_timeout.min(wait));
        let channel = self
            .handle
            .block_on(endpoint.connect())
            .map_err(|_| StoreError::StoreStopped { in_flight: false })?;
        let client = KvClient::new(channel)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        *self.client.lock() = Some(client.clone());
        Ok(client)
    }

    /// Runs one call with deadline `wait`; a transport failure drops the
    /// connection (the next call reconnects) and reads as `failed`.
    fn run<T, F>(
        &self,
        wait: Duration,
        failed: StoreError,
        call: impl FnOnce(KvClient<Channel>) -> F,
    ) -> StoreResult<T>
    where
        F: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        self.run_sized(wait, failed, 0, call)
    }

    /// As [`RemoteStore::run`], for a request of `sent` encoded bytes: the
    /// server's decoder refusing those bytes (see [`refused_at_decode`])
    /// refused the request before it ran (definite even for a write).
    fn run_sized<T, F>(
        &self,
        wait: Duration,
        failed: StoreError,
        sent: usize,
        call: impl FnOnce(KvClient<Channel>) -> F,
    ) -> StoreResult<T>
    where
        F: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.client(wait)?;
        let out = self
            .handle
            .block_on(async { tokio::time::timeout(wait, call(client)).await });
        match out {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                if matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
                ) {
                    *self.client.lock() = None;
                }
                Err(match status.code() {
                    Code::DeadlineExceeded => StoreError::Timeout,
                    // A message past a `max_message_bytes` limit: the same
                    // call would fail again, so say so, if the call is not
                    // in doubt. It is not when it changes nothing (`failed`
                    // is not in doubt), or when the server's decoder
                    // refused the request itself, before running it.
                    // Otherwise the answer was what was too large, after
                    // the call ran: a write stays `failed`. So do other
                    // resource codes (an HTTP/2 GOAWAY fails streams that
                    // may have run).
                    Code::OutOfRange
                        if status.message().contains(TONIC_SIZE_LIMIT)
                            && (!failed.is_outcome_unknown()
                                || refused_at_decode(status.message(), sent)) =>
                    {
                        StoreError::InvalidRequest(format!(
                            "over the network's message size limit: {}",
                            status.message()
                        ))
                    }
                    _ => failed,
                })
            }
            Err(_) => Err(StoreError::Timeout),
        }
    }

    fn deadline<T>(message: T, wait: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(wait);
        request
    }
}

impl RemoteStore {
    /// The store's identity, the stores it knows and its peer counts.
    ///
    /// # Errors
    /// `StoreStopped` if it cannot be reached; `Timeout`.
    pub fn store_info(&self, wait: Duration) -> StoreResult<kvpb::StoreInfoResponse> {
        self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.store_info(Self::deadline(kvpb::StoreInfoRequest {}, wait))
                    .await
            },
        )
    }

    /// A new id from the store (for a peer to add on it).
    ///
    /// # Errors
    /// As [`RemoteStore::store_info`]; the store's own error.
    pub fn alloc_id(&self, wait: Duration) -> StoreResult<u64> {
        let resp = self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.alloc_id(Self::deadline(kvpb::AllocIdRequest {}, wait))
                    .await
            },
        )?;
        error_or(resp.error, resp.id)
    }

    /// Every region state in the store's engine.
    ///
    /// # Errors
    /// As [`RemoteStore::alloc_id`].
    pub fn regions(&self, wait: Duration) -> StoreResult<Vec<RegionLocalState>> {
        let resp = self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.regions(Self::deadline(kvpb::RegionsRequest {}, wait))
                    .await
            },
        )?;
        error_or(resp.error, resp.regions)
    }
}

fn error_or<T>(error: Option<flotilla_proto::raft_cmdpb::Error>, value: T) -> StoreResult<T> {
    match error {
        Some(e) => Err(StoreError::from_proto(e)),
        None => Ok(value),
    }
}

impl StoreApi for RemoteStore {
    fn store_id(&self) -> u64 {
        self.store_id
    }

    fn call(&self, mut request: RaftCmdRequest, wait: Duration) -> StoreResult<RaftCmdResponse> {
        // Scan pages must fit what this end takes.
        bound_scans(&mut request, self.cfg.max_message_bytes);
        // A request tonic could not encode fails its stream with an
        // HTTP/2 reset that reads as a lost connection: refuse it here,
        // before anything is sent.
        let len = prost::Message::encoded_len(&request);
        if len > self.cfg.max_message_bytes {
            return Err(StoreError::InvalidRequest(format!(
                "a command of {len} bytes is over the network's message size limit ({} bytes)",
                self.cfg.max_message_bytes
            )));
        }
        // A read that fails on the way changes nothing: it is not in doubt.
        let read_only = request.admin_request.is_none()
            && request.requests.iter().all(|r| {
                matches!(
                    r.cmd,
                    Some(request::Cmd::Get(_) | request::Cmd::Scan(_) | request::Cmd::Snap(_))
                )
            });
        self.run_sized(
            wait,
            StoreError::StoreStopped {
                in_flight: !read_only,
            },
            len,
            |mut c| async move { c.command(Self::deadline(request, wait)).await },
        )
    }

    fn region_status(&self, region_id: u64, wait: Duration) -> StoreResult<RegionStatus> {
        let resp = self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.region_status(Self::deadline(
                    kvpb::RegionStatusRequest { region_id },
                    wait,
                ))
                .await
            },
        )?;
        let status = error_or(resp.error, resp.status)?;
        status
            .map(status_from_wire)
            .ok_or(StoreError::RegionNotFound(region_id))
    }

    fn region_state(
        &self,
        region_id: u64,
        wait: Duration,
    ) -> StoreResult<Option<RegionLocalState>> {
        let wait = wait.min(MAX_COMMAND_WAIT);
        let resp = self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.region_state(Self::deadline(kvpb::RegionStateRequest { region_id }, wait))
                    .await
            },
        )?;
        error_or(resp.error, resp.state)
    }

    fn locate(&self, key: &[u8], wait: Duration) -> StoreResult<Option<Region>> {
        let key = bytes::Bytes::copy_from_slice(key);
        let resp = self.run(
            wait,
            StoreError::StoreStopped { in_flight: false },
            |mut c| async move {
                c.locate(Self::deadline(kvpb::LocateRequest { key }, wait))
                    .await
            },
        )?;
        error_or(resp.error, resp.region)
    }
}

#[cfg(test)]
mod tests {
    use super::{MIN_SCAN_HEADROOM, bound_scans, refused_at_decode, scan_budget};
    use flotilla_proto::raft_cmdpb::{
        GetRequest, RaftCmdRequest, Request as CmdRequest, ScanRequest, request,
    };

    fn decode_error(found: usize, limit: usize) -> String {
        format!(
            "Error, decoded message length too large: found {found} bytes, the limit is: {limit} bytes"
        )
    }

    #[test]
    fn only_the_servers_decoder_refusing_the_request_is_definite() {
        // The server refused exactly our request, under a smaller limit.
        assert!(refused_at_decode(&decode_error(70_000, 65_536), 70_000));
        // Our own decoder refused a large answer (its limit is ours, which
        // the request does not pass): the command ran.
        assert!(!refused_at_decode(&decode_error(90_000, 80_000), 70_000));
        // A decoder refused something else than the request.
        assert!(!refused_at_decode(&decode_error(70_001, 65_536), 70_000));
        // The server's encoder refused the answer: the command ran.
        assert!(!refused_at_decode(
            "Error, encoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
            70_000
        ));
        // Not tonic's words.
        assert!(!refused_at_decode("message length too large", 70_000));
        assert!(!refused_at_decode(
            "decoded message length too large: found many bytes, the limit is: 1 bytes",
            70_000
        ));
        assert!(!refused_at_decode(
            "decoded message length too large: found 70000 bytes, the limit is: lots",
            70_000
        ));
    }

    #[test]
    fn scan_pages_share_seven_eighths_of_the_link() {
        assert_eq!(scan_budget(64 << 10, 1), 56 << 10);
        assert_eq!(scan_budget(64 << 10, 2), 28 << 10);
        // A small link keeps the least headroom.
        assert_eq!(scan_budget(1024, 1), (1024 - MIN_SCAN_HEADROOM) as u64);
        assert_eq!(scan_budget(1, 1), 1);
        assert_eq!(scan_budget(0, 0), 1);
        assert_eq!(scan_budget(64 << 10, usize::MAX), 1);
    }

    fn scan(max_bytes: u64) -> CmdRequest {
        CmdRequest {
            cmd: Some(request::Cmd::Scan(ScanRequest {
                max_bytes,
                ..Default::default()
            })),
        }
    }

    fn bounds(request: &RaftCmdRequest) -> Vec<u64> {
        request
            .requests
            .iter()
            .filter_map(|r| match &r.cmd {
                Some(request::Cmd::Scan(s)) => Some(s.max_bytes),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_scan_of_a_request_gets_its_share_and_keeps_a_smaller_bound() {
        let get = CmdRequest {
            cmd: Some(request::Cmd::Get(GetRequest::default())),
        };
        let mut request = RaftCmdRequest {
            requests: vec![scan(0), get, scan(100), scan(1 << 30)],
            ..Default::default()
        };
        bound_scans(&mut request, 64 << 10);
        let share = (56 << 10) / 3;
        assert_eq!(bounds(&request), vec![share, 100, share]);
        // The pages' bounds together stay inside the budget.
        assert!(bounds(&request).iter().sum::<u64>() <= scan_budget(64 << 10, 1));
    }
}
