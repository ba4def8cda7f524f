//! End-to-end tests: real FTP clients (curl, lftp, python ftplib) and a real server (vsftpd) in
//! network namespaces, through a gateway with a strict stateful firewall and NAT
//! (`tests/lab/lab.sh`, see `tests/lab/README.md`).
//!
//! Each scenario runs with one of three ALGs in the gateway:
//! - `Alg::KernelHelper`: the kernel's nf_conntrack_ftp + nf_nat_ftp (the reference);
//! - `Alg::Ftpct`: this project's daemon;
//! - `Alg::None`: nothing. Every data connection must then FAIL, which proves that the
//!   scenario is not vacuous (the lab really needs an ALG).
//!
//! The tests need root: without it they FAIL with a message, they never pass silently.
//! Each test builds its own lab with a unique prefix, so they run in parallel.

mod common;

use common::{Alg, Client, Lab, Mode, Run, Topology};

/// Generates the three variants of one scenario. The ftpct variant is ignored until the daemon
/// exists.
macro_rules! alg_tests {
    ($kernel:ident, $none:ident, $ftpct:ident => $scenario:ident($($arg:expr),*)) => {
        #[test]
        fn $kernel() {
            $scenario(stringify!($kernel), Alg::KernelHelper $(, $arg)*)
        }
        #[test]
        fn $none() {
            $scenario(stringify!($none), Alg::None $(, $arg)*)
        }
        #[test]
        fn $ftpct() {
            $scenario(stringify!($ftpct), Alg::Ftpct $(, $arg)*)
        }
    };
}

/// Collects failures of several client runs so that one test reports all of them.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.0.push(msg());
        }
    }
    #[track_caller]
    fn assert_none(self, test: &str) {
        assert!(
            self.0.is_empty(),
            "[{test}] {} failure(s):\n\n{}",
            self.0.len(),
            self.0.join("\n\n==========\n\n")
        );
    }
}

/// What the server's log must show when the gateway rewrote an active-mode command (masq): the
/// gateway's public address, never the client's private one.
fn rewritten_in_server_log(mode: Mode) -> &'static str {
    match mode {
        Mode::Port => "\"PORT 203,0,113,1,",
        Mode::Eprt => "\"EPRT |1|203.0.113.1|",
        _ => unreachable!(),
    }
}

/// Downloads with every client that can be forced to `mode`. With an ALG: byte-exact downloads
/// (lab.sh checks sha256 and that the client used exactly `mode`, no fallback). Without: every
/// client fails, while the control connection alone works (`probe`), and the failure is the
/// expected one where it has a recognisable signature.
fn fetch_scenario(test: &str, alg: Alg, topo: Topology, port: u16, mode: Mode) {
    fetch_scenario_clients(test, alg, topo, port, mode, &Client::ALL)
}

fn fetch_scenario_clients(
    test: &str,
    alg: Alg,
    topo: Topology,
    port: u16,
    mode: Mode,
    clients: &[Client],
) {
    let mut lab = Lab::up_with_port(test, topo, port);
    lab.server();
    lab.enable(alg);
    let clients: Vec<Client> = clients
        .iter()
        .copied()
        .filter(|c| c.supports(topo, mode))
        .collect();
    assert!(!clients.is_empty());
    let mut f = Failures::default();
    if alg.is_some() {
        for c in &clients {
            let r = lab.fetch(*c, mode, "big.bin");
            f.check(r.ok(), || format!("{} {}: {r}", c.name(), mode.name()));
            if topo == Topology::Dnat && mode == Mode::Pasv {
                // the 227 the client saw carries the gateway's public address
                f.check(r.contains("(203,0,113,1,"), || {
                    format!("{}: 227 not rewritten to 203.0.113.1: {r}", c.name())
                });
            }
        }
        if topo == Topology::Masq && mode.is_active() {
            let log = lab.server_log();
            let want = rewritten_in_server_log(mode);
            f.check(log.contains(want), || {
                format!("server log has no {want} (rewritten command):\n{log}")
            });
            f.check(
                !log.contains("10,77,100,102") && !log.contains("10.77.100.102"),
                || format!("the client's private address reached the server:\n{log}"),
            );
        }
    } else {
        lab.probe().assert_ok();
        // Each client waits for its own timeout here: run them concurrently (separate sessions
        // and output files) to keep the suite fast.
        let runs: Vec<(Client, Run)> = std::thread::scope(|sc| {
            let hs: Vec<_> = clients
                .iter()
                .map(|c| {
                    let lab = &lab;
                    sc.spawn(move || (*c, lab.fetch(*c, mode, "small.txt")))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (c, r) in &runs {
            f.check(!r.ok() && r.code != Some(2), || {
                format!(
                    "{} {} succeeded WITHOUT any ALG (test would be vacuous): {r}",
                    c.name(),
                    mode.name()
                )
            });
            expected_failure_signature(&mut f, topo, mode, *c, r);
        }
    }
    f.assert_none(test);
}

/// Where a missing ALG has an unmistakable symptom, check it is that one (and not, say, a broken
/// lab).
fn expected_failure_signature(f: &mut Failures, topo: Topology, mode: Mode, c: Client, r: &Run) {
    match (topo, mode) {
        // vsftpd refuses a PORT/EPRT whose address differs from the control peer (the seed
        // article's "500 Illegal PORT command.").
        (Topology::Masq, Mode::Port | Mode::Eprt) => f.check(r.contains("500 Illegal"), || {
            format!("{}: expected the server's '500 Illegal ...': {r}", c.name())
        }),
        // vsftpd advertises its private address; nothing rewrote it.
        (Topology::Dnat, Mode::Pasv) => f.check(r.contains("(10,77,2,2,"), || {
            format!(
                "{}: expected a 227 with the private 10,77,2,2: {r}",
                c.name()
            )
        }),
        _ => {}
    }
}

// ---- masq: private client behind MASQUERADE --------------------------------------------------

alg_tests!(masq_port_kernel_helper, masq_port_no_alg_fails, masq_port_ftpct
    => fetch_scenario(Topology::Masq, 21, Mode::Port));
alg_tests!(masq_eprt_kernel_helper, masq_eprt_no_alg_fails, masq_eprt_ftpct
    => fetch_scenario(Topology::Masq, 21, Mode::Eprt));
// Passive mode needs no rewrite behind MASQUERADE, but the data connection is NEW in FORWARD
// (policy DROP): without an ALG admitting it as RELATED it fails too.
alg_tests!(masq_pasv_kernel_helper, masq_pasv_no_alg_fails, masq_pasv_ftpct
    => fetch_scenario(Topology::Masq, 21, Mode::Pasv));
alg_tests!(masq_epsv_kernel_helper, masq_epsv_no_alg_fails, masq_epsv_ftpct
    => fetch_scenario(Topology::Masq, 21, Mode::Epsv));

/// Active mode with vsftpd's `connect_from_port_20=NO`: the server's data connection comes from
/// an ephemeral port, not 20.
fn ephemeral_source_scenario(test: &str, alg: Alg) {
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server_with(21, false);
    lab.enable(alg);
    let mut f = Failures::default();
    for c in Client::ALL {
        let r = lab.fetch(c, Mode::Port, "big.bin");
        if alg.is_some() {
            f.check(r.ok(), || format!("{}: {r}", c.name()));
        } else {
            f.check(!r.ok(), || {
                format!("{} succeeded without ALG: {r}", c.name())
            });
        }
    }
    f.assert_none(test);
}

alg_tests!(masq_port_ephemeral_source_kernel_helper, masq_port_ephemeral_source_no_alg_fails,
    masq_port_ephemeral_source_ftpct => ephemeral_source_scenario());

// ---- dnat: server behind DNAT of the control port, advertising its private address -----------

alg_tests!(dnat_pasv_kernel_helper, dnat_pasv_no_alg_fails, dnat_pasv_ftpct
    => fetch_scenario(Topology::Dnat, 21, Mode::Pasv));
alg_tests!(dnat_epsv_kernel_helper, dnat_epsv_no_alg_fails, dnat_epsv_ftpct
    => fetch_scenario(Topology::Dnat, 21, Mode::Epsv));
// Active mode towards a public client: no rewrite, but the server's data connection leaves the
// private net (NEW in FORWARD, and it must be SNATed to the public address).
alg_tests!(dnat_port_kernel_helper, dnat_port_no_alg_fails, dnat_port_ftpct
    => fetch_scenario(Topology::Dnat, 21, Mode::Port));

// ---- v6: routed IPv6, no NAT; EPRT/EPSV must be admitted --------------------------------------

alg_tests!(v6_eprt_kernel_helper, v6_eprt_no_alg_fails, v6_eprt_ftpct
    => fetch_scenario(Topology::V6, 21, Mode::Eprt));
alg_tests!(v6_epsv_kernel_helper, v6_epsv_no_alg_fails, v6_epsv_ftpct
    => fetch_scenario(Topology::V6, 21, Mode::Epsv));

// ---- many transfers in one control session ----------------------------------------------------

/// 30 files in ONE control session, each checked. In masq active (PORT/EPRT alternating) every
/// rewrite SHORTENS the line by 2 bytes; in dnat passive (PASV/EPSV alternating) every 227
/// rewrite LENGTHENS it by 2: the sequence offsets accumulate over the session, under strict
/// TCP tracking with INVALID dropped.
fn many_scenario(test: &str, alg: Alg, topo: Topology, mode: &str) {
    let mut lab = Lab::up(test, topo);
    lab.server();
    lab.enable(alg);
    let r = lab.many(mode, 30);
    if alg.is_some() {
        r.assert_ok();
        assert!(r.stdout.contains("OK 30 files"), "[{test}] {r}");
    } else {
        lab.probe().assert_ok();
        r.assert_fails();
    }
}

alg_tests!(masq_30_files_active_kernel_helper, masq_30_files_active_no_alg_fails,
    masq_30_files_active_ftpct => many_scenario(Topology::Masq, "active"));
alg_tests!(dnat_30_files_passive_kernel_helper, dnat_30_files_passive_no_alg_fails,
    dnat_30_files_passive_ftpct => many_scenario(Topology::Dnat, "passive"));
alg_tests!(v6_30_files_active_kernel_helper, v6_30_files_active_no_alg_fails,
    v6_30_files_active_ftpct => many_scenario(Topology::V6, "active"));

// ---- a PORT/EPRT command split across two TCP segments ---------------------------------------

/// The client sends `PORT a,b,c` and, 50 ms later, `,d,p1,p2\r\n` (TCP_NODELAY), then RETR in
/// active mode. An ALG that reassembles the command line rewrites/admits it; ftpct must.
///
/// The KERNEL HELPER FAILS here (verified on Linux 6.18): nf_conntrack_ftp sees a partial match
/// in the first segment and drops it ("partial matching of `PORT'"); the second segment passes
/// and the server SACKs it, so the client retransmits the first segment alone, which is dropped
/// again, forever: the control connection stalls and the client times out. So the kernel
/// variant asserts the failure (it documents the reference's limitation), like no ALG at all.
fn split_scenario(test: &str, alg: Alg, topo: Topology, mode: Mode) {
    let mut lab = Lab::up(test, topo);
    lab.server();
    lab.enable(alg);
    let r = lab.split(mode, "big.bin");
    match alg {
        Alg::Ftpct => {
            r.assert_ok();
            if topo == Topology::Masq {
                let log = lab.server_log();
                let want = rewritten_in_server_log(mode);
                assert!(
                    log.contains(want),
                    "[{test}] server log has no {want}:\n{log}"
                );
            }
        }
        Alg::KernelHelper => {
            r.assert_fails();
            assert!(
                r.contains("timed out"),
                "[{test}] expected the kernel helper to stall the control connection: {r}"
            );
        }
        Alg::None => {
            lab.probe().assert_ok();
            r.assert_fails();
        }
    }
}

alg_tests!(split_port_kernel_helper_stalls, split_port_no_alg_fails, split_port_ftpct
    => split_scenario(Topology::Masq, Mode::Port));
alg_tests!(v6_split_eprt_kernel_helper_stalls, v6_split_eprt_no_alg_fails, v6_split_eprt_ftpct
    => split_scenario(Topology::V6, Mode::Eprt));

// ---- non-standard control port ----------------------------------------------------------------

/// Control port 2121 (firewall, DNAT-free masq, kernel helper rule and ftpct rules on 2121).
fn port2121_scenario(test: &str, alg: Alg) {
    let modes = [Mode::Port, Mode::Eprt, Mode::Pasv, Mode::Epsv];
    let mut lab = Lab::up_with_port(test, Topology::Masq, 2121);
    lab.server();
    lab.enable(alg);
    let mut f = Failures::default();
    if alg.is_some() {
        for m in modes {
            for c in Client::ALL
                .into_iter()
                .filter(|c| c.supports(Topology::Masq, m))
            {
                let r = lab.fetch(c, m, "big.bin");
                f.check(r.ok(), || format!("{} {}: {r}", c.name(), m.name()));
            }
        }
    } else {
        lab.probe().assert_ok();
        // one client is enough here: the masq_* tests cover all of them without ALG
        for m in modes {
            let r = lab.fetch(Client::Ftplib, m, "small.txt");
            f.check(!r.ok(), || {
                format!("ftplib {} succeeded without ALG: {r}", m.name())
            });
        }
    }
    f.assert_none(test);
}

alg_tests!(port2121_kernel_helper, port2121_no_alg_fails, port2121_ftpct
    => port2121_scenario());

/// The kernel helper is attached by rule, per port: a `CT --helper ftp` rule for port 21 does
/// nothing for a control connection on 2121 (nf_conntrack_ftp's `ports=` only matters for the
/// old automatic assignment). With the rule on 2121 it works (port2121_kernel_helper).
#[test]
fn port2121_kernel_helper_rule_on_21_only_fails() {
    let test = "port2121_kernel_helper_rule_on_21_only_fails";
    let lab = Lab::up_with_port(test, Topology::Masq, 2121);
    lab.server();
    lab.kernel_helper_on_port(21);
    let r = lab.fetch(Client::Ftplib, Mode::Port, "small.txt");
    r.assert_fails();
    assert!(r.contains("500 Illegal PORT"), "[{test}] {r}");
}

// The daemon's command line (list, sessions, events, metrics) is tested in tests/ops.rs.

/// Packets counted by ftpct's post-conntrack queue rules in the gateway (mangle POSTROUTING and
/// INPUT, IPv4).
fn post_conntrack_queued(lab: &Lab) -> u64 {
    ["POSTROUTING", "INPUT"]
        .iter()
        .map(|chain| {
            let r = lab.gw(&["iptables", "-t", "mangle", "-L", chain, "-v", "-n", "-x"]);
            r.stdout
                .lines()
                .filter(|l| l.contains("NFQUEUE") && l.contains("connmark"))
                .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Control connections in the gateway's conntrack table carrying ftpct's `seqadj_mark` bit.
fn marked_control_connections(lab: &Lab) -> usize {
    let r = lab.gw(&[
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "--dport",
        "21",
        "--mark",
        "0x100000/0x100000",
    ]);
    r.stdout.lines().filter(|l| l.contains("dport=21")).count()
}

/// The post-conntrack queue (b) only takes the control connections that have a sequence
/// offset, marked by ftpct (`seqadj_mark`) when its first rewrite changes a line's length: a
/// passive session behind MASQUERADE (nothing to rewrite) never reaches it; an active one does,
/// after its PORT, and the transfer works, which needs its ACKs mapped there.
#[test]
fn post_conntrack_queue_takes_only_marked_connections() {
    let test = "post_conntrack_queue_takes_only_marked_connections";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    lab.fetch(Client::Ftplib, Mode::Pasv, "small.txt")
        .assert_ok();
    assert_eq!(
        post_conntrack_queued(&lab),
        0,
        "[{test}] passive session queued twice"
    );
    assert_eq!(
        marked_control_connections(&lab),
        0,
        "[{test}] passive session marked"
    );
    lab.fetch(Client::Ftplib, Mode::Port, "small.txt")
        .assert_ok();
    assert!(
        post_conntrack_queued(&lab) > 0,
        "[{test}] the active session's ACKs were not queued after conntrack"
    );
    assert_eq!(
        marked_control_connections(&lab),
        1,
        "[{test}] active session not marked"
    );
    let st = lab.ftpct_stats();
    assert_eq!(st.get("ct_marked"), 1, "[{test}] {}", st.text);
    assert_eq!(st.get("ct_mark_errors"), 0, "[{test}] {}", st.text);
}

// ---- the native nftables backend (`backend = nft`) ----------------------------------------------

/// The same transfers with ftpct's rules in `table inet ftpct` instead of iptables: the
/// control packets reach the queue through the verdict chains (the native `queue` expression
/// or, on kernels without it such as this project's, the x_tables NFQUEUE target that
/// `ftpct rules --apply` writes over netlink), and the daemon fills the nft sets, not ipsets,
/// so that the data SYNs are queued. Every client must succeed byte for byte; nothing of ftpct
/// may be in the iptables tables; with ftpct stopped (its table deleted) the same transfer
/// fails again.
fn nft_backend_scenario(test: &str, topo: Topology, mode: Mode) {
    let mut lab = Lab::up(test, topo);
    lab.server();
    lab.start_ftpct_with_config("backend = nft\n", &[]);
    let table = lab.gw(&["nft", "list", "table", "inet", "ftpct"]).stdout;
    assert!(table.contains("chain queue_control"), "[{test}] {table}");
    let saved = lab.gw(&["iptables-nft-save"]).stdout + &lab.gw(&["ip6tables-nft-save"]).stdout;
    assert!(
        !saved
            .lines()
            .any(|l| l.contains("--comment ftpct ") || l.ends_with("--comment ftpct")),
        "[{test}] ftpct rules in iptables with backend = nft:\n{saved}"
    );
    let mut f = Failures::default();
    for c in Client::ALL.into_iter().filter(|c| c.supports(topo, mode)) {
        let r = lab.fetch(c, mode, "big.bin");
        f.check(r.ok(), || format!("{} {}: {r}", c.name(), mode.name()));
    }
    let st = lab.ftpct_stats();
    f.check(
        st.get("ipset_adds") > 0 && st.get("ipset_errors") == 0,
        || format!("the daemon did not fill the nft sets:\n{}", st.text),
    );
    f.check(
        st.get("expect_used") > 0 && st.get("ct_created") > 0,
        || format!("no expectation was used:\n{}", st.text),
    );
    lab.stop_ftpct();
    let tables = lab.gw(&["nft", "list", "tables"]).stdout;
    f.check(!tables.contains("inet ftpct"), || {
        format!("`ftpct rules --delete` left the table:\n{tables}")
    });
    let r = lab.fetch(Client::Ftplib, mode, "small.txt");
    f.check(!r.ok() && r.code != Some(2), || {
        format!("succeeded with ftpct stopped (test would be vacuous): {r}")
    });
    f.assert_none(test);
}

#[test]
fn nft_backend_masq_port_ftpct() {
    nft_backend_scenario("nft_backend_masq_port_ftpct", Topology::Masq, Mode::Port)
}

#[test]
fn nft_backend_masq_epsv_ftpct() {
    nft_backend_scenario("nft_backend_masq_epsv_ftpct", Topology::Masq, Mode::Epsv)
}

#[test]
fn nft_backend_dnat_pasv_ftpct() {
    nft_backend_scenario("nft_backend_dnat_pasv_ftpct", Topology::Dnat, Mode::Pasv)
}

#[test]
fn nft_backend_v6_eprt_ftpct() {
    nft_backend_scenario("nft_backend_v6_eprt_ftpct", Topology::V6, Mode::Eprt)
}
