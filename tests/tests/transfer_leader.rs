//! TransferLeader as an admin command (issue #11 item 6): the leader hands
//! its region to a caught-up voter on request, refuses typed when it may
//! not (no such peer, a stale epoch, a transferee too far behind), and a
//! transfer at the hibernation boundary wakes the region, moves the
//! leadership and lets the region sleep again under its new leader
//! (scale.md T9).

use std::time::Duration;

use flotilla_proto::metapb::RegionEpoch;
use flotilla_proto::raft_cmdpb::{AdminRequest, TransferLeaderRequest, admin_request};
use flotilla_raftstore::store::{
    AdminError, Client, ClientConfig, Cluster, Config, Error, TRANSFER_LEADER_MAX_LAG,
};
use flotilla_tests::harness::{FAST_TICK_MS, eventually, fast_config, leader_store, logger};
use flotilla_tests::requests::{command, propose_to};

/// The region the tests move.
const REGION: u64 = 1;

fn bootstrap(dir: &tempfile::TempDir, regions: u64, cfg: Config) -> Cluster {
    let cluster = Cluster::bootstrap(dir.path(), 3, regions, cfg, &logger()).expect("bootstrap");
    assert!(cluster.wait_for_leaders(regions, Duration::from_secs(30)));
    cluster
}

fn client(cluster: &Cluster) -> Client {
    cluster.client(ClientConfig::default())
}

/// A key of `REGION` (the first region starts at the empty key).
fn key(i: u64) -> Vec<u8> {
    format!("\0tl{i:04}").into_bytes()
}

/// admin.md scenario 14 and §5.3: a transfer to a caught-up voter moves
/// the leadership there, and writes go on; a transfer to the leader
/// itself succeeds; no peer on the store, an unknown region and a stale
/// epoch are refused typed; a transferee cut off for more than
/// `TRANSFER_LEADER_MAX_LAG` entries is refused as lagging, then accepted
/// once it caught up.
#[test]
fn transfer_moves_the_leader_and_refusals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(&dir, 1, fast_config(FAST_TICK_MS));
    let c = client(&cluster);
    let from = leader_store(&cluster, REGION).expect("leader");
    let to = *cluster.store_ids().iter().find(|&&s| s != from).unwrap();
    c.transfer_leader(REGION, to).expect("transfer");
    assert!(
        eventually(|| leader_store(&cluster, REGION) == Some(to)),
        "leadership did not move to store {to}"
    );
    c.put(b"after", b"v").unwrap();
    assert_eq!(c.get(b"after").unwrap().as_deref(), Some(&b"v"[..]));
    c.transfer_leader(REGION, to).expect("to the leader itself");
    assert_eq!(leader_store(&cluster, REGION), Some(to));

    assert_eq!(
        c.transfer_leader(REGION, 99),
        Err(Error::Admin(AdminError::TransfereeNotFound {
            peer_id: 0,
            store_id: 99
        }))
    );
    assert_eq!(c.transfer_leader(77, to), Err(Error::RegionNotFound(77)));
    // A stale conf_ver (TransferLeader checks both epoch fields).
    let region = cluster.regions()[0].clone();
    let mut req = command(&region, to, Vec::new());
    let epoch = region.region_epoch.unwrap();
    req.header.as_mut().unwrap().region_epoch = Some(RegionEpoch {
        conf_ver: epoch.conf_ver + 1,
        ..epoch
    });
    req.admin_request = Some(AdminRequest {
        cmd: Some(admin_request::Cmd::TransferLeader(TransferLeaderRequest {
            peer: region.peers.iter().find(|p| p.store_id == from).copied(),
        })),
    });
    assert!(matches!(
        propose_to(&cluster, to, req, Duration::from_secs(5)),
        Err(Error::EpochNotMatch { .. })
    ));

    // Cut `from` off while the leader appends more than the lag limit.
    let cut = cluster.transport().isolate(from);
    for i in 0..TRANSFER_LEADER_MAX_LAG + 20 {
        c.put(&key(i), b"x").unwrap();
    }
    match c.transfer_leader(REGION, from) {
        Err(Error::Admin(AdminError::TransfereeLagging { lag, max })) => {
            assert!(lag > max, "lag {lag} max {max}");
            assert_eq!(max, TRANSFER_LEADER_MAX_LAG);
        }
        other => panic!("expected TransfereeLagging, got {other:?}"),
    }
    assert_eq!(leader_store(&cluster, REGION), Some(to));
    cluster.transport().remove_filter(cut);
    // Once it caught up, the same transfer is accepted and happens.
    assert!(
        eventually(|| c.transfer_leader(REGION, from).is_ok()
            && leader_store(&cluster, REGION) == Some(from)),
        "the caught-up store never took over"
    );
    for i in 0..TRANSFER_LEADER_MAX_LAG + 20 {
        assert_eq!(c.get(&key(i)).unwrap().as_deref(), Some(&b"x"[..]));
    }
    cluster.shutdown();
}

/// scale.md T9, transfer-leader at the hibernation boundary: a transfer
/// asked of a sleeping leader wakes the region, moves the leadership, the
/// region serves at its new leader and then sleeps again under it (no
/// region left awake or leaderless by the move).
#[test]
fn transfer_of_a_hibernating_region_wakes_moves_and_sleeps_again() {
    const REGIONS: u64 = 4;
    let dir = tempfile::tempdir().unwrap();
    let cluster = bootstrap(
        &dir,
        REGIONS,
        Config {
            base_tick_ms: 20,
            ..Config::default()
        },
    );
    let asleep_everywhere = |region: u64| {
        cluster
            .store_ids()
            .iter()
            .all(|&id| cluster.store(id).unwrap().is_hibernating(region))
    };
    let from = leader_store(&cluster, REGION).expect("leader");
    assert!(
        eventually(|| asleep_everywhere(REGION)),
        "region {REGION} never slept"
    );
    let to = *cluster.store_ids().iter().find(|&&s| s != from).unwrap();
    let c = client(&cluster);
    c.transfer_leader(REGION, to)
        .expect("transfer of a sleeping region");
    assert!(
        eventually(|| leader_store(&cluster, REGION) == Some(to)),
        "leadership did not move to store {to}"
    );
    c.put(b"\0t9", b"v").unwrap();
    assert_eq!(c.get(b"\0t9").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(
        eventually(|| asleep_everywhere(REGION)),
        "region {REGION} did not sleep again under its new leader"
    );
    assert_eq!(leader_store(&cluster, REGION), Some(to));
    cluster.shutdown();
}
