//! The firewall rules ftpct needs, for three backends, as data: the specification
//! ([`RuleSpec`]), the rules it gives ([`rules`], [`nft_rules`], [`nft_script`], [`render`]),
//! and the names they share with the daemon's rule check ([`crate::rulecheck`]). Pure: applying
//! and removing them (running `iptables`/`nft`, netlink) is the `ftpct` crate's `rules` module.
//!
//! # What the rules do
//!
//! For each family (set `set4` for IPv4, `set6` for IPv6):
//! - (a) raw PREROUTING and raw OUTPUT: FTP control packets of both directions (`--dports` and
//!   `--sports`), except pure SYNs, queued *before* conntrack and NAT: the daemon parses and
//!   rewrites them there ([`Hook::PreConntrack`](crate::types::Hook::PreConntrack));
//! - (b) mangle POSTROUTING and mangle INPUT: the same packets *after* conntrack and DNAT, where
//!   the daemon fixes acknowledgement numbers ([`Hook::PostConntrack`](crate::types::Hook));
//!   the shell's NFQUEUE reader maps hooks to these two meanings, so queues must be at exactly these
//!   hooks, at the raw (-300) and mangle (-150) priorities;
//! - (c) raw PREROUTING: SYNs whose `destination address,port` is in the set that the daemon
//!   fills as it creates expectations — the data connections that may match one — always with
//!   `--queue-bypass` so that without a running daemon they pass untouched. The SYN must be
//!   queued *before* conntrack (the daemon creates the data connection's conntrack entry before
//!   the SYN reaches conntrack), so `ct state new` cannot select it: at priority -300 there is no
//!   conntrack entry yet, and after conntrack the SYN has already made an unrelated one;
//! - (d) nat PREROUTING: the NAT hook must be registered for the DNAT of the data entries
//!   (ctnetlink) to be applied. With iptables-nft, nat chains are created lazily, so a
//!   rule that matches everything and does nothing (only the comment) is added; with nft, an
//!   empty `type nat hook prerouting` base chain; with iptables-legacy the nat table registers
//!   all its hooks anyway, and the rule is kept for uniformity.
//!
//! # Backends ([`Backend`])
//!
//! - `iptables-nft` (the default): `iptables-nft`/`ip6tables-nft`. Every rule carries
//!   `-m comment --comment ftpct`. Needs nf_tables with the IPv4/IPv6 families and `nft_compat`
//!   (the multiport, set and comment matches and the NFQUEUE target are x_tables extensions that
//!   nf_tables runs through `nft_compat`), plus the ipset `hash:ip,port` type.
//! - `iptables-legacy`: `iptables-legacy`/`ip6tables-legacy`, the same rules in the legacy
//!   x_tables tables. Needs the legacy `ip_tables`/`ip6_tables` with the raw, mangle and nat
//!   tables. Recent kernels can be built without them: they are the options
//!   `CONFIG_IP_NF_IPTABLES_LEGACY`/`CONFIG_IP6_NF_IPTABLES_LEGACY` (under
//!   `CONFIG_NETFILTER_XTABLES_LEGACY` on this project's 6.18 kernels, which have them).
//! - `nft`: a table of its own, `table inet ftpct`, with base chains at the same hooks and
//!   priorities and native nft sets (`ipv4_addr . inet_service` with timeouts) instead of the
//!   ipsets; the daemon fills them over nf_tables netlink (`NftSets`). The
//!   base chains' rules `goto` one of two regular chains, `queue_control` and `queue_data`,
//!   whose one rule is the NFQUEUE verdict. Where the kernel has the nf_tables `queue`
//!   expression (`CONFIG_NFT_QUEUE`, module `nft_queue`) that rule is `queue num N [bypass]`,
//!   written by `nft -f`. Where it does not (this project's test machines among them), `apply`
//!   writes the x_tables `NFQUEUE` target run through nft_compat (`CONFIG_NFT_COMPAT`,
//!   `CONFIG_NETFILTER_XT_TARGET_NFQUEUE`) over netlink instead
//!   (`NfTables::install_queue_targets`), because `nft` has no syntax for
//!   x_tables targets; `nft list` shows it as `queue num N`, with a warning that the table is
//!   "managed by iptables-nft". Without either, `apply` fails with
//!   `RulesError::KernelFeature` and leaves nothing behind.
//!
//! # Never touching the admin's rules
//!
//! The iptables backends only append (`-A`) rules carrying the `ftpct` comment and only delete
//! rules carrying it: `delete` removes each rule of the spec by its full specification (until
//! `-C` no longer finds it), then sweeps the raw, mangle and nat tables for any other rule whose
//! comment is exactly `ftpct` (left by a run with another queue number or other ports, e.g. after
//! the configuration changed). The nft backend only ever changes `table inet ftpct`, in one
//! atomic batch per call. The admin's `ESTABLISHED,RELATED -j ACCEPT` is never touched.
//! Rules are appended, not inserted: an NFQUEUE verdict of accept resumes at the next hook,
//! skipping the rest of the chain, so appending keeps the admin's own raw/mangle rules in
//! effect for these packets.
//!
//! The ipsets are created and destroyed through netlink (the `ipset` module) rather than the
//! `ipset` CLI: the same code as the daemon's, typed errors, and no dependency on the `ipset`
//! package (the kernel's `xt_set` match is all iptables needs).

use std::fmt;
use std::str::FromStr;

/// Conntrack mark bit that the daemon sets on control connections with a sequence offset
/// (`seqadj_mark`), by default.
pub const DEFAULT_SEQADJ_MARK: u32 = 0x0010_0000;
/// Longest ipset (and nft set) name.
pub const MAX_NAME_LEN: usize = 31;
/// Default ipset of IPv4 data destinations.
pub const DEFAULT_SET4: &str = "ftpct4";
/// Default ipset of IPv6 data destinations.
pub const DEFAULT_SET6: &str = "ftpct6";

/// Comment on every ftpct rule.
pub const COMMENT: &str = "ftpct";
/// Default timeout of the ipsets and nft sets (elements are added with their own timeout).
pub const SET_DEFAULT_TIMEOUT: u32 = 120;
/// The nft backend's table: `table inet ftpct`.
pub const NFT_TABLE: &str = "ftpct";
/// `multiport` accepts at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

/// Which tool installs the rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft`/`ip6tables-nft` (x_tables extensions through nf_tables' `nft_compat`).
    #[default]
    IptablesNft,
    /// `iptables-legacy`/`ip6tables-legacy` (the legacy x_tables tables).
    IptablesLegacy,
    /// `nft`, native nftables: `table inet ftpct`.
    Nft,
}

impl Backend {
    /// Every backend.
    pub const ALL: [Backend; 3] = [Backend::IptablesNft, Backend::IptablesLegacy, Backend::Nft];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
            Backend::Nft => "nft",
        }
    }

    /// The program for a family (iptables backends only).
    pub fn program(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::IptablesLegacy, Family::V4) => "iptables-legacy",
            (Backend::IptablesLegacy, Family::V6) => "ip6tables-legacy",
            (_, Family::V4) => "iptables-nft",
            (_, Family::V6) => "ip6tables-nft",
        }
    }

    /// How to get the backend's program, for an error message.
    pub fn install_hint(self) -> &'static str {
        match self {
            Backend::Nft => "install it (Debian: apt-get install nftables)",
            _ => "install it (Debian: apt-get install iptables, which ships both iptables-nft and iptables-legacy)",
        }
    }

    /// What the kernel must have for this backend (kernel config symbols).
    pub fn kernel_requirements(self) -> &'static str {
        match self {
            Backend::IptablesNft => {
                "nf_tables with the IPv4 and IPv6 families (CONFIG_NF_TABLES, CONFIG_NF_TABLES_IPV4, \
                 CONFIG_NF_TABLES_IPV6), nft_compat (CONFIG_NFT_COMPAT) and the x_tables extensions \
                 NFQUEUE, multiport, set and comment, plus ipset hash:ip,port"
            }
            Backend::IptablesLegacy => {
                "the legacy x_tables tables raw, mangle and nat for IPv4 and IPv6 \
                 (CONFIG_IP_NF_IPTABLES_LEGACY and CONFIG_IP6_NF_IPTABLES_LEGACY on recent kernels, \
                 CONFIG_IP_NF_RAW, CONFIG_IP_NF_MANGLE, CONFIG_IP_NF_NAT and their IP6 twins) and the \
                 x_tables extensions NFQUEUE, multiport, set and comment, plus ipset hash:ip,port"
            }
            Backend::Nft => {
                "nf_tables with the inet family (CONFIG_NF_TABLES_INET), inet nat chains \
                 (CONFIG_NFT_NAT, Linux >= 5.2), sets with timeouts and concatenations, and either \
                 the queue expression (CONFIG_NFT_QUEUE, module nft_queue) or the x_tables NFQUEUE \
                 target through nft_compat (CONFIG_NFT_COMPAT, CONFIG_NETFILTER_XT_TARGET_NFQUEUE)"
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend name that is none of [`Backend::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend '{0}': use iptables-nft, iptables-legacy or nft")]
pub struct UnknownBackend(pub String);

impl FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownBackend(s.to_string()))
    }
}

/// What to generate rules for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// NFQUEUE queue number.
    pub queue: u16,
    /// FTP control ports (usually `[21]`).
    pub ports: Vec<u16>,
    /// Set of IPv4 data destinations (an ipset, or an nft set in `table inet ftpct`).
    pub set4: String,
    /// Set of IPv6 data destinations.
    pub set6: String,
    /// `--queue-bypass` on the control-packet rules: accept them unprocessed when no daemon is
    /// bound (an FTP through NAT then fails as without ALG) instead of dropping them.
    pub bypass: bool,
    /// Which tool installs the rules.
    pub backend: Backend,
    /// Conntrack mark bit(s) that the daemon sets on a control connection once it has a
    /// sequence offset: the post-conntrack rules (b) then queue only connections carrying them
    /// (`-m connmark --mark M/M`). 0: every control packet is queued after conntrack too.
    pub seqadj_mark: u32,
    /// `maxelem` of the ipsets: how many data destinations they hold at once. The daemon never
    /// has more than `max_expectations` expectations, each with one element, so that is the
    /// value used (`Settings::rule_spec` in the `ftpct` crate).
    pub maxelem: u32,
}

impl Default for RuleSpec {
    fn default() -> Self {
        RuleSpec {
            queue: 0,
            ports: vec![21],
            set4: DEFAULT_SET4.to_string(),
            set6: DEFAULT_SET6.to_string(),
            bypass: false,
            backend: Backend::default(),
            seqadj_mark: DEFAULT_SEQADJ_MARK,
            maxelem: set_maxelem(crate::policy::Policy::default().max_expectations),
        }
    }
}

/// The ipsets' `maxelem` for `max_expectations` (at least 1, at most `u32::MAX`).
pub fn set_maxelem(max_expectations: usize) -> u32 {
    u32::try_from(max_expectations).unwrap_or(u32::MAX).max(1)
}

impl RuleSpec {
    /// The `ftpct rules` command line that gives these rules, ending with `action` (`--apply`,
    /// `--delete`), for messages that tell the admin what to run. With `config` (the file the
    /// daemon or the command was started with) the set names, `fail_open` and
    /// `max_expectations` come from that file; the queue and ports are always spelled out, as
    /// they may have been given on the command line. Without `config`, set names other than
    /// the defaults cannot be given on the command line and are not shown.
    pub fn command_line(&self, config: Option<&std::path::Path>, action: &str) -> String {
        let mut s = String::from("ftpct rules");
        if let Some(c) = config {
            s.push_str(" --config ");
            s.push_str(&shell_quote(&c.display().to_string()));
        }
        if self.backend != Backend::default() {
            s.push_str(" --backend ");
            s.push_str(self.backend.name());
        }
        s.push_str(&format!(" --queue {}", self.queue));
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        s.push_str(&format!(" --ports {}", ports.join(",")));
        if self.bypass {
            s.push_str(" --bypass");
        }
        s.push(' ');
        s.push_str(action);
        s
    }
}

/// Address family of a rule: which tool applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// `iptables` or `ip6tables` (the generic name; [`Rule::program`] is the one run).
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Which of the four groups (see the module doc) a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// (a) control packets before conntrack.
    ControlPre,
    /// (b) control packets after conntrack.
    ControlPost,
    /// (c) data SYNs listed in the set.
    DataSyn,
    /// (d) nat PREROUTING base chain.
    NatHook,
}

/// One iptables rule: `program -t table -A chain args...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// IPv4 or IPv6.
    pub family: Family,
    /// [`Backend::IptablesNft`] or [`Backend::IptablesLegacy`].
    pub backend: Backend,
    /// The table (`raw`, `mangle`, `filter`, `nat`).
    pub table: &'static str,
    /// The chain.
    pub chain: &'static str,
    /// The rule specification (matches and target), without `-t`/`-A`.
    pub args: Vec<String>,
    /// What the rule is for.
    pub group: Group,
}

impl Rule {
    /// The program that applies this rule (`iptables-nft`, `ip6tables-legacy`, ...).
    pub fn program(&self) -> &'static str {
        self.backend.program(self.family)
    }

    /// The command line that appends this rule.
    pub fn command_line(&self) -> String {
        let mut s = format!("{} -t {} -A {}", self.program(), self.table, self.chain);
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }
}

/// Errors of rule generation (a specification that cannot be turned into rules). Each message
/// says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// No FTP control port given.
    #[error("rules: no FTP control port given: give at least one port (e.g. 21)")]
    NoPorts,
    /// Port 0 among the control ports.
    #[error("rules: port 0 is not a valid FTP control port")]
    PortZero,
    #[error(
        "rules: invalid set name {0:?}: use 1 to 31 characters among letters, digits, '_', '-', '.'"
    )]
    /// A set name the iptables backends cannot use.
    BadSetName(String),
    #[error(
        "rules: invalid nft set name {0:?}: with --backend nft, use 1 to 31 characters among \
         letters, digits and '_', starting with a letter"
    )]
    /// A set name the nft backend cannot use.
    BadNftSetName(String),
    /// Iptables rules asked of the nft backend.
    #[error("rules: the {0} backend has no iptables rules (use render() or nft_script())")]
    NotIptables(Backend),
}

/// Whether `name` can name a set of `backend`: an ipset (the iptables backends: what ipset and
/// iptables' set match accept) or an nft set in `table inet ftpct` (an nft identifier). The one
/// check of `ftpct rules` and of the configuration file (`config.rs` in the ftpct crate).
pub fn check_set_name(name: &str, backend: Backend) -> Result<(), SpecError> {
    if backend == Backend::Nft {
        let mut cs = name.chars();
        let ok = name.len() <= MAX_NAME_LEN
            && cs.next().is_some_and(|c| c.is_ascii_alphabetic())
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_');
        return if ok {
            Ok(())
        } else {
            Err(SpecError::BadNftSetName(name.to_string()))
        };
    }
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadSetName(name.to_string()))
    }
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// Validates the spec; returns its ports without duplicates, in order.
pub fn checked_ports(spec: &RuleSpec) -> Result<Vec<u16>, SpecError> {
    if spec.ports.is_empty() {
        return Err(SpecError::NoPorts);
    }
    if spec.ports.contains(&0) {
        return Err(SpecError::PortZero);
    }
    check_set_name(&spec.set4, spec.backend)?;
    check_set_name(&spec.set6, spec.backend)?;
    let mut ports: Vec<u16> = Vec::with_capacity(spec.ports.len());
    for p in &spec.ports {
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    Ok(ports)
}

/// The iptables rules for `spec` (backend `iptables-nft` or `iptables-legacy`), in the order
/// they are applied and printed: group (a), (b), (c), (d), IPv4 before IPv6 within each
/// table/chain.
pub fn rules(spec: &RuleSpec) -> Result<Vec<Rule>, SpecError> {
    if spec.backend == Backend::Nft {
        return Err(SpecError::NotIptables(spec.backend));
    }
    let ports = checked_ports(spec)?;
    let backend = spec.backend;
    let queue = spec.queue.to_string();
    let target = |bypass: bool| {
        let mut t = strings(&["-j", "NFQUEUE", "--queue-num", &queue]);
        if bypass {
            t.push("--queue-bypass".into());
        }
        t
    };
    let comment = strings(&["-m", "comment", "--comment", COMMENT]);
    let marked = format!("{0:#x}/{0:#x}", spec.seqadj_mark);
    let control = |dir: &str, list: &str, group: Group| {
        let mut a = strings(&["-p", "tcp", "-m", "multiport", dir, list, "!", "--syn"]);
        if group == Group::ControlPost && spec.seqadj_mark != 0 {
            a.extend(strings(&["-m", "connmark", "--mark", &marked]));
        }
        a.extend(comment.iter().cloned());
        a.extend(target(spec.bypass));
        a
    };
    let lists: Vec<String> = ports
        .chunks(MULTIPORT_MAX)
        .map(|c| c.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
        .collect();

    let mut out = Vec::new();
    let groups: [(Group, [(&'static str, &'static str); 2]); 2] = [
        (
            Group::ControlPre,
            [("raw", "PREROUTING"), ("raw", "OUTPUT")],
        ),
        (
            Group::ControlPost,
            [("mangle", "POSTROUTING"), ("mangle", "INPUT")],
        ),
    ];
    for (group, places) in groups {
        for (table, chain) in places {
            for family in [Family::V4, Family::V6] {
                for list in &lists {
                    for dir in ["--dports", "--sports"] {
                        out.push(Rule {
                            family,
                            backend,
                            table,
                            chain,
                            args: control(dir, list, group),
                            group,
                        });
                    }
                }
            }
        }
    }
    for (family, set) in [(Family::V4, &spec.set4), (Family::V6, &spec.set6)] {
        let mut a = strings(&[
            "-p",
            "tcp",
            "--syn",
            "-m",
            "set",
            "--match-set",
            set,
            "dst,dst",
        ]);
        a.extend(comment.iter().cloned());
        a.extend(target(true));
        out.push(Rule {
            family,
            backend,
            table: "raw",
            chain: "PREROUTING",
            args: a,
            group: Group::DataSyn,
        });
    }
    for family in [Family::V4, Family::V6] {
        out.push(Rule {
            family,
            backend,
            table: "nat",
            chain: "PREROUTING",
            args: comment.clone(),
            group: Group::NatHook,
        });
    }
    Ok(out)
}

fn group_header(g: Group) -> &'static str {
    match g {
        Group::ControlPre => {
            "# (a) FTP control packets, both directions, before conntrack and NAT (raw PREROUTING\n\
             #     and OUTPUT): ftpct parses and rewrites them here. Pure SYNs are not queued."
        }
        Group::ControlPost => {
            "# (b) the same packets after conntrack and DNAT (mangle POSTROUTING and INPUT):\n\
             #     ftpct fixes their acknowledgement numbers here. With a connmark match, only\n\
             #     connections that ftpct marked (it rewrote a line to another length) are queued."
        }
        Group::DataSyn => {
            "# (c) data-connection SYNs whose destination address,port is in the ipset that\n\
             #     ftpct fills with its expectations (hash:ip,port; created by `apply`);\n\
             #     --queue-bypass: without ftpct running they pass untouched."
        }
        Group::NatHook => {
            "# (d) a rule that matches everything and does nothing, in nat PREROUTING: it makes\n\
             #     iptables-nft create the nat PREROUTING base chain, without which the kernel\n\
             #     never applies the DNAT that ftpct sets on data connections."
        }
    }
}

/// The iptables rules as shell commands, one per line, grouped under comments explaining each
/// group.
pub fn print(rules: &[Rule]) -> String {
    let mut s = String::from(
        "# ftpct: iptables/ip6tables rules (every rule carries -m comment --comment ftpct;\n\
         # `ftpct rules --delete` removes exactly these).\n",
    );
    let mut last = None;
    for r in rules {
        if last != Some(r.group) {
            s.push('\n');
            s.push_str(group_header(r.group));
            s.push('\n');
            last = Some(r.group);
        }
        s.push_str(&r.command_line());
        s.push('\n');
    }
    s
}

/// What `ftpct rules` prints for `spec`: shell commands for the iptables backends, an
/// `nft -f` script for the nft backend.
pub fn render(spec: &RuleSpec) -> Result<String, SpecError> {
    match spec.backend {
        Backend::Nft => nft_script(spec),
        _ => rules(spec).map(|r| print(&r)),
    }
}

fn nft_queue(queue: u16, bypass: bool) -> String {
    if bypass {
        format!("queue num {queue} bypass")
    } else {
        format!("queue num {queue}")
    }
}

/// The nft backend's regular chain holding the NFQUEUE verdict of the control packets.
pub const NFT_QUEUE_CONTROL: &str = "queue_control";
/// The nft backend's regular chain holding the NFQUEUE verdict of the data SYNs (always with
/// bypass).
pub const NFT_QUEUE_DATA: &str = "queue_data";

/// The NFQUEUE verdict of one of the nft backend's verdict chains (written over netlink as the
/// x_tables target where the kernel lacks `nft_queue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueTarget {
    /// The verdict chain.
    pub chain: &'static str,
    /// The queue number.
    pub queue: u16,
    /// `NFQ_FLAG_BYPASS`: accept, not drop, when no program is bound to the queue.
    pub bypass: bool,
}

/// The nft backend's two verdict chains and what their one rule does.
pub fn nft_queue_targets(spec: &RuleSpec) -> [QueueTarget; 2] {
    [
        QueueTarget {
            chain: NFT_QUEUE_CONTROL,
            queue: spec.queue,
            bypass: spec.bypass,
        },
        QueueTarget {
            chain: NFT_QUEUE_DATA,
            queue: spec.queue,
            bypass: true,
        },
    ]
}

/// How the nft backend's verdict rules are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NftVerdicts {
    /// `queue num N` in the script (the kernel has `nft_queue`).
    Native,
    /// The x_tables NFQUEUE target, written over netlink before the script, which then leaves
    /// the verdict chains alone.
    Compat,
}

/// The nft backend's base chains in `table inet ftpct`: name, type, hook, priority (those of
/// the iptables tables: raw = -300, mangle = -150, dstnat = -100).
pub const NFT_CHAINS: [(&str, &str, &str, i32); 5] = [
    ("raw_prerouting", "filter", "prerouting", -300),
    ("raw_output", "filter", "output", -300),
    ("mangle_postrouting", "filter", "postrouting", -150),
    ("mangle_input", "filter", "input", -150),
    ("nat_prerouting", "nat", "prerouting", -100),
];

/// The nft backend's chain that holds no rule: the empty nat base chain (group (d)).
pub const NFT_NAT_CHAIN: &str = "nat_prerouting";

/// One rule of the nft backend: `add rule inet ftpct CHAIN TEXT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    /// The chain.
    pub chain: &'static str,
    /// The rule, `comment "ftpct"` included.
    pub text: String,
    /// What the rule is for.
    pub group: Group,
}

/// The nft backend's rules for `spec` in the order [`nft_script`] adds them (group (d) is the
/// empty chain [`NFT_NAT_CHAIN`], not a rule). Set names are checked as nft wants them,
/// whatever the spec's backend.
pub fn nft_rules(spec: &RuleSpec) -> Result<Vec<NftRule>, SpecError> {
    let spec = &RuleSpec {
        backend: Backend::Nft,
        ..spec.clone()
    };
    let ports = checked_ports(spec)?;
    let list = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let q = format!("goto {NFT_QUEUE_CONTROL}");
    let not_syn = "tcp flags & (fin | syn | rst | ack) != syn";
    let syn = "tcp flags & (fin | syn | rst | ack) == syn";
    let c = format!("comment \"{COMMENT}\"");
    let mut out = Vec::new();
    let control = [
        (Group::ControlPre, ["raw_prerouting", "raw_output"]),
        (Group::ControlPost, ["mangle_postrouting", "mangle_input"]),
    ];
    // (b) with a ct mark match: only the connections ftpct marked (see `seqadj_mark`)
    let marked = if spec.seqadj_mark != 0 {
        format!(" ct mark & {0:#x} == {0:#x}", spec.seqadj_mark)
    } else {
        String::new()
    };
    for (group, chains) in control {
        let m = if group == Group::ControlPost {
            marked.as_str()
        } else {
            ""
        };
        for chain in chains {
            for dir in ["dport", "sport"] {
                out.push(NftRule {
                    chain,
                    text: format!("tcp {dir} {{ {list} }} {not_syn}{m} {q} {c}"),
                    group,
                });
            }
        }
    }
    let qb = format!("goto {NFT_QUEUE_DATA}");
    for (set, fam) in [(&spec.set4, "ip"), (&spec.set6, "ip6")] {
        out.push(NftRule {
            chain: "raw_prerouting",
            text: format!("{syn} {fam} daddr . tcp dport @{set} {qb} {c}"),
            group: Group::DataSyn,
        });
    }
    Ok(out)
}

fn nft_group_header(g: Group) -> &'static str {
    match g {
        Group::ControlPre => {
            "# (a) FTP control packets, both directions, before conntrack and NAT; not pure SYNs."
        }
        Group::ControlPost => {
            "# (b) the same packets after conntrack and DNAT (acknowledgement numbers fixed here);\n\
             #     with a ct mark match, only the connections ftpct marked (a rewrite changed a\n\
             #     length)."
        }
        Group::DataSyn => {
            "# (c) data-connection SYNs to an expected destination; bypass: untouched without ftpct."
        }
        Group::NatHook => "# (d) the nat PREROUTING base chain (empty).",
    }
}

/// The rules of the verdict chains, as `nft` writes them ([`NftVerdicts::Native`]).
pub fn nft_verdict_rules(spec: &RuleSpec) -> Vec<NftRule> {
    nft_queue_targets(spec)
        .into_iter()
        .map(|t| NftRule {
            chain: t.chain,
            text: format!("{} comment \"{COMMENT}\"", nft_queue(t.queue, t.bypass)),
            group: if t.chain == NFT_QUEUE_DATA {
                Group::DataSyn
            } else {
                Group::ControlPre
            },
        })
        .collect()
}

/// The nft backend's script (for `nft -f`), with native verdict rules: what `ftpct rules
/// --backend nft` prints. See [`nft_script_for`].
pub fn nft_script(spec: &RuleSpec) -> Result<String, SpecError> {
    nft_script_for(spec, NftVerdicts::Native)
}

/// The nft backend's script: creates `table inet ftpct` with its sets and chains if missing,
/// keeps the sets' elements, and replaces the chains' rules — atomically, as nft runs a script
/// as one transaction. With [`NftVerdicts::Compat`] the verdict chains are declared but neither
/// flushed nor filled (their rules are written over netlink).
pub fn nft_script_for(spec: &RuleSpec, verdicts: NftVerdicts) -> Result<String, SpecError> {
    let rules = nft_rules(spec)?;
    let t = format!("inet {NFT_TABLE}");
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line("#!/usr/sbin/nft -f");
    line(&format!(
        "# ftpct: nftables rules, all in table {t} (`ftpct rules --backend nft --delete` deletes \
         the table)."
    ));
    line("# Loading this script again replaces the rules and keeps the sets' elements.");
    line(&format!("add table {t}"));
    line("");
    line("# Destinations (address . port) of expected data connections, with per-element");
    line("# timeouts: the daemon adds and deletes elements as it creates and ends expectations.");
    for (set, ty) in [(&spec.set4, "ipv4_addr"), (&spec.set6, "ipv6_addr")] {
        line(&format!(
            "add set {t} {set} {{ type {ty} . inet_service; flags timeout; timeout {SET_DEFAULT_TIMEOUT}s; }}"
        ));
    }
    line("");
    line("# Base chains at the hooks and priorities of the iptables tables: raw = -300,");
    line("# mangle = -150, dstnat = -100 (an empty nat chain registers the NAT hook that the");
    line("# daemon's DNAT of data connections needs).");
    for (name, ty, hook, prio) in NFT_CHAINS {
        line(&format!(
            "add chain {t} {name} {{ type {ty} hook {hook} priority {prio}; policy accept; }}"
        ));
    }
    line("");
    line("# The NFQUEUE verdicts, one rule per chain, reached by `goto` from the base chains.");
    match verdicts {
        NftVerdicts::Native => line(
            "# Kernels without the queue expression (CONFIG_NFT_QUEUE) get the x_tables NFQUEUE\n\
             # target through nft_compat instead, written over netlink by `ftpct rules --apply`\n\
             # (nft has no syntax for it).",
        ),
        NftVerdicts::Compat => line(
            "# This kernel has no queue expression (CONFIG_NFT_QUEUE): their rules are the x_tables\n\
             # NFQUEUE target through nft_compat, written over netlink, and left alone here.",
        ),
    }
    for chain in [NFT_QUEUE_CONTROL, NFT_QUEUE_DATA] {
        line(&format!("add chain {t} {chain}"));
    }
    let mut flush: Vec<&str> = NFT_CHAINS.iter().map(|c| c.0).collect();
    if verdicts == NftVerdicts::Native {
        flush.extend([NFT_QUEUE_CONTROL, NFT_QUEUE_DATA]);
    }
    for name in flush {
        line(&format!("flush chain {t} {name}"));
    }
    if verdicts == NftVerdicts::Native {
        for r in nft_verdict_rules(spec) {
            line(&format!("add rule {t} {} {}", r.chain, r.text));
        }
    }
    let mut last = None;
    for r in &rules {
        if last != Some(r.group) {
            line("");
            line(nft_group_header(r.group));
            last = Some(r.group);
        }
        line(&format!("add rule {t} {} {}", r.chain, r.text));
    }
    Ok(s)
}

/// `a` quoted for a POSIX shell when it needs quoting (it is returned as it is otherwise).
pub fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+!@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Splits a rule line of `iptables -S` into arguments: words separated by spaces, where a
/// double-quoted word may contain spaces and `\"`/`\\` escapes (as iptables prints comments).
pub fn split_rule_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Whether the arguments of a rule carry exactly ftpct's comment.
pub fn has_our_comment(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| matches!(w, [flag, text] if flag == "--comment" && text == COMMENT))
}

impl Group {
    /// What the group is, for reports, with where its rules are for `backend`.
    pub fn label(self, backend: Backend) -> &'static str {
        let nft = backend == Backend::Nft;
        match (self, nft) {
            (Group::ControlPre, false) => {
                "(a) control packets before conntrack (raw PREROUTING, OUTPUT)"
            }
            (Group::ControlPre, true) => {
                "(a) control packets before conntrack (raw_prerouting, raw_output, queue_control)"
            }
            (Group::ControlPost, false) => {
                "(b) control packets after conntrack (mangle POSTROUTING, INPUT)"
            }
            (Group::ControlPost, true) => {
                "(b) control packets after conntrack (mangle_postrouting, mangle_input)"
            }
            (Group::DataSyn, false) => {
                "(c) data-connection SYNs to expected destinations (raw PREROUTING)"
            }
            (Group::DataSyn, true) => {
                "(c) data-connection SYNs to expected destinations (raw_prerouting, queue_data)"
            }
            (Group::NatHook, _) => {
                "(d) nat PREROUTING rule (makes the kernel create the base chain)"
            }
        }
    }
}
