//! The engine's counters ([`Stats`]), the one table that describes each of them
//! ([`COUNTERS`]): its name in `ftpct stats`, where it shows in the Prometheus exposition
//! (metric family, label value) and how to read it, and the two writers that render such
//! tables ([`render_stats`], [`render_exposition`]).
//!
//! The shell keeps a table of the same shape for its own counters (`src/metrics.rs`), and
//! both `ftpct stats` and the `/metrics` endpoint are generated from the two tables, so a
//! counter is declared once and cannot be shown by one and forgotten by the other. The order
//! of the `ftpct stats` lines is the order of the tables; the order of the exposition is the
//! shell's list of families, and within a family the order of [`Family::values`]. The shell
//! only gathers the values (each table's rows read with [`Counter::row`]) and serves the text.

use std::fmt::Write as _;

use crate::engine::MsgKind;
use crate::histogram::Histogram;

/// Counters for metrics. Monotonic except `sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets accepted unchanged.
    pub packets_accepted: u64,
    /// Packets accepted rewritten (payload, sequence or acknowledgement numbers).
    pub packets_modified: u64,
    /// Segments whose every byte was held (dropped when they carried no ACK either).
    pub packets_dropped_held: u64,
    /// Segments dropped after a gap (the sender retransmits in order).
    pub packets_dropped_ooo: u64,
    /// Queued packets that were not TCP/IP the engine can read.
    pub packets_malformed: u64,
    /// FTP messages parsed, indexed by [`MsgKind`] (`MsgKind as usize`).
    pub messages: [u64; 8],
    /// Announced addresses rewritten.
    pub rewrites: u64,
    /// Expectations created.
    pub expect_created: u64,
    /// Expectations that admitted their data connection.
    pub expect_used: u64,
    /// Expectations that expired unused.
    pub expect_expired: u64,
    /// Expectations evicted by a newer one (per-session limit).
    pub expect_evicted: u64,
    /// Announcements refused: not the control peer (FTP bounce).
    pub refused_bounce: u64,
    /// Announcements refused: a privileged data port.
    pub refused_privileged: u64,
    /// Announcements refused for another reason (family, no public port, table full, clash).
    pub refused_other: u64,
    /// Messages that could not be parsed (let through unchanged).
    pub parse_failures: u64,
    /// Sessions that went TLS (no longer inspected).
    pub tls_sessions: u64,
    /// Lines longer than `max_line` (not parsed).
    pub lines_too_long: u64,
    /// Partial lines held until their end (split PORT/EPRT/227/229).
    pub lines_held: u64,
    /// Holds that reached `hold_timeout` without the end of their line.
    pub hold_timeouts: u64,
    /// Held bytes let through unchanged (`hold_timeout_action = pass`).
    pub hold_gave_up: u64,
    /// Holds whose bytes ftpct acknowledged to a waiting sender on the receiver's behalf.
    pub hold_acked: u64,
    /// Resynchronisations after a gap that never filled.
    pub resyncs: u64,
    /// Sessions started (or picked up).
    pub sessions_started: u64,
    /// Sessions evicted from a full table.
    pub sessions_evicted: u64,
    /// Data SYNs queued that matched no expectation.
    pub syn_unmatched: u64,
    /// Control-port packets of flows the kernel has no conntrack entry for.
    pub untracked: u64,
    /// Events not queued because too many were waiting.
    pub events_dropped: u64,
    /// 227/229 replies that no PASV/EPSV asked for (taken all the same, as the kernel does).
    pub replies_unsolicited: u64,
    /// Actions not queued because `MAX_ACTIONS` were waiting (see
    /// [`crate::engine::Engine::poll_action`]).
    pub actions_dropped: u64,
    /// Segments of tracked sessions outside the TCP window: passed on untouched, no state
    /// changed (the trust model).
    pub packets_out_of_window: u64,
    /// RSTs whose sequence number was not the exact expected one: no session ended.
    pub rst_ignored: u64,
    /// SYN-ACKs on live sessions that answered no new SYN: no session replaced.
    pub synack_ignored: u64,
    /// Resynchronisations refused: the bytes before the segment were never acknowledged.
    pub resyncs_refused: u64,
    /// Announcements refused by the per-segment or per-second budget.
    pub refused_rate_limited: u64,
    /// Events not reported because of the per-session, per-kind log throttle.
    pub events_throttled: u64,
    /// Evictions that had to take a session with a sequence offset or a live expectation.
    pub sessions_evicted_with_state: u64,
}

impl Stats {
    /// The count of one kind of FTP message.
    pub fn message(&self, kind: MsgKind) -> u64 {
        self.messages.get(kind as usize).copied().unwrap_or(0)
    }
}

/// The Prometheus type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    /// As written on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A metric family of the exposition: its name, type and `# HELP` text, and its samples' label.
#[derive(Debug)]
pub struct Family {
    /// The family's name (`ftpct_..._total` for counters).
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// The label's name; `""` for a family of one sample without labels.
    pub label: &'static str,
    /// The label values of the family's samples, in the order they are exposed (`[""]` without
    /// a label). Each is the [`Sample::value`] of exactly one counter of the tables.
    pub values: &'static [&'static str],
}

impl Family {
    /// A family of one sample without labels.
    pub const fn single(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            label: "",
            values: &[""],
        }
    }
}

/// Where a counter shows in the exposition: one sample of a family.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// The family.
    pub family: &'static Family,
    /// The value of the family's label (`""` when it has none).
    pub value: &'static str,
}

/// One counter: its line in `ftpct stats` (if shown there), its sample in the exposition (if
/// exposed), and how to read its value (`read`, e.g. a `fn(&Stats) -> u64`).
#[derive(Debug)]
pub struct Counter<R> {
    /// Its name in `ftpct stats`, if it is shown there.
    pub stat: Option<&'static str>,
    /// Its sample in the exposition, if it is exposed.
    pub sample: Option<Sample>,
    /// How to read its value.
    pub read: R,
}

impl<R> Counter<R> {
    /// Shown in `ftpct stats` as `stat` and exposed as the `value` sample of `family`.
    pub const fn both(
        stat: &'static str,
        family: &'static Family,
        value: &'static str,
        read: R,
    ) -> Self {
        Counter {
            stat: Some(stat),
            sample: Some(Sample { family, value }),
            read,
        }
    }

    /// Shown in `ftpct stats` only.
    pub const fn stat(stat: &'static str, read: R) -> Self {
        Counter {
            stat: Some(stat),
            sample: None,
            read,
        }
    }

    /// Exposed only.
    pub const fn metric(family: &'static Family, value: &'static str, read: R) -> Self {
        Counter {
            stat: None,
            sample: Some(Sample { family, value }),
            read,
        }
    }
}

impl<R> Counter<R> {
    /// This counter with its value read from `src`: a `ftpct stats` line and/or a sample.
    pub fn row<T: ?Sized>(&self, src: &T) -> Row
    where
        R: Fn(&T) -> u64,
    {
        Row {
            stat: self.stat,
            sample: self.sample,
            value: (self.read)(src),
        }
    }
}

/// One counter with its value, as the writers take it.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// Its name in `ftpct stats`, if it is shown there.
    pub stat: Option<&'static str>,
    /// Its sample in the exposition, if it is exposed.
    pub sample: Option<Sample>,
    /// Its value.
    pub value: u64,
}

/// A histogram family of the exposition: its name and `# HELP` text (the samples are the
/// [`Histogram`]'s cumulative buckets, sum and count).
#[derive(Debug)]
pub struct HistogramFamily {
    /// The family's name, in base units (`..._seconds`).
    pub name: &'static str,
    /// The `# HELP` text.
    pub help: &'static str,
}

/// The `ftpct stats` text: one `name value` line per row that has a `ftpct stats` name, in
/// the order of `rows`.
pub fn render_stats(rows: &[Row]) -> String {
    let mut out = String::with_capacity(2048);
    for r in rows {
        if let Some(name) = r.stat {
            let _ = writeln!(out, "{name} {}", r.value);
        }
    }
    out
}

/// The Prometheus exposition text (format version 0.0.4): each family of `families` in its
/// order with the samples of `rows` that belong to it (in the order of [`Family::values`]),
/// then each histogram of `histograms`, in seconds.
pub fn render_exposition(
    families: &[&Family],
    rows: &[Row],
    histograms: &[(&HistogramFamily, &Histogram)],
) -> String {
    let mut out = String::with_capacity(4096);
    for f in families {
        family(&mut out, f, rows);
    }
    for (f, h) in histograms {
        histogram(&mut out, f, h);
    }
    out
}

/// One family: its `# HELP` and `# TYPE` lines and its samples.
fn family(out: &mut String, f: &Family, rows: &[Row]) {
    let name = f.name;
    let _ = writeln!(out, "# HELP {name} {}", f.help);
    let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
    for v in f.values {
        let found = rows.iter().find(|r| {
            r.sample
                .is_some_and(|m| m.family.name == name && m.value == *v)
        });
        let Some(r) = found else { continue };
        if f.label.is_empty() {
            let _ = writeln!(out, "{name} {}", r.value);
        } else {
            let _ = writeln!(out, "{name}{{{}=\"{v}\"}} {}", f.label, r.value);
        }
    }
}

/// A histogram in seconds, cumulative buckets.
fn histogram(out: &mut String, f: &HistogramFamily, h: &Histogram) {
    let name = f.name;
    let _ = writeln!(out, "# HELP {name} {}", f.help);
    let _ = writeln!(out, "# TYPE {name} histogram");
    // Powers of two from 256 ns to 128 ms: bucket boundaries of the histogram.
    for exp in 8..28u32 {
        let le = (1u64 << exp) as f64 / 1e9;
        let cum = h.below_pow2(exp);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le:e}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum {:e}", h.sum() as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {}", h.count());
}

/// How an engine counter is read.
pub type Read = fn(&Stats) -> u64;

use Kind::Counter as C;

/// The `ftpct_packets_total` metric family.
pub const PACKETS: Family = Family {
    name: "ftpct_packets_total",
    kind: C,
    help: "Queued packets by verdict.",
    label: "verdict",
    values: &[
        "accepted",
        "modified",
        "dropped_held",
        "dropped_out_of_order",
    ],
};
/// The `ftpct_packets_malformed_total` metric family.
pub const PACKETS_MALFORMED: Family = Family::single(
    "ftpct_packets_malformed_total",
    C,
    "Queued packets that were not TCP/IP.",
);
/// The `ftpct_messages_total` metric family.
pub const MESSAGES: Family = Family {
    name: "ftpct_messages_total",
    kind: C,
    help: "FTP messages parsed, by type.",
    label: "type",
    // MsgKind's labels, in the order of `Stats::messages` (a test checks it)
    values: &[
        "port", "eprt", "pasv", "epsv", "227", "229", "auth_tls", "234",
    ],
};
/// The `ftpct_rewrites_total` metric family.
pub const REWRITES: Family =
    Family::single("ftpct_rewrites_total", C, "Addresses rewritten for NAT.");
/// The `ftpct_expectations_total` metric family.
pub const EXPECTATION_EVENTS: Family = Family {
    name: "ftpct_expectations_total",
    kind: C,
    help: "Expectation events.",
    label: "event",
    values: &["created", "used", "expired", "evicted"],
};
/// The `ftpct_expectations_refused_total` metric family.
pub const EXPECTATIONS_REFUSED: Family = Family {
    name: "ftpct_expectations_refused_total",
    kind: C,
    help: "Announced data addresses refused by policy.",
    label: "reason",
    values: &["bounce", "privileged_port", "rate_limited", "other"],
};
/// The `ftpct_parse_failures_total` metric family.
pub const PARSE_FAILURES: Family = Family::single(
    "ftpct_parse_failures_total",
    C,
    "PORT/EPRT/227/229 that could not be parsed.",
);
/// The `ftpct_tls_sessions_total` metric family.
pub const TLS_SESSIONS: Family = Family::single(
    "ftpct_tls_sessions_total",
    C,
    "Sessions that switched to TLS (not inspectable).",
);
/// The `ftpct_lines_too_long_total` metric family.
pub const LINES_TOO_LONG: Family = Family::single(
    "ftpct_lines_too_long_total",
    C,
    "Control lines over the length limit.",
);
/// The `ftpct_sessions_started_total` metric family.
pub const SESSIONS_STARTED: Family = Family::single(
    "ftpct_sessions_started_total",
    C,
    "Control sessions tracked since start.",
);
/// The `ftpct_sessions_evicted_total` metric family.
pub const SESSIONS_EVICTED: Family = Family::single(
    "ftpct_sessions_evicted_total",
    C,
    "Sessions evicted because the table was full.",
);
/// The `ftpct_packets_untracked_total` metric family.
pub const PACKETS_UNTRACKED: Family = Family::single(
    "ftpct_packets_untracked_total",
    C,
    "Control-port packets without a conntrack entry (ignored).",
);
/// The `ftpct_resyncs_total` metric family.
pub const RESYNCS: Family = Family::single(
    "ftpct_resyncs_total",
    C,
    "Streams resynchronised past bytes that never reached ftpct.",
);
/// The `ftpct_segments_refused_total` metric family.
pub const SEGMENTS_REFUSED: Family = Family {
    name: "ftpct_segments_refused_total",
    kind: C,
    help: "Segments of tracked sessions the kernel would not accept either (the trust model): \
           passed on untouched, no state changed.",
    label: "reason",
    values: &[
        "out_of_window",
        "rst_not_exact",
        "synack_on_live_session",
        "resync_unacknowledged",
    ],
};
/// The `ftpct_events_throttled_total` metric family.
pub const EVENTS_THROTTLED: Family = Family::single(
    "ftpct_events_throttled_total",
    C,
    "Events not logged because of the per-session log throttle.",
);
/// The `ftpct_sessions_evicted_with_state_total` metric family.
pub const SESSIONS_EVICTED_WITH_STATE: Family = Family::single(
    "ftpct_sessions_evicted_with_state_total",
    C,
    "Evicted sessions that had a sequence offset or a live expectation.",
);

/// The engine's counters, in the order of their `ftpct stats` lines.
pub static COUNTERS: &[Counter<Read>] = &[
    Counter::both("sessions_started", &SESSIONS_STARTED, "", |s| {
        s.sessions_started
    }),
    Counter::both("sessions_evicted", &SESSIONS_EVICTED, "", |s| {
        s.sessions_evicted
    }),
    Counter::both("packets_accepted", &PACKETS, "accepted", |s| {
        s.packets_accepted
    }),
    Counter::both("packets_modified", &PACKETS, "modified", |s| {
        s.packets_modified
    }),
    Counter::both("packets_dropped_held", &PACKETS, "dropped_held", |s| {
        s.packets_dropped_held
    }),
    Counter::both(
        "packets_dropped_out_of_order",
        &PACKETS,
        "dropped_out_of_order",
        |s| s.packets_dropped_ooo,
    ),
    Counter::both("packets_malformed", &PACKETS_MALFORMED, "", |s| {
        s.packets_malformed
    }),
    Counter::metric(&MESSAGES, "port", |s| s.message(MsgKind::Port)),
    Counter::metric(&MESSAGES, "eprt", |s| s.message(MsgKind::Eprt)),
    Counter::metric(&MESSAGES, "pasv", |s| s.message(MsgKind::Pasv)),
    Counter::metric(&MESSAGES, "epsv", |s| s.message(MsgKind::Epsv)),
    Counter::metric(&MESSAGES, "227", |s| s.message(MsgKind::Reply227)),
    Counter::metric(&MESSAGES, "229", |s| s.message(MsgKind::Reply229)),
    Counter::metric(&MESSAGES, "auth_tls", |s| s.message(MsgKind::AuthTls)),
    Counter::metric(&MESSAGES, "234", |s| s.message(MsgKind::Reply234)),
    Counter::both("packets_untracked", &PACKETS_UNTRACKED, "", |s| s.untracked),
    Counter::both("rewrites", &REWRITES, "", |s| s.rewrites),
    Counter::both("expect_created", &EXPECTATION_EVENTS, "created", |s| {
        s.expect_created
    }),
    Counter::both("expect_used", &EXPECTATION_EVENTS, "used", |s| {
        s.expect_used
    }),
    Counter::both("expect_expired", &EXPECTATION_EVENTS, "expired", |s| {
        s.expect_expired
    }),
    Counter::both("expect_evicted", &EXPECTATION_EVENTS, "evicted", |s| {
        s.expect_evicted
    }),
    Counter::both("refused_bounce", &EXPECTATIONS_REFUSED, "bounce", |s| {
        s.refused_bounce
    }),
    Counter::both(
        "refused_privileged",
        &EXPECTATIONS_REFUSED,
        "privileged_port",
        |s| s.refused_privileged,
    ),
    Counter::both("refused_other", &EXPECTATIONS_REFUSED, "other", |s| {
        s.refused_other
    }),
    Counter::both("parse_failures", &PARSE_FAILURES, "", |s| s.parse_failures),
    Counter::both("tls_sessions", &TLS_SESSIONS, "", |s| s.tls_sessions),
    Counter::both("lines_too_long", &LINES_TOO_LONG, "", |s| s.lines_too_long),
    Counter::stat("lines_held", |s| s.lines_held),
    Counter::stat("hold_gave_up", |s| s.hold_gave_up),
    Counter::stat("hold_timeouts", |s| s.hold_timeouts),
    Counter::stat("hold_acked", |s| s.hold_acked),
    Counter::both("resyncs", &RESYNCS, "", |s| s.resyncs),
    Counter::stat("syn_unmatched", |s| s.syn_unmatched),
    Counter::stat("events_dropped", |s| s.events_dropped),
    Counter::stat("actions_dropped", |s| s.actions_dropped),
    Counter::stat("replies_unsolicited", |s| s.replies_unsolicited),
    Counter::both(
        "packets_out_of_window",
        &SEGMENTS_REFUSED,
        "out_of_window",
        |s| s.packets_out_of_window,
    ),
    Counter::both("rst_ignored", &SEGMENTS_REFUSED, "rst_not_exact", |s| {
        s.rst_ignored
    }),
    Counter::both(
        "synack_ignored",
        &SEGMENTS_REFUSED,
        "synack_on_live_session",
        |s| s.synack_ignored,
    ),
    Counter::both(
        "resyncs_refused",
        &SEGMENTS_REFUSED,
        "resync_unacknowledged",
        |s| s.resyncs_refused,
    ),
    Counter::both(
        "refused_rate_limited",
        &EXPECTATIONS_REFUSED,
        "rate_limited",
        |s| s.refused_rate_limited,
    ),
    Counter::both("events_throttled", &EVENTS_THROTTLED, "", |s| {
        s.events_throttled
    }),
    Counter::both(
        "sessions_evicted_with_state",
        &SESSIONS_EVICTED_WITH_STATE,
        "",
        |s| s.sessions_evicted_with_state,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of `Stats` with its own value. The literal lists every field (no `..`): a
    /// new field does not compile until it is given here, and the test below then fails until
    /// the field has its row in [`COUNTERS`].
    fn distinct() -> Stats {
        Stats {
            packets_accepted: 1,
            packets_modified: 2,
            packets_dropped_held: 3,
            packets_dropped_ooo: 4,
            packets_malformed: 5,
            messages: [6, 7, 8, 9, 10, 11, 12, 13],
            rewrites: 14,
            expect_created: 15,
            expect_used: 16,
            expect_expired: 17,
            expect_evicted: 18,
            refused_bounce: 19,
            refused_privileged: 20,
            refused_other: 21,
            parse_failures: 22,
            tls_sessions: 23,
            lines_too_long: 24,
            lines_held: 25,
            hold_timeouts: 26,
            hold_gave_up: 27,
            hold_acked: 28,
            resyncs: 29,
            sessions_started: 30,
            sessions_evicted: 31,
            syn_unmatched: 32,
            untracked: 33,
            events_dropped: 34,
            replies_unsolicited: 35,
            actions_dropped: 36,
            packets_out_of_window: 37,
            rst_ignored: 38,
            synack_ignored: 39,
            resyncs_refused: 40,
            refused_rate_limited: 41,
            events_throttled: 42,
            sessions_evicted_with_state: 43,
        }
    }

    #[test]
    fn every_field_is_read_by_exactly_one_counter() {
        let s = distinct();
        let mut read: Vec<u64> = COUNTERS.iter().map(|c| (c.read)(&s)).collect();
        read.sort_unstable();
        assert_eq!(read, (1..=43).collect::<Vec<u64>>());
    }

    #[test]
    fn every_counter_is_shown_somewhere() {
        for c in COUNTERS {
            assert!(c.stat.is_some() || c.sample.is_some(), "{c:?}");
        }
        let mut names: Vec<_> = COUNTERS.iter().filter_map(|c| c.stat).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a `ftpct stats` name used twice");
    }

    #[test]
    fn every_sample_is_declared_by_its_family_once() {
        for c in COUNTERS {
            let Some(sm) = c.sample else { continue };
            assert!(sm.family.values.contains(&sm.value), "{c:?}");
            let rows = COUNTERS
                .iter()
                .filter_map(|d| d.sample)
                .filter(|d| d.family.name == sm.family.name && d.value == sm.value)
                .count();
            assert_eq!(rows, 1, "{c:?}");
            for v in sm.family.values {
                assert!(
                    COUNTERS
                        .iter()
                        .filter_map(|d| d.sample)
                        .any(|d| d.family.name == sm.family.name && d.value == *v),
                    "{} {v} has no counter",
                    sm.family.name
                );
            }
            assert_eq!(sm.family.label.is_empty(), sm.family.values == [""]);
        }
    }

    #[test]
    fn message_labels_are_the_message_kinds() {
        use MsgKind::*;
        let kinds = [
            Port, Eprt, Pasv, Epsv, Reply227, Reply229, AuthTls, Reply234,
        ];
        assert_eq!(kinds.len(), Stats::default().messages.len());
        for (i, k) in kinds.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(MESSAGES.values.get(i), Some(&k.label()));
        }
        assert_eq!(MESSAGES.values.len(), kinds.len());
    }

    /// The writers on a small table of their own: lines in row order, families in their
    /// order with their samples in the order of their values, a label only where declared.
    #[test]
    fn writers_render_rows_in_table_order() {
        const LABELLED: Family = Family {
            name: "t_things_total",
            kind: Kind::Counter,
            help: "Things.",
            label: "kind",
            values: &["a", "b"],
        };
        const SINGLE: Family = Family::single("t_level", Kind::Gauge, "A level.");
        type ReadValues = fn(&[u64; 4]) -> u64;
        static TABLE: &[Counter<ReadValues>] = &[
            Counter::both("b_things", &LABELLED, "b", |v| v[0]),
            Counter::stat("hidden", |v| v[1]),
            Counter::metric(&LABELLED, "a", |v| v[2]),
            Counter::both("level", &SINGLE, "", |v| v[3]),
        ];
        let rows: Vec<Row> = TABLE.iter().map(|c| c.row(&[1, 2, 3, 4])).collect();
        assert_eq!(render_stats(&rows), "b_things 1\nhidden 2\nlevel 4\n");
        let mut h = Histogram::default();
        h.record(300);
        h.record(2_000_000_000);
        let latency = HistogramFamily {
            name: "t_seconds",
            help: "Time.",
        };
        let text = render_exposition(&[&SINGLE, &LABELLED], &rows, &[(&latency, &h)]);
        let head = "# HELP t_level A level.\n# TYPE t_level gauge\nt_level 4\n\
                    # HELP t_things_total Things.\n# TYPE t_things_total counter\n\
                    t_things_total{kind=\"a\"} 3\nt_things_total{kind=\"b\"} 1\n\
                    # HELP t_seconds Time.\n# TYPE t_seconds histogram\n\
                    t_seconds_bucket{le=\"2.56e-7\"} 0\nt_seconds_bucket{le=\"5.12e-7\"} 1\n";
        assert!(text.starts_with(head), "{text}");
        let tail = "t_seconds_bucket{le=\"1.34217728e-1\"} 1\nt_seconds_bucket{le=\"+Inf\"} 2\n\
                    t_seconds_sum 2.0000003e0\nt_seconds_count 2\n";
        assert!(text.ends_with(tail), "{text}");
    }
}
