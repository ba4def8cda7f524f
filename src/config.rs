//! The configuration file, in TOML: flat `key = value` pairs read with `serde`'s derive into
//! typed fields (`File`), unknown keys refused with their line and column, every value then
//! checked with an error that names its line and the fix. Command-line flags override it;
//! SIGHUP re-reads it.
//!
//! ```toml
//! # /etc/ftpct/ftpct.conf
//! queue = 0
//! ports = [21, 2121]
//! socket = "/run/ftpct/ftpct.sock"
//! fail_open = false
//! nat_ports = "1024-65535"
//! expect_timeout = 300
//! backend = "iptables-nft"
//! metrics = "127.0.0.1:9477"
//! data_mark = 0x4654
//! ```
//!
//! The format before TOML (ftpct 0.1: bare words, `21, 2121`, `yes`/`no`) is still read, with a
//! warning: `legacy` translates it line by line into TOML, which this parser then reads, and
//! `ftpct check-config --migrate FILE` prints that translation ([`migrate`]).

mod legacy;
#[cfg(test)]
mod oracle_v01;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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

/// Every key of the file, with its default as TOML (deploy/ftpct.conf shows each one commented
/// out at this value; `""` and `"off"` mean "not set"). [`DEPRECATED_KEYS`] are accepted too.
pub const KEYS: [(&str, &str); 31] = [
    ("queue", "0"),
    ("ports", "[21]"),
    ("socket", "\"/run/ftpct/ftpct.sock\""),
    ("state_file", "\"\""),
    ("metrics", "\"off\""),
    ("user", "\"\""),
    ("fail_open", "false"),
    ("backend", "\"iptables-nft\""),
    ("ipset4", "\"ftpct4\""),
    ("ipset6", "\"ftpct6\""),
    ("log", "\"info\""),
    ("rule_check_interval", "5"),
    ("allow_third_party", "false"),
    ("allow_privileged_ports", "false"),
    ("max_expect_per_session", "1"),
    ("max_expectations", "1048576"),
    ("expect_timeout", "300"),
    ("nat_ports", "\"1024-65535\""),
    ("max_line", "1024"),
    ("max_sessions", "65536"),
    ("session_idle_timeout", "21600"),
    ("session_close_linger", "10"),
    ("hold_timeout", "60"),
    ("hold_timeout_action", "\"keep\""),
    ("pickup_at_segment_start", "false"),
    ("tcp_window_check", "true"),
    ("max_announce_per_segment", "32"),
    ("max_announce_per_second", "2000"),
    ("log_events_per_second", "10"),
    ("data_mark", "0x4654"),
    ("seqadj_mark", "0x100000"),
];

/// The warning of `max_hold_retries` (after `FILE:LINE: `).
const MAX_HOLD_RETRIES_DEPRECATED: &str = "max_hold_retries is deprecated and ignored: a held \
    split line now ends when it completes, exceeds max_line, the connection closes, or after \
    hold_timeout seconds (default 60), never after a number of retransmissions; remove the \
    line (see ftpct.conf(5))";

/// Keys still accepted, with a warning, and without effect.
pub const DEPRECATED_KEYS: [&str; 1] = ["max_hold_retries"];

/// The file as TOML types, each value with the byte range it was read from (for the line of an
/// error). `None`: the key is absent (its default applies). The value checks are in
/// [`File::settings`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    queue: Option<Spanned<i64>>,
    ports: Option<Spanned<PortList>>,
    socket: Option<Spanned<String>>,
    state_file: Option<Spanned<String>>,
    fail_open: Option<Spanned<bool>>,
    metrics: Option<Spanned<String>>,
    ipset4: Option<Spanned<String>>,
    ipset6: Option<Spanned<String>>,
    backend: Option<Spanned<String>>,
    log: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    rule_check_interval: Option<Spanned<i64>>,
    allow_third_party: Option<Spanned<bool>>,
    allow_privileged_ports: Option<Spanned<bool>>,
    max_expect_per_session: Option<Spanned<i64>>,
    max_expectations: Option<Spanned<i64>>,
    expect_timeout: Option<Spanned<i64>>,
    nat_ports: Option<Spanned<RangeText>>,
    max_line: Option<Spanned<i64>>,
    max_sessions: Option<Spanned<i64>>,
    session_idle_timeout: Option<Spanned<i64>>,
    session_close_linger: Option<Spanned<i64>>,
    hold_timeout: Option<Spanned<i64>>,
    hold_timeout_action: Option<Spanned<String>>,
    max_hold_retries: Option<Spanned<i64>>,
    pickup_at_segment_start: Option<Spanned<bool>>,
    tcp_window_check: Option<Spanned<bool>>,
    max_announce_per_segment: Option<Spanned<i64>>,
    max_announce_per_second: Option<Spanned<i64>>,
    log_events_per_second: Option<Spanned<i64>>,
    data_mark: Option<Spanned<i64>>,
    seqadj_mark: Option<Spanned<i64>>,
}

/// `ports`: a list of ports (`[21, 2121]`) or one port (`21`, as the old format wrote it).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortList(Vec<i64>);

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PortList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of ports, e.g. [21, 2121]")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortList, E> {
                Ok(PortList(vec![v]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortList, E> {
                Ok(PortList(vec![i64::try_from(v).unwrap_or(i64::MAX)]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<PortList, A::Error> {
                let mut out = Vec::new();
                while let Some(p) = a.next_element::<i64>()? {
                    out.push(p);
                }
                Ok(PortList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `nat_ports`: a string `"low-high"`; an integer is read as its text, for the error that says
/// what a range is.
#[derive(Debug, Clone)]
struct RangeText(String);

impl<'de> Deserialize<'de> for RangeText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RangeText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a range of ports, e.g. \"1024-65535\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RangeText, E> {
                Ok(RangeText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RangeText, E> {
                Ok(RangeText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value check that failed: where (a byte offset of the file, for its line) and why.
#[derive(Debug)]
struct Invalid {
    at: usize,
    msg: String,
}

/// The value of a key the file sets, with the byte offset it starts at (for the line of an error).
fn get<T: Clone>(v: &Option<Spanned<T>>) -> Option<(T, usize)> {
    v.as_ref().map(|s| (s.get_ref().clone(), s.span().start))
}

/// The later of two positions (the one an error about both keys should name).
fn later<A, B>(a: &Option<Spanned<A>>, b: &Option<Spanned<B>>) -> usize {
    let a = a.as_ref().map(|s| s.span().start);
    let b = b.as_ref().map(|s| s.span().start);
    a.max(b).unwrap_or(0)
}

/// A count from `min` to `max` (`why`: what a value under `min` would do).
fn count(key: &str, n: i64, min: u64, max: u64, why: &str) -> Result<u64, String> {
    match u64::try_from(n) {
        Ok(n) if n < min => Err(format!(
            "{key} = {n} is too small: use at least {min} ({why})"
        )),
        Ok(n) if n > max => Err(format!("{key} = {n} is too large (at most {max})")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "{key} = {n} is negative: use at least {min} ({why})"
        )),
    }
}

/// A number of seconds from 1 to `max`.
fn secs(key: &str, n: i64, max: u64) -> Result<Duration, String> {
    match u64::try_from(n) {
        Ok(0) => Err(format!(
            "{key} = 0 would end it at once: use at least 1 second"
        )),
        Ok(n) if n > max => Err(format!(
            "{key} = {n} seconds is too long: use at most {max}"
        )),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err(format!(
            "{key} = {n} is negative: use a number of seconds from 1 to {max}"
        )),
    }
}

/// A conntrack mark (a 32-bit value; TOML writes hex as `0x4654`).
fn mark(key: &str, n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .map_err(|_| format!("{key} = {n} is not a mark: use 0 to 0xffffffff (decimal or 0x hex)"))
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

/// `ports`: 1 to 15 distinct TCP ports.
fn check_ports(list: &[i64]) -> Result<Vec<u16>, String> {
    if list.is_empty() {
        return Err("at least one port is needed, e.g. 'ports = [21]'".into());
    }
    let mut out = Vec::new();
    for &p in list {
        let n = match u16::try_from(p) {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("'{p}' is not a TCP port (1-65535)")),
        };
        if out.contains(&n) {
            return Err(format!("port {p} is listed twice in {list:?}"));
        }
        out.push(n);
    }
    if out.len() > 15 {
        return Err("at most 15 control ports (iptables multiport limit)".into());
    }
    Ok(out)
}

/// `nat_ports`: `"low-high"`.
fn nat_range(v: &str) -> Result<(u16, u16), String> {
    let (a, b) = v
        .split_once('-')
        .ok_or_else(|| format!("'{v}' is not a range: use e.g. 1024-65535"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{}' is not a valid port", p.trim()))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a == 0 || a > b {
        return Err(format!("'{v}': the range must be low-high with low >= 1"));
    }
    Ok((a, b))
}

/// `keep` or `pass`.
fn hold_action(v: &str) -> Result<HoldTimeoutAction, String> {
    match v {
        "keep" => Ok(HoldTimeoutAction::Keep),
        "pass" => Ok(HoldTimeoutAction::Pass),
        other => Err(format!(
            "hold_timeout_action = '{other}': use keep (the held bytes stay inside) or pass \
             (they are let through unchanged)"
        )),
    }
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

/// Sets `$target` from the key `$key` of the file with `$check` (value → Result<_, String>).
macro_rules! set {
    ($f:ident, $key:ident, $target:expr, $check:expr) => {
        if let Some((v, at)) = get(&$f.$key) {
            #[allow(clippy::redundant_closure_call)]
            let r: Result<_, String> = ($check)(v);
            $target = r.map_err(|msg| Invalid { at, msg })?;
        }
    };
}

impl File {
    /// The settings this file means: every value checked, then the keys that depend on each
    /// other. `warn` receives the position and text of each deprecation.
    fn settings(&self, warn: impl FnMut(usize, String)) -> Result<Settings, Invalid> {
        let s = self.values(warn)?;
        self.check(&s)?;
        Ok(s)
    }

    /// The settings of each value on its own (without [`File::check`]), key by key in the
    /// order of ftpct.conf(5): the daemon's own, then the policy's.
    fn values(&self, warn: impl FnMut(usize, String)) -> Result<Settings, Invalid> {
        let f = self;
        let mut s = Settings::default();
        f.daemon_values(&mut s)?;
        f.expectation_values(&mut s.policy)?;
        f.session_values(&mut s.policy, warn)?;
        f.budget_values(&mut s.policy)?;
        let p = &mut s.policy;
        set!(f, data_mark, p.data_mark, |n| mark("data_mark", n));
        set!(f, seqadj_mark, s.seqadj_mark, |n| mark("seqadj_mark", n));
        Ok(s)
    }

    /// The daemon's own keys: queue, ports, paths, metrics, sets, backend, logs, user, rule
    /// check.
    fn daemon_values(&self, s: &mut Settings) -> Result<(), Invalid> {
        let f = self;
        set!(f, queue, s.queue, |n: i64| u16::try_from(n).map_err(
            |_| format!("queue = {n} is not a queue number (0-65535)")
        ));
        set!(f, ports, s.ports, |p: PortList| check_ports(&p.0));
        set!(f, socket, s.socket, |v: String| absolute_path(
            &v,
            DEFAULT_SOCKET
        ));
        set!(f, state_file, s.state_file, |v: String| if v.is_empty() {
            Ok(None)
        } else {
            absolute_path(&v, "/var/lib/ftpct/ftpct.state").map(Some)
        });
        set!(f, fail_open, s.fail_open, Ok::<bool, String>);
        set!(f, metrics, s.metrics, |v: String| match v.as_str() {
            "" | "off" | "none" => Ok(None),
            _ => v.parse().map(Some).map_err(|_| {
                format!("'{v}' is not an address:port, e.g. 127.0.0.1:9477 or [::1]:9477")
            }),
        });
        set!(f, ipset4, s.ipset4, Ok::<String, String>);
        set!(f, ipset6, s.ipset6, Ok::<String, String>);
        set!(f, backend, s.backend, |v: String| v
            .parse()
            .map_err(|e: crate::rulespec::UnknownBackend| e.to_string()));
        set!(f, log, s.log, |v: String| check_log_filter(&v).map(|()| v));
        set!(f, user, s.user, |v: String| Ok::<_, String>(
            (!v.is_empty()).then_some(v)
        ));
        set!(f, rule_check_interval, s.rule_check_interval, |n: i64| {
            match u64::try_from(n) {
                Ok(secs) if secs <= MAX_RULE_CHECK_INTERVAL => Ok(Duration::from_secs(secs)),
                Ok(secs) => Err(format!(
                    "{secs} seconds is more than a day: use at most \
                     {MAX_RULE_CHECK_INTERVAL}, or 0 to turn the check off"
                )),
                Err(_) => Err(format!(
                    "rule_check_interval = {n} is negative: use a number of seconds (0 turns \
                     the check off)"
                )),
            }
        });
        Ok(())
    }

    /// The policy of announced data addresses and of the expectations made from them.
    fn expectation_values(&self, p: &mut Policy) -> Result<(), Invalid> {
        let f = self;
        set!(
            f,
            allow_third_party,
            p.allow_third_party,
            Ok::<bool, String>
        );
        set!(
            f,
            allow_privileged_ports,
            p.allow_privileged_ports,
            Ok::<bool, String>
        );
        set!(
            f,
            max_expect_per_session,
            p.max_expect_per_session,
            |n: i64| {
                match usize::try_from(n) {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!("max_expect_per_session = {n}: must be at least 1")),
                }
            }
        );
        let usize_max = usize::MAX as u64;
        set!(f, max_expectations, p.max_expectations, |n| count(
            "max_expectations",
            n,
            1,
            usize_max,
            "0 would refuse every data connection"
        )
        .map(|n| n as usize));
        set!(f, expect_timeout, p.expect_timeout, |n| secs(
            "expect_timeout",
            n,
            MAX_EXPECT_TIMEOUT
        ));
        if let Some((v, at)) = get(&f.nat_ports) {
            (p.nat_port_min, p.nat_port_max) =
                nat_range(&v.0).map_err(|msg| Invalid { at, msg })?;
        }
        Ok(())
    }

    /// The bounds of the sessions and of their line holds; `warn` receives the deprecation of
    /// `max_hold_retries`.
    fn session_values(
        &self,
        p: &mut Policy,
        mut warn: impl FnMut(usize, String),
    ) -> Result<(), Invalid> {
        let f = self;
        let usize_max = usize::MAX as u64;
        set!(f, max_line, p.max_line, |n: i64| {
            if n > MAX_MAX_LINE as i64 {
                return Err(format!(
                    "max_line = {n} is too large: use at most {MAX_MAX_LINE} (every \
                     session may buffer max_line bytes per direction; the lines ftpct \
                     rewrites are under 100 bytes, the default 1024 is plenty)"
                ));
            }
            count(
                "max_line",
                n,
                MIN_MAX_LINE as u64,
                MAX_MAX_LINE as u64,
                "shorter lines are never rewritten, and an EPRT or 227 line can be that long",
            )
            .map(|n| n as usize)
        });
        set!(f, max_sessions, p.max_sessions, |n| count(
            "max_sessions",
            n,
            1,
            usize_max,
            "0 would track no FTP control connection"
        )
        .map(|n| n as usize));
        let u32_max = u64::from(u32::MAX);
        set!(f, session_idle_timeout, p.session_idle_timeout, |n| secs(
            "session_idle_timeout",
            n,
            u32_max
        ));
        set!(f, hold_timeout, p.hold_timeout, |n| secs(
            "hold_timeout",
            n,
            u32_max
        ));
        set!(
            f,
            hold_timeout_action,
            p.hold_timeout_action,
            |v: String| hold_action(&v)
        );
        if let Some((n, at)) = get(&f.max_hold_retries) {
            // Deprecated: still a valid count, so that old files load; no longer used.
            count("max_hold_retries", n, 0, 255, "").map_err(|_| Invalid {
                at,
                msg: format!("max_hold_retries = {n} is not a count (0-255); better, remove it"),
            })?;
            warn(at, MAX_HOLD_RETRIES_DEPRECATED.into());
        }
        set!(f, session_close_linger, p.session_close_linger, |n| secs(
            "session_close_linger",
            n,
            3600
        ));
        set!(
            f,
            pickup_at_segment_start,
            p.pickup_at_segment_start,
            Ok::<bool, String>
        );
        set!(f, tcp_window_check, p.tcp_window_check, Ok::<bool, String>);
        Ok(())
    }

    /// The per-session budgets of announcements and of log lines.
    fn budget_values(&self, p: &mut Policy) -> Result<(), Invalid> {
        let f = self;
        let u32_max = u64::from(u32::MAX);
        set!(
            f,
            max_announce_per_segment,
            p.max_announce_per_segment,
            |n| count(
                "max_announce_per_segment",
                n,
                1,
                u32_max,
                "0 would never rewrite an address"
            )
            .map(|n| n as u32)
        );
        set!(f, max_announce_per_second, p.max_announce_per_second, |n| {
            count(
                "max_announce_per_second",
                n,
                1,
                u32_max,
                "0 would never rewrite an address",
            )
            .map(|n| n as u32)
        });
        set!(f, log_events_per_second, p.log_events_per_second, |n| {
            count(
                "log_events_per_second",
                n,
                1,
                u64::from(u16::MAX),
                "0 would log no refusal at all",
            )
            .map(|n| n as u16)
        });
        Ok(())
    }

    /// The checks of values that depend on other keys (their order in the file is free): the
    /// error names the line of the key that was set last.
    fn check(&self, s: &Settings) -> Result<(), Invalid> {
        for (key, name, at) in [
            ("ipset4", &s.ipset4, later(&self.ipset4, &self.backend)),
            ("ipset6", &s.ipset6, later(&self.ipset6, &self.backend)),
        ] {
            if let Err(e) = crate::rulespec::check_set_name(name, s.backend) {
                let msg = e.to_string();
                let msg = msg.strip_prefix("rules: ").unwrap_or(&msg);
                return Err(Invalid {
                    at,
                    msg: format!("{key}: {msg}"),
                });
            }
        }
        let overlap = s.seqadj_mark & s.policy.data_mark;
        if overlap != 0 {
            return Err(Invalid {
                at: later(&self.seqadj_mark, &self.data_mark),
                msg: format!(
                    "seqadj_mark {:#x} and data_mark {:#x} share the bit(s) {overlap:#x}: data \
                     connections would look like control connections with a sequence offset; \
                     choose a seqadj_mark bit outside data_mark (the default \
                     {DEFAULT_SEQADJ_MARK:#x} is)",
                    s.seqadj_mark, s.policy.data_mark
                ),
            });
        }
        let p = &s.policy;
        // Only a hold_timeout that the file sets is checked: with the default one a short idle
        // timeout bounds the hold (Policy::hold_limit).
        if self.hold_timeout.is_some() && p.hold_timeout > p.session_idle_timeout {
            return Err(Invalid {
                at: later(&self.hold_timeout, &self.session_idle_timeout),
                msg: format!(
                    "hold_timeout = {} s is longer than session_idle_timeout = {} s: a held \
                     line is never kept longer than its session; use a hold_timeout of at \
                     most {} s",
                    p.hold_timeout.as_secs(),
                    p.session_idle_timeout.as_secs(),
                    p.session_idle_timeout.as_secs()
                ),
            });
        }
        if p.nat_port_max < 1024 && !p.allow_privileged_ports {
            return Err(Invalid {
                at: later(&self.nat_ports, &self.allow_privileged_ports),
                msg: format!(
                    "nat_ports {}-{} lies entirely below 1024 while allow_privileged_ports = \
                     false: every rewritten data address would need a privileged port and be \
                     refused; use a range above 1023 (e.g. 1024-65535) or set \
                     allow_privileged_ports = true",
                    p.nat_port_min, p.nat_port_max
                ),
            });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A value that is not allowed (the line of its key).
    #[error("{path}:{line}: {msg}")]
    Invalid {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// Not TOML, an unknown key, or a value of the wrong type (line and column of the spot).
    #[error("{path}:{line}:{column}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
}

/// The 1-based line and column (in characters) of byte `at` of `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key written at the start of the line holding byte `at`, if it is one of ours.
fn key_on_line(text: &str, at: usize) -> Option<&'static str> {
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let key = line.split_once('=')?.0.trim();
    KEYS.iter()
        .map(|(k, _)| *k)
        .chain(DEPRECATED_KEYS)
        .find(|k| *k == key)
}

/// The known key closest to `key` (a typo), if one is close.
fn closest_key(key: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    KEYS.iter()
        .map(|(k, _)| (distance(key, k), *k))
        .min()
        .filter(|(d, _)| *d <= (key.len() / 4).max(1))
        .map(|(_, k)| k)
}

/// A toml/serde error as ftpct says it: an unknown key with its name (and the key it may be a
/// typo of), a value of the wrong type with its key and an example; TOML syntax as toml says it.
fn syntax_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start);
    let (line, column) = line_col(text, at);
    let raw = e.message().trim_end();
    let msg = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        let hint = closest_key(key)
            .map(|k| format!("did you mean '{k}'? "))
            .unwrap_or_default();
        format!("unknown key '{key}' ({hint}see ftpct.conf(5) for the list)")
    } else if let Some(key) = key_on_line(text, at).filter(|_| raw.starts_with("invalid ")) {
        let example = KEYS.iter().find(|(k, _)| *k == key).map_or("0", |(_, d)| d);
        let raw = raw.replace("expected i64", "expected an integer");
        format!("{key}: {raw} (e.g. {key} = {example})")
    } else {
        raw.replace('\n', "; ")
    };
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        msg,
    }
}

/// Why the value of a one-key TOML text is refused on its own, if it is (the old format checked
/// every line, also one that a later line replaces).
fn value_error(one_key: &str) -> Option<String> {
    let file: File = toml::from_str(one_key).ok()?;
    file.values(|_, _| {}).err().map(|e| e.msg)
}

/// Parses a file in the TOML format only.
fn parse_toml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| syntax_error(text, path, &e))?;
    let mut warnings = Vec::new();
    let mut s =
        file.settings(|at, w| warnings.push((at, w)))
            .map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                line: line_col(text, e.at).0,
                msg: e.msg,
            })?;
    s.warnings = warnings
        .into_iter()
        .map(|(at, w)| format!("{}:{}: {w}", path.display(), line_col(text, at).0))
        .collect();
    Ok(s)
}

/// Which syntax a file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TOML (ftpct.conf(5)).
    Toml,
    /// The `key = value` format of ftpct 0.1 (bare words, `21, 2121`, `yes`/`no`).
    Legacy,
}

/// The warning of a file read in the old format: what to run to convert it.
fn legacy_warning(path: &Path) -> String {
    let p = path.display();
    format!(
        "{p} is in the configuration format of ftpct 0.1 (before TOML): it is read as before, \
         but convert it, since that format will go away: ftpct check-config --migrate {p} > \
         {p}.new && mv {p}.new {p} (see ftpct.conf(5), \"MIGRATING\")"
    )
}

/// Parses the text of a configuration file and checks what can be checked without the system
/// (every value, and the keys that depend on each other). [`load`] also checks what needs the
/// system (that `user` exists). Every error names the line and the fix.
///
/// A file in the old format (ftpct 0.1) is read too, through its TOML translation, with a
/// warning that names `ftpct check-config --migrate`.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    parse_any(text, path).map(|(s, _)| s)
}

/// [`parse`], and which format the file was in.
pub fn parse_any(text: &str, path: &Path) -> Result<(Settings, Format), ConfigError> {
    let toml_error = match parse_toml(text, path) {
        Ok(s) => return Ok((s, Format::Toml)),
        Err(e) => e,
    };
    let old = legacy::translate(text, path).and_then(|t| parse_toml(&t, path));
    match old {
        Ok(mut s) => {
            // a deprecated key set twice: the earlier line, a comment in TOML, warned too
            for line in legacy::replaced_deprecated(text) {
                let w = format!("{}:{line}: {MAX_HOLD_RETRIES_DEPRECATED}", path.display());
                s.warnings.push(w);
            }
            let prefix = format!("{}:", path.display());
            s.warnings.sort_by_key(|w| {
                w.strip_prefix(&prefix)
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse::<usize>().ok())
            });
            s.warnings.insert(0, legacy_warning(path));
            Ok((s, Format::Legacy))
        }
        // A file that is not TOML nor the old format: the error of the one it looks like.
        Err(e) if legacy::looks_legacy(text) => Err(e),
        Err(_) => Err(toml_error),
    }
}

/// What `ftpct check-config --migrate FILE` prints: a file in the old format translated to
/// TOML line by line (comments, order and blank lines kept; values in TOML syntax; a key set
/// twice keeps its last line, the earlier ones become comments; the commented-out examples
/// `#key = value` are translated too), or a TOML file as it is. The result parses to the same
/// settings as the file; an invalid file is an error, and nothing is printed.
pub fn migrate(text: &str, path: &Path) -> Result<(String, Format), ConfigError> {
    let (settings, format) = parse_any(text, path)?;
    if format == Format::Legacy {
        return Ok((legacy::translate(text, path)?, Format::Legacy));
    }
    // A TOML file may still hold the old syntax in its commented-out examples (the file that
    // ftpct 0.1 shipped is all comments): they are translated where that changes nothing else.
    let t = legacy::translate_examples(text);
    if t != text && parse_toml(&t, path).is_ok_and(|s| s == settings) {
        Ok((t, Format::Legacy))
    } else {
        Ok((text.to_string(), Format::Toml))
    }
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

/// Reads and parses a configuration file, and checks what needs the system: that `user`
/// exists. What `ftpct check-config`, `ftpct run`, `ftpct rules --config` and a reload
/// (SIGHUP) all use, so that they accept and refuse the same files.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_any(path).map(|(s, _)| s)
}

/// [`load`], and which format the file was in.
pub fn load_any(path: &Path) -> Result<(Settings, Format), ConfigError> {
    let text = read(path)?;
    let (s, format) = parse_any(&text, path)?;
    if let Some(user) = &s.user {
        check_user(user).map_err(|msg| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: user_line(&text),
            msg,
        })?;
    }
    Ok((s, format))
}

/// The text of a configuration file.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The line of the last `user = ...` (either format writes one key per line).
fn user_line(text: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.split_once('=').is_some_and(|(k, _)| k.trim() == "user"))
        .map(|(i, _)| i + 1)
        .last()
        .unwrap_or(0)
}

impl Settings {
    /// Every key at its value, as a TOML file ([`parse`] reads it back to these settings,
    /// without the warnings).
    pub fn to_toml(&self) -> String {
        let p = &self.policy;
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let path = |v: &Option<PathBuf>| {
            s(&v.as_ref()
                .map_or(String::new(), |p| p.display().to_string()))
        };
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let lines = [
            ("queue", self.queue.to_string()),
            ("ports", format!("[{}]", ports.join(", "))),
            ("socket", s(&self.socket.display().to_string())),
            ("state_file", path(&self.state_file)),
            (
                "metrics",
                s(&self.metrics.map_or("off".into(), |a| a.to_string())),
            ),
            ("user", s(self.user.as_deref().unwrap_or(""))),
            ("fail_open", self.fail_open.to_string()),
            ("backend", s(self.backend.name())),
            ("ipset4", s(&self.ipset4)),
            ("ipset6", s(&self.ipset6)),
            ("log", s(&self.log)),
            (
                "rule_check_interval",
                self.rule_check_interval.as_secs().to_string(),
            ),
            ("allow_third_party", p.allow_third_party.to_string()),
            (
                "allow_privileged_ports",
                p.allow_privileged_ports.to_string(),
            ),
            (
                "max_expect_per_session",
                p.max_expect_per_session.to_string(),
            ),
            ("max_expectations", p.max_expectations.to_string()),
            ("expect_timeout", p.expect_timeout.as_secs().to_string()),
            (
                "nat_ports",
                s(&format!("{}-{}", p.nat_port_min, p.nat_port_max)),
            ),
            ("max_line", p.max_line.to_string()),
            ("max_sessions", p.max_sessions.to_string()),
            (
                "session_idle_timeout",
                p.session_idle_timeout.as_secs().to_string(),
            ),
            (
                "session_close_linger",
                p.session_close_linger.as_secs().to_string(),
            ),
            ("hold_timeout", p.hold_timeout.as_secs().to_string()),
            ("hold_timeout_action", s(p.hold_timeout_action.label())),
            (
                "pickup_at_segment_start",
                p.pickup_at_segment_start.to_string(),
            ),
            ("tcp_window_check", p.tcp_window_check.to_string()),
            (
                "max_announce_per_segment",
                p.max_announce_per_segment.to_string(),
            ),
            (
                "max_announce_per_second",
                p.max_announce_per_second.to_string(),
            ),
            ("log_events_per_second", p.log_events_per_second.to_string()),
            ("data_mark", format!("{:#x}", p.data_mark)),
            ("seqadj_mark", format!("{:#x}", self.seqadj_mark)),
        ];
        lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect()
    }
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
    use super::legacy::parse_ports;
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
        // deprecated: accepted, with a warning naming its line, and without effect (after the
        // warning that the file is in the old format: `backend = nft` is not TOML)
        assert_eq!(s.warnings.len(), 2);
        assert!(s.warnings[0].contains("ftpct check-config --migrate t.conf"));
        assert!(
            s.warnings[1].starts_with("t.conf:2: max_hold_retries is deprecated"),
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
        // valid TOML, so the TOML error with the column; the old syntax said the same
        let e = parse("bogus = 1\n", Path::new("a.conf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.conf:1:1: unknown key 'bogus'"), "{e}");
        let e = legacy::translate("bogus = 1\n", Path::new("a.conf"))
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
        assert!(
            e.starts_with("a.conf:1:6: ") && e.contains("expected `=`"),
            "{e}"
        );
        let e = legacy::translate("just words\n", Path::new("a.conf"))
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

    // ---- the TOML format ----

    /// Settings with every key away from its default.
    fn every_key_set() -> Settings {
        let text = r#"
queue = 7
ports = [21, 2121, 990]
socket = "/run/gw/ftpct.sock"
state_file = "/var/lib/ftpct/gw.state"
metrics = "[::1]:9477"
user = "root"
fail_open = true
backend = "iptables-legacy"
ipset4 = "gw4"
ipset6 = "gw6"
log = "info,ftpct=debug"
rule_check_interval = 0
allow_third_party = true
allow_privileged_ports = true
max_expect_per_session = 3
max_expectations = 5000
expect_timeout = 30
nat_ports = "100-2000"
max_line = 256
max_sessions = 99
session_idle_timeout = 600
session_close_linger = 2
hold_timeout = 7
hold_timeout_action = "pass"
pickup_at_segment_start = true
tcp_window_check = false
max_announce_per_segment = 4
max_announce_per_second = 50
log_events_per_second = 3
data_mark = 0x10
seqadj_mark = 0x200
"#;
        parse(text, Path::new("all.conf")).unwrap()
    }

    #[test]
    fn every_key_round_trips() {
        let s = every_key_set();
        assert_eq!(s.queue, 7);
        assert_eq!(s.ports, vec![21, 2121, 990]);
        assert_eq!(s.metrics, Some("[::1]:9477".parse().unwrap()));
        assert_eq!(s.state_path(), PathBuf::from("/var/lib/ftpct/gw.state"));
        assert_eq!(s.backend, Backend::IptablesLegacy);
        assert!(s.rule_check_interval.is_zero());
        assert_eq!((s.policy.nat_port_min, s.policy.nat_port_max), (100, 2000));
        assert_eq!(s.policy.hold_timeout_action, HoldTimeoutAction::Pass);
        assert_eq!((s.policy.data_mark, s.seqadj_mark), (0x10, 0x200));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // every field differs from the default, so a key that is not read would show here
        let d = Settings::default();
        let differs = |a: &str, b: &str| a != b;
        for ((k, a), (_, b)) in toml_pairs(&s).iter().zip(toml_pairs(&d).iter()) {
            assert!(differs(a, b), "{k} is at its default in every_key_set()");
        }
        for s in [s, d] {
            let text = s.to_toml();
            assert_eq!(parse(&text, Path::new("rt.conf")).unwrap(), s, "{text}");
        }
    }

    /// `key = value` pairs of [`Settings::to_toml`].
    fn toml_pairs(s: &Settings) -> Vec<(String, String)> {
        s.to_toml()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(" = ").unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn keys_are_the_fields_of_the_file() {
        // to_toml writes KEYS, in their order, and KEYS' defaults are the defaults
        let d = Settings::default();
        let written: Vec<String> = toml_pairs(&d).into_iter().map(|(k, _)| k).collect();
        let keys: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(written, keys);
        let defaults: String = KEYS.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        assert_eq!(parse(&defaults, Path::new("d")).unwrap(), d);
        // serde's list of fields (its unknown-field message) is KEYS and DEPRECATED_KEYS
        let e = toml::from_str::<File>("zzz = 1").unwrap_err();
        let mut fields: Vec<&str> = e.message().split('`').skip(3).step_by(2).collect();
        let mut all: Vec<&str> = keys.iter().copied().chain(DEPRECATED_KEYS).collect();
        fields.sort_unstable();
        all.sort_unstable();
        assert_eq!(fields, all, "{}", e.message());
    }

    #[test]
    fn unknown_keys_name_the_key_line_and_column() {
        let e = error_of("queue = 1\n  max_sesions = 5\n");
        assert_eq!(
            e,
            "v.conf:2:3: unknown key 'max_sesions' (did you mean 'max_sessions'? see \
             ftpct.conf(5) for the list)"
        );
        let e = error_of("# x\nbogus = \"a\"\n");
        assert_eq!(
            e,
            "v.conf:2:1: unknown key 'bogus' (see ftpct.conf(5) for the list)"
        );
        // sections are not part of the format
        let e = error_of("[policy]\nmax_sessions = 5\n");
        assert!(e.starts_with("v.conf:1:2: unknown key 'policy'"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_key_and_an_example() {
        let e = error_of("queue = 1\nfail_open = \"yes\"\n");
        assert_eq!(
            e,
            "v.conf:2:13: fail_open: invalid type: string \"yes\", expected a boolean (e.g. \
             fail_open = false)"
        );
        let e = error_of("expect_timeout = \"5m\"\n");
        assert!(
            e.starts_with("v.conf:1:18: expect_timeout: invalid type: string"),
            "{e}"
        );
        assert!(
            e.contains("expected an integer (e.g. expect_timeout = 300)"),
            "{e}"
        );
        let e = error_of("ports = [\"21\"]\n");
        assert!(e.starts_with("v.conf:1:10: ports:"), "{e}");
        let e = error_of("socket = \"/run/x\n");
        assert!(e.starts_with("v.conf:1:"), "{e}");
        // TOML refuses a key set twice; the old format took the last one
        let e = error_of("queue = 1\nqueue = \"2\"\n");
        assert!(
            e.starts_with("v.conf:2:1: ") && e.contains("duplicate key"),
            "{e}"
        );
    }

    #[test]
    fn toml_values_and_their_checks() {
        let p = Path::new("v.conf");
        // one port as a plain integer, as the old format wrote it
        assert_eq!(parse("ports = 2121\n", p).unwrap().ports, vec![2121]);
        assert_eq!(
            error_of("ports = [21, 21]\n"),
            "v.conf:1: port 21 is listed twice in [21, 21]"
        );
        assert!(error_of("ports = []\n").contains("at least one port"));
        assert!(error_of("ports = [0]\n").contains("'0' is not a TCP port"));
        assert!(error_of("queue = 70000\n").contains("(0-65535)"));
        assert!(error_of("queue = -1\n").starts_with("v.conf:1: queue = -1"));
        assert!(error_of("max_sessions = -5\n").contains("negative"));
        assert!(error_of("data_mark = 0x100000000\n").contains("is not a mark"));
        assert!(error_of("nat_ports = 1024\n").contains("use e.g. 1024-65535"));
        for off in ["\"off\"", "\"\"", "\"none\""] {
            assert_eq!(
                parse(&format!("metrics = {off}\n"), p).unwrap().metrics,
                None
            );
        }
        assert!(error_of("metrics = \"9477\"\n").contains("is not an address:port"));
        assert_eq!(
            parse("state_file = \"\"\nuser = \"\"\n", p).unwrap(),
            Settings::default()
        );
        // a key that is absent keeps its default; a comment after a value is a comment
        let s = parse("socket = \"/run/a#b.sock\" # the socket\n", p).unwrap();
        assert_eq!(s.socket, PathBuf::from("/run/a#b.sock"));
        let s = parse("max_hold_retries = 3\n", p).unwrap();
        assert_eq!(
            s.warnings.len(),
            1,
            "deprecated, in TOML too: {:?}",
            s.warnings
        );
        assert!(s.warnings[0].starts_with("v.conf:1: max_hold_retries is deprecated"));
        assert!(error_of("max_hold_retries = 300\n").starts_with("v.conf:1:"));
    }

    #[test]
    fn format_detection() {
        let p = Path::new("f.conf");
        for (text, want) in [
            ("", Format::Toml),
            (
                "queue = 1\nports = 21\nfail_open = true\ndata_mark = 0x10\n",
                Format::Toml,
            ),
            ("socket = \"/run/x.sock\"\n", Format::Toml),
            ("socket = /run/x.sock\n", Format::Legacy),
            ("fail_open = yes\n", Format::Legacy),
            // valid TOML syntax, but 1 is the old format's boolean
            ("fail_open = 1\n", Format::Legacy),
            ("ports = 21, 2121\n", Format::Legacy),
            ("state_file =\n", Format::Legacy),
            ("queue = 1\nqueue = 2\n", Format::Legacy),
        ] {
            let (s, f) = parse_any(text, p).unwrap();
            assert_eq!(f, want, "{text:?}");
            let warned = s.warnings.iter().any(|w| w.contains("--migrate f.conf"));
            assert_eq!(warned, want == Format::Legacy, "{text:?}: {:?}", s.warnings);
        }
        // refused by both: the error of the format the file looks like
        assert_eq!(
            error_of("queue = 1\nports = 21, x\n"),
            "v.conf:2: 'x' is not a TCP port (1-65535)"
        );
        assert_eq!(
            error_of("fail_open = ture\n"),
            "v.conf:1: 'ture' is not a boolean: use true or false"
        );
        assert!(error_of("fail_open = \"ture\"\n").starts_with("v.conf:1:13: fail_open"));
    }

    /// The file ftpct 0.1 shipped as /etc/ftpct/ftpct.conf.
    const SHIPPED_V01: &str = include_str!("../tests/data/ftpct-0.1.conf");

    /// `#key = value` lines uncommented.
    fn uncomment(text: &str) -> String {
        text.lines()
            .map(|l| match l.strip_prefix('#') {
                Some(r) if KEYS.iter().any(|(k, _)| r.starts_with(&format!("{k} ="))) => r,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_shipped_file_of_0_1_migrates_to_the_defaults() {
        let p = Path::new("ftpct.conf");
        let (migrated, format) = migrate(SHIPPED_V01, p).unwrap();
        assert_eq!(format, Format::Legacy, "its examples are in the old syntax");
        assert_eq!(migrated.lines().count(), SHIPPED_V01.lines().count());
        assert!(
            migrated.contains("\n#socket = \"/run/ftpct/ftpct.sock\"\n"),
            "{migrated}"
        );
        assert!(
            migrated.contains("\n#nat_ports = \"1024-65535\"\n"),
            "{migrated}"
        );
        assert!(migrated.contains("\n#ports = 21\n"), "{migrated}");
        assert_eq!(
            parse_any(&migrated, p).unwrap(),
            (Settings::default(), Format::Toml)
        );
        // every example, uncommented: the defaults, in either file
        let old = oracle_v01::parse_lines(&uncomment(SHIPPED_V01), p)
            .unwrap()
            .0;
        assert_eq!(old, Settings::default());
        let (s, format) = parse_any(&uncomment(&migrated), p).unwrap();
        assert_eq!((s, format), (Settings::default(), Format::Toml));
        // a TOML file is printed as it is
        let toml = Settings::default().to_toml();
        assert_eq!(migrate(&toml, p).unwrap(), (toml.clone(), Format::Toml));
    }

    #[test]
    fn an_old_file_with_every_key_migrates_to_the_same_settings() {
        let old = "# every key, in the old syntax\nqueue = 7\nports = 21,2121, 990\n\
                   socket = /run/gw/ftpct.sock\nstate_file = /var/lib/ftpct/gw.state\n\
                   metrics = [::1]:9477\nuser = root\nfail_open = yes\nbackend = iptables-legacy\n\
                   ipset4 = gw4 # v4\nipset6 = gw6\nlog = info,ftpct=debug\n\
                   rule_check_interval = 0\nallow_third_party = on\nallow_privileged_ports = 1\n\
                   max_expect_per_session = 3\nmax_expectations = 5000\nexpect_timeout = 30\n\
                   nat_ports = 100 - 2000\nmax_line = 256\nmax_sessions = 99\n\
                   session_idle_timeout = 600\nsession_close_linger = 2\nhold_timeout = 7\n\
                   hold_timeout_action = pass\npickup_at_segment_start = TRUE\n\
                   tcp_window_check = no\nmax_announce_per_segment = 4\n\
                   max_announce_per_second = 50\nlog_events_per_second = 3\ndata_mark = 0X10\n\
                   seqadj_mark = 512\n";
        let p = Path::new("all.conf");
        let (s, format) = parse_any(old, p).unwrap();
        assert_eq!(format, Format::Legacy);
        let mut want = every_key_set();
        want.warnings = s.warnings.clone();
        assert_eq!(s, want);
        assert_eq!(
            s,
            oracle_v01::parse_lines(old, p).unwrap().0.with_warnings(&s)
        );
        let (migrated, _) = migrate(old, p).unwrap();
        let (m, format) = parse_any(&migrated, p).unwrap();
        assert_eq!(format, Format::Toml, "{migrated}");
        assert_eq!(m, every_key_set(), "{migrated}");
        assert!(migrated.contains("ipset4 = \"gw4\" # v4\n"), "{migrated}");
        assert!(migrated.contains("ports = [21, 2121, 990]\n"), "{migrated}");
    }

    impl Settings {
        /// These settings with the warnings of `other`.
        fn with_warnings(mut self, other: &Settings) -> Settings {
            self.warnings = other.warnings.clone();
            self
        }
    }

    /// A line of an old-format file: a key with one of its spellings (valid or not), a
    /// comment, a blank line or junk.
    fn old_line() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let values: &[(&str, &[&str])] = &[
            ("queue", &["0", "7", "+3", "70000", "-1", "x"]),
            (
                "ports",
                &["21", "21, 2121", "21,,22", "21,21", "0", "", "990 ,21"],
            ),
            ("socket", &["/run/a.sock", "rel.sock", "", "/run/a b"]),
            ("state_file", &["", "/var/lib/x", "x"]),
            (
                "metrics",
                &["off", "", "none", "127.0.0.1:9477", "[::1]:1", "9477"],
            ),
            ("user", &["", "root"]),
            (
                "fail_open",
                &["yes", "no", "1", "0", "TRUE", "off", "maybe"],
            ),
            (
                "backend",
                &["nft", "iptables-nft", "iptables-legacy", "ipfw"],
            ),
            ("ipset4", &["ftpct4", "a-b", "a b", ""]),
            ("ipset6", &["ftpct6", "x"]),
            ("log", &["info", "ftpct=debug", "", "ftpct=[x"]),
            ("rule_check_interval", &["0", "5", "86401", "5s"]),
            ("allow_privileged_ports", &["true", "false"]),
            ("max_expect_per_session", &["0", "1", "4"]),
            ("expect_timeout", &["0", "1", "300", "86401"]),
            (
                "nat_ports",
                &["1024-65535", "100-1023", "5", "2000-1000", " 1 - 2 "],
            ),
            (
                "max_line",
                &["127", "128", "8192", "8193", "18446744073709551615"],
            ),
            ("session_idle_timeout", &["1", "60", "21600"]),
            ("hold_timeout", &["1", "120"]),
            ("hold_timeout_action", &["keep", "pass", "drop"]),
            ("max_hold_retries", &["3", "300"]),
            ("log_events_per_second", &["1", "70000"]),
            ("data_mark", &["0x4654", "16", "0X10", "0xzz", "4294967295"]),
            ("seqadj_mark", &["0x100000", "0", "4", "0x8"]),
        ];
        let pairs: Vec<(String, String)> = values
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        prop_oneof![
            6 => (proptest::sample::select(pairs), "[ \t]{0,2}", "[ \t]{0,2}", "( #[ -~]{0,8})?")
                .prop_map(|((k, v), a, b, c)| format!("{a}{k}{b}={b}{v}{c}")),
            1 => "#[ -~]{0,12}".prop_map(String::from),
            1 => Just(String::new()),
            1 => proptest::sample::select(vec!["bogus = 1", "just words", "#queue = 3"])
                .prop_map(String::from),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// Any file in the old syntax: accepted exactly when ftpct 0.1 accepted it, with the
        /// same settings, and its migration (`check-config --migrate`) is a TOML file that
        /// reads to those settings.
        #[test]
        fn old_files_read_as_0_1_read_them_and_migrate_to_the_same_settings(
            lines in proptest::collection::vec(old_line(), 0..12)
        ) {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let p = Path::new("o.conf");
            let old = oracle_v01::parse_lines(&text, p).map(|(s, _)| s);
            let new = parse_any(&text, p);
            match (&old, &new) {
                (Ok(o), Ok((n, _))) => {
                    let mut n = n.clone();
                    n.warnings.retain(|w| !w.contains("--migrate"));
                    proptest::prop_assert_eq!(o, &n);
                    let (migrated, _) = migrate(&text, p).unwrap();
                    let (m, format) = parse_any(&migrated, p).unwrap();
                    proptest::prop_assert_eq!(format, Format::Toml, "{}", migrated);
                    // the same settings; the warnings of the lines kept (a replaced line of
                    // a deprecated key is a comment there)
                    proptest::prop_assert!(m.warnings.iter().all(|w| n.warnings.contains(w)));
                    proptest::prop_assert_eq!(m.with_warnings(&n), n, "{}", migrated);
                }
                (Err(_), Err(_)) => {}
                _ => proptest::prop_assert!(false, "0.1: {:?}\nnow: {:?}\n{}", old, new, text),
            }
        }
    }
}
