//! Small helpers shared by the consensus core's modules.

use flotilla_proto::eraftpb::Entry;
use prost::Message as _;

/// The encoded size of an entry, the unit of every size limit.
pub fn entry_size(e: &Entry) -> u64 {
    e.encoded_len() as u64
}

/// The bytes of an entry's payload that count toward `max_uncommitted_size`.
pub fn payload_size(e: &Entry) -> u64 {
    e.data.len() as u64
}

/// Truncates `ents` so their total size is at most `max` bytes, keeping at
/// least one entry. `None` means no limit.
pub fn limit_size(ents: &mut Vec<Entry>, max: Option<u64>) {
    let Some(max) = max else { return };
    if ents.len() <= 1 || max == u64::MAX {
        return;
    }
    let mut size = 0;
    let keep = ents
        .iter()
        .take_while(|e| {
            size += entry_size(e);
            size <= max
        })
        .count()
        .max(1);
    ents.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// checklist: log-9 (at least one entry, then stop at the byte budget)
    #[test]
    fn limit_size_keeps_at_least_one() {
        let e = Entry {
            index: 1,
            term: 1,
            data: vec![0u8; 10].into(),
            ..Default::default()
        };
        let sz = entry_size(&e);
        let mk = || vec![e.clone(), e.clone(), e.clone()];
        for (max, want) in [
            (None, 3),
            (Some(0), 1),
            (Some(sz), 1),
            (Some(2 * sz), 2),
            (Some(2 * sz + 1), 2),
            (Some(3 * sz), 3),
        ] {
            let mut v = mk();
            limit_size(&mut v, max);
            assert_eq!(v.len(), want, "max {max:?}");
        }
    }
}
