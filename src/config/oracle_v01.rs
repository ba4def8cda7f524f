//! The parser of ftpct 0.1 (src/config.rs before TOML), kept verbatim as a test oracle: the
//! legacy reader must accept what it accepted, with the same settings, and refuse what it
//! refused.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    check_log_filter, ConfigError, Settings, DEFAULT_SEQADJ_MARK, DEFAULT_SOCKET,
    MAX_EXPECT_TIMEOUT, MAX_MAX_LINE, MAX_RULE_CHECK_INTERVAL, MIN_MAX_LINE,
};
use crate::policy::HoldTimeoutAction;

/// Parses a list of ports: `21, 2121`.
fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
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

/// The line each key was last set on.
#[derive(Debug, Default)]
pub(super) struct KeyLines(std::collections::HashMap<String, usize>);

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

pub(super) fn parse_lines(text: &str, path: &Path) -> Result<(Settings, KeyLines), ConfigError> {
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
