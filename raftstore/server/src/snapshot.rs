//! Snapshot refusals on the wire: a receiver's [`SnapError`] travels as a
//! gRPC status and is read back as the same kind of error.

use flotilla_raftstore::store::SnapError;
use tonic::{Code, Status};

/// Snapshot chunks queued between the stream and the store's receiver.
pub(crate) const SNAP_QUEUE_CHUNKS: usize = 4;

/// The status a receiver answers `e` with.
pub(crate) fn status_of(e: &SnapError) -> Status {
    match e {
        SnapError::RegionNotFound(r) => Status::not_found(format!("region {r} is not hosted here")),
        SnapError::ReceiverBusy { limit } => Status::resource_exhausted(limit.to_string()),
        SnapError::NotReady { why, .. } => Status::failed_precondition(why.clone()),
        SnapError::SizeMismatch { .. }
        | SnapError::ChecksumMismatch { .. }
        | SnapError::Corrupt(_) => Status::data_loss(e.to_string()),
        SnapError::Dropped => Status::aborted(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// The error a sender reads from the receiver's `status` for a snapshot
/// of `region_id`.
pub(crate) fn error_of(status: &Status, region_id: u64) -> SnapError {
    match status.code() {
        Code::NotFound => SnapError::RegionNotFound(region_id),
        Code::ResourceExhausted => match status.message().parse() {
            Ok(limit) => SnapError::ReceiverBusy { limit },
            Err(_) => SnapError::Refused(status.message().to_string()),
        },
        Code::FailedPrecondition => SnapError::NotReady {
            region_id,
            why: status.message().to_string(),
        },
        Code::Unavailable | Code::Aborted | Code::Cancelled | Code::DeadlineExceeded => {
            SnapError::Dropped
        }
        code => SnapError::Refused(format!("{code:?}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal a receiver can make reads back as its own kind.
    #[test]
    fn refusals_survive_the_wire() {
        let region = 7;
        let cases = [
            SnapError::RegionNotFound(region),
            SnapError::ReceiverBusy { limit: 3 },
            SnapError::NotReady {
                region_id: region,
                why: "applying".into(),
            },
            SnapError::Dropped,
        ];
        for e in cases {
            let back = error_of(&status_of(&e), region);
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e} came back as {back}"
            );
        }
        let busy = error_of(&status_of(&SnapError::ReceiverBusy { limit: 3 }), region);
        assert!(matches!(busy, SnapError::ReceiverBusy { limit: 3 }));
        let corrupt = error_of(&status_of(&SnapError::Corrupt("bad".into())), region);
        assert!(matches!(corrupt, SnapError::Refused(ref m) if m.contains("bad")));
    }
}
