//! Three `flotilla server` processes on loopback ports (issue #13's
//! tests): a client that reaches them only over gRPC writes, reads,
//! splits and merges; a graceful stop (SIGTERM) and a restart keep
//! everything; `kill -9` of a minority under load, and of every store at
//! once, loses no acknowledged write and the recorded history is
//! linearizable. Every process is bounded in time and killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_raftstore::store::{Client, ClientConfig, Error, Stores};
use flotilla_server::{NetConfig, RemoteStore};
use flotilla_tests::linearizability::History;
use flotilla_tests::workload::{Workload, check_history, history_seed, spawn_history_clients};

/// The stores of each test cluster.
const STORES: u64 = 3;
/// Regions each cluster starts with.
const REGIONS: u64 = 4;
/// Base tick of the servers' store clocks (fast elections).
const BASE_TICK_MS: u64 = 10;
/// Longest a test waits for the cluster to serve.
const SETTLE: Duration = Duration::from_secs(30);
/// Longest a server may take to exit after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(20);

fn flotilla() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
}

/// `n` distinct free loopback addresses: all `n` ports are held at once
/// and released together for the servers to take. (Taking them one at a
/// time, each released before the next was asked for, once handed the
/// same port out twice: a store's listen address and another store's
/// status port, and the first store could not start.)
fn free_addrs(n: usize) -> Vec<String> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| format!("{}", l.local_addr().expect("a bound address")))
        .collect()
}

/// A cluster of server processes under one directory.
struct Processes {
    dir: PathBuf,
    addrs: Vec<String>,
    /// The stores' status ports.
    status: Vec<String>,
    /// How clients connect (TLS or not).
    net: NetConfig,
    children: Vec<Option<Child>>,
    runtime: tokio::runtime::Runtime,
}

impl Processes {
    /// Writes the stores' configs, bootstraps them and starts them.
    fn start(dir: &Path) -> Processes {
        Self::start_with(dir, "", NetConfig::default())
    }

    /// As [`Processes::start`], each config ending with `extra` (TOML
    /// tables), and clients made with `net`.
    fn start_with(dir: &Path, extra: &str, net: NetConfig) -> Processes {
        let mut addrs = free_addrs(2 * STORES as usize);
        let status = addrs.split_off(STORES as usize);
        let mut stores = String::new();
        for (i, a) in addrs.iter().enumerate() {
            stores.push_str(&format!("[[stores]]\nid = {}\naddr = \"{a}\"\n\n", i + 1));
        }
        for id in 1..=STORES {
            let cfg = format!(
                "store_id = {id}\ndata_dir = \"{}\"\nlisten = \"{}\"\nstatus_listen = \"{}\"\ninitial_regions = {REGIONS}\n\n{stores}[raftstore]\nbase_tick_ms = {BASE_TICK_MS}\n",
                dir.join(format!("store-{id}")).display(),
                addrs[id as usize - 1],
                status[id as usize - 1],
            ) + extra;
            std::fs::write(config_path(dir, id), cfg).expect("write config");
            let out = flotilla()
                .arg("bootstrap")
                .arg("--config")
                .arg(config_path(dir, id))
                .output()
                .expect("run flotilla bootstrap");
            assert!(
                out.status.success(),
                "bootstrap of store {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut p = Processes {
            dir: dir.to_path_buf(),
            addrs,
            status,
            children: (0..STORES).map(|_| None).collect(),
            net,
            runtime: flotilla_server::net_runtime(2).expect("runtime"),
        };
        for id in 1..=STORES {
            p.spawn(id);
        }
        p
    }

    fn spawn(&mut self, id: u64) {
        let log = std::fs::File::create(self.dir.join(format!("store-{id}.log"))).expect("log");
        let child = flotilla()
            .arg("server")
            .arg("--config")
            .arg(config_path(&self.dir, id))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start flotilla server");
        self.children[id as usize - 1] = Some(child);
    }

    /// `kill -9` of store `id`.
    fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.children[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM to store `id`; returns whether it exited by itself, with
    /// success, within [`EXIT_WAIT`].
    fn terminate(&mut self, id: u64) -> bool {
        let Some(mut c) = self.children[id as usize - 1].take() else {
            return false;
        };
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + EXIT_WAIT;
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("store-{id}.log"))).unwrap_or_default()
    }

    /// A client over the stores' client services.
    fn client(&self, cfg: ClientConfig) -> Client {
        let stores = Stores::default();
        for (i, a) in self.addrs.iter().enumerate() {
            stores.insert_remote(RemoteStore::new(
                i as u64 + 1,
                a.clone(),
                self.net.clone(),
                self.runtime.handle().clone(),
            ));
        }
        Client::new(stores, &[], cfg)
    }

    /// Waits until a write goes through.
    fn wait_serving(&self, client: &Client) {
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            if client.put(b"ready", b"1").is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the cluster did not serve within {SETTLE:?}; store 1's log:\n{}",
            self.log(1)
        );
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for id in 1..=STORES {
            self.kill(id);
        }
        if std::thread::panicking() {
            // What the stores said, for the failure's report.
            for id in 1..=STORES {
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
                eprintln!("--- store {id}'s log (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Lines of each store's log a failed test prints.
const LOG_TAIL_LINES: usize = 40;

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("store-{id}.toml"))
}

fn key(i: u64) -> Vec<u8> {
    format!("proc{i:05}").into_bytes()
}

/// Retries `f` while its error may pass by itself or leaves the outcome
/// unknown (callers retry only idempotent operations).
fn retry<T>(what: &str, mut f: impl FnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + SETTLE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(e) if e.is_retryable() || e.is_outcome_unknown() => {}
            Err(Error::Admin(_)) => {}
            Err(e) => panic!("{what}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes, reads, a split and a merge through the client service of three
/// processes; SIGTERM stops each gracefully, and after a restart every
/// write is there.
#[test]
fn three_server_processes_serve_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processes::start(dir.path());
    let client = p.client(ClientConfig::default());
    p.wait_serving(&client);
    for i in 0..100 {
        retry("put", || client.put(&key(i), &i.to_be_bytes()));
    }
    assert_eq!(client.scan(&key(0), &key(100), 200).unwrap().len(), 100);
    let halves = retry("split", || client.split_at(&key(50)));
    assert_eq!(halves.len(), 2);
    let left = client.locate(&key(10)).unwrap();
    let right = client.locate(&key(60)).unwrap();
    assert_ne!(left.id, right.id);
    let merged = retry("merge", || client.merge(right.id, left.id));
    assert_eq!(merged.id, left.id);
    for id in 1..=STORES {
        assert!(
            p.terminate(id),
            "store {id} did not exit cleanly on SIGTERM:\n{}",
            p.log(id)
        );
        assert!(p.log(id).contains("closed"), "store {id}:\n{}", p.log(id));
    }
    for id in 1..=STORES {
        p.spawn(id);
    }
    let client = p.client(ClientConfig::default());
    p.wait_serving(&client);
    for i in 0..100 {
        let got = retry("get", || client.get(&key(i)));
        assert_eq!(got, Some(i.to_be_bytes().to_vec()), "key {i}");
    }
}

fn workload() -> Workload {
    Workload {
        clients: 4,
        keys: 3,
        ops_per_client: 150,
        pause: Duration::from_millis(10),
        seed: history_seed(13),
    }
}

/// Operations a history must complete at least.
const MIN_OPS: usize = 60;

fn history_client(p: &Processes) -> Arc<Client> {
    Arc::new(p.client(ClientConfig {
        request_timeout: Duration::from_millis(500),
        max_attempts: 10,
        ..ClientConfig::default()
    }))
}

/// `kill -9` of one store (a minority) under a concurrent workload, then
/// its restart; later `kill -9` of all three at once and their restart.
/// Every acknowledged write must stay and nothing failed may appear: the
/// recorded history must be linearizable per key.
#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processes::start(dir.path());
    let client = history_client(&p);
    p.wait_serving(&client);
    let w = workload();
    let history: Arc<History<u64, u64>> = Arc::new(History::new());
    let workers = spawn_history_clients(&client, &history, w);
    std::thread::sleep(Duration::from_millis(200));
    p.kill(2);
    std::thread::sleep(Duration::from_millis(300));
    p.spawn(2);
    std::thread::sleep(Duration::from_millis(300));
    for id in 1..=STORES {
        p.kill(id);
    }
    std::thread::sleep(Duration::from_millis(100));
    for id in 1..=STORES {
        p.spawn(id);
    }
    check_history(workers, &history, w.seed, MIN_OPS);
}

fn ctl(args: &[&str]) -> (bool, String, String) {
    let out = flotilla()
        .arg("ctl")
        .args(args)
        .output()
        .expect("run flotilla ctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `flotilla ctl` with `args` until it succeeds (admin commands may
/// be refused for a while: a leader being elected, a change pending).
fn ctl_ok(args: &[&str]) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (ok, out, err) = ctl(args);
        if ok {
            return out;
        }
        assert!(Instant::now() < deadline, "flotilla ctl {args:?}: {err}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `flotilla ctl` against a running cluster (store, region list and
/// show, split, transfer leader, remove and add a peer, compact log) and,
/// once stopped, against a store's data directory (region list, raft
/// state, scan); a bad command is refused with exit code 2.
#[test]
fn ctl_drives_a_running_cluster_and_reads_a_stopped_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Processes::start(dir.path());
    let client = p.client(ClientConfig::default());
    p.wait_serving(&client);
    for i in 0..20 {
        retry("put", || client.put(&key(i), &i.to_be_bytes()));
    }
    let host = p.addrs[0].clone();
    let on = |rest: &[&str]| -> String {
        let mut args = vec!["--host", host.as_str()];
        args.extend_from_slice(rest);
        ctl_ok(&args)
    };
    let store = on(&["store"]);
    assert!(store.starts_with("store 1 of cluster 1"), "{store}");
    assert_eq!(
        store.matches("  store ").count(),
        STORES as usize,
        "{store}"
    );
    let before = on(&["region", "list"]);
    assert_eq!(before.lines().count(), REGIONS as usize, "{before}");
    let split = on(&["split", "--key", "proc00010"]);
    assert_eq!(split.lines().count(), 2, "{split}");
    let after = on(&["region", "list"]);
    assert_eq!(after.lines().count(), REGIONS as usize + 1, "{after}");
    let region = client.locate(&key(10)).unwrap().id.to_string();
    let show = on(&["region", "show", &region]);
    assert!(show.contains("\"proc00010\""), "{show}");
    let moved = on(&["transfer-leader", "--region", &region, "--store", "2"]);
    assert!(moved.contains("store 2"), "{moved}");
    let removed = on(&["remove-peer", "--region", &region, "--store", "3"]);
    assert!(!removed.contains("@store3"), "{removed}");
    let added = on(&["add-peer", "--region", &region, "--store", "3"]);
    assert!(
        added.contains("@store3") && !added.contains("learner"),
        "{added}"
    );
    on(&["compact-log", "--region", &region, "--index", "1"]);
    let (ok, _, err) = ctl(&["--host", &host, "scan"]);
    assert!(!ok && err.contains("--data-dir"), "{err}");
    for id in 1..=STORES {
        assert!(p.terminate(id), "store {id}:\n{}", p.log(id));
    }
    let data = dir.path().join("store-1");
    let data = data.to_str().unwrap();
    let offline = ctl_ok(&["--data-dir", data, "region", "list"]);
    assert_eq!(offline.lines().count(), REGIONS as usize + 1, "{offline}");
    assert!(offline.contains("Normal"), "{offline}");
    let state = ctl_ok(&["--data-dir", data, "raft-state", "--region", &region]);
    assert!(
        state.contains("raft state: term") && state.contains("apply state"),
        "{state}"
    );
    let scan = ctl_ok(&[
        "--data-dir",
        data,
        "scan",
        "--start",
        "proc",
        "--limit",
        "5",
    ]);
    assert_eq!(scan.lines().count(), 5, "{scan}");
    assert!(scan.starts_with("\"proc00000\" = "), "{scan}");
    let (ok, _, err) = ctl(&["region", "list"]);
    assert!(!ok && err.contains("--host"), "{err}");
}

/// `GET path` on `addr` over plain HTTP/1.1 (waiting for the port to
/// open); the response's body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    // The store may still be starting (its status port opens last).
    let deadline = Instant::now() + SETTLE;
    let mut s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("status port {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    s.set_read_timeout(Some(SETTLE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read the response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `line_start` (a metric name with its labels).
fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {line_start} in:\n{metrics}"))
}

/// The status port: `/metrics` in Prometheus text with the raft traffic,
/// fsyncs, latency histograms and admin commands of real work, and no
/// per-region label; `/status` as JSON.
#[test]
fn the_status_port_exports_metrics_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let p = Processes::start(dir.path());
    let client = p.client(ClientConfig::default());
    p.wait_serving(&client);
    for i in 0..50 {
        retry("put", || client.put(&key(i), &i.to_be_bytes()));
    }
    retry("split", || client.split_at(&key(25)));
    let splits: f64 = (1..=STORES)
        .map(|id| {
            let m = http_get(&p.status[id as usize - 1], "/metrics");
            m.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "flotilla_admin_commands_total{cmd=\"batch_split\",result=\"ok\"}",
                    )?
                    .trim()
                    .parse::<f64>()
                    .ok()
                })
                .unwrap_or(0.0)
        })
        .sum();
    assert!(splits >= 1.0, "no split counted");
    let leader_store = (1..=STORES)
        .find(|&id| {
            let m = http_get(&p.status[id as usize - 1], "/metrics");
            sample(&m, "flotilla_command_seconds_count") > 0.0
        })
        .expect("a store answered commands");
    let m = http_get(&p.status[leader_store as usize - 1], "/metrics");
    assert!(sample(&m, "flotilla_raft_messages_sent_total{type=\"MsgAppend\"}") > 0.0);
    assert!(sample(&m, "flotilla_fsyncs_total") > 0.0);
    assert!(sample(&m, "flotilla_fsync_seconds_count") > 0.0);
    assert!(sample(&m, "flotilla_transport_batches_sent_total") > 0.0);
    assert!(sample(&m, "flotilla_server_messages_received_total") > 0.0);
    assert!(
        m.contains("flotilla_command_seconds_bucket{le=\"+Inf\"}"),
        "{m}"
    );
    let labelled = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| Some(l.split_once('{')?.1.split_once('}')?.0));
    for labels in labelled {
        assert!(!labels.contains("region"), "a per-region label: {labels}");
    }
    let status = http_get(&p.status[0], "/status");
    assert!(status.contains("\"store_id\":1"), "{status}");
    assert!(status.contains("\"stopped\":false"), "{status}");
}

/// The binary's jemalloc options (its `malloc_conf` symbol) take effect:
/// a server process runs exactly one jemalloc background thread, which
/// returns an idle store's freed pages to the OS.
#[cfg(target_os = "linux")]
#[test]
fn a_server_process_runs_one_jemalloc_background_thread() {
    let dir = tempfile::tempdir().unwrap();
    let p = Processes::start(dir.path());
    p.wait_serving(&p.client(ClientConfig::default()));
    let pid = p.children[0].as_ref().expect("store 1 runs").id();
    let names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the server's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    let jemalloc = names.iter().filter(|n| *n == "jemalloc_bg_thd").count();
    assert_eq!(jemalloc, 1, "threads: {names:?}");
}

/// Kills, at the end of a test, a server process that a shell hook
/// started (its pid in a file), so that none outlives the test.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

/// `flotilla load --remote` drives the three processes through one of
/// them: every phase completes, both write phases complete writes and
/// report the stores' fsyncs and wire batches, the kill hook's store
/// loses its regions to the others and the restart hook brings it back.
#[test]
fn load_remote_drives_the_processes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Processes::start(dir.path());
    p.wait_serving(&p.client(ClientConfig::default()));
    let pids: Vec<u32> = p
        .children
        .iter()
        .map(|c| c.as_ref().expect("running").id())
        .collect();
    let kill_cmd = format!(
        "case {{store}} in 1) kill -9 {};; 2) kill -9 {};; 3) kill -9 {};; esac",
        pids[0], pids[1], pids[2]
    );
    let restarted = PidFile(dir.path().join("restarted.pid"));
    let restart_cmd = format!(
        "'{}' server --config '{}/store-{{store}}.toml' >> '{}/store-{{store}}.log' 2>&1 & echo $! > '{}'",
        env!("CARGO_BIN_EXE_flotilla"),
        dir.path().display(),
        dir.path().display(),
        restarted.0.display()
    );
    let out = flotilla()
        .args(["load", "--remote", &p.addrs[1], "--phase-duration", "1s"])
        .args(["--clients", "4", "--write-ratio", "1"])
        .args(["--kill-cmd", &kill_cmd, "--restart-cmd", &restart_cmd])
        .output()
        .expect("run flotilla load --remote");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in [
        "(a) election (remote)",
        "(b) idle (remote)",
        "(c) uniform writes (remote)",
        "(d) hot-spot writes (remote)",
        "(e) kill (remote)",
        "(f) restart (remote)",
    ] {
        assert!(stdout.contains(phase), "{stdout}");
    }
    for row in [
        "all its regions with a new leader",
        "answers its client service",
        "peers loaded",
        "every region with a leader",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row {row:?}: {stdout}"));
        assert!(!line.contains("not within"), "{line}");
    }
    // The restarted store serves: the cluster answers from every store.
    let client = p.client(ClientConfig::default());
    retry("put after the restart", || client.put(&key(1), b"after"));
    let elected = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("every region with a leader"))
        .expect("an election row");
    assert!(!elected.contains("not within"), "{elected}");
    // The idle table has a row per store process, each with its RSS and
    // CPU read from that process.
    let store_rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("store ") && l.contains("wire batches/s"))
        .collect();
    assert_eq!(store_rows.len(), STORES as usize, "{stdout}");
    for row in store_rows {
        assert!(
            row.contains("RSS ") && !row.contains("RSS unknown"),
            "{row}"
        );
        assert!(row.contains("of one core"), "{row}");
    }
    let writes: Vec<u64> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("writes/s"))
        .filter_map(|l| l.split_once('(')?.1.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(writes.len(), 2, "{stdout}");
    assert!(writes.iter().all(|&w| w > 0), "{stdout}");
    assert!(
        stdout.contains("regions (Normal, on the first store)"),
        "{stdout}"
    );
    let batches = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("wire batches/s"))
        .expect("a wire batches row");
    assert!(!batches.trim_end().ends_with(" 0"), "{batches}");
}

/// Writes a CA and a store certificate (names `flotilla` and `store`)
/// under `dir`; returns the `[tls]` table naming them and the client
/// settings with the same certificate.
fn tls_files(dir: &Path) -> (String, NetConfig) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer =
        rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["flotilla".to_string(), "store".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (issuer.pem(), cert.pem(), key.serialize_pem());
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|n| dir.join(n));
    for (p, pem) in paths.iter().zip([&ca_pem, &cert_pem, &key_pem]) {
        std::fs::write(p, pem).unwrap();
    }
    let table = format!(
        "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nallowed_names = [\"store\"]\n",
        paths[0].display(),
        paths[1].display(),
        paths[2].display()
    );
    let net = NetConfig {
        tls: Some(flotilla_server::TlsConfig {
            ca_pem: ca_pem.into_bytes(),
            cert_pem: cert_pem.into_bytes(),
            key_pem: key_pem.into_bytes(),
            server_name: "flotilla".into(),
            allowed_names: vec!["store".into()],
        }),
        ..NetConfig::default()
    };
    (table, net)
}

/// Three processes with `[tls]` in their configs serve a client with the
/// cluster's certificate; `flotilla ctl --tls-from` reaches them and a
/// plaintext ctl does not.
#[test]
fn tls_processes_serve_only_tls_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (table, net) = tls_files(dir.path());
    let p = Processes::start_with(dir.path(), &table, net);
    let client = p.client(ClientConfig::default());
    p.wait_serving(&client);
    retry("put", || client.put(&key(1), b"tls"));
    let config = config_path(dir.path(), 1);
    let out = ctl_ok(&[
        "--host",
        &p.addrs[0],
        "--tls-from",
        config.to_str().unwrap(),
        "store",
    ]);
    assert!(out.starts_with("store 1 of cluster 1"), "{out}");
    let (ok, _, err) = ctl(&["--host", &p.addrs[0], "--timeout", "2s", "store"]);
    assert!(!ok, "a plaintext ctl was served: {err}");
}
