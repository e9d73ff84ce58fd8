//! [`Client`]: a KV client with a region cache that routes keys to regions
//! and retries on `NotLeader` / `EpochNotMatch` / `RegionNotFound` with
//! backoff.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flotilla_proto::eraftpb::ConfChangeType;
use flotilla_proto::metapb::{Peer, Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::{
    AdminRequest, BatchSplitRequest, ChangePeerRequest, ChangePeerV2Request, CompactLogRequest,
    DeleteRequest, GetRequest, PrepareMergeRequest, PutRequest, RaftCmdRequest, RaftCmdResponse,
    RaftRequestHeader, Request, Response, ScanRequest, SplitRequest, TransferLeaderRequest,
    admin_request, admin_response, request, response,
};
use flotilla_proto::raft_serverpb::{PeerState, RegionLocalState};
use fxhash::FxHashMap;
use parking_lot::{Mutex, RwLock};

use super::config::DEFAULT_MAX_SCAN_LIMIT;
use super::error::{AdminError, Error, Result};
use super::msg::RegionStatus;
use super::node::StoreHandle;
use super::util::{key_in_region, response_error};

/// Default time a client waits for one attempt.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline of one operation, all its attempts and backoffs
/// included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Default attempts per request.
pub const DEFAULT_MAX_ATTEMPTS: usize = 60;
/// Default first backoff between attempts.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(20);
/// Default longest backoff between attempts.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The first wait of [`Client::merge`] before it asks whether the merge
/// committed (doubling up to `ClientConfig::max_backoff`).
const MERGE_POLL_FIRST: Duration = Duration::from_millis(5);

/// `EpochNotMatch` answers an operation retries at once; later ones back
/// off (the answering store may be behind the client's cache).
const MAX_EPOCH_RETRIES_NOW: usize = 2;

/// How a [`Client`] retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long one attempt may take (cut to what is left of
    /// `operation_timeout`).
    pub request_timeout: Duration,
    /// The deadline of one operation: every attempt and backoff of it. Past
    /// it the operation fails with the last error, or `Timeout` if an
    /// attempt was cut short.
    pub operation_timeout: Duration,
    /// Pairs asked of a store per scan request; a longer scan pages. It
    /// must not exceed the stores' `max_scan_limit`, or every scan is
    /// refused with `InvalidRequest`.
    pub scan_page_size: u32,
    /// Attempts per request before giving up with the last error (0 is
    /// taken as 1: every request is sent at least once).
    pub max_attempts: usize,
    /// First backoff; doubles up to `max_backoff`.
    pub backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            scan_page_size: DEFAULT_MAX_SCAN_LIMIT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// What a [`Client`] asks of one store. [`StoreHandle`] is the in-process
/// implementation; a network client (flotilla-server's) is another: the
/// client's routing, retries and region cache are the same over both.
///
/// Every method answers within its wait (or the store's own bound) and
/// never panics on what a store answers.
pub trait StoreApi: Send + Sync {
    /// The store's id.
    fn store_id(&self) -> u64;

    /// Sends a command to the region its header names and waits at most
    /// `wait` for the response. The response may carry a typed error in
    /// its header (see [`response_error`]).
    ///
    /// # Errors
    /// [`Error::Timeout`] when `wait` passes (the outcome is unknown);
    /// [`Error::StoreStopped`] when the store cannot be reached.
    fn call(&self, request: RaftCmdRequest, wait: Duration) -> Result<RaftCmdResponse>;

    /// The status of the store's peer of `region_id` (see
    /// [`StoreHandle::region_status`]).
    ///
    /// # Errors
    /// As [`StoreHandle::region_status`].
    fn region_status(&self, region_id: u64, wait: Duration) -> Result<RegionStatus>;

    /// The store's persisted state of `region_id` (see
    /// [`StoreHandle::region_state`]), answered within `wait` (an
    /// in-process store reads its engine at once).
    ///
    /// # Errors
    /// As [`StoreHandle::region_state`]; [`Error::Timeout`] when `wait`
    /// passes.
    fn region_state(&self, region_id: u64, wait: Duration) -> Result<Option<RegionLocalState>>;

    /// The store's region holding `key` (see [`StoreHandle::locate`]).
    ///
    /// # Errors
    /// As [`StoreHandle::locate`].
    fn locate(&self, key: &[u8], wait: Duration) -> Result<Option<Region>>;
}

impl StoreApi for StoreHandle {
    fn store_id(&self) -> u64 {
        StoreHandle::store_id(self)
    }

    fn call(&self, request: RaftCmdRequest, wait: Duration) -> Result<RaftCmdResponse> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.propose(
            request,
            Box::new(move |resp| {
                let _ = tx.send(resp);
            }),
        );
        match rx.recv_timeout(wait) {
            Ok(resp) => Ok(resp),
            // Unreachable (the store answers every callback, a dropped one
            // with `StoreStopped`), but if it were: the outcome is unknown.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(Error::StoreStopped { in_flight: true })
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout),
        }
    }

    fn region_status(&self, region_id: u64, wait: Duration) -> Result<RegionStatus> {
        StoreHandle::region_status(self, region_id, wait)
    }

    fn region_state(&self, region_id: u64, _wait: Duration) -> Result<Option<RegionLocalState>> {
        StoreHandle::region_state(self, region_id)
    }

    fn locate(&self, key: &[u8], wait: Duration) -> Result<Option<Region>> {
        StoreHandle::locate(self, key, wait)
    }
}

/// One store a client can reach: in process (its handle is kept for
/// callers that need it) or through a [`StoreApi`] of another kind.
#[derive(Clone)]
struct Endpoint {
    local: Option<StoreHandle>,
    api: Arc<dyn StoreApi>,
}

/// The stores a client can reach, by id. Shared: a cluster updates it as
/// stores stop and restart.
#[derive(Clone, Default)]
pub struct Stores(Arc<RwLock<FxHashMap<u64, Endpoint>>>);

impl Stores {
    /// Adds or replaces an in-process store's handle.
    pub fn insert(&self, handle: StoreHandle) {
        let endpoint = Endpoint {
            api: Arc::new(handle.clone()),
            local: Some(handle),
        };
        self.0.write().insert(endpoint.api.store_id(), endpoint);
    }

    /// Adds or replaces a store reached through `api` (e.g. over the
    /// network).
    pub fn insert_remote(&self, api: Arc<dyn StoreApi>) {
        let endpoint = Endpoint { local: None, api };
        self.0.write().insert(endpoint.api.store_id(), endpoint);
    }

    /// Removes a store.
    pub fn remove(&self, store_id: u64) {
        self.0.write().remove(&store_id);
    }

    /// An in-process store's handle (`None` for a remote store).
    pub fn get(&self, store_id: u64) -> Option<StoreHandle> {
        self.0.read().get(&store_id).and_then(|e| e.local.clone())
    }

    /// A store, in process or not.
    pub fn api(&self, store_id: u64) -> Option<Arc<dyn StoreApi>> {
        self.0.read().get(&store_id).map(|e| e.api.clone())
    }

    /// Every store.
    pub fn all(&self) -> Vec<Arc<dyn StoreApi>> {
        self.0.read().values().map(|e| e.api.clone()).collect()
    }
}

/// The error for a key no store locates in a region.
fn unlocated(key: &[u8]) -> Error {
    Error::KeyNotInRegion {
        key: key.to_vec(),
        region_id: 0,
        start_key: Vec::new(),
        end_key: Vec::new(),
    }
}

/// Whether epoch `a` is older than `b` (a range or membership change
/// behind it).
fn older(a: Option<RegionEpoch>, b: Option<RegionEpoch>) -> bool {
    let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
    (a.version, a.conf_ver) < (b.version, b.conf_ver)
}

#[derive(Debug, Clone)]
struct CachedRegion {
    region: Region,
    leader: Option<Peer>,
}

/// Regions by start key, with an index by id. Cached regions never
/// overlap, so every operation is a few `O(log n)` map steps: a client of a
/// store with 100,000 regions must not scan them per request.
#[derive(Debug, Default)]
struct RegionCache {
    by_start: BTreeMap<Bytes, CachedRegion>,
    /// Region id → its start key in `by_start`.
    start_of: FxHashMap<u64, Bytes>,
}

impl RegionCache {
    fn locate(&self, key: &[u8]) -> Option<&CachedRegion> {
        self.by_start
            .range(..=Bytes::copy_from_slice(key))
            .next_back()
            .map(|(_, c)| c)
            .filter(|c| key_in_region(key, &c.region))
    }

    fn insert(&mut self, region: Region) {
        // Never take an older copy of a region over a newer one.
        if self
            .get(region.id)
            .is_some_and(|c| older(region.region_epoch, c.region.region_epoch))
        {
            return;
        }
        // Drop cached regions the new one overlaps: the one starting
        // before it (if it reaches in) and those starting inside it.
        let mut overlapping: Vec<Bytes> = Vec::new();
        if let Some((k, c)) = self.by_start.range(..region.start_key.clone()).next_back()
            && overlaps(&c.region, &region)
        {
            overlapping.push(k.clone());
        }
        let upper = if region.end_key.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(region.end_key.clone())
        };
        overlapping.extend(
            self.by_start
                .range((Bound::Included(region.start_key.clone()), upper))
                .map(|(k, _)| k.clone()),
        );
        let mut leader = None;
        for k in overlapping {
            if let Some(old) = self.by_start.remove(&k) {
                if self.start_of.get(&old.region.id) == Some(&k) {
                    self.start_of.remove(&old.region.id);
                }
                if old.region.id == region.id {
                    leader = old.leader.filter(|l| region.peers.contains(l));
                }
            }
        }
        self.start_of.insert(region.id, region.start_key.clone());
        self.by_start
            .insert(region.start_key.clone(), CachedRegion { region, leader });
    }

    fn get(&self, region_id: u64) -> Option<&CachedRegion> {
        self.by_start.get(self.start_of.get(&region_id)?)
    }

    /// Forgets region `region_id` (a store said it is not there: it may
    /// have been merged away).
    fn remove(&mut self, region_id: u64) {
        if let Some(start) = self.start_of.remove(&region_id) {
            self.by_start.remove(&start);
        }
    }

    fn set_leader(&mut self, region_id: u64, leader: Option<Peer>) {
        if let Some(start) = self.start_of.get(&region_id)
            && let Some(c) = self.by_start.get_mut(start)
        {
            c.leader = leader;
        }
    }
}

fn overlaps(a: &Region, b: &Region) -> bool {
    let a_before_b_ends = b.end_key.is_empty() || a.start_key < b.end_key;
    let b_before_a_ends = a.end_key.is_empty() || b.start_key < a.end_key;
    a_before_b_ends && b_before_a_ends
}

/// Where a request goes: the region of a key, or a region by id.
#[derive(Debug, Clone, Copy)]
enum Locate<'a> {
    Key(&'a [u8]),
    Region(u64),
}

/// A KV client over a set of stores. `Send + Sync`: share one between threads.
pub struct Client {
    stores: Stores,
    cache: Mutex<RegionCache>,
    cfg: ClientConfig,
}

/// A deadline so far off that it never comes: what a timeout too long
/// for the clock (`Duration::MAX`, say) means.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The instant `wait` from now, or a century from now if the clock
/// cannot count that far (a timeout of `Duration::MAX` waits "forever"
/// instead of panicking).
pub fn deadline_in(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait).unwrap_or(now + NEVER)
}

impl Client {
    /// The deadline of an operation starting now.
    fn deadline(&self) -> Instant {
        deadline_in(self.cfg.operation_timeout)
    }

    /// A client for `stores`, knowing `regions` to start with.
    pub fn new(stores: Stores, regions: &[Region], mut cfg: ClientConfig) -> Client {
        cfg.max_attempts = cfg.max_attempts.max(1);
        let mut cache = RegionCache::default();
        for r in regions {
            cache.insert(r.clone());
        }
        Client {
            stores,
            cache: Mutex::new(cache),
            cfg,
        }
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// `Timeout` / `StaleCommand` when the outcome is unknown; the last
    /// routing error when attempts run out; `EntryTooLarge` and other
    /// non-retryable errors at once.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let req = Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                key: Bytes::copy_from_slice(key),
                value: Bytes::copy_from_slice(value),
            })),
        };
        self.execute(key, vec![req], true).map(|_| ())
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// As [`Client::put`].
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        let req = Request {
            cmd: Some(request::Cmd::Delete(DeleteRequest {
                key: Bytes::copy_from_slice(key),
            })),
        };
        self.execute(key, vec![req], true).map(|_| ())
    }

    /// Reads `key` linearizably.
    ///
    /// # Errors
    /// The last routing error when attempts run out.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let req = Request {
            cmd: Some(request::Cmd::Get(GetRequest {
                key: Bytes::copy_from_slice(key),
            })),
        };
        let resp = self.execute(key, vec![req], false)?;
        match resp.into_iter().next().and_then(|r| r.cmd) {
            Some(response::Cmd::Get(g)) => Ok(g.value.map(|v| v.to_vec())),
            other => Err(Error::InvalidRequest(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Reads up to `limit` pairs of `[start, end)` in key order (an empty
    /// `end`: to the end of the key space), region by region: each key at
    /// most once, even while regions split and merge under the scan (each
    /// page goes on from where the region that served it ended).
    ///
    /// # Errors
    /// As [`Client::get`].
    pub fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut cursor = start.to_vec();
        let page = self.cfg.scan_page_size.max(1);
        loop {
            let remaining = limit.saturating_sub(out.len());
            if remaining == 0 || (!end.is_empty() && cursor.as_slice() >= end) {
                break;
            }
            let asked = u32::try_from(remaining).unwrap_or(u32::MAX).min(page);
            let req = Request {
                cmd: Some(request::Cmd::Scan(ScanRequest {
                    start_key: Bytes::copy_from_slice(&cursor),
                    end_key: Bytes::copy_from_slice(end),
                    limit: asked,
                    // The store's bound; a remote store's link adds its own.
                    max_bytes: 0,
                })),
            };
            let (served, resp) =
                self.execute_served(Locate::Key(&cursor), &[req], None, false, self.deadline())?;
            let (kvs, more) = match resp.responses.into_iter().next().and_then(|r| r.cmd) {
                Some(response::Cmd::Scan(s)) => (s.kvs, s.more),
                other => {
                    return Err(Error::InvalidRequest(format!("a scan answered {other:?}")));
                }
            };
            // A full page, or one the store cut at its byte bound: more of
            // this region may follow the page's last key.
            let resume =
                (kvs.len() == asked as usize || more).then(|| kvs.last().map(|kv| kv.key.clone()));
            out.extend(
                kvs.into_iter()
                    .map(|kv| (kv.key.to_vec(), kv.value.to_vec())),
            );
            match resume {
                Some(Some(last)) => {
                    cursor = last.to_vec();
                    cursor.push(0);
                    continue;
                }
                // No store cuts a page before its first pair: going on
                // from anywhere but this region's end could repeat keys.
                Some(None) => {
                    return Err(Error::InvalidRequest(
                        "a store cut a scan page before its first pair".into(),
                    ));
                }
                None => {}
            }
            // The serving region is done: go on from its end.
            let region_end = served.end_key;
            if region_end.is_empty() || (!end.is_empty() && region_end.as_ref() >= end) {
                break;
            }
            cursor = region_end.to_vec();
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Writes every pair, one command per region (atomic within a region,
    /// not across regions); of pairs with the same key, the last one
    /// wins. A region that split or merged since the cache last saw it
    /// refuses its command whole ([`Error::KeyNotInRegion`] or
    /// [`Error::EpochNotMatch`]: nothing of it applied); its pairs are
    /// grouped again by the regions the cache knows now and sent again.
    ///
    /// # Errors
    /// The first error that is not such a refusal, as [`Client::put`]
    /// (earlier regions' writes stay applied); the last refusal when the
    /// operation's deadline or attempts run out.
    pub fn batch_put(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let deadline = self.deadline();
        // One pair per key, the last: groups go out in no particular order,
        // and a key's two pairs could fall in two groups.
        let mut last_of: BTreeMap<&[u8], usize> = BTreeMap::new();
        for (i, (k, _)) in pairs.iter().enumerate() {
            last_of.insert(k, i);
        }
        let mut pending: Vec<usize> = last_of.into_values().collect();
        let mut last_refusal = None;
        for _ in 0..self.cfg.max_attempts.max(1) {
            let mut refused = Vec::new();
            for group in self.group_by_region(pairs, &pending, deadline) {
                let reqs: Vec<Request> = group
                    .iter()
                    .map(|&i| Request {
                        cmd: Some(request::Cmd::Put(PutRequest {
                            key: Bytes::copy_from_slice(&pairs[i].0),
                            value: Bytes::copy_from_slice(&pairs[i].1),
                        })),
                    })
                    .collect();
                let at = Locate::Key(&pairs[group[0]].0);
                match self.execute_served(at, &reqs, None, true, deadline) {
                    Ok(_) => {}
                    Err(e @ (Error::KeyNotInRegion { .. } | Error::EpochNotMatch { .. })) => {
                        refused.extend(group);
                        last_refusal = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if refused.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            pending = refused;
        }
        Err(last_refusal.unwrap_or(Error::Timeout))
    }

    /// The pairs `pending` names, grouped by the region the cache places
    /// each key in, each group in `pending`'s order. A key the cache does
    /// not place is located by asking the stores (once per region: the
    /// cache then places its neighbours); keys no store places yet form
    /// one last group, which the stores place when it is sent.
    fn group_by_region(
        &self,
        pairs: &[(Vec<u8>, Vec<u8>)],
        pending: &[usize],
        deadline: Instant,
    ) -> Vec<Vec<usize>> {
        let mut by_region: BTreeMap<Option<u64>, Vec<usize>> = BTreeMap::new();
        for &i in pending {
            let key = &pairs[i].0;
            let cached = self.cache.lock().locate(key).map(|c| c.region.id);
            let region = cached.or_else(|| self.locate_on_stores(key, deadline).map(|r| r.id));
            by_region.entry(region).or_default().push(i);
        }
        by_region.into_values().collect()
    }

    /// Asks region `region_id`'s leader to hand leadership to the region's
    /// peer on store `to_store`. Returns once the transfer started: the
    /// peer takes over within an election timeout (or the transfer is
    /// abandoned and the leader stays); a transfer to the leader itself
    /// succeeds at once.
    ///
    /// # Errors
    /// [`Error::Admin`] with the refusal: no peer on that store
    /// (`TransfereeNotFound`), a learner, one too far behind
    /// ([`TRANSFER_LEADER_MAX_LAG`](super::TRANSFER_LEADER_MAX_LAG)), one
    /// being sent a snapshot, or a conf change not applied yet;
    /// `RegionNotFound` for a region no store knows; routing errors when
    /// attempts run out.
    pub fn transfer_leader(&self, region_id: u64, to_store: u64) -> Result<()> {
        let cached = self.cache.lock().get(region_id).map(|c| c.region.clone());
        let region = match cached {
            Some(r) => r,
            // Not cached: ask the stores.
            None => self
                .region_on_stores(region_id, self.deadline())
                .ok_or(Error::RegionNotFound(region_id))?,
        };
        let peer = region
            .peers
            .iter()
            .find(|p| p.store_id == to_store)
            .copied()
            .ok_or(Error::Admin(AdminError::TransfereeNotFound {
                peer_id: 0,
                store_id: to_store,
            }))?;
        let admin = AdminRequest {
            cmd: Some(admin_request::Cmd::TransferLeader(TransferLeaderRequest {
                peer: Some(peer),
            })),
        };
        // Not a write: asking again is harmless, so an unknown outcome is
        // retried.
        self.execute_at(Locate::Region(region_id), &[], Some(&admin), false)
            .map(|_| ())
    }

    /// Splits region `region_id` at `keys` (strictly ascending, inside
    /// its range, none its start key; at most `Config::split_max_keys`):
    /// the region keeps `[start, keys[0])` and each key starts a new
    /// region, with peers on the same stores. The leader allocates the
    /// new ids. Returns every region of the split in key order once it
    /// applied on the leader; the client's cache takes them.
    ///
    /// # Errors
    /// [`Error::Admin`] with the refusal: `NoSplitKeys`,
    /// `TooManySplitKeys`, `SplitKeyInvalid` (with the fault: out of
    /// range, the region's start, not ascending), `SplitPending` or
    /// `ConfChangePending` (one range or membership change at a time: try
    /// again), `ConfChangeInJoint`; `EpochNotMatch` when the region
    /// changed meanwhile (the cache refreshes); `RegionNotFound` for a
    /// region the client does not know; an unknown outcome is not retried,
    /// as for writes.
    pub fn split(&self, region_id: u64, keys: &[&[u8]]) -> Result<Vec<Region>> {
        let admin = AdminRequest {
            cmd: Some(admin_request::Cmd::BatchSplit(BatchSplitRequest {
                requests: keys
                    .iter()
                    .map(|k| SplitRequest {
                        split_key: Bytes::copy_from_slice(k),
                        ..Default::default()
                    })
                    .collect(),
                right_derive: false,
            })),
        };
        let resp = self.execute_full(Locate::Region(region_id), &[], Some(&admin), true)?;
        let regions = match resp.admin_response.and_then(|a| a.cmd) {
            Some(admin_response::Cmd::BatchSplit(r)) => r.regions,
            _ => {
                return Err(Error::InvalidRequest(
                    "a split answered without its regions".into(),
                ));
            }
        };
        let mut cache = self.cache.lock();
        for r in &regions {
            cache.insert(r.clone());
        }
        Ok(regions)
    }

    /// Merges region `source_id` into the adjacent region `target_id` and
    /// returns the region `target_id` became (holding both ranges, as the
    /// merge made it). The
    /// regions must have their peers on the same stores in the same roles
    /// (move them first with [`Client::change_peer`]).
    ///
    /// The source's leader prepares the merge (from then on the source
    /// takes no command: `RegionMerging`, retried by this client's
    /// reads and writes), then the target commits it; this waits for
    /// that, reading the source's state on the stores. Should the target change meanwhile (a
    /// split, a membership change), the merge is rolled back and the
    /// source serves again.
    ///
    /// # Errors
    /// [`Error::Admin`] with the refusal: `MergeIntoSelf`,
    /// `MergeNotAdjacent`, `MergeNotColocated`, `MergeInJoint`,
    /// `MergeTargetMismatch` (the source leader's store has no such target
    /// region, or another copy of it, until the deadline),
    /// `MergeLogGapTooLarge` or `MergeGapHasAdmin` (a peer is behind, or
    /// an admin command is not on every peer yet, until the deadline: a
    /// merge asked for right after a split usually meets one of these for
    /// a moment, and is retried),
    /// `MergeEntriesTooLarge`, `RegionMerging` (a merge of it is under
    /// way), `SplitPending`, `ConfChangePending`; `MergeRolledBack` when
    /// the target changed first; `RegionNotFound` for a region no store
    /// knows; `Timeout` if the merge neither committed nor rolled back
    /// within the operation timeout (it may still).
    pub fn merge(&self, source_id: u64, target_id: u64) -> Result<Region> {
        let deadline = self.deadline();
        let source = self
            .region_on_stores(source_id, deadline)
            .ok_or(Error::RegionNotFound(source_id))?;
        // The target as the stores know it now: the source's leader checks
        // it against its own store's copy (which may lag: then ask again).
        let mut backoff = self.cfg.backoff;
        let resp = loop {
            let target = self
                .region_on_stores(target_id, deadline)
                .ok_or(Error::RegionNotFound(target_id))?;
            let admin = AdminRequest {
                cmd: Some(admin_request::Cmd::PrepareMerge(PrepareMergeRequest {
                    min_index: 0,
                    target: Some(target),
                })),
            };
            match self.execute_full(Locate::Region(source_id), &[], Some(&admin), true) {
                Err(Error::Admin(e)) if merge_not_yet(&e) && deadline_in(backoff) < deadline => {
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2).min(self.cfg.max_backoff);
                }
                other => break other?,
            }
        };
        // The source as its PrepareMerge made it (the request may have
        // been retried under a newer epoch than `source`'s), and the
        // PrepareMerge's index, which names this merge.
        let (prepared, commit) = match resp.admin_response.and_then(|a| a.cmd) {
            Some(admin_response::Cmd::PrepareMerge(p)) => (p.region, p.commit),
            _ => (None, 0),
        };
        let prepared = prepared
            .map_or(source.region_epoch, |r| r.region_epoch)
            .unwrap_or_default()
            .version;
        // The commit takes a round of the target's group: look soon.
        let mut backoff = MERGE_POLL_FIRST.min(self.cfg.backoff);
        while Instant::now() < deadline {
            if let Some(outcome) = self.merge_outcome(source_id, commit, prepared, deadline) {
                if let Ok(merged) = &outcome {
                    self.cache.lock().insert(merged.clone());
                }
                return outcome;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(backoff.min(left));
            backoff = backoff.saturating_mul(2).min(self.cfg.max_backoff);
        }
        Err(Error::Timeout)
    }

    /// How the merge of `source_id` prepared at `commit` (the source then
    /// at `version`) ended, as any store's state of the source says: its
    /// tombstone names the region this merge made; a later merge's
    /// tombstone, or the source serving past `version`, says it was rolled
    /// back. `None`: no store knows yet (each store is asked within what
    /// is left of `deadline`).
    fn merge_outcome(
        &self,
        source_id: u64,
        commit: u64,
        version: u64,
        deadline: Instant,
    ) -> Option<Result<Region>> {
        let rolled_back = || {
            Err(Error::Admin(AdminError::MergeRolledBack {
                region_id: source_id,
            }))
        };
        for h in self.stores.all() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            let wait = self.cfg.request_timeout.min(left);
            let Ok(Some(state)) = h.region_state(source_id, wait) else {
                continue;
            };
            match (state.state(), state.merge_state) {
                (PeerState::Tombstone, Some(m)) if m.commit == commit || commit == 0 => {
                    return m.target.map(Ok);
                }
                (PeerState::Tombstone, Some(m)) if m.commit > commit => return Some(rolled_back()),
                (PeerState::Normal, _)
                    if state
                        .region
                        .and_then(|r| r.region_epoch)
                        .is_some_and(|e| e.version > version) =>
                {
                    return Some(rolled_back());
                }
                _ => {}
            }
        }
        None
    }

    /// Compacts region `region_id`'s raft log up to `index` (its entries
    /// up to it are deleted on every replica once applied; the store does
    /// this on its own too, see `Config::raft_log_gc_*`). A follower that
    /// had not matched `index` catches up by a snapshot. Answered once the
    /// compaction applied on the leader; an index at or below the log's
    /// start does nothing.
    ///
    /// # Errors
    /// [`Error::Admin`] with `CompactIndexAhead` past the leader's applied
    /// index; routing errors when attempts run out.
    pub fn compact_log(&self, region_id: u64, index: u64) -> Result<()> {
        let admin = AdminRequest {
            cmd: Some(admin_request::Cmd::CompactLog(CompactLogRequest {
                compact_index: index,
                compact_term: 0,
            })),
        };
        // Compacting twice is harmless: an unknown outcome is retried.
        self.execute_at(Locate::Region(region_id), &[], Some(&admin), false)
            .map(|_| ())
    }

    /// Splits the region holding `key` at `key` (see [`Client::split`]).
    ///
    /// # Errors
    /// As [`Client::split`]; `SplitKeyInvalid` (`RegionStart`) if `key`
    /// starts its region already.
    pub fn split_at(&self, key: &[u8]) -> Result<Vec<Region>> {
        let region = self.locate(key)?;
        self.split(region.id, &[key])
    }

    /// The region holding `key`, from the client's cache or else from the
    /// stores (the newest any store knows).
    ///
    /// # Errors
    /// [`Error::KeyNotInRegion`] if no store hosts a region holding it.
    pub fn locate(&self, key: &[u8]) -> Result<Region> {
        if let Some(c) = self.cache.lock().locate(key) {
            return Ok(c.region.clone());
        }
        self.locate_on_stores(key, self.deadline())
            .ok_or_else(|| unlocated(key))
    }

    /// Changes region `region_id`'s membership by one peer (a v1 conf
    /// change): `AddLearnerNode` adds `peer` as a learner, `AddNode` adds
    /// it as a voter or promotes the learner it is, `RemoveNode` removes
    /// it. `peer.id` must be new for an added peer (allocate it with
    /// [`Store::alloc_id`](super::Store::alloc_id)). Returns the region
    /// once the change applied on the leader; the new peer's store creates
    /// it when the leader first reaches it, and a snapshot initializes it.
    /// The client's region cache takes the new membership.
    ///
    /// # Errors
    /// [`Error::Admin`] with the refusal: a conf change still pending
    /// (`ConfChangePending`), a peer or store the region has already
    /// (`PeerAlreadyPresent`), a peer id it removed before
    /// (`PeerIdRemoved`: ids are never reused), a peer it does not have
    /// (`ConfChangePeerNotFound`), removing the leader
    /// (`ConfChangeRemovesLeader`: transfer the leadership first) or the
    /// last voter, promoting a learner that has not caught up
    /// (`LearnerNotCaughtUp`, try again), a change after which the voters
    /// holding the log would not make a quorum (`ConfChangeUnsafe`: a
    /// voter on a store that does not exist or is not heard, or a live
    /// voter removed while another is dead); `EpochNotMatch` when the
    /// membership changed meanwhile (the cache refreshes); an unknown
    /// outcome ([`Error::is_outcome_unknown`]) is not retried, as for
    /// writes.
    pub fn change_peer(
        &self,
        region_id: u64,
        change_type: ConfChangeType,
        peer: Peer,
    ) -> Result<Region> {
        let admin = AdminRequest {
            cmd: Some(admin_request::Cmd::ChangePeer(ChangePeerRequest {
                change_type: change_type as i32,
                peer: Some(peer),
            })),
        };
        self.conf_change(region_id, &admin)
    }

    /// Changes region `region_id`'s membership by several peers at once
    /// (a v2 conf change; see [`Client::change_peer`] for each change).
    /// Two or more changes go through a joint configuration, which the
    /// leader leaves on its own once it applied: a voter is removed by
    /// demoting it (`AddLearnerNode` of the voter) and removing the
    /// learner later, never in the joint change itself. Returns the
    /// region as the change applied (in the joint configuration, for two
    /// changes or more).
    ///
    /// # Errors
    /// As [`Client::change_peer`], and `ConfChangeInJoint` while the
    /// region is still in a joint configuration (try again),
    /// `ConfChangeRemovesVoterInJoint`; `InvalidRequest` for two or more
    /// changes that move no voter (learners change one at a time).
    pub fn change_peers(
        &self,
        region_id: u64,
        changes: &[(ConfChangeType, Peer)],
    ) -> Result<Region> {
        let admin = AdminRequest {
            cmd: Some(admin_request::Cmd::ChangePeerV2(ChangePeerV2Request {
                changes: changes
                    .iter()
                    .map(|&(t, peer)| ChangePeerRequest {
                        change_type: t as i32,
                        peer: Some(peer),
                    })
                    .collect(),
            })),
        };
        self.conf_change(region_id, &admin)
    }

    fn conf_change(&self, region_id: u64, admin: &AdminRequest) -> Result<Region> {
        let resp = self.execute_full(Locate::Region(region_id), &[], Some(admin), true)?;
        let region = match resp.admin_response.and_then(|a| a.cmd) {
            Some(admin_response::Cmd::ChangePeer(r)) => r.region,
            Some(admin_response::Cmd::ChangePeerV2(r)) => r.region,
            _ => None,
        }
        .ok_or_else(|| Error::InvalidRequest("a conf change answered without a region".into()))?;
        self.cache.lock().insert(region.clone());
        Ok(region)
    }

    /// Sends `requests` (all on keys of one region) to the region of `key`,
    /// retrying what is safe to retry until the operation's deadline.
    ///
    /// Retry rules: an error that proves the request did not enter the log
    /// ([`Error::is_retryable`]) is retried, at another peer when it may
    /// mean the leader moved; an error whose outcome is unknown
    /// ([`Error::is_outcome_unknown`]) is retried for reads and returned
    /// for writes (a write is never reported as a definite failure when it
    /// may have taken effect). Every error that may mean the leader moved
    /// drops the cached leader.
    fn execute(&self, key: &[u8], requests: Vec<Request>, is_write: bool) -> Result<Vec<Response>> {
        self.execute_at(Locate::Key(key), &requests, None, is_write)
    }

    /// [`Client::execute`] for the region `at` names, sending `requests`
    /// or the admin command `admin`.
    fn execute_at(
        &self,
        at: Locate<'_>,
        requests: &[Request],
        admin: Option<&AdminRequest>,
        is_write: bool,
    ) -> Result<Vec<Response>> {
        self.execute_full(at, requests, admin, is_write)
            .map(|r| r.responses)
    }

    /// [`Client::execute_at`], answering the whole response.
    fn execute_full(
        &self,
        at: Locate<'_>,
        requests: &[Request],
        admin: Option<&AdminRequest>,
        is_write: bool,
    ) -> Result<RaftCmdResponse> {
        self.execute_served(at, requests, admin, is_write, self.deadline())
            .map(|(_, resp)| resp)
    }

    /// [`Client::execute_full`], answering also the region the request
    /// named when it was served. The store checked the request's epoch
    /// against its own, so that region (not whatever the shared cache says
    /// by the time the answer is read) is the range the request saw.
    /// Every attempt and backoff ends by `deadline`.
    fn execute_served(
        &self,
        at: Locate<'_>,
        requests: &[Request],
        admin: Option<&AdminRequest>,
        is_write: bool,
        deadline: Instant,
    ) -> Result<(Region, RaftCmdResponse)> {
        let mut backoff = self.cfg.backoff;
        let mut last_err = Error::Timeout;
        let mut epoch_retries = 0;
        for attempt in 0..self.cfg.max_attempts {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let mut target = self.target(at, attempt);
            // Not cached (a client that started knowing no region, or
            // after a split): ask the stores.
            if target.is_none() {
                let found = match at {
                    Locate::Key(key) => self.locate_on_stores(key, deadline).is_some(),
                    Locate::Region(id) => self.region_on_stores(id, deadline).is_some(),
                };
                if found {
                    target = self.target(at, attempt);
                }
            }
            let Some((region, peer)) = target else {
                match at {
                    // No store knows the key's region yet: a split that
                    // moved it is applied but its new region not yet
                    // registered. Ask again after a backoff.
                    Locate::Key(key) => {
                        last_err = unlocated(key);
                        let left = deadline.saturating_duration_since(Instant::now());
                        std::thread::sleep(backoff.min(left));
                        backoff = backoff.saturating_mul(2).min(self.cfg.max_backoff);
                        continue;
                    }
                    Locate::Region(id) => return Err(Error::RegionNotFound(id)),
                }
            };
            let request = RaftCmdRequest {
                header: Some(RaftRequestHeader {
                    region_id: region.id,
                    peer: Some(peer),
                    region_epoch: region.region_epoch,
                    ..Default::default()
                }),
                requests: requests.to_vec(),
                admin_request: admin.cloned(),
            };
            let wait = self.cfg.request_timeout.min(deadline - now);
            let err = match self.send_once(peer.store_id, request, wait) {
                Ok(resp) => {
                    self.cache.lock().set_leader(region.id, Some(peer));
                    return Ok((region, resp));
                }
                Err(e) => e,
            };
            let retry_now = match &err {
                Error::NotLeader {
                    leader: Some(l), ..
                } if *l != peer => {
                    self.cache.lock().set_leader(region.id, Some(*l));
                    true
                }
                Error::EpochNotMatch { current_regions } => {
                    let mut cache = self.cache.lock();
                    for r in current_regions {
                        cache.insert(r.clone());
                    }
                    // A store behind the cache teaches it nothing: after
                    // two in a row, back off rather than spin.
                    epoch_retries += 1;
                    epoch_retries <= MAX_EPOCH_RETRIES_NOW
                }
                Error::ServerIsBusy(_) | Error::ProposalDropped(_) => false,
                Error::RegionNotFound(_) if matches!(at, Locate::Key(_)) => {
                    // Merged away, or this store's peer removed: the
                    // stores say which region holds the key now.
                    self.cache.lock().remove(region.id);
                    false
                }
                e if e.is_retryable() || e.is_outcome_unknown() => {
                    // The leader may have moved, or its store stopped: ask
                    // the region's peers in turn from now on.
                    self.cache.lock().set_leader(region.id, None);
                    if is_write && e.is_outcome_unknown() {
                        return Err(err);
                    }
                    false
                }
                _ => return Err(err),
            };
            last_err = err;
            if !retry_now {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(backoff.min(left));
                backoff = backoff.saturating_mul(2).min(self.cfg.max_backoff);
            }
        }
        Err(last_err)
    }

    /// The newest region any store knows to hold `key` (by epoch), asked
    /// of every store (the cache has none for it: a split moved it, or the
    /// client started without it); the cache takes it.
    fn locate_on_stores(&self, key: &[u8], deadline: Instant) -> Option<Region> {
        self.newest_on_stores(deadline, |h, wait| h.locate(key, wait).ok().flatten())
    }

    /// The newest copy of region `region_id` any store has (by epoch); the
    /// cache takes it.
    fn region_on_stores(&self, region_id: u64, deadline: Instant) -> Option<Region> {
        self.newest_on_stores(deadline, |h, wait| {
            h.region_status(region_id, wait)
                .ok()
                .map(|s| s.region)
                .filter(|r| !r.peers.is_empty())
        })
    }

    /// The newest (by epoch) of the regions `ask` gets from each store,
    /// each asked within what is left of `deadline`; the cache takes it.
    fn newest_on_stores(
        &self,
        deadline: Instant,
        ask: impl Fn(&dyn StoreApi, Duration) -> Option<Region>,
    ) -> Option<Region> {
        let region = self
            .stores
            .all()
            .iter()
            .filter_map(|h| {
                let left = deadline.checked_duration_since(Instant::now())?;
                ask(h.as_ref(), self.cfg.request_timeout.min(left))
            })
            .reduce(|a, b| {
                if older(a.region_epoch, b.region_epoch) {
                    b
                } else {
                    a
                }
            })?;
        self.cache.lock().insert(region.clone());
        Some(region)
    }

    /// The region of `key` and the peer to try on attempt `attempt`: the
    /// cached leader, else the region's peers in turn.
    fn target(&self, at: Locate<'_>, attempt: usize) -> Option<(Region, Peer)> {
        let cache = self.cache.lock();
        let c = match at {
            Locate::Key(key) => cache.locate(key)?,
            Locate::Region(id) => cache.get(id)?,
        };
        let peer = c.leader.or_else(|| {
            c.region
                .peers
                .get(attempt % c.region.peers.len().max(1))
                .copied()
        })?;
        Some((c.region.clone(), peer))
    }

    fn send_once(
        &self,
        store_id: u64,
        request: RaftCmdRequest,
        wait: Duration,
    ) -> Result<RaftCmdResponse> {
        let store = self
            .stores
            .api(store_id)
            .ok_or(Error::StoreStopped { in_flight: false })?;
        let resp = store.call(request, wait)?;
        match response_error(&resp) {
            Some(e) => Err(e),
            None => Ok(resp),
        }
    }
}

/// A merge refusal that may pass by itself: the source's leader does not
/// see the target as the client does yet, a peer is behind, or an admin
/// command has not reached every peer. `Client::merge` asks again until
/// its deadline.
fn merge_not_yet(e: &AdminError) -> bool {
    matches!(
        e,
        AdminError::MergeTargetMismatch { .. }
            | AdminError::MergeLogGapTooLarge { .. }
            | AdminError::MergeGapHasAdmin { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: u64, start: &'static [u8], end: &'static [u8]) -> Region {
        Region {
            id,
            start_key: Bytes::from_static(start),
            end_key: Bytes::from_static(end),
            peers: vec![Peer {
                id: id * 10,
                store_id: 1,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Inserting a region drops exactly the cached regions it overlaps
    /// (the one reaching in from the left and those inside it), keeps its
    /// own leader when it replaces itself, and the id index follows.
    #[test]
    fn region_cache_replaces_exactly_the_overlapping_regions() {
        let mut c = RegionCache::default();
        for r in [
            region(1, b"", b"c"),
            region(2, b"c", b"f"),
            region(3, b"f", b"k"),
            region(4, b"k", b""),
        ] {
            c.insert(r);
        }
        c.set_leader(2, Some(region(2, b"", b"").peers[0]));
        assert_eq!(c.locate(b"d").unwrap().region.id, 2);
        assert!(c.locate(b"d").unwrap().leader.is_some());
        // Region 2 again (same range): keeps its leader.
        c.insert(region(2, b"c", b"f"));
        assert!(c.locate(b"d").unwrap().leader.is_some());
        // A merged region over [b, h) replaces 1, 2 and 3.
        c.insert(region(9, b"b", b"h"));
        assert_eq!(c.by_start.len(), 2);
        assert_eq!(c.locate(b"g").unwrap().region.id, 9);
        assert!(c.locate(b"a").is_none(), "region 1 dropped");
        assert!(c.locate(b"i").is_none(), "region 3 dropped");
        assert_eq!(c.locate(b"z").unwrap().region.id, 4);
        assert_eq!(c.start_of.len(), 2);
        c.set_leader(2, None); // gone: no effect, no panic
        c.set_leader(9, Some(region(9, b"", b"").peers[0]));
        assert!(c.locate(b"c").unwrap().leader.is_some());
    }
}
