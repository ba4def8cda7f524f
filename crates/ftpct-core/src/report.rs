//! The records of `ftpct replay`'s report that are not events: the capture line, replay's
//! warnings, and at the end of the capture the sequence offsets of each session, the
//! expectations still pending and the summary.
//!
//! Like [`crate::render::describe`] for events, each `describe_*` function is the one
//! description of its record: its name (the JSON `type`), its text sentence
//! ([`Sink::message`]) and its JSON fields ([`Sink::record_field`]); [`Record`] names one
//! record, [`render`] writes its text or JSON. Nothing here does I/O.

use std::fmt;
use std::net::IpAddr;

use crate::expect::Expectation;
use crate::render::{AnyIp, JsonSink, Level, Sink, Value};
use crate::types::{SessionId, Timestamp};

/// Container format of a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic pcap.
    #[default]
    Pcap,
    /// pcapng.
    PcapNg,
}

impl CaptureFormat {
    /// `pcap` or `pcapng`.
    pub fn label(self) -> &'static str {
        match self {
            CaptureFormat::Pcap => "pcap",
            CaptureFormat::PcapNg => "pcapng",
        }
    }
}

/// Counts of one replay (also printed as the last record).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The capture's container format.
    pub format: CaptureFormat,
    /// Packet records in the capture.
    pub packets_read: u64,
    /// Skipped: link type not supported.
    pub skipped_link: u64,
    /// Skipped: not IPv4 / IPv6 (ARP, LLDP, ...).
    pub skipped_non_ip: u64,
    /// Skipped: IP but not TCP.
    pub skipped_non_tcp: u64,
    /// Skipped: IP fragments (the engine sees reassembled packets only).
    pub skipped_fragment: u64,
    /// Skipped: malformed, or cut short by the capture's snap length.
    pub skipped_malformed: u64,
    /// Control sessions the engine tracked (the engine's `sessions_started`).
    pub sessions: u64,
    /// FTP messages the engine acted on (PORT, EPRT, PASV, EPSV, 227, 229, AUTH TLS, 234).
    pub messages: u64,
    /// Announced addresses rewritten.
    pub rewrites: u64,
    /// Expectations created.
    pub expect_created: u64,
    /// Expectations that admitted their data connection.
    pub expect_used: u64,
    /// Expectations that expired unused.
    pub expect_expired: u64,
    /// Expectations evicted, replaced or dropped with their session.
    pub expect_removed: u64,
    /// Announcements refused (every reason).
    pub refusals: u64,
    /// Messages that could not be parsed.
    pub parse_failures: u64,
    /// Messages that needed a rewrite but whose line had already been let through.
    pub not_rewritten: u64,
    /// Packets whose seq or payload the engine changed at the pre-conntrack hook.
    pub seq_adjusted: u64,
    /// Packets whose ack or SACK blocks the engine changed at the post-conntrack hook.
    pub ack_adjusted: u64,
    /// Packets the engine would have dropped (held partial line, out of order).
    pub dropped: u64,
}

impl Summary {
    /// Every skipped packet.
    pub fn packets_skipped(&self) -> u64 {
        self.skipped_link
            + self.skipped_non_ip
            + self.skipped_non_tcp
            + self.skipped_fragment
            + self.skipped_malformed
    }
}

/// The NAT replay models: its label (`none`, `snat`, `dnat`) and public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPlan {
    /// `none`, `snat` or `dnat`.
    pub label: &'static str,
    /// The public address (none without NAT).
    pub public: Option<IpAddr>,
}

/// A direction's sequence offset after its rewrites, and how many rewrite records it has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// The offset after the last rewrite.
    pub after: i32,
    /// Rewrite records.
    pub rewrites: usize,
}

/// The end-of-capture record of one session.
#[derive(Clone, Copy, Debug)]
pub struct SeqRecord {
    /// The session.
    pub session: SessionId,
    /// `open`, `closing` or the label of why it ended.
    pub state: &'static str,
    /// Offsets of the client's and the server's stream.
    pub offsets: [Offsets; 2],
    /// Packets seq/payload adjusted (pre-conntrack).
    pub seq_adjusted: u64,
    /// Packets ack-adjusted (post-conntrack).
    pub ack_adjusted: u64,
    /// Packets dropped.
    pub dropped: u64,
}

/// `+3`, `-4`, `+0`.
struct Signed(i32);

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 0 {
            write!(f, "+{}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// `snat 203.0.113.1`, `none`.
struct NatText(NatPlan);

impl fmt::Display for NatText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.public {
            Some(ip) => write!(f, "{} {ip}", self.0.label),
            None => f.write_str(self.0.label),
        }
    }
}

fn opt_ip(ip: &Option<IpAddr>) -> Value<'_> {
    match ip {
        Some(ip) => Value::Display(ip),
        None => Value::None,
    }
}

/// The first record: the capture's format, the NAT replayed and the control ports.
pub fn describe_capture(format: CaptureFormat, nat: NatPlan, ports: &[u16], s: &mut impl Sink) {
    s.begin("capture", Level::Info);
    s.message(format_args!(
        "capture {}, nat {}, control ports {}",
        format.label(),
        NatText(nat),
        Value::Ports(ports)
    ));
    s.record_field("format", Value::Str(format.label()));
    s.record_field("nat", Value::Str(nat.label));
    s.record_field("public", opt_ip(&nat.public));
    s.record_field("ports", Value::Ports(ports));
}

/// A warning of replay's (a session replayed without NAT, a broken capture), at `t`.
pub fn describe_warning(t: &str, session: Option<SessionId>, msg: &str, s: &mut impl Sink) {
    s.begin("warning", Level::Warn);
    match session {
        Some(sid) => s.message(format_args!("{t} {sid} warning: {msg}")),
        None => s.message(format_args!("{t} warning: {msg}")),
    }
    match &session {
        Some(sid) => s.record_field("session", Value::Display(sid)),
        None => s.record_field("session", Value::None),
    }
    s.record_field("message", Value::Str(msg));
}

/// A session's sequence offsets and fix-up counts at the end of the capture.
pub fn describe_seq(r: &SeqRecord, s: &mut impl Sink) {
    use Value::U64;
    s.begin("seq", Level::Info);
    let [o, p] = r.offsets;
    s.message(format_args!(
        "{} seq offsets: original {} ({} rewrites), reply {} ({} rewrites); {} packets \
         seq/payload adjusted, {} acks adjusted, {} dropped; {}",
        r.session,
        Signed(o.after),
        o.rewrites,
        Signed(p.after),
        p.rewrites,
        r.seq_adjusted,
        r.ack_adjusted,
        r.dropped,
        r.state
    ));
    s.record_field("session", Value::Display(&r.session));
    s.record_field("state", Value::Str(r.state));
    s.record_field("original_offset", Value::I64(i64::from(o.after)));
    s.record_field("original_rewrites", U64(o.rewrites as u64));
    s.record_field("reply_offset", Value::I64(i64::from(p.after)));
    s.record_field("reply_rewrites", U64(p.rewrites as u64));
    s.record_field("seq_adjusted", U64(r.seq_adjusted));
    s.record_field("ack_adjusted", U64(r.ack_adjusted));
    s.record_field("dropped", U64(r.dropped));
}

/// An expectation still live at the end of the capture (`now`), replay's number `n`.
pub fn describe_pending(n: u64, exp: &Expectation, now: Timestamp, s: &mut impl Sink) {
    s.begin("expect_pending", Level::Info);
    let left = exp.expires.since(now).as_secs();
    s.message(format_args!(
        "{} expect E{n} {} still pending at the end: from {} to {}, {left}s left",
        exp.master,
        exp.kind.label(),
        AnyIp(exp.src),
        exp.dst
    ));
    s.record_field("session", Value::Display(&exp.master));
    s.record_field("expect", Value::Display(&format_args!("E{n}")));
    s.record_field("kind", Value::Str(exp.kind.label()));
    s.record_field("src", Value::Display(&AnyIp(exp.src)));
    s.record_field("dst", Value::Display(&exp.dst));
    match &exp.nat_to {
        Some(a) => s.record_field("nat_to", Value::Display(a)),
        None => s.record_field("nat_to", Value::None),
    }
    s.record_field("expires_in", Value::U64(left));
}

/// The last record: the counts, and whether the capture was read to its end.
pub fn describe_summary(m: &Summary, complete: bool, s: &mut impl Sink) {
    use Value::U64;
    s.begin("summary", Level::Info);
    s.message(format_args!(
        "summary: {} packets read, {} skipped (link {}, non-IP {}, non-TCP {}, fragments {}, \
         malformed {}); {} sessions, {} messages, {} rewrites; expectations {} created, {} \
         used, {} expired, {} removed; {} refusals, {} parse failures, {} not rewritten; {} \
         packets seq-adjusted, {} ack-adjusted, {} dropped",
        m.packets_read,
        m.packets_skipped(),
        m.skipped_link,
        m.skipped_non_ip,
        m.skipped_non_tcp,
        m.skipped_fragment,
        m.skipped_malformed,
        m.sessions,
        m.messages,
        m.rewrites,
        m.expect_created,
        m.expect_used,
        m.expect_expired,
        m.expect_removed,
        m.refusals,
        m.parse_failures,
        m.not_rewritten,
        m.seq_adjusted,
        m.ack_adjusted,
        m.dropped,
    ));
    s.record_field("format", Value::Str(m.format.label()));
    for (k, v) in [
        ("packets_read", m.packets_read),
        ("packets_skipped", m.packets_skipped()),
        ("skipped_link", m.skipped_link),
        ("skipped_non_ip", m.skipped_non_ip),
        ("skipped_non_tcp", m.skipped_non_tcp),
        ("skipped_fragment", m.skipped_fragment),
        ("skipped_malformed", m.skipped_malformed),
        ("sessions", m.sessions),
        ("messages", m.messages),
        ("rewrites", m.rewrites),
        ("expect_created", m.expect_created),
        ("expect_used", m.expect_used),
        ("expect_expired", m.expect_expired),
        ("expect_removed", m.expect_removed),
        ("refusals", m.refusals),
        ("parse_failures", m.parse_failures),
        ("not_rewritten", m.not_rewritten),
        ("seq_adjusted", m.seq_adjusted),
        ("ack_adjusted", m.ack_adjusted),
        ("dropped", m.dropped),
    ] {
        s.record_field(k, U64(v));
    }
    s.record_field("complete", Value::Bool(complete));
}

/// One record of the report.
#[derive(Clone, Copy, Debug)]
pub enum Record<'a> {
    /// The first record ([`describe_capture`]).
    Capture {
        /// The container format.
        format: CaptureFormat,
        /// The NAT replayed.
        nat: NatPlan,
        /// The control ports.
        ports: &'a [u16],
    },
    /// A warning ([`describe_warning`]).
    Warning {
        /// Seconds since the first packet (a JSON number).
        t: &'a str,
        /// The session it is about, if any.
        session: Option<SessionId>,
        /// The sentence.
        message: &'a str,
    },
    /// A session at the end ([`describe_seq`]).
    Seq(SeqRecord),
    /// An expectation still pending at `now`, replay's number `n` ([`describe_pending`]).
    Pending {
        /// Replay's number (`E<n>`).
        n: u64,
        /// The expectation.
        exp: Expectation,
        /// The end of the capture.
        now: Timestamp,
    },
    /// The last record ([`describe_summary`]).
    Summary {
        /// The counts.
        summary: &'a Summary,
        /// Whether the capture was read to its end.
        complete: bool,
    },
}

/// Tells `s` everything about `r`.
pub fn describe(r: &Record<'_>, s: &mut impl Sink) {
    match *r {
        Record::Capture { format, nat, ports } => describe_capture(format, nat, ports, s),
        Record::Warning {
            t,
            session,
            message,
        } => describe_warning(t, session, message, s),
        Record::Seq(ref q) => describe_seq(q, s),
        Record::Pending { n, ref exp, now } => describe_pending(n, exp, now, s),
        Record::Summary { summary, complete } => describe_summary(summary, complete, s),
    }
}

/// Keeps the sentence of a record.
#[derive(Default)]
struct Sentence(String);

impl Sink for Sentence {
    fn begin(&mut self, _: &'static str, _: Level) -> bool {
        true
    }
    fn message(&mut self, text: fmt::Arguments<'_>) {
        use fmt::Write as _;
        let _ = self.0.write_fmt(text);
    }
}

/// The text line (its sentence) or the JSON object of `r` (a warning's with `"t"` after its
/// type). No newline.
pub fn render(r: &Record<'_>, json: bool) -> String {
    if json {
        let t = match r {
            Record::Warning { t, .. } => Some(*t),
            _ => None,
        };
        let mut s = JsonSink::new(t);
        describe(r, &mut s);
        s.obj.end()
    } else {
        let mut s = Sentence::default();
        describe(r, &mut s);
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::ExpectKind;

    #[test]
    fn every_record_renders_as_pinned() {
        const S: u64 = 1_000_000_000;
        let exp = Expectation {
            master: SessionId(1),
            kind: ExpectKind::Port,
            src: "203.0.113.2".parse().unwrap(),
            dst: "203.0.113.1:40002".parse().unwrap(),
            nat_to: Some("10.77.100.102:40002".parse().unwrap()),
            created: Timestamp(10 * S),
            expires: Timestamp(310 * S),
        };
        let summary = Summary {
            packets_read: 21,
            skipped_non_tcp: 1,
            sessions: 1,
            messages: 3,
            rewrites: 2,
            expect_created: 2,
            expect_expired: 1,
            refusals: 1,
            parse_failures: 1,
            seq_adjusted: 4,
            ack_adjusted: 4,
            ..Summary::default()
        };
        let nat = NatPlan {
            label: "snat",
            public: Some("203.0.113.1".parse().unwrap()),
        };
        let records = [
            Record::Capture {
                format: CaptureFormat::PcapNg,
                nat,
                ports: &[21, 2121],
            },
            Record::Warning {
                t: "0.010000",
                session: Some(SessionId(1)),
                message: "the --snat address is of another family than the session",
            },
            Record::Warning {
                t: "0.020000",
                session: None,
                message: "link type 147 is not supported; its frames are skipped",
            },
            Record::Seq(SeqRecord {
                session: SessionId(1),
                state: "closing",
                offsets: [
                    Offsets {
                        after: -4,
                        rewrites: 2,
                    },
                    Offsets::default(),
                ],
                seq_adjusted: 12,
                ack_adjusted: 11,
                dropped: 0,
            }),
            Record::Pending {
                n: 2,
                exp,
                now: Timestamp(11 * S),
            },
            Record::Summary {
                summary: &summary,
                complete: false,
            },
        ];
        let pinned = [
            (
                "capture pcapng, nat snat 203.0.113.1, control ports 21,2121",
                "{\"type\":\"capture\",\"format\":\"pcapng\",\"nat\":\"snat\",\"public\":\"203.0.113.1\",\"ports\":[21,2121]}",
            ),
            (
                "0.010000 S1 warning: the --snat address is of another family than the session",
                "{\"type\":\"warning\",\"t\":0.010000,\"session\":\"S1\",\"message\":\"the --snat address is of another family than the session\"}",
            ),
            (
                "0.020000 warning: link type 147 is not supported; its frames are skipped",
                "{\"type\":\"warning\",\"t\":0.020000,\"session\":null,\"message\":\"link type 147 is not supported; its frames are skipped\"}",
            ),
            (
                "S1 seq offsets: original -4 (2 rewrites), reply +0 (0 rewrites); 12 packets seq/payload adjusted, 11 acks adjusted, 0 dropped; closing",
                "{\"type\":\"seq\",\"session\":\"S1\",\"state\":\"closing\",\"original_offset\":-4,\"original_rewrites\":2,\"reply_offset\":0,\"reply_rewrites\":0,\"seq_adjusted\":12,\"ack_adjusted\":11,\"dropped\":0}",
            ),
            (
                "S1 expect E2 port still pending at the end: from 203.0.113.2 to 203.0.113.1:40002, 299s left",
                "{\"type\":\"expect_pending\",\"session\":\"S1\",\"expect\":\"E2\",\"kind\":\"port\",\"src\":\"203.0.113.2\",\"dst\":\"203.0.113.1:40002\",\"nat_to\":\"10.77.100.102:40002\",\"expires_in\":299}",
            ),
            (
                "summary: 21 packets read, 1 skipped (link 0, non-IP 0, non-TCP 1, fragments 0, malformed 0); 1 sessions, 3 messages, 2 rewrites; expectations 2 created, 0 used, 1 expired, 0 removed; 1 refusals, 1 parse failures, 0 not rewritten; 4 packets seq-adjusted, 4 ack-adjusted, 0 dropped",
                "{\"type\":\"summary\",\"format\":\"pcap\",\"packets_read\":21,\"packets_skipped\":1,\"skipped_link\":0,\"skipped_non_ip\":0,\"skipped_non_tcp\":1,\"skipped_fragment\":0,\"skipped_malformed\":0,\"sessions\":1,\"messages\":3,\"rewrites\":2,\"expect_created\":2,\"expect_used\":0,\"expect_expired\":1,\"expect_removed\":0,\"refusals\":1,\"parse_failures\":1,\"not_rewritten\":0,\"seq_adjusted\":4,\"ack_adjusted\":4,\"dropped\":0,\"complete\":false}",
            ),
        ];
        for (r, (text, js)) in records.iter().zip(pinned) {
            assert_eq!(render(r, false), text, "{r:?}");
            assert_eq!(render(r, true), js, "{r:?}");
        }
    }
}
