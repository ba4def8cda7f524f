//! Reliability end to end: the daemon restarted (`kill -9`, SIGTERM) or reloaded (SIGHUP) in the
//! middle of an active-mode session fetching 30 files through the NAT gateway, with sequence
//! offsets already in effect. Every file must arrive intact (sha256-checked by the lab), and the
//! daemon's log must show the restore. Needs root, like the e2e tests.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Alg, Lab, Topology};
use nix::sys::signal::Signal;

/// Waits until the daemon has made at least `n` rewrites in one live session.
fn wait_for_rewrites(lab: &Lab, n: u32, test: &str) {
    let t0 = Instant::now();
    loop {
        let out = lab.ftpct_cli("sessions").stdout;
        let most = out
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("rewrites="))
            .filter_map(|v| v.parse::<u32>().ok())
            .max()
            .unwrap_or(0);
        if most >= n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "[{test}] no session reached {n} rewrites; sessions:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn finish(mut child: std::process::Child, test: &str, lab: &Lab) -> String {
    let status = child.wait().expect("wait for the client");
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    assert!(
        status.success(),
        "[{test}] the session did not survive: {status}\n{out}\n--- ftpct log ---\n{}",
        lab.ftpct_log()
    );
    out
}

fn restart_during_session(test: &str, topology: Topology, mode: &str, sig: Signal) {
    let mut lab = Lab::up(test, topology);
    lab.server();
    lab.enable(Alg::Ftpct);
    let child = lab.spawn_sh("many", &[mode, "30", "0.05"]);
    wait_for_rewrites(&lab, 3, test);
    let how = lab.signal_ftpct(sig);
    lab.start_ftpct(&[]);
    let out = finish(child, test, &lab);
    assert!(
        out.contains("OK 30 files"),
        "[{test}] 30 files expected:\n{out}"
    );
    let log = lab.ftpct_log();
    assert!(
        log.contains("state restored") && log.contains("sessions=1"),
        "[{test}] the restarted daemon did not restore the session (first daemon: {how}):\n{log}"
    );
}

#[test]
fn kill9_in_the_middle_of_30_active_transfers_loses_nothing() {
    restart_during_session(
        "kill9_in_the_middle_of_30_active_transfers_loses_nothing",
        Topology::Masq,
        "active",
        Signal::SIGKILL,
    );
}

#[test]
fn sigterm_restart_in_the_middle_of_30_active_transfers_loses_nothing() {
    restart_during_session(
        "sigterm_restart_in_the_middle_of_30_active_transfers_loses_nothing",
        Topology::Masq,
        "active",
        Signal::SIGTERM,
    );
}

#[test]
fn kill9_in_the_middle_of_30_passive_transfers_behind_dnat_loses_nothing() {
    restart_during_session(
        "kill9_in_the_middle_of_30_passive_transfers_behind_dnat_loses_nothing",
        Topology::Dnat,
        "passive",
        Signal::SIGKILL,
    );
}

#[test]
fn sighup_reload_in_the_middle_of_30_active_transfers_keeps_the_session() {
    let test = "sighup_reload_in_the_middle_of_30_active_transfers_keeps_the_session";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    let child = lab.spawn_sh("many", &["active", "30", "0.05"]);
    wait_for_rewrites(&lab, 3, test);
    lab.signal_ftpct(Signal::SIGHUP);
    let out = finish(child, test, &lab);
    assert!(out.contains("OK 30 files"), "[{test}]\n{out}");
    let log = lab.ftpct_log();
    assert!(log.contains("configuration reloaded"), "[{test}]\n{log}");
    assert!(
        !log.contains("state restored"),
        "[{test}] a reload must not restart:\n{log}"
    );
}

/// Expected data ports in `ftpct list` (the `dport=` of each line), sorted.
fn listed_ports(lab: &Lab) -> Vec<u16> {
    let r = lab.ftpct_cli("list");
    r.assert_ok();
    let mut v: Vec<u16> = r
        .stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("dport="))
        .filter_map(|p| p.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// The single tracked session's line of `ftpct sessions`.
#[track_caller]
fn only_session(lab: &Lab, test: &str) -> String {
    let out = lab.ftpct_cli("sessions").stdout;
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('S')).collect();
    assert_eq!(lines.len(), 1, "[{test}] one session expected:\n{out}");
    lines[0].to_string()
}

fn wait_for_file(p: &std::path::Path, test: &str) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "[{test}] the session did not reach {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A policy key changed in the configuration file and SIGHUP in the middle of a live session:
/// the next command of that same session follows the new policy, while the session (same id,
/// its rewrites and sequence offset) and its waiting expectation survive the reload.
///
/// `max_expect_per_session` 1 → 2. Before: PORT 40001 then PORT 40002 leave only 40002 (the
/// first is evicted). Reload. Then PORT 40003 leaves 40002 AND 40003; a transfer on 40004
/// (sha256-checked) evicts the oldest (40002) and uses its own expectation. The PORT lines are
/// rewritten (2 bytes shorter each), so the transfer after the reload also proves the sequence
/// offsets were kept.
#[test]
fn sighup_applies_a_changed_policy_to_the_live_session() {
    let test = "sighup_applies_a_changed_policy_to_the_live_session";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.start_ftpct_with_config("max_expect_per_session = 1\n", &[]);
    let dir = lab.state_dir();
    let mark = |n: &str| dir.join(format!("mark-{n}"));
    let step = |what: &str, n: &str| format!("{what}:{}", mark(n).display());
    let script = lab.spawn_ftpscript(
        10,
        None,
        &[
            "login",
            "cmd:PORT 10,77,100,102,156,65=>200",
            "cmd:PORT 10,77,100,102,156,66=>200",
            &step("mark", "a"),
            &step("waitfor", "b"),
            "cmd:PORT 10,77,100,102,156,67=>200",
            &step("mark", "c"),
            &step("waitfor", "d"),
            "retr:port:big.bin:40004",
            "quit",
        ],
    );

    wait_for_file(&mark("a"), test);
    assert_eq!(listed_ports(&lab), [40002], "[{test}] before the reload");
    let st = lab.ftpct_stats();
    assert_eq!(st.get("expect_evicted"), 1, "[{test}] {}", st.text);
    let before = only_session(&lab, test);
    assert!(
        before.contains("state=open")
            && before.contains("rewrites=2")
            && before.contains("seq_orig=offset:-4"),
        "[{test}] {before}"
    );
    let id = before.split(' ').next().unwrap().to_string();

    let conf = dir.join("ftpct.conf");
    let text = std::fs::read_to_string(&conf).expect("ftpct.conf");
    assert!(text.contains("max_expect_per_session = 1\n"), "{text}");
    std::fs::write(
        &conf,
        text.replace(
            "max_expect_per_session = 1\n",
            "max_expect_per_session = 2\n",
        ),
    )
    .expect("write ftpct.conf");
    lab.signal_ftpct(Signal::SIGHUP);
    let t0 = Instant::now();
    while !lab.ftpct_log().contains("configuration reloaded") {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "[{test}] no reload:\n{}",
            lab.ftpct_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // the session and its expectation survived the reload unchanged
    assert_eq!(listed_ports(&lab), [40002], "[{test}] after the reload");
    let after = only_session(&lab, test);
    assert!(
        after.starts_with(&format!("{id} "))
            && after.contains("rewrites=2")
            && after.contains("seq_orig=offset:-4"),
        "[{test}] before: {before}\nafter:  {after}"
    );

    std::fs::write(mark("b"), "").unwrap();
    wait_for_file(&mark("c"), test);
    // the new limit applies to the same session's next PORT: nothing evicted
    assert_eq!(
        listed_ports(&lab),
        [40002, 40003],
        "[{test}] after PORT 40003 with the new limit"
    );
    assert_eq!(lab.ftpct_stats().get("expect_evicted"), 1, "[{test}]");
    std::fs::write(mark("d"), "").unwrap();

    let out = finish(script, test, &lab);
    assert!(out.contains("OK"), "[{test}] {out}");
    let st = lab.ftpct_stats();
    for (k, v) in [
        ("expect_created", 4),
        ("expect_evicted", 2),
        ("expect_used", 1),
        ("rewrites", 4),
        ("sessions_started", 1),
    ] {
        assert_eq!(st.get(k), v, "[{test}] {k}\n{}", st.text);
    }
    let log = lab.ftpct_log();
    assert!(
        !log.contains("state restored"),
        "[{test}] a reload must not restart:\n{log}"
    );
}
