use proptest::prelude::*;

use super::*;

#[test]
fn layout_matches_design_table() {
    assert_eq!(STORE_IDENT_KEY, &[0x01, 0x01]);
    let log = raft_log_key(0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
    assert_eq!(
        log.to_vec(),
        [
            &[0x01, 0x02][..],
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0x01],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        ]
        .concat()
    );
    assert_eq!(
        raft_state_key(5).to_vec(),
        [&[1, 2][..], &5u64.to_be_bytes(), &[2]].concat()
    );
    assert_eq!(
        apply_state_key(5).to_vec(),
        [&[1, 2][..], &5u64.to_be_bytes(), &[3]].concat()
    );
    assert_eq!(
        region_state_key(5).to_vec(),
        [&[1, 3][..], &5u64.to_be_bytes(), &[1]].concat()
    );
    assert_eq!(
        removed_peer_key(5, 6).to_vec(),
        [&[1, 2][..], &5u64.to_be_bytes(), &[5], &6u64.to_be_bytes()].concat()
    );
    let (lo, hi) = removed_peers_range(5);
    assert!(lo.as_slice() <= removed_peer_key(5, 0).as_slice());
    assert!(removed_peer_key(5, u64::MAX).as_slice() < hi.as_slice());
    assert!(hi.as_slice() <= region_raft_prefix_range(5).1.as_slice());
    assert_eq!(data_key(b"abc"), b"zabc");
}

#[test]
fn every_key_kind_round_trips() {
    assert_eq!(decode(STORE_IDENT_KEY), Ok(Key::StoreIdent));
    assert_eq!(decode(STORE_LIVENESS_KEY), Ok(Key::StoreLiveness));
    assert_eq!(decode(ID_ALLOCATOR_KEY), Ok(Key::IdAllocator));
    assert_eq!(
        decode(&raft_log_key(9, 77)),
        Ok(Key::RaftLog {
            region_id: 9,
            index: 77
        })
    );
    assert_eq!(
        decode(&raft_state_key(9)),
        Ok(Key::RaftState { region_id: 9 })
    );
    assert_eq!(
        decode(&apply_state_key(9)),
        Ok(Key::ApplyState { region_id: 9 })
    );
    assert_eq!(
        decode(&region_state_key(9)),
        Ok(Key::RegionState { region_id: 9 })
    );
    assert_eq!(
        decode(&removed_peer_key(9, 1 << 40 | 3)),
        Ok(Key::RemovedPeer {
            region_id: 9,
            peer_id: 1 << 40 | 3
        })
    );
    assert_eq!(decode(&data_key(b"k")), Ok(Key::Data(b"k")));
    assert_eq!(decode(&data_key(b"")), Ok(Key::Data(b"")));
    assert_eq!(
        decode_raft_log_key(&raft_log_key(u64::MAX, u64::MAX)),
        Ok((u64::MAX, u64::MAX))
    );
    assert_eq!(decode_region_state_key(&region_state_key(3)), Ok(3));
    assert_eq!(origin_key(&data_key(b"user")), Ok(&b"user"[..]));
}

#[test]
fn malformed_keys_are_errors() {
    assert!(matches!(decode(b""), Err(KeyError::UnknownPrefix { .. })));
    assert!(matches!(
        decode(&[0x05]),
        Err(KeyError::UnknownPrefix { .. })
    ));
    assert!(matches!(
        decode(&[0x01]),
        Err(KeyError::UnknownPrefix { .. })
    ));
    assert!(matches!(
        decode(&[0x01, 0x01, 0x00]),
        Err(KeyError::BadLength { .. })
    ));
    // A log key missing its last index byte.
    let log = raft_log_key(1, 2);
    assert!(matches!(
        decode(&log[..log.len() - 1]),
        Err(KeyError::BadLength { .. })
    ));
    // A raft-state key with a trailing byte.
    let mut state = raft_state_key(1).to_vec();
    state.push(0);
    assert!(matches!(decode(&state), Err(KeyError::BadLength { .. })));
    // Unknown suffixes.
    let mut bad = raft_state_key(1);
    bad[10] = 0x09;
    assert!(matches!(
        decode(&bad),
        Err(KeyError::UnknownSuffix { suffix: 0x09, .. })
    ));
    let mut bad = region_state_key(1);
    bad[10] = 0x02;
    assert!(matches!(decode(&bad), Err(KeyError::UnknownSuffix { .. })));
    // Truncated region prefix.
    assert!(matches!(
        decode(&[0x01, 0x02, 0, 0]),
        Err(KeyError::BadLength { .. })
    ));
    // Right layout, wrong kind.
    assert!(matches!(
        decode_raft_log_key(&raft_state_key(1)),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        decode_region_state_key(&apply_state_key(1)),
        Err(KeyError::WrongKind { .. })
    ));
    assert!(matches!(
        origin_key(&raft_state_key(1)),
        Err(KeyError::WrongKind { .. })
    ));
}

/// Log keys of one region sort by index and lie inside that region's raft
/// prefix range, together with its raft and apply state keys.
#[test]
fn region_keys_sit_inside_their_prefix_range() {
    for region_id in [0, 1, 255, 256, u64::MAX - 1, u64::MAX] {
        let (start, end) = region_raft_prefix_range(region_id);
        for key in [
            raft_log_key(region_id, 0).to_vec(),
            raft_log_key(region_id, u64::MAX).to_vec(),
            raft_state_key(region_id).to_vec(),
            apply_state_key(region_id).to_vec(),
            removed_peer_key(region_id, 0).to_vec(),
            removed_peer_key(region_id, u64::MAX).to_vec(),
        ] {
            assert!(
                start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice(),
                "{region_id}: {key:?}"
            );
        }
        let (mstart, mend) = region_meta_prefix_range(region_id);
        let rs = region_state_key(region_id);
        assert!(mstart.as_slice() <= rs.as_slice() && rs.as_slice() < mend.as_slice());
        assert!(REGION_META_RANGE.0 <= rs.as_slice() && rs.as_slice() < REGION_META_RANGE.1);
        // Log entries come before the states of the same region.
        assert!(
            raft_log_key(region_id, u64::MAX).as_slice() < raft_state_key(region_id).as_slice()
        );
    }
}

proptest! {
    /// Log keys of one region order exactly as their indexes.
    #[test]
    fn log_keys_sort_by_index(region in any::<u64>(), a in any::<u64>(), b in any::<u64>()) {
        prop_assert_eq!(raft_log_key(region, a).cmp(&raft_log_key(region, b)), a.cmp(&b));
        let (lo, hi) = raft_log_range(region, a.min(b), a.max(b));
        let k = raft_log_key(region, a.min(b));
        prop_assert!(lo <= k && (k < hi || a == b));
    }

    /// Keys of different regions never interleave: every key of the smaller
    /// region sorts before every key of the larger one.
    #[test]
    fn regions_never_interleave(r1 in any::<u64>(), r2 in any::<u64>(), i1 in any::<u64>(), i2 in any::<u64>()) {
        prop_assume!(r1 != r2);
        let (lo, hi) = if r1 < r2 { (r1, r2) } else { (r2, r1) };
        let lo_keys = [raft_log_key(lo, i1).to_vec(), raft_state_key(lo).to_vec(), apply_state_key(lo).to_vec()];
        let hi_keys = [raft_log_key(hi, i2).to_vec(), raft_state_key(hi).to_vec(), apply_state_key(hi).to_vec()];
        for a in &lo_keys {
            for b in &hi_keys {
                prop_assert!(a < b);
            }
        }
        prop_assert!(region_state_key(lo) < region_state_key(hi));
        let (_, lo_end) = region_raft_prefix_range(lo);
        let (hi_start, _) = region_raft_prefix_range(hi);
        prop_assert!(lo_end <= hi_start);
    }

    /// Every data key sorts after every local key.
    #[test]
    fn data_keys_sort_after_local_keys(user in proptest::collection::vec(any::<u8>(), 0..32), r in any::<u64>(), i in any::<u64>()) {
        let d = data_key(&user);
        for local in [STORE_IDENT_KEY.to_vec(), raft_log_key(r, i).to_vec(), raft_state_key(r).to_vec(),
                      apply_state_key(r).to_vec(), region_state_key(r).to_vec()] {
            prop_assert!(local < d);
            prop_assert!(local.as_slice() < LOCAL_MAX_KEY);
        }
        prop_assert!(DATA_MIN_KEY <= d.as_slice() && d.as_slice() < DATA_MAX_KEY);
    }

    /// User-key order is preserved by the data encoding.
    #[test]
    fn data_keys_preserve_order(a in proptest::collection::vec(any::<u8>(), 0..16), b in proptest::collection::vec(any::<u8>(), 0..16)) {
        prop_assert_eq!(data_key(&a).cmp(&data_key(&b)), a.cmp(&b));
        let encoded = data_key(&a);
        prop_assert_eq!(origin_key(&encoded).unwrap(), a.as_slice());
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decode_never_panics(key in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = decode(&key);
    }
}
