//! Concurrent client workloads whose history is checked for
//! linearizability: seeded random puts and gets on a few keys.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use flotilla_raftstore::store::{Client, ClientConfig, Cluster};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::harness::is_unknown_outcome;
use crate::linearizability::{History, check};

/// The shape of a history workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Client threads.
    pub clients: usize,
    /// Keys they share (`0..keys`, 8-byte big-endian).
    pub keys: u64,
    /// Operations each client runs.
    pub ops_per_client: usize,
    /// Pause before each operation.
    pub pause: Duration,
    /// Seed of every client's choices.
    pub seed: u64,
}

/// The history tests' seed: `SIM_SEED` from the environment replays one,
/// else `default`.
pub fn history_seed(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Starts the workload's client threads doing seeded random puts and gets
/// through `client`, recording every operation in `history`: a write whose
/// outcome is unknown stays pending, a definite error fails it.
pub fn spawn_history_clients(
    client: &Arc<Client>,
    history: &Arc<History<u64, u64>>,
    w: Workload,
) -> Vec<thread::JoinHandle<()>> {
    (0..w.clients)
        .map(|c| {
            let (history, client) = (history.clone(), client.clone());
            thread::spawn(move || {
                let mut rng = ChaCha8Rng::seed_from_u64(w.seed ^ c as u64);
                for n in 0..w.ops_per_client {
                    thread::sleep(w.pause);
                    let key = rng.random_range(0..w.keys);
                    let kb = key.to_be_bytes();
                    if rng.random_bool(0.5) {
                        let value = (c * w.ops_per_client + n) as u64 + 1;
                        let id = history.invoke_write(c, key, value);
                        match client.put(&kb, &value.to_be_bytes()) {
                            Ok(()) => history.complete_write(id),
                            Err(e) if is_unknown_outcome(&e) => {} // stays pending
                            Err(_) => history.fail(id),
                        }
                    } else {
                        let id = history.invoke_read(c, key);
                        match client.get(&kb) {
                            Ok(v) => history.complete_read(
                                id,
                                v.map(|b| u64::from_be_bytes(b.try_into().expect("8-byte value"))),
                            ),
                            Err(_) => history.fail(id),
                        }
                    }
                }
            })
        })
        .collect()
}

/// Joins the clients and checks the history is linearizable per key, with
/// more than `min_ops` operations recorded. Panics naming the seed if not.
pub fn check_history(
    workers: Vec<thread::JoinHandle<()>>,
    history: &History<u64, u64>,
    seed: u64,
    min_ops: usize,
) {
    for w in workers {
        w.join().expect("client thread");
    }
    let ops = history.operations();
    assert!(
        ops.len() > min_ops,
        "too few operations completed: {}",
        ops.len()
    );
    if let Err(v) = check(&ops) {
        panic!("history not linearizable (seed {seed}): {v}");
    }
}

/// A client for history workloads: short timeouts, many attempts.
pub fn history_client(cluster: &Cluster) -> Arc<Client> {
    Arc::new(Client::new(
        cluster.stores(),
        cluster.regions(),
        ClientConfig {
            request_timeout: Duration::from_millis(500),
            max_attempts: 10,
            ..Default::default()
        },
    ))
}

/// The values of a workload's keys (`0..keys`) in store `store`'s engine,
/// read directly (`None` where absent): to compare what the stores hold
/// once a history is done.
pub fn stored_values(cluster: &Cluster, store: u64, keys: u64) -> Vec<Option<Vec<u8>>> {
    let engine = cluster.store(store).expect("running store").engine();
    (0..keys)
        .map(|k| {
            engine
                .get(
                    flotilla_engine::Cf::Default,
                    &flotilla_engine::keys::data_key(&k.to_be_bytes()),
                )
                .expect("read data")
        })
        .collect()
}
