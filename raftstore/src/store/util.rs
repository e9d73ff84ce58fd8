//! Small helpers shared by the store's modules.

use flotilla_engine::{Cf, WriteBatch, keys};
use flotilla_proto::metapb::Region;
use flotilla_proto::raft_cmdpb::{RaftCmdResponse, RaftResponseHeader};

use super::error::{Error, Result};

/// Whether `key` lies in `[region.start_key, region.end_key)` (an empty end
/// key is unbounded).
pub fn key_in_region(key: &[u8], region: &Region) -> bool {
    key >= &region.start_key[..] && (region.end_key.is_empty() || key < &region.end_key[..])
}

/// [`Error::KeyNotInRegion`] unless `key` lies in `region`.
///
/// # Errors
/// As described.
pub fn check_key_in_region(key: &[u8], region: &Region) -> Result<()> {
    if key_in_region(key, region) {
        Ok(())
    } else {
        Err(Error::KeyNotInRegion {
            key: key.to_vec(),
            region_id: region.id,
            start_key: region.start_key.to_vec(),
            end_key: region.end_key.to_vec(),
        })
    }
}

/// A response carrying only `e`.
pub fn err_response(e: Error) -> RaftCmdResponse {
    RaftCmdResponse {
        header: Some(RaftResponseHeader {
            error: Some(e.to_proto()),
            ..Default::default()
        }),
        responses: Vec::new(),
        admin_response: None,
    }
}

/// The error in `resp`'s header, if any.
pub fn response_error(resp: &RaftCmdResponse) -> Option<Error> {
    resp.header
        .as_ref()
        .and_then(|h| h.error.clone())
        .map(Error::from_proto)
}

/// Puts the deletion of every data key in `region`'s range into `wb`
/// (nothing for an empty range).
///
/// # Errors
/// The engine's refusal of the range.
pub fn clear_data_range(wb: &mut WriteBatch, region: &Region) -> flotilla_engine::Result<()> {
    let (start, end) = (
        keys::data_key(&region.start_key),
        keys::data_end_key(&region.end_key),
    );
    if start < end {
        wb.delete_range(Cf::Default, &start, &end)?;
    }
    Ok(())
}
