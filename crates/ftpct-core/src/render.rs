//! One description of every [`Event`], rendered three ways.
//!
//! [`describe`] is the one place that says, for each event variant, its name (the JSON
//! `type`), its level, its `ftpct events` line (tag and text, in the spirit of
//! `conntrack -E`), the prose of its log line, and its fields (key and value, with the labels
//! the enums define: [`Dir::label`], [`ExpectKind::label`], [`EndReason::label`](crate::engine::EndReason::label), ...). It
//! hands them to a [`Sink`], which keeps what its output needs:
//!
//! - [`EventsLine`]: the `ftpct events` line (the control socket's stream);
//! - [`LogLine`]: the log's prose followed by ` key=value` fields (the daemon);
//! - [`JsonSink`]: one JSON object (`ftpct replay --json`), written with [`JsonObject`].
//!
//! Nothing here does I/O: everything is written into `String`s. The visitor shape means a
//! sink pays only for what it keeps (the `format_args!` of an unused line is never
//! formatted), and a sink can stop after [`Sink::begin`] (a log level that is off).

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use crate::engine::{Event, MsgKind, SegmentRefusal};
use crate::expect::{self, ExpectId, ExpectKind, Expectation};
use crate::policy::HoldTimeoutAction;
use crate::types::{CtTuples, Dir, FlowTuple, Timestamp};

/// How loud an event is (the daemon's log level).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Routine and frequent (every parsed message).
    Debug,
    /// A change an admin follows (sessions, rewrites, expectations).
    Info,
    /// Something went wrong or was refused.
    Warn,
}

/// A field's value.
#[derive(Clone, Copy)]
pub enum Value<'a> {
    /// A label or short text (a JSON string).
    Str(&'a str),
    /// Anything displayable (a JSON string).
    Display(&'a dyn fmt::Display),
    /// A number (a JSON number).
    U64(u64),
    /// A signed number (a JSON number).
    I64(i64),
    /// Port numbers (a JSON array of numbers, text `21,2121`).
    Ports(&'a [u16]),
    /// A JSON boolean.
    Bool(bool),
    /// A connection tuple (JSON `{"src":..,"dst":..}`, text `src -> dst`).
    Tuple(FlowTuple),
    /// An expectation id (a sink may name it its own way; by default its number).
    Expect(ExpectId),
    /// Absent (JSON `null`, text `-`).
    None,
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "Str({s:?})"),
            Value::Display(d) => write!(f, "Display({d})"),
            Value::U64(n) => write!(f, "U64({n})"),
            Value::I64(n) => write!(f, "I64({n})"),
            Value::Ports(p) => write!(f, "Ports({p:?})"),
            Value::Bool(b) => write!(f, "Bool({b})"),
            Value::Tuple(t) => write!(f, "Tuple({t})"),
            Value::Expect(id) => write!(f, "Expect({})", id.0),
            Value::None => f.write_str("None"),
        }
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Display(d) => d.fmt(f),
            Value::U64(n) => n.fmt(f),
            Value::I64(n) => n.fmt(f),
            Value::Ports(p) => {
                for (i, port) in p.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    port.fmt(f)?;
                }
                Ok(())
            }
            Value::Bool(b) => b.fmt(f),
            Value::Tuple(t) => t.fmt(f),
            Value::Expect(id) => id.0.fmt(f),
            Value::None => f.write_str("-"),
        }
    }
}

/// What [`describe`] tells about an event, piece by piece. Every method but
/// [`Sink::begin`] has a default that ignores its piece.
pub trait Sink {
    /// The event's name (JSON `type`) and level; called first. Returning false skips the rest.
    fn begin(&mut self, name: &'static str, level: Level) -> bool;
    /// The `ftpct events` line: its tag (`[NEW]`, `[DESTROY]`, ...) and text (no newline).
    /// Not called for events that are only counted.
    fn line(&mut self, _tag: &'static str, _text: fmt::Arguments<'_>) {}
    /// The log line's prose.
    fn message(&mut self, _text: fmt::Arguments<'_>) {}
    /// One field of both the log line and the record (JSON), in a fixed order per event.
    fn field(&mut self, _key: &'static str, _value: Value<'_>) {}
    /// A field of the log line only (where the log's words predate the one vocabulary).
    fn log_field(&mut self, _key: &'static str, _value: Value<'_>) {}
    /// A field of the record (JSON) only.
    fn record_field(&mut self, _key: &'static str, _value: Value<'_>) {}
    /// A field the `ftpct events` line leaves out that a reader of this one line needs (the
    /// session and expectation of a line in the kernel's expectation format, a session's NAT):
    /// shown after the line by `ftpct replay`'s text ([`ReplayLine`]), by no other sink.
    fn note(&mut self, _key: &'static str, _value: Value<'_>) {}
    /// The line of an event that `ftpct events` does not show (it is only counted), in the
    /// same shape as [`Sink::line`]: for a sink that shows every event ([`ReplayLine`]).
    fn counted_line(&mut self, _tag: &'static str, _text: fmt::Arguments<'_>) {}
}

/// The direction a message travels in (commands from the client, replies from the server).
pub fn msg_dir(kind: MsgKind) -> Dir {
    match kind {
        MsgKind::Port | MsgKind::Eprt | MsgKind::Pasv | MsgKind::Epsv | MsgKind::AuthTls => {
            Dir::Original
        }
        MsgKind::Reply227 | MsgKind::Reply229 | MsgKind::Reply234 => Dir::Reply,
    }
}

/// The direction of the message that announces a data address of `kind`.
pub fn expect_dir(kind: ExpectKind) -> Dir {
    match kind {
        ExpectKind::Port | ExpectKind::Eprt => Dir::Original,
        ExpectKind::Pasv227 | ExpectKind::Epsv229 => Dir::Reply,
    }
}

/// `snat`, `dnat`, `snat+dnat` or `none`, and the public address, read from the tuples.
fn nat_of(ct: &CtTuples) -> (&'static str, Option<IpAddr>) {
    let snat = ct.reply.dst != ct.original.src;
    let dnat = ct.reply.src != ct.original.dst;
    match (snat, dnat) {
        (false, false) => ("none", None),
        (true, false) => ("snat", Some(ct.reply.dst.ip())),
        (false, true) => ("dnat", Some(ct.original.dst.ip())),
        (true, true) => ("snat+dnat", Some(ct.reply.dst.ip())),
    }
}

fn opt_ip(ip: &Option<IpAddr>) -> Value<'_> {
    match ip {
        Some(ip) => Value::Display(ip),
        None => Value::None,
    }
}

/// The kernel's `/proc/net/nf_conntrack_expect` line of an expectation, without its newline.
struct KernelLine<'a>(&'a Expectation, Timestamp);

impl fmt::Display for KernelLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(96);
        expect::format_kernel_line(self.0, self.1, &mut s);
        f.write_str(s.trim_end_matches('\n'))
    }
}

/// [`SegmentRefusal::describe`], formatted only when written.
struct Why(SegmentRefusal);

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.describe())
    }
}

/// The source of an expectation: `any` for the unspecified address.
pub(crate) struct AnyIp(pub(crate) IpAddr);

impl fmt::Display for AnyIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_unspecified() {
            f.write_str("any")
        } else {
            self.0.fmt(f)
        }
    }
}

/// The log's `nat=` of a session: `public <- peer` (the reply tuple, backwards).
struct NatArrow(FlowTuple);

impl fmt::Display for NatArrow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} <- {}", self.0.dst, self.0.src)
    }
}

/// The log's client, server and NAT of a session.
fn session_log_fields(s: &mut impl Sink, ct: &CtTuples) {
    s.log_field("client", Value::Display(&ct.original.src));
    s.log_field("server", Value::Display(&ct.original.dst));
    s.log_field("nat", Value::Display(&NatArrow(ct.reply)));
}

/// Tells `s` everything about `e` (`now` for the time left of expectations).
pub fn describe(e: &Event, now: Timestamp, s: &mut impl Sink) {
    match e {
        Event::SessionStart { .. } => session_start(e, s),
        Event::SessionEnd { .. } => session_end(e, s),
        Event::Message { .. } => message(e, s),
        Event::Rewritten { .. } => rewritten(e, s),
        Event::ExpectCreated { .. } => expect_created(e, now, s),
        Event::ExpectUsed { .. } => expect_used(e, s),
        Event::ExpectRemoved { .. } => expect_removed(e, now, s),
        Event::Refused { .. } => refused(e, s),
        Event::ParseFailed { .. } => parse_failed(e, s),
        Event::TlsStarted { .. } => tls_started(e, s),
        Event::LineTooLong { .. } => line_too_long(e, s),
        Event::HoldTimedOut { .. } => hold_timed_out(e, s),
        Event::NotRewritten { .. } => not_rewritten(e, s),
        Event::Resynced { .. } => resynced(e, s),
        Event::Malformed { .. } => malformed(e, s),
        Event::SegmentRefused { .. } => segment_refused(e, s),
        Event::Throttled { .. } => throttled(e, s),
        Event::EvictionStarted { .. } => eviction_started(e, s),
    }
}

/// [`describe`] of [`Event::SessionStart`].
fn session_start(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::SessionStart { id, ct } = e else {
        return;
    };
    if !s.begin("session_start", Level::Info) {
        return;
    }
    s.line(
        "[NEW]",
        format_args!(
            "session {id} client={} server={} reply={} -> {}",
            ct.original.src, ct.original.dst, ct.reply.src, ct.reply.dst
        ),
    );
    s.message(format_args!("control session start"));
    s.field("session", D(id));
    session_log_fields(s, ct);
    let (nat, public) = nat_of(ct);
    s.record_field("original", Value::Tuple(ct.original));
    s.record_field("reply", Value::Tuple(ct.reply));
    s.record_field("nat", Str(nat));
    s.record_field("public", opt_ip(&public));
    s.note("nat", Str(nat));
    s.note("public", opt_ip(&public));
}

/// [`describe`] of [`Event::SessionEnd`].
fn session_end(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::SessionEnd { id, ct, reason } = e else {
        return;
    };
    if !s.begin("session_end", Level::Info) {
        return;
    }
    s.line(
        "[DESTROY]",
        format_args!(
            "session {id} client={} server={} reply={} -> {} reason={}",
            ct.original.src,
            ct.original.dst,
            ct.reply.src,
            ct.reply.dst,
            reason.label()
        ),
    );
    s.message(format_args!("control session end"));
    s.field("session", D(id));
    session_log_fields(s, ct);
    s.log_field("reason", Str(reason.describe()));
    s.record_field("reason", Str(reason.label()));
    s.record_field("detail", Str(reason.describe()));
}

/// [`describe`] of [`Event::Message`].
fn message(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::Message { id, kind, .. } = e else {
        return;
    };
    if !s.begin("message", Level::Debug) {
        return;
    }
    s.counted_line(
        "[MESSAGE]",
        format_args!("session {id} {} {}", msg_dir(*kind).label(), kind.label()),
    );
    s.message(format_args!("message"));
    s.field("session", D(id));
    s.record_field("dir", Str(msg_dir(*kind).label()));
    s.field("kind", Str(kind.label()));
}

/// [`describe`] of [`Event::Rewritten`].
fn rewritten(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::Rewritten { id, kind, from, to } = e else {
        return;
    };
    if !s.begin("rewrite", Level::Info) {
        return;
    }
    s.line(
        "[REWRITE]",
        format_args!("session {id} {} {from} -> {to}", kind.label()),
    );
    s.message(format_args!("address rewritten"));
    s.field("session", D(id));
    s.record_field("dir", Str(expect_dir(*kind).label()));
    s.field("kind", Str(kind.label()));
    s.field("from", D(from));
    s.field("to", D(to));
}

/// [`describe`] of [`Event::ExpectCreated`].
fn expect_created(e: &Event, now: Timestamp, s: &mut impl Sink) {
    use Value::{Display as D, Str, U64};
    let Event::ExpectCreated { id, exp } = e else {
        return;
    };
    if !s.begin("expect_created", Level::Info) {
        return;
    }
    s.line("[NEW]", format_args!("{}", KernelLine(exp, now)));
    s.message(format_args!("expecting data connection"));
    s.field("session", D(&exp.master));
    s.log_field("expectation", U64(id.0));
    s.record_field("expect", Value::Expect(*id));
    s.record_field("kind", Str(exp.kind.label()));
    s.field("src", D(&AnyIp(exp.src)));
    s.field("dst", D(&exp.dst));
    match &exp.nat_to {
        Some(a) => s.field("nat_to", D(a)),
        None => s.field("nat_to", Value::None),
    }
    s.record_field("timeout", U64(exp.expires.since(exp.created).as_secs()));
    s.note("session", D(&exp.master));
    s.note("expect", Value::Expect(*id));
    s.note("kind", Str(exp.kind.label()));
    match &exp.nat_to {
        Some(a) => s.note("nat_to", D(a)),
        None => s.note("nat_to", Value::None),
    }
}

/// [`describe`] of [`Event::ExpectUsed`].
fn expect_used(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, U64};
    let Event::ExpectUsed { id, exp, data } = e else {
        return;
    };
    if !s.begin("expect_used", Level::Info) {
        return;
    }
    s.line(
        "[USED]",
        format_args!(
            "session {} data={} (expected dst={})",
            exp.master, data, exp.dst
        ),
    );
    s.message(format_args!("data connection admitted as RELATED"));
    s.field("session", D(&exp.master));
    s.log_field("expectation", U64(id.0));
    s.record_field("expect", Value::Expect(*id));
    s.field("data", Value::Tuple(*data));
    s.note("expect", Value::Expect(*id));
}

/// [`describe`] of [`Event::ExpectRemoved`].
fn expect_removed(e: &Event, now: Timestamp, s: &mut impl Sink) {
    use Value::{Display as D, Str, U64};
    let Event::ExpectRemoved { id, exp, reason } = e else {
        return;
    };
    if !s.begin("expect_removed", Level::Info) {
        return;
    }
    s.line(
        "[DESTROY]",
        format_args!("reason={} {}", reason.label(), KernelLine(exp, now)),
    );
    s.message(format_args!("expectation removed"));
    s.field("session", D(&exp.master));
    s.log_field("expectation", U64(id.0));
    s.record_field("expect", Value::Expect(*id));
    s.field("dst", D(&exp.dst));
    s.log_field("reason", Str(reason.describe()));
    s.record_field("reason", Str(reason.label()));
    s.record_field("detail", Str(reason.describe()));
    s.note("session", D(&exp.master));
    s.note("expect", Value::Expect(*id));
}

/// [`describe`] of [`Event::Refused`].
fn refused(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::Refused {
        id,
        kind,
        addr,
        reason,
    } = e
    else {
        return;
    };
    if !s.begin("refused", Level::Warn) {
        return;
    }
    s.line(
        "[REFUSED]",
        format_args!("session {id} {} {addr}: {reason}", kind.label()),
    );
    s.message(format_args!("refused data address"));
    s.field("session", D(id));
    s.record_field("dir", Str(expect_dir(*kind).label()));
    s.field("kind", Str(kind.label()));
    s.field("addr", D(addr));
    s.log_field("reason", D(reason));
    s.record_field("reason", Str(reason.label()));
    s.record_field("detail", D(reason));
}

/// [`describe`] of [`Event::ParseFailed`].
fn parse_failed(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::ParseFailed {
        id,
        dir,
        kind,
        error,
        ..
    } = e
    else {
        return;
    };
    if !s.begin("parse_failed", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!(
            "session {id} {} {}: unparseable ({error})",
            dir.label(),
            kind.label()
        ),
    );
    s.message(format_args!("unparseable message let through unchanged"));
    s.field("session", D(id));
    s.field("dir", Str(dir.label()));
    s.field("kind", Str(kind.label()));
    s.log_field("error", D(error));
    s.record_field("error", Str(error.label()));
    s.record_field("detail", D(error));
}

/// [`describe`] of [`Event::TlsStarted`].
fn tls_started(e: &Event, s: &mut impl Sink) {
    use Value::Display as D;
    let Event::TlsStarted { id } = e else {
        return;
    };
    if !s.begin("tls_started", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!("session {id}: AUTH TLS, no longer inspected"),
    );
    s.message(format_args!(
        "AUTH TLS accepted: the control channel is encrypted and no longer inspected; \
         data connections of this session cannot be admitted (allow the server's passive \
         port range in the firewall, or use plain FTP)"
    ));
    s.field("session", D(id));
}

/// [`describe`] of [`Event::LineTooLong`].
fn line_too_long(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::LineTooLong { id, dir } = e else {
        return;
    };
    if !s.begin("line_too_long", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!("session {id} {}: line too long", dir.label()),
    );
    s.message(format_args!("control line too long; skipped to its end"));
    s.field("session", D(id));
    s.field("dir", Str(dir.label()));
}

/// [`describe`] of [`Event::HoldTimedOut`].
fn hold_timed_out(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str, U64};
    let Event::HoldTimedOut {
        id,
        dir,
        held,
        after,
        action,
    } = e
    else {
        return;
    };
    if !s.begin("hold_timeout", Level::Warn) {
        return;
    }
    let secs = after.as_secs();
    let (short, long) = match action {
        HoldTimeoutAction::Keep => (
            "kept inside",
            "its held part stays inside (hold_timeout_action = keep): it is still \
             rewritten if the rest comes, never let through unrewritten",
        ),
        HoldTimeoutAction::Pass => (
            "let through",
            "its held part is let through unchanged (hold_timeout_action = pass), the \
             line will not be rewritten",
        ),
    };
    s.line(
        "[WARN]",
        format_args!(
            "session {id} {}: split line not complete after hold_timeout {secs} s \
             ({held} bytes held, {short})",
            dir.label()
        ),
    );
    s.message(format_args!(
        "a split PORT/EPRT/227/229 line did not complete within hold_timeout ({secs} s); \
         {long}"
    ));
    s.field("session", D(id));
    s.field("dir", Str(dir.label()));
    s.log_field("held_bytes", U64(u64::from(*held)));
    s.record_field("held", U64(u64::from(*held)));
    s.record_field("action", Str(action.label()));
    s.record_field("timeout", U64(secs));
}

/// [`describe`] of [`Event::NotRewritten`].
fn not_rewritten(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::NotRewritten { id, kind } = e else {
        return;
    };
    if !s.begin("not_rewritten", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!("session {id} {}: could not be rewritten", kind.label()),
    );
    s.message(format_args!(
        "message needed a rewrite but its start had already been forwarded; the data \
         connection will likely fail"
    ));
    s.field("session", D(id));
    s.field("kind", Str(kind.label()));
}

/// [`describe`] of [`Event::Resynced`].
fn resynced(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::Resynced { id, dir } = e else {
        return;
    };
    if !s.begin("resynced", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!("session {id} {}: bytes missed, resynchronised", dir.label()),
    );
    s.message(format_args!(
        "bytes of the control connection never reached ftpct (queue bypass?); tracking \
         resumes at the next line"
    ));
    s.field("session", D(id));
    s.field("dir", Str(dir.label()));
}

/// [`describe`] of [`Event::Malformed`].
fn malformed(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str, U64};
    let Event::Malformed { error, len, hook } = e else {
        return;
    };
    if !s.begin("malformed", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!(
            "malformed packet at {} ({len} bytes): {error}, accepted unchanged",
            hook.label()
        ),
    );
    s.message(format_args!(
        "a queued packet is not a TCP/IP packet ftpct can read; accepted unchanged"
    ));
    s.log_field("reason", D(error));
    s.record_field("hook", Str(hook.label()));
    s.field("bytes", U64(*len as u64));
    s.log_field("hook", Str(hook.label()));
    s.record_field("error", D(error));
}

/// [`describe`] of [`Event::SegmentRefused`].
fn segment_refused(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::SegmentRefused { id, dir, why } = e else {
        return;
    };
    if !s.begin("segment_refused", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!(
            "session {id} {}: segment refused ({}): {}",
            dir.label(),
            why.label(),
            Why(*why)
        ),
    );
    s.message(format_args!(
        "segment refused and passed on untouched, no state changed: {} (spoofed, or the \
         kernel will mark it INVALID too; counted in packets_out_of_window, rst_ignored, \
         synack_ignored)",
        Why(*why)
    ));
    s.field("session", D(id));
    s.field("dir", Str(dir.label()));
    s.field("why", Str(why.label()));
    s.record_field("detail", D(&Why(*why)));
}

/// [`describe`] of [`Event::Throttled`].
fn throttled(e: &Event, s: &mut impl Sink) {
    use Value::{Display as D, Str};
    let Event::Throttled { id, kind } = e else {
        return;
    };
    if !s.begin("throttled", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!("session {id}: more {kind} events this second are not shown"),
    );
    s.message(format_args!(
        "more than log_events_per_second {kind} events from this session in one second; \
         the rest of this second's are not logged (counted in events_throttled)"
    ));
    s.field("session", D(id));
    s.field("kind", Str(kind));
}

/// [`describe`] of [`Event::EvictionStarted`].
fn eviction_started(e: &Event, s: &mut impl Sink) {
    use Value::U64;
    let Event::EvictionStarted {
        max_sessions,
        protected_left,
    } = e
    else {
        return;
    };
    if !s.begin("eviction_started", Level::Warn) {
        return;
    }
    s.line(
        "[WARN]",
        format_args!(
            "session table full ({max_sessions}): evicting {}",
            if *protected_left {
                "idle sessions without offsets or expectations"
            } else {
                "sessions with offsets or expectations"
            }
        ),
    );
    if *protected_left {
        s.message(format_args!(
            "session table full: evicting the least recently active sessions without \
             sequence offsets or expectations (raise max_sessions if this is normal load)"
        ));
    } else {
        s.message(format_args!(
            "session table full and every evictable session has a sequence offset or an \
             expectation: evicting the least recently active one, whose control \
             connection may break (raise max_sessions, or look for a flood of control \
             connections)"
        ));
    }
    s.field("max_sessions", U64(*max_sessions as u64));
    s.record_field("protected_left", Value::Bool(*protected_left));
}

// ---------------------------------------------------------------------------------------------
// The `ftpct events` line

/// Keeps the `ftpct events` line of an event.
#[derive(Debug, Default)]
pub struct EventsLine {
    line: Option<String>,
}

impl Sink for EventsLine {
    fn begin(&mut self, _: &'static str, _: Level) -> bool {
        true
    }
    fn line(&mut self, tag: &'static str, text: fmt::Arguments<'_>) {
        let mut out = String::with_capacity(128);
        let _ = writeln!(out, "{tag} {text}");
        self.line = Some(out);
    }
}

/// The `ftpct events` line of `e`, with its newline; `None` for events that are only counted
/// (every parsed message).
pub fn events_line(e: &Event, now: Timestamp) -> Option<String> {
    let mut s = EventsLine::default();
    describe(e, now, &mut s);
    s.line
}

// ---------------------------------------------------------------------------------------------
// The log line

/// Writes the log line of an event: its prose, then ` key=value` per field, as tracing's
/// formatter writes them (a `Str` value quoted and escaped, any other value bare, an absent one
/// `-`). Stops at [`Sink::begin`] below `min` (nothing formatted).
#[derive(Debug)]
pub struct LogLine {
    /// The lowest level written.
    pub min: Level,
    /// The event's level (after [`describe`]).
    pub level: Level,
    /// Prose and fields (empty when the level was below `min`).
    pub text: String,
}

impl LogLine {
    /// A log line for events at `min` and above.
    pub fn new(min: Level) -> LogLine {
        LogLine {
            min,
            level: Level::Debug,
            text: String::new(),
        }
    }

    fn put(&mut self, key: &'static str, value: Value<'_>) {
        self.text.push(' ');
        self.text.push_str(key);
        self.text.push('=');
        let _ = match value {
            Value::Str(v) => write!(self.text, "{v:?}"),
            v => write!(self.text, "{v}"),
        };
    }
}

impl Sink for LogLine {
    fn begin(&mut self, _: &'static str, level: Level) -> bool {
        self.level = level;
        level >= self.min
    }
    fn message(&mut self, text: fmt::Arguments<'_>) {
        let _ = self.text.write_fmt(text);
    }
    fn field(&mut self, key: &'static str, value: Value<'_>) {
        self.put(key, value);
    }
    fn log_field(&mut self, key: &'static str, value: Value<'_>) {
        self.put(key, value);
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// Writes `s` as a JSON string (quotes and escapes; control characters and DEL as `\u00XX`).
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    json_escape(out, s);
    out.push('"');
}

/// Writes the body of a JSON string.
fn json_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Adapts `fmt::Write` to escape everything written into a JSON string's body.
struct JsonEscape<'a>(&'a mut String);

impl fmt::Write for JsonEscape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        json_escape(self.0, s);
        Ok(())
    }
}

/// A JSON object written key by key, in the order given (one line, no spaces).
#[derive(Debug)]
pub struct JsonObject(String);

impl Default for JsonObject {
    fn default() -> Self {
        JsonObject::new()
    }
}

impl JsonObject {
    /// An empty object (`{`).
    pub fn new() -> JsonObject {
        let mut s = String::with_capacity(192);
        s.push('{');
        JsonObject(s)
    }

    /// An object that starts with `"type":ty`.
    pub fn typed(ty: &str) -> JsonObject {
        JsonObject::new().str("type", ty)
    }

    fn key(&mut self, k: &str) {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        json_str(&mut self.0, k);
        self.0.push(':');
    }

    /// A string value.
    pub fn str(mut self, k: &str, v: &str) -> JsonObject {
        self.key(k);
        json_str(&mut self.0, v);
        self
    }

    /// A displayable value, as a string.
    pub fn display(mut self, k: &str, v: impl fmt::Display) -> JsonObject {
        self.put_display(k, &v);
        self
    }

    fn put_display(&mut self, k: &str, v: &dyn fmt::Display) {
        self.key(k);
        self.0.push('"');
        let _ = write!(JsonEscape(&mut self.0), "{v}");
        self.0.push('"');
    }

    /// A string value or `null`.
    pub fn opt(self, k: &str, v: Option<impl fmt::Display>) -> JsonObject {
        match v {
            Some(v) => self.display(k, v),
            None => self.raw(k, "null"),
        }
    }

    /// A number.
    pub fn num(mut self, k: &str, v: impl Into<i128>) -> JsonObject {
        let v: i128 = v.into();
        self.key(k);
        let _ = write!(self.0, "{v}");
        self
    }

    /// A boolean.
    pub fn bool(self, k: &str, v: bool) -> JsonObject {
        self.raw(k, if v { "true" } else { "false" })
    }

    /// A value already in JSON (a number, an array).
    pub fn raw(mut self, k: &str, v: &str) -> JsonObject {
        self.key(k);
        self.0.push_str(v);
        self
    }

    /// A tuple, as `{"src":..,"dst":..}`.
    pub fn tuple(self, k: &str, t: FlowTuple) -> JsonObject {
        let inner = JsonObject::new()
            .display("src", t.src)
            .display("dst", t.dst)
            .end();
        self.raw(k, &inner)
    }

    /// A [`Value`] (an expectation id as its number).
    pub fn value(self, k: &str, v: Value<'_>) -> JsonObject {
        match v {
            Value::Str(s) => self.str(k, s),
            Value::Display(d) => {
                let mut o = self;
                o.put_display(k, d);
                o
            }
            Value::U64(n) => self.num(k, n),
            Value::I64(n) => self.num(k, n),
            Value::Ports(p) => self.raw(k, &format!("[{}]", Value::Ports(p))),
            Value::Bool(b) => self.bool(k, b),
            Value::Tuple(t) => self.tuple(k, t),
            Value::Expect(id) => self.num(k, id.0),
            Value::None => self.raw(k, "null"),
        }
    }

    /// Closes the object and returns its text.
    pub fn end(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Writes an event as a JSON object: `"type"` (the event's name), then `"t"` if given, then
/// the fields. More fields can be added to [`JsonSink::obj`] before [`JsonObject::end`].
#[derive(Debug)]
pub struct JsonSink<'a> {
    /// A JSON number for `"t"` (seconds), right after `"type"`.
    pub t: Option<&'a str>,
    /// The object (written by [`describe`]).
    pub obj: JsonObject,
    /// Replay's number of the event's expectation (written `"E<n>"` instead of the id).
    expect: Option<u64>,
}

impl<'a> JsonSink<'a> {
    /// A sink whose object gets `"t": t` after its type.
    pub fn new(t: Option<&'a str>) -> JsonSink<'a> {
        JsonSink {
            t,
            obj: JsonObject::new(),
            expect: None,
        }
    }

    /// Names the event's expectation `"E<n>"` (replay's numbers, in creation order) instead
    /// of the engine's id.
    pub fn expect_named(mut self, n: Option<u64>) -> JsonSink<'a> {
        self.expect = n;
        self
    }

    /// Adds a field (what [`Sink::field`] does).
    fn put(&mut self, key: &str, value: Value<'_>) {
        let obj = std::mem::take(&mut self.obj);
        self.obj = match (value, self.expect) {
            (Value::Expect(_), Some(n)) => obj.display(key, format_args!("E{n}")),
            _ => obj.value(key, value),
        };
    }
}

impl Sink for JsonSink<'_> {
    fn begin(&mut self, name: &'static str, _: Level) -> bool {
        let obj = std::mem::take(&mut self.obj).str("type", name);
        self.obj = match self.t {
            Some(t) => obj.raw("t", t),
            None => obj,
        };
        true
    }
    fn field(&mut self, key: &'static str, value: Value<'_>) {
        self.put(key, value);
    }
    fn record_field(&mut self, key: &'static str, value: Value<'_>) {
        self.put(key, value);
    }
}

/// The JSON object of `e` (no `"t"`).
pub fn json(e: &Event, now: Timestamp) -> String {
    let mut s = JsonSink::new(None);
    describe(e, now, &mut s);
    s.obj.end()
}

// ---------------------------------------------------------------------------------------------
// `ftpct replay`

/// A field only replay knows, shown after an event's own (the line behind a message, the
/// rewritten line, the NAT of the related entry the simulated kernel made).
pub type Extra<'a> = (&'static str, Value<'a>);

/// Writes ` key=value` as the log line does (a `Str` quoted and escaped, any other value
/// bare, an absent one `-`), an expectation as `E<n>` when `expect` names it.
fn put_field(out: &mut String, key: &str, value: Value<'_>, expect: Option<u64>) {
    out.push(' ');
    out.push_str(key);
    out.push('=');
    let _ = match (value, expect) {
        (Value::Str(v), _) => write!(out, "{v:?}"),
        (Value::Expect(_), Some(n)) => write!(out, "E{n}"),
        (v, _) => write!(out, "{v}"),
    };
}

/// The text line of an event in `ftpct replay`: the `ftpct events` line (for an event that
/// is only counted, its [`Sink::counted_line`]; for a kind with neither, its log prose), then
/// the event's [`Sink::note`]s as ` key=value` (as the log line writes them).
#[derive(Debug, Default)]
pub struct ReplayLine {
    /// The line so far (no newline).
    pub text: String,
    /// Replay's number of the event's expectation (`E<n>`).
    expect: Option<u64>,
    lined: bool,
}

impl ReplayLine {
    /// An empty line; `expect` is replay's number of the event's expectation.
    pub fn new(expect: Option<u64>) -> ReplayLine {
        ReplayLine {
            text: String::with_capacity(160),
            expect,
            lined: false,
        }
    }

    fn put_line(&mut self, tag: &str, text: fmt::Arguments<'_>) {
        if !self.lined {
            let _ = write!(self.text, "{tag} {text}");
            self.lined = true;
        }
    }

    /// Adds ` key=value` after the line.
    pub fn extra(&mut self, key: &str, value: Value<'_>) {
        put_field(&mut self.text, key, value, self.expect);
    }
}

impl Sink for ReplayLine {
    fn begin(&mut self, _: &'static str, _: Level) -> bool {
        true
    }
    fn line(&mut self, tag: &'static str, text: fmt::Arguments<'_>) {
        self.put_line(tag, text);
    }
    fn counted_line(&mut self, tag: &'static str, text: fmt::Arguments<'_>) {
        self.put_line(tag, text);
    }
    fn message(&mut self, text: fmt::Arguments<'_>) {
        // Only for a kind of event that has neither line (every kind today has one).
        self.put_line("[EVENT]", text);
    }
    fn note(&mut self, key: &'static str, value: Value<'_>) {
        self.extra(key, value);
    }
}

/// `ftpct replay`'s record of `e` at `t` (seconds since the capture's first packet, a JSON
/// number), its expectation named `E<expect>`, with replay's `extras` after the event's own
/// fields: the text line (`t`, the [`ReplayLine`], the extras as ` key=value`) or the JSON
/// object (the [`JsonSink`]'s, with `"t"` and the extras as keys). No newline.
pub fn replay_record(
    e: &Event,
    now: Timestamp,
    t: &str,
    expect: Option<u64>,
    extras: &[Extra<'_>],
    json: bool,
) -> String {
    if json {
        let mut s = JsonSink::new(Some(t)).expect_named(expect);
        describe(e, now, &mut s);
        let mut o = s.obj;
        for (k, v) in extras {
            o = o.value(k, *v);
        }
        o.end()
    } else {
        let mut s = ReplayLine::new(expect);
        s.text.push_str(t);
        s.text.push(' ');
        describe(e, now, &mut s);
        for (k, v) in extras {
            s.extra(k, *v);
        }
        s.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SessionId;

    fn ct() -> CtTuples {
        CtTuples {
            original: FlowTuple::new(
                "10.0.0.2:40000".parse().unwrap(),
                "198.51.100.2:21".parse().unwrap(),
            ),
            reply: FlowTuple::new(
                "198.51.100.2:21".parse().unwrap(),
                "203.0.113.1:61000".parse().unwrap(),
            ),
        }
    }

    #[test]
    fn a_level_below_the_minimum_formats_nothing() {
        let e = Event::Message {
            id: SessionId(1),
            kind: MsgKind::Port,
            line: crate::engine::LineRef::NONE,
        };
        let mut log = LogLine::new(Level::Info);
        describe(&e, Timestamp::ZERO, &mut log);
        assert_eq!(log.level, Level::Debug);
        assert!(log.text.is_empty());
        assert_eq!(events_line(&e, Timestamp::ZERO), None);
        assert_eq!(
            json(&e, Timestamp::ZERO),
            "{\"type\":\"message\",\"session\":\"S1\",\"dir\":\"original\",\"kind\":\"port\"}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let o = JsonObject::typed("x")
            .display("a", "q\"b\\\n\u{1}")
            .str("b", "\t")
            .end();
        assert_eq!(
            o,
            "{\"type\":\"x\",\"a\":\"q\\\"b\\\\\\n\\u0001\",\"b\":\"\\t\"}"
        );
    }
    /// Every variant, for the pinned renderings.
    fn every_event() -> Vec<Event> {
        use crate::engine::{EndReason, RemoveReason, SegmentRefusal};
        use crate::expect::ExpectKind;
        use crate::packet::PacketError;
        use crate::parser::ParseError;
        use crate::policy::{HoldTimeoutAction, Refusal};
        use crate::types::{Hook, SessionId};
        use crate::window::Untrusted;
        use std::time::Duration;
        const S: u64 = 1_000_000_000;
        let id = SessionId(3);
        let exp = Expectation {
            master: id,
            kind: ExpectKind::Pasv227,
            src: "0.0.0.0".parse().unwrap(),
            dst: "203.0.113.1:50000".parse().unwrap(),
            nat_to: Some("10.0.0.2:50000".parse().unwrap()),
            created: Timestamp(10 * S),
            expires: Timestamp(310 * S),
        };
        let exp6 = Expectation {
            src: "2001:db8::2".parse().unwrap(),
            dst: "[2001:db8::1]:40000".parse().unwrap(),
            nat_to: None,
            kind: ExpectKind::Eprt,
            ..exp
        };
        let data = FlowTuple::new(
            "198.51.100.2:20".parse().unwrap(),
            "203.0.113.1:50000".parse().unwrap(),
        );
        vec![
            Event::SessionStart { id, ct: ct() },
            Event::SessionEnd {
                id,
                ct: ct(),
                reason: EndReason::Evicted,
            },
            Event::Message {
                id,
                kind: MsgKind::Reply227,
                line: crate::engine::LineRef::NONE,
            },
            Event::Rewritten {
                id,
                kind: ExpectKind::Port,
                from: "10.0.0.2:40000".parse().unwrap(),
                to: "203.0.113.1:61000".parse().unwrap(),
            },
            Event::ExpectCreated {
                id: ExpectId(5),
                exp,
            },
            Event::ExpectCreated {
                id: ExpectId(6),
                exp: exp6,
            },
            Event::ExpectUsed {
                id: ExpectId(5),
                exp,
                data,
            },
            Event::ExpectRemoved {
                id: ExpectId(6),
                exp: exp6,
                reason: RemoveReason::MasterGone,
            },
            Event::Refused {
                id,
                kind: ExpectKind::Eprt,
                addr: "192.0.2.9:2121".parse().unwrap(),
                reason: Refusal::ThirdParty {
                    advertised: "192.0.2.9".parse().unwrap(),
                    peer: "10.0.0.2".parse().unwrap(),
                },
            },
            Event::Refused {
                id,
                kind: ExpectKind::Port,
                addr: "10.0.0.2:22".parse().unwrap(),
                reason: Refusal::PrivilegedPort(22),
            },
            Event::ParseFailed {
                id,
                dir: Dir::Reply,
                kind: MsgKind::Reply229,
                error: ParseError::BadNumber,
                line: crate::engine::LineRef::NONE,
            },
            Event::TlsStarted { id },
            Event::LineTooLong {
                id,
                dir: Dir::Original,
            },
            Event::HoldTimedOut {
                id,
                dir: Dir::Original,
                held: 12,
                after: Duration::from_secs(5),
                action: HoldTimeoutAction::Keep,
            },
            Event::HoldTimedOut {
                id,
                dir: Dir::Reply,
                held: 7,
                after: Duration::from_secs(2),
                action: HoldTimeoutAction::Pass,
            },
            Event::NotRewritten {
                id,
                kind: ExpectKind::Epsv229,
            },
            Event::Resynced {
                id,
                dir: Dir::Reply,
            },
            Event::SegmentRefused {
                id,
                dir: Dir::Original,
                why: SegmentRefusal::Window(Untrusted::SeqAhead),
            },
            Event::SegmentRefused {
                id,
                dir: Dir::Reply,
                why: SegmentRefusal::Rst,
            },
            Event::Throttled {
                id,
                kind: "refused",
            },
            Event::Malformed {
                error: PacketError::NotTcp,
                len: 60,
                hook: Hook::PostConntrack,
            },
            Event::EvictionStarted {
                max_sessions: 100,
                protected_left: true,
            },
            Event::EvictionStarted {
                max_sessions: 100,
                protected_left: false,
            },
        ]
    }

    /// The `ftpct events` lines are those of the renderer this one replaced (byte for byte:
    /// tests and admins grep them); the log lines and JSON objects are pinned too.
    const PINNED: &[(Option<&str>, Level, &str, &str)] = &[
        (
            Some("[NEW] session S3 client=10.0.0.2:40000 server=198.51.100.2:21 reply=198.51.100.2:21 -> 203.0.113.1:61000"),
            Level::Info,
            "control session start session=S3 client=10.0.0.2:40000 server=198.51.100.2:21 nat=203.0.113.1:61000 <- 198.51.100.2:21",
            "{\"type\":\"session_start\",\"session\":\"S3\",\"original\":{\"src\":\"10.0.0.2:40000\",\"dst\":\"198.51.100.2:21\"},\"reply\":{\"src\":\"198.51.100.2:21\",\"dst\":\"203.0.113.1:61000\"},\"nat\":\"snat\",\"public\":\"203.0.113.1\"}",
        ),
        (
            Some("[DESTROY] session S3 client=10.0.0.2:40000 server=198.51.100.2:21 reply=198.51.100.2:21 -> 203.0.113.1:61000 reason=evicted"),
            Level::Info,
            "control session end session=S3 client=10.0.0.2:40000 server=198.51.100.2:21 nat=203.0.113.1:61000 <- 198.51.100.2:21 reason=\"evicted (session table full)\"",
            "{\"type\":\"session_end\",\"session\":\"S3\",\"reason\":\"evicted\",\"detail\":\"evicted (session table full)\"}",
        ),
        (
            None,
            Level::Debug,
            "message session=S3 kind=\"227\"",
            "{\"type\":\"message\",\"session\":\"S3\",\"dir\":\"reply\",\"kind\":\"227\"}",
        ),
        (
            Some("[REWRITE] session S3 port 10.0.0.2:40000 -> 203.0.113.1:61000"),
            Level::Info,
            "address rewritten session=S3 kind=\"port\" from=10.0.0.2:40000 to=203.0.113.1:61000",
            "{\"type\":\"rewrite\",\"session\":\"S3\",\"dir\":\"original\",\"kind\":\"port\",\"from\":\"10.0.0.2:40000\",\"to\":\"203.0.113.1:61000\"}",
        ),
        (
            Some("[NEW] 210 l3proto = 2 proto=6 src=0.0.0.0 dst=203.0.113.1 sport=0 dport=50000 ftp"),
            Level::Info,
            "expecting data connection session=S3 expectation=5 src=any dst=203.0.113.1:50000 nat_to=10.0.0.2:50000",
            "{\"type\":\"expect_created\",\"session\":\"S3\",\"expect\":5,\"kind\":\"227\",\"src\":\"any\",\"dst\":\"203.0.113.1:50000\",\"nat_to\":\"10.0.0.2:50000\",\"timeout\":300}",
        ),
        (
            Some("[NEW] 210 l3proto = 10 proto=6 src=2001:0db8:0000:0000:0000:0000:0000:0002 dst=2001:0db8:0000:0000:0000:0000:0000:0001 sport=0 dport=40000 ftp"),
            Level::Info,
            "expecting data connection session=S3 expectation=6 src=2001:db8::2 dst=[2001:db8::1]:40000 nat_to=-",
            "{\"type\":\"expect_created\",\"session\":\"S3\",\"expect\":6,\"kind\":\"eprt\",\"src\":\"2001:db8::2\",\"dst\":\"[2001:db8::1]:40000\",\"nat_to\":null,\"timeout\":300}",
        ),
        (
            Some("[USED] session S3 data=198.51.100.2:20 -> 203.0.113.1:50000 (expected dst=203.0.113.1:50000)"),
            Level::Info,
            "data connection admitted as RELATED session=S3 expectation=5 data=198.51.100.2:20 -> 203.0.113.1:50000",
            "{\"type\":\"expect_used\",\"session\":\"S3\",\"expect\":5,\"data\":{\"src\":\"198.51.100.2:20\",\"dst\":\"203.0.113.1:50000\"}}",
        ),
        (
            Some("[DESTROY] reason=master_gone 210 l3proto = 10 proto=6 src=2001:0db8:0000:0000:0000:0000:0000:0002 dst=2001:0db8:0000:0000:0000:0000:0000:0001 sport=0 dport=40000 ftp"),
            Level::Info,
            "expectation removed session=S3 expectation=6 dst=[2001:db8::1]:40000 reason=\"control session ended\"",
            "{\"type\":\"expect_removed\",\"session\":\"S3\",\"expect\":6,\"dst\":\"[2001:db8::1]:40000\",\"reason\":\"master_gone\",\"detail\":\"control session ended\"}",
        ),
        (
            Some("[REFUSED] session S3 eprt 192.0.2.9:2121: address 192.0.2.9 is not the control peer 10.0.0.2 (possible FTP bounce attack; set allow_third_party to permit)"),
            Level::Warn,
            "refused data address session=S3 kind=\"eprt\" addr=192.0.2.9:2121 reason=address 192.0.2.9 is not the control peer 10.0.0.2 (possible FTP bounce attack; set allow_third_party to permit)",
            "{\"type\":\"refused\",\"session\":\"S3\",\"dir\":\"original\",\"kind\":\"eprt\",\"addr\":\"192.0.2.9:2121\",\"reason\":\"bounce\",\"detail\":\"address 192.0.2.9 is not the control peer 10.0.0.2 (possible FTP bounce attack; set allow_third_party to permit)\"}",
        ),
        (
            Some("[REFUSED] session S3 port 10.0.0.2:22: privileged data port 22 (set allow_privileged_ports to permit)"),
            Level::Warn,
            "refused data address session=S3 kind=\"port\" addr=10.0.0.2:22 reason=privileged data port 22 (set allow_privileged_ports to permit)",
            "{\"type\":\"refused\",\"session\":\"S3\",\"dir\":\"original\",\"kind\":\"port\",\"addr\":\"10.0.0.2:22\",\"reason\":\"privileged_port\",\"detail\":\"privileged data port 22 (set allow_privileged_ports to permit)\"}",
        ),
        (
            Some("[WARN] session S3 reply 229: unparseable (malformed number)"),
            Level::Warn,
            "unparseable message let through unchanged session=S3 dir=\"reply\" kind=\"229\" error=malformed number",
            "{\"type\":\"parse_failed\",\"session\":\"S3\",\"dir\":\"reply\",\"kind\":\"229\",\"error\":\"bad_number\",\"detail\":\"malformed number\"}",
        ),
        (
            Some("[WARN] session S3: AUTH TLS, no longer inspected"),
            Level::Warn,
            "AUTH TLS accepted: the control channel is encrypted and no longer inspected; data connections of this session cannot be admitted (allow the server's passive port range in the firewall, or use plain FTP) session=S3",
            "{\"type\":\"tls_started\",\"session\":\"S3\"}",
        ),
        (
            Some("[WARN] session S3 original: line too long"),
            Level::Warn,
            "control line too long; skipped to its end session=S3 dir=\"original\"",
            "{\"type\":\"line_too_long\",\"session\":\"S3\",\"dir\":\"original\"}",
        ),
        (
            Some("[WARN] session S3 original: split line not complete after hold_timeout 5 s (12 bytes held, kept inside)"),
            Level::Warn,
            "a split PORT/EPRT/227/229 line did not complete within hold_timeout (5 s); its held part stays inside (hold_timeout_action = keep): it is still rewritten if the rest comes, never let through unrewritten session=S3 dir=\"original\" held_bytes=12",
            "{\"type\":\"hold_timeout\",\"session\":\"S3\",\"dir\":\"original\",\"held\":12,\"action\":\"keep\",\"timeout\":5}",
        ),
        (
            Some("[WARN] session S3 reply: split line not complete after hold_timeout 2 s (7 bytes held, let through)"),
            Level::Warn,
            "a split PORT/EPRT/227/229 line did not complete within hold_timeout (2 s); its held part is let through unchanged (hold_timeout_action = pass), the line will not be rewritten session=S3 dir=\"reply\" held_bytes=7",
            "{\"type\":\"hold_timeout\",\"session\":\"S3\",\"dir\":\"reply\",\"held\":7,\"action\":\"pass\",\"timeout\":2}",
        ),
        (
            Some("[WARN] session S3 229: could not be rewritten"),
            Level::Warn,
            "message needed a rewrite but its start had already been forwarded; the data connection will likely fail session=S3 kind=\"229\"",
            "{\"type\":\"not_rewritten\",\"session\":\"S3\",\"kind\":\"229\"}",
        ),
        (
            Some("[WARN] session S3 reply: bytes missed, resynchronised"),
            Level::Warn,
            "bytes of the control connection never reached ftpct (queue bypass?); tracking resumes at the next line session=S3 dir=\"reply\"",
            "{\"type\":\"resynced\",\"session\":\"S3\",\"dir\":\"reply\"}",
        ),
        (
            Some("[WARN] session S3 original: segment refused (seq_ahead): sequence number beyond the receiver's window"),
            Level::Warn,
            "segment refused and passed on untouched, no state changed: sequence number beyond the receiver's window (spoofed, or the kernel will mark it INVALID too; counted in packets_out_of_window, rst_ignored, synack_ignored) session=S3 dir=\"original\" why=\"seq_ahead\"",
            "{\"type\":\"segment_refused\",\"session\":\"S3\",\"dir\":\"original\",\"why\":\"seq_ahead\",\"detail\":\"sequence number beyond the receiver's window\"}",
        ),
        (
            Some("[WARN] session S3 reply: segment refused (rst_not_exact): RST with a sequence number other than the expected one (closes nothing)"),
            Level::Warn,
            "segment refused and passed on untouched, no state changed: RST with a sequence number other than the expected one (closes nothing) (spoofed, or the kernel will mark it INVALID too; counted in packets_out_of_window, rst_ignored, synack_ignored) session=S3 dir=\"reply\" why=\"rst_not_exact\"",
            "{\"type\":\"segment_refused\",\"session\":\"S3\",\"dir\":\"reply\",\"why\":\"rst_not_exact\",\"detail\":\"RST with a sequence number other than the expected one (closes nothing)\"}",
        ),
        (
            Some("[WARN] session S3: more refused events this second are not shown"),
            Level::Warn,
            "more than log_events_per_second refused events from this session in one second; the rest of this second's are not logged (counted in events_throttled) session=S3 kind=\"refused\"",
            "{\"type\":\"throttled\",\"session\":\"S3\",\"kind\":\"refused\"}",
        ),
        (
            Some("[WARN] malformed packet at post_conntrack (60 bytes): not TCP, accepted unchanged"),
            Level::Warn,
            "a queued packet is not a TCP/IP packet ftpct can read; accepted unchanged reason=not TCP bytes=60 hook=\"post_conntrack\"",
            "{\"type\":\"malformed\",\"hook\":\"post_conntrack\",\"bytes\":60,\"error\":\"not TCP\"}",
        ),
        (
            Some("[WARN] session table full (100): evicting idle sessions without offsets or expectations"),
            Level::Warn,
            "session table full: evicting the least recently active sessions without sequence offsets or expectations (raise max_sessions if this is normal load) max_sessions=100",
            "{\"type\":\"eviction_started\",\"max_sessions\":100,\"protected_left\":true}",
        ),
        (
            Some("[WARN] session table full (100): evicting sessions with offsets or expectations"),
            Level::Warn,
            "session table full and every evictable session has a sequence offset or an expectation: evicting the least recently active one, whose control connection may break (raise max_sessions, or look for a flood of control connections) max_sessions=100",
            "{\"type\":\"eviction_started\",\"max_sessions\":100,\"protected_left\":false}",
        ),
    ];

    #[test]
    fn every_event_renders_as_pinned() {
        let now = Timestamp(100 * 1_000_000_000);
        let events = every_event();
        assert_eq!(events.len(), PINNED.len());
        for (e, (line, level, log, js)) in events.iter().zip(PINNED) {
            assert_eq!(
                events_line(e, now).as_deref(),
                line.map(|l| format!("{l}\n")).as_deref(),
                "{e:?}"
            );
            let mut l = LogLine::new(Level::Debug);
            describe(e, now, &mut l);
            assert_eq!((l.level, l.text.as_str()), (*level, *log), "{e:?}");
            assert_eq!(json(e, now), *js, "{e:?}");
        }
    }

    /// The expectation number replay gives the event's expectation in these tests.
    fn replay_no(e: &Event) -> Option<u64> {
        match e {
            Event::ExpectCreated { id, .. }
            | Event::ExpectUsed { id, .. }
            | Event::ExpectRemoved { id, .. } => Some(id.0 + 10),
            _ => None,
        }
    }

    /// Replay's text line of every variant is its `ftpct events` line (or, for an event that
    /// is only counted, its counted line), then its notes, then replay's extras; its JSON
    /// object is the event's, with `"t"`, the expectation named `E<n>` and the extras.
    #[test]
    fn every_event_has_a_replay_line() {
        let now = Timestamp(100 * 1_000_000_000);
        let events = every_event();
        assert_eq!(events.len(), REPLAY_NOTES.len());
        for (e, notes) in events.iter().zip(REPLAY_NOTES) {
            let n = replay_no(e);
            let extras = [("line", Value::Str("PORT 1,2")), ("nat_dst", Value::None)];
            let text = replay_record(e, now, "1.500000", n, &extras, false);
            let head = match events_line(e, now) {
                Some(l) => l.trim_end().to_string(),
                None => "[MESSAGE] session S3 reply 227".to_string(),
            };
            assert_eq!(
                text,
                format!("1.500000 {head}{notes} line=\"PORT 1,2\" nat_dst=-"),
                "{e:?}"
            );
            let js = replay_record(e, now, "1.5", n, &extras, true);
            let mut want = json(e, now).replacen(
                &format!("{{\"type\":\"{}\"", js_type(e)),
                &format!("{{\"type\":\"{}\",\"t\":1.5", js_type(e)),
                1,
            );
            if let Some(n) = n {
                want = want.replacen(
                    &format!("\"expect\":{}", n - 10),
                    &format!("\"expect\":\"E{n}\""),
                    1,
                );
            }
            want.pop();
            want.push_str(",\"line\":\"PORT 1,2\",\"nat_dst\":null}");
            assert_eq!(js, want, "{e:?}");
        }
    }

    fn js_type(e: &Event) -> String {
        let j = json(e, Timestamp::ZERO);
        j.split('"').nth(3).unwrap_or_default().to_string()
    }

    /// What replay's line of each event of [`every_event`] shows after its `ftpct events` line.
    const REPLAY_NOTES: &[&str] = &[
        " nat=\"snat\" public=203.0.113.1",
        "",
        "",
        "",
        " session=S3 expect=E15 kind=\"227\" nat_to=10.0.0.2:50000",
        " session=S3 expect=E16 kind=\"eprt\" nat_to=-",
        " expect=E15",
        " session=S3 expect=E16",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
    ];
}
