//! The conntrack table full when ftpct creates a data connection's entry (ctnetlink ENOMEM).
//!
//! `nf_conntrack_max` is one value for the whole machine (read-only inside a network
//! namespace), so this test lowers it for a few seconds and puts it back (also on failure). It is
//! alone in its test binary because cargo runs test binaries one after another: no other lab
//! of this suite makes connections meanwhile. The test namespaces' counts are their own; the
//! host's namespace keeps its entries (only new ones beyond the limit would be refused there).
//!
//! Needs root, like the e2e tests (it fails, never skips, without it).

mod common;

use common::{Alg, Lab, Topology};

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Puts `nf_conntrack_max` back when dropped.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(MAX, &self.0) {
            eprintln!("cannot restore {MAX} to {}: {e}", self.0.trim());
        }
    }
}

/// With the table full, the data connection's entry cannot be created: ftpct says so, with
/// the fix (raise `nf_conntrack_max`), counts it, and goes on: once there is room again, the
/// next session's transfer works.
#[test]
fn conntrack_table_full_is_reported_with_the_fix() {
    let test = "conntrack_table_full_is_reported_with_the_fix";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    let before = std::fs::read_to_string(MAX).expect(MAX);
    let restore = Restore(before.clone());
    // The gateway holds no entry now; its control connection will be the only one (assured, so
    // the kernel cannot evict it to make room).
    lab.gw(&["conntrack", "-F"]);
    std::fs::write(MAX, "1").expect("lower nf_conntrack_max");
    // Passive: the client's data SYN reaches ftpct, whose create fails; the client's connect
    // then times out (the SYN finds no room either) and the step expects exactly that.
    let r = lab.ftpscript(4, None, &["login", "retrfail:pasv:small.txt", "quit"]);
    drop(restore);
    assert_eq!(
        std::fs::read_to_string(MAX).expect(MAX).trim(),
        before.trim(),
        "[{test}] nf_conntrack_max not restored"
    );
    assert!(r.ok(), "[{test}] {r}");
    let st = lab.ftpct_stats();
    assert!(st.get("ct_create_errors") >= 1, "[{test}] {}", st.text);
    let log = lab.ftpct_log();
    let line = log
        .lines()
        .find(|l| l.contains("cannot admit the data connection"))
        .unwrap_or_else(|| panic!("[{test}] no error line:\n{log}"));
    assert!(
        line.contains("conntrack table is full") && line.contains("nf_conntrack_max"),
        "[{test}] the line does not say what to do: {line}"
    );
    // Room again: a new session works.
    let r = lab.ftpscript(10, None, &["login", "retr:pasv:small.txt", "quit"]);
    assert!(r.ok(), "[{test}] after the limit was raised again: {r}");
}
