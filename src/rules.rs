//! The iptables/ip6tables rules ftpct needs, as data ([`rules`], [`print`]) and applied or
//! removed idempotently ([`apply`], [`delete`]) by running `iptables`/`ip6tables` with argument
//! vectors (never a shell).
//!
//! The rules, for each family (set `set4` for iptables, `set6` for ip6tables):
//! - (a) raw PREROUTING and raw OUTPUT: FTP control packets of both directions (`--dports` and
//!   `--sports`), except pure SYNs, queued *before* conntrack and NAT: the daemon parses and
//!   rewrites them there ([`Hook::PreConntrack`](crate::types::Hook::PreConntrack));
//! - (b) mangle POSTROUTING and mangle INPUT: the same packets *after* conntrack and DNAT, where
//!   the daemon fixes acknowledgement numbers ([`Hook::PostConntrack`](crate::types::Hook));
//!   [`crate::nfqueue`] maps hooks to these two meanings, so queues must be in exactly these
//!   table/chain pairs;
//! - (c) raw PREROUTING: SYNs whose `destination address,port` is in the ipset
//!   ([`crate::ipset`]) — the data connections that may match an expectation — always with
//!   `--queue-bypass` so that without a running daemon they pass untouched;
//! - (d) nat PREROUTING: a rule that matches everything and does nothing (no target, only the
//!   comment). With iptables-nft, nat chains are created lazily, and the kernel only applies
//!   NAT bindings at hooks that have a nat base chain: without nat PREROUTING the DNAT of the
//!   data entries ([`crate::ctnetlink`]) would never be applied.
//!
//! Every rule carries `-m comment --comment ftpct`, so [`delete`] removes exactly these rules
//! (each one by its full specification, until `-C` no longer finds it) and nothing of the
//! admin's; the admin's `ESTABLISHED,RELATED -j ACCEPT` is never touched.
//! Rules are appended (`-A`), not inserted: an NFQUEUE verdict of accept resumes at the next
//! hook, skipping the rest of the chain, so appending keeps the admin's own raw/mangle rules in
//! effect for these packets.
//!
//! The ipsets are created and destroyed through [`crate::ipset`] (netlink) rather than the
//! `ipset` CLI: the same code as the daemon's, typed errors, and no dependency on the `ipset`
//! package (the kernel's `xt_set` match is all iptables needs).

use std::io;
use std::process::{Command, Output};

use crate::ipset::{self, Ipset, IpsetError, SetFamily};

/// Comment on every ftpct rule.
pub const COMMENT: &str = "ftpct";
/// Default timeout of the ipsets (elements are added with their own timeout).
pub const SET_DEFAULT_TIMEOUT: u32 = 120;
/// `multiport` accepts at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;
/// Bound on repeated deletions of one rule (duplicates left by earlier runs).
const MAX_DUPLICATES: usize = 64;

/// What to generate rules for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSpec {
    /// NFQUEUE queue number.
    pub queue: u16,
    /// FTP control ports (usually `[21]`).
    pub ports: Vec<u16>,
    /// ipset of IPv4 data destinations.
    pub set4: String,
    /// ipset of IPv6 data destinations.
    pub set6: String,
    /// `--queue-bypass` on the control-packet rules: accept them unprocessed when no daemon is
    /// bound (an FTP through NAT then fails as without ALG) instead of dropping them.
    pub bypass: bool,
}

impl Default for RuleSpec {
    fn default() -> Self {
        RuleSpec {
            queue: 0,
            ports: vec![21],
            set4: ipset::DEFAULT_SET4.to_string(),
            set6: ipset::DEFAULT_SET6.to_string(),
            bypass: false,
        }
    }
}

/// Address family of a rule: which tool applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `iptables` or `ip6tables`.
    pub fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Which of the four groups (see the module doc) a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// (a) control packets before conntrack.
    ControlPre,
    /// (b) control packets after conntrack.
    ControlPost,
    /// (c) data SYNs listed in the ipset.
    DataSyn,
    /// (d) nat PREROUTING base chain.
    NatHook,
}

/// One rule: `program -t table -A chain args...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub table: &'static str,
    pub chain: &'static str,
    /// The rule specification (matches and target), without `-t`/`-A`.
    pub args: Vec<String>,
    pub group: Group,
}

impl Rule {
    /// The command line that appends this rule.
    pub fn command_line(&self) -> String {
        let mut s = format!(
            "{} -t {} -A {}",
            self.family.program(),
            self.table,
            self.chain
        );
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }
}

/// Errors of rule generation and application. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules: no FTP control port given: give at least one port (e.g. 21)")]
    NoPorts,
    #[error("rules: port 0 is not a valid FTP control port")]
    PortZero,
    #[error(
        "rules: invalid set name {0:?}: use 1 to 31 characters among letters, digits, '_', '-', '.'"
    )]
    BadSetName(String),
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
        "rules: `{command}` failed ({status}): {stderr}; check that the kernel has the \
         raw/mangle/nat tables and the multiport, set, comment and NFQUEUE extensions"
    )]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "rules: `{0}` still matches after {MAX_DUPLICATES} deletions; remove it by hand \
         (iptables-save | grep ftpct)"
    )]
    Stuck(String),
    #[error(transparent)]
    Ipset(#[from] IpsetError),
}

fn check_set_name(name: &str) -> Result<(), RulesError> {
    let ok = !name.is_empty()
        && name.len() <= ipset::MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RulesError::BadSetName(name.to_string()))
    }
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The rules for `spec`, in the order they are applied and printed: group (a), (b), (c), (d),
/// IPv4 before IPv6 within each table/chain.
pub fn rules(spec: &RuleSpec) -> Result<Vec<Rule>, RulesError> {
    if spec.ports.is_empty() {
        return Err(RulesError::NoPorts);
    }
    if spec.ports.contains(&0) {
        return Err(RulesError::PortZero);
    }
    check_set_name(&spec.set4)?;
    check_set_name(&spec.set6)?;
    let mut ports: Vec<u16> = Vec::with_capacity(spec.ports.len());
    for p in &spec.ports {
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    let queue = spec.queue.to_string();
    let target = |bypass: bool| {
        let mut t = strings(&["-j", "NFQUEUE", "--queue-num", &queue]);
        if bypass {
            t.push("--queue-bypass".into());
        }
        t
    };
    let comment = strings(&["-m", "comment", "--comment", COMMENT]);
    let control = |dir: &str, list: &str| {
        let mut a = strings(&["-p", "tcp", "-m", "multiport", dir, list, "!", "--syn"]);
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
                            table,
                            chain,
                            args: control(dir, list),
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
            table: "raw",
            chain: "PREROUTING",
            args: a,
            group: Group::DataSyn,
        });
    }
    for family in [Family::V4, Family::V6] {
        out.push(Rule {
            family,
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
             #     ftpct fixes their acknowledgement numbers here."
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

/// The rules as shell commands, one per line, grouped under comments explaining each group.
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

fn shell_quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:/=+!@%".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Runs a program with arguments; abstracted for tests.
pub trait Exec {
    fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output>;
}

/// Runs commands with [`std::process::Command`].
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemExec;

impl Exec for SystemExec {
    fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output> {
        Command::new(program).args(args).output()
    }
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
    let program = r.family.program();
    let out = exec.exec(program, &argv).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            RulesError::ToolMissing {
                program,
                hint: "install it (Debian: apt-get install iptables)",
            }
        } else {
            RulesError::Spawn { program, source }
        }
    })?;
    if out.status.success() {
        return Ok(true);
    }
    if op == Op::Check && out.status.code() == Some(1) {
        return Ok(false);
    }
    Err(RulesError::Failed {
        command: format!("{program} {}", argv.join(" ")),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Appends each rule that `-C` does not find. Returns how many were added.
pub fn apply_rules(exec: &mut dyn Exec, rules: &[Rule]) -> Result<usize, RulesError> {
    let mut added = 0;
    for r in rules {
        if !run(exec, Op::Check, r)? {
            run(exec, Op::Append, r)?;
            added += 1;
        }
    }
    Ok(added)
}

/// Deletes each rule (last first) until `-C` no longer finds it. Returns how many were
/// deleted.
pub fn delete_rules(exec: &mut dyn Exec, rules: &[Rule]) -> Result<usize, RulesError> {
    let mut deleted = 0;
    for r in rules.iter().rev() {
        let mut n = 0;
        while run(exec, Op::Check, r)? {
            if n == MAX_DUPLICATES {
                return Err(RulesError::Stuck(r.command_line()));
            }
            run(exec, Op::Delete, r)?;
            n += 1;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Creates the two ipsets (idempotent) and appends the missing rules, in the calling thread's
/// network namespace. Returns how many rules were added.
pub fn apply(spec: &RuleSpec) -> Result<usize, RulesError> {
    let rules = rules(spec)?;
    let mut set = Ipset::open()?;
    set.create_hash_ip_port(&spec.set4, SetFamily::V4, SET_DEFAULT_TIMEOUT)?;
    set.create_hash_ip_port(&spec.set6, SetFamily::V6, SET_DEFAULT_TIMEOUT)?;
    apply_rules(&mut SystemExec, &rules)
}

/// Removes exactly ftpct's rules, then destroys the two ipsets. Returns how many rules were
/// deleted.
///
/// `iptables -C` of a rule that names a missing set fails (exit status 2) instead of answering
/// "absent", so the sets are (re)created first if missing. A set of that name with another type
/// or other parameters than `apply` gives it is not ftpct's and is left alone.
pub fn delete(spec: &RuleSpec) -> Result<usize, RulesError> {
    let rules = rules(spec)?;
    let mut set = Ipset::open()?;
    let mut ours = Vec::with_capacity(2);
    for (name, family) in [(&spec.set4, SetFamily::V4), (&spec.set6, SetFamily::V6)] {
        match set.create_hash_ip_port(name, family, SET_DEFAULT_TIMEOUT) {
            Ok(()) => ours.push(name),
            Err(IpsetError::SetConflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = delete_rules(&mut SystemExec, &rules)?;
    for name in ours {
        set.destroy(name)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn spec() -> RuleSpec {
        RuleSpec::default()
    }

    #[test]
    fn every_rule_has_the_comment() {
        for r in rules(&spec()).unwrap() {
            let joined = r.args.join(" ");
            assert!(joined.contains("-m comment --comment ftpct"), "{joined}");
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
            "iptables -t raw -A PREROUTING -p tcp -m multiport --dports 21 ! --syn \
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
            "iptables -t raw -A PREROUTING -p tcp --syn -m set --match-set ftpct4 dst,dst \
             -m comment --comment ftpct -j NFQUEUE --queue-num 0 --queue-bypass"
        );
        assert_eq!(syn[1].family, Family::V6);
        assert!(syn[1].args.contains(&"ftpct6".to_string()));
        let nat: Vec<_> = rs.iter().filter(|r| r.group == Group::NatHook).collect();
        assert_eq!(
            nat[0].command_line(),
            "iptables -t nat -A PREROUTING -m comment --comment ftpct"
        );
        assert_eq!(nat[1].family, Family::V6);
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
    }

    #[test]
    fn invalid_specs() {
        assert!(matches!(
            rules(&RuleSpec {
                ports: vec![],
                ..spec()
            }),
            Err(RulesError::NoPorts)
        ));
        assert!(matches!(
            rules(&RuleSpec {
                ports: vec![0],
                ..spec()
            }),
            Err(RulesError::PortZero)
        ));
        for bad in ["", "a b", "x;rm", &"y".repeat(32)] {
            assert!(matches!(
                rules(&RuleSpec {
                    set4: bad.to_string(),
                    ..spec()
                }),
                Err(RulesError::BadSetName(_))
            ));
        }
    }

    #[test]
    fn print_has_headers_and_one_command_per_rule() {
        let rs = rules(&spec()).unwrap();
        let p = print(&rs);
        let cmds: Vec<&str> = p
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(cmds.len(), rs.len());
        assert!(cmds
            .iter()
            .all(|l| l.starts_with("iptables -t ") || l.starts_with("ip6tables -t ")));
        for h in ["(a)", "(b)", "(c)", "(d)", "nat PREROUTING base chain"] {
            assert!(p.contains(h), "missing {h} in\n{p}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("dst,dst"), "dst,dst");
        assert_eq!(shell_quote("!"), "!");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    /// A fake iptables holding a multiset of rules.
    #[derive(Default)]
    struct Fake {
        present: Vec<String>,
        calls: Vec<String>,
    }

    impl Exec for Fake {
        fn exec(&mut self, program: &'static str, args: &[&str]) -> io::Result<Output> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.push(line);
            assert_eq!(args[0], "-w");
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
            Ok(Output {
                status: std::process::ExitStatus::from_raw(code << 8),
                stdout: vec![],
                stderr: vec![],
            })
        }
    }

    #[test]
    fn apply_is_idempotent_and_delete_removes_duplicates_only_of_ours() {
        let rs = rules(&spec()).unwrap();
        let mut f = Fake::default();
        f.present.push(
            "iptables filter FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".into(),
        );
        assert_eq!(apply_rules(&mut f, &rs).unwrap(), rs.len());
        assert_eq!(apply_rules(&mut f, &rs).unwrap(), 0);
        assert_eq!(f.present.len(), rs.len() + 1);
        // A duplicate left by some earlier run.
        let dup = f.present[1].clone();
        f.present.push(dup);
        assert_eq!(delete_rules(&mut f, &rs).unwrap(), rs.len() + 1);
        assert_eq!(
            f.present,
            ["iptables filter FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"]
        );
        assert!(f.calls.iter().all(|c| !c.contains(" -I ")));
    }

    #[test]
    fn missing_tool_is_reported_with_a_fix() {
        struct Missing;
        impl Exec for Missing {
            fn exec(&mut self, _: &'static str, _: &[&str]) -> io::Result<Output> {
                Err(io::Error::from(io::ErrorKind::NotFound))
            }
        }
        let rs = rules(&spec()).unwrap();
        let e = apply_rules(&mut Missing, &rs).unwrap_err();
        assert!(e.to_string().contains("apt-get install iptables"), "{e}");
    }
}
