//! Applying and removing the rules of [`crate::rulespec`] idempotently ([`apply`],
//! [`delete`]) by running `iptables`/`ip6tables`/`nft` with argument vectors (never a shell),
//! the ipsets through netlink ([`crate::ipset`]) and, for the nft backend without the kernel's
//! `nft_queue`, the NFQUEUE verdicts over nf_tables netlink ([`crate::nftables`]). What the rules
//! are and do is documented in [`crate::rulespec`], whose items this module re-exports.

use std::fmt;
use std::io;
use std::process::{Command, Output};

pub use crate::rulespec::*;

use crate::ipset::{Ipset, IpsetError, SetFamily};
use crate::nftables::NfTables;

/// Bound on repeated deletions of one rule (duplicates left by earlier runs).
const MAX_DUPLICATES: usize = 64;
/// The tables the iptables backends put rules in (and sweep on delete).
const TABLES: [&str; 3] = ["raw", "mangle", "nat"];

/// Errors of rule application. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("rules: {program} not found: {hint}")]
    ToolMissing {
        program: &'static str,
        hint: &'static str,
    },
    #[error("rules: cannot run {program}: {source}")]
    Spawn {
        program: &'static str,
        source: io::Error,
    },
    #[error(
        "rules: the {backend} backend cannot work on this kernel: it lacks {feature}. \
         Use another --backend (see ftpct(8)) or a kernel with it. ({detail})"
    )]
    KernelFeature {
        backend: Backend,
        feature: String,
        detail: String,
    },
    #[error("rules: `{command}` failed ({status}): {stderr}; {hint}")]
    Failed {
        backend: Backend,
        command: String,
        status: String,
        stderr: String,
        /// What to check, from the tool's message.
        hint: String,
    },
    #[error(
        "rules: `{0}` still matches after {MAX_DUPLICATES} deletions; remove it by hand \
         (iptables-save | grep ftpct)"
    )]
    Stuck(String),
    #[error(transparent)]
    Ipset(#[from] IpsetError),
}

/// Runs a program with arguments; abstracted for tests.
pub trait Exec {
    /// Runs `program` with `args` and waits for it.
    fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output>;

    /// Writes the nft backend's x_tables NFQUEUE verdict rules ([`NftVerdicts::Compat`]) over
    /// nf_tables netlink.
    fn nft_queue_targets(&mut self, targets: &[QueueTarget]) -> Result<(), String>;

    /// Whether nf_tables has iptables-nft's nat PREROUTING base chain for `family` (`table ip
    /// nat` / `table ip6 nat`, chain `PREROUTING` with a hook), read over netlink:
    /// iptables-nft creates it lazily, and `iptables -S` shows it whether it exists or not.
    fn nat_base_chain(&mut self, family: Family) -> Result<bool, String>;
}

/// Runs commands with [`std::process::Command`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemExec;

/// The real kernel: programs with [`std::process::Command`], nf_tables over netlink. The trait
/// has no defaults, so that a test's fake never reaches the kernel by accident.
impl Exec for SystemExec {
    fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output> {
        Command::new(program).args(args).output()
    }

    fn nft_queue_targets(&mut self, targets: &[QueueTarget]) -> Result<(), String> {
        NfTables::open()
            .and_then(|mut t| t.install_queue_targets(targets))
            .map_err(|e| e.to_string())
    }

    fn nat_base_chain(&mut self, family: Family) -> Result<bool, String> {
        crate::nftables::nat_prerouting_exists(family).map_err(|e| e.to_string())
    }
}

fn spawn(
    exec: &mut dyn Exec,
    backend: Backend,
    program: &'static str,
    args: &[&str],
) -> Result<Output, RulesError> {
    exec.exec(program, args).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            RulesError::ToolMissing {
                program,
                hint: backend.install_hint(),
            }
        } else {
            RulesError::Spawn { program, source }
        }
    })
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// What to check after a tool failed with `stderr`.
fn hint_for(backend: Backend, stderr: &str) -> String {
    if stderr.contains("Can't open socket to ipset") {
        "iptables' set match opens a raw socket to look sets up: it needs CAP_NET_RAW as well \
         as CAP_NET_ADMIN"
            .into()
    } else if stderr.contains("xtables.lock") {
        "iptables-legacy needs write access to /run/xtables.lock (the lock shared by every \
         iptables-legacy user)"
            .into()
    } else if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        "run it as root, or with CAP_NET_ADMIN (and CAP_NET_RAW for iptables' set match and \
         for iptables-legacy)"
            .into()
    } else {
        format!(
            "the {backend} backend needs {}",
            backend.kernel_requirements()
        )
    }
}

fn failed(backend: Backend, program: &str, args: &[&str], out: &Output) -> RulesError {
    let stderr = stderr_of(out);
    RulesError::Failed {
        backend,
        command: format!("{program} {}", args.join(" ")),
        status: out.status.to_string(),
        hint: hint_for(backend, &stderr),
        stderr,
    }
}

/// Whether a failed `-C` means "no such rule": exit status 1 with iptables' own words for it
/// (or nothing). Status 1 is also the status of other errors (e.g. "Can't open socket to
/// ipset" without CAP_NET_RAW), which must not pass for "absent": `delete` would then leave
/// the rule and `apply` would fail later on `-A`, or add a duplicate.
fn check_says_absent(out: &Output) -> bool {
    if out.status.code() != Some(1) {
        return false;
    }
    let e = String::from_utf8_lossy(&out.stderr);
    let e = e.trim();
    e.is_empty()
        || e.contains("does a matching rule exist")
        || e.contains("No chain/target/match by that name")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Check,
    Append,
    Delete,
}

/// Runs `program -w -t table -C|-A|-D chain args`. For `Check`, `Ok(true)` = present,
/// `Ok(false)` = absent (exit status 1).
fn run(exec: &mut dyn Exec, op: Op, r: &Rule) -> Result<bool, RulesError> {
    let flag = match op {
        Op::Check => "-C",
        Op::Append => "-A",
        Op::Delete => "-D",
    };
    let mut argv: Vec<&str> = vec!["-w", "-t", r.table, flag, r.chain];
    argv.extend(r.args.iter().map(String::as_str));
    let program = r.program();
    let out = spawn(exec, r.backend, program, &argv)?;
    if out.status.success() {
        return Ok(true);
    }
    if op == Op::Check && check_says_absent(&out) {
        return Ok(false);
    }
    Err(failed(r.backend, program, &argv, &out))
}

/// Appends each rule that `-C` does not find. Returns how many were added.
pub fn apply_rules(exec: &mut dyn Exec, rules: &[Rule]) -> Result<usize, RulesError> {
    Ok(apply_rules_counted(exec, rules)?
        .iter()
        .map(|g| g.added)
        .sum())
}

/// [`apply_rules`], counted per group: the rules found in place and those added.
fn apply_rules_counted(exec: &mut dyn Exec, rules: &[Rule]) -> Result<Vec<GroupCount>, RulesError> {
    let mut counts = GroupCount::for_groups(rules.iter().map(|r| r.group));
    for r in rules {
        let c = GroupCount::of(&mut counts, r.group);
        if run(exec, Op::Check, r)? {
            c.present += 1;
        } else {
            run(exec, Op::Append, r)?;
            c.added += 1;
        }
    }
    Ok(counts)
}

/// Deletes each rule (last first) until `-C` no longer finds it. Returns how many were
/// deleted.
pub fn delete_rules(exec: &mut dyn Exec, rules: &[Rule]) -> Result<usize, RulesError> {
    Ok(delete_rules_counted(exec, rules)?
        .iter()
        .map(|g| g.removed)
        .sum())
}

/// [`delete_rules`], counted per group.
fn delete_rules_counted(
    exec: &mut dyn Exec,
    rules: &[Rule],
) -> Result<Vec<GroupCount>, RulesError> {
    let mut counts = GroupCount::for_groups(rules.iter().map(|r| r.group));
    for r in rules.iter().rev() {
        let mut n = 0;
        while run(exec, Op::Check, r)? {
            if n == MAX_DUPLICATES {
                return Err(RulesError::Stuck(r.command_line()));
            }
            run(exec, Op::Delete, r)?;
            n += 1;
            GroupCount::of(&mut counts, r.group).removed += 1;
        }
    }
    Ok(counts)
}

/// Deletes every rule of the raw, mangle and nat tables whose comment is exactly `ftpct`, for
/// both families, as listed by `-S` (rules of other specs: another queue number, other ports,
/// other set names). Returns how many were deleted.
pub fn sweep_rules(exec: &mut dyn Exec, backend: Backend) -> Result<usize, RulesError> {
    let mut deleted = 0;
    for family in [Family::V4, Family::V6] {
        let program = backend.program(family);
        for table in TABLES {
            let args = ["-w", "-t", table, "-S"];
            let out = spawn(exec, backend, program, &args)?;
            if !out.status.success() {
                return Err(failed(backend, program, &args, &out));
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in text.lines() {
                let words = split_rule_line(line);
                if words.len() < 2 || words[0] != "-A" || !has_our_comment(&words) {
                    continue;
                }
                let mut argv: Vec<&str> = vec!["-w", "-t", table, "-D"];
                argv.extend(words[1..].iter().map(String::as_str));
                let out = spawn(exec, backend, program, &argv)?;
                if !out.status.success() {
                    return Err(failed(backend, program, &argv, &out));
                }
                deleted += 1;
            }
        }
    }
    Ok(deleted)
}

/// Checks that the kernel has the tables an iptables backend needs, by listing them (`-S`).
fn preflight_iptables(exec: &mut dyn Exec, backend: Backend) -> Result<(), RulesError> {
    for family in [Family::V4, Family::V6] {
        let program = backend.program(family);
        for table in TABLES {
            let args = ["-w", "-t", table, "-S"];
            let out = spawn(exec, backend, program, &args)?;
            if out.status.success() {
                continue;
            }
            let stderr = stderr_of(&out);
            let missing_table = stderr.contains("does not exist")
                || stderr.contains("can't initialize")
                || stderr.contains("generation id")
                || stderr.contains("Protocol not supported")
                || stderr.contains("Address family not supported");
            if !missing_table {
                return Err(failed(backend, program, &args, &out));
            }
            let ip = match family {
                Family::V4 => "IP",
                Family::V6 => "IP6",
            };
            let feature = match backend {
                Backend::IptablesLegacy => format!(
                    "the legacy x_tables table '{table}' for {} (CONFIG_{ip}_NF_IPTABLES_LEGACY \
                     and CONFIG_{ip}_NF_{}, module {}table_{table})",
                    if family == Family::V4 { "IPv4" } else { "IPv6" },
                    table.to_ascii_uppercase(),
                    if family == Family::V4 { "ip" } else { "ip6" },
                ),
                _ => format!(
                    "nf_tables for {} (CONFIG_NF_TABLES, CONFIG_NF_TABLES_{})",
                    if family == Family::V4 { "IPv4" } else { "IPv6" },
                    if family == Family::V4 { "IPV4" } else { "IPV6" },
                ),
            };
            return Err(RulesError::KernelFeature {
                backend,
                feature,
                detail: format!("{program} {}: {stderr}", args.join(" ")),
            });
        }
    }
    Ok(())
}

/// `nft -t list table inet ftpct` (terse: without the sets' elements); `None` if there is no
/// such table.
fn nft_list(exec: &mut dyn Exec) -> Result<Option<String>, RulesError> {
    let args = ["-t", "list", "table", "inet", NFT_TABLE];
    let out = spawn(exec, Backend::Nft, "nft", &args)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    if stderr_of(&out).contains("No such file or directory") {
        return Ok(None);
    }
    Err(failed(Backend::Nft, "nft", &args, &out))
}

fn nft_rule_count(listing: &str) -> usize {
    listing
        .lines()
        .filter(|l| l.contains(&format!("comment \"{COMMENT}\"")))
        .count()
}

/// Dry-run probes (`nft -c`, nothing is created) of what the nft backend needs, in order; the
/// first one the kernel refuses names the missing feature.
const NFT_PROBES: [(&str, &str); 3] = [
    (
        "nf_tables with the inet family (CONFIG_NF_TABLES, CONFIG_NF_TABLES_INET)",
        "add table inet ftpct_probe\n\
         add chain inet ftpct_probe c { type filter hook prerouting priority -300; }",
    ),
    (
        "nat base chains in the inet family (CONFIG_NFT_NAT, Linux >= 5.2)",
        "add table inet ftpct_probe\n\
         add chain inet ftpct_probe n { type nat hook prerouting priority -100; }",
    ),
    (
        "nf_tables sets with concatenations and timeouts (CONFIG_NF_TABLES, nft_set_hash)",
        "add table inet ftpct_probe\n\
         add set inet ftpct_probe s { type ipv4_addr . inet_service; flags timeout; timeout 120s; }",
    ),
];

/// Dry-run probe of the nf_tables `queue` expression.
const NFT_QUEUE_PROBE: &str = "add table inet ftpct_probe\n\
     add chain inet ftpct_probe c { type filter hook prerouting priority -300; }\n\
     add rule inet ftpct_probe c meta l4proto tcp queue num 0 bypass";

/// Runs `probes` in order; the first refused one as [`RulesError::KernelFeature`].
fn nft_probe(exec: &mut dyn Exec, probes: &[(&str, &str)]) -> Result<(), RulesError> {
    for &(feature, probe) in probes {
        let out = spawn(exec, Backend::Nft, "nft", &["-c", probe])?;
        if !out.status.success() {
            return Err(RulesError::KernelFeature {
                backend: Backend::Nft,
                feature: feature.to_string(),
                detail: format!(
                    "nft -c '{}': {}",
                    probe.lines().last().unwrap_or(""),
                    // nft may append a misleading "; did you mean chain X" guess.
                    stderr_of(&out)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .split("; did you mean")
                        .next()
                        .unwrap_or("")
                ),
            });
        }
    }
    Ok(())
}

/// Whether this kernel can load the nft backend's `queue` statement (dry run, nothing created).
pub fn nft_queue_supported(exec: &mut dyn Exec) -> Result<bool, RulesError> {
    match nft_probe(exec, &[("queue", NFT_QUEUE_PROBE)]) {
        Ok(()) => Ok(true),
        Err(RulesError::KernelFeature { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `table inet ftpct` after a failed apply that found no table, so that nothing is
/// left behind.
fn nft_undo(exec: &mut dyn Exec, before: &Option<String>) {
    if before.is_none() {
        let _ = nft_delete(exec);
    }
}

fn nft_apply(exec: &mut dyn Exec, spec: &RuleSpec) -> Result<Report, RulesError> {
    // Checked before anything is written: the names go into a script.
    nft_rules(spec)?;
    let before = nft_list(exec)?;
    let verdicts = if nft_queue_supported(exec)? {
        NftVerdicts::Native
    } else {
        NftVerdicts::Compat
    };
    if verdicts == NftVerdicts::Compat {
        if let Err(e) = exec.nft_queue_targets(&nft_queue_targets(spec)) {
            nft_undo(exec, &before);
            nft_probe(exec, &NFT_PROBES)?;
            return Err(RulesError::KernelFeature {
                backend: Backend::Nft,
                feature: "an NFQUEUE verdict: the nf_tables queue expression \
                          (CONFIG_NFT_QUEUE, module nft_queue) or the x_tables NFQUEUE target \
                          through nft_compat (CONFIG_NFT_COMPAT, \
                          CONFIG_NETFILTER_XT_TARGET_NFQUEUE)"
                    .to_string(),
                detail: e,
            });
        }
    }
    let script = nft_script_for(spec, verdicts)?;
    let out = spawn(exec, Backend::Nft, "nft", &[&script])?;
    if !out.status.success() {
        nft_undo(exec, &before);
        nft_probe(exec, &NFT_PROBES)?;
        return Err(failed(
            Backend::Nft,
            "nft",
            &["<script of ftpct rules --backend nft>"],
            &out,
        ));
    }
    let after = nft_list(exec)?.unwrap_or_default();
    let unchanged = before.as_deref() == Some(after.as_str());
    let groups = nft_rules(spec)?
        .iter()
        .map(|r| r.group)
        .chain(nft_verdict_rules(spec).iter().map(|r| r.group))
        .collect::<Vec<_>>();
    let mut counts = GroupCount::for_groups(groups.iter().copied());
    for g in groups {
        let c = GroupCount::of(&mut counts, g);
        if unchanged {
            c.present += 1;
        } else {
            c.added += 1;
        }
    }
    let listed = |what: &str| before.as_deref().is_some_and(|b| b.contains(what));
    let state = |there: bool| {
        if there {
            State::Present
        } else {
            State::Created
        }
    };
    let mut report = Report::new(Backend::Nft, false);
    report.groups = counts;
    report.table = Some(Item::new(
        format!("table inet {NFT_TABLE}"),
        match (&before, unchanged) {
            (None, _) => State::Created,
            (Some(_), true) => State::Unchanged,
            (Some(_), false) => State::Updated,
        },
    ));
    report.nat_chains.push(Item::new(
        format!("nat PREROUTING base chain (inet {NFT_TABLE} {NFT_NAT_CHAIN})"),
        state(listed(&format!("chain {NFT_NAT_CHAIN} "))),
    ));
    for set in [&spec.set4, &spec.set6] {
        report.sets.push(Item::new(
            format!("nft set {set}"),
            state(listed(&format!("set {set} "))),
        ));
    }
    Ok(report)
}

fn nft_delete(exec: &mut dyn Exec) -> Result<Report, RulesError> {
    let mut report = Report::new(Backend::Nft, true);
    let table = format!("table inet {NFT_TABLE}");
    let Some(before) = nft_list(exec)? else {
        report.table = Some(Item::new(table, State::Absent));
        return Ok(report);
    };
    // `add` first: deleting a table that vanished meanwhile is then not an error.
    let script = format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
    let out = spawn(exec, Backend::Nft, "nft", &[&script])?;
    if !out.status.success() {
        return Err(failed(Backend::Nft, "nft", &[&script], &out));
    }
    report.other_removed = nft_rule_count(&before);
    report.table = Some(
        Item::new(table, State::Removed)
            .note("with its rules, its sets and its nat PREROUTING base chain"),
    );
    Ok(report)
}

/// Installs the rules of `spec` with its backend, running the tools through `exec`, in the
/// calling thread's network namespace (iptables backends: also creates the two ipsets). Returns
/// how many rules were added: for the iptables backends the rules `-C` did not find; for nft,
/// the number of rules in `table inet ftpct` if its content changed, 0 if it was already so.
/// [`apply_report_with`] says what was there and what was added, per group.
pub fn apply_with(exec: &mut dyn Exec, spec: &RuleSpec) -> Result<usize, RulesError> {
    apply_report_with(exec, spec).map(|r| r.added())
}

/// [`apply_with`], reporting per group (a)-(d) the rules found and added, whether the nat
/// PREROUTING base chain the kernel needs was present or created, and the sets.
pub fn apply_report_with(exec: &mut dyn Exec, spec: &RuleSpec) -> Result<Report, RulesError> {
    if spec.backend == Backend::Nft {
        return nft_apply(exec, spec);
    }
    let rules = rules(spec)?;
    preflight_iptables(exec, spec.backend)?;
    let mut set = Ipset::open()?;
    let mut sets = Vec::with_capacity(2);
    for (name, family) in [(&spec.set4, SetFamily::V4), (&spec.set6, SetFamily::V6)] {
        let existed = match set.info(name) {
            Ok(_) => true,
            Err(IpsetError::SetNotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        set.create_hash_ip_port(name, family, SET_DEFAULT_TIMEOUT, spec.maxelem)?;
        let state = if existed {
            State::Present
        } else {
            State::Created
        };
        sets.push(Item::new(format!("ipset {name}"), state));
    }
    let mut report = apply_iptables(exec, spec.backend, &rules)?;
    report.sets = sets;
    Ok(report)
}

/// The rules part of [`apply_report_with`] for the iptables backends (after the preflight
/// and the sets): the nat PREROUTING base chains as they were, then the rules.
fn apply_iptables(
    exec: &mut dyn Exec,
    backend: Backend,
    rules: &[Rule],
) -> Result<Report, RulesError> {
    let families = [Family::V4, Family::V6];
    // iptables-legacy's nat table registers all its hooks once loaded (the preflight listed
    // it); iptables-nft creates the chain with its first rule.
    let before: Vec<Result<bool, String>> = families
        .iter()
        .map(|f| match backend {
            Backend::IptablesLegacy => Ok(true),
            _ => exec.nat_base_chain(*f),
        })
        .collect();
    let mut report = Report::new(backend, false);
    report.groups = apply_rules_counted(exec, rules)?;
    for (family, before) in families.into_iter().zip(before) {
        let what = format!("nat PREROUTING base chain ({})", family_name(family));
        let item = match before {
            Ok(true) => Item::new(what, State::Present),
            Ok(false) => Item::new(what, State::Created).note("by ftpct's rule (d)"),
            Err(e) => Item::new(what, State::Present).note(&format!(
                "ftpct's rule (d) is in it; whether it existed before could not be read: {e}"
            )),
        };
        report.nat_chains.push(item);
    }
    Ok(report)
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// Removes ftpct's rules with `spec`'s backend (see the module doc); for the iptables backends
/// then destroys the two ipsets of `spec`. Returns how many rules were deleted.
///
/// `iptables -C` of a rule that names a missing set fails (exit status 2) instead of answering
/// "absent", so the sets are (re)created first if missing. A set of that name with another type
/// or other parameters than `apply` gives it (other than `maxelem`) is not ftpct's and is left
/// alone. On a kernel
/// without the backend's tables nothing can be installed, and nothing is deleted (`Ok(0)`).
pub fn delete_with(exec: &mut dyn Exec, spec: &RuleSpec) -> Result<usize, RulesError> {
    delete_report_with(exec, spec).map(|r| r.removed())
}

/// [`delete_with`], reporting per group what was removed, the rules of other specs swept, the
/// nat PREROUTING base chain (kept) and the sets.
pub fn delete_report_with(exec: &mut dyn Exec, spec: &RuleSpec) -> Result<Report, RulesError> {
    if spec.backend == Backend::Nft {
        checked_ports(spec)?;
        return nft_delete(exec);
    }
    let rules = rules(spec)?;
    let mut set = Ipset::open()?;
    let mut ours = Vec::with_capacity(2);
    let mut sets = Vec::with_capacity(2);
    for (name, family) in [(&spec.set4, SetFamily::V4), (&spec.set6, SetFamily::V6)] {
        match set.create_hash_ip_port(name, family, SET_DEFAULT_TIMEOUT, spec.maxelem) {
            Ok(()) => ours.push(name),
            Err(IpsetError::SetConflict(_)) => sets.push(
                Item::new(format!("ipset {name}"), State::Kept)
                    .note("not ftpct's: another type or other parameters"),
            ),
            Err(e) => return Err(e.into()),
        }
    }
    let mut report = match preflight_iptables(exec, spec.backend) {
        Ok(()) => delete_iptables(exec, spec.backend, &rules)?,
        Err(RulesError::KernelFeature { feature, .. }) => {
            let mut r = Report::new(spec.backend, true);
            r.note = Some(format!(
                "the kernel lacks {feature}: no rule of this backend can be installed, none \
                 was deleted"
            ));
            r
        }
        Err(e) => return Err(e),
    };
    for name in ours {
        set.destroy(name)?;
        sets.push(Item::new(format!("ipset {name}"), State::Removed));
    }
    report.sets = sets;
    Ok(report)
}

/// The rules part of [`delete_report_with`] for the iptables backends.
fn delete_iptables(
    exec: &mut dyn Exec,
    backend: Backend,
    rules: &[Rule],
) -> Result<Report, RulesError> {
    let mut report = Report::new(backend, true);
    report.groups = delete_rules_counted(exec, rules)?;
    report.other_removed = sweep_rules(exec, backend)?;
    for family in [Family::V4, Family::V6] {
        report.nat_chains.push(
            Item::new(
                format!("nat PREROUTING base chain ({})", family_name(family)),
                State::Kept,
            )
            .note("other rules may need it; an empty one is harmless"),
        );
    }
    Ok(report)
}

/// Rules of one group (see the module doc) that [`apply_report_with`] found in place and
/// added, or that [`delete_report_with`] removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupCount {
    pub group: Group,
    pub present: usize,
    pub added: usize,
    pub removed: usize,
}

impl GroupCount {
    /// One zero count per group, in the order (a)-(d), for the groups that occur.
    fn for_groups(groups: impl Iterator<Item = Group>) -> Vec<GroupCount> {
        let mut gs: Vec<Group> = groups.collect();
        gs.sort_unstable();
        gs.dedup();
        gs.into_iter()
            .map(|group| GroupCount {
                group,
                present: 0,
                added: 0,
                removed: 0,
            })
            .collect()
    }

    fn of(counts: &mut Vec<GroupCount>, group: Group) -> &mut GroupCount {
        let i = match counts.iter().position(|c| c.group == group) {
            Some(i) => i,
            None => {
                counts.extend(GroupCount::for_groups(std::iter::once(group)));
                counts.len() - 1
            }
        };
        &mut counts[i]
    }
}

/// What became of a chain, a set or a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Was there already.
    Present,
    /// Was missing and was created.
    Created,
    /// Was there and was changed (the nft table's rules).
    Updated,
    /// Was there as wanted (the nft table).
    Unchanged,
    /// Was left in place (by a delete).
    Kept,
    /// Was removed (by a delete).
    Removed,
    /// Was not there (nothing to delete).
    Absent,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Present => "present",
            State::Created => "created",
            State::Updated => "updated",
            State::Unchanged => "unchanged",
            State::Kept => "kept",
            State::Removed => "removed",
            State::Absent => "absent",
        })
    }
}

/// A chain, set or table of a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub what: String,
    pub state: State,
    pub note: Option<String>,
}

impl Item {
    fn new(what: String, state: State) -> Item {
        Item {
            what,
            state,
            note: None,
        }
    }

    fn note(mut self, note: &str) -> Item {
        self.note = Some(note.to_string());
        self
    }
}

impl fmt::Display for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.state)?;
        if let Some(n) = &self.note {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// What `ftpct rules --apply` or `--delete` found and did: per group (a)-(d), then what the
/// kernel needs beside the rules (the nat PREROUTING base chain, the sets; the nft table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub backend: Backend,
    /// A delete (else an apply).
    pub delete: bool,
    pub groups: Vec<GroupCount>,
    /// Rules carrying ftpct's comment that are not the spec's, removed by a delete (left by a
    /// run with another queue number or other ports); for nft, all the rules of the deleted
    /// table.
    pub other_removed: usize,
    pub nat_chains: Vec<Item>,
    pub sets: Vec<Item>,
    /// `table inet ftpct` (nft backend).
    pub table: Option<Item>,
    /// A remark on the whole (e.g. why nothing was done).
    pub note: Option<String>,
}

impl Report {
    fn new(backend: Backend, delete: bool) -> Report {
        Report {
            backend,
            delete,
            groups: Vec::new(),
            other_removed: 0,
            nat_chains: Vec::new(),
            sets: Vec::new(),
            table: None,
            note: None,
        }
    }

    /// Rules added.
    pub fn added(&self) -> usize {
        self.groups.iter().map(|g| g.added).sum()
    }

    /// Rules found in place by an apply.
    pub fn present(&self) -> usize {
        self.groups.iter().map(|g| g.present).sum()
    }

    /// Rules removed.
    pub fn removed(&self) -> usize {
        self.groups.iter().map(|g| g.removed).sum::<usize>() + self.other_removed
    }

    /// The last line: the totals.
    pub fn summary(&self) -> String {
        if self.delete {
            format!("{} rules removed", self.removed())
        } else {
            format!(
                "{} rules added, {} already present (existing ones kept)",
                self.added(),
                self.present()
            )
        }
    }
}

impl fmt::Display for Report {
    /// One line per group, chain, set and table, then the totals; every line starts with
    /// `ftpct rules: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = "ftpct rules: ";
        if let Some(t) = &self.table {
            writeln!(f, "{p}{t}")?;
        }
        for g in &self.groups {
            let (n, what) = if self.delete {
                (g.removed, "removed")
            } else if g.added > 0 && g.present > 0 {
                writeln!(
                    f,
                    "{p}{}: {} present, {} added",
                    g.group.label(self.backend),
                    g.present,
                    g.added
                )?;
                continue;
            } else if g.added > 0 {
                (g.added, "added")
            } else {
                (g.present, "present")
            };
            writeln!(f, "{p}{}: {n} {what}", g.group.label(self.backend))?;
        }
        if self.delete && self.backend != Backend::Nft {
            writeln!(
                f,
                "{p}other rules with ftpct's comment (another queue number or other ports): {} \
                 removed",
                self.other_removed
            )?;
        }
        for i in self.nat_chains.iter().chain(self.sets.iter()) {
            writeln!(f, "{p}{i}")?;
        }
        if let Some(n) = &self.note {
            writeln!(f, "{p}{n}")?;
        }
        write!(f, "{p}{}", self.summary())
    }
}

/// An ipset of ftpct that holds fewer elements than the configuration needs ([`small_sets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallSet {
    pub name: String,
    /// Its `maxelem`.
    pub maxelem: u32,
    /// What the spec asks for ([`RuleSpec::maxelem`]).
    pub want: u32,
}

impl SmallSet {
    /// The warning, with the fix; `delete` and `apply` are the `ftpct rules` command lines
    /// ([`RuleSpec::command_line`]).
    pub fn message(&self, delete: &str, apply: &str) -> String {
        format!(
            "ipset {name} holds at most {have} elements (maxelem), fewer than max_expectations = \
             {want}: with more than {have} data connections awaited at once, adding one to the \
             set fails and that data connection is not admitted. The kernel cannot change the \
             maxelem of an existing set; destroy and recreate it (its current elements are \
             lost): stop ftpct, run `{delete}` (removes the rules, then the sets) and `{apply}` \
             (recreates them with maxelem {want}), then start ftpct (with the systemd unit, \
             `systemctl restart ftpct` does all of it)",
            name = self.name,
            have = self.maxelem,
            want = self.want,
        )
    }
}

/// The ipsets of `spec` (iptables backends) whose `maxelem` is below `spec.maxelem`. A set that
/// does not exist is skipped.
pub fn small_sets(set: &mut Ipset, spec: &RuleSpec) -> Result<Vec<SmallSet>, IpsetError> {
    let mut out = Vec::new();
    if spec.backend == Backend::Nft {
        return Ok(out);
    }
    for name in [&spec.set4, &spec.set6] {
        match set.info(name) {
            Ok(i) if i.maxelem < spec.maxelem => out.push(SmallSet {
                name: name.clone(),
                maxelem: i.maxelem,
                want: spec.maxelem,
            }),
            Ok(_) | Err(IpsetError::SetNotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// [`apply_with`] running the real tools.
pub fn apply(spec: &RuleSpec) -> Result<usize, RulesError> {
    apply_with(&mut SystemExec, spec)
}

/// [`apply_report_with`] running the real tools.
pub fn apply_report(spec: &RuleSpec) -> Result<Report, RulesError> {
    apply_report_with(&mut SystemExec, spec)
}

/// [`delete_with`] running the real tools.
pub fn delete(spec: &RuleSpec) -> Result<usize, RulesError> {
    delete_with(&mut SystemExec, spec)
}

/// [`delete_report_with`] running the real tools.
pub fn delete_report(spec: &RuleSpec) -> Result<Report, RulesError> {
    delete_report_with(&mut SystemExec, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn spec() -> RuleSpec {
        RuleSpec::default()
    }

    fn output(code: i32, stdout: &str, stderr: &str) -> Output {
        Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_rule_has_the_comment() {
        for backend in [Backend::IptablesNft, Backend::IptablesLegacy] {
            for r in rules(&RuleSpec { backend, ..spec() }).unwrap() {
                let joined = r.args.join(" ");
                assert!(joined.contains("-m comment --comment ftpct"), "{joined}");
                assert!(has_our_comment(&r.args));
            }
        }
    }

    #[test]
    fn shape_for_port_21() {
        let rs = rules(&spec()).unwrap();
        // (a) 2 chains x 2 families x 2 directions, (b) same, (c) 2, (d) 2.
        assert_eq!(rs.len(), 8 + 8 + 2 + 2);
        let first = &rs[0];
        assert_eq!(
            first.command_line(),
            "iptables-nft -t raw -A PREROUTING -p tcp -m multiport --dports 21 ! --syn \
             -m comment --comment ftpct -j NFQUEUE --queue-num 0"
        );
        let pre: Vec<_> = rs.iter().filter(|r| r.group == Group::ControlPre).collect();
        assert!(pre.iter().all(|r| r.table == "raw"));
        assert!(pre.iter().any(|r| r.chain == "OUTPUT"));
        assert!(pre.iter().any(|r| r.args.contains(&"--sports".to_string())));
        let post: Vec<_> = rs
            .iter()
            .filter(|r| r.group == Group::ControlPost)
            .collect();
        assert!(post
            .iter()
            .all(|r| r.table == "mangle" && (r.chain == "POSTROUTING" || r.chain == "INPUT")));
        let syn: Vec<_> = rs.iter().filter(|r| r.group == Group::DataSyn).collect();
        assert_eq!(syn.len(), 2);
        assert_eq!(
            syn[0].command_line(),
            "iptables-nft -t raw -A PREROUTING -p tcp --syn -m set --match-set ftpct4 dst,dst \
             -m comment --comment ftpct -j NFQUEUE --queue-num 0 --queue-bypass"
        );
        assert_eq!(syn[1].family, Family::V6);
        assert_eq!(syn[1].program(), "ip6tables-nft");
        assert!(syn[1].args.contains(&"ftpct6".to_string()));
        let nat: Vec<_> = rs.iter().filter(|r| r.group == Group::NatHook).collect();
        assert_eq!(
            nat[0].command_line(),
            "iptables-nft -t nat -A PREROUTING -m comment --comment ftpct"
        );
        assert_eq!(nat[1].family, Family::V6);
    }

    #[test]
    fn legacy_uses_the_legacy_programs_with_the_same_rules() {
        let nft = rules(&spec()).unwrap();
        let legacy = rules(&RuleSpec {
            backend: Backend::IptablesLegacy,
            ..spec()
        })
        .unwrap();
        assert_eq!(nft.len(), legacy.len());
        for (a, b) in nft.iter().zip(&legacy) {
            assert_eq!((a.table, a.chain, &a.args), (b.table, b.chain, &b.args));
            assert!(b.program().ends_with("tables-legacy"), "{}", b.program());
        }
        assert!(matches!(
            rules(&RuleSpec {
                backend: Backend::Nft,
                ..spec()
            }),
            Err(SpecError::NotIptables(Backend::Nft))
        ));
    }

    #[test]
    fn backend_names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
            assert_eq!(b.to_string(), b.name());
        }
        let e = "iptables".parse::<Backend>().unwrap_err().to_string();
        assert!(e.contains("iptables-nft, iptables-legacy or nft"), "{e}");
        assert_eq!(Backend::default(), Backend::IptablesNft);
        let nft = Backend::Nft.kernel_requirements();
        assert!(nft.contains("CONFIG_NFT_QUEUE"), "{nft}");
        assert!(nft.contains("CONFIG_NFT_COMPAT"), "{nft}");
    }

    #[test]
    fn bypass_and_queue_number() {
        let s = RuleSpec {
            queue: 7,
            bypass: true,
            ..spec()
        };
        for r in rules(&s).unwrap() {
            if r.group == Group::NatHook {
                continue;
            }
            let j = r.args.join(" ");
            assert!(
                j.ends_with("-j NFQUEUE --queue-num 7 --queue-bypass"),
                "{j}"
            );
        }
        let s = RuleSpec {
            bypass: false,
            ..spec()
        };
        for r in rules(&s).unwrap() {
            let j = r.args.join(" ");
            match r.group {
                Group::ControlPre | Group::ControlPost => assert!(!j.contains("bypass"), "{j}"),
                Group::DataSyn => assert!(j.contains("--queue-bypass")),
                Group::NatHook => {}
            }
        }
    }

    #[test]
    fn many_ports_are_split_and_deduplicated() {
        let s = RuleSpec {
            ports: (1..=20).chain([5, 21]).collect(),
            ..spec()
        };
        let rs = rules(&s).unwrap();
        let lists: Vec<&String> = rs
            .iter()
            .filter(|r| r.family == Family::V4 && r.table == "raw" && r.chain == "OUTPUT")
            .filter(|r| r.args.contains(&"--dports".to_string()))
            .map(|r| &r.args[5])
            .collect();
        assert_eq!(
            lists,
            ["1,2,3,4,5,6,7,8,9,10,11,12,13,14,15", "16,17,18,19,20,21"]
        );
        // nft: one anonymous set, no 15-port limit.
        let n = nft_script(&s).unwrap();
        assert!(n.contains(
            "tcp dport { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21 }"
        ));
    }

    #[test]
    fn invalid_specs() {
        assert!(matches!(
            rules(&RuleSpec {
                ports: vec![],
                ..spec()
            }),
            Err(SpecError::NoPorts)
        ));
        assert!(matches!(
            rules(&RuleSpec {
                ports: vec![0],
                ..spec()
            }),
            Err(SpecError::PortZero)
        ));
        for bad in ["", "a b", "x;rm", &"y".repeat(32)] {
            assert!(matches!(
                rules(&RuleSpec {
                    set4: bad.to_string(),
                    ..spec()
                }),
                Err(SpecError::BadSetName(_))
            ));
        }
        // ipset accepts these, nft identifiers do not.
        for bad in ["a-b", "4set", "a.b", ""] {
            assert!(matches!(
                render(&RuleSpec {
                    set6: bad.to_string(),
                    backend: Backend::Nft,
                    ..spec()
                }),
                Err(SpecError::BadNftSetName(_))
            ));
        }
    }

    #[test]
    fn print_has_headers_and_one_command_per_rule() {
        let rs = rules(&spec()).unwrap();
        let p = print(&rs);
        assert_eq!(render(&spec()).unwrap(), p);
        let cmds: Vec<&str> = p
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(cmds.len(), rs.len());
        assert!(cmds
            .iter()
            .all(|l| l.starts_with("iptables-nft -t ") || l.starts_with("ip6tables-nft -t ")));
        for h in ["(a)", "(b)", "(c)", "(d)", "nat PREROUTING base chain"] {
            assert!(p.contains(h), "missing {h} in\n{p}");
        }
    }

    #[test]
    fn nft_script_shape() {
        let s = RuleSpec {
            queue: 3,
            ports: vec![21, 2121],
            backend: Backend::Nft,
            ..spec()
        };
        let n = render(&s).unwrap();
        assert!(n.starts_with("#!/usr/sbin/nft -f\n"));
        let cmds: Vec<&str> = n
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(cmds[0], "add table inet ftpct");
        for c in [
            "add set inet ftpct ftpct4 { type ipv4_addr . inet_service; flags timeout; timeout 120s; }",
            "add set inet ftpct ftpct6 { type ipv6_addr . inet_service; flags timeout; timeout 120s; }",
            "add chain inet ftpct raw_prerouting { type filter hook prerouting priority -300; policy accept; }",
            "add chain inet ftpct raw_output { type filter hook output priority -300; policy accept; }",
            "add chain inet ftpct mangle_postrouting { type filter hook postrouting priority -150; policy accept; }",
            "add chain inet ftpct mangle_input { type filter hook input priority -150; policy accept; }",
            "add chain inet ftpct nat_prerouting { type nat hook prerouting priority -100; policy accept; }",
            "add rule inet ftpct raw_prerouting tcp dport { 21, 2121 } tcp flags & (fin | syn | rst | ack) != syn goto queue_control comment \"ftpct\"",
            "add rule inet ftpct mangle_input tcp sport { 21, 2121 } tcp flags & (fin | syn | rst | ack) != syn ct mark & 0x100000 == 0x100000 goto queue_control comment \"ftpct\"",
            "add rule inet ftpct raw_prerouting tcp flags & (fin | syn | rst | ack) == syn ip daddr . tcp dport @ftpct4 goto queue_data comment \"ftpct\"",
            "add rule inet ftpct raw_prerouting tcp flags & (fin | syn | rst | ack) == syn ip6 daddr . tcp dport @ftpct6 goto queue_data comment \"ftpct\"",
            "add chain inet ftpct queue_control",
            "add chain inet ftpct queue_data",
            "add rule inet ftpct queue_control queue num 3 comment \"ftpct\"",
            "add rule inet ftpct queue_data queue num 3 bypass comment \"ftpct\"",
        ] {
            assert!(cmds.contains(&c), "missing {c} in\n{n}");
        }
        // Every chain is flushed before its rules are added, after it is created.
        let pos = |p: &str| cmds.iter().position(|c| c.starts_with(p)).unwrap();
        assert!(pos("add chain inet ftpct raw_output") < pos("flush chain inet ftpct raw_output"));
        assert!(pos("flush chain inet ftpct raw_output") < pos("add rule"));
        assert!(pos("add chain inet ftpct queue_data") < pos("flush chain inet ftpct queue_data"));
        assert_eq!(
            cmds.iter().filter(|c| c.starts_with("add rule")).count(),
            12
        );
        assert!(cmds
            .iter()
            .filter(|c| c.starts_with("add rule"))
            .all(|c| c.ends_with("comment \"ftpct\"")));
        // The data SYNs always with bypass; the control packets only with fail_open.
        assert_eq!(n.matches("bypass comment").count(), 1);
        let b = render(&RuleSpec {
            bypass: true,
            ..s.clone()
        })
        .unwrap();
        assert_eq!(b.matches("bypass comment").count(), 2);
        // The compat script declares the verdict chains and leaves their rules alone.
        let c = nft_script_for(&s, NftVerdicts::Compat).unwrap();
        assert!(c.contains("add chain inet ftpct queue_control\n"));
        assert!(!c.contains("queue num"));
        assert!(!c.contains("flush chain inet ftpct queue_"));
        assert_eq!(c.matches("add rule").count(), 10);
    }

    #[test]
    fn command_lines_for_messages() {
        let s = RuleSpec {
            queue: 7,
            ports: vec![21, 2121],
            ..spec()
        };
        assert_eq!(
            s.command_line(None, "--apply"),
            "ftpct rules --queue 7 --ports 21,2121 --apply"
        );
        let b = RuleSpec {
            bypass: true,
            backend: Backend::Nft,
            ..s.clone()
        };
        assert_eq!(
            b.command_line(Some(std::path::Path::new("/etc/ftpct/my conf")), "--delete"),
            "ftpct rules --config '/etc/ftpct/my conf' --backend nft --queue 7 --ports 21,2121 \
             --bypass --delete"
        );
        let m = SmallSet {
            name: "ftpct4".into(),
            maxelem: 65536,
            want: 1 << 20,
        }
        .message("D", "A");
        for want in ["ftpct4", "65536", "1048576", "`D`", "`A`", "destroy"] {
            assert!(m.contains(want), "{want} not in {m}");
        }
    }

    #[test]
    fn nft_rules_match_the_script() {
        let s = RuleSpec {
            backend: Backend::Nft,
            ..spec()
        };
        let rs = nft_rules(&s).unwrap();
        assert_eq!(rs.len(), 10);
        let script = nft_script(&s).unwrap();
        for r in &rs {
            let line = format!("add rule inet ftpct {} {}", r.chain, r.text);
            assert!(script.lines().any(|l| l == line), "{line}");
            assert!(NFT_CHAINS.iter().any(|c| c.0 == r.chain));
            assert_ne!(r.chain, NFT_NAT_CHAIN);
        }
        let per = |c: &str| rs.iter().filter(|r| r.chain == c).count();
        assert_eq!(per("raw_prerouting"), 4);
        assert_eq!(per("raw_output"), 2);
        assert_eq!(per("mangle_postrouting"), 2);
        assert_eq!(per("mangle_input"), 2);
        assert_eq!(rs.iter().filter(|r| r.group == Group::DataSyn).count(), 2);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("dst,dst"), "dst,dst");
        assert_eq!(shell_quote("!"), "!");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn rule_lines_of_iptables_s_are_split() {
        assert_eq!(
            split_rule_line(
                "-A PREROUTING -p tcp -m comment --comment \"ftpct x \\\"q\\\"\" -j ACCEPT"
            ),
            [
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "-m",
                "comment",
                "--comment",
                "ftpct x \"q\"",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(
            split_rule_line("  -P INPUT  ACCEPT "),
            ["-P", "INPUT", "ACCEPT"]
        );
        assert_eq!(split_rule_line("a \"\" b"), ["a", "", "b"]);
        let w = split_rule_line("-A X -m comment --comment \"ftpct x\" -j ACCEPT");
        assert!(!has_our_comment(&w));
        let w = split_rule_line("-A X -m comment --comment ftpct -j ACCEPT");
        assert!(has_our_comment(&w));
    }

    /// A fake iptables holding a multiset of rules per program and table.
    #[derive(Default)]
    struct Fake {
        present: Vec<String>,
        calls: Vec<String>,
        /// Families whose nat PREROUTING chain exists without a rule in `present` (an
        /// iptables-nft chain left empty).
        empty_nat_chains: Vec<Family>,
    }

    impl Exec for Fake {
        fn nft_queue_targets(&mut self, _: &[QueueTarget]) -> Result<(), String> {
            Ok(())
        }
        fn nat_base_chain(&mut self, family: Family) -> Result<bool, String> {
            let prefix = format!("{} nat PREROUTING ", Backend::IptablesNft.program(family));
            Ok(self.empty_nat_chains.contains(&family)
                || self.present.iter().any(|k| k.starts_with(&prefix)))
        }

        fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.push(line);
            assert_eq!(args[0], "-w");
            if args[3] == "-S" {
                let prefix = format!("{program} {} ", args[2]);
                let mut out = String::from("-P PREROUTING ACCEPT\n");
                for k in &self.present {
                    if let Some(rest) = k.strip_prefix(&prefix) {
                        let rest = rest.replace("--comment ftpct", "--comment \"ftpct\"");
                        out.push_str(&format!("-A {rest}\n"));
                    }
                }
                return Ok(output(0, &out, ""));
            }
            let key = format!("{program} {} {} {}", args[2], args[4], args[5..].join(" "));
            let code = match args[3] {
                "-C" => i32::from(!self.present.contains(&key)),
                "-A" => {
                    self.present.push(key);
                    0
                }
                "-D" => match self.present.iter().position(|k| *k == key) {
                    Some(i) => {
                        self.present.remove(i);
                        0
                    }
                    None => 1,
                },
                other => panic!("unexpected {other}"),
            };
            Ok(output(code, "", ""))
        }
    }

    const ADMIN: &str =
        "iptables-nft filter FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT";

    #[test]
    fn apply_is_idempotent_and_delete_removes_duplicates_only_of_ours() {
        let rs = rules(&spec()).unwrap();
        let mut f = Fake::default();
        f.present.push(ADMIN.into());
        assert_eq!(apply_rules(&mut f, &rs).unwrap(), rs.len());
        assert_eq!(apply_rules(&mut f, &rs).unwrap(), 0);
        assert_eq!(f.present.len(), rs.len() + 1);
        // A duplicate left by some earlier run.
        let dup = f.present[1].clone();
        f.present.push(dup);
        assert_eq!(delete_rules(&mut f, &rs).unwrap(), rs.len() + 1);
        assert_eq!(f.present, [ADMIN]);
        assert!(f.calls.iter().all(|c| !c.contains(" -I ")));
    }

    #[test]
    fn apply_and_delete_report_per_group_and_the_nat_base_chain() {
        let rs = rules(&spec()).unwrap();
        let mut f = Fake {
            empty_nat_chains: vec![Family::V6],
            ..Fake::default()
        };
        f.present.push(ADMIN.into());
        // (b) already there (e.g. from an earlier apply), the rest missing
        for r in rs.iter().filter(|r| r.group == Group::ControlPost) {
            f.present.push(format!(
                "{} {} {} {}",
                r.program(),
                r.table,
                r.chain,
                r.args.join(" ")
            ));
        }
        let r = apply_iptables(&mut f, Backend::IptablesNft, &rs).unwrap();
        let counts: Vec<(Group, usize, usize)> = r
            .groups
            .iter()
            .map(|g| (g.group, g.present, g.added))
            .collect();
        assert_eq!(
            counts,
            [
                (Group::ControlPre, 0, 8),
                (Group::ControlPost, 8, 0),
                (Group::DataSyn, 0, 2),
                (Group::NatHook, 0, 2),
            ]
        );
        assert_eq!((r.added(), r.present()), (12, 8));
        let chains: Vec<String> = r.nat_chains.iter().map(Item::to_string).collect();
        assert_eq!(
            chains,
            [
                "nat PREROUTING base chain (IPv4): created (by ftpct's rule (d))",
                "nat PREROUTING base chain (IPv6): present",
            ]
        );
        let text = r.to_string();
        assert!(text.contains(
            "ftpct rules: (a) control packets before conntrack (raw PREROUTING, OUTPUT): 8 added\n"
        ));
        assert!(text.contains(
            "ftpct rules: (b) control packets after conntrack (mangle POSTROUTING, INPUT): 8 \
             present\n"
        ));
        assert!(text.contains("ftpct rules: nat PREROUTING base chain (IPv4): created"));
        assert!(
            text.ends_with("ftpct rules: 12 rules added, 8 already present (existing ones kept)")
        );
        // again: everything present, both chains too
        let r = apply_iptables(&mut f, Backend::IptablesNft, &rs).unwrap();
        assert_eq!((r.added(), r.present()), (0, 20));
        assert!(r.nat_chains.iter().all(|c| c.state == State::Present));
        // iptables-legacy registers the nat hooks with its table: present without asking
        let legacy = rules(&RuleSpec {
            backend: Backend::IptablesLegacy,
            ..spec()
        })
        .unwrap();
        let r = apply_iptables(&mut Fake::default(), Backend::IptablesLegacy, &legacy).unwrap();
        assert!(r.nat_chains.iter().all(|c| c.state == State::Present));
        // a failed read of the chains is said, not guessed
        struct NoNetlink(Fake);
        impl Exec for NoNetlink {
            fn nft_queue_targets(&mut self, _: &[QueueTarget]) -> Result<(), String> {
                Ok(())
            }
            fn exec(&mut self, p: &'static str, a: &[&str]) -> io::Result<Output> {
                self.0.exec(p, a)
            }
            fn nat_base_chain(&mut self, _: Family) -> Result<bool, String> {
                Err("permission denied".into())
            }
        }
        let r = apply_iptables(&mut NoNetlink(Fake::default()), Backend::IptablesNft, &rs).unwrap();
        assert!(
            r.nat_chains[0]
                .to_string()
                .contains("could not be read: permission denied"),
            "{:?}",
            r.nat_chains
        );
        // delete: per group, the sweep, the chains kept
        f.present.push(
            "iptables-nft raw PREROUTING -p tcp --dport 2121 -m comment --comment ftpct -j \
             NFQUEUE --queue-num 9"
                .into(),
        );
        let r = delete_iptables(&mut f, Backend::IptablesNft, &rs).unwrap();
        assert!(r.groups.iter().all(|g| g.removed > 0));
        assert_eq!((r.removed(), r.other_removed), (21, 1));
        assert_eq!(f.present, [ADMIN]);
        let text = r.to_string();
        assert!(
            text.contains("ftpct rules: (d) nat PREROUTING rule (makes the kernel create the base chain): 2 removed\n"),
            "{text}"
        );
        assert!(text.contains(
            "other rules with ftpct's comment (another queue number or other ports): 1 removed"
        ));
        assert!(text.contains("nat PREROUTING base chain (IPv4): kept"));
        assert!(text.ends_with("ftpct rules: 21 rules removed"));
    }

    #[test]
    fn sweep_removes_rules_of_other_specs_and_nothing_else() {
        let old = rules(&RuleSpec {
            queue: 9,
            ports: vec![2121],
            ..spec()
        })
        .unwrap();
        let mut f = Fake::default();
        f.present.push(ADMIN.into());
        f.present.push(
            "iptables-nft raw PREROUTING -p tcp -m comment --comment ftpct-admin -j ACCEPT".into(),
        );
        apply_rules(&mut f, &old).unwrap();
        // Of the current spec's rules only the two nat hook rules (the same for every spec)
        // are there; the old ones are swept.
        assert_eq!(delete_rules(&mut f, &rules(&spec()).unwrap()).unwrap(), 2);
        assert_eq!(
            sweep_rules(&mut f, Backend::IptablesNft).unwrap(),
            old.len() - 2
        );
        assert_eq!(f.present.len(), 2, "{:?}", f.present);
        assert_eq!(sweep_rules(&mut f, Backend::IptablesNft).unwrap(), 0);
    }

    #[test]
    fn missing_tool_is_reported_with_a_fix() {
        struct Missing;
        impl Exec for Missing {
            fn nft_queue_targets(&mut self, _: &[QueueTarget]) -> Result<(), String> {
                Ok(())
            }
            fn nat_base_chain(&mut self, _: Family) -> Result<bool, String> {
                Ok(true)
            }
            fn exec(&mut self, _: &'static str, _: &[&str]) -> io::Result<Output> {
                Err(io::Error::from(io::ErrorKind::NotFound))
            }
        }
        let rs = rules(&spec()).unwrap();
        let e = apply_rules(&mut Missing, &rs).unwrap_err();
        assert!(e.to_string().contains("apt-get install iptables"), "{e}");
        let e = nft_apply(
            &mut Missing,
            &RuleSpec {
                backend: Backend::Nft,
                ..spec()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("apt-get install nftables"), "{e}");
    }

    #[test]
    fn check_failures_other_than_absent_are_errors() {
        assert!(check_says_absent(&output(1, "", "")));
        assert!(check_says_absent(&output(
            1,
            "",
            "iptables: Bad rule (does a matching rule exist in that chain?)."
        )));
        assert!(!check_says_absent(&output(
            1,
            "",
            "iptables v1.8.9 (nf_tables): Can't open socket to ipset."
        )));
        assert!(!check_says_absent(&output(2, "", "Set x doesn't exist.")));
        struct NoRaw;
        impl Exec for NoRaw {
            fn nft_queue_targets(&mut self, _: &[QueueTarget]) -> Result<(), String> {
                Ok(())
            }
            fn nat_base_chain(&mut self, _: Family) -> Result<bool, String> {
                Ok(true)
            }
            fn exec(&mut self, _: &'static str, _: &[&str]) -> io::Result<Output> {
                Ok(output(
                    1,
                    "",
                    "iptables v1.8.9 (nf_tables): Can't open socket to ipset.",
                ))
            }
        }
        let e = delete_rules(&mut NoRaw, &rules(&spec()).unwrap()).unwrap_err();
        assert!(e.to_string().contains("CAP_NET_RAW"), "{e}");
    }

    #[test]
    fn legacy_tables_missing_names_the_kernel_feature() {
        struct NoLegacy;
        impl Exec for NoLegacy {
            fn nft_queue_targets(&mut self, _: &[QueueTarget]) -> Result<(), String> {
                Ok(())
            }
            fn nat_base_chain(&mut self, _: Family) -> Result<bool, String> {
                Ok(true)
            }
            fn exec(&mut self, p: &'static str, args: &[&str]) -> io::Result<Output> {
                assert_eq!(p, "iptables-legacy");
                Ok(output(
                    3,
                    "",
                    &format!(
                        "iptables v1.8.9 (legacy): can't initialize iptables table `{}': Table \
                         does not exist (do you need to insmod?)",
                        args[2]
                    ),
                ))
            }
        }
        let e = preflight_iptables(&mut NoLegacy, Backend::IptablesLegacy).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, RulesError::KernelFeature { .. }), "{m}");
        assert!(m.contains("CONFIG_IP_NF_IPTABLES_LEGACY"), "{m}");
        assert!(m.contains("CONFIG_IP_NF_RAW"), "{m}");
        assert!(m.contains("iptable_raw"), "{m}");
    }

    /// A fake nft: the table's listing, and whether the kernel has the queue expression and
    /// the x_tables NFQUEUE target through nft_compat.
    #[derive(Default)]
    struct FakeNft {
        table: Option<String>,
        queue: bool,
        compat: bool,
        scripts: Vec<String>,
        /// Verdict rules written over netlink (the compat path), as `nft list` shows them.
        compat_rules: Vec<String>,
    }

    const NO_QUEUE: &str = "Error: Could not process rule: No such file or directory";

    impl Exec for FakeNft {
        fn nat_base_chain(&mut self, _: Family) -> Result<bool, String> {
            Ok(true)
        }
        fn exec(&mut self, p: &'static str, args: &[&str]) -> io::Result<Output> {
            assert_eq!(p, "nft");
            Ok(match args {
                ["-t", "list", "table", "inet", "ftpct"] => match &self.table {
                    Some(t) => output(0, t, ""),
                    None => output(1, "", "Error: No such file or directory"),
                },
                ["-c", probe] => {
                    if probe.contains("queue num") && !self.queue {
                        output(1, "", NO_QUEUE)
                    } else {
                        output(0, "", "")
                    }
                }
                [script] => {
                    self.scripts.push(script.to_string());
                    if script.contains("delete table") {
                        self.table = None;
                        self.compat_rules.clear();
                    } else if script.contains("queue num") && !self.queue {
                        return Ok(output(1, "", NO_QUEUE));
                    } else {
                        let mut rules: Vec<String> = self.compat_rules.clone();
                        rules.extend(
                            script
                                .lines()
                                .filter(|l| l.starts_with("add rule"))
                                .map(str::to_string),
                        );
                        self.table =
                            Some(format!("table inet ftpct {{\n{}\n}}\n", rules.join("\n")));
                    }
                    output(0, "", "")
                }
                other => panic!("unexpected nft {other:?}"),
            })
        }

        fn nft_queue_targets(&mut self, targets: &[QueueTarget]) -> Result<(), String> {
            if !self.compat {
                return Err(
                    "netlink: the kernel refused the request: No such file or directory (errno 2)"
                        .into(),
                );
            }
            self.compat_rules = targets
                .iter()
                .map(|t| {
                    let b = if t.bypass { " bypass" } else { "" };
                    format!("{}: queue num {}{b} comment \"ftpct\"", t.chain, t.queue)
                })
                .collect();
            if self.table.is_none() {
                self.table = Some(String::new());
            }
            Ok(())
        }
    }

    #[test]
    fn nft_apply_and_delete() {
        let s = RuleSpec {
            backend: Backend::Nft,
            ..spec()
        };
        for (queue, compat) in [(true, false), (false, true)] {
            let mut f = FakeNft {
                queue,
                compat,
                ..FakeNft::default()
            };
            assert_eq!(delete_with(&mut f, &s).unwrap(), 0);
            // 10 rules in the base chains and one NFQUEUE verdict in each of the 2 chains.
            let r = apply_report_with(&mut f, &s).unwrap();
            assert_eq!(r.added(), 12);
            assert_eq!(r.table.as_ref().unwrap().state, State::Created);
            assert_eq!(r.nat_chains[0].state, State::Created);
            assert!(
                r.to_string()
                    .contains("ftpct rules: table inet ftpct: created\n"),
                "{r}"
            );
            let r = apply_report_with(&mut f, &s).unwrap();
            assert_eq!(r.added(), 0, "unchanged table");
            assert_eq!(r.present(), 12);
            assert_eq!(r.table.as_ref().unwrap().state, State::Unchanged);
            let s1 = RuleSpec {
                queue: 1,
                ..s.clone()
            };
            assert_eq!(apply_with(&mut f, &s1).unwrap(), 12);
            let listing = f.table.clone().unwrap();
            assert_eq!(listing.matches("queue num 1").count(), 2, "{listing}");
            assert_eq!(listing.matches("queue num 0").count(), 0, "{listing}");
            let script = f.scripts.last().unwrap();
            if compat {
                // The script declares the verdict chains but leaves their rules alone.
                assert!(!script.contains("queue num"), "{script}");
                assert!(
                    !script.contains("flush chain inet ftpct queue_"),
                    "{script}"
                );
                assert!(
                    listing.contains("queue_data: queue num 1 bypass"),
                    "{listing}"
                );
            } else {
                assert!(f.compat_rules.is_empty());
                assert!(script.contains("add rule inet ftpct queue_control queue num 1 comment"));
            }
            assert!(
                script.contains("add chain inet ftpct queue_control\n"),
                "{script}"
            );
            assert_eq!(delete_with(&mut f, &s).unwrap(), 12);
            assert!(f.table.is_none());
            assert_eq!(delete_with(&mut f, &s).unwrap(), 0);
            assert_eq!(
                f.scripts.last().unwrap(),
                "add table inet ftpct\ndelete table inet ftpct\n"
            );
        }
    }

    #[test]
    fn nft_without_any_queue_verdict_names_the_kernel_feature() {
        let s = RuleSpec {
            backend: Backend::Nft,
            ..spec()
        };
        let mut f = FakeNft::default();
        assert!(!nft_queue_supported(&mut f).unwrap());
        let e = apply_with(&mut f, &s).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, RulesError::KernelFeature { .. }), "{m}");
        assert!(m.contains("CONFIG_NFT_QUEUE"), "{m}");
        assert!(m.contains("CONFIG_NFT_COMPAT"), "{m}");
        assert!(m.contains("nft backend cannot work on this kernel"), "{m}");
        assert!(f.table.is_none());
    }
}
