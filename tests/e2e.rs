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
//! With an ALG, each data connection must enter the gateway as RELATED (a counting rule of
//! lab.sh), which proves it was admitted through an expectation; without, no packet may. The
//! ftpct variants also check that the gateway's INVALID drop rule counted nothing (strict TCP
//! tracking stayed consistent with the rewrites), that no data packet reached ftpct's queue, and
//! that the same downloads fail again once ftpct is stopped.
//!
//! The tests need root: without it they FAIL with a message, they never pass silently.
//! Each test builds its own lab with a unique prefix, so they run in parallel.

mod common;

use common::{Alg, Client, Lab, Mode, Run, Topology};

/// Generates the three variants of one scenario (kernel helper, no ALG, ftpct).
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
/// (lab.sh checks sha256 and that the client used exactly `mode`, no fallback), each data
/// connection admitted as RELATED (the gateway's counting rule), and with ftpct: nothing dropped
/// as INVALID under strict TCP tracking, no data packet queued to userspace, and the same
/// downloads failing again once ftpct is stopped. Without: every client fails, while the control
/// connection alone works (`probe`), and the failure is the expected one where it has a
/// recognisable signature.
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
        if alg == Alg::Ftpct {
            lab.conntrack_acct_on();
        }
        for c in &clients {
            let related0 = lab.related_tcp_packets();
            let queue0 = (alg == Alg::Ftpct).then(|| queue_snapshot(&lab));
            let r = lab.fetch(*c, mode, "big.bin");
            f.check(r.ok(), || format!("{} {}: {r}", c.name(), mode.name()));
            if topo == Topology::Dnat && mode == Mode::Pasv {
                // the 227 the client saw carries the gateway's public address
                f.check(r.contains("(203,0,113,1,"), || {
                    format!("{}: 227 not rewritten to 203.0.113.1: {r}", c.name())
                });
            }
            let related = lab.related_tcp_packets() - related0;
            f.check(related >= 1, || {
                format!(
                    "{} {}: the data connection did not enter the gateway as RELATED \
                     (lab-related-tcp counted {related})",
                    c.name(),
                    mode.name()
                )
            });
            if let Some(q0) = queue0 {
                check_data_not_queued(&lab, &mut f, c.name(), q0);
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
        if alg == Alg::Ftpct {
            check_no_invalid(&lab, &mut f);
            // Negative control: the same downloads with ftpct stopped (its rules deleted).
            lab.stop_ftpct();
            all_clients_fail(&lab, topo, mode, &clients, "with ftpct stopped", &mut f);
        }
    } else {
        all_clients_fail(&lab, topo, mode, &clients, "WITHOUT any ALG", &mut f);
    }
    f.assert_none(test);
}

/// Every client fetches small.txt in `mode` concurrently (each waits for its own timeout:
/// separate sessions and output files) and must FAIL, with the recognisable symptom where there
/// is one, while the control connection alone works; no data connection is admitted as
/// RELATED meanwhile. `why` names the situation in the messages.
fn all_clients_fail(
    lab: &Lab,
    topo: Topology,
    mode: Mode,
    clients: &[Client],
    why: &str,
    f: &mut Failures,
) {
    lab.probe().assert_ok();
    let related0 = lab.related_tcp_packets();
    let runs: Vec<(Client, Run)> = std::thread::scope(|sc| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| sc.spawn(move || (*c, lab.fetch(*c, mode, "small.txt"))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (c, r) in &runs {
        f.check(!r.ok() && r.code != Some(2), || {
            format!(
                "{} {} succeeded {why} (test would be vacuous): {r}",
                c.name(),
                mode.name()
            )
        });
        expected_failure_signature(f, topo, mode, *c, r);
    }
    let related = lab.related_tcp_packets() - related0;
    f.check(related == 0, || {
        format!("{related} TCP packets entered as RELATED {why}")
    });
}

/// ftpct's queue as the kernel counts it, the daemon's own count of processed packets, and the
/// gateway's conntrack accounting zeroed: taken before one download.
struct QueueSnapshot {
    queued: u64,
    processed: u64,
}

fn queue_snapshot(lab: &Lab) -> QueueSnapshot {
    lab.conntrack_zero();
    QueueSnapshot {
        queued: lab
            .nfqueue_proc()
            .expect("ftpct's queue is bound")
            .id_sequence,
        processed: lab.ftpct_stats().get("latency_count"),
    }
}

/// "Data packets never enter userspace": during one 4 MiB download the queue took only control
/// packets (each at most twice: before conntrack and, on a connection with a sequence offset,
/// after it) and the data SYN (plus a retransmission). The counts are netfilter's, as conntrack
/// accounting counts the same download: on the lab's veths a data "packet" is a GSO packet of up
/// to 64 KiB, so 4 MiB is ~130 packets, not ~2900 segments. The data connection must outnumber
/// the bound, or the check could not tell.
fn check_data_not_queued(lab: &Lab, f: &mut Failures, client: &str, before: QueueSnapshot) {
    let queued = lab
        .nfqueue_proc()
        .expect("ftpct's queue is bound")
        .id_sequence
        - before.queued;
    let processed = lab.ftpct_stats().get("latency_count") - before.processed;
    let ct = lab.conntrack_acct();
    let bound = 2 * ct.control_packets + 4;
    eprintln!(
        "{client}: queued {queued} (ftpct processed {processed}), bound {bound}; \
         conntrack accounting {ct:?}"
    );
    f.check(ct.data_bytes >= 4 << 20, || {
        format!("{client}: the data connection carried {ct:?}, not the 4 MiB file")
    });
    f.check(ct.data_packets > bound, || {
        format!(
            "{client}: the data connection had {} packets, not more than the bound {bound}: \
             the check cannot tell ({ct:?})",
            ct.data_packets
        )
    });
    f.check(queued > 0 && queued <= bound, || {
        format!(
            "{client}: {queued} packets queued to ftpct during the download, bound {bound} \
             (2 x {} control packets + 4); data connection {} packets",
            ct.control_packets, ct.data_packets
        )
    });
    f.check(processed == queued, || {
        format!("{client}: the kernel queued {queued} packets, ftpct processed {processed}")
    });
}

/// The gateway's `--ctstate INVALID -j DROP` rule dropped nothing, IPv4 and IPv6: ftpct's
/// sequence rewriting kept strict conntrack TCP tracking (be_liberal=0) consistent for the
/// whole session.
fn check_no_invalid(lab: &Lab, f: &mut Failures) {
    let inv = lab.invalid_dropped();
    f.check(inv == [0, 0], || {
        format!(
            "the gateway dropped INVALID packets (IPv4 {}, IPv6 {})",
            inv[0], inv[1]
        )
    });
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
    if alg.is_some() {
        for c in Client::ALL {
            let r = lab.fetch(c, Mode::Port, "big.bin");
            f.check(r.ok(), || format!("{}: {r}", c.name()));
        }
        let related = lab.related_tcp_packets();
        f.check(related >= 3, || {
            format!("{related} TCP packets entered as RELATED for 3 data connections")
        });
        if alg == Alg::Ftpct {
            check_no_invalid(&lab, &mut f);
            lab.stop_ftpct();
            all_clients_fail(
                &lab,
                Topology::Masq,
                Mode::Port,
                &Client::ALL,
                "with ftpct stopped",
                &mut f,
            );
        }
    } else {
        all_clients_fail(
            &lab,
            Topology::Masq,
            Mode::Port,
            &Client::ALL,
            "WITHOUT any ALG",
            &mut f,
        );
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
    let related = lab.related_tcp_packets();
    if alg.is_some() {
        r.assert_ok();
        assert!(r.stdout.contains("OK 30 files"), "[{test}] {r}");
        assert!(
            related >= 30,
            "[{test}] {related} TCP packets entered as RELATED for 30 data connections"
        );
        if alg == Alg::Ftpct {
            let inv = lab.invalid_dropped();
            assert_eq!(inv, [0, 0], "[{test}] INVALID packets dropped (IPv4, IPv6)");
            // The same session shape with ftpct stopped (its rules deleted) must fail.
            lab.stop_ftpct();
            lab.probe().assert_ok();
            let again = lab.many(mode, 3);
            again.assert_fails();
            assert_eq!(
                lab.related_tcp_packets(),
                related,
                "[{test}] RELATED packets with ftpct stopped"
            );
        }
    } else {
        lab.probe().assert_ok();
        r.assert_fails();
        assert_eq!(related, 0, "[{test}] RELATED packets without ALG");
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
            let related = lab.related_tcp_packets();
            assert!(related >= 1, "[{test}] data connection not RELATED");
            let inv = lab.invalid_dropped();
            assert_eq!(inv, [0, 0], "[{test}] INVALID packets dropped (IPv4, IPv6)");
            // With ftpct stopped (its rules deleted) the same split command must fail.
            lab.stop_ftpct();
            lab.probe().assert_ok();
            lab.split(mode, "small.txt").assert_fails();
            assert_eq!(
                lab.related_tcp_packets(),
                related,
                "[{test}] RELATED packets with ftpct stopped"
            );
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
            assert_eq!(
                lab.related_tcp_packets(),
                0,
                "[{test}] RELATED packets without ALG"
            );
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
    let clients = |m: Mode| -> Vec<Client> {
        Client::ALL
            .into_iter()
            .filter(|c| c.supports(Topology::Masq, m))
            .collect()
    };
    if alg.is_some() {
        let mut transfers = 0;
        for m in modes {
            for c in clients(m) {
                let r = lab.fetch(c, m, "big.bin");
                f.check(r.ok(), || format!("{} {}: {r}", c.name(), m.name()));
                transfers += 1;
            }
        }
        let related = lab.related_tcp_packets();
        f.check(related >= transfers, || {
            format!("{related} TCP packets entered as RELATED for {transfers} data connections")
        });
        if alg == Alg::Ftpct {
            check_no_invalid(&lab, &mut f);
            lab.stop_ftpct();
            for m in modes {
                all_clients_fail(
                    &lab,
                    Topology::Masq,
                    m,
                    &clients(m),
                    "with ftpct stopped",
                    &mut f,
                );
            }
        }
    } else {
        for m in modes {
            all_clients_fail(
                &lab,
                Topology::Masq,
                m,
                &clients(m),
                "WITHOUT any ALG",
                &mut f,
            );
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
        lab.marked_control_connections(),
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
        lab.marked_control_connections(),
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
    lab.start_ftpct_with_config("backend = \"nft\"\n", &[]);
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
    let mut transfers = 0;
    for c in Client::ALL.into_iter().filter(|c| c.supports(topo, mode)) {
        let r = lab.fetch(c, mode, "big.bin");
        f.check(r.ok(), || format!("{} {}: {r}", c.name(), mode.name()));
        transfers += 1;
    }
    let related = lab.related_tcp_packets();
    f.check(related >= transfers, || {
        format!("{related} TCP packets entered as RELATED for {transfers} data connections")
    });
    check_no_invalid(&lab, &mut f);
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
