//! The control socket: a Unix stream socket (default `/run/ftpct/ftpct.sock`, mode 0600) on which
//! `ftpct list`, `ftpct sessions` and `ftpct stats` ask the running daemon for its tables.
//!
//! Protocol: the client sends one request line (`list`, `sessions`, `stats`), the daemon answers
//! with text and closes. The formatting functions here are pure (engine + time in, text out).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::engine::{Engine, Event};
use crate::expect;
use crate::types::{Dir, Timestamp};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64;

/// Requests the daemon understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    List,
    Sessions,
    Stats,
    /// Stream event lines until the client disconnects.
    Events,
    /// The Prometheus text (also served over HTTP when enabled).
    Metrics,
}

impl Request {
    pub fn parse(line: &str) -> Option<Request> {
        match line.trim() {
            "list" => Some(Request::List),
            "sessions" => Some(Request::Sessions),
            "stats" => Some(Request::Stats),
            "events" => Some(Request::Events),
            "metrics" => Some(Request::Metrics),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Sessions => "sessions",
            Request::Stats => "stats",
            Request::Events => "events",
            Request::Metrics => "metrics",
        }
    }
}

/// The expectation table in the kernel's `/proc/net/nf_conntrack_expect` format.
pub fn format_list(engine: &Engine, now: Timestamp) -> String {
    let mut out = String::new();
    let mut rows: Vec<_> = engine.expectations().iter().collect();
    rows.sort_by_key(|(id, _)| *id);
    for (_, e) in rows {
        expect::format_kernel_line(e, now, &mut out);
    }
    out
}

/// The tracked control connections, one line each.
pub fn format_sessions(engine: &Engine, now: Timestamp) -> String {
    let mut out = String::new();
    let mut rows: Vec<_> = engine.sessions().collect();
    rows.sort_by_key(|s| s.id);
    for s in rows {
        let nat = match (s.ct.is_src_nat(), s.ct.is_dst_nat()) {
            (true, true) => format!("snat={} dnat={}", s.ct.reply.dst, s.ct.reply.src),
            (true, false) => format!("snat={}", s.ct.reply.dst),
            (false, true) => format!("dnat={}", s.ct.reply.src),
            (false, false) => "nat=none".to_string(),
        };
        let state = if s.encrypted {
            "tls"
        } else if s.reset {
            "reset"
        } else if s.is_closing() {
            "closing"
        } else {
            "open"
        };
        let _ = write!(
            out,
            "{} client={} server={} {} state={} age={}s idle={}s rewrites={} expectations={}",
            s.id,
            s.ct.original.src,
            s.ct.original.dst,
            nat,
            state,
            now.since(s.created).as_secs(),
            now.since(s.last_seen).as_secs(),
            s.rewrites,
            s.expectations,
        );
        for d in [Dir::Original, Dir::Reply] {
            let adj = &s.dir(d).seqadj;
            let name = if d == Dir::Original { "orig" } else { "reply" };
            match adj.correction_pos() {
                Some(pos) => {
                    let _ = write!(out, " seq_{name}=offset:{:+},pos:{pos}", adj.offset_after());
                }
                None => {
                    let _ = write!(out, " seq_{name}=offset:{:+}", adj.offset_after());
                }
            }
        }
        out.push('\n');
    }
    out
}

/// One line for `ftpct events`, in the spirit of `conntrack -E expect`: `[NEW]`, `[DESTROY]`,
/// `[USED]`, `[REWRITE]`, `[REFUSED]`, `[WARN]` followed by the details (the core's renderer,
/// `ftpct_core::render`). `None` for events that are only counted (every parsed message).
pub fn format_event(e: &Event, now: Timestamp) -> Option<String> {
    ftpct_core::render::events_line(e, now)
}

/// Streams the daemon's events to `out` until it closes the connection.
pub fn stream_events(socket: &Path, out: &mut dyn Write) -> std::io::Result<()> {
    let mut s = connect(socket)?;
    s.write_all(b"events\n")?;
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(buf.get(..n).unwrap_or(&[]))?;
        out.flush()?;
    }
}

fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    UnixStream::connect(socket).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot connect to the ftpct daemon at {}: {e} (is `ftpct run` running with this --socket?)",
                socket.display()
            ),
        )
    })
}

/// Asks the daemon at `socket` and returns its answer.
pub fn query(socket: &Path, req: Request) -> std::io::Result<String> {
    let mut s = connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req.as_str().as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EndReason;
    use crate::types::{CtTuples, FlowTuple, SessionId};

    #[test]
    fn session_event_lines_carry_the_nat_mapping() {
        let ct = CtTuples {
            original: FlowTuple::new(
                "10.0.0.2:40000".parse().unwrap(),
                "198.51.100.2:21".parse().unwrap(),
            ),
            reply: FlowTuple::new(
                "198.51.100.2:21".parse().unwrap(),
                "203.0.113.1:61000".parse().unwrap(),
            ),
        };
        let id = SessionId(7);
        let start = format_event(&Event::SessionStart { id, ct }, Timestamp::ZERO).unwrap();
        let end = format_event(
            &Event::SessionEnd {
                id,
                ct,
                reason: EndReason::Closed,
            },
            Timestamp::ZERO,
        )
        .unwrap();
        let mapping = "client=10.0.0.2:40000 server=198.51.100.2:21 \
                       reply=198.51.100.2:21 -> 203.0.113.1:61000";
        assert!(
            start.starts_with("[NEW] session ") && start.contains(mapping),
            "{start}"
        );
        assert!(
            end.starts_with("[DESTROY] session ") && end.contains(mapping),
            "{end}"
        );
        assert!(end.trim_end().ends_with("reason=closed"), "{end}");
    }
}
