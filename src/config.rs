//! The configuration file: `key = value` lines, `#` comments, validated with errors that name the
//! line and the fix. Command-line flags override it; SIGHUP re-reads it.
//!
//! ```text
//! # /etc/ftpct/ftpct.conf
//! queue = 0
//! ports = 21, 2121
//! socket = /run/ftpct/ftpct.sock
//! state_file = /run/ftpct/ftpct.sock.state
//! fail_open = false
//! allow_third_party = false
//! allow_privileged_ports = false
//! max_expect_per_session = 1
//! expect_timeout = 300
//! nat_ports = 1024-65535
//! max_sessions = 65536
//! session_idle_timeout = 21600
//! backend = iptables-nft
//! ipset4 = ftpct4
//! ipset6 = ftpct6
//! log = info
//! user = ftpct
//! metrics = 127.0.0.1:9477
//! rule_check_interval = 5
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine;
use crate::policy::{HoldTimeoutAction, Policy};
use crate::rulespec::Backend;

pub const DEFAULT_SOCKET: &str = "/run/ftpct/ftpct.sock";

/// Largest `rule_check_interval`, in seconds (a day).
pub const MAX_RULE_CHECK_INTERVAL: u64 = 86_400;

/// Everything the daemon reads from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub queue: u16,
    pub ports: Vec<u16>,
    pub socket: PathBuf,
    /// State file; `None` = the socket path with `.state` appended.
    pub state_file: Option<PathBuf>,
    pub fail_open: bool,
    /// Prometheus endpoint (`http://ADDR/metrics`); off by default.
    pub metrics: Option<std::net::SocketAddr>,
    pub ipset4: String,
    pub ipset6: String,
    /// Which firewall backend holds the rules and the data-destination sets: ipsets for the
    /// iptables backends, nft sets in `table inet ftpct` for `nft`.
    pub backend: Backend,
    pub log: String,
    /// Run as this user after start (keeping CAP_NET_ADMIN); `None` = the default: a daemon
    /// started as root switches to `ftpct` or `nobody` where it can (`daemon::choose_user`);
    /// `root` keeps uid 0.
    pub user: Option<String>,
    /// Conntrack mark bit(s) set on a control connection once it has a sequence offset; the
    /// post-conntrack queue rules then select only connections carrying them. 0 = queue every
    /// control packet after conntrack too.
    pub seqadj_mark: u32,
    /// How often the daemon checks that its firewall rules are still installed
    /// ([`crate::rulecheck`]); zero = never.
    pub rule_check_interval: Duration,
    pub policy: Policy,
    /// What the file says that still works but should change (deprecated keys), one sentence
    /// each with its line; `ftpct check-config` prints them, the daemon logs them.
    pub warnings: Vec<String>,
}

impl Settings {
    /// The rules matching this configuration (`ftpct rules --config FILE`): its queue, ports,
    /// set names and backend, `fail_open` as `bypass` (an admin who prefers connectivity when
    /// the queue is full also prefers it when no daemon is bound) and `max_expectations` as the
    /// sets' `maxelem`.
    pub fn rule_spec(&self) -> crate::rulespec::RuleSpec {
        crate::rulespec::RuleSpec {
            queue: self.queue,
            ports: self.ports.clone(),
            set4: self.ipset4.clone(),
            set6: self.ipset6.clone(),
            bypass: self.fail_open,
            backend: self.backend,
            seqadj_mark: self.seqadj_mark,
            maxelem: crate::rulespec::set_maxelem(self.policy.max_expectations),
        }
    }
}
pub use crate::rulespec::DEFAULT_SEQADJ_MARK;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: 0,
            ports: vec![21],
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_file: None,
            fail_open: false,
            metrics: None,
            ipset4: "ftpct4".into(),
            ipset6: "ftpct6".into(),
            backend: Backend::default(),
            log: "info".into(),
            user: None,
            seqadj_mark: DEFAULT_SEQADJ_MARK,
            rule_check_interval: crate::rulecheck::DEFAULT_INTERVAL,
            policy: Policy::default(),
            warnings: Vec::new(),
        }
    }
}

/// Command-line values that override the configuration file: applied at start and again at
/// every reload (SIGHUP), so that a reload never undoes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub queue: Option<u16>,
    pub socket: Option<PathBuf>,
    pub ports: Option<Vec<u16>>,
    /// `--fail-open` (there is no flag to force fail-closed).
    pub fail_open: bool,
    pub metrics: Option<std::net::SocketAddr>,
    pub state_file: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, s: &mut Settings) {
        if let Some(q) = self.queue {
            s.queue = q;
        }
        if let Some(p) = &self.socket {
            s.socket = p.clone();
        }
        if let Some(p) = &self.ports {
            s.ports = p.clone();
        }
        if self.fail_open {
            s.fail_open = true;
        }
        if self.metrics.is_some() {
            s.metrics = self.metrics;
        }
        if self.state_file.is_some() {
            s.state_file = self.state_file.clone();
        }
    }
}

impl Settings {
    /// The settings after a reload that read `new`: the ports and the policy come from `new`;
    /// what only a restart applies (the queue, sockets, sets, files, logging, user, marks and
    /// the rule check) stays as it is, and the names of those keys that `new` changes are
    /// returned, for a log line.
    pub fn reloaded(&self, new: Settings) -> (Settings, Vec<&'static str>) {
        let mut ignored = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                ignored.push(name);
            }
        };
        check("queue", new.queue != self.queue);
        check("socket", new.socket != self.socket);
        check("state_file", new.state_file != self.state_file);
        check("fail_open", new.fail_open != self.fail_open);
        check("metrics", new.metrics != self.metrics);
        check("ipset4", new.ipset4 != self.ipset4);
        check("ipset6", new.ipset6 != self.ipset6);
        check("backend", new.backend != self.backend);
        check("log", new.log != self.log);
        check("user", new.user != self.user);
        check("seqadj_mark", new.seqadj_mark != self.seqadj_mark);
        check(
            "rule_check_interval",
            new.rule_check_interval != self.rule_check_interval,
        );
        let merged = Settings {
            ports: new.ports,
            policy: new.policy,
            ..self.clone()
        };
        (merged, ignored)
    }

    /// Where the state that survives a restart is kept.
    pub fn state_path(&self) -> PathBuf {
        self.state_file.clone().unwrap_or_else(|| {
            let mut p = self.socket.clone().into_os_string();
            p.push(".state");
            PathBuf::from(p)
        })
    }

    pub fn engine_config(&self) -> engine::Config {
        engine::Config {
            control_ports: self.ports.clone(),
            policy: self.policy.clone(),
            // drawn by the daemon at start (`daemon::random_hash_key`)
            hash_key: [0, 0],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Invalid {
        path: PathBuf,
        line: usize,
        msg: String,
    },
}

/// Parses a list of ports: `21, 2121`.
pub fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
    if v.trim().is_empty() {
        return Err("at least one port is needed, e.g. 'ports = 21'".into());
    }
    let mut out = Vec::new();
    for p in v.split(',').map(str::trim) {
        if p.is_empty() {
            return Err(format!(
                "'{v}' has an empty entry (a port missing between commas?): list ports \
                 separated by commas, e.g. 21,2121"
            ));
        }
        let n = match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("'{p}' is not a TCP port (1-65535)")),
        };
        if out.contains(&n) {
            return Err(format!("port {p} is listed twice in '{v}'"));
        }
        out.push(n);
    }
    if out.len() > 15 {
        return Err("at most 15 control ports (iptables multiport limit)".into());
    }
    Ok(out)
}

/// A conntrack mark: decimal or `0x` hex.
fn parse_mark(v: &str) -> Result<u32, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("'{v}' is not a mark (decimal or 0x hex)"))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("'{v}' is not a boolean: use true or false")),
    }
}

fn parse_num<T: std::str::FromStr>(v: &str, what: &str) -> Result<T, String> {
    v.parse::<T>()
        .map_err(|_| format!("'{v}' is not a valid {what}"))
}

/// Smallest `max_line`: the longest line ftpct rewrites (an `EPRT` with a full IPv6 address,
/// a `227` reply with its text) must fit, with room to spare.
pub const MIN_MAX_LINE: usize = 128;

/// Largest `max_line`: each control session may buffer that much per direction, so the bound
/// keeps the worst case (`max_sessions` sessions, all holding a partial line) in memory that a
/// gateway has (65536 sessions × 2 × 8 KiB = 1 GiB); FTP lines that ftpct rewrites are under
/// 100 bytes.
pub const MAX_MAX_LINE: usize = 8192;

/// Largest `expect_timeout`, in seconds (a day; the kernel helper waits 300 s).
pub const MAX_EXPECT_TIMEOUT: u64 = 86_400;

/// Parses the text of a configuration file and checks what can be checked without the system
/// (every value, and the keys that depend on each other). [`load`] also checks what needs the
/// system (that `user` exists). Every error names the line and the fix.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    parse_lines(text, path).map(|(s, _)| s)
}

/// The line each key was last set on.
#[derive(Debug, Default)]
struct KeyLines(std::collections::HashMap<String, usize>);

impl KeyLines {
    fn get(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }
    /// The later of the lines of `a` and `b` (the one an error about both should name).
    fn later(&self, a: &str, b: &str) -> usize {
        self.get(a).max(self.get(b)).unwrap_or(0)
    }
}

/// An absolute path, or an error with the fix (the daemon runs from `/` under systemd, and a
/// relative path would name another file for `ftpct list` run from elsewhere).
fn absolute_path(v: &str, example: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(v);
    if p.is_absolute() {
        Ok(p)
    } else if v.is_empty() {
        Err(format!(
            "no path given: give an absolute path, e.g. {example}"
        ))
    } else {
        Err(format!(
            "'{v}' is a relative path: give an absolute path, e.g. {example}"
        ))
    }
}

/// A count that must be at least `min`.
fn parse_at_least(key: &str, v: &str, min: usize, why: &str) -> Result<usize, String> {
    let n: usize = parse_num(v, "count")?;
    if n < min {
        return Err(format!(
            "{key} = {n} is too small: use at least {min} ({why})"
        ));
    }
    Ok(n)
}

/// `keep` or `pass`.
fn parse_hold_action(v: &str) -> Result<HoldTimeoutAction, String> {
    match v {
        "keep" => Ok(HoldTimeoutAction::Keep),
        "pass" => Ok(HoldTimeoutAction::Pass),
        other => Err(format!(
            "hold_timeout_action = '{other}': use keep (the held bytes stay inside) or pass \
             (they are let through unchanged)"
        )),
    }
}

/// A number of seconds from 1 to `max`.
fn parse_secs(key: &str, v: &str, max: u64) -> Result<Duration, String> {
    let n: u64 = parse_num(v, "number of seconds")?;
    if n == 0 {
        return Err(format!(
            "{key} = 0 would end it at once: use at least 1 second"
        ));
    }
    if n > max {
        return Err(format!(
            "{key} = {n} seconds is too long: use at most {max}"
        ));
    }
    Ok(Duration::from_secs(n))
}

/// A log filter as `ftpct run` will use it (tracing's `EnvFilter` syntax).
pub fn check_log_filter(v: &str) -> Result<(), String> {
    log_filter(v).map(|_| ())
}

/// The tracing filter of a `log` value (or `RUST_LOG`), or why it is not one. Only printable
/// ASCII is accepted: filter directives are target names, levels and field values, and
/// tracing-subscriber 0.3's directive parser panics on some non-ASCII input (it slices the
/// text inside a multi-byte character: `0,\u{b}0¡=`, found by the property test below); the
/// parser also runs under `catch_unwind`, so that no value can take the daemon down.
pub fn log_filter(v: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    if v.trim().is_empty() {
        return Err("no log filter given: use a level, e.g. info".into());
    }
    let usage = "use a level (error, warn, info, debug, trace) or directives such as \
                 info,ftpct=debug";
    if let Some(c) = v.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(format!(
            "'{}' is not a log filter (character {c:?} is not printable ASCII): {usage}",
            v.escape_debug()
        ));
    }
    let parsed = std::panic::catch_unwind(|| tracing_subscriber::EnvFilter::try_new(v));
    match parsed {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(format!("'{v}' is not a log filter ({e}): {usage}")),
        Err(_) => Err(format!(
            "'{v}' is not a log filter (the parser failed on it): {usage}"
        )),
    }
}

fn parse_lines(text: &str, path: &Path) -> Result<(Settings, KeyLines), ConfigError> {
    let mut s = Settings::default();
    let mut lines = KeyLines::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let Some((k, v)) = line.split_once('=') else {
            return Err(err(format!("expected 'key = value', found '{line}'")));
        };
        let (k, v) = (k.trim(), v.trim());
        let r: Result<(), String> = (|| {
            match k {
                "queue" => s.queue = parse_num(v, "queue number (0-65535)")?,
                "ports" => s.ports = parse_ports(v)?,
                "socket" => s.socket = absolute_path(v, DEFAULT_SOCKET)?,
                "state_file" => {
                    s.state_file = if v.is_empty() {
                        None
                    } else {
                        Some(absolute_path(v, "/var/lib/ftpct/ftpct.state")?)
                    }
                }
                "fail_open" => s.fail_open = parse_bool(v)?,
                "ipset4" => s.ipset4 = v.to_string(),
                "metrics" => {
                    let off = matches!(v, "" | "off" | "none");
                    s.metrics = if off {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            format!(
                                "'{v}' is not an address:port, e.g. 127.0.0.1:9477 or [::1]:9477"
                            )
                        })?)
                    };
                }
                "ipset6" => s.ipset6 = v.to_string(),
                "backend" => {
                    s.backend = v
                        .parse()
                        .map_err(|e: crate::rulespec::UnknownBackend| e.to_string())?
                }
                "log" => {
                    check_log_filter(v)?;
                    s.log = v.to_string()
                }
                "user" => s.user = (!v.is_empty()).then(|| v.to_string()),
                "rule_check_interval" => {
                    let secs: u64 = parse_num(v, "number of seconds (0 turns the check off)")?;
                    if secs > MAX_RULE_CHECK_INTERVAL {
                        return Err(format!(
                            "{secs} seconds is more than a day: use at most \
                             {MAX_RULE_CHECK_INTERVAL}, or 0 to turn the check off"
                        ));
                    }
                    s.rule_check_interval = Duration::from_secs(secs)
                }
                "allow_third_party" => s.policy.allow_third_party = parse_bool(v)?,
                "allow_privileged_ports" => s.policy.allow_privileged_ports = parse_bool(v)?,
                "max_expect_per_session" => {
                    s.policy.max_expect_per_session = parse_num(v, "count")?;
                    if s.policy.max_expect_per_session == 0 {
                        return Err("must be at least 1".into());
                    }
                }
                "max_expectations" => {
                    s.policy.max_expectations =
                        parse_at_least(k, v, 1, "0 would refuse every data connection")?
                }
                "expect_timeout" => s.policy.expect_timeout = parse_secs(k, v, MAX_EXPECT_TIMEOUT)?,
                "nat_ports" => {
                    let (a, b) = v
                        .split_once('-')
                        .ok_or_else(|| format!("'{v}' is not a range: use e.g. 1024-65535"))?;
                    let a: u16 = parse_num(a.trim(), "port")?;
                    let b: u16 = parse_num(b.trim(), "port")?;
                    if a == 0 || a > b {
                        return Err(format!("'{v}': the range must be low-high with low >= 1"));
                    }
                    s.policy.nat_port_min = a;
                    s.policy.nat_port_max = b;
                }
                "max_line" => {
                    let n = parse_at_least(
                        k,
                        v,
                        MIN_MAX_LINE,
                        "shorter lines are never rewritten, and an EPRT or 227 line can be \
                         that long",
                    )?;
                    if n > MAX_MAX_LINE {
                        return Err(format!(
                            "max_line = {n} is too large: use at most {MAX_MAX_LINE} (every \
                             session may buffer max_line bytes per direction; the lines ftpct \
                             rewrites are under 100 bytes, the default 1024 is plenty)"
                        ));
                    }
                    s.policy.max_line = n
                }
                "max_sessions" => {
                    s.policy.max_sessions =
                        parse_at_least(k, v, 1, "0 would track no FTP control connection")?
                }
                "session_idle_timeout" => {
                    s.policy.session_idle_timeout = parse_secs(k, v, u64::from(u32::MAX))?
                }
                "hold_timeout" => s.policy.hold_timeout = parse_secs(k, v, u64::from(u32::MAX))?,
                "hold_timeout_action" => s.policy.hold_timeout_action = parse_hold_action(v)?,
                "max_hold_retries" => {
                    // Deprecated: still a valid count, so that old files load; no longer used.
                    let _: u8 = parse_num(v, "count (0-255)")?;
                    s.warnings.push(format!(
                        "{}:{}: max_hold_retries is deprecated and ignored: a held split line \
                         now ends when it completes, exceeds max_line, the connection closes, or \
                         after hold_timeout seconds (default 60), never after a number of \
                         retransmissions; remove the line (see ftpct.conf(5))",
                        path.display(),
                        i + 1
                    ));
                }
                "session_close_linger" => s.policy.session_close_linger = parse_secs(k, v, 3600)?,
                "pickup_at_segment_start" => s.policy.pickup_at_segment_start = parse_bool(v)?,
                "tcp_window_check" => s.policy.tcp_window_check = parse_bool(v)?,
                "max_announce_per_segment" => {
                    let n = parse_at_least(k, v, 1, "0 would never rewrite an address")?;
                    s.policy.max_announce_per_segment = u32::try_from(n)
                        .map_err(|_| format!("{k} = {n} is too large (at most {})", u32::MAX))?
                }
                "max_announce_per_second" => {
                    let n = parse_at_least(k, v, 1, "0 would never rewrite an address")?;
                    s.policy.max_announce_per_second = u32::try_from(n)
                        .map_err(|_| format!("{k} = {n} is too large (at most {})", u32::MAX))?
                }
                "log_events_per_second" => {
                    let n = parse_at_least(k, v, 1, "0 would log no refusal at all")?;
                    s.policy.log_events_per_second = u16::try_from(n)
                        .map_err(|_| format!("{k} = {n} is too large (at most {})", u16::MAX))?
                }
                "data_mark" => s.policy.data_mark = parse_mark(v)?,
                "seqadj_mark" => s.seqadj_mark = parse_mark(v)?,
                _ => {
                    return Err(format!(
                        "unknown key '{k}' (see ftpct.conf(5) for the list)"
                    ))
                }
            }
            Ok(())
        })();
        r.map_err(err)?;
        lines.0.insert(k.to_string(), i + 1);
    }
    check(&s, &lines).map_err(|(line, msg)| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        msg,
    })?;
    Ok((s, lines))
}

/// The checks of values that depend on other keys (their order in the file is free): the
/// error names the line of the key that was set last.
fn check(s: &Settings, lines: &KeyLines) -> Result<(), (usize, String)> {
    for (key, name) in [("ipset4", &s.ipset4), ("ipset6", &s.ipset6)] {
        if let Err(e) = crate::rulespec::check_set_name(name, s.backend) {
            let line = lines.later(key, "backend");
            let msg = e.to_string();
            let msg = msg.strip_prefix("rules: ").unwrap_or(&msg);
            return Err((line, format!("{key}: {msg}")));
        }
    }
    let overlap = s.seqadj_mark & s.policy.data_mark;
    if overlap != 0 {
        return Err((
            lines.later("seqadj_mark", "data_mark"),
            format!(
                "seqadj_mark {:#x} and data_mark {:#x} share the bit(s) {overlap:#x}: data \
                 connections would look like control connections with a sequence offset; \
                 choose a seqadj_mark bit outside data_mark (the default {DEFAULT_SEQADJ_MARK:#x} \
                 is)",
                s.seqadj_mark, s.policy.data_mark
            ),
        ));
    }
    let p = &s.policy;
    // Only a hold_timeout that the file sets is checked: with the default one a short idle
    // timeout bounds the hold (Policy::hold_limit).
    if lines.get("hold_timeout").is_some() && p.hold_timeout > p.session_idle_timeout {
        return Err((
            lines.later("hold_timeout", "session_idle_timeout"),
            format!(
                "hold_timeout = {} s is longer than session_idle_timeout = {} s: a held line is \
                 never kept longer than its session; use a hold_timeout of at most {} s",
                p.hold_timeout.as_secs(),
                p.session_idle_timeout.as_secs(),
                p.session_idle_timeout.as_secs()
            ),
        ));
    }
    if p.nat_port_max < 1024 && !p.allow_privileged_ports {
        return Err((
            lines.later("nat_ports", "allow_privileged_ports"),
            format!(
                "nat_ports {}-{} lies entirely below 1024 while allow_privileged_ports = false: \
                 every rewritten data address would need a privileged port and be refused; use \
                 a range above 1023 (e.g. 1024-65535) or set allow_privileged_ports = true",
                p.nat_port_min, p.nat_port_max
            ),
        ));
    }
    Ok(())
}

/// Reads and parses a configuration file, and checks what needs the system: that `user`
/// exists. What `ftpct check-config`, `ftpct run`, `ftpct rules --config` and a reload
/// (SIGHUP) all use, so that they accept and refuse the same files.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (s, lines) = parse_lines(&text, path)?;
    if let Some(user) = &s.user {
        check_user(user).map_err(|msg| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: lines.get("user").unwrap_or(0),
            msg,
        })?;
    }
    Ok(s)
}

/// That the system knows `user` (the daemon switches to it after start).
pub fn check_user(user: &str) -> Result<(), String> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "user '{user}' does not exist: create it (e.g. useradd --system --no-create-home \
             {user}) or remove the line to stay root with CAP_NET_ADMIN only"
        )),
        Err(e) => Err(format!(
            "cannot look user '{user}' up ({e}): check /etc/nsswitch.conf, or remove the line"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = "# comment\nqueue = 3\nports = 21, 2121 # trailing\nfail_open = yes\nnat_ports = 40000-41000\nexpect_timeout = 60\nallow_third_party = false\n";
        let s = parse(text, Path::new("t.conf")).unwrap();
        assert_eq!(s.queue, 3);
        assert_eq!(s.ports, vec![21, 2121]);
        assert!(s.fail_open);
        assert_eq!(
            (s.policy.nat_port_min, s.policy.nat_port_max),
            (40000, 41000)
        );
        assert_eq!(s.policy.expect_timeout, Duration::from_secs(60));
    }

    #[test]
    fn backend_and_core_tunables() {
        let text = "backend = nft\nmax_hold_retries = 5\nsession_close_linger = 30\n\
                    pickup_at_segment_start = yes\n";
        let s = parse(text, Path::new("t.conf")).unwrap();
        assert_eq!(s.backend, Backend::Nft);
        // deprecated: accepted, with a warning naming its line, and without effect
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].starts_with("t.conf:2: max_hold_retries is deprecated"),
            "{:?}",
            s.warnings
        );
        assert_eq!(s.policy, {
            let mut p = Policy {
                session_close_linger: Duration::from_secs(30),
                pickup_at_segment_start: true,
                ..Policy::default()
            };
            p.hold_timeout = Duration::from_secs(60);
            p
        });
        assert_eq!(s.policy.session_close_linger, Duration::from_secs(30));
        assert!(s.policy.pickup_at_segment_start);
        let d = parse("", Path::new("t.conf")).unwrap();
        assert_eq!(d.backend, Backend::IptablesNft);
        assert!(!d.policy.pickup_at_segment_start);
        let e = parse("backend = ipfw\n", Path::new("t.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.conf:1:") && e.contains("iptables-nft, iptables-legacy or nft"),
            "{e}"
        );
        let e = parse("max_hold_retries = 300\n", Path::new("t.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.conf:1:"), "{e}");
    }

    #[test]
    fn hold_timeout_and_its_action() {
        let d = parse("", Path::new("t.conf")).unwrap();
        assert_eq!(d.policy.hold_timeout, Duration::from_secs(60));
        assert_eq!(d.policy.hold_timeout_action, HoldTimeoutAction::Keep);
        assert!(d.warnings.is_empty());
        let s = parse(
            "hold_timeout = 5\nhold_timeout_action = pass\n",
            Path::new("t.conf"),
        )
        .unwrap();
        assert_eq!(s.policy.hold_timeout, Duration::from_secs(5));
        assert_eq!(s.policy.hold_timeout_action, HoldTimeoutAction::Pass);
        for (text, want) in [
            ("hold_timeout = 0\n", "t.conf:1:"),
            ("hold_timeout_action = drop\n", "t.conf:1:"),
            // never longer than the session it belongs to; the error names the later line
            (
                "hold_timeout = 120\nsession_idle_timeout = 60\n",
                "t.conf:2:",
            ),
        ] {
            let e = parse(text, Path::new("t.conf")).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        // a short idle timeout with the default hold_timeout is fine: the hold is bounded by it
        let s = parse("session_idle_timeout = 30\n", Path::new("t.conf")).unwrap();
        assert_eq!(s.policy.hold_limit(), Duration::from_secs(30));
    }

    #[test]
    fn marks_in_decimal_or_hex() {
        let s = parse("data_mark = 0x10\nseqadj_mark = 64\n", Path::new("m.conf")).unwrap();
        assert_eq!((s.policy.data_mark, s.seqadj_mark), (0x10, 64));
        let s = parse("seqadj_mark = 0\n", Path::new("m.conf")).unwrap();
        assert_eq!(s.seqadj_mark, 0, "0 turns the selection off");
        assert_eq!(
            parse("", Path::new("m.conf")).unwrap().seqadj_mark,
            DEFAULT_SEQADJ_MARK
        );
        let e = parse("seqadj_mark = 0xzz\n", Path::new("m.conf"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "m.conf:1: '0xzz' is not a mark (decimal or 0x hex)");
    }

    #[test]
    fn a_reload_keeps_overrides_and_restart_only_keys() {
        let p = Path::new("r.conf");
        let cli = Overrides {
            ports: Some(vec![2121]),
            queue: Some(9),
            ..Overrides::default()
        };
        let mut running = parse("queue = 1\nports = 21\nlog = info\n", p).unwrap();
        cli.apply(&mut running);
        assert_eq!((running.queue, running.ports.clone()), (9, vec![2121]));
        // the file changes the ports, the queue, the log filter and a policy switch
        let mut new = parse(
            "queue = 2\nports = 21, 990\nlog = debug\nallow_third_party = true\n",
            p,
        )
        .unwrap();
        cli.apply(&mut new);
        let (after, ignored) = running.reloaded(new);
        assert_eq!(after.ports, vec![2121], "the command line still wins");
        assert_eq!(after.queue, 9, "the bound queue stays");
        assert_eq!(after.log, "info");
        assert!(after.policy.allow_third_party, "the policy is reloaded");
        assert_eq!(ignored, vec!["log"], "queue differs only in the file");
        // without overrides, the file's ports apply
        let running = parse("ports = 21\n", p).unwrap();
        let (after, ignored) = running.reloaded(parse("ports = 21, 990\n", p).unwrap());
        assert_eq!(after.ports, vec![21, 990]);
        assert!(ignored.is_empty());
    }

    #[test]
    fn rule_check_interval() {
        let p = Path::new("r.conf");
        assert_eq!(
            parse("", p).unwrap().rule_check_interval,
            Duration::from_secs(5)
        );
        assert_eq!(
            parse("rule_check_interval = 60\n", p)
                .unwrap()
                .rule_check_interval,
            Duration::from_secs(60)
        );
        assert!(parse("rule_check_interval = 0\n", p)
            .unwrap()
            .rule_check_interval
            .is_zero());
        let e = parse("rule_check_interval = 5s\n", p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "r.conf:1: '5s' is not a valid number of seconds (0 turns the check off)"
        );
        assert!(parse("rule_check_interval = -1\n", p).is_err());
        assert_eq!(
            parse("rule_check_interval = 86400\n", p)
                .unwrap()
                .rule_check_interval,
            Duration::from_secs(86_400)
        );
        let e = parse("rule_check_interval = 86401\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 86400"), "{e}");
    }

    #[test]
    fn errors_name_the_line_and_the_fix() {
        let e = parse("queue = 1\nports = 21, x\n", Path::new("a.conf"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "a.conf:2: 'x' is not a TCP port (1-65535)");
        let e = parse("bogus = 1\n", Path::new("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.conf:1: unknown key 'bogus'"), "{e}");
        let e = parse("nat_ports = 5\n", Path::new("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use e.g. 1024-65535"), "{e}");
        let e = parse("just words\n", Path::new("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 'key = value'"), "{e}");
    }

    /// The error of `text` (one key per line), as printed.
    fn error_of(text: &str) -> String {
        parse(text, Path::new("v.conf")).unwrap_err().to_string()
    }

    #[test]
    fn set_names_are_checked_as_ftpct_rules_checks_them() {
        let long = "a".repeat(32);
        let e = error_of(&format!("queue = 1\nipset4 = {long}\n"));
        assert!(e.starts_with("v.conf:2: ipset4: invalid set name"), "{e}");
        assert!(e.contains("1 to 31 characters"), "{e}");
        assert!(parse(&format!("ipset6 = {}\n", "a".repeat(31)), Path::new("v")).is_ok());
        let e = error_of("ipset6 = ftp ct6\n");
        assert!(e.starts_with("v.conf:1: ipset6: invalid set name"), "{e}");
        let e = error_of("ipset4 = a;b\n");
        assert!(e.starts_with("v.conf:1: ipset4:"), "{e}");
        // `-` suits ipset, not nft: the error names the later of the two lines
        assert!(parse("ipset4 = ftp-4\n", Path::new("v")).is_ok());
        let e = error_of("ipset4 = ftp-4\nqueue = 2\nbackend = nft\n");
        assert!(
            e.starts_with("v.conf:3: ipset4: invalid nft set name"),
            "{e}"
        );
        // the same names are refused by `ftpct rules`
        for (name, backend) in [
            (long.as_str(), Backend::IptablesNft),
            ("ftp-4", Backend::Nft),
        ] {
            assert!(crate::rulespec::check_set_name(name, backend).is_err());
        }
    }

    #[test]
    fn log_filters_are_checked() {
        let e = error_of("log = ftpct=[bogus\n");
        assert!(
            e.starts_with("v.conf:1: 'ftpct=[bogus' is not a log filter"),
            "{e}"
        );
        assert!(e.contains("use a level"), "{e}");
        assert!(error_of("log =\n").contains("no log filter given"));
        for ok in ["info", "warn", "ftpct=debug", "info,ftpct::daemon=trace"] {
            assert_eq!(
                parse(&format!("log = {ok}\n"), Path::new("v")).unwrap().log,
                ok
            );
        }
    }

    #[test]
    fn zero_limits_and_timeouts_are_refused() {
        for key in ["max_expectations", "max_sessions"] {
            let e = error_of(&format!("{key} = 0\n"));
            let want = format!("v.conf:1: {key} = 0 is too small: use at least 1");
            assert!(e.starts_with(&want), "{e}");
        }
        let e = error_of("max_line = 0\n");
        assert!(e.contains("use at least 128"), "{e}");
        assert!(error_of("max_line = 127\n").contains("at least 128"));
        assert_eq!(
            parse("max_line = 128\n", Path::new("v"))
                .unwrap()
                .policy
                .max_line,
            128
        );
        let e = error_of("ports = 21\nmax_line = 8193\n");
        assert!(
            e.starts_with("v.conf:2: max_line = 8193 is too large: use at most 8192"),
            "{e}"
        );
        assert!(error_of("max_line = 18446744073709551615\n").contains("at most 8192"));
        assert_eq!(
            parse("max_line = 8192\n", Path::new("v"))
                .unwrap()
                .policy
                .max_line,
            MAX_MAX_LINE
        );
        for key in ["expect_timeout", "session_idle_timeout"] {
            let e = error_of(&format!("ports = 21\n{key} = 0\n"));
            let want = format!("v.conf:2: {key} = 0 would end it at once");
            assert!(e.starts_with(&want), "{e}");
            assert!(e.contains("use at least 1 second"), "{e}");
        }
        let e = error_of("expect_timeout = 86401\n");
        assert!(e.contains("use at most 86400"), "{e}");
        let s = parse(
            "max_expectations = 1\nmax_sessions = 1\nexpect_timeout = 1\n\
             session_idle_timeout = 1\n",
            Path::new("v"),
        )
        .unwrap();
        assert_eq!(s.policy.max_expectations, 1);
        assert_eq!(s.policy.session_idle_timeout, Duration::from_secs(1));
    }

    #[test]
    fn seqadj_mark_must_not_overlap_data_mark() {
        let e = error_of("seqadj_mark = 0x4\nqueue = 1\n");
        assert!(
            e.starts_with("v.conf:1: seqadj_mark 0x4 and data_mark 0x4654"),
            "{e}"
        );
        assert!(e.contains("share the bit(s) 0x4"), "{e}");
        // the later line of the two is named
        let e = error_of("seqadj_mark = 0x10\ndata_mark = 0x30\n");
        assert!(e.starts_with("v.conf:2:"), "{e}");
        assert!(
            e.contains("choose a seqadj_mark bit outside data_mark"),
            "{e}"
        );
        assert!(parse("seqadj_mark = 0x8\n", Path::new("v")).is_ok());
        assert!(parse("seqadj_mark = 0\ndata_mark = 0xffffffff\n", Path::new("v")).is_ok());
    }

    #[test]
    fn paths_must_be_absolute() {
        let e = error_of("socket = ftpct.sock\n");
        assert_eq!(
            e,
            "v.conf:1: 'ftpct.sock' is a relative path: give an absolute path, e.g. \
             /run/ftpct/ftpct.sock"
        );
        assert!(error_of("socket =\n").contains("no path given"));
        let e = error_of("queue = 1\nstate_file = run/ftpct.state\n");
        assert!(
            e.starts_with("v.conf:2: 'run/ftpct.state' is a relative path"),
            "{e}"
        );
        let s = parse("socket = /tmp/a.sock\nstate_file =\n", Path::new("v")).unwrap();
        assert_eq!(s.state_path(), PathBuf::from("/tmp/a.sock.state"));
    }

    #[test]
    fn nat_ports_below_1024_need_privileged_ports() {
        let e = error_of("nat_ports = 100-1023\n");
        assert!(
            e.starts_with("v.conf:1: nat_ports 100-1023 lies entirely below 1024"),
            "{e}"
        );
        assert!(e.contains("set allow_privileged_ports = true"), "{e}");
        let e = error_of("allow_privileged_ports = false\nnat_ports = 20-21\n");
        assert!(e.starts_with("v.conf:2:"), "{e}");
        assert!(parse(
            "nat_ports = 100-1023\nallow_privileged_ports = true\n",
            Path::new("v")
        )
        .is_ok());
        assert!(parse("nat_ports = 1000-2000\n", Path::new("v")).is_ok());
    }

    #[test]
    fn unknown_users_are_refused_by_load() {
        let dir = std::env::temp_dir().join(format!("ftpct-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("u.conf");
        std::fs::write(&f, "queue = 1\nuser = no-such-user-ftpct\n").unwrap();
        let e = load(&f).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}:2: user 'no-such-user-ftpct' does not exist",
                f.display()
            )),
            "{e}"
        );
        assert!(e.contains("useradd"), "{e}");
        std::fs::write(&f, "user = root\n").unwrap();
        assert_eq!(load(&f).unwrap().user.as_deref(), Some("root"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn port_lists_without_holes_or_repeats() {
        assert_eq!(parse_ports("21, 2121").unwrap(), vec![21, 2121]);
        assert!(parse_ports("21,").unwrap_err().contains("empty entry"));
        assert!(parse_ports("21,,2121").unwrap_err().contains("empty entry"));
        assert!(parse_ports("21,21").unwrap_err().contains("twice"));
        assert!(parse_ports("").unwrap_err().contains("at least one"));
        assert!(parse_ports("0").is_err());
    }

    #[test]
    fn log_filters_that_crash_the_parser_are_refused() {
        // tracing-subscriber 0.3.23 panics on this one (a slice inside `¡`).
        let e = parse("log = 0,\u{b}0\u{a1}=\n", Path::new("p.conf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.conf:1:") && e.contains("printable ASCII"),
            "{e}"
        );
        assert!(log_filter("info,ftpct=debug").is_ok());
        assert!(log_filter("ftpct=[bogus").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The log filter check (tracing's parser) never panics, whatever the file holds.
        #[test]
        fn any_log_value_is_accepted_or_refused_without_panic(
            v in "[a-z=\\[\\]{},.:_0-9 \"*]{0,40}|[^\n#]{0,64}"
        ) {
            let _ = parse(&format!("log = {v}\n"), Path::new("p.conf"));
        }
    }

    #[test]
    fn spec_from_settings() {
        let text = "queue = 4\nports = 21, 2121\nipset4 = a4\nipset6 = a6\nfail_open = true\n\
                    seqadj_mark = 0x8\n";
        let s = parse(text, std::path::Path::new("t.conf")).unwrap();
        let r = s.rule_spec();
        assert_eq!(
            r,
            crate::rulespec::RuleSpec {
                queue: 4,
                ports: vec![21, 2121],
                set4: "a4".into(),
                set6: "a6".into(),
                bypass: true,
                backend: crate::rulespec::Backend::IptablesNft,
                seqadj_mark: 8,
                maxelem: 1 << 20,
            }
        );
        let s = parse("max_expectations = 5000\n", std::path::Path::new("t")).unwrap();
        assert_eq!(s.rule_spec().maxelem, 5000);
        assert_eq!(crate::rulespec::set_maxelem(0), 1);
        assert_eq!(crate::rulespec::set_maxelem(usize::MAX), u32::MAX);
        assert_eq!(
            Settings::default().rule_spec(),
            crate::rulespec::RuleSpec::default()
        );
    }
}
