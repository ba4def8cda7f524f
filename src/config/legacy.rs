//! The configuration format of ftpct 0.1, before TOML: one `key = value` per line, `#` starts
//! a comment anywhere, values are bare words (`socket = /run/ftpct/ftpct.sock`, `backend = nft`,
//! `nat_ports = 1024-65535`, `metrics = off`), port lists are comma separated (`21, 2121`),
//! booleans may be `yes`/`no`/`on`/`off`/`1`/`0`, an empty value means the default, a key set
//! twice keeps its last value.
//!
//! This reader only translates: each line becomes the same line in TOML (a value of the key's
//! type, the comment kept), so that [`super::parse`] reads the translation with the one set of
//! value checks, and the line of every error stays the line of the old file. Its own errors are
//! the old syntax's (a line that is not `key = value`, an unknown key, a value that is not of
//! the key's kind), with the old messages.

use std::collections::HashMap;
use std::path::Path;

use super::{ConfigError, DEPRECATED_KEYS};

/// What a key's value is, in the old syntax.
#[derive(Clone, Copy)]
enum Kind {
    /// Kept as a TOML string; [`super::File::settings`] checks it.
    Str,
    /// `true`/`yes`/`on`/`1`, `false`/`no`/`off`/`0`.
    Bool,
    /// A non-negative integer; the text names it in errors ("count", "number of seconds").
    Int(&'static str),
    /// `21, 2121`.
    Ports,
    /// Decimal or `0x` hex.
    Mark,
    /// An address, or empty/`off`/`none` for none.
    Metrics,
}

fn kind(key: &str) -> Option<Kind> {
    Some(match key {
        "metrics" => Kind::Metrics,
        "socket"
        | "state_file"
        | "ipset4"
        | "ipset6"
        | "backend"
        | "log"
        | "user"
        | "nat_ports"
        | "hold_timeout_action" => Kind::Str,
        "fail_open"
        | "allow_third_party"
        | "allow_privileged_ports"
        | "pickup_at_segment_start"
        | "tcp_window_check" => Kind::Bool,
        "queue" => Kind::Int("queue number (0-65535)"),
        "rule_check_interval" => Kind::Int("number of seconds (0 turns the check off)"),
        "expect_timeout" | "session_idle_timeout" | "session_close_linger" | "hold_timeout" => {
            Kind::Int("number of seconds")
        }
        "max_expect_per_session"
        | "max_expectations"
        | "max_line"
        | "max_sessions"
        | "max_announce_per_segment"
        | "max_announce_per_second"
        | "log_events_per_second" => Kind::Int("count"),
        "max_hold_retries" => Kind::Int("count (0-255)"),
        "ports" => Kind::Ports,
        "data_mark" | "seqadj_mark" => Kind::Mark,
        _ => return None,
    })
}

/// Parses a list of ports: `21, 2121`.
pub(super) fn parse_ports(v: &str) -> Result<Vec<u16>, String> {
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

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("'{v}' is not a boolean: use true or false")),
    }
}

/// The TOML text of value `v` of a key of kind `k`.
fn convert(k: Kind, v: &str) -> Result<String, String> {
    Ok(match k {
        Kind::Str => toml::Value::String(v.to_string()).to_string(),
        Kind::Metrics if matches!(v, "" | "off" | "none") => "\"off\"".into(),
        Kind::Metrics => toml::Value::String(v.to_string()).to_string(),
        Kind::Bool => parse_bool(v)?.to_string(),
        Kind::Int(what) => {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("'{v}' is not a valid {what}"))?;
            // TOML integers are i64; every limit is far below, so the check still refuses it.
            n.min(i64::MAX as u64).to_string()
        }
        Kind::Ports => {
            let ports: Vec<String> = parse_ports(v)?.iter().map(u16::to_string).collect();
            format!("[{}]", ports.join(", "))
        }
        Kind::Mark => match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16).map(|n| format!("{n:#x}")),
            None => v.parse::<u32>().map(|n| n.to_string()),
        }
        .map_err(|_| format!("'{v}' is not a mark (decimal or 0x hex)"))?,
    })
}

/// A comment's text as TOML allows it (no control characters but tab).
fn comment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// A commented-out example `#key = value` in TOML syntax, so that uncommenting it still works.
fn example(rest: &str) -> Option<String> {
    if rest.contains('#') {
        return None;
    }
    let (k, v) = rest.split_once('=')?;
    let key = k.trim_end();
    if key.is_empty() || key.contains(char::is_whitespace) || k.starts_with(' ') {
        return None;
    }
    // already TOML (`#queue = 0`, `#fail_open = false`): as it is
    if super::parse_toml(rest, Path::new("")).is_ok() {
        return None;
    }
    let value = convert(kind(key)?, v.trim()).ok()?;
    Some(format!("#{key} = {value}"))
}

/// `text` (a TOML file) with only its commented-out examples in the old syntax translated.
pub(super) fn translate_examples(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        match body.strip_prefix('#').and_then(example) {
            Some(t) => {
                out.push_str(&t);
                out.push_str(nl);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The old `key = value` lines of `text`, in TOML, line for line (see the module's doc). The
/// errors are the old syntax's, with their line.
pub(super) fn translate(text: &str, path: &Path) -> Result<String, ConfigError> {
    let lines: Vec<&str> = text.lines().collect();
    // The last line that sets each key (the one that counts).
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, raw) in lines.iter().enumerate() {
        let body = raw.split('#').next().unwrap_or("");
        if let Some((k, _)) = body.split_once('=') {
            last.insert(k.trim(), i);
        }
    }
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    for (i, raw) in lines.iter().enumerate() {
        let err = |msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let (body, rest) = match raw.split_once('#') {
            Some((b, r)) => (b, Some(r)),
            None => (*raw, None),
        };
        let line = body.trim();
        if line.is_empty() {
            if let Some(rest) = rest {
                out.push_str(&example(rest).unwrap_or_else(|| format!("#{}", comment(rest))));
            }
            out.push('\n');
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(err(format!("expected 'key = value', found '{line}'")));
        };
        let (k, v) = (k.trim(), v.trim());
        let Some(kind) = kind(k) else {
            return Err(err(format!(
                "unknown key '{k}' (see ftpct.conf(5) for the list)"
            )));
        };
        let value = convert(kind, v).map_err(err)?;
        let tail = rest
            .map(|r| format!(" #{}", comment(r)))
            .unwrap_or_default();
        match last.get(k) {
            Some(&j) if j != i => {
                if let Some(msg) = super::value_error(&format!("{k} = {value}")) {
                    return Err(err(msg));
                }
                out.push_str(&format!(
                    "#{k} = {value} # replaced by line {} (the last one counts){tail}",
                    j + 1
                ))
            }
            _ => out.push_str(&format!("{k} = {value}{tail}")),
        }
        out.push('\n');
    }
    Ok(out)
}

/// Whether `text` looks like the old format rather than TOML: a `key = value` line whose value
/// is empty or a bare word that TOML does not read (not a quoted string, array or table).
pub(super) fn looks_legacy(text: &str) -> bool {
    text.lines().any(|raw| {
        let body = raw.split('#').next().unwrap_or("").trim();
        let Some((_, v)) = body.split_once('=') else {
            return false;
        };
        let v = v.trim();
        v.is_empty()
            || (!v.starts_with(['"', '\'', '[', '{'])
                && format!("v = {v}").parse::<toml::Table>().is_err())
    })
}

/// The lines (1-based) of `max_hold_retries` that a later line of it replaces: they warned in
/// the old format, and are comments in the translation.
pub(super) fn replaced_deprecated(text: &str) -> Vec<usize> {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, raw)| {
            let body = raw.split('#').next().unwrap_or("");
            body.split_once('=')
                .is_some_and(|(k, _)| DEPRECATED_KEYS.contains(&k.trim()))
        })
        .map(|(i, _)| i + 1)
        .collect();
    lines
        .split_last()
        .map_or(Vec::new(), |(_, rest)| rest.to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::KEYS;
    use super::*;

    #[test]
    fn the_old_format_knows_every_key() {
        for k in KEYS.iter().map(|(k, _)| *k).chain(DEPRECATED_KEYS) {
            assert!(kind(k).is_some(), "{k}");
            // and the default, as 0.1 wrote it, translates to a TOML value of that key
            let (_, default) = KEYS.iter().find(|(n, _)| *n == k).unwrap_or(&("", "3"));
            let old = default.trim_matches('"').trim_matches(['[', ']']);
            let t = translate(&format!("{k} = {old}\n"), Path::new("k")).unwrap();
            assert!(super::super::parse_toml(&t, Path::new("k")).is_ok(), "{t}");
        }
        assert!(kind("bogus").is_none());
    }
}
