//! `ftpct rules` against the real kernel, for each backend (`iptables-nft`, `iptables-legacy`,
//! `nft`): apply, check with the backend's own listing tool, apply again (no duplicates),
//! delete (nothing of ftpct left, the admin's rules untouched).
//!
//! A backend that cannot work on the running kernel must fail `apply` with
//! [`RulesError::KernelFeature`] naming the missing kernel option, and leave nothing behind; the
//! tests check that instead of the cycle (each says which path it took on stderr). On this
//! project's test machines (Linux 6.18 without `CONFIG_NFT_QUEUE`) all three work: the nft
//! backend's verdicts are then the x_tables NFQUEUE target written over netlink (`nft_cycle`
//! says which path it took).
//!
//! Root is needed (network namespaces); without it the tests fail with a message saying so.
//! Each test runs in a fresh network namespace of its own, deleted on drop, also on panic. No
//! packet is sent.

use ftpct::rules::{self, Backend, RuleSpec, RulesError, SystemExec};

#[path = "common/netns.rs"]
mod netns;
use netns::{require_root, Netns};

// ---------------------------------------------------------------------------------------------
// What each backend's own tools show

/// The `-save` programs of an iptables backend.
fn save_programs(b: Backend) -> [&'static str; 2] {
    match b {
        Backend::IptablesNft => ["iptables-nft-save", "ip6tables-nft-save"],
        Backend::IptablesLegacy => ["iptables-legacy-save", "ip6tables-legacy-save"],
        Backend::Nft => unreachable!(),
    }
}

fn save_all(ns: &Netns, b: Backend) -> String {
    let [v4, v6] = save_programs(b);
    format!("{}\n{}", ns.sh(&[v4]), ns.sh(&[v6]))
}

/// Rules whose comment is exactly `ftpct` (not the admin's `ftpct-admin`).
fn ours(save: &str) -> usize {
    save.lines()
        .filter(|l| {
            rules::split_rule_line(l)
                .windows(2)
                .any(|w| w[0] == "--comment" && w[1] == "ftpct")
        })
        .count()
}

/// The admin's own rules, installed with the same tool as the backend under test (and an nft
/// table of the admin's, which no backend may touch).
fn install_admin_rules(ns: &Netns, b: Backend) {
    let (v4, v6) = match b {
        Backend::IptablesLegacy => ("iptables-legacy", "ip6tables-legacy"),
        _ => ("iptables-nft", "ip6tables-nft"),
    };
    ns.shw(&format!(
        "{v4} -w -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    ));
    ns.shw(&format!(
        "{v4} -w -t raw -A PREROUTING -p tcp --dport 21 -j ACCEPT"
    ));
    ns.shw(&format!(
        "{v4} -w -t mangle -A INPUT -p tcp --sport 21 -m comment --comment ftpct-admin -j ACCEPT"
    ));
    ns.shw(&format!(
        "{v6} -w -t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80"
    ));
    ns.sh(&[
        "nft",
        "add table inet admin\n\
         add chain inet admin admin_forward { type filter hook forward priority 0; policy accept; }\n\
         add rule inet admin admin_forward ct state established,related accept",
    ]);
}

fn assert_admin_rules_intact(ns: &Netns, b: Backend) {
    let save = match b {
        Backend::IptablesLegacy => save_all(ns, Backend::IptablesLegacy),
        _ => save_all(ns, Backend::IptablesNft),
    };
    for want in [
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PREROUTING -p tcp -m tcp --dport 21 -j ACCEPT",
        "-A INPUT -p tcp -m tcp --sport 21 -m comment --comment ftpct-admin -j ACCEPT",
        "REDIRECT --to-ports 80",
    ] {
        assert!(save.contains(want), "admin rule {want:?} lost:\n{save}");
    }
    let admin = ns.shw("nft list table inet admin");
    assert!(
        admin.contains("ct state established,related accept"),
        "{admin}"
    );
}

fn ipsets(ns: &Netns) -> String {
    ns.shw("ipset list -n")
}

/// Whether `table inet ftpct` exists.
fn nft_table_exists(ns: &Netns) -> bool {
    ns.shw("nft list tables").contains("table inet ftpct")
}

// ---------------------------------------------------------------------------------------------
// iptables backends

fn iptables_cycle(b: Backend, tag: &str) {
    require_root("rules_backends");
    let ns = Netns::new(tag);
    install_admin_rules(&ns, b);
    let spec = RuleSpec {
        backend: b,
        ports: vec![21, 2121],
        queue: 3,
        ..RuleSpec::default()
    };
    let expected = rules::rules(&spec).unwrap();
    let first = ns.run(|| rules::apply(&spec));
    match first {
        Err(e @ RulesError::KernelFeature { .. }) => {
            let m = e.to_string();
            eprintln!("{b}: cannot work on this kernel, as reported: {m}");
            assert!(m.contains("CONFIG_"), "{m}");
            assert_eq!(ours(&save_all(&ns, b)), 0);
            assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), 0);
            assert_admin_rules_intact(&ns, b);
            return;
        }
        Err(e) => panic!("{b}: apply failed: {e}"),
        Ok(n) => {
            eprintln!("{b}: works on this kernel; {n} rules applied");
            assert_eq!(n, expected.len());
        }
    }
    assert_eq!(
        ns.run(|| rules::apply(&spec)).unwrap(),
        0,
        "second apply added rules"
    );
    let save = save_all(&ns, b);
    assert_eq!(ours(&save), expected.len(), "{save}");
    for want in [
        "-A PREROUTING -p tcp -m multiport --dports 21,2121 -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m comment --comment ftpct -j NFQUEUE --queue-num 3",
        "-A OUTPUT -p tcp -m multiport --sports 21,2121",
        "-A POSTROUTING -p tcp -m multiport --dports 21,2121",
        "-A INPUT -p tcp -m multiport --sports 21,2121",
        "--match-set ftpct4 dst,dst -m comment --comment ftpct -j NFQUEUE --queue-num 3 --queue-bypass",
        "--match-set ftpct6 dst,dst",
        "-A PREROUTING -m comment --comment ftpct",
    ] {
        assert!(save.contains(want), "missing {want:?} in\n{save}");
    }
    // Ours come after the admin's rule of the same chain (appended, never inserted).
    let raw = ns.sh(&[save_programs(b)[0], "-t", "raw"]);
    let admin_at = raw.find("--dport 21 -j ACCEPT").unwrap();
    let ours_at = raw.find("--comment ftpct").unwrap();
    assert!(admin_at < ours_at, "{raw}");
    // iptables-nft sees none of the legacy rules (the other way round is not checked: listing
    // the legacy tables would instantiate them, or fail on a kernel without them).
    if b == Backend::IptablesLegacy {
        let nft = save_all(&ns, Backend::IptablesNft);
        assert_eq!(ours(&nft), 0, "legacy rules seen by iptables-nft:\n{nft}");
    }
    assert!(ipsets(&ns).contains("ftpct4"));
    assert!(ipsets(&ns).contains("ftpct6"));

    assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), expected.len());
    assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), 0);
    let save = save_all(&ns, b);
    assert_eq!(ours(&save), 0, "{save}");
    assert!(!ipsets(&ns).contains("ftpct"), "{}", ipsets(&ns));
    assert_admin_rules_intact(&ns, b);
    assert!(!nft_table_exists(&ns));
}

#[test]
fn iptables_nft_cycle() {
    iptables_cycle(Backend::IptablesNft, "nft-x");
}

#[test]
fn iptables_legacy_cycle() {
    iptables_cycle(Backend::IptablesLegacy, "legacy");
}

/// Rules left by another spec (the configuration changed between apply and delete) are removed
/// by `delete` with the new spec; the admin's rule commented `ftpct-admin` is not.
fn iptables_delete_sweeps_other_specs(b: Backend, tag: &str) {
    require_root("rules_backends");
    let ns = Netns::new(tag);
    install_admin_rules(&ns, b);
    let old = RuleSpec {
        backend: b,
        queue: 9,
        ports: vec![990, 2121],
        set4: "old4".into(),
        set6: "old6".into(),
        bypass: true,
        seqadj_mark: 0,
        maxelem: 4096,
    };
    match ns.run(|| rules::apply(&old)) {
        Err(e @ RulesError::KernelFeature { .. }) => {
            eprintln!("{b}: not on this kernel: {e}");
            return;
        }
        r => assert!(r.unwrap() > 0),
    }
    let new = RuleSpec {
        backend: b,
        ..RuleSpec::default()
    };
    let n = ns.run(|| rules::delete(&new)).unwrap();
    assert_eq!(n, rules::rules(&old).unwrap().len());
    let save = save_all(&ns, b);
    assert_eq!(ours(&save), 0, "{save}");
    assert_admin_rules_intact(&ns, b);
}

#[test]
fn iptables_nft_delete_sweeps_rules_of_another_config() {
    iptables_delete_sweeps_other_specs(Backend::IptablesNft, "sweep-n");
}

#[test]
fn iptables_legacy_delete_sweeps_rules_of_another_config() {
    iptables_delete_sweeps_other_specs(Backend::IptablesLegacy, "sweep-l");
}

// ---------------------------------------------------------------------------------------------
// nft

fn nft_spec() -> RuleSpec {
    RuleSpec {
        backend: Backend::Nft,
        ports: vec![21, 2121],
        queue: 3,
        ..RuleSpec::default()
    }
}

fn check_nft_table(listing: &str) {
    for want in [
        "type filter hook prerouting priority raw; policy accept;",
        "type filter hook output priority raw; policy accept;",
        "type filter hook postrouting priority mangle; policy accept;",
        "type filter hook input priority mangle; policy accept;",
        "type nat hook prerouting priority dstnat; policy accept;",
        "type ipv4_addr . inet_service",
        "type ipv6_addr . inet_service",
        "tcp dport { 21, 2121 } tcp flags != syn / fin,syn,rst,ack",
        "tcp sport { 21, 2121 } tcp flags != syn / fin,syn,rst,ack",
        "tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @ftpct4 goto queue_data",
        "tcp flags syn / fin,syn,rst,ack ip6 daddr . tcp dport @ftpct6 goto queue_data",
        "chain queue_control {\n\t\tqueue num 3 comment \"ftpct\"",
        "chain queue_data {\n\t\tqueue num 3 bypass comment \"ftpct\"",
    ] {
        assert!(listing.contains(want), "missing {want:?} in\n{listing}");
    }
    assert_eq!(
        listing.matches("goto queue_control").count(),
        8,
        "{listing}"
    );
    assert_eq!(
        listing.matches("comment \"ftpct\"").count(),
        12,
        "{listing}"
    );
}

/// The whole cycle on the real kernel: with the native `queue` expression where the kernel has
/// it, else with the x_tables NFQUEUE target written over netlink (this project's machines).
#[test]
fn nft_cycle() {
    require_root("rules_backends");
    let ns = Netns::new("nft");
    install_admin_rules(&ns, Backend::IptablesNft);
    let spec = nft_spec();
    let native = ns
        .run(|| rules::nft_queue_supported(&mut SystemExec))
        .unwrap();
    eprintln!(
        "nft: verdicts {}",
        if native {
            "native (nft_queue)"
        } else {
            "x_tables NFQUEUE through nft_compat"
        }
    );
    assert_eq!(ns.run(|| rules::apply(&spec)).unwrap(), 12);
    assert_eq!(
        ns.run(|| rules::apply(&spec)).unwrap(),
        0,
        "second apply changed the table"
    );
    check_nft_table(&ns.shw("nft list table inet ftpct"));
    // What the daemon adds to the sets survives a re-apply with other ports.
    ns.run(|| {
        NftSets::open()
            .unwrap()
            .add("ftpct4", "192.0.2.7:40000".parse().unwrap(), 60)
    })
    .unwrap();
    let changed = RuleSpec {
        ports: vec![21],
        ..spec.clone()
    };
    assert_eq!(ns.run(|| rules::apply(&changed)).unwrap(), 12);
    let listing = ns.shw("nft list table inet ftpct");
    assert!(listing.contains("192.0.2.7 . 40000"), "{listing}");
    assert!(!listing.contains("2121"), "old rules kept:\n{listing}");
    assert_eq!(
        listing.matches("comment \"ftpct\"").count(),
        12,
        "{listing}"
    );
    // Nothing in the iptables tables.
    assert_eq!(ours(&save_all(&ns, Backend::IptablesNft)), 0);
    assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), 12);
    assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), 0);
    assert!(!nft_table_exists(&ns));
    assert_admin_rules_intact(&ns, Backend::IptablesNft);
}

/// The daemon's writer of the nft sets (src/nftables.rs `NftSets`) against the real kernel:
/// elements with their timeout, both families, deletion, and typed errors.
#[test]
fn nft_sets_written_over_netlink() {
    require_root("rules_backends");
    let ns = Netns::new("nft-sets");
    let spec = nft_spec();
    ns.run(|| {
        let mut s = NftSets::open().unwrap();
        let e = s.check("ftpct4").unwrap_err();
        assert!(matches!(e, NftError::NoSet(_)), "{e}");
        assert!(
            e.to_string().contains("ftpct rules --backend nft --apply"),
            "{e}"
        );
    });
    ns.run(|| rules::apply(&spec)).unwrap();
    let v4: std::net::SocketAddr = "198.51.100.9:50001".parse().unwrap();
    let v6: std::net::SocketAddr = "[2001:db8::9]:50002".parse().unwrap();
    ns.run(|| {
        let mut s = NftSets::open().unwrap();
        s.check("ftpct4").unwrap();
        s.check("ftpct6").unwrap();
        s.add("ftpct4", v4, 300).unwrap();
        // Added again with a longer timeout (the kernel renews it since Linux 6.10).
        s.add("ftpct4", v4, 600).unwrap();
        s.add("ftpct6", v6, 300).unwrap();
        let e = s.add("ftpct4", v6, 300).unwrap_err();
        assert!(matches!(e, NftError::SetMismatch(..)), "{e}");
        let e = s.add("nope", v4, 300).unwrap_err();
        assert!(matches!(e, NftError::NoSet(_)), "{e}");
    });
    let listing = ns.shw("nft list table inet ftpct");
    assert!(listing.contains("198.51.100.9 . 50001"), "{listing}");
    assert!(listing.contains("2001:db8::9 . 50002"), "{listing}");
    ns.run(|| {
        let mut s = NftSets::open().unwrap();
        s.del("ftpct4", v4).unwrap();
        // An element that is not there (expired) is not an error.
        s.del("ftpct4", v4).unwrap();
    });
    let listing = ns.shw("nft list table inet ftpct");
    assert!(!listing.contains("198.51.100.9"), "{listing}");
    assert!(listing.contains("2001:db8::9 . 50002"), "{listing}");
    ns.run(|| rules::delete(&spec)).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The daemon's rule check (src/rulecheck.rs, src/nftables.rs) against the real kernel

use ftpct::ipset::Ipset;
use ftpct::nftables::{NfTables, NftError, NftSets};
use ftpct::rulecheck::{Expected, NfFamily, Observed, Place};

/// What the daemon's reader sees in the namespace.
fn observed(ns: &Netns) -> Observed {
    ns.run(|| NfTables::open().unwrap().read_ftpct().unwrap())
}

fn check_spec() -> RuleSpec {
    RuleSpec {
        queue: 3,
        ports: vec![21, 2121],
        ..RuleSpec::default()
    }
}

/// iptables-nft 1.8.9 stores `-m comment --comment ftpct` as an x_tables match: the reader
/// finds every rule of the spec, and not the admin's `ftpct-admin` one; a flushed chain and a
/// deleted nat PREROUTING chain are named.
#[test]
fn rule_check_reads_iptables_nft_rules_over_netlink() {
    require_root("rules_backends");
    let ns = Netns::new("rc-nft-x");
    install_admin_rules(&ns, Backend::IptablesNft);
    let spec = check_spec();
    let n = ns.run(|| rules::apply(&spec)).unwrap();
    assert_eq!(n, rules::rules(&spec).unwrap().len());
    let exp = Expected::new(&spec, Backend::IptablesNft, None)
        .unwrap()
        .unwrap();
    let o = observed(&ns);
    assert_eq!(o.backend(), Some(Backend::IptablesNft));
    assert_eq!(o.rules.values().sum::<usize>(), n, "{o:?}");
    assert!(o.chains.is_empty());
    assert!(exp.compare(&o).is_empty(), "{:?}", exp.compare(&o));

    ns.shw("iptables-nft -w -t raw -F PREROUTING");
    let m = exp.compare(&observed(&ns));
    assert_eq!(m.count(), 3, "{m:?}");
    assert_eq!(
        m.rules[0].place,
        Place::new(NfFamily::Ip, "raw", "PREROUTING")
    );
    // The admin's raw PREROUTING rule went too; ip6 raw is untouched.
    ns.shw("iptables-nft -w -t nat -F PREROUTING");
    ns.shw("iptables-nft -w -t nat -X PREROUTING");
    let m = exp.compare(&observed(&ns));
    assert_eq!(m.count(), 4, "{m:?}");
    let text = m.message(&exp.fix);
    assert!(text.contains("raw PREROUTING (IPv4): 3 of 3"), "{text}");
    assert!(text.contains("nat PREROUTING (IPv4): 1 of 1"), "{text}");
    assert!(
        text.contains("`ftpct rules --queue 3 --ports 21,2121 --apply`"),
        "{text}"
    );
    // What the fix says puts everything back.
    ns.run(|| rules::apply(&spec)).unwrap();
    assert!(exp.compare(&observed(&ns)).is_empty());

    assert_eq!(ns.run(|| rules::delete(&spec)).unwrap(), n);
    let o = observed(&ns);
    assert_eq!(o.backend(), None, "{o:?}");
    assert_eq!(exp.compare(&o).count(), n);
}

/// iptables-legacy's rules are not in nf_tables: the reader sees nothing of them (the daemon
/// then says once that the check is idle).
#[test]
fn rule_check_sees_nothing_of_iptables_legacy() {
    require_root("rules_backends");
    let ns = Netns::new("rc-legacy");
    let spec = RuleSpec {
        backend: Backend::IptablesLegacy,
        ..check_spec()
    };
    match ns.run(|| rules::apply(&spec)) {
        Err(e @ RulesError::KernelFeature { .. }) => {
            eprintln!("iptables-legacy: not on this kernel: {e}");
            return;
        }
        r => assert!(r.unwrap() > 0),
    }
    let o = observed(&ns);
    assert_eq!(o, Observed::default());
    ns.run(|| rules::delete(&spec)).unwrap();
}

/// The nft backend's table: rules with `comment "ftpct"` in the userdata (the verdict rules
/// written over netlink too), and the empty nat chain checked as a chain.
#[test]
fn rule_check_reads_the_nft_backend_table() {
    require_root("rules_backends");
    let ns = Netns::new("rc-nft");
    install_admin_rules(&ns, Backend::IptablesNft);
    let spec = nft_spec();
    assert_eq!(ns.run(|| rules::apply(&spec)).unwrap(), 12);
    let exp = Expected::new(&spec, Backend::Nft, None).unwrap().unwrap();
    let o = observed(&ns);
    assert_eq!(o.backend(), Some(Backend::Nft), "{o:?}");
    // 5 base chains and the 2 verdict chains.
    assert_eq!(o.chains.len(), 7, "{o:?}");
    assert!(exp.compare(&o).is_empty(), "{:?}", exp.compare(&o));
    ns.shw("nft flush chain inet ftpct raw_output");
    ns.shw("nft delete chain inet ftpct nat_prerouting");
    ns.shw("nft flush chain inet ftpct queue_data");
    let m = exp.compare(&observed(&ns));
    assert_eq!(m.count(), 4, "{m:?}");
    let text = m.message(&exp.fix);
    assert!(text.contains("inet ftpct raw_output: 2 of 2"), "{text}");
    assert!(text.contains("inet ftpct queue_data: 1 of 1"), "{text}");
    assert!(
        text.contains("base chain inet ftpct nat_prerouting"),
        "{text}"
    );
    ns.run(|| rules::delete(&spec)).unwrap();
    assert_eq!(observed(&ns).backend(), None);
}

// ---------------------------------------------------------------------------------------------
// ipset capacity

/// `apply` creates the sets with maxelem = max_expectations (what `ipset list` shows); a set
/// left with a smaller maxelem (the kernel's default of 65536, as older versions created it)
/// is kept, reported by `small_sets`, and destroyed by `delete` like ftpct's own.
#[test]
fn ipsets_hold_max_expectations_and_smaller_ones_are_reported() {
    require_root("rules_backends");
    let ns = Netns::new("maxelem");
    let spec = check_spec();
    assert_eq!(spec.maxelem, 1 << 20);
    ns.shw("ipset create ftpct4 hash:ip,port family inet timeout 120");
    ns.run(|| rules::apply(&spec)).unwrap();
    let l4 = ns.shw("ipset list -t ftpct4");
    let l6 = ns.shw("ipset list -t ftpct6");
    assert!(l4.contains("maxelem 65536"), "{l4}");
    assert!(l6.contains("maxelem 1048576"), "{l6}");
    let (small, info4) = ns.run(|| {
        let mut set = Ipset::open().unwrap();
        (
            rules::small_sets(&mut set, &spec).unwrap(),
            set.info("ftpct4").unwrap(),
        )
    });
    assert_eq!(
        small,
        [rules::SmallSet {
            name: "ftpct4".into(),
            maxelem: 65536,
            want: 1 << 20,
        }]
    );
    assert_eq!(info4.maxelem, 65536);
    assert_eq!(info4.timeout, Some(120));
    assert_eq!(info4.type_name, "hash:ip,port");
    // The iptables rule refers to it.
    assert_eq!(info4.references, Some(1));
    // The fix the warning gives: delete, then apply.
    ns.run(|| rules::delete(&spec)).unwrap();
    assert!(!ipsets(&ns).contains("ftpct"), "{}", ipsets(&ns));
    ns.run(|| rules::apply(&spec)).unwrap();
    assert!(ns.shw("ipset list -t ftpct4").contains("maxelem 1048576"));
    let small = ns.run(|| rules::small_sets(&mut Ipset::open().unwrap(), &spec).unwrap());
    assert!(small.is_empty(), "{small:?}");
    ns.run(|| rules::delete(&spec)).unwrap();
}
