//! Round-trip and bad-input tests for every message.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message as _;

use crate::eraftpb::*;
use crate::metapb::*;
use crate::raft_cmdpb::*;
use crate::raft_serverpb::*;

fn region() -> Region {
    Region {
        id: 7,
        start_key: Bytes::from_static(b"a"),
        end_key: Bytes::from_static(b"m"),
        region_epoch: Some(RegionEpoch {
            conf_ver: 3,
            version: 9,
        }),
        peers: vec![
            Peer {
                id: 1,
                store_id: 1,
                role: PeerRole::Voter as i32,
            },
            Peer {
                id: 2,
                store_id: 2,
                role: PeerRole::Learner as i32,
            },
        ],
    }
}

fn entry() -> Entry {
    Entry {
        entry_type: EntryType::EntryConfChangeV2 as i32,
        term: 5,
        index: 42,
        data: Bytes::from_static(b"payload"),
        context: Bytes::from_static(b"ctx"),
    }
}

fn conf_state() -> ConfState {
    ConfState {
        voters: vec![1, 2, 3],
        learners: vec![4],
        voters_outgoing: vec![1, 2, 5],
        learners_next: vec![5],
        auto_leave: true,
    }
}

fn snapshot() -> Snapshot {
    Snapshot {
        data: Bytes::from_static(b"snapshot-data"),
        metadata: Some(SnapshotMetadata {
            conf_state: Some(conf_state()),
            index: 100,
            term: 6,
        }),
    }
}

fn raft_message() -> Message {
    Message {
        msg_type: MessageType::MsgAppend as i32,
        to: 2,
        from: 1,
        term: 6,
        log_term: 5,
        index: 41,
        entries: vec![entry(), entry()],
        commit: 40,
        commit_term: 5,
        snapshot: Some(Box::new(snapshot())),
        request_snapshot: 3,
        reject: true,
        reject_hint: 39,
        context: Bytes::from_static(b"read-ctx"),
        priority: -4,
        no_ack: true,
    }
}

fn error() -> Error {
    Error {
        message: "not leader".into(),
        detail: Some(error::Detail::NotLeader(NotLeader {
            region_id: 7,
            leader: Some(region().peers[0]),
        })),
    }
}

fn beat() -> Beat {
    Beat {
        region_id: 7,
        from_peer: 1,
        to_peer: 2,
        term: 6,
        commit: 40,
        context: Bytes::from_static(b"c"),
        quiesce: true,
        wake: true,
        conf_ver: 3,
    }
}

/// Encodes `msg`, decodes it back, and checks the result equals the input
/// and that the encoding is not empty (every sample sets non-default fields).
fn assert_round_trip<M: prost::Message + Default + PartialEq + std::fmt::Debug>(msg: M) {
    let buf = msg.encode_to_vec();
    assert!(!buf.is_empty(), "{msg:?} encoded to nothing");
    let back = M::decode(buf.as_slice()).expect("decode what we encoded");
    assert_eq!(back, msg);
}

#[test]
fn eraftpb_round_trip() {
    assert_round_trip(entry());
    assert_round_trip(snapshot());
    assert_round_trip(raft_message());
    assert_round_trip(HardState {
        term: 3,
        vote: 2,
        commit: 9,
    });
    assert_round_trip(conf_state());
    assert_round_trip(ConfChange {
        change_type: ConfChangeType::RemoveNode as i32,
        node_id: 3,
        context: Bytes::from_static(b"x"),
        id: 11,
    });
    assert_round_trip(ConfChangeV2 {
        transition: ConfChangeTransition::Explicit as i32,
        changes: vec![
            ConfChangeSingle {
                change_type: ConfChangeType::AddLearnerNode as i32,
                node_id: 4,
            },
            ConfChangeSingle {
                change_type: ConfChangeType::AddNode as i32,
                node_id: 5,
            },
        ],
        context: Bytes::from_static(b"y"),
    });
}

#[test]
fn metapb_round_trip() {
    assert_round_trip(Store {
        id: 1,
        address: "127.0.0.1:20160".into(),
        state: StoreState::Offline as i32,
    });
    assert_round_trip(region());
}

#[test]
fn raft_cmdpb_requests_round_trip() {
    let header = RaftRequestHeader {
        region_id: 7,
        peer: Some(region().peers[0]),
        region_epoch: region().region_epoch,
        term: 6,
        uuid: Bytes::from_static(b"uuid"),
    };
    let requests = vec![
        Request {
            cmd: Some(request::Cmd::Get(GetRequest {
                key: Bytes::from_static(b"k"),
            })),
        },
        Request {
            cmd: Some(request::Cmd::Put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            })),
        },
        Request {
            cmd: Some(request::Cmd::Delete(DeleteRequest {
                key: Bytes::from_static(b"k"),
            })),
        },
        Request {
            cmd: Some(request::Cmd::DeleteRange(DeleteRangeRequest {
                start_key: Bytes::from_static(b"a"),
                end_key: Bytes::from_static(b"b"),
            })),
        },
        Request {
            cmd: Some(request::Cmd::Scan(ScanRequest {
                start_key: Bytes::from_static(b"a"),
                end_key: Bytes::from_static(b"z"),
                limit: 10,
                max_bytes: 1 << 20,
            })),
        },
        Request {
            cmd: Some(request::Cmd::Snap(SnapRequest {})),
        },
    ];
    assert_round_trip(RaftCmdRequest {
        header: Some(header),
        requests,
        admin_request: None,
    });
}

#[test]
fn raft_cmdpb_responses_round_trip() {
    let responses = vec![
        Response {
            cmd: Some(response::Cmd::Get(GetResponse {
                value: Some(Bytes::from_static(b"v")),
            })),
        },
        Response {
            cmd: Some(response::Cmd::Get(GetResponse { value: None })),
        },
        Response {
            cmd: Some(response::Cmd::Put(PutResponse {})),
        },
        Response {
            cmd: Some(response::Cmd::Delete(DeleteResponse {})),
        },
        Response {
            cmd: Some(response::Cmd::DeleteRange(DeleteRangeResponse {})),
        },
        Response {
            cmd: Some(response::Cmd::Scan(ScanResponse {
                kvs: vec![KvPair {
                    key: Bytes::from_static(b"a"),
                    value: Bytes::from_static(b"1"),
                }],
                more: true,
            })),
        },
        Response {
            cmd: Some(response::Cmd::Snap(SnapResponse {
                region: Some(region()),
            })),
        },
    ];
    assert_round_trip(RaftCmdResponse {
        header: Some(RaftResponseHeader {
            error: None,
            uuid: Bytes::from_static(b"uuid"),
            current_term: 6,
        }),
        responses,
        admin_response: None,
    });
}

/// An empty optional value and a present-but-empty value stay distinct.
#[test]
fn get_response_distinguishes_missing_from_empty() {
    let missing = GetResponse { value: None }.encode_to_vec();
    let empty = GetResponse {
        value: Some(Bytes::new()),
    }
    .encode_to_vec();
    assert_ne!(missing, empty);
    assert_eq!(
        GetResponse::decode(empty.as_slice()).unwrap().value,
        Some(Bytes::new())
    );
    assert_eq!(GetResponse::decode(missing.as_slice()).unwrap().value, None);
}

#[test]
fn admin_round_trip() {
    let admins = vec![
        admin_request::Cmd::ChangePeer(ChangePeerRequest {
            change_type: ConfChangeType::AddLearnerNode as i32,
            peer: Some(region().peers[1]),
        }),
        admin_request::Cmd::ChangePeerV2(ChangePeerV2Request {
            changes: vec![ChangePeerRequest {
                change_type: ConfChangeType::AddNode as i32,
                peer: Some(region().peers[1]),
            }],
        }),
        admin_request::Cmd::BatchSplit(BatchSplitRequest {
            requests: vec![SplitRequest {
                split_key: Bytes::from_static(b"g"),
                new_region_id: 8,
                new_peer_ids: vec![10, 11],
            }],
            right_derive: true,
        }),
        admin_request::Cmd::PrepareMerge(PrepareMergeRequest {
            min_index: 30,
            target: Some(region()),
        }),
        admin_request::Cmd::CommitMerge(CommitMergeRequest {
            source: Some(region()),
            commit: 44,
            entries: vec![entry()],
        }),
        admin_request::Cmd::RollbackMerge(RollbackMergeRequest { commit: 44 }),
        admin_request::Cmd::TransferLeader(TransferLeaderRequest {
            peer: Some(region().peers[1]),
        }),
        admin_request::Cmd::CompactLog(CompactLogRequest {
            compact_index: 90,
            compact_term: 5,
        }),
    ];
    for cmd in admins {
        assert_round_trip(RaftCmdRequest {
            header: None,
            requests: vec![],
            admin_request: Some(AdminRequest { cmd: Some(cmd) }),
        });
    }
    let responses = vec![
        admin_response::Cmd::ChangePeer(ChangePeerResponse {
            region: Some(region()),
        }),
        admin_response::Cmd::ChangePeerV2(ChangePeerV2Response {
            region: Some(region()),
        }),
        admin_response::Cmd::BatchSplit(BatchSplitResponse {
            regions: vec![region(), region()],
        }),
        admin_response::Cmd::PrepareMerge(PrepareMergeResponse {
            region: Some(region()),
            commit: 31,
        }),
        admin_response::Cmd::CommitMerge(CommitMergeResponse {}),
        admin_response::Cmd::RollbackMerge(RollbackMergeResponse {}),
        admin_response::Cmd::TransferLeader(TransferLeaderResponse {}),
        admin_response::Cmd::CompactLog(CompactLogResponse {}),
    ];
    for cmd in responses {
        let msg = AdminResponse { cmd: Some(cmd) };
        let buf = msg.encode_to_vec();
        // Empty responses encode to a tag and a zero length, never to nothing.
        assert!(!buf.is_empty());
        assert_eq!(AdminResponse::decode(buf.as_slice()).unwrap(), msg);
    }
}

#[test]
fn every_error_variant_round_trips() {
    let details = vec![
        error::Detail::NotLeader(NotLeader {
            region_id: 7,
            leader: None,
        }),
        error::Detail::RegionNotFound(RegionNotFound { region_id: 7 }),
        error::Detail::KeyNotInRegion(KeyNotInRegion {
            key: Bytes::from_static(b"zz"),
            region_id: 7,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
        }),
        error::Detail::EpochNotMatch(EpochNotMatch {
            current_regions: vec![region()],
        }),
        error::Detail::ServerIsBusy(ServerIsBusy {
            reason: "mailbox full".into(),
            backoff_ms: 10,
        }),
        error::Detail::StaleCommand(StaleCommand {}),
        error::Detail::ProposalDropped(ProposalDropped {
            reason: "leader transfer".into(),
        }),
        error::Detail::StoreNotMatch(StoreNotMatch {
            request_store_id: 2,
            actual_store_id: 1,
        }),
        error::Detail::Timeout(Timeout {}),
        error::Detail::RaftEntryTooLarge(RaftEntryTooLarge {
            region_id: 7,
            entry_size: 1 << 30,
        }),
    ];
    for detail in details {
        let err = Error {
            message: String::new(),
            detail: Some(detail),
        };
        assert_round_trip(RaftCmdResponse {
            header: Some(RaftResponseHeader {
                error: Some(err),
                uuid: Bytes::new(),
                current_term: 0,
            }),
            responses: vec![],
            admin_response: None,
        });
    }
    assert_round_trip(error());
}

#[test]
fn raft_serverpb_round_trip() {
    assert_round_trip(RaftMessage {
        region_id: 7,
        from_peer: Some(region().peers[0]),
        to_peer: Some(region().peers[1]),
        message: Some(raft_message()),
        region_epoch: region().region_epoch,
        is_tombstone: true,
        start_key: Bytes::from_static(b"a"),
        end_key: Bytes::from_static(b"m"),
        heartbeats: None,
        heartbeat_responses: None,
        merged_into: Some(region()),
        merge_refused: 9,
        merge_check: true,
        gc_ack: true,
    });
    // A coalesced batch in its envelope.
    assert_round_trip(RaftMessage {
        from_peer: Some(region().peers[0]),
        to_peer: Some(region().peers[1]),
        heartbeats: Some(StoreHeartbeat {
            from_store: 1,
            to_store: 2,
            beats: vec![beat(), beat()],
            epoch: 3,
            withdrawals: 1,
            echo: 2,
        }),
        ..Default::default()
    });
    assert_round_trip(StoreHeartbeat {
        from_store: 1,
        to_store: 2,
        beats: vec![beat(), beat()],
        epoch: 3,
        withdrawals: 1,
        echo: 2,
    });
    assert_round_trip(StoreHeartbeatResponse {
        from_store: 2,
        to_store: 1,
        responses: vec![beat()],
        epoch: 4,
        withdrawals: 5,
        echo: 6,
    });
    assert_round_trip(StoreLivenessState { epoch: 9 });
    assert_round_trip(StoreIdent {
        cluster_id: 1,
        store_id: 3,
    });
    assert_round_trip(RaftLocalState {
        hard_state: Some(HardState {
            term: 1,
            vote: 2,
            commit: 3,
        }),
        last_index: 4,
    });
    assert_round_trip(RaftApplyState {
        applied_index: 10,
        truncated_state: Some(RaftTruncatedState { index: 5, term: 2 }),
    });
    assert_round_trip(RegionLocalState {
        state: PeerState::Merging as i32,
        region: Some(region()),
        merge_state: Some(MergeState {
            min_index: 3,
            target: Some(region()),
            commit: 9,
        }),
        applying_snapshot: Some(RaftTruncatedState { index: 12, term: 3 }),
        applying_old_range: Some(region()),
    });
    assert_round_trip(RegionSnapshotData {
        region: Some(region()),
        kvs: vec![KeyValue {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        }],
    });
}

/// A decoded entry shares the input buffer instead of copying the payload.
#[test]
fn entry_data_is_zero_copy_from_bytes() {
    let buf = Bytes::from(entry().encode_to_vec());
    let decoded = Entry::decode(buf.clone()).unwrap();
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    assert!(range.contains(&(decoded.data.as_ptr() as usize)));
}

/// Known-bad encodings are rejected with an error.
#[test]
fn malformed_inputs_are_errors() {
    // A field header announcing a 100-byte length-delimited field, with 1 byte.
    assert!(Message::decode(&[0x3a, 100, 0][..]).is_err());
    // A varint that never ends.
    assert!(HardState::decode(&[0x08, 0xff, 0xff, 0xff][..]).is_err());
    // Wire type 7 does not exist.
    assert!(Entry::decode(&[0x0f][..]).is_err());
    // Field number 0 is invalid.
    assert!(RegionLocalState::decode(&[0x00, 0x01][..]).is_err());
}

proptest! {
    /// Decoding arbitrary bytes as any message returns Ok or Err, never panics.
    #[test]
    fn decoding_garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = buf.as_slice();
        let _ = Message::decode(b);
        let _ = Entry::decode(b);
        let _ = Snapshot::decode(b);
        let _ = ConfChangeV2::decode(b);
        let _ = Region::decode(b);
        let _ = RaftCmdRequest::decode(b);
        let _ = RaftCmdResponse::decode(b);
        let _ = RaftMessage::decode(b);
        let _ = StoreHeartbeat::decode(b);
        let _ = RegionLocalState::decode(b);
        let _ = RaftApplyState::decode(b);
        let _ = RaftLocalState::decode(b);
    }

    /// Any raft message survives a round trip through its encoding.
    #[test]
    fn random_messages_round_trip(
        term in any::<u64>(), index in any::<u64>(), commit in any::<u64>(),
        data in proptest::collection::vec(any::<u8>(), 0..64),
        reject in any::<bool>(), priority in any::<i64>(), msg_type in 0i32..19,
    ) {
        let msg = Message {
            msg_type,
            term,
            index,
            commit,
            reject,
            priority,
            entries: vec![Entry { term, index, data: Bytes::from(data), ..Default::default() }],
            ..Default::default()
        };
        let back = Message::decode(msg.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, msg);
    }
}
