//! Building raw client commands and sending them straight to one store,
//! past the `Client` (for tests that address a given peer, or send what a
//! well-behaved client never would).

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{
    DeleteRangeRequest, DeleteRequest, GetRequest, PutRequest, RaftCmdRequest, RaftCmdResponse,
    RaftRequestHeader, Request, ScanRequest, request,
};
use flotilla_raftstore::store::{Cluster, Error, StoreHandle, response_error};

/// A `Put` of `key` = `value`.
pub fn put(key: &[u8], value: &[u8]) -> request::Cmd {
    request::Cmd::Put(PutRequest {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
    })
}

/// A `Get` of `key`.
pub fn get(key: &[u8]) -> request::Cmd {
    request::Cmd::Get(GetRequest {
        key: Bytes::copy_from_slice(key),
    })
}

/// A `Delete` of `key`.
pub fn delete(key: &[u8]) -> request::Cmd {
    request::Cmd::Delete(DeleteRequest {
        key: Bytes::copy_from_slice(key),
    })
}

/// A `DeleteRange` of `[start, end)`.
pub fn delete_range(start: &[u8], end: &[u8]) -> request::Cmd {
    request::Cmd::DeleteRange(DeleteRangeRequest {
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
    })
}

/// A `Scan` of up to `limit` pairs of `[start, end)`.
pub fn scan(start: &[u8], end: &[u8], limit: u32) -> request::Cmd {
    request::Cmd::Scan(ScanRequest {
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
        limit,
        max_bytes: 0,
    })
}

/// A `Scan` of up to `limit` pairs of `[start, end)` whose page holds at
/// most `max_bytes` of encoded pairs (beyond its first pair).
pub fn scan_bounded(start: &[u8], end: &[u8], limit: u32, max_bytes: u64) -> request::Cmd {
    request::Cmd::Scan(ScanRequest {
        start_key: Bytes::copy_from_slice(start),
        end_key: Bytes::copy_from_slice(end),
        limit,
        max_bytes,
    })
}

/// A command for `region`'s peer on store `store_id`, with the region's
/// current epoch.
pub fn command(region: &Region, store_id: u64, cmds: Vec<request::Cmd>) -> RaftCmdRequest {
    RaftCmdRequest {
        header: Some(RaftRequestHeader {
            region_id: region.id,
            peer: region
                .peers
                .iter()
                .find(|p| p.store_id == store_id)
                .copied(),
            region_epoch: region.region_epoch,
            ..Default::default()
        }),
        requests: cmds.into_iter().map(|c| Request { cmd: Some(c) }).collect(),
        admin_request: None,
    }
}

/// Proposes `req` through `handle` and waits up to `wait` for the answer
/// (`Error::Timeout` if none came).
///
/// # Errors
/// The typed error of the answer, or `Timeout`.
pub fn propose_via(
    handle: &StoreHandle,
    req: RaftCmdRequest,
    wait: Duration,
) -> Result<RaftCmdResponse, Error> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.propose(req, Box::new(move |r| drop(tx.send(r))));
    match rx.recv_timeout(wait) {
        Ok(resp) => response_error(&resp).map_or(Ok(resp), Err),
        Err(_) => Err(Error::Timeout),
    }
}

/// [`propose_via`] the running store `store_id` of `cluster`
/// (`StoreStopped` if it is not running).
///
/// # Errors
/// As [`propose_via`].
pub fn propose_to(
    cluster: &Cluster,
    store_id: u64,
    req: RaftCmdRequest,
    wait: Duration,
) -> Result<RaftCmdResponse, Error> {
    let store = cluster
        .store(store_id)
        .ok_or(Error::StoreStopped { in_flight: false })?;
    propose_via(&store.handle(), req, wait)
}
