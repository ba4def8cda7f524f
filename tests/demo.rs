//! `scripts/demo.sh`, the README's first command, run as a user would (with `--no-setup`, and
//! `FTPCT_BIN` set to this test's binary instead of a release build): the lab in network
//! namespaces, the active-mode download failing without an ALG (the script fails if it does
//! not), succeeding through ftpct, and `ftpct sessions` / `ftpct list` while a session waits
//! for its data connection. Needs root and what `scripts/setup.sh` installs (vsftpd, curl,
//! python3, iptables, iproute2); a few seconds.

use std::path::Path;
use std::process::{Command, Stdio};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The lines of `out` after the line `header`, up to the next line starting with `stop`.
fn section<'a>(out: &'a str, header: &str, stop: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with(stop))
        .collect()
}

#[test]
fn demo_shows_the_failure_without_alg_and_the_success_with_ftpct() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("the demo builds network namespaces: run this test as root");
    }
    let out = Command::new("bash")
        .arg(Path::new(MANIFEST_DIR).join("scripts/demo.sh"))
        .arg("--no-setup")
        .env("FTPCT_BIN", env!("CARGO_BIN_EXE_ftpct"))
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/demo.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let all = format!("{stdout}\n{stderr}");

    // Without an ALG the server refuses the private address.
    assert!(
        stdout.contains("-> failed without an ALG, as expected"),
        "{all}"
    );
    let before_ftpct = &stdout[..stdout.find("starting ftpct").expect("the ftpct step")];
    assert!(
        before_ftpct.contains("< 500 Illegal PORT command."),
        "no refusal without an ALG:\n{all}"
    );
    assert!(before_ftpct.contains("FAIL: curl port small.txt"), "{all}");

    // Through ftpct the same download works.
    let after = &stdout[stdout.find("with ftpct: the same download").unwrap()..];
    assert!(after.contains("< 200 PORT command successful"), "{all}");
    assert!(after.contains("OK curl port small.txt"), "{all}");
    assert!(after.contains("-> succeeded through ftpct"), "{all}");

    // The waiting session and its expectation, rewritten to the gateway's public address.
    let sessions = section(&stdout, "# ftpct sessions", "#");
    assert!(
        sessions.iter().any(|l| l.contains("client=10.77.100.102:")
            && l.contains("server=203.0.113.2:21")
            && l.contains("snat=203.0.113.1:")
            && l.contains("state=open")
            && l.contains("expectations=1")),
        "ftpct sessions:\n{}\n{all}",
        sessions.join("\n")
    );
    let list = section(&stdout, "# ftpct list", "server<");
    assert!(
        list.iter().any(|l| l.contains("src=203.0.113.2")
            && l.contains("dst=203.0.113.1")
            && l.trim_end().ends_with("ftp")),
        "ftpct list:\n{}\n{all}",
        list.join("\n")
    );
    assert!(
        stdout.contains("received 29 bytes over the data connection"),
        "{all}"
    );
    assert!(stdout.contains("expect_used 2"), "{all}");

    // Nothing left behind.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(!netns.contains("ftpctdemo"), "namespaces left: {netns}");
}
