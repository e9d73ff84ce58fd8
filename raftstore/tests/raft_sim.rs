//! Deterministic simulation of the consensus core (DESIGN.md §8, layer 3).
//!
//! Each test sweeps seeds over one group shape; every seed is a full run:
//! faults for `SIM_STEPS` steps (safety checked after every step), then a
//! fault-free liveness phase; half the runs model the store's hibernation
//! and store liveness and end with a timed failover of their leader's node
//! (see `raft_sim/sleep.rs`). Environment:
//!
//! - `SIM_SEEDS=N`: run seeds `0..N` in every sweep (default: the CI count).
//! - `SIM_SEED=S`: replay seed `S` only.
//! - `SIM_STEPS=K`: steps per run (default 2,000).
//! - `SIM_TRACE=1`: print the run's trace to stderr on failure (and, with
//!   `SIM_SEED`, on success too).
//!
//! e.g. `SIM_SEEDS=5000 cargo test --release -p flotilla-raftstore sim`.

#[path = "raft_sim/mod.rs"]
mod sim;

use sim::{Mutation, Shape, Stats, run_seed};

/// Seeds each of the four CI sweeps runs (4 × 125 = 500 seeds).
const CI_SEEDS_PER_SWEEP: u64 = 125;
/// Steps per run in CI.
const CI_STEPS: usize = 2_000;
/// The seed the determinism test replays.
const DETERMINISM_SEED: u64 = 42;
/// Seeds that once failed, replayed in every run: (seed, voters, learners).
/// 4200: a voter that missed a conf change bumped its term while cut off;
/// its vote requests went to its stale voter set and never reached the
/// leader, which never learned the term (stale appends were unanswered
/// without check-quorum or pre-vote).
const REGRESSION_SEEDS: &[(u64, u64, u64)] = &[(4200, 5, 0)];
/// Seeds the checker self-test may need before the broken application is
/// caught.
const MUTATION_MAX_SEEDS: u64 = 200;
/// Sweeps at least this long must show every fault kind at work.
const COVERAGE_MIN_SEEDS: u64 = 20;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

fn steps() -> usize {
    env_u64("SIM_STEPS").map_or(CI_STEPS, |s| s as usize)
}

/// Runs one seed; panics with the seed and the violated property.
fn run_one(seed: u64, shape: Shape, steps: usize) -> Stats {
    let want_trace = std::env::var_os("SIM_TRACE").is_some();
    match run_seed(seed, shape, steps, want_trace, Mutation::None) {
        Ok((stats, trace)) => {
            if let Some(t) = trace.filter(|_| std::env::var_os("SIM_SEED").is_some()) {
                eprintln!("{t}");
            }
            stats
        }
        Err((v, trace)) => {
            if let Some(t) = trace {
                eprintln!("{t}");
            }
            panic!(
                "sim failed with SIM_SEED={seed} (shape {} voters + {} learners, {steps} steps): {v}",
                shape.voters, shape.learners
            );
        }
    }
}

/// Runs the seeds selected by the environment over `shape` and checks that
/// the faults really happened.
fn sweep(shape: Shape) {
    let steps = steps();
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(CI_SEEDS_PER_SWEEP)).collect(),
    };
    let mut total = Stats::default();
    for &seed in &seeds {
        total += run_one(seed, shape, steps);
    }
    eprintln!(
        "{} seeds x {steps} steps over {shape:?}: {total:?}",
        seeds.len()
    );
    if seeds.len() as u64 >= COVERAGE_MIN_SEEDS {
        let t = total;
        for (what, n) in [
            ("deliveries", t.delivered),
            ("losses", t.dropped),
            ("duplicates", t.duplicated),
            ("applied conf changes", t.conf_applied),
            ("transfers", t.transfers),
            ("partitions", t.partitions),
            ("crashes", t.crashes),
            ("mid-ready crashes", t.mid_ready_crashes),
            ("restarts", t.restarts),
            ("compactions", t.compactions),
            ("snapshots", t.snapshots),
            ("hibernating runs", t.hibernating_runs),
            ("nodes asleep", t.sleeps),
            ("wakes", t.wakes),
            ("deferred sleeps", t.deferred_sleeps),
            ("support withdrawals", t.withdrawals),
            ("timed failovers", t.failovers),
        ] {
            assert!(n > 0, "the sweep over {shape:?} had no {what}: {t:?}");
        }
        assert!(
            t.leader_terms > seeds.len() as u64,
            "leadership never changed hands: {t:?}"
        );
    }
}

/// Three voters under every fault; conf changes add learners, promote,
/// demote and remove voters (v1 and v2, joint with auto and explicit leave).
///
/// checklist: election-1, election-3, election-5, election-7, election-8,
/// prevote-2, quorum-1, log-2, log-4, log-5, log-6, log-7, log-8, log-9,
/// log-12, log-13, log-14, snap-1, snap-2, snap-3, snap-4, snap-5, conf-1,
/// conf-2, conf-3, conf-4, conf-5, conf-6, conf-7, conf-8, transfer-1,
/// transfer-4, ready-2, ready-3, ready-4, ready-5
#[test]
fn sim_three_voters() {
    sweep(Shape {
        voters: 3,
        learners: 0,
    });
}

/// Three voters and a learner from the start.
///
/// checklist: election-10, log-2, log-4, log-5, log-12, snap-1, snap-3,
/// conf-1, conf-3, conf-4, conf-8, ready-2, ready-3, ready-5
#[test]
fn sim_three_voters_one_learner() {
    sweep(Shape {
        voters: 3,
        learners: 1,
    });
}

/// Five voters: two may be down at once.
///
/// checklist: election-1, election-3, election-5, election-7, prevote-2,
/// quorum-1, log-2, log-3, log-4, log-5, log-6, log-12, log-14, snap-1,
/// conf-1, conf-3, conf-5, conf-6, transfer-1, ready-2, ready-3, ready-5
#[test]
fn sim_five_voters() {
    sweep(Shape {
        voters: 5,
        learners: 0,
    });
}

/// Five voters and a learner.
///
/// checklist: election-10, log-2, log-4, log-5, log-12, snap-1, snap-3,
/// conf-1, conf-3, conf-7, ready-2, ready-5
#[test]
fn sim_five_voters_one_learner() {
    sweep(Shape {
        voters: 5,
        learners: 1,
    });
}

/// The same seed twice gives byte-for-byte the same trace of every event.
///
/// Replays [`REGRESSION_SEEDS`] (the sweeps' seeds change with the
/// implementation's message pattern; these stay pinned).
///
/// checklist: election-7, election-8, conf-1
#[test]
fn sim_regression_seeds() {
    for &(seed, voters, learners) in REGRESSION_SEEDS {
        run_one(seed, Shape { voters, learners }, steps());
    }
}

/// checklist: election-1 (the randomized timeout comes from the seed)
#[test]
fn sim_same_seed_same_trace() {
    let shape = Shape {
        voters: 3,
        learners: 1,
    };
    let run = || match run_seed(DETERMINISM_SEED, shape, CI_STEPS, true, Mutation::None) {
        Ok((_, Some(t))) => t,
        Ok((_, None)) => panic!("tracing was requested"),
        Err((v, _)) => panic!("sim failed with SIM_SEED={DETERMINISM_SEED}: {v}"),
    };
    let (a, b) = (run(), run());
    if let Some((i, (x, y))) = a
        .lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
    {
        panic!("traces differ at line {i}:\n{x}\n{y}");
    }
    assert_eq!(a.len(), b.len(), "one trace is a prefix of the other");
    assert!(a.contains("liveness ok"), "the run ended live");
    let other = run_seed(DETERMINISM_SEED + 1, shape, CI_STEPS, true, Mutation::None)
        .ok()
        .and_then(|(_, t)| t);
    assert_ne!(Some(a), other, "another seed gives another trace");
}

/// The failover check is not vacuous: a store that, on withdrawing support
/// from a dead leader's node, leaves the followers asleep under it (no
/// wake, no campaign) is caught within a few seeds.
///
/// checklist: quorum-2 (the store's hooks on the core: `campaign_now`,
/// `expire_election_clock`, `resume_after_sleep`)
#[test]
fn sim_failover_check_catches_followers_left_asleep() {
    let shape = Shape {
        voters: 3,
        learners: 0,
    };
    let caught = (0..MUTATION_MAX_SEEDS).find_map(|seed| {
        match run_seed(
            seed,
            shape,
            CI_STEPS,
            false,
            Mutation::SleepThroughWithdrawal,
        ) {
            Err((v, _)) if v.property == "failover" => Some((seed, v)),
            _ => None,
        }
    });
    let Some((seed, v)) = caught else {
        panic!("{MUTATION_MAX_SEEDS} seeds of followers left asleep passed the failover check");
    };
    eprintln!("followers left asleep failed at seed {seed}: {v}");
}

/// The checker is not vacuous: an application whose disk loses entries it
/// acknowledged (breaking DESIGN.md §9 rule 1 behind the core's back) is
/// caught by a safety property within a few seeds.
///
/// checklist: log-2, ready-2, ready-5
#[test]
fn sim_checker_catches_lost_acked_entries() {
    let shape = Shape {
        voters: 3,
        learners: 0,
    };
    // A lying disk may also wedge replication (the leader trusts a match the
    // follower lost), which the liveness phase reports; look for a seed
    // where a safety property fires.
    let caught = (0..MUTATION_MAX_SEEDS).find_map(|seed| {
        match run_seed(seed, shape, CI_STEPS, false, Mutation::LoseAckedTail) {
            Err((v, _)) if v.property != "liveness" => Some((seed, v)),
            _ => None,
        }
    });
    let Some((seed, v)) = caught else {
        panic!("{MUTATION_MAX_SEEDS} seeds of a broken application passed the safety checks");
    };
    eprintln!("the broken application failed at seed {seed}: {v}");
}
