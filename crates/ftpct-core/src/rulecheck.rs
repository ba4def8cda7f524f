//! Checking that ftpct's own firewall rules are still in place (pure: no I/O, no clock).
//!
//! An admin's firewall reload (`nft flush ruleset`, `iptables -t raw -F`, ...) can remove the
//! rules `ftpct rules --apply` installed while the daemon runs. Nothing fails loudly then: the
//! packets are simply no longer queued, and FTP through NAT breaks as without an ALG. The daemon
//! therefore reads the rules back periodically (the shell's `nftables` module dumps them over netlink,
//! `rule_check_interval`) and feeds what it saw ([`Observed`]) to a [`Checker`], which compares
//! it with what [`crate::rulespec`] would install for the running configuration ([`Expected`]) and
//! says what to log ([`Notice`]).
//!
//! Rules are recognised by their comment, exactly `ftpct` ([`crate::rulespec::COMMENT`]), and
//! counted per place (nf_tables family, table, chain): matching their expressions exactly would
//! mean decoding the x_tables matches of iptables-nft, and the count per chain already tells
//! which group of rules (see the module doc of [`crate::rulespec`]) is gone. The nft backend's
//! empty nat base chain has no rule to count; it is checked as a chain.
//!
//! Which backend installed the rules is not configured: rules with ftpct's comment in the `ip`
//! or `ip6` tables raw, mangle or nat mean iptables-nft; a `table inet ftpct` means nft. When
//! nf_tables holds none at all, the rules are either not installed yet or installed with
//! iptables-legacy, whose tables are not in nf_tables (and which this check does not read: see
//! docs/reliability.md); the check then waits until some appear. Once a backend's rules were
//! seen, their disappearance — all of them included — is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::rulespec::{self as rules, Backend, Family, Group, RuleSpec, SpecError};
use crate::types::Timestamp;
use crate::wire::netlink::{NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6};

/// While rules stay missing, the warning is repeated this often.
pub const REPEAT: Duration = Duration::from_secs(300);

/// Default of `rule_check_interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// An nf_tables family that ftpct's rules live in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NfFamily {
    /// `ip` (iptables-nft).
    Ip,
    /// `ip6` (ip6tables-nft).
    Ip6,
    /// `inet` (the nft backend's `table inet ftpct`).
    Inet,
}

impl NfFamily {
    /// `NFPROTO_*` value of the family, as in `nfgenmsg`.
    pub fn from_nfproto(v: u8) -> Option<NfFamily> {
        match v {
            NFPROTO_IPV4 => Some(NfFamily::Ip),
            NFPROTO_IPV6 => Some(NfFamily::Ip6),
            NFPROTO_INET => Some(NfFamily::Inet),
            _ => None,
        }
    }

    /// The `NFPROTO_*` value.
    pub fn nfproto(self) -> u8 {
        match self {
            NfFamily::Ip => NFPROTO_IPV4,
            NfFamily::Ip6 => NFPROTO_IPV6,
            NfFamily::Inet => NFPROTO_INET,
        }
    }

    /// The name nft uses.
    pub fn name(self) -> &'static str {
        match self {
            NfFamily::Ip => "ip",
            NfFamily::Ip6 => "ip6",
            NfFamily::Inet => "inet",
        }
    }

    fn of(f: Family) -> NfFamily {
        match f {
            Family::V4 => NfFamily::Ip,
            Family::V6 => NfFamily::Ip6,
        }
    }
}

/// A chain of a table of a family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    /// The netfilter family.
    pub family: NfFamily,
    /// The table's name.
    pub table: String,
    /// The chain's name.
    pub chain: String,
}

impl Place {
    /// The place `family table chain`.
    pub fn new(family: NfFamily, table: &str, chain: &str) -> Place {
        Place {
            family,
            table: table.to_string(),
            chain: chain.to_string(),
        }
    }
}

impl fmt::Display for Place {
    /// As an admin names it: `raw PREROUTING (IPv4)` for iptables, `inet ftpct raw_output`
    /// for nft.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.family {
            NfFamily::Ip => write!(f, "{} {} (IPv4)", self.table, self.chain),
            NfFamily::Ip6 => write!(f, "{} {} (IPv6)", self.table, self.chain),
            NfFamily::Inet => write!(f, "inet {} {}", self.table, self.chain),
        }
    }
}

/// The tables whose rules are read: ftpct's rules are nowhere else.
pub fn tables_to_read() -> [(NfFamily, &'static str); 7] {
    [
        (NfFamily::Ip, "raw"),
        (NfFamily::Ip, "mangle"),
        (NfFamily::Ip, "nat"),
        (NfFamily::Ip6, "raw"),
        (NfFamily::Ip6, "mangle"),
        (NfFamily::Ip6, "nat"),
        (NfFamily::Inet, rules::NFT_TABLE),
    ]
}

/// What a read of the ruleset found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Rules whose comment is exactly `ftpct`, per place.
    pub rules: BTreeMap<Place, usize>,
    /// The chains of `table inet ftpct`.
    pub chains: BTreeSet<Place>,
}

impl Observed {
    /// Counts one rule carrying ftpct's comment.
    pub fn add_rule(&mut self, place: Place) {
        *self.rules.entry(place).or_default() += 1;
    }

    /// Records a chain of `table inet ftpct`.
    pub fn add_chain(&mut self, place: Place) {
        self.chains.insert(place);
    }

    fn count(&self, place: &Place) -> usize {
        self.rules.get(place).copied().unwrap_or(0)
    }

    /// Which backend's rules are there: iptables-nft if any of ftpct's rules is in an `ip` or
    /// `ip6` table, else nft if `table inet ftpct` has a rule or chain, else none.
    pub fn backend(&self) -> Option<Backend> {
        let ipt = self
            .rules
            .iter()
            .any(|(p, n)| *n > 0 && p.family != NfFamily::Inet);
        let nft = self
            .rules
            .keys()
            .chain(self.chains.iter())
            .any(|p| p.family == NfFamily::Inet && p.table == rules::NFT_TABLE);
        if ipt {
            Some(Backend::IptablesNft)
        } else if nft {
            Some(Backend::Nft)
        } else {
            None
        }
    }
}

/// What one backend installs for a spec, per place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The backend.
    pub backend: Backend,
    /// Rule count and the groups they belong to, per place.
    pub rules: BTreeMap<Place, (usize, BTreeSet<Group>)>,
    /// Chains that must exist even without rules (the nft backend's nat base chain).
    pub chains: BTreeSet<Place>,
    /// `ftpct rules ... --apply` for this backend.
    pub fix: String,
}

impl Expected {
    /// What `spec` installs with `backend`; `None` for iptables-legacy, whose rules are not in
    /// nf_tables. `config` is the configuration file the daemon runs with, for the fix
    /// command.
    pub fn new(
        spec: &RuleSpec,
        backend: Backend,
        config: Option<&Path>,
    ) -> Result<Option<Expected>, SpecError> {
        let spec = RuleSpec {
            backend,
            ..spec.clone()
        };
        let mut rules_at: BTreeMap<Place, (usize, BTreeSet<Group>)> = BTreeMap::new();
        let mut chains = BTreeSet::new();
        let mut count = |place: Place, groups: &[Group]| {
            let e = rules_at.entry(place).or_default();
            e.0 += 1;
            e.1.extend(groups.iter().copied());
        };
        match backend {
            Backend::IptablesLegacy => return Ok(None),
            Backend::IptablesNft => {
                for r in rules::rules(&spec)? {
                    count(
                        Place::new(NfFamily::of(r.family), r.table, r.chain),
                        &[r.group],
                    );
                }
            }
            Backend::Nft => {
                for r in rules::nft_rules(&spec)? {
                    count(
                        Place::new(NfFamily::Inet, rules::NFT_TABLE, r.chain),
                        &[r.group],
                    );
                }
                // The verdict chains' one rule each (`queue num N`, or the x_tables target);
                // both control groups go through `queue_control`.
                for r in rules::nft_verdict_rules(&spec) {
                    let place = Place::new(NfFamily::Inet, rules::NFT_TABLE, r.chain);
                    match r.group {
                        Group::DataSyn => count(place, &[Group::DataSyn]),
                        _ => count(place, &[Group::ControlPre, Group::ControlPost]),
                    }
                }
                chains.insert(Place::new(
                    NfFamily::Inet,
                    rules::NFT_TABLE,
                    rules::NFT_NAT_CHAIN,
                ));
            }
        }
        Ok(Some(Expected {
            backend,
            rules: rules_at,
            chains,
            fix: spec.command_line(config, "--apply"),
        }))
    }

    /// Rules plus chains: what "N of TOTAL missing" counts.
    pub fn total(&self) -> usize {
        self.rules.values().map(|(n, _)| n).sum::<usize>() + self.chains.len()
    }

    /// What of this is not in `observed`.
    pub fn compare(&self, observed: &Observed) -> Missing {
        let mut m = Missing {
            backend: self.backend,
            total: self.total(),
            rules: Vec::new(),
            chains: Vec::new(),
        };
        for (place, (want, groups)) in &self.rules {
            let found = observed.count(place);
            if found < *want {
                m.rules.push(Shortfall {
                    place: place.clone(),
                    expected: *want,
                    found,
                    groups: groups.clone(),
                });
            }
        }
        for c in &self.chains {
            if !observed.chains.contains(c) {
                m.chains.push(c.clone());
            }
        }
        m
    }
}

/// Fewer of ftpct's rules in a chain than installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// The chain.
    pub place: Place,
    /// ftpct's rules it should hold.
    pub expected: usize,
    /// ftpct's rules it holds.
    pub found: usize,
    /// What the rules of this chain do.
    pub groups: BTreeSet<Group>,
}

impl Shortfall {
    /// How many rules are missing.
    pub fn missing(&self) -> usize {
        self.expected - self.found
    }
}

/// What is missing of one backend's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The backend.
    pub backend: Backend,
    /// Rules (and chains) the backend installs.
    pub total: usize,
    /// The chains with fewer rules than installed.
    pub rules: Vec<Shortfall>,
    /// Base chains that are gone (nft backend).
    pub chains: Vec<Place>,
}

impl Missing {
    /// Missing rules plus missing chains (the `rules_missing` gauge).
    pub fn count(&self) -> usize {
        self.rules.iter().map(Shortfall::missing).sum::<usize>() + self.chains.len()
    }

    /// True when nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether everything missing in `other` is missing here too (at least as much).
    fn covers(&self, other: &Missing) -> bool {
        self.backend == other.backend
            && other.rules.iter().all(|o| {
                self.rules
                    .iter()
                    .any(|s| s.place == o.place && s.missing() >= o.missing())
            })
            && other.chains.iter().all(|c| self.chains.contains(c))
    }

    fn groups(&self) -> BTreeSet<Group> {
        let mut g: BTreeSet<Group> = self
            .rules
            .iter()
            .flat_map(|s| s.groups.iter().copied())
            .collect();
        if !self.chains.is_empty() {
            g.insert(Group::NatHook);
        }
        g
    }

    /// The warning: what is missing where, what stops working, and `fix`.
    pub fn message(&self, fix: &str) -> String {
        let places: Vec<String> = if self.count() == self.total {
            vec!["all of them (a firewall reload that flushes the whole ruleset does this)".into()]
        } else {
            let mut p: Vec<String> = self
                .rules
                .iter()
                .map(|s| format!("{}: {} of {}", s.place, s.missing(), s.expected))
                .collect();
            p.extend(self.chains.iter().map(|c| format!("base chain {c}")));
            p
        };
        let effects: Vec<&str> = self.groups().into_iter().map(effect).collect();
        format!(
            "ftpct's firewall rules are missing ({} of {}, {} backend): {}. Effect: {}. Restore \
             them with `{fix}`",
            self.count(),
            self.total,
            self.backend,
            places.join(", "),
            effects.join("; "),
        )
    }
}

/// What stops working without a group's rules.
fn effect(g: Group) -> &'static str {
    match g {
        Group::ControlPre => {
            "FTP control packets no longer reach ftpct before NAT, so PORT/EPRT/227/229 are not \
             rewritten (the server answers `500 Illegal PORT command.`, passive clients get a \
             private address)"
        }
        Group::ControlPost => {
            "acknowledgement numbers are no longer fixed after a rewrite, so control connections \
             with a rewrite stall"
        }
        Group::DataSyn => {
            "data-connection SYNs are no longer queued, so data connections are not admitted \
             (nor DNATed)"
        }
        Group::NatHook => {
            "the nat PREROUTING base chain may be gone, and with no nat base chain left in a \
             family the DNAT of data connections is not applied"
        }
    }
}

/// What the daemon should log after a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// First check: no ftpct rule in nf_tables at all (INFO).
    NothingFound,
    /// The rules of `backend` were found, at the first check or later (INFO).
    Found(Backend),
    /// Rules are missing (WARN); the text names them and the fix.
    Missing(String),
    /// Everything is back (INFO).
    Restored,
    /// The ruleset could not be read (WARN, once until a read succeeds).
    ReadFailed(String),
}

impl Notice {
    /// Whether it is logged as a warning.
    pub fn is_warning(&self) -> bool {
        matches!(self, Notice::Missing(_) | Notice::ReadFailed(_))
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::NothingFound => f.write_str(
                "rule check: no ftpct rule in nf_tables: they are not installed yet, or they \
                 were installed with --backend iptables-legacy, whose rules this check cannot \
                 read (it then stays idle). The check starts by itself once ftpct's rules \
                 appear in nf_tables",
            ),
            Notice::Found(b) => write!(
                f,
                "rule check: ftpct's firewall rules found ({b} backend); a removal will be reported"
            ),
            Notice::Missing(m) => f.write_str(m),
            Notice::Restored => f.write_str("ftpct rules present again"),
            Notice::ReadFailed(e) => write!(
                f,
                "rule check: cannot read the firewall rules: {e}; retrying every period (this \
                 is logged once until a read succeeds)"
            ),
        }
    }
}

/// The state of the check between periods.
#[derive(Debug)]
pub struct Checker {
    /// Per backend readable through nf_tables (iptables-nft, nft when its set names are valid
    /// nft names).
    expected: Vec<Expected>,
    /// The backend whose rules were seen; `None` until some were.
    active: Option<Backend>,
    checked: bool,
    /// What was last reported missing, and when.
    reported: Option<(Missing, Timestamp)>,
    read_failing: bool,
    missing_now: usize,
    repeat: Duration,
}

impl Checker {
    /// A checker for the rules of `spec` (the running configuration; its backend is ignored),
    /// whose fixes name `config` if given.
    pub fn new(spec: &RuleSpec, config: Option<&Path>) -> Result<Checker, SpecError> {
        let mut expected = Vec::new();
        if let Some(e) = Expected::new(spec, Backend::IptablesNft, config)? {
            expected.push(e);
        }
        // Set names valid for ipset but not for nft rule out the nft backend.
        if let Ok(Some(e)) = Expected::new(spec, Backend::Nft, config) {
            expected.push(e);
        }
        Ok(Checker {
            expected,
            active: None,
            checked: false,
            reported: None,
            read_failing: false,
            missing_now: 0,
            repeat: REPEAT,
        })
    }

    /// Sets how often a warning about rules still missing is repeated.
    pub fn with_repeat(mut self, repeat: Duration) -> Checker {
        self.repeat = repeat;
        self
    }

    /// The backend whose rules were seen.
    pub fn active(&self) -> Option<Backend> {
        self.active
    }

    /// Rules (and chains) missing at the last successful check; 0 while no backend is known.
    pub fn missing(&self) -> usize {
        self.missing_now
    }

    /// What `backend` installs (iptables-nft or nft).
    pub fn expected(&self, backend: Backend) -> Option<&Expected> {
        self.expected.iter().find(|e| e.backend == backend)
    }

    /// Takes the result of a read at `now`; returns what to log, in order.
    pub fn observe(&mut self, observed: &Observed, now: Timestamp) -> Vec<Notice> {
        let mut out = Vec::new();
        self.read_failing = false;
        let first = !self.checked;
        self.checked = true;
        let seen = observed.backend().filter(|b| self.expected(*b).is_some());
        if let Some(b) = seen {
            if self.active != Some(b) {
                self.active = Some(b);
                // A report about another backend's rules no longer applies.
                if self.reported.as_ref().is_some_and(|(m, _)| m.backend != b) {
                    self.reported = None;
                }
                out.push(Notice::Found(b));
            }
        }
        let Some(active) = self.active else {
            if first {
                out.push(Notice::NothingFound);
            }
            return out;
        };
        let Some(exp) = self.expected(active) else {
            return out;
        };
        let missing = exp.compare(observed);
        let fix = exp.fix.clone();
        self.missing_now = missing.count();
        if missing.is_empty() {
            if self.reported.take().is_some() {
                out.push(Notice::Restored);
            }
            return out;
        }
        let due = match &self.reported {
            None => true,
            Some((last, at)) => !last.covers(&missing) || now.since(*at) >= self.repeat,
        };
        if due {
            out.push(Notice::Missing(missing.message(&fix)));
            self.reported = Some((missing, now));
        }
        out
    }

    /// Takes a failed read; returns the warning the first time in a row.
    pub fn read_failed(&mut self, error: &dyn fmt::Display) -> Option<Notice> {
        if self.read_failing {
            return None;
        }
        self.read_failing = true;
        Some(Notice::ReadFailed(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RuleSpec {
        RuleSpec {
            queue: 7,
            ..RuleSpec::default()
        }
    }

    /// What `ftpct rules --apply` leaves in nf_tables for `spec` with `backend`.
    fn installed(spec: &RuleSpec, backend: Backend) -> Observed {
        let mut o = Observed::default();
        match backend {
            Backend::Nft => {
                let verdicts = rules::nft_verdict_rules(spec);
                for r in rules::nft_rules(spec).unwrap().iter().chain(&verdicts) {
                    o.add_rule(Place::new(NfFamily::Inet, "ftpct", r.chain));
                }
                for (c, ..) in rules::NFT_CHAINS {
                    o.add_chain(Place::new(NfFamily::Inet, "ftpct", c));
                }
            }
            _ => {
                for r in rules::rules(spec).unwrap() {
                    o.add_rule(Place::new(NfFamily::of(r.family), r.table, r.chain));
                }
            }
        }
        o
    }

    fn remove(o: &mut Observed, family: NfFamily, table: &str, chain: &str) {
        o.rules.remove(&Place::new(family, table, chain));
    }

    fn t(s: u64) -> Timestamp {
        Timestamp::from_secs(s)
    }

    #[test]
    fn expected_of_iptables_nft_per_chain() {
        let e = Expected::new(&spec(), Backend::IptablesNft, None)
            .unwrap()
            .unwrap();
        let at = |f, table, chain| e.rules[&Place::new(f, table, chain)].0;
        // (a) 2 directions + (c) 1 set per family.
        assert_eq!(at(NfFamily::Ip, "raw", "PREROUTING"), 3);
        assert_eq!(at(NfFamily::Ip6, "raw", "PREROUTING"), 3);
        assert_eq!(at(NfFamily::Ip, "raw", "OUTPUT"), 2);
        assert_eq!(at(NfFamily::Ip, "mangle", "POSTROUTING"), 2);
        assert_eq!(at(NfFamily::Ip6, "mangle", "INPUT"), 2);
        assert_eq!(at(NfFamily::Ip, "nat", "PREROUTING"), 1);
        assert_eq!(e.total(), rules::rules(&spec()).unwrap().len());
        assert!(e.chains.is_empty());
        assert_eq!(e.fix, "ftpct rules --queue 7 --ports 21 --apply");
        assert!(Expected::new(&spec(), Backend::IptablesLegacy, None)
            .unwrap()
            .is_none());
        let n = Expected::new(&spec(), Backend::Nft, Some(Path::new("/etc/f.conf")))
            .unwrap()
            .unwrap();
        // 10 rules in the base chains, one in each verdict chain, and the nat chain.
        assert_eq!(n.total(), 13);
        assert_eq!(
            n.fix,
            "ftpct rules --config /etc/f.conf --backend nft --queue 7 --ports 21 --apply"
        );
    }

    #[test]
    fn all_present_means_nothing_missing() {
        for b in [Backend::IptablesNft, Backend::Nft] {
            let e = Expected::new(&spec(), b, None).unwrap().unwrap();
            let o = installed(&spec(), b);
            assert_eq!(o.backend(), Some(b));
            let m = e.compare(&o);
            assert!(m.is_empty(), "{b}: {m:?}");
            assert_eq!(m.total, e.total());
        }
        assert_eq!(Observed::default().backend(), None);
    }

    #[test]
    fn raw_prerouting_flushed_is_named_with_the_fix() {
        let e = Expected::new(&spec(), Backend::IptablesNft, None)
            .unwrap()
            .unwrap();
        let mut o = installed(&spec(), Backend::IptablesNft);
        remove(&mut o, NfFamily::Ip, "raw", "PREROUTING");
        let m = e.compare(&o);
        assert_eq!(m.count(), 3);
        assert_eq!(m.rules.len(), 1);
        assert_eq!(m.rules[0].found, 0);
        let text = m.message(&e.fix);
        assert!(text.contains("raw PREROUTING (IPv4): 3 of 3"), "{text}");
        assert!(text.contains("(3 of 20, iptables-nft backend)"), "{text}");
        assert!(
            text.ends_with("`ftpct rules --queue 7 --ports 21 --apply`"),
            "{text}"
        );
        assert!(text.contains("not rewritten"), "{text}");
        assert!(text.contains("SYNs are no longer queued"), "{text}");
        assert!(!text.contains("acknowledgement"), "{text}");
    }

    #[test]
    fn one_rule_of_a_chain_missing_counts_one() {
        let e = Expected::new(&spec(), Backend::IptablesNft, None)
            .unwrap()
            .unwrap();
        let mut o = installed(&spec(), Backend::IptablesNft);
        *o.rules
            .get_mut(&Place::new(NfFamily::Ip6, "mangle", "INPUT"))
            .unwrap() -= 1;
        // A duplicate elsewhere does not make up for it.
        o.add_rule(Place::new(NfFamily::Ip6, "mangle", "POSTROUTING"));
        let m = e.compare(&o);
        assert_eq!(m.count(), 1);
        assert!(m.message("x").contains("mangle INPUT (IPv6): 1 of 2"));
    }

    #[test]
    fn nft_backend_nat_chain_is_checked_as_a_chain() {
        let e = Expected::new(&spec(), Backend::Nft, None).unwrap().unwrap();
        let mut o = installed(&spec(), Backend::Nft);
        o.chains
            .remove(&Place::new(NfFamily::Inet, "ftpct", "nat_prerouting"));
        let m = e.compare(&o);
        assert_eq!(m.count(), 1);
        let text = m.message(&e.fix);
        assert!(
            text.contains("base chain inet ftpct nat_prerouting"),
            "{text}"
        );
        assert!(text.contains("--backend nft"), "{text}");
        assert!(text.contains("DNAT"), "{text}");
    }

    #[test]
    fn checker_warns_once_then_repeats_then_says_restored() {
        let mut c = Checker::new(&spec(), None).unwrap();
        let ok = installed(&spec(), Backend::IptablesNft);
        assert_eq!(c.observe(&ok, t(0)), [Notice::Found(Backend::IptablesNft)]);
        assert_eq!(c.missing(), 0);
        assert!(c.observe(&ok, t(5)).is_empty());

        let mut nat_gone = ok.clone();
        remove(&mut nat_gone, NfFamily::Ip, "nat", "PREROUTING");
        let n = c.observe(&nat_gone, t(10));
        assert_eq!(n.len(), 1);
        assert!(n[0].is_warning());
        let text = n[0].to_string();
        assert!(text.contains("nat PREROUTING (IPv4): 1 of 1"), "{text}");
        assert!(text.contains("ftpct rules --queue 7 --ports 21 --apply"));
        assert_eq!(c.missing(), 1);
        // Not again every period...
        for s in [15, 20, 100, 309] {
            assert!(c.observe(&nat_gone, t(s)).is_empty(), "at {s}");
        }
        // ...but every REPEAT.
        assert_eq!(c.observe(&nat_gone, t(310)).len(), 1);
        assert!(c.observe(&nat_gone, t(315)).is_empty());

        // More missing: said at once.
        let mut more = nat_gone.clone();
        remove(&mut more, NfFamily::Ip, "raw", "PREROUTING");
        let n = c.observe(&more, t(320));
        assert_eq!(n.len(), 1);
        assert!(n[0].to_string().contains("raw PREROUTING (IPv4)"));
        assert_eq!(c.missing(), 4);
        // Less missing: nothing new to say (the gauge follows).
        assert!(c.observe(&nat_gone, t(325)).is_empty());
        assert_eq!(c.missing(), 1);

        let n = c.observe(&ok, t(330));
        assert_eq!(n, [Notice::Restored]);
        assert!(!n[0].is_warning());
        assert_eq!(n[0].to_string(), "ftpct rules present again");
        assert_eq!(c.missing(), 0);
        assert!(c.observe(&ok, t(335)).is_empty());
        // Gone again: warned again at once.
        assert_eq!(c.observe(&nat_gone, t(340)).len(), 1);
    }

    #[test]
    fn everything_flushed_after_being_seen_is_all_missing() {
        let mut c = Checker::new(&spec(), None).unwrap();
        c.observe(&installed(&spec(), Backend::IptablesNft), t(0));
        let n = c.observe(&Observed::default(), t(5));
        assert_eq!(n.len(), 1);
        let text = n[0].to_string();
        assert!(
            text.contains("(20 of 20, iptables-nft backend): all of them"),
            "{text}"
        );
        assert!(!text.contains("raw PREROUTING"), "{text}");
        assert_eq!(c.missing(), 20);
    }

    #[test]
    fn nothing_in_nf_tables_at_start_waits_for_rules() {
        let mut c = Checker::new(&spec(), None).unwrap();
        let n = c.observe(&Observed::default(), t(0));
        assert_eq!(n, [Notice::NothingFound]);
        assert!(n[0].to_string().contains("iptables-legacy"));
        assert!(!n[0].is_warning());
        assert!(c.observe(&Observed::default(), t(5)).is_empty());
        assert_eq!(c.missing(), 0);
        assert_eq!(c.active(), None);
        // Installed later: found, and checked from then on.
        let ok = installed(&spec(), Backend::IptablesNft);
        assert_eq!(c.observe(&ok, t(10)), [Notice::Found(Backend::IptablesNft)]);
        let mut gone = ok.clone();
        remove(&mut gone, NfFamily::Ip6, "raw", "OUTPUT");
        assert_eq!(c.observe(&gone, t(15)).len(), 1);
    }

    #[test]
    fn switching_backend_follows_the_rules_seen() {
        let mut c = Checker::new(&spec(), None).unwrap();
        c.observe(&installed(&spec(), Backend::IptablesNft), t(0));
        c.observe(&Observed::default(), t(5));
        assert_eq!(c.missing(), 20);
        let nft = installed(&spec(), Backend::Nft);
        assert_eq!(c.observe(&nft, t(10)), [Notice::Found(Backend::Nft)]);
        assert_eq!(c.missing(), 0);
        assert_eq!(c.active(), Some(Backend::Nft));
    }

    #[test]
    fn set_names_nft_refuses_leave_iptables_only() {
        let s = RuleSpec {
            set4: "my-set4".into(),
            ..spec()
        };
        let c = Checker::new(&s, None).unwrap();
        assert!(c.expected(Backend::IptablesNft).is_some());
        assert!(c.expected(Backend::Nft).is_none());
        // An inet ftpct table is then not taken for ftpct's rules.
        let mut c = c;
        let mut o = Observed::default();
        o.add_chain(Place::new(NfFamily::Inet, "ftpct", "raw_output"));
        assert_eq!(c.observe(&o, t(0)), [Notice::NothingFound]);
    }

    #[test]
    fn read_errors_are_said_once_per_streak() {
        let mut c = Checker::new(&spec(), None).unwrap();
        let n = c.read_failed(&"EPERM").unwrap();
        assert!(n.is_warning());
        assert!(n.to_string().contains("EPERM"));
        assert!(c.read_failed(&"EPERM").is_none());
        c.observe(&installed(&spec(), Backend::IptablesNft), t(0));
        assert!(c.read_failed(&"again").is_some());
    }

    #[test]
    fn places_print_as_admins_name_them() {
        assert_eq!(
            Place::new(NfFamily::Ip, "raw", "PREROUTING").to_string(),
            "raw PREROUTING (IPv4)"
        );
        assert_eq!(
            Place::new(NfFamily::Inet, "ftpct", "raw_output").to_string(),
            "inet ftpct raw_output"
        );
        assert_eq!(NfFamily::from_nfproto(10), Some(NfFamily::Ip6));
        for f in [NfFamily::Ip, NfFamily::Ip6, NfFamily::Inet] {
            assert_eq!(NfFamily::from_nfproto(f.nfproto()), Some(f));
        }
        // Every place ftpct installs rules in is read.
        for b in [Backend::IptablesNft, Backend::Nft] {
            let e = Expected::new(&spec(), b, None).unwrap().unwrap();
            for p in e.rules.keys().chain(e.chains.iter()) {
                assert!(
                    tables_to_read().contains(&(p.family, p.table.as_str())),
                    "{p}"
                );
            }
        }
        assert_eq!(NfFamily::from_nfproto(7), None);
    }
}
