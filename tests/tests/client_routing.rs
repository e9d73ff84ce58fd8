//! The client's multi-region operations while regions split and merge
//! under them: a scan pages on from the region that served each page (not
//! from whatever the shared region cache says by then), so it returns each
//! key once; a store cuts a scan page at its byte bound and the client
//! pages on; `batch_put` regroups the pairs of a command a split refused.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use flotilla_proto::ProstMessage as _;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    KvPair, RaftCmdRequest, RaftCmdResponse, ScanResponse, request, response,
};
use flotilla_proto::raft_serverpb::RegionLocalState;
use flotilla_raftstore::store::{
    Client, ClientConfig, Cluster, Config, Error, RegionStatus, Result, StoreApi, StoreHandle,
    Stores, response_error,
};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, fast_config, logger, wait_leader};
use flotilla_tests::requests::{command, propose_to, scan, scan_bounded};
use flotilla_tests::tagged::Tagged;

/// The bootstrapped region.
const REGION: u64 = 1;
/// Keys written by each test.
const KEYS: u64 = 40;
/// Failure guard for one command.
const ANSWER: Duration = Duration::from_secs(10);

/// This file's keys.
const DATA: Tagged = Tagged("cr");

/// What a [`HookedStore`] runs once, after a store answered a scan.
type Hook = Box<dyn FnOnce(&Client) + Send>;

/// An in-process store that, when armed, runs a hook with the client
/// right after the first scan it answers without error: another thread's
/// operation through the same client, landing between a scan page and the
/// next.
struct HookedStore {
    inner: StoreHandle,
    hook: Arc<Mutex<Option<Hook>>>,
    client: Arc<OnceLock<Weak<Client>>>,
}

impl StoreApi for HookedStore {
    fn store_id(&self) -> u64 {
        StoreApi::store_id(&self.inner)
    }

    fn call(&self, request: RaftCmdRequest, wait: Duration) -> Result<RaftCmdResponse> {
        let is_scan = request
            .requests
            .iter()
            .any(|r| matches!(r.cmd, Some(request::Cmd::Scan(_))));
        let resp = StoreApi::call(&self.inner, request, wait);
        if is_scan && resp.as_ref().is_ok_and(|r| response_error(r).is_none()) {
            let hook = self.hook.lock().unwrap().take();
            let client = self.client.get().and_then(Weak::upgrade);
            if let (Some(hook), Some(client)) = (hook, client) {
                hook(&client);
            }
        }
        resp
    }

    fn region_status(&self, region_id: u64, wait: Duration) -> Result<RegionStatus> {
        StoreApi::region_status(&self.inner, region_id, wait)
    }

    fn region_state(&self, region_id: u64, wait: Duration) -> Result<Option<RegionLocalState>> {
        StoreApi::region_state(&self.inner, region_id, wait)
    }

    fn locate(&self, key: &[u8], wait: Duration) -> Result<Option<Region>> {
        StoreApi::locate(&self.inner, key, wait)
    }
}

/// A client over `cluster` whose stores run the hook `arm` sets.
fn hooked_client(cluster: &Cluster) -> (Arc<Client>, impl Fn(Hook) + use<>) {
    let hook: Arc<Mutex<Option<Hook>>> = Arc::default();
    let cell: Arc<OnceLock<Weak<Client>>> = Arc::default();
    let stores = Stores::default();
    for &s in cluster.store_ids() {
        stores.insert_remote(Arc::new(HookedStore {
            inner: cluster.store(s).expect("running").handle(),
            hook: hook.clone(),
            client: cell.clone(),
        }));
    }
    let client = Arc::new(Client::new(
        stores,
        cluster.regions(),
        ClientConfig::default(),
    ));
    cell.set(Arc::downgrade(&client)).expect("set once");
    let arm = move |h: Hook| *hook.lock().unwrap() = Some(h);
    (client, arm)
}

/// The keys of `pairs`, as `DATA` numbers them.
fn keys_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.clone()).collect()
}

/// A scan's cache changes under it between two pages. First a split of
/// the region that served the first page: the cache then says that region
/// ends earlier, and paging on from the cache's end would read the
/// split-off half twice. Then a merge of the right region into the left
/// one that served the first page: the cache then says the region runs to
/// the end, and paging on from there would skip the right half. Each scan
/// returns every key exactly once, in order.
#[test]
fn a_scan_returns_each_key_once_while_its_regions_split_and_merge() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let writer = cluster.client(ClientConfig::default());
    DATA.write(&writer, 0..KEYS, 1);
    let expected: Vec<Vec<u8>> = (0..KEYS).map(|i| DATA.key(i)).collect();
    let (client, arm) = hooked_client(&cluster);

    // Split while the one region's only page is answered.
    let middle = DATA.key(KEYS / 2);
    let split_at = middle.clone();
    arm(Box::new(move |c: &Client| {
        c.split_at(&split_at).expect("split");
    }));
    let all = client.scan(b"", b"", usize::MAX).expect("scan");
    assert_eq!(keys_of(&all), expected, "a scan across a split");
    let right = client.locate(&middle).expect("locate");
    assert_ne!(right.id, REGION, "the hook did not split");

    // Merge the right half into the left one while the left one's page is
    // answered.
    let right_id = right.id;
    arm(Box::new(move |c: &Client| {
        c.merge(right_id, REGION).expect("merge");
    }));
    let all = client.scan(b"", b"", usize::MAX).expect("scan");
    assert_eq!(keys_of(&all), expected, "a scan across a merge");
    assert_eq!(
        client.locate(&middle).expect("locate").id,
        REGION,
        "the hook did not merge"
    );
    cluster.shutdown();
}

/// The page the leader on store `leader` serves for `scan`, one command
/// straight to it (retried until it serves one).
fn scan_page(cluster: &Cluster, region: &Region, leader: u64, scan: request::Cmd) -> ScanResponse {
    let mut page = None;
    assert!(
        eventually(|| {
            let cmd = command(region, leader, vec![scan.clone()]);
            let resp = propose_to(cluster, leader, cmd, ANSWER);
            match resp.ok().and_then(|r| r.responses.into_iter().next()?.cmd) {
                Some(response::Cmd::Scan(s)) => {
                    page = Some(s);
                    true
                }
                _ => false,
            }
        }),
        "the leader served no scan"
    );
    page.unwrap()
}

/// A store cuts a scan page at `max_scan_bytes` (at the pair that reaches
/// it, saying `more`); the client pages on and gets every pair once.
#[test]
fn a_scan_page_stops_at_its_byte_bound_and_the_client_pages_on() {
    const MAX_SCAN_BYTES: u64 = 1 << 10;
    const VALUE: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        max_scan_bytes: MAX_SCAN_BYTES,
        ..fast_config(FAST_TICK_MS)
    };
    let cluster = Cluster::bootstrap(dir.path(), 3, 1, cfg, &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    let value = vec![7u8; VALUE];
    for i in 0..KEYS {
        client.put(&DATA.key(i), &value).expect("put");
    }

    // One command: a page cut short of its limit, with `more`.
    let region = cluster.regions()[0].clone();
    let page = scan_page(&cluster, &region, leader, scan(b"", b"", 1_000));
    assert!(page.more, "a cut page says more may follow");
    let bytes: Vec<u64> = page
        .kvs
        .iter()
        .map(|kv| (kv.key.len() + kv.value.len()) as u64)
        .collect();
    let (last, before) = bytes.split_last().expect("at least one pair");
    assert!(
        before.iter().sum::<u64>() < MAX_SCAN_BYTES
            && before.iter().sum::<u64>() + last >= MAX_SCAN_BYTES,
        "the page stops at the pair that reaches the bound: {bytes:?}"
    );

    // The client pages on to every pair.
    let all = client.scan(b"", b"", usize::MAX).expect("scan");
    let expected: Vec<Vec<u8>> = (0..KEYS).map(|i| DATA.key(i)).collect();
    assert_eq!(keys_of(&all), expected);
    assert!(all.iter().all(|(_, v)| *v == value));
    cluster.shutdown();
}

/// A scan's own byte bound (`ScanRequest.max_bytes`, what a remote
/// client's link takes): the page stops before the pair that would pass
/// it, saying `more`, but always holds its first pair; 0 leaves only the
/// store's bound.
#[test]
fn a_scan_page_never_passes_the_callers_byte_bound() {
    const VALUE: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    let leader = wait_leader(&cluster, REGION).expect("leader");
    let client = cluster.client(ClientConfig::default());
    let value = vec![5u8; VALUE];
    for i in 0..KEYS {
        client.put(&DATA.key(i), &value).expect("put");
    }
    let region = cluster.regions()[0].clone();
    let page = |max_bytes: u64| {
        scan_page(
            &cluster,
            &region,
            leader,
            scan_bounded(b"", b"", 1_000, max_bytes),
        )
    };
    // The pairs' bytes in a page: a response holding only them.
    let encoded = |kvs: &[KvPair]| -> u64 {
        ScanResponse {
            kvs: kvs.to_vec(),
            more: false,
        }
        .encoded_len() as u64
    };
    // Room for two pairs and a half: two, and `more`.
    let one = encoded(&page(1).kvs[..1]);
    let bound = one * 5 / 2;
    let cut = page(bound);
    assert_eq!(cut.kvs.len(), 2, "{} pairs of {one} bytes", cut.kvs.len());
    assert!(cut.more && encoded(&cut.kvs) <= bound);
    // At the exact bytes of the first two pairs: both fit; one byte less
    // and the second does not.
    let all = page(0);
    let two = encoded(&all.kvs[..2]);
    let exact = page(two);
    assert_eq!(exact.kvs.len(), 2);
    assert!(exact.more);
    let short = page(two - 1);
    assert_eq!(short.kvs.len(), 1);
    assert!(short.more);
    // A bound below one pair: the first pair still comes.
    let first = page(1);
    assert_eq!(first.kvs.len(), 1);
    assert!(first.more);
    // No bound of the caller's: every pair (the store's 4 MiB is far).
    assert_eq!(all.kvs.len() as u64, KEYS);
    assert!(!all.more);
    cluster.shutdown();
}

/// A client whose cache predates a split writes a batch spanning both
/// halves: the command the split refuses whole is regrouped by region and
/// sent again, and every pair lands (of a key's two pairs, the last).
#[test]
fn batch_put_regroups_pairs_a_split_moved() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let admin = cluster.client(ClientConfig::default());
    let stale = cluster.client(ClientConfig::default());
    let regions = admin.split_at(&DATA.key(KEYS / 2)).expect("split");
    assert_eq!(regions.len(), 2);

    // Key 0 twice: the last pair wins.
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..KEYS)
        .map(|i| (DATA.key(i), Tagged::value(i, 2).to_vec()))
        .collect();
    pairs.push((DATA.key(0), Tagged::value(0, 3).to_vec()));
    stale.batch_put(&pairs).expect("batch put across the split");
    DATA.assert_reads(&admin, 1..KEYS, 2);
    DATA.assert_reads(&admin, 0..1, 3);
    cluster.shutdown();
}

/// A store that answers every scan with an empty page marked `more` (no
/// correct store does: it cuts a page after at least one pair).
struct EmptyCutStore(StoreHandle);

impl StoreApi for EmptyCutStore {
    fn store_id(&self) -> u64 {
        StoreApi::store_id(&self.0)
    }

    fn call(&self, request: RaftCmdRequest, wait: Duration) -> Result<RaftCmdResponse> {
        let mut resp = StoreApi::call(&self.0, request, wait)?;
        for r in &mut resp.responses {
            if let Some(response::Cmd::Scan(s)) = &mut r.cmd {
                s.kvs.clear();
                s.more = true;
            }
        }
        Ok(resp)
    }

    fn region_status(&self, region_id: u64, wait: Duration) -> Result<RegionStatus> {
        StoreApi::region_status(&self.0, region_id, wait)
    }

    fn region_state(&self, region_id: u64, wait: Duration) -> Result<Option<RegionLocalState>> {
        StoreApi::region_state(&self.0, region_id, wait)
    }

    fn locate(&self, key: &[u8], wait: Duration) -> Result<Option<Region>> {
        StoreApi::locate(&self.0, key, wait)
    }
}

/// A page cut before its first pair is refused (`InvalidRequest`) rather
/// than paged on from an earlier page's last key, which would repeat
/// pairs (or loop for ever).
#[test]
fn a_scan_page_cut_before_its_first_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster =
        Cluster::bootstrap(dir.path(), 3, 1, fast_config(FAST_TICK_MS), &logger()).unwrap();
    wait_leader(&cluster, REGION).expect("leader");
    let stores = Stores::default();
    for &s in cluster.store_ids() {
        stores.insert_remote(Arc::new(EmptyCutStore(
            cluster.store(s).expect("running").handle(),
        )));
    }
    let client = Client::new(stores, cluster.regions(), ClientConfig::default());
    let err = client.scan(b"", b"", 10).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    cluster.shutdown();
}
