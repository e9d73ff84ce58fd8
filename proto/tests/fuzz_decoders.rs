//! Property tests ("fuzzing") for every protobuf message a store decodes from
//! the network or from disk.
//!
//! Inputs are (a) uniformly random bytes, (b) random but wire-shaped bytes
//! (well-formed field headers with random field numbers, wire types and
//! payloads, nested a few levels deep), and (c) valid encodings of random
//! messages put through bit flips, byte overwrites, insertions, deletions,
//! truncation, range duplication and splicing with another valid encoding.
//!
//! For every input and every message type the property is the same (see
//! [`check`]): `M::decode` returns `Ok` or `Err` and never panics, decoding
//! from a `&[u8]` and from a [`Bytes`] agree, and a message that decoded is
//! stable: its encoding decodes back to an equal message whose encoding is
//! byte-for-byte the same.
//!
//! A panic in a decoder fails the test, and proptest reports the (shrunk)
//! input bytes that caused it.

use std::fmt::Debug;

use bytes::Bytes;
use flotilla_proto::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeV2, ConfState, Entry, HardState, Message, Snapshot,
    SnapshotMetadata,
};
use flotilla_proto::metapb::{Peer, Region, RegionEpoch};
use flotilla_proto::raft_cmdpb::{
    AdminRequest, AdminResponse, BatchSplitRequest, BatchSplitResponse, ChangePeerRequest,
    ChangePeerResponse, ChangePeerV2Request, ChangePeerV2Response, CommitMergeRequest,
    CommitMergeResponse, CompactLogRequest, CompactLogResponse, DeleteRangeRequest,
    DeleteRangeResponse, DeleteRequest, DeleteResponse, EpochNotMatch, Error, GetRequest,
    GetResponse, KeyNotInRegion, KvPair, NotLeader, PrepareMergeRequest, PrepareMergeResponse,
    ProposalDropped, PutRequest, PutResponse, RaftCmdRequest, RaftCmdResponse, RaftEntryTooLarge,
    RaftRequestHeader, RaftResponseHeader, RegionNotFound, Request, Response, RollbackMergeRequest,
    RollbackMergeResponse, ScanRequest, ScanResponse, ServerIsBusy, SnapRequest, SnapResponse,
    SplitRequest, StaleCommand, StoreNotMatch, Timeout, TransferLeaderRequest,
    TransferLeaderResponse, admin_request, admin_response, error, request, response,
};
use flotilla_proto::raft_serverpb::{
    Beat, KeyValue, MergeState, RaftApplyState, RaftLocalState, RaftMessage, RaftTruncatedState,
    RegionLocalState, RegionSnapshotData, StoreHeartbeat, StoreHeartbeatResponse, StoreIdent,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

/// Cases of each test over uniformly random bytes (each case decodes the
/// input as all 19 message types).
const RANDOM_CASES: u32 = 2048;
/// Cases of the test over wire-shaped random bytes (each case decodes the
/// input as all 19 message types).
const WIRE_CASES: u32 = 1024;
/// Cases of each per-type mutation test (each case decodes the mutated bytes
/// as all 19 message types).
const MUTATION_CASES: u32 = 512;

/// Longest uniformly random input.
const MAX_RANDOM_LEN: usize = 512;
/// Most mutations applied to one valid encoding.
const MAX_MUTATIONS: usize = 4;

/// A fixed number of cases, no regression files written into the tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- the property ----

/// Decodes `bytes` as `M` and checks:
/// - decoding never panics (a panic fails the proptest case);
/// - decoding from `&[u8]` and from [`Bytes`] (the zero-copy path the store
///   uses for entries and commands) give the same outcome;
/// - when decoding succeeds, `encoded_len` matches the encoding, the encoding
///   decodes back to an equal message, and re-encoding that is a fixed point.
fn check<M>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    M: prost::Message + Default + PartialEq + Debug,
{
    let name = std::any::type_name::<M>();
    let from_slice = M::decode(bytes);
    let from_bytes = M::decode(Bytes::copy_from_slice(bytes));
    let msg = match (from_slice, from_bytes) {
        (Err(_), Err(_)) => return Ok(()),
        (Ok(a), Ok(b)) => {
            prop_assert_eq!(&a, &b, "{}: &[u8] and Bytes decodes differ", name);
            a
        }
        (a, b) => {
            return Err(TestCaseError::fail(format!(
                "{name}: &[u8] decode gave {a:?}, Bytes decode gave {b:?}"
            )));
        }
    };
    let encoded = msg.encode_to_vec();
    prop_assert_eq!(encoded.len(), msg.encoded_len(), "{}: encoded_len", name);
    let back = match M::decode(encoded.as_slice()) {
        Ok(back) => back,
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{name}: re-encoding of a decoded {msg:?} does not decode: {e}"
            )));
        }
    };
    prop_assert_eq!(&back, &msg, "{}: round trip changed the message", name);
    prop_assert_eq!(
        back.encode_to_vec(),
        encoded,
        "{}: re-encoding is not a fixed point",
        name
    );
    Ok(())
}

/// Runs [`check`] for every message type a store decodes from the network
/// or from disk (and the coalesced-heartbeat and snapshot-data messages).
fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    // eraftpb
    check::<Entry>(bytes)?;
    check::<Message>(bytes)?;
    check::<HardState>(bytes)?;
    check::<ConfState>(bytes)?;
    check::<ConfChange>(bytes)?;
    check::<ConfChangeV2>(bytes)?;
    check::<Snapshot>(bytes)?;
    // raft_serverpb
    check::<RaftMessage>(bytes)?;
    check::<RaftLocalState>(bytes)?;
    check::<RaftApplyState>(bytes)?;
    check::<RegionLocalState>(bytes)?;
    check::<StoreIdent>(bytes)?;
    check::<Beat>(bytes)?;
    check::<StoreHeartbeat>(bytes)?;
    check::<StoreHeartbeatResponse>(bytes)?;
    check::<RegionSnapshotData>(bytes)?;
    // raft_cmdpb
    check::<RaftCmdRequest>(bytes)?;
    check::<RaftCmdResponse>(bytes)?;
    // metapb
    check::<Region>(bytes)?;
    Ok(())
}

// ---- scalar strategies ----

/// Mostly small values (1- and 2-byte varints), sometimes any `u64`.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..512, 1 => any::<u64>()]
}

/// An enum field: mostly a known value in `0..known`, sometimes any `i32`
/// (negative values encode as 10-byte varints).
fn enum_val(known: i32) -> impl Strategy<Value = i32> {
    prop_oneof![4 => 0..known, 1 => any::<i32>()]
}

/// Up to `max` random bytes.
fn blob(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// A short string of arbitrary (often multi-byte) characters, so mutations
/// can break UTF-8.
fn text() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..6).prop_map(String::from_iter)
}

// ---- eraftpb ----
//
// Message strategies are boxed: unboxed, the value trees of the nested
// command and raft-message strategies are large enough in a debug build to
// overflow a test thread's 2 MiB stack while generating a case.

fn arb_entry() -> BoxedStrategy<Entry> {
    (enum_val(3), num(), num(), blob(24), blob(8))
        .prop_map(|(entry_type, term, index, data, context)| Entry {
            entry_type,
            term,
            index,
            data,
            context,
        })
        .boxed()
}

fn arb_conf_state() -> BoxedStrategy<ConfState> {
    (
        vec(num(), 0..4),
        vec(num(), 0..3),
        vec(num(), 0..4),
        vec(num(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(voters, learners, voters_outgoing, learners_next, auto_leave)| ConfState {
                voters,
                learners,
                voters_outgoing,
                learners_next,
                auto_leave,
            },
        )
        .boxed()
}

fn arb_snapshot() -> BoxedStrategy<Snapshot> {
    (
        blob(32),
        option::of((option::of(arb_conf_state()), num(), num())),
    )
        .prop_map(|(data, metadata)| Snapshot {
            data,
            metadata: metadata.map(|(conf_state, index, term)| SnapshotMetadata {
                conf_state,
                index,
                term,
            }),
        })
        .boxed()
}

fn arb_message() -> BoxedStrategy<Message> {
    (
        (enum_val(19), num(), num(), num(), num(), num()),
        (
            vec(arb_entry(), 0..4),
            num(),
            num(),
            option::weighted(0.2, arb_snapshot()),
            num(),
            any::<bool>(),
        ),
        (num(), blob(8), any::<i64>(), any::<bool>()),
    )
        .prop_map(
            |(
                (msg_type, to, from, term, log_term, index),
                (entries, commit, commit_term, snapshot, request_snapshot, reject),
                (reject_hint, context, priority, no_ack),
            )| Message {
                msg_type,
                to,
                from,
                term,
                log_term,
                index,
                entries,
                commit,
                commit_term,
                snapshot: snapshot.map(Box::new),
                request_snapshot,
                reject,
                reject_hint,
                context,
                priority,
                no_ack,
            },
        )
        .boxed()
}

fn arb_hard_state() -> BoxedStrategy<HardState> {
    (num(), num(), num())
        .prop_map(|(term, vote, commit)| HardState { term, vote, commit })
        .boxed()
}

fn arb_conf_change() -> BoxedStrategy<ConfChange> {
    (enum_val(3), num(), blob(8), num())
        .prop_map(|(change_type, node_id, context, id)| ConfChange {
            change_type,
            node_id,
            context,
            id,
        })
        .boxed()
}

fn arb_conf_change_v2() -> BoxedStrategy<ConfChangeV2> {
    (
        enum_val(3),
        vec(
            (enum_val(3), num()).prop_map(|(change_type, node_id)| ConfChangeSingle {
                change_type,
                node_id,
            }),
            0..4,
        ),
        blob(8),
    )
        .prop_map(|(transition, changes, context)| ConfChangeV2 {
            transition,
            changes,
            context,
        })
        .boxed()
}

// ---- metapb ----

fn arb_peer() -> BoxedStrategy<Peer> {
    (num(), num(), enum_val(4))
        .prop_map(|(id, store_id, role)| Peer { id, store_id, role })
        .boxed()
}

fn arb_epoch() -> BoxedStrategy<RegionEpoch> {
    (num(), num())
        .prop_map(|(conf_ver, version)| RegionEpoch { conf_ver, version })
        .boxed()
}

fn arb_region() -> BoxedStrategy<Region> {
    (
        num(),
        blob(8),
        blob(8),
        option::of(arb_epoch()),
        vec(arb_peer(), 0..4),
    )
        .prop_map(|(id, start_key, end_key, region_epoch, peers)| Region {
            id,
            start_key,
            end_key,
            region_epoch,
            peers,
        })
        .boxed()
}

// ---- raft_serverpb ----

fn arb_raft_message() -> BoxedStrategy<RaftMessage> {
    (
        num(),
        option::of(arb_peer()),
        option::of(arb_peer()),
        option::of(arb_message()),
        option::of(arb_epoch()),
        any::<bool>(),
        blob(8),
        blob(8),
        option::of(arb_store_heartbeat()),
        option::of(arb_region()),
    )
        .prop_map(
            |(
                region_id,
                from_peer,
                to_peer,
                message,
                region_epoch,
                is_tombstone,
                start_key,
                end_key,
                heartbeats,
                merged_into,
            )| {
                RaftMessage {
                    region_id,
                    from_peer,
                    to_peer,
                    message,
                    region_epoch,
                    is_tombstone,
                    start_key,
                    end_key,
                    heartbeats,
                    heartbeat_responses: None,
                    merged_into,
                    merge_refused: region_id.rotate_left(7),
                    merge_check: is_tombstone,
                    gc_ack: !is_tombstone,
                }
            },
        )
        .boxed()
}

fn arb_beat() -> BoxedStrategy<Beat> {
    (
        num(),
        num(),
        num(),
        num(),
        num(),
        blob(8),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(region_id, from_peer, to_peer, term, commit, context, quiesce, wake)| Beat {
                region_id,
                from_peer,
                to_peer,
                term,
                commit,
                context,
                quiesce,
                wake,
                // Derived so the tuple stays within proptest's arity.
                conf_ver: term ^ commit,
            },
        )
        .boxed()
}

fn arb_store_heartbeat() -> BoxedStrategy<StoreHeartbeat> {
    (num(), num(), vec(arb_beat(), 0..6), (num(), num(), num()))
        .prop_map(
            |(from_store, to_store, beats, (epoch, withdrawals, echo))| StoreHeartbeat {
                from_store,
                to_store,
                beats,
                epoch,
                withdrawals,
                echo,
            },
        )
        .boxed()
}

fn arb_store_heartbeat_response() -> BoxedStrategy<StoreHeartbeatResponse> {
    (num(), num(), vec(arb_beat(), 0..6), (num(), num(), num()))
        .prop_map(
            |(from_store, to_store, responses, (epoch, withdrawals, echo))| {
                StoreHeartbeatResponse {
                    from_store,
                    to_store,
                    responses,
                    epoch,
                    withdrawals,
                    echo,
                }
            },
        )
        .boxed()
}

fn arb_store_ident() -> BoxedStrategy<StoreIdent> {
    (num(), num())
        .prop_map(|(cluster_id, store_id)| StoreIdent {
            cluster_id,
            store_id,
        })
        .boxed()
}

fn arb_raft_local_state() -> BoxedStrategy<RaftLocalState> {
    (option::of(arb_hard_state()), num())
        .prop_map(|(hard_state, last_index)| RaftLocalState {
            hard_state,
            last_index,
        })
        .boxed()
}

fn arb_raft_apply_state() -> BoxedStrategy<RaftApplyState> {
    (num(), option::of((num(), num())))
        .prop_map(|(applied_index, truncated)| RaftApplyState {
            applied_index,
            truncated_state: truncated.map(|(index, term)| RaftTruncatedState { index, term }),
        })
        .boxed()
}

fn arb_region_local_state() -> BoxedStrategy<RegionLocalState> {
    (
        enum_val(4),
        option::of(arb_region()),
        option::of((num(), option::of(arb_region()), num())),
        option::of(arb_region()),
    )
        .prop_map(|(state, region, merge, old)| RegionLocalState {
            state,
            region,
            merge_state: merge.map(|(min_index, target, commit)| MergeState {
                min_index,
                target,
                commit,
            }),
            applying_snapshot: None,
            applying_old_range: old,
        })
        .boxed()
}

fn arb_region_snapshot_data() -> BoxedStrategy<RegionSnapshotData> {
    (
        option::of(arb_region()),
        vec(
            (blob(8), blob(8)).prop_map(|(key, value)| KeyValue { key, value }),
            0..6,
        ),
    )
        .prop_map(|(region, kvs)| RegionSnapshotData { region, kvs })
        .boxed()
}

// ---- raft_cmdpb ----

fn arb_request() -> BoxedStrategy<Request> {
    let cmd = prop_oneof![
        blob(8).prop_map(|key| request::Cmd::Get(GetRequest { key })),
        (blob(8), blob(16)).prop_map(|(key, value)| request::Cmd::Put(PutRequest { key, value })),
        blob(8).prop_map(|key| request::Cmd::Delete(DeleteRequest { key })),
        (blob(8), blob(8)).prop_map(|(start_key, end_key)| request::Cmd::DeleteRange(
            DeleteRangeRequest { start_key, end_key }
        )),
        (blob(8), blob(8), any::<u32>(), any::<u64>()).prop_map(
            |(start_key, end_key, limit, max_bytes)| {
                request::Cmd::Scan(ScanRequest {
                    start_key,
                    end_key,
                    limit,
                    max_bytes,
                })
            }
        ),
        Just(request::Cmd::Snap(SnapRequest {})),
    ];
    option::of(cmd).prop_map(|cmd| Request { cmd }).boxed()
}

fn arb_change_peer() -> BoxedStrategy<ChangePeerRequest> {
    (enum_val(3), option::of(arb_peer()))
        .prop_map(|(change_type, peer)| ChangePeerRequest { change_type, peer })
        .boxed()
}

fn arb_admin_request() -> BoxedStrategy<AdminRequest> {
    let cmd = prop_oneof![
        arb_change_peer().prop_map(admin_request::Cmd::ChangePeer),
        vec(arb_change_peer(), 0..3)
            .prop_map(|changes| admin_request::Cmd::ChangePeerV2(ChangePeerV2Request { changes })),
        (
            vec(
                (blob(8), num(), vec(num(), 0..4)).prop_map(
                    |(split_key, new_region_id, new_peer_ids)| SplitRequest {
                        split_key,
                        new_region_id,
                        new_peer_ids,
                    }
                ),
                0..3
            ),
            any::<bool>()
        )
            .prop_map(|(requests, right_derive)| admin_request::Cmd::BatchSplit(
                BatchSplitRequest {
                    requests,
                    right_derive
                }
            )),
        (num(), option::of(arb_region())).prop_map(|(min_index, target)| {
            admin_request::Cmd::PrepareMerge(PrepareMergeRequest { min_index, target })
        }),
        (option::of(arb_region()), num(), vec(arb_entry(), 0..3)).prop_map(
            |(source, commit, entries)| admin_request::Cmd::CommitMerge(CommitMergeRequest {
                source,
                commit,
                entries,
            })
        ),
        num().prop_map(|commit| admin_request::Cmd::RollbackMerge(RollbackMergeRequest { commit })),
        option::of(arb_peer())
            .prop_map(|peer| admin_request::Cmd::TransferLeader(TransferLeaderRequest { peer })),
        (num(), num()).prop_map(|(compact_index, compact_term)| {
            admin_request::Cmd::CompactLog(CompactLogRequest {
                compact_index,
                compact_term,
            })
        }),
    ];
    option::of(cmd).prop_map(|cmd| AdminRequest { cmd }).boxed()
}

fn arb_raft_cmd_request() -> BoxedStrategy<RaftCmdRequest> {
    let header = (
        num(),
        option::of(arb_peer()),
        option::of(arb_epoch()),
        num(),
        blob(16),
    )
        .prop_map(
            |(region_id, peer, region_epoch, term, uuid)| RaftRequestHeader {
                region_id,
                peer,
                region_epoch,
                term,
                uuid,
            },
        );
    (
        option::of(header),
        vec(arb_request(), 0..4),
        option::weighted(0.3, arb_admin_request()),
    )
        .prop_map(|(header, requests, admin_request)| RaftCmdRequest {
            header,
            requests,
            admin_request,
        })
        .boxed()
}

fn arb_error() -> BoxedStrategy<Error> {
    let detail = prop_oneof![
        (num(), option::of(arb_peer())).prop_map(|(region_id, leader)| error::Detail::NotLeader(
            NotLeader { region_id, leader }
        )),
        num().prop_map(|region_id| error::Detail::RegionNotFound(RegionNotFound { region_id })),
        (blob(8), num(), blob(8), blob(8)).prop_map(|(key, region_id, start_key, end_key)| {
            error::Detail::KeyNotInRegion(KeyNotInRegion {
                key,
                region_id,
                start_key,
                end_key,
            })
        }),
        vec(arb_region(), 0..3).prop_map(|current_regions| error::Detail::EpochNotMatch(
            EpochNotMatch { current_regions }
        )),
        (text(), num()).prop_map(|(reason, backoff_ms)| error::Detail::ServerIsBusy(
            ServerIsBusy { reason, backoff_ms }
        )),
        Just(error::Detail::StaleCommand(StaleCommand {})),
        text().prop_map(|reason| error::Detail::ProposalDropped(ProposalDropped { reason })),
        (num(), num()).prop_map(|(request_store_id, actual_store_id)| {
            error::Detail::StoreNotMatch(StoreNotMatch {
                request_store_id,
                actual_store_id,
            })
        }),
        Just(error::Detail::Timeout(Timeout {})),
        (num(), num()).prop_map(|(region_id, entry_size)| error::Detail::RaftEntryTooLarge(
            RaftEntryTooLarge {
                region_id,
                entry_size
            }
        )),
        any::<bool>().prop_map(|in_flight| error::Detail::StoreStopped(
            flotilla_proto::raft_cmdpb::StoreStopped { in_flight }
        )),
        text().prop_map(|reason| error::Detail::ApplyFailed(
            flotilla_proto::raft_cmdpb::ApplyFailed { reason }
        )),
        text().prop_map(|reason| error::Detail::EngineError(
            flotilla_proto::raft_cmdpb::EngineError { reason }
        )),
        text().prop_map(|reason| error::Detail::InvalidRequest(
            flotilla_proto::raft_cmdpb::InvalidRequest { reason }
        )),
    ];
    (text(), option::of(detail))
        .prop_map(|(message, detail)| Error { message, detail })
        .boxed()
}

fn arb_response() -> BoxedStrategy<Response> {
    let cmd = prop_oneof![
        option::of(blob(16)).prop_map(|value| response::Cmd::Get(GetResponse { value })),
        Just(response::Cmd::Put(PutResponse {})),
        Just(response::Cmd::Delete(DeleteResponse {})),
        Just(response::Cmd::DeleteRange(DeleteRangeResponse {})),
        (
            vec(
                (blob(8), blob(8)).prop_map(|(key, value)| KvPair { key, value }),
                0..4
            ),
            any::<bool>()
        )
            .prop_map(|(kvs, more)| response::Cmd::Scan(ScanResponse { kvs, more })),
        option::of(arb_region()).prop_map(|region| response::Cmd::Snap(SnapResponse { region })),
    ];
    option::of(cmd).prop_map(|cmd| Response { cmd }).boxed()
}

fn arb_admin_response() -> BoxedStrategy<AdminResponse> {
    let cmd = prop_oneof![
        option::of(arb_region())
            .prop_map(|region| admin_response::Cmd::ChangePeer(ChangePeerResponse { region })),
        option::of(arb_region())
            .prop_map(|region| admin_response::Cmd::ChangePeerV2(ChangePeerV2Response { region })),
        vec(arb_region(), 0..3)
            .prop_map(|regions| admin_response::Cmd::BatchSplit(BatchSplitResponse { regions })),
        Just(admin_response::Cmd::PrepareMerge(
            PrepareMergeResponse::default()
        )),
        Just(admin_response::Cmd::CommitMerge(CommitMergeResponse {})),
        Just(admin_response::Cmd::RollbackMerge(RollbackMergeResponse {})),
        Just(admin_response::Cmd::TransferLeader(
            TransferLeaderResponse {}
        )),
        Just(admin_response::Cmd::CompactLog(CompactLogResponse {})),
    ];
    option::of(cmd)
        .prop_map(|cmd| AdminResponse { cmd })
        .boxed()
}

fn arb_raft_cmd_response() -> BoxedStrategy<RaftCmdResponse> {
    let header =
        (option::of(arb_error()), blob(16), num()).prop_map(|(error, uuid, current_term)| {
            RaftResponseHeader {
                error,
                uuid,
                current_term,
            }
        });
    (
        option::of(header),
        vec(arb_response(), 0..4),
        option::weighted(0.3, arb_admin_response()),
    )
        .prop_map(|(header, responses, admin_response)| RaftCmdResponse {
            header,
            responses,
            admin_response,
        })
        .boxed()
}

// ---- wire-shaped random bytes ----

/// Appends `v` as a protobuf varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a field header.
fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// A field number: mostly one the messages define (1..=16), sometimes 0
/// (invalid), the largest valid one, or anything that fits a tag.
fn field_number() -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => 1u32..=16,
        1 => Just(0u32),
        1 => Just((1u32 << 29) - 1),
        1 => any::<u32>(),
    ]
}

/// One field with a random number, wire type and payload: well-formed at the
/// top level, nested length-delimited fields (themselves lists of random
/// fields) up to a few levels deep, plus groups and the unused wire types.
fn wire_fields() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (field_number(), any::<u64>()).prop_map(|(f, v)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, 0);
            put_varint(&mut out, v);
            out
        }),
        (field_number(), any::<u64>()).prop_map(|(f, v)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, 1);
            out.extend_from_slice(&v.to_le_bytes());
            out
        }),
        (field_number(), any::<u32>()).prop_map(|(f, v)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, 5);
            out.extend_from_slice(&v.to_le_bytes());
            out
        }),
        (field_number(), vec(any::<u8>(), 0..24)).prop_map(|(f, payload)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, 2);
            put_varint(&mut out, payload.len() as u64);
            out.extend_from_slice(&payload);
            out
        }),
        // A length that lies (too long or huge).
        (field_number(), any::<u64>(), vec(any::<u8>(), 0..8)).prop_map(|(f, len, payload)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, 2);
            put_varint(&mut out, len);
            out.extend_from_slice(&payload);
            out
        }),
        // Group start/end markers and the wire types 6 and 7 that do not exist.
        (field_number(), prop::sample::select(vec![3u8, 4, 6, 7])).prop_map(|(f, wt)| {
            let mut out = Vec::new();
            put_tag(&mut out, f, wt);
            out
        }),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            // A nested message.
            (field_number(), vec(inner.clone(), 0..6)).prop_map(|(f, fields)| {
                let body = fields.concat();
                let mut out = Vec::new();
                put_tag(&mut out, f, 2);
                put_varint(&mut out, body.len() as u64);
                out.extend_from_slice(&body);
                out
            }),
            // A group wrapping fields, with a matching or mismatched end tag.
            (field_number(), vec(inner, 0..4), any::<bool>()).prop_map(|(f, fields, matched)| {
                let mut out = Vec::new();
                put_tag(&mut out, f, 3);
                out.extend_from_slice(&fields.concat());
                put_tag(&mut out, if matched { f } else { f ^ 1 }, 4);
                out
            }),
        ]
    })
}

/// A top-level buffer of wire-shaped fields.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(wire_fields(), 0..8).prop_map(|fields| fields.concat())
}

// ---- mutations of valid encodings ----

/// One edit of an encoding. Positions are [`Index`]es, resolved against the
/// buffer's length when applied.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit of one byte.
    FlipBit(Index, u8),
    /// Overwrite one byte (often with a varint-significant value).
    SetByte(Index, u8),
    /// Insert one byte.
    Insert(Index, u8),
    /// Delete one byte.
    Delete(Index),
    /// Keep only a prefix.
    Truncate(Index),
    /// Delete a range of bytes.
    DeleteRange(Index, Index),
    /// Copy a range of the buffer to another position.
    Duplicate(Index, Index, Index),
    /// Keep a prefix of the buffer and append a suffix of another valid
    /// encoding of the same type.
    Splice(Index, Index),
}

/// A byte value that matters to the wire format more often than chance.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => prop::sample::select(vec![0x00, 0x01, 0x02, 0x07, 0x08, 0x0a, 0x7f, 0x80, 0xff]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::DeleteRange(a, b)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c)| Mutation::Duplicate(a, b, c)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Splice(a, b)),
    ]
}

/// `lo..hi` from two indexes into `0..=len`.
fn range(a: &Index, b: &Index, len: usize) -> std::ops::Range<usize> {
    let (x, y) = (a.index(len + 1), b.index(len + 1));
    x.min(y)..x.max(y)
}

/// Applies `m` to `buf`; `donor` is another valid encoding for splicing.
fn apply(buf: &mut Vec<u8>, m: &Mutation, donor: &[u8]) {
    let len = buf.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => buf[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => buf[i.index(len)] = *b,
        Mutation::Insert(i, b) => buf.insert(i.index(len + 1), *b),
        Mutation::Delete(i) if len > 0 => {
            buf.remove(i.index(len));
        }
        Mutation::Truncate(i) => buf.truncate(i.index(len + 1)),
        Mutation::DeleteRange(a, b) => {
            buf.drain(range(a, b, len));
        }
        Mutation::Duplicate(a, b, at) => {
            let copy = buf[range(a, b, len)].to_vec();
            let at = at.index(len + 1);
            buf.splice(at..at, copy);
        }
        Mutation::Splice(a, b) => {
            buf.truncate(a.index(len + 1));
            buf.extend_from_slice(&donor[b.index(donor.len() + 1)..]);
        }
        _ => {}
    }
}

/// A valid message from `msg` together with its encoding after 1 to
/// [`MAX_MUTATIONS`] random mutations (splices take from `donor`'s encoding).
fn mutated<M: prost::Message + Debug>(
    msg: impl Strategy<Value = M>,
    donor: impl Strategy<Value = M>,
) -> impl Strategy<Value = (M, Vec<u8>)> {
    (msg, donor, vec(mutation(), 1..=MAX_MUTATIONS)).prop_map(|(msg, donor, mutations)| {
        let mut buf = msg.encode_to_vec();
        let donor = donor.encode_to_vec();
        for m in &mutations {
            apply(&mut buf, m, &donor);
        }
        (msg, buf)
    })
}

/// Checks that a generated valid message round-trips (so the mutations
/// start from a real encoding), then checks the mutated bytes as its own
/// type and as every other type.
fn check_mutated<M>(msg: &M, bytes: &[u8]) -> Result<(), TestCaseError>
where
    M: prost::Message + Default + PartialEq + Debug,
{
    let valid = msg.encode_to_vec();
    prop_assert_eq!(
        &M::decode(valid.as_slice())?,
        msg,
        "valid encoding round trip"
    );
    check::<M>(&valid)?;
    check::<M>(bytes)?;
    check_all(bytes)
}

// ---- the tests ----

proptest! {
    #![proptest_config(config(RANDOM_CASES))]

    /// Uniformly random bytes (0 to 512 of them) decode as every message
    /// type without panicking; whatever decodes round-trips stably.
    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..MAX_RANDOM_LEN)) {
        check_all(&bytes)?;
    }
}

proptest! {
    #![proptest_config(config(WIRE_CASES))]

    /// Random wire-shaped bytes (well-formed field headers with random field
    /// numbers and wire types, lying lengths, groups, nested messages) decode
    /// as every message type without panicking; whatever decodes
    /// round-trips stably.
    #[test]
    fn wire_shaped_bytes_never_panic(bytes in wire_bytes()) {
        check_all(&bytes)?;
    }
}

/// Defines one mutation test per message type.
macro_rules! mutation_tests {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $strategy:ident;)*) => {
        proptest! {
            #![proptest_config(config(MUTATION_CASES))]
            $(
                $(#[$doc])*
                #[test]
                fn $name((msg, bytes) in mutated($strategy(), $strategy())) {
                    check_mutated::<$ty>(&msg, &bytes)?;
                }
            )*
        }
    };
}

mutation_tests! {
    /// Mutated valid `eraftpb::Entry` encodings (raft log on disk, appends on
    /// the wire) never panic any decoder; whatever decodes round-trips stably.
    mutated_entry: Entry = arb_entry;
    /// Mutated valid `eraftpb::Message` encodings (with entries and
    /// snapshots) never panic any decoder; whatever decodes round-trips.
    mutated_message: Message = arb_message;
    /// Mutated valid `eraftpb::HardState` encodings never panic any decoder;
    /// whatever decodes round-trips stably.
    mutated_hard_state: HardState = arb_hard_state;
    /// Mutated valid `eraftpb::ConfState` encodings (packed repeated fields)
    /// never panic any decoder; whatever decodes round-trips stably.
    mutated_conf_state: ConfState = arb_conf_state;
    /// Mutated valid `eraftpb::ConfChange` encodings (entry data of conf
    /// changes) never panic any decoder; whatever decodes round-trips.
    mutated_conf_change: ConfChange = arb_conf_change;
    /// Mutated valid `eraftpb::ConfChangeV2` encodings never panic any
    /// decoder; whatever decodes round-trips stably.
    mutated_conf_change_v2: ConfChangeV2 = arb_conf_change_v2;
    /// Mutated valid `eraftpb::Snapshot` encodings never panic any decoder;
    /// whatever decodes round-trips stably.
    mutated_snapshot: Snapshot = arb_snapshot;
    /// Mutated valid `raft_serverpb::RaftMessage` encodings (what a store
    /// receives from another) never panic any decoder; whatever decodes
    /// round-trips stably.
    mutated_raft_message: RaftMessage = arb_raft_message;
    /// Mutated valid `raft_serverpb::RaftLocalState` encodings never panic
    /// any decoder; whatever decodes round-trips stably.
    mutated_raft_local_state: RaftLocalState = arb_raft_local_state;
    /// Mutated valid `raft_serverpb::RaftApplyState` encodings never panic
    /// any decoder; whatever decodes round-trips stably.
    mutated_raft_apply_state: RaftApplyState = arb_raft_apply_state;
    /// Mutated valid `raft_serverpb::RegionLocalState` encodings (what a
    /// restart scans) never panic any decoder; whatever decodes round-trips.
    mutated_region_local_state: RegionLocalState = arb_region_local_state;
    /// Mutated valid `raft_serverpb::StoreIdent` encodings never panic any
    /// decoder; whatever decodes round-trips stably.
    mutated_store_ident: StoreIdent = arb_store_ident;
    /// Mutated valid `raft_serverpb::Beat` encodings (one coalesced
    /// heartbeat) never panic any decoder; whatever decodes round-trips.
    mutated_beat: Beat = arb_beat;
    /// Mutated valid `raft_serverpb::StoreHeartbeat` encodings (coalesced
    /// heartbeats) never panic any decoder; whatever decodes round-trips.
    mutated_store_heartbeat: StoreHeartbeat = arb_store_heartbeat;
    /// Mutated valid `raft_serverpb::StoreHeartbeatResponse` encodings never
    /// panic any decoder; whatever decodes round-trips stably.
    mutated_store_heartbeat_response: StoreHeartbeatResponse = arb_store_heartbeat_response;
    /// Mutated valid `raft_serverpb::RegionSnapshotData` encodings (snapshot
    /// payloads) never panic any decoder; whatever decodes round-trips.
    mutated_region_snapshot_data: RegionSnapshotData = arb_region_snapshot_data;
    /// Mutated valid `raft_cmdpb::RaftCmdRequest` encodings (client and admin
    /// commands, entry data) never panic any decoder; whatever decodes
    /// round-trips stably.
    mutated_raft_cmd_request: RaftCmdRequest = arb_raft_cmd_request;
    /// Mutated valid `raft_cmdpb::RaftCmdResponse` encodings (with typed
    /// errors and UTF-8 strings) never panic any decoder; whatever decodes
    /// round-trips stably.
    mutated_raft_cmd_response: RaftCmdResponse = arb_raft_cmd_response;
    /// Mutated valid `metapb::Region` encodings never panic any decoder;
    /// whatever decodes round-trips stably.
    mutated_region: Region = arb_region;
}
