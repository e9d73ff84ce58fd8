//! Bad input to the `flotilla` command line: out-of-range arguments are
//! refused by the parser with a usage error (exit code 2) naming the
//! argument, before anything is bootstrapped. (`flotilla demo --regions
//! 100000000` used to start bootstrapping until the machine ran out of
//! memory; `--split-storm` took any thread count.)

use std::process::Command;

/// Exit code of a usage error (clap's).
const USAGE_ERROR: i32 = 2;

fn flotilla(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .expect("run flotilla");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_refuses_out_of_range_arguments() {
    for (arg, value) in [
        ("--regions", "0"),
        ("--regions", "100000000"),
        ("--clients", "0"),
        ("--clients", "99999"),
        ("--write-ratio", "1.5"),
        ("--write-ratio", "-0.1"),
        ("--base-tick-ms", "0"),
        ("--split-size-kib", "0"),
        ("--split-storm", "100000"),
        ("--merge-storm", "100000"),
        ("--hibernate-idle-ticks", "-1"),
        ("--hibernate-idle-ticks", "100000000"),
        ("--duration", "forever"),
    ] {
        let (code, stderr) = flotilla(&["demo", &format!("{arg}={value}")]);
        assert_eq!(code, Some(USAGE_ERROR), "demo {arg} {value}: {stderr}");
        assert!(stderr.contains(arg), "demo {arg} {value}: {stderr}");
    }
}

/// `demo --hibernate-idle-ticks 0` turns hibernation off: no peer sleeps,
/// every peer is awake at the end. (The same run with the store's default
/// puts most of its regions to sleep: one client touches each of 200
/// regions about every 20 ticks.)
#[test]
fn demo_hibernate_idle_ticks_zero_turns_hibernation_off() {
    let hibernation = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "demo",
                "--regions=200",
                "--clients=1",
                "--duration=1s",
                "--base-tick-ms=10",
            ])
            .args(extra)
            .output()
            .expect("run flotilla");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find(|l| l.starts_with("hibernation"))
            .unwrap_or_else(|| panic!("no hibernation line in {stdout}"))
            .to_string()
    };
    let default = hibernation(&[]);
    assert!(!default.contains(" 0 sleeps"), "{default}");
    let off = hibernation(&["--hibernate-idle-ticks=0"]);
    assert!(off.contains(" 0 sleeps, 0 wakes"), "{off}");
    // 200 regions x 3 stores.
    assert!(off.ends_with("600 peers awake at the end"), "{off}");
}
