//! Full validation of client requests against a region: run when a
//! command is proposed (so a bad request never enters the log) and again
//! when its entry is applied (an entry in an old log, or one proposed under
//! another region range, must not reach the engine either).
//!
//! Every failure is a typed [`Error`]; nothing here panics on any input.

use flotilla_engine::keys;
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{RaftCmdRequest, Request, request};

use super::error::{Error, Result};
use super::util::check_key_in_region;

/// Limits a request must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest key a request may name (bytes).
    pub max_key_size: usize,
    /// Most pairs one scan may ask for.
    pub max_scan_limit: u32,
    /// Key and value bytes past which a scan response stops early.
    pub max_scan_bytes: u64,
}

/// No size limits: what apply checks (config limits are propose-time only).
const NO_LIMITS: RequestLimits = RequestLimits {
    max_key_size: usize::MAX,
    max_scan_limit: u32::MAX,
    max_scan_bytes: u64::MAX,
};

/// What a valid request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Only `Get`, `Scan` and `Snap`: served by a read, never logged.
    Read,
    /// Only `Put`, `Delete` and `DeleteRange`: proposed and applied.
    Write,
}

/// Checks every request of `cmd` against `region` and `limits`, and that
/// reads and writes are not mixed.
///
/// # Errors
/// [`Error::InvalidRequest`] for an empty command, a missing operation, an
/// empty or oversized key, an inverted or empty range, a scan limit of 0 or
/// past the maximum, or mixed reads and writes; [`Error::KeyNotInRegion`]
/// for a key or range end outside the region.
pub fn validate_requests(
    cmd: &RaftCmdRequest,
    region: &Region,
    limits: &RequestLimits,
) -> Result<RequestKind> {
    let mut kind = None;
    if cmd.requests.is_empty() {
        return Err(Error::InvalidRequest("no requests".into()));
    }
    for r in &cmd.requests {
        let k = validate_request(r, region, limits)?;
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return Err(Error::InvalidRequest(
                    "reads and writes in one command".into(),
                ));
            }
            Some(_) => {}
        }
    }
    kind.ok_or_else(|| Error::InvalidRequest("no requests".into()))
}

/// Checks one request; returns whether it reads or writes.
///
/// # Errors
/// As [`validate_requests`].
pub fn validate_request(
    r: &Request,
    region: &Region,
    limits: &RequestLimits,
) -> Result<RequestKind> {
    match &r.cmd {
        Some(request::Cmd::Get(g)) => {
            check_point_key(&g.key, region, limits)?;
            Ok(RequestKind::Read)
        }
        Some(request::Cmd::Put(p)) => {
            check_point_key(&p.key, region, limits)?;
            Ok(RequestKind::Write)
        }
        Some(request::Cmd::Delete(d)) => {
            check_point_key(&d.key, region, limits)?;
            Ok(RequestKind::Write)
        }
        Some(request::Cmd::DeleteRange(d)) => {
            check_range(&d.start_key, &d.end_key, region, limits, false)?;
            Ok(RequestKind::Write)
        }
        Some(request::Cmd::Scan(s)) => {
            if s.limit == 0 {
                return Err(Error::InvalidRequest("scan limit must be > 0".into()));
            }
            if s.limit > limits.max_scan_limit {
                return Err(Error::InvalidRequest(format!(
                    "scan limit {} is over the maximum {}",
                    s.limit, limits.max_scan_limit
                )));
            }
            check_range(&s.start_key, &s.end_key, region, limits, true)?;
            Ok(RequestKind::Read)
        }
        Some(request::Cmd::Snap(_)) => Ok(RequestKind::Read),
        None => Err(Error::InvalidRequest("request without an operation".into())),
    }
}

/// A key longer than `limits` allow is refused ([`Error::InvalidRequest`]).
pub(crate) fn check_key_size(key: &[u8], limits: &RequestLimits) -> Result<()> {
    if key.len() > limits.max_key_size {
        return Err(Error::InvalidRequest(format!(
            "key of {} bytes is over the maximum {}",
            key.len(),
            limits.max_key_size
        )));
    }
    Ok(())
}

fn check_point_key(key: &[u8], region: &Region, limits: &RequestLimits) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidRequest("empty key".into()));
    }
    check_key_size(key, limits)?;
    check_key_in_region(key, region)
}

/// `[start, end)` from inside the region; an empty `end` means the
/// region's end. `is_scan`: a scan may be empty (`start == end`) and may
/// end past the region (it reads to the region's end, and the client goes
/// on in the next region); a range delete may do neither (the engine
/// refuses an empty range, and a write must not be silently cut short).
fn check_range(
    start: &[u8],
    end: &[u8],
    region: &Region,
    limits: &RequestLimits,
    is_scan: bool,
) -> Result<()> {
    check_key_size(start, limits)?;
    check_key_size(end, limits)?;
    check_key_in_region(start, region)?;
    if end.is_empty() {
        // To the region's end, which lies after any key in the region.
        return Ok(());
    }
    if end < start || (!is_scan && end == start) {
        return Err(Error::InvalidRequest(format!(
            "range end {end:?} does not come after its start {start:?}"
        )));
    }
    if !is_scan && !region.end_key.is_empty() && end > &region.end_key[..] {
        return Err(Error::KeyNotInRegion {
            key: end.to_vec(),
            region_id: region.id,
            start_key: region.start_key.to_vec(),
            end_key: region.end_key.to_vec(),
        });
    }
    Ok(())
}

/// The checks an entry's writes must pass when it is *applied*: only those
/// that follow from the entry and the replicated region (a key or range
/// inside the region, a range that is not inverted or empty, so the engine
/// takes it). Config limits and rules added in later versions are checked
/// at propose time only: every replica must decide the same for the same
/// entry, whatever its config or version, or replicas diverge. Reads in
/// the log are ignored (the apply writes nothing for them).
///
/// # Errors
/// [`Error::KeyNotInRegion`] or [`Error::InvalidRequest`]; the whole entry
/// is then skipped, identically on every replica.
pub fn validate_for_apply(cmd: &RaftCmdRequest, region: &Region) -> Result<()> {
    for r in &cmd.requests {
        match &r.cmd {
            Some(request::Cmd::Put(p)) => check_key_in_region(&p.key, region)?,
            Some(request::Cmd::Delete(d)) => check_key_in_region(&d.key, region)?,
            Some(request::Cmd::DeleteRange(d)) => {
                check_range(&d.start_key, &d.end_key, region, &NO_LIMITS, false)?;
            }
            Some(request::Cmd::Get(_) | request::Cmd::Scan(_) | request::Cmd::Snap(_)) | None => {}
        }
    }
    Ok(())
}

/// The data-CF bounds `[start, end)` of a validated range request: an
/// empty `end`, or one past the region, is the region's end.
pub fn data_range(start: &[u8], end: &[u8], region: &Region) -> (Vec<u8>, Vec<u8>) {
    let past_region = !region.end_key.is_empty() && end > &region.end_key[..];
    let end = if end.is_empty() || past_region {
        keys::data_end_key(&region.end_key)
    } else {
        keys::data_key(end)
    };
    (keys::data_key(start), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flotilla_proto::raft_cmdpb::{
        DeleteRangeRequest, GetRequest, PutRequest, ScanRequest, SnapRequest,
    };

    const LIMITS: RequestLimits = RequestLimits {
        max_key_size: 16,
        max_scan_limit: 100,
        max_scan_bytes: 1 << 10,
    };

    fn region(start: &[u8], end: &[u8]) -> Region {
        Region {
            id: 1,
            start_key: Bytes::copy_from_slice(start),
            end_key: Bytes::copy_from_slice(end),
            ..Default::default()
        }
    }

    fn cmd(reqs: Vec<request::Cmd>) -> RaftCmdRequest {
        RaftCmdRequest {
            requests: reqs.into_iter().map(|c| Request { cmd: Some(c) }).collect(),
            ..Default::default()
        }
    }

    fn del_range(s: &[u8], e: &[u8]) -> request::Cmd {
        request::Cmd::DeleteRange(DeleteRangeRequest {
            start_key: Bytes::copy_from_slice(s),
            end_key: Bytes::copy_from_slice(e),
        })
    }

    fn scan(s: &[u8], e: &[u8], limit: u32) -> request::Cmd {
        request::Cmd::Scan(ScanRequest {
            start_key: Bytes::copy_from_slice(s),
            end_key: Bytes::copy_from_slice(e),
            limit,
            max_bytes: 0,
        })
    }

    fn put(k: &[u8]) -> request::Cmd {
        request::Cmd::Put(PutRequest {
            key: Bytes::copy_from_slice(k),
            value: Bytes::new(),
        })
    }

    fn check(r: &Region, reqs: Vec<request::Cmd>) -> Result<RequestKind> {
        validate_requests(&cmd(reqs), r, &LIMITS)
    }

    fn invalid(res: Result<RequestKind>) -> bool {
        matches!(res, Err(Error::InvalidRequest(_)))
    }

    fn outside(res: Result<RequestKind>) -> bool {
        matches!(res, Err(Error::KeyNotInRegion { .. }))
    }

    /// F1: the poison `DeleteRange{b, a}` and its kin are refused with
    /// typed errors; valid ranges pass.
    #[test]
    fn ranges_are_checked() {
        let r = region(b"a", b"m");
        assert!(invalid(check(&r, vec![del_range(b"b", b"a")])));
        assert!(invalid(check(&r, vec![del_range(b"c", b"c")])));
        assert!(outside(check(&r, vec![del_range(b"b", b"z")])));
        assert!(outside(check(&r, vec![del_range(b"0", b"c")])));
        assert_eq!(
            check(&r, vec![del_range(b"b", b"")]).unwrap(),
            RequestKind::Write
        );
        assert_eq!(
            check(&r, vec![del_range(b"b", b"m")]).unwrap(),
            RequestKind::Write
        );
        let whole = region(b"", b"");
        assert!(check(&whole, vec![del_range(b"", b"")]).is_ok());
        assert!(invalid(check(&r, vec![scan(b"c", b"b", 10)])));
        assert!(check(&r, vec![scan(b"c", b"c", 10)]).is_ok());
        // A scan may run past the region (it stops at the region's end).
        assert!(check(&r, vec![scan(b"c", b"z", 10)]).is_ok());
        assert_eq!(data_range(b"c", b"z", &r).1, keys::data_key(b"m"));
        assert!(outside(check(&r, vec![scan(b"0", b"c", 10)])));
    }

    /// Keys: empty, oversized and out-of-region keys are refused.
    #[test]
    fn keys_are_checked() {
        let r = region(b"a", b"m");
        assert!(invalid(check(&r, vec![put(b"")])));
        assert!(invalid(check(&r, vec![put(&[b'b'; 17])])));
        assert!(outside(check(&r, vec![put(b"z")])));
        assert!(invalid(check(
            &r,
            vec![request::Cmd::Get(GetRequest { key: Bytes::new() })]
        )));
        assert!(check(&r, vec![put(b"b")]).is_ok());
    }

    /// At apply only replicated facts count: config limits and propose-time
    /// rules (empty key, mixed commands) do not skip an entry, a range
    /// that would poison the engine or a key outside the region does.
    #[test]
    fn apply_checks_only_what_replicas_agree_on() {
        let r = region(b"a", b"m");
        let at_apply = |reqs| validate_for_apply(&cmd(reqs), &r);
        assert!(
            at_apply(vec![put(&[b'b'; 17])]).is_ok(),
            "config limit at apply"
        );
        assert!(
            at_apply(vec![put(b"b"), request::Cmd::Snap(SnapRequest {})]).is_ok(),
            "mixed command at apply"
        );
        assert!(matches!(
            at_apply(vec![put(b"b"), del_range(b"c", b"b")]),
            Err(Error::InvalidRequest(_))
        ));
        assert!(matches!(
            at_apply(vec![put(b"z")]),
            Err(Error::KeyNotInRegion { .. })
        ));
    }

    /// Scan limits, empty commands, missing operations and mixed commands.
    #[test]
    fn shapes_are_checked() {
        let r = region(b"", b"");
        assert!(invalid(check(&r, vec![scan(b"a", b"", 0)])));
        assert!(invalid(check(&r, vec![scan(b"a", b"", 101)])));
        assert!(check(&r, vec![scan(b"a", b"", 100)]).is_ok());
        assert!(invalid(check(&r, vec![])));
        assert!(invalid(validate_requests(
            &RaftCmdRequest {
                requests: vec![Request { cmd: None }],
                ..Default::default()
            },
            &r,
            &LIMITS
        )));
        assert!(invalid(check(
            &r,
            vec![put(b"a"), request::Cmd::Snap(SnapRequest {})]
        )));
        assert_eq!(
            check(&r, vec![request::Cmd::Snap(SnapRequest {})]).unwrap(),
            RequestKind::Read
        );
    }
}
