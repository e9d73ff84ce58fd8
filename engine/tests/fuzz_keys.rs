//! Property tests ("fuzzing") for the engine's decoders of on-disk bytes:
//! the key decoders of [`flotilla_engine::keys`] and [`Engine::get_msg`] /
//! [`flotilla_engine::Snapshot::get_msg`] on values holding garbage.
//!
//! Inputs are random bytes (uniform, and biased towards the layout's prefix
//! and suffix bytes) and valid keys or valid message encodings put through
//! bit flips, byte overwrites, insertions, deletions, truncation and splicing
//! with another valid key or encoding. A panic fails the test, and proptest
//! reports the (shrunk) input that caused it.

use std::fmt::Debug;

use flotilla_engine::keys::{self, Key, KeyError};
use flotilla_engine::{Cf, Engine, EngineOptions, Error};
use flotilla_proto::eraftpb::{Entry, HardState};
use flotilla_proto::metapb::{Peer, Region, RegionEpoch};
use flotilla_proto::raft_serverpb::{
    MergeState, RaftApplyState, RaftLocalState, RaftTruncatedState, RegionLocalState, StoreIdent,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{TestCaseError, TestRunner};

/// Cases of each key-decoder test (key decoding is cheap).
const KEY_CASES: u32 = 4096;
/// Cases of the `get_msg` test; each case writes and reads back one garbage
/// value per persisted message type (five), through the engine and through a
/// snapshot.
const GET_MSG_CASES: u32 = 1024;

/// Longest random key; valid keys are at most 19 bytes.
const MAX_KEY_LEN: usize = 40;
/// Longest random value.
const MAX_VALUE_LEN: usize = 256;
/// Most mutations applied to one valid key or encoding.
const MAX_MUTATIONS: usize = 3;

/// A fixed number of cases, no regression files written into the tree.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- mutations ----

/// One edit of a byte string. Positions are [`Index`]es, resolved against
/// the buffer's length when applied.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit of one byte.
    FlipBit(Index, u8),
    /// Overwrite one byte (often with a byte the layout gives meaning to).
    SetByte(Index, u8),
    /// Insert one byte.
    Insert(Index, u8),
    /// Delete one byte.
    Delete(Index),
    /// Keep only a prefix.
    Truncate(Index),
    /// Keep a prefix and append a suffix of another valid input.
    Splice(Index, Index),
}

/// A byte the key layout or the protobuf wire format gives meaning to, or
/// any byte.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => any::<u8>(),
        2 => prop::sample::select(vec![
            0x00,
            keys::LOCAL_PREFIX,
            keys::REGION_RAFT_PREFIX,
            keys::REGION_META_PREFIX,
            keys::DATA_PREFIX,
            0x04,
            0x08,
            0x0a,
            0x7f,
            0x80,
            0xff,
        ]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), interesting_byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Splice(a, b)),
    ]
}

/// Applies `m` to `buf`; `donor` is another valid input for splicing.
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
        Mutation::Splice(a, b) => {
            buf.truncate(a.index(len + 1));
            buf.extend_from_slice(&donor[b.index(donor.len() + 1)..]);
        }
        _ => {}
    }
}

/// `valid` after 1 to [`MAX_MUTATIONS`] mutations, splicing from `donor`.
fn mutated(
    valid: impl Strategy<Value = Vec<u8>>,
    donor: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Vec<u8>> {
    (valid, donor, vec(mutation(), 1..=MAX_MUTATIONS)).prop_map(|(mut buf, donor, mutations)| {
        for m in &mutations {
            apply(&mut buf, m, &donor);
        }
        buf
    })
}

// ---- keys ----

/// A region id or index: often small, sometimes extreme.
fn id() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 0u64..1024, 1 => Just(u64::MAX), 2 => any::<u64>()]
}

/// A valid key of any kind of the layout.
fn valid_key() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        Just(keys::STORE_IDENT_KEY.to_vec()),
        (id(), id()).prop_map(|(r, i)| keys::raft_log_key(r, i).to_vec()),
        id().prop_map(|r| keys::raft_state_key(r).to_vec()),
        id().prop_map(|r| keys::apply_state_key(r).to_vec()),
        id().prop_map(|r| keys::apply_origin_key(r).to_vec()),
        (id(), id()).prop_map(|(r, p)| keys::removed_peer_key(r, p).to_vec()),
        id().prop_map(|r| keys::region_state_key(r).to_vec()),
        vec(any::<u8>(), 0..12).prop_map(|k| keys::data_key(&k)),
    ]
    .boxed()
}

/// Random bytes that often start like a key of the layout: a known first
/// byte, a known second byte, a known suffix byte at offset 10, and lengths
/// around the valid ones.
fn key_shaped_bytes() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        3 => Just(keys::LOCAL_PREFIX),
        1 => Just(keys::DATA_PREFIX),
        1 => any::<u8>(),
    ];
    let second = prop_oneof![3 => 1u8..=4, 1 => any::<u8>()];
    let suffix = prop_oneof![3 => 0u8..=5, 1 => any::<u8>()];
    (
        first,
        second,
        suffix,
        vec(any::<u8>(), 0..=keys::RAFT_LOG_KEY_LEN + 2),
    )
        .prop_map(|(first, second, suffix, mut key)| {
            key.insert(0, first);
            if key.len() > 1 {
                key[1] = second;
            }
            if key.len() > keys::REGION_KEY_LEN - 1 {
                key[keys::REGION_KEY_LEN - 1] = suffix;
            }
            key
        })
}

/// Re-encodes a decoded key.
fn encode(key: Key<'_>) -> Vec<u8> {
    match key {
        Key::StoreIdent => keys::STORE_IDENT_KEY.to_vec(),
        Key::StoreLiveness => keys::STORE_LIVENESS_KEY.to_vec(),
        Key::IdAllocator => keys::ID_ALLOCATOR_KEY.to_vec(),
        Key::RaftLog { region_id, index } => keys::raft_log_key(region_id, index).to_vec(),
        Key::RaftState { region_id } => keys::raft_state_key(region_id).to_vec(),
        Key::ApplyState { region_id } => keys::apply_state_key(region_id).to_vec(),
        Key::ApplyOrigin { region_id } => keys::apply_origin_key(region_id).to_vec(),
        Key::RemovedPeer { region_id, peer_id } => {
            keys::removed_peer_key(region_id, peer_id).to_vec()
        }
        Key::RegionState { region_id } => keys::region_state_key(region_id).to_vec(),
        Key::Data(user) => keys::data_key(user),
    }
}

/// Checks that `err` is a well-formed report about `key`: it carries the
/// key itself, its fields agree with the key, and it displays (also through
/// the engine's [`Error`]) without panicking.
fn check_key_error(key: &[u8], err: &KeyError) -> Result<(), TestCaseError> {
    match err {
        KeyError::UnknownPrefix { key: k } => prop_assert_eq!(k.as_slice(), key),
        KeyError::BadLength {
            len,
            expected,
            key: k,
            ..
        } => {
            prop_assert_eq!(k.as_slice(), key);
            prop_assert_eq!(*len, key.len());
            prop_assert_ne!(*len, *expected);
        }
        KeyError::UnknownSuffix { suffix, key: k } => {
            prop_assert_eq!(k.as_slice(), key);
            prop_assert_eq!(key.get(keys::REGION_KEY_LEN - 1), Some(suffix));
        }
        KeyError::WrongKind { key: k, .. } => prop_assert_eq!(k.as_slice(), key),
    }
    prop_assert!(!err.to_string().is_empty());
    prop_assert!(!Error::from(err.clone()).to_string().is_empty());
    Ok(())
}

/// Runs every key decoder on `key` and checks they agree with each other:
/// - [`keys::decode`] either accepts `key` and re-encoding the result gives
///   `key` back byte for byte (the layout has one encoding per key), or
///   returns a [`KeyError`] that names `key` (see [`check_key_error`]);
/// - [`keys::decode_raft_log_key`] and [`keys::decode_region_state_key`]
///   return what `decode` returned when it is their kind, `WrongKind` when it
///   is another valid kind, and `decode`'s error otherwise;
/// - [`keys::origin_key`] accepts exactly the data keys `decode` accepts.
fn check_key(key: &[u8]) -> Result<(), TestCaseError> {
    let decoded = keys::decode(key);
    match &decoded {
        Ok(k) => prop_assert_eq!(encode(*k), key, "decoded as {:?}", k),
        Err(e) => check_key_error(key, e)?,
    }

    let log = keys::decode_raft_log_key(key);
    match (&decoded, &log) {
        (Ok(Key::RaftLog { region_id, index }), Ok(got)) => {
            prop_assert_eq!(*got, (*region_id, *index));
        }
        (Ok(_), Err(e @ KeyError::WrongKind { expected, .. })) => {
            prop_assert_eq!(*expected, "raft log");
            check_key_error(key, e)?;
        }
        (Err(want), Err(got)) => prop_assert_eq!(got, want),
        _ => prop_assert!(false, "decode {decoded:?} vs decode_raft_log_key {log:?}"),
    }

    let region = keys::decode_region_state_key(key);
    match (&decoded, &region) {
        (Ok(Key::RegionState { region_id }), Ok(got)) => prop_assert_eq!(got, region_id),
        (Ok(_), Err(e @ KeyError::WrongKind { expected, .. })) => {
            prop_assert_eq!(*expected, "region state");
            check_key_error(key, e)?;
        }
        (Err(want), Err(got)) => prop_assert_eq!(got, want),
        _ => prop_assert!(
            false,
            "decode {decoded:?} vs decode_region_state_key {region:?}"
        ),
    }

    let origin = keys::origin_key(key);
    match (&decoded, &origin) {
        (Ok(Key::Data(user)), Ok(got)) => prop_assert_eq!(got, user),
        (_, Err(e @ KeyError::WrongKind { expected, .. })) => {
            prop_assert_eq!(*expected, "data");
            prop_assert!(!matches!(decoded, Ok(Key::Data(_))));
            check_key_error(key, e)?;
        }
        _ => prop_assert!(false, "decode {decoded:?} vs origin_key {origin:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(KEY_CASES))]

    /// Every key decoder, on random bytes (uniform and key-shaped), returns
    /// a typed `KeyError` naming the input or a key that re-encodes to the
    /// input, never panics, and agrees with the other decoders.
    #[test]
    fn key_decoders_on_random_bytes(key in prop_oneof![
        vec(any::<u8>(), 0..MAX_KEY_LEN),
        key_shaped_bytes(),
    ]) {
        check_key(&key)?;
    }

    /// Every key decoder, on valid keys of every kind after bit flips,
    /// overwrites, insertions, deletions, truncation and splicing, returns a
    /// typed `KeyError` naming the input or a key that re-encodes to the
    /// input, never panics, and agrees with the other decoders.
    #[test]
    fn key_decoders_on_mutated_keys(key in mutated(valid_key(), valid_key())) {
        check_key(&key)?;
    }

    /// Valid keys of every kind decode to what they encode.
    #[test]
    fn valid_keys_decode(key in valid_key()) {
        prop_assert!(keys::decode(&key).is_ok(), "{:?} did not decode", key);
        check_key(&key)?;
    }
}

// ---- Engine::get_msg on garbage ----

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=max)
}

fn peer() -> impl Strategy<Value = Peer> {
    (id(), id(), 0i32..4).prop_map(|(id, store_id, role)| Peer { id, store_id, role })
}

fn region() -> BoxedStrategy<Region> {
    (
        id(),
        bytes(8),
        bytes(8),
        option::of((id(), id())),
        vec(peer(), 0..4),
    )
        .prop_map(|(id, start, end, epoch, peers)| Region {
            id,
            start_key: start.into(),
            end_key: end.into(),
            region_epoch: epoch.map(|(conf_ver, version)| RegionEpoch { conf_ver, version }),
            peers,
        })
        .boxed()
}

/// The valid encoding of a random message of one of the types the engine
/// persists.
fn valid_value() -> BoxedStrategy<Vec<u8>> {
    use prost::Message as _;
    prop_oneof![
        (0i32..3, id(), id(), bytes(32), bytes(8)).prop_map(|(t, term, index, data, ctx)| {
            Entry {
                entry_type: t,
                term,
                index,
                data: data.into(),
                context: ctx.into(),
            }
            .encode_to_vec()
        }),
        (option::of((id(), id(), id())), id()).prop_map(|(hs, last_index)| {
            RaftLocalState {
                hard_state: hs.map(|(term, vote, commit)| HardState { term, vote, commit }),
                last_index,
            }
            .encode_to_vec()
        }),
        (id(), option::of((id(), id()))).prop_map(|(applied_index, t)| {
            RaftApplyState {
                applied_index,
                truncated_state: t.map(|(index, term)| RaftTruncatedState { index, term }),
            }
            .encode_to_vec()
        }),
        (
            0i32..4,
            option::of(region()),
            option::of((id(), region(), id()))
        )
            .prop_map(|(state, region, merge)| {
                RegionLocalState {
                    state,
                    region,
                    merge_state: merge.map(|(min_index, target, commit)| MergeState {
                        min_index,
                        target: Some(target),
                        commit,
                    }),
                    applying_snapshot: None,
                    applying_old_range: None,
                }
                .encode_to_vec()
            }),
        (id(), id()).prop_map(|(cluster_id, store_id)| {
            StoreIdent {
                cluster_id,
                store_id,
            }
            .encode_to_vec()
        }),
    ]
    .boxed()
}

/// Reads `key` back as `M` through the engine and through a fresh snapshot
/// and checks both agree with decoding `value` directly: `Ok(Some(m))` when
/// `M::decode` accepts `value`, otherwise `Error::Decode` naming `M` and the
/// key and carrying the decoder's error. Any other outcome (another error
/// variant, a missing value, a panic) fails.
fn check_get_msg<M>(engine: &Engine, key: &[u8], value: &[u8]) -> Result<(), TestCaseError>
where
    M: prost::Message + Default + PartialEq + Debug,
{
    engine
        .put(Cf::Raft, key, value)
        .map_err(|e| TestCaseError::fail(format!("put: {e}")))?;
    let want = M::decode(value);
    let snap = engine.snapshot();
    for (via, got) in [
        ("engine", engine.get_msg::<M>(Cf::Raft, key)),
        ("snapshot", snap.get_msg::<M>(Cf::Raft, key)),
    ] {
        match (&want, got) {
            (Ok(m), Ok(Some(got))) => prop_assert_eq!(&got, m, "{}", via),
            (
                Err(want),
                Err(Error::Decode {
                    what,
                    key: k,
                    source,
                }),
            ) => {
                prop_assert_eq!(what, std::any::type_name::<M>(), "{}", via);
                prop_assert_eq!(k.as_slice(), key, "{}", via);
                prop_assert_eq!(source.to_string(), want.to_string(), "{}", via);
            }
            (want, got) => prop_assert!(
                false,
                "{via}: decoding gives {want:?} but get_msg gives {got:?}"
            ),
        }
    }
    Ok(())
}

/// `Engine::get_msg` and `Snapshot::get_msg` on a real RocksDB, for every
/// message type the engine persists (`Entry` under a raft log key,
/// `RaftLocalState`, `RaftApplyState`, `RegionLocalState`, `StoreIdent`),
/// on values that are random bytes, valid encodings of any of those types,
/// or mutated valid encodings: the result is the decoded message when the
/// bytes decode, and otherwise a typed `Error::Decode` naming the message
/// type and the key; never a panic.
#[test]
fn get_msg_on_garbage_values_returns_decode_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), &EngineOptions::default()).expect("open engine");
    let value = prop_oneof![
        bytes(MAX_VALUE_LEN),
        valid_value(),
        mutated(valid_value(), valid_value()),
    ];
    let mut runner = TestRunner::new(config(GET_MSG_CASES));
    let result = runner.run(&(id(), id(), value), |(region, index, value)| {
        check_get_msg::<Entry>(&engine, &keys::raft_log_key(region, index), &value)?;
        check_get_msg::<RaftLocalState>(&engine, &keys::raft_state_key(region), &value)?;
        check_get_msg::<RaftApplyState>(&engine, &keys::apply_state_key(region), &value)?;
        check_get_msg::<RegionLocalState>(&engine, &keys::region_state_key(region), &value)?;
        check_get_msg::<StoreIdent>(&engine, keys::STORE_IDENT_KEY, &value)?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
