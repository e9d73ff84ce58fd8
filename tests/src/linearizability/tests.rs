use std::collections::HashMap;
use std::sync::Mutex;
use std::thread;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

const KEY: &str = "k";

fn write(client: usize, value: u64, call: u64, ret: Option<u64>) -> Operation<&'static str, u64> {
    Operation::new(client, KEY, Op::Write(value), call, ret)
}

fn read(
    client: usize,
    observed: Option<u64>,
    call: u64,
    ret: Option<u64>,
) -> Operation<&'static str, u64> {
    Operation::new(client, KEY, Op::Read(observed), call, ret)
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(check::<&str, u64>(&[]), Ok(()));
}

#[test]
fn sequential_history_is_linearizable() {
    let history = [
        read(0, None, 0, Some(1)),
        write(1, 1, 2, Some(3)),
        read(2, Some(1), 4, Some(5)),
        write(0, 2, 6, Some(7)),
        read(1, Some(2), 8, Some(9)),
        read(2, Some(2), 10, Some(11)),
    ];
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn stale_read_after_completed_write_fails() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(0, 2, 2, Some(3)),
        read(1, Some(1), 4, Some(5)),
    ];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.key, KEY);
    assert_eq!(violation.blocked, history[2]);
    assert_eq!(violation.state, Some(2));
    assert_eq!(violation.prefix, history[..2]);
}

#[test]
fn read_of_nothing_after_completed_write_fails() {
    let history = [write(0, 1, 0, Some(1)), read(1, None, 2, Some(3))];
    assert!(check(&history).is_err());
}

#[test]
fn concurrent_write_and_read_may_be_ordered_either_way() {
    let before = [write(0, 1, 0, Some(10)), read(1, None, 2, Some(3))];
    let after = [write(0, 1, 0, Some(10)), read(1, Some(1), 2, Some(3))];
    assert_eq!(check(&before), Ok(()));
    assert_eq!(check(&after), Ok(()));
}

#[test]
fn touching_intervals_are_concurrent() {
    // The read is invoked at the very instant the write returns.
    let history = [write(0, 1, 0, Some(5)), read(1, None, 5, Some(6))];
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn new_value_then_old_value_fails() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(0, 2, 2, Some(20)),
        read(1, Some(2), 3, Some(4)),
        read(2, Some(1), 5, Some(6)),
    ];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.blocked, history[3]);
    assert_eq!(violation.state, Some(2));
    assert!(violation.concurrent.is_empty(), "{violation}");
}

#[test]
fn reads_after_concurrent_writes_must_agree() {
    let writes = [write(0, 1, 0, Some(10)), write(1, 2, 0, Some(10))];
    for last in [1, 2] {
        let mut history = writes.to_vec();
        history.push(read(2, Some(last), 11, Some(12)));
        assert_eq!(check(&history), Ok(()), "either write may win");
    }
    let mut history = writes.to_vec();
    history.push(read(2, Some(1), 11, Some(12)));
    history.push(read(2, Some(2), 13, Some(14)));
    assert!(check(&history).is_err());
}

#[test]
fn unknown_write_observed_later_passes() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(0, 2, 2, None),
        read(1, Some(1), 10, Some(11)),
        read(1, Some(2), 12, Some(13)),
        read(2, Some(2), 14, Some(15)),
    ];
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn unknown_write_never_observed_passes() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(0, 2, 2, None),
        read(1, Some(1), 10, Some(11)),
        read(1, Some(1), 20, Some(21)),
    ];
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn unknown_write_cannot_be_undone() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(0, 2, 2, None),
        read(1, Some(2), 10, Some(11)),
        read(1, Some(1), 12, Some(13)),
    ];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.blocked, history[3]);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    let mut history = vec![
        write(0, 2, 0, None),
        read(1, Some(2), 1, Some(2)),
        write(2, 3, 3, Some(4)),
        read(1, Some(3), 5, Some(6)),
    ];
    assert_eq!(check(&history), Ok(()));
    history.push(read(1, Some(2), 7, Some(8)));
    assert!(check(&history).is_err());
}

#[test]
fn unknown_write_observed_before_its_call_fails() {
    let history = [read(1, Some(5), 0, Some(1)), write(0, 5, 2, None)];
    assert!(check(&history).is_err());
}

#[test]
fn read_of_never_written_value_fails() {
    let history = [write(0, 1, 0, Some(1)), read(1, Some(9), 0, Some(3))];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.blocked, history[1]);
    assert_eq!(violation.prefix, history[..1]);
    assert_eq!(violation.state, Some(1));
}

#[test]
fn unknown_read_is_ignored() {
    let history = [write(0, 1, 0, Some(1)), read(1, Some(42), 2, None)];
    assert_eq!(check(&history), Ok(()));
}

#[test]
fn keys_are_checked_independently() {
    let history = [
        Operation::new(0, "a", Op::Write(1_u64), 0, Some(1)),
        Operation::new(1, "b", Op::Read(Some(1)), 2, Some(3)),
    ];
    let violation = check(&history).unwrap_err();
    assert_eq!(violation.key, "b");
    assert_eq!(violation.key_operations, 1);

    let fine = [
        Operation::new(0, "a", Op::Write(1_u64), 0, Some(1)),
        Operation::new(1, "b", Op::Read(None), 2, Some(3)),
        Operation::new(1, "a", Op::Read(Some(1)), 4, Some(5)),
    ];
    assert_eq!(check(&fine), Ok(()));
}

#[test]
fn violation_display_names_key_and_stuck_operation() {
    let history = [
        write(0, 1, 0, Some(1)),
        write(3, 2, 2, Some(3)),
        read(7, Some(1), 4, Some(5)),
    ];
    let text = check(&history).unwrap_err().to_string();
    assert!(text.contains("key \"k\""), "{text}");
    assert!(
        text.contains("cannot linearize next: client 7: read -> Some(1) @[4, 5]"),
        "{text}"
    );
    assert!(text.contains("client 3: write(2) @[2, 3]"), "{text}");
    assert!(text.contains("register value after the longest linearizable prefix: Some(2)"));
}

#[test]
fn byte_vector_values_are_supported() {
    let key = 1_u32;
    let mut history = vec![
        Operation::new(0, key, Op::Write(b"x".to_vec()), 0, Some(1)),
        Operation::new(1, key, Op::Read(Some(b"x".to_vec())), 2, Some(3)),
    ];
    assert_eq!(check(&history), Ok(()));
    history.push(Operation::new(1, key, Op::Read(None), 4, Some(5)));
    assert!(check(&history).is_err());
}

#[test]
fn budget_limits_the_search() {
    let history = [
        write(0, 1, 0, Some(1)),
        read(1, Some(1), 2, Some(3)),
        read(1, Some(1), 4, Some(5)),
    ];
    let budget = 1;
    match check_with_budget(&history, budget) {
        Err(CheckError::Inconclusive {
            key,
            configurations,
        }) => {
            assert_eq!(key, KEY);
            assert!(configurations > budget);
        }
        other => panic!("expected an inconclusive search, got {other:?}"),
    }
    assert_eq!(check_with_budget(&history, history.len()), Ok(()));
}

#[test]
fn history_records_ordered_timestamps_and_unknown_outcomes() {
    let history: History<&str, u64> = History::new();
    assert!(history.is_empty());
    let w = history.invoke_write(0, KEY, 1);
    let r = history.invoke_read(1, KEY);
    history.complete_write(w);
    let _lost = history.invoke_write(2, KEY, 2);
    let rejected = history.invoke_write(3, KEY, 3);
    history.fail(rejected);
    history.complete_read(r, Some(1));
    assert_eq!(history.len(), 4);
    assert_eq!(history.operations().len(), 3);

    let operations = history.into_operations();
    assert_eq!(
        operations,
        vec![
            write(0, 1, 0, Some(2)),
            read(1, Some(1), 1, Some(5)),
            write(2, 2, 3, None),
        ]
    );
    assert_eq!(check(&operations), Ok(()));
}

#[test]
#[should_panic(expected = "already resolved")]
fn completing_twice_panics() {
    let history: History<&str, u64> = History::new();
    let id = history.invoke_write(0, KEY, 1);
    history.complete_write(id);
    history.complete_write(id);
}

#[test]
fn concurrent_recording_of_a_real_register_is_linearizable() {
    const CLIENTS: usize = 8;
    const OPS_PER_CLIENT: usize = 200;
    const KEYS: u8 = 3;
    const SEED: u64 = 7;
    const WRITE_PROBABILITY: f64 = 0.5;
    let history: History<u8, u64> = History::new();
    let store: Mutex<HashMap<u8, u64>> = Mutex::new(HashMap::new());
    thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (history, store) = (&history, &store);
            scope.spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(SEED + client as u64);
                for i in 0..OPS_PER_CLIENT {
                    let key = rng.random_range(0..KEYS);
                    if rng.random_bool(WRITE_PROBABILITY) {
                        let value = (client * OPS_PER_CLIENT + i) as u64;
                        let id = history.invoke_write(client, key, value);
                        store.lock().unwrap().insert(key, value);
                        history.complete_write(id);
                    } else {
                        let id = history.invoke_read(client, key);
                        let observed = store.lock().unwrap().get(&key).copied();
                        history.complete_read(id, observed);
                    }
                }
            });
        }
    });
    let operations = history.into_operations();
    assert_eq!(operations.len(), CLIENTS * OPS_PER_CLIENT);
    if let Err(violation) = check(&operations) {
        panic!("{violation}");
    }
}

/// Parameters of a simulated execution against a linearizable KV store.
struct Simulation {
    clients: usize,
    keys: u64,
    ops_per_client: usize,
    write_percent: u32,
    unknown_percent: u32,
}

const PERCENT: u32 = 100;
/// Chance that an operation whose outcome is unknown did take effect.
const UNKNOWN_APPLIED_PERCENT: u32 = 50;
const MAX_THINK_TIME: u64 = 5;
const MAX_LATENCY: u64 = 30;

/// Generates a history of a real sequential execution: each operation gets
/// a random interval and an actual linearization point inside it (or none,
/// for some unknown-outcome ones), and reads return what the register held
/// at their point. Written values are unique.
fn simulate(seed: u64, sim: &Simulation) -> Vec<Operation<u64, u64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut operations = Vec::new();
    let mut points: Vec<(u64, usize)> = Vec::new();
    let mut next_value = 0;
    for client in 0..sim.clients {
        let mut now = rng.random_range(0..=MAX_THINK_TIME);
        for _ in 0..sim.ops_per_client {
            let call = now;
            let ret = call + rng.random_range(0..=MAX_LATENCY);
            let key = rng.random_range(0..sim.keys);
            let unknown = rng.random_ratio(sim.unknown_percent, PERCENT);
            let op = if rng.random_ratio(sim.write_percent, PERCENT) {
                next_value += 1;
                Op::Write(next_value)
            } else {
                Op::Read(None)
            };
            if !unknown || rng.random_ratio(UNKNOWN_APPLIED_PERCENT, PERCENT) {
                points.push((rng.random_range(call..=ret), operations.len()));
            }
            operations.push(Operation::new(
                client,
                key,
                op,
                call,
                (!unknown).then_some(ret),
            ));
            now = ret + rng.random_range(1..=MAX_THINK_TIME);
        }
    }
    points.sort_unstable();
    let mut registers: HashMap<u64, u64> = HashMap::new();
    for (_, index) in points {
        let operation = &mut operations[index];
        match &mut operation.op {
            Op::Write(value) => {
                registers.insert(operation.key, *value);
            }
            Op::Read(observed) => *observed = registers.get(&operation.key).copied(),
        }
    }
    operations
}

/// Makes one completed read return the value of a completed write `old`
/// such that `old` precedes a completed write `new` of the same key which
/// precedes the read. Written values are unique, so the result cannot be
/// linearizable. Returns the index of the corrupted read.
fn corrupt_stale_read(operations: &mut [Operation<u64, u64>], rng: &mut ChaCha8Rng) -> usize {
    let completed_writes: Vec<usize> = (0..operations.len())
        .filter(|&i| operations[i].ret.is_some() && matches!(operations[i].op, Op::Write(_)))
        .collect();
    let start = rng.random_range(0..operations.len());
    for read in (start..operations.len()).chain(0..start) {
        if operations[read].ret.is_none() || !matches!(operations[read].op, Op::Read(_)) {
            continue;
        }
        let precedes = |earlier: usize, later: usize| {
            operations[earlier].key == operations[later].key
                && operations[earlier].precedes(&operations[later])
        };
        let Some(old) = completed_writes
            .iter()
            .filter(|&&new| precedes(new, read))
            .find_map(|&new| {
                completed_writes
                    .iter()
                    .copied()
                    .find(|&old| precedes(old, new))
            })
        else {
            continue;
        };
        let Op::Write(old_value) = operations[old].op else {
            unreachable!("completed_writes only holds writes")
        };
        assert_ne!(operations[read].op, Op::Read(Some(old_value)));
        operations[read].op = Op::Read(Some(old_value));
        return read;
    }
    panic!("no read can be made provably stale");
}

fn assert_linearizable(operations: &[Operation<u64, u64>]) {
    if let Err(violation) = check(operations) {
        panic!("a real execution was rejected:\n{violation}");
    }
}

#[test]
fn random_single_register_executions_pass_and_corruptions_fail() {
    const SEEDS: u64 = 40;
    let sim = Simulation {
        clients: 5,
        keys: 1,
        ops_per_client: 60,
        write_percent: 40,
        unknown_percent: 10,
    };
    for seed in 0..SEEDS {
        let mut operations = simulate(seed, &sim);
        assert_linearizable(&operations);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        corrupt_stale_read(&mut operations, &mut rng);
        assert!(
            check(&operations).is_err(),
            "seed {seed}: corruption accepted"
        );
    }
}

#[test]
fn random_multi_key_executions_with_many_clients_pass_and_corruptions_fail() {
    const SEEDS: u64 = 3;
    let sim = Simulation {
        clients: 16,
        keys: 5,
        ops_per_client: 190,
        write_percent: 50,
        unknown_percent: 5,
    };
    for seed in 0..SEEDS {
        let mut operations = simulate(seed, &sim);
        assert_linearizable(&operations);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let corrupted = corrupt_stale_read(&mut operations, &mut rng);
        let violation = check(&operations).unwrap_err();
        assert_eq!(violation.key, operations[corrupted].key);
    }
}

/// Exhaustive reference: tries every order of the operations that respects
/// real time, where unknown-outcome writes may be left out and
/// unknown-outcome reads are ignored.
fn brute_force_linearizable(operations: &[Operation<&str, u64>]) -> bool {
    fn extend(operations: &[&Operation<&str, u64>], used: &mut [bool], state: Option<u64>) -> bool {
        let unused_mandatory = |used: &[bool], j: usize| !used[j] && operations[j].ret.is_some();
        if !(0..operations.len()).any(|j| unused_mandatory(used, j)) {
            return true;
        }
        for i in 0..operations.len() {
            let blocked = (0..operations.len()).any(|j| {
                j != i && unused_mandatory(used, j) && operations[j].precedes(operations[i])
            });
            if used[i] || blocked {
                continue;
            }
            let next = match operations[i].op {
                Op::Write(value) => Some(value),
                Op::Read(observed) if observed == state => state,
                Op::Read(_) => continue,
            };
            used[i] = true;
            let found = extend(operations, used, next);
            used[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    let relevant: Vec<_> = operations
        .iter()
        .filter(|op| op.ret.is_some() || matches!(op.op, Op::Write(_)))
        .collect();
    extend(&relevant, &mut vec![false; relevant.len()], None)
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    const CASES: usize = 3000;
    const MAX_OPS: usize = 7;
    const MAX_CALL: u64 = 20;
    const MAX_DURATION: u64 = 10;
    const VALUES: u64 = 3;
    const SEED: u64 = 2024;
    const KNOWN_PERCENT: u32 = 75;
    const WRITE_SHARE: f64 = 0.5;
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..CASES {
        let history: Vec<_> = (0..rng.random_range(1..=MAX_OPS))
            .map(|client| {
                let call = rng.random_range(0..=MAX_CALL);
                let ret = rng
                    .random_ratio(KNOWN_PERCENT, PERCENT)
                    .then(|| call + rng.random_range(0..=MAX_DURATION));
                let value = rng.random_range(0..=VALUES);
                let op = if rng.random_bool(WRITE_SHARE) {
                    Op::Write(value.max(1))
                } else {
                    Op::Read((value > 0).then_some(value))
                };
                Operation::new(client, KEY, op, call, ret)
            })
            .collect();
        let expected = brute_force_linearizable(&history);
        assert_eq!(
            check(&history).is_ok(),
            expected,
            "case {case}: {history:#?}"
        );
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(
        accepted > CASES / 10 && rejected > CASES / 10,
        "{accepted} vs {rejected}"
    );
}
