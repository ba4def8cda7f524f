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
