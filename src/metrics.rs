//! Prometheus text exposition of the daemon's counters (opt-in: `metrics = ADDR` in the config
//! or `--metrics ADDR`). Names follow node_exporter's conntrack metrics
//! (`node_nf_conntrack_entries`, ...): `ftpct_` prefix, `_total` on counters, base units.
//!
//! This module holds the shell's counter table and gathers every counter's value; the writers
//! (and the latency [`Histogram`]) are the core's, pure functions of the rows
//! ([`stats::render_stats`], [`stats::render_exposition`]), so the output is unit-tested;
//! `daemon.rs` serves it.

use ftpct_core::Histogram;

use crate::stats::{self, Counter as C, Family, HistogramFamily, Kind, Row, Stats};

/// Counters of the I/O shell (kernel side).
#[derive(Clone, Debug, Default)]
pub struct ShellStats {
    pub queue_overruns: u64,
    /// Receive errors of the queue other than overruns that the daemon survives (a verdict the
    /// kernel refused, a message lost under memory pressure).
    pub queue_errors: u64,
    /// Failed readiness polls of the queue socket.
    pub queue_poll_errors: u64,
    pub verdict_errors: u64,
    pub ct_lookups: u64,
    pub ct_lookup_errors: u64,
    pub ct_created: u64,
    pub ct_create_errors: u64,
    pub ipset_errors: u64,
    pub state_errors: u64,
    /// Control connections on which a kernel conntrack helper was attached too.
    pub kernel_helper_seen: u64,
    /// Time spent in kernel work before verdicts, by kind (ns), and how often: where the
    /// latency of the packets that need it goes.
    pub ct_lookup_ns: u64,
    pub ct_create_ns: u64,
    /// Control connections marked (`seqadj_mark`), time spent, failures.
    pub ct_marked: u64,
    pub ct_mark_ns: u64,
    pub ct_mark_errors: u64,
    /// Marks found cleared by the periodic check (and set again).
    pub ct_marks_lost: u64,
    pub ipset_adds: u64,
    pub ipset_add_ns: u64,
    pub state_writes: u64,
    pub state_write_ns: u64,
    /// State file records refused at the restore (`ftpct_core::RestoreRefusal`).
    pub state_refused: u64,
    /// Restored sessions forgotten because their tuple now belongs to another connection.
    pub restored_replaced: u64,
    /// Unknown packets not looked up (`ftpct_core::Lookup`): found missing a moment ago, or
    /// beyond the second's budget (accepted untouched).
    pub ct_lookups_cached: u64,
    pub ct_lookups_over_budget: u64,
    /// Metrics connections refused (over the connection cap) and cut off (request deadline).
    pub metrics_refused: u64,
    pub metrics_timeouts: u64,
    /// Gauge: ftpct's own firewall rules (and nft base chains) found missing at the last rule
    /// check ([`crate::rulecheck`]).
    pub rules_missing: u64,
}

/// The latency histograms of the daemon.
#[derive(Clone, Copy)]
pub struct Latencies<'a> {
    /// Every queued packet, from its receipt to its verdict being issued.
    pub all: &'a Histogram,
    /// The packets that needed no kernel work before their verdict, and those that did.
    pub plain: &'a Histogram,
    pub work: &'a Histogram,
    /// The verdict call itself.
    pub verdict: &'a Histogram,
}

/// Everything `ftpct stats` and a scrape show.
pub struct Snapshot<'a> {
    pub engine: &'a Stats,
    pub shell: &'a ShellStats,
    pub latency: Latencies<'a>,
    pub sessions: usize,
    pub expectations: usize,
    /// The kernel's drops on our queue: (queue full, netlink socket full).
    pub kernel_queue_drops: (u64, u64),
}

/// How a counter of the shell is read.
type ShellRead = for<'a, 'b> fn(&'a Snapshot<'b>) -> u64;

const SESSIONS: Family = Family::single(
    "ftpct_sessions",
    Kind::Gauge,
    "FTP control connections tracked.",
);
const EXPECTATIONS: Family = Family::single(
    "ftpct_expectations",
    Kind::Gauge,
    "Expected data connections (like node_nf_conntrack_entries for the expect table).",
);
const KERNEL_QUEUE_DROPPED: Family = Family {
    name: "ftpct_kernel_queue_dropped_total",
    kind: Kind::Counter,
    help: "Packets the kernel dropped on ftpct's queue (nfnetlink_queue \
           queue_dropped/user_dropped).",
    label: "reason",
    values: &["queue_full", "socket_full"],
};
const QUEUE_OVERRUNS: Family = Family::single(
    "ftpct_queue_overruns_total",
    Kind::Counter,
    "NFQUEUE overruns (ENOBUFS: the kernel dropped queued packets).",
);
const KERNEL_ERRORS: Family = Family {
    name: "ftpct_kernel_errors_total",
    kind: Kind::Counter,
    help: "Failed kernel requests.",
    label: "op",
    values: &[
        "verdict",
        "queue_receive",
        "queue_poll",
        "ct_lookup",
        "ct_create",
        "ipset",
        "state_file",
    ],
};
const RULES_MISSING: Family = Family::single(
    "ftpct_rules_missing",
    Kind::Gauge,
    "ftpct's own firewall rules found missing at the last rule check (0: all there, or not \
     checked: rule_check_interval = 0 or rules not in nf_tables).",
);
const CONNTRACK_LOOKUPS: Family = Family {
    name: "ftpct_conntrack_lookups_total",
    kind: Kind::Counter,
    help: "Packets of unknown connections on the control ports: conntrack looked up, known \
           missing (negative cache), or over the per-second lookup budget (accepted untouched).",
    label: "result",
    values: &["looked_up", "cached_missing", "over_budget"],
};
const STATE_RECORDS_REFUSED: Family = Family::single(
    "ftpct_state_records_refused_total",
    Kind::Counter,
    "State file records refused at the restore (they break the engine's rules).",
);
const RESTORED_SESSIONS_REPLACED: Family = Family::single(
    "ftpct_restored_sessions_replaced_total",
    Kind::Counter,
    "Restored sessions dropped because another connection now has their tuple.",
);
const METRICS_CONNECTIONS_REFUSED: Family = Family {
    name: "ftpct_metrics_connections_refused_total",
    kind: Kind::Counter,
    help: "Connections of this endpoint closed: over the connection cap, or past the request \
           deadline.",
    label: "reason",
    values: &["limit", "deadline"],
};
const CONNTRACK_CREATED: Family = Family::single(
    "ftpct_conntrack_created_total",
    Kind::Counter,
    "Data connection entries created through ctnetlink.",
);

/// The families of the exposition, in its order (the latency histogram follows them).
static EXPOSITION: &[&Family] = &[
    &SESSIONS,
    &EXPECTATIONS,
    &stats::PACKETS,
    &stats::PACKETS_MALFORMED,
    &stats::MESSAGES,
    &stats::REWRITES,
    &stats::EXPECTATION_EVENTS,
    &stats::EXPECTATIONS_REFUSED,
    &stats::PARSE_FAILURES,
    &stats::TLS_SESSIONS,
    &stats::LINES_TOO_LONG,
    &stats::SESSIONS_STARTED,
    &stats::SESSIONS_EVICTED,
    &KERNEL_QUEUE_DROPPED,
    &stats::PACKETS_UNTRACKED,
    &stats::RESYNCS,
    &stats::SEGMENTS_REFUSED,
    &stats::EVENTS_THROTTLED,
    &stats::SESSIONS_EVICTED_WITH_STATE,
    &QUEUE_OVERRUNS,
    &KERNEL_ERRORS,
    &RULES_MISSING,
    &CONNTRACK_LOOKUPS,
    &STATE_RECORDS_REFUSED,
    &RESTORED_SESSIONS_REPLACED,
    &METRICS_CONNECTIONS_REFUSED,
    &CONNTRACK_CREATED,
];

/// The sizes of the engine's tables: the first lines of `ftpct stats`, before the engine's
/// counters ([`stats::COUNTERS`]).
static TABLES: &[stats::Counter<ShellRead>] = &[
    C::both("sessions", &SESSIONS, "", |s| s.sessions as u64),
    C::both("expectations", &EXPECTATIONS, "", |s| s.expectations as u64),
];

/// The shell's counters, gauges and latencies: the `ftpct stats` lines after the engine's.
static SHELL: &[stats::Counter<ShellRead>] = &[
    C::both("queue_overruns", &QUEUE_OVERRUNS, "", |s| {
        s.shell.queue_overruns
    }),
    C::both("queue_errors", &KERNEL_ERRORS, "queue_receive", |s| {
        s.shell.queue_errors
    }),
    C::both("queue_poll_errors", &KERNEL_ERRORS, "queue_poll", |s| {
        s.shell.queue_poll_errors
    }),
    C::both("verdict_errors", &KERNEL_ERRORS, "verdict", |s| {
        s.shell.verdict_errors
    }),
    C::both("queue_dropped", &KERNEL_QUEUE_DROPPED, "queue_full", |s| {
        s.kernel_queue_drops.0
    }),
    C::both(
        "queue_user_dropped",
        &KERNEL_QUEUE_DROPPED,
        "socket_full",
        |s| s.kernel_queue_drops.1,
    ),
    C::both("ct_created", &CONNTRACK_CREATED, "", |s| s.shell.ct_created),
    C::stat("kernel_helper_seen", |s| s.shell.kernel_helper_seen),
    C::both("ct_create_errors", &KERNEL_ERRORS, "ct_create", |s| {
        s.shell.ct_create_errors
    }),
    C::both("ct_lookup_errors", &KERNEL_ERRORS, "ct_lookup", |s| {
        s.shell.ct_lookup_errors
    }),
    C::both("ipset_errors", &KERNEL_ERRORS, "ipset", |s| {
        s.shell.ipset_errors
    }),
    C::both("state_errors", &KERNEL_ERRORS, "state_file", |s| {
        s.shell.state_errors
    }),
    C::both("rules_missing", &RULES_MISSING, "", |s| {
        s.shell.rules_missing
    }),
    C::stat("latency_count", |s| s.latency.all.count()),
    C::stat("latency_p50_ns", |s| s.latency.all.quantile(0.5)),
    C::stat("latency_p99_ns", |s| s.latency.all.quantile(0.99)),
    C::stat("latency_max_ns", |s| s.latency.all.max()),
    C::stat("latency_plain_count", |s| s.latency.plain.count()),
    C::stat("latency_plain_p50_ns", |s| s.latency.plain.quantile(0.5)),
    C::stat("latency_plain_p99_ns", |s| s.latency.plain.quantile(0.99)),
    C::stat("latency_plain_max_ns", |s| s.latency.plain.max()),
    C::stat("latency_work_count", |s| s.latency.work.count()),
    C::stat("latency_work_p50_ns", |s| s.latency.work.quantile(0.5)),
    C::stat("latency_work_p99_ns", |s| s.latency.work.quantile(0.99)),
    C::stat("latency_work_max_ns", |s| s.latency.work.max()),
    C::stat("verdict_call_p50_ns", |s| s.latency.verdict.quantile(0.5)),
    C::stat("verdict_call_p99_ns", |s| s.latency.verdict.quantile(0.99)),
    C::both("ct_lookups", &CONNTRACK_LOOKUPS, "looked_up", |s| {
        s.shell.ct_lookups
    }),
    C::stat("ct_lookup_ns", |s| s.shell.ct_lookup_ns),
    C::stat("ct_create_ns", |s| s.shell.ct_create_ns),
    C::stat("ct_marked", |s| s.shell.ct_marked),
    C::stat("ct_mark_ns", |s| s.shell.ct_mark_ns),
    C::stat("ct_mark_errors", |s| s.shell.ct_mark_errors),
    C::stat("ct_marks_lost", |s| s.shell.ct_marks_lost),
    C::stat("ipset_adds", |s| s.shell.ipset_adds),
    C::stat("ipset_add_ns", |s| s.shell.ipset_add_ns),
    C::stat("state_writes", |s| s.shell.state_writes),
    C::stat("state_write_ns", |s| s.shell.state_write_ns),
    C::both("state_refused", &STATE_RECORDS_REFUSED, "", |s| {
        s.shell.state_refused
    }),
    C::both("restored_replaced", &RESTORED_SESSIONS_REPLACED, "", |s| {
        s.shell.restored_replaced
    }),
    C::both(
        "ct_lookups_cached",
        &CONNTRACK_LOOKUPS,
        "cached_missing",
        |s| s.shell.ct_lookups_cached,
    ),
    C::both(
        "ct_lookups_over_budget",
        &CONNTRACK_LOOKUPS,
        "over_budget",
        |s| s.shell.ct_lookups_over_budget,
    ),
    C::both(
        "metrics_refused",
        &METRICS_CONNECTIONS_REFUSED,
        "limit",
        |s| s.shell.metrics_refused,
    ),
    C::both(
        "metrics_timeouts",
        &METRICS_CONNECTIONS_REFUSED,
        "deadline",
        |s| s.shell.metrics_timeouts,
    ),
];

/// The latency histogram of the exposition (after the families).
const PACKET_LATENCY: HistogramFamily = HistogramFamily {
    name: "ftpct_packet_latency_seconds",
    help: "Per queued packet, from its receipt to its verdict being issued.",
};

/// Every counter with its value, in `ftpct stats` order: the engine's table sizes, the
/// engine's counters, the shell's.
fn rows(s: &Snapshot<'_>) -> Vec<Row> {
    let engine = stats::COUNTERS.iter().map(|c| c.row(s.engine));
    TABLES
        .iter()
        .map(|c| c.row(s))
        .chain(engine)
        .chain(SHELL.iter().map(|c| c.row(s)))
        .collect()
}

/// The `ftpct stats` text: one `name value` line per counter.
pub fn render_stats(s: &Snapshot<'_>) -> String {
    stats::render_stats(&rows(s))
}

/// The exposition text (format version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    stats::render_exposition(EXPOSITION, &rows(s), &[(&PACKET_LATENCY, s.latency.all)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_valid_exposition_text() {
        let stats = Stats {
            packets_accepted: 10,
            rewrites: 3,
            refused_bounce: 1,
            ..Stats::default()
        };
        let mut h = Histogram::default();
        h.record(3_000);
        h.record(70_000);
        let text = render(&Snapshot {
            engine: &stats,
            shell: &ShellStats {
                rules_missing: 3,
                queue_errors: 2,
                queue_poll_errors: 1,
                ..ShellStats::default()
            },
            latency: Latencies {
                all: &h,
                plain: &h,
                work: &h,
                verdict: &h,
            },
            sessions: 2,
            expectations: 1,
            kernel_queue_drops: (4, 0),
        });
        assert!(text.contains("ftpct_packets_total{verdict=\"accepted\"} 10\n"));
        assert!(text.contains("ftpct_rewrites_total 3\n"));
        assert!(text.contains("ftpct_expectations_refused_total{reason=\"bounce\"} 1\n"));
        assert!(text.contains("ftpct_sessions 2\n"));
        assert!(text.contains("# TYPE ftpct_rules_missing gauge\nftpct_rules_missing 3\n"));
        assert!(text.contains("ftpct_kernel_queue_dropped_total{reason=\"queue_full\"} 4\n"));
        assert!(text.contains("ftpct_kernel_errors_total{op=\"queue_receive\"} 2\n"));
        assert!(text.contains("ftpct_kernel_errors_total{op=\"queue_poll\"} 1\n"));
        assert!(text.contains("ftpct_packet_latency_seconds_count 2\n"));
        assert!(text.contains("ftpct_packet_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        // every sample line is "name{labels} value" or "name value", and every name is declared
        let mut declared = std::collections::HashSet::new();
        let mut last_bucket = 0u64;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, value) = line.rsplit_once(' ').unwrap();
            let base = name.split('{').next().unwrap();
            let family = base
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(declared.contains(family), "undeclared {base}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            if base.ends_with("_bucket") {
                let v: u64 = value.parse().unwrap();
                assert!(v >= last_bucket, "buckets must be cumulative");
                last_bucket = v;
            }
        }
    }

    /// Distinct values in every counter: a wrong or missing source shows in the golden texts.
    fn golden_sample() -> (
        Stats,
        ShellStats,
        Histogram,
        Histogram,
        Histogram,
        Histogram,
    ) {
        let s = Stats {
            packets_accepted: 101,
            packets_modified: 102,
            packets_dropped_held: 103,
            packets_dropped_ooo: 104,
            packets_malformed: 105,
            messages: [201, 202, 203, 204, 205, 206, 207, 208],
            rewrites: 106,
            expect_created: 107,
            expect_used: 108,
            expect_expired: 109,
            expect_evicted: 110,
            refused_bounce: 111,
            refused_privileged: 112,
            refused_other: 113,
            parse_failures: 114,
            tls_sessions: 115,
            lines_too_long: 116,
            lines_held: 117,
            hold_timeouts: 118,
            hold_gave_up: 119,
            hold_acked: 120,
            resyncs: 121,
            sessions_started: 122,
            sessions_evicted: 123,
            syn_unmatched: 124,
            untracked: 125,
            events_dropped: 126,
            replies_unsolicited: 127,
            actions_dropped: 128,
            packets_out_of_window: 129,
            rst_ignored: 130,
            synack_ignored: 131,
            resyncs_refused: 132,
            refused_rate_limited: 133,
            events_throttled: 134,
            sessions_evicted_with_state: 135,
        };
        let k = ShellStats {
            queue_overruns: 301,
            queue_errors: 302,
            queue_poll_errors: 303,
            verdict_errors: 304,
            ct_lookups: 305,
            ct_lookup_errors: 306,
            ct_created: 307,
            ct_create_errors: 308,
            ipset_errors: 309,
            state_errors: 310,
            kernel_helper_seen: 311,
            ct_lookup_ns: 312,
            ct_create_ns: 313,
            ct_marked: 314,
            ct_mark_ns: 315,
            ct_mark_errors: 316,
            ct_marks_lost: 317,
            ipset_adds: 318,
            ipset_add_ns: 319,
            state_writes: 320,
            state_write_ns: 321,
            state_refused: 322,
            restored_replaced: 323,
            ct_lookups_cached: 324,
            ct_lookups_over_budget: 325,
            metrics_refused: 326,
            metrics_timeouts: 327,
            rules_missing: 328,
        };
        let hist = |samples: &[u64]| {
            let mut h = Histogram::default();
            for ns in samples {
                h.record(*ns);
            }
            h
        };
        (
            s,
            k,
            hist(&[100, 3_000, 70_000, 1_500_000]),
            hist(&[200, 5_000]),
            hist(&[900, 12_000, 400_000]),
            hist(&[50, 80, 20_000]),
        )
    }

    fn golden_texts() -> (String, String) {
        let (s, k, all, plain, work, verdict) = golden_sample();
        let snap = Snapshot {
            engine: &s,
            shell: &k,
            latency: Latencies {
                all: &all,
                plain: &plain,
                work: &work,
                verdict: &verdict,
            },
            sessions: 2,
            expectations: 3,
            kernel_queue_drops: (4, 5),
        };
        (render_stats(&snap), render(&snap))
    }

    /// Both outputs, byte for byte, as the hand-written lists before the tables rendered them
    /// (src/testdata, rendered from the same values).
    #[test]
    fn outputs_are_unchanged() {
        let (stats_text, metrics_text) = golden_texts();
        assert_eq!(stats_text, include_str!("testdata/ftpct-stats.txt"));
        assert_eq!(metrics_text, include_str!("testdata/metrics.prom"));
    }

    /// Every field of `ShellStats` (the literal in `golden_sample` names them all, without
    /// `..`) is read by exactly one row, like the engine's (`stats::tests`).
    #[test]
    fn every_shell_field_is_read_by_exactly_one_row() {
        let (s, k, all, plain, work, verdict) = golden_sample();
        let snap = Snapshot {
            engine: &s,
            shell: &k,
            latency: Latencies {
                all: &all,
                plain: &plain,
                work: &work,
                verdict: &verdict,
            },
            sessions: 0,
            expectations: 0,
            kernel_queue_drops: (0, 0),
        };
        let mut read: Vec<u64> = SHELL
            .iter()
            .map(|c| (c.read)(&snap))
            .filter(|v| (301..400).contains(v))
            .collect();
        read.sort_unstable();
        assert_eq!(read, (301..=328).collect::<Vec<u64>>());
    }

    /// The names of `ftpct stats` and the metric families, in order. A counter is added to
    /// the tables once, with both its names (or on purpose with one: `STATS_ONLY`,
    /// `METRICS_ONLY`), and this list with the golden texts says what changed.
    #[test]
    fn names_and_families() {
        const STATS: [&str; 81] = [
            "sessions",
            "expectations",
            "sessions_started",
            "sessions_evicted",
            "packets_accepted",
            "packets_modified",
            "packets_dropped_held",
            "packets_dropped_out_of_order",
            "packets_malformed",
            "packets_untracked",
            "rewrites",
            "expect_created",
            "expect_used",
            "expect_expired",
            "expect_evicted",
            "refused_bounce",
            "refused_privileged",
            "refused_other",
            "parse_failures",
            "tls_sessions",
            "lines_too_long",
            "lines_held",
            "hold_gave_up",
            "hold_timeouts",
            "hold_acked",
            "resyncs",
            "syn_unmatched",
            "events_dropped",
            "actions_dropped",
            "replies_unsolicited",
            "packets_out_of_window",
            "rst_ignored",
            "synack_ignored",
            "resyncs_refused",
            "refused_rate_limited",
            "events_throttled",
            "sessions_evicted_with_state",
            "queue_overruns",
            "queue_errors",
            "queue_poll_errors",
            "verdict_errors",
            "queue_dropped",
            "queue_user_dropped",
            "ct_created",
            "kernel_helper_seen",
            "ct_create_errors",
            "ct_lookup_errors",
            "ipset_errors",
            "state_errors",
            "rules_missing",
            "latency_count",
            "latency_p50_ns",
            "latency_p99_ns",
            "latency_max_ns",
            "latency_plain_count",
            "latency_plain_p50_ns",
            "latency_plain_p99_ns",
            "latency_plain_max_ns",
            "latency_work_count",
            "latency_work_p50_ns",
            "latency_work_p99_ns",
            "latency_work_max_ns",
            "verdict_call_p50_ns",
            "verdict_call_p99_ns",
            "ct_lookups",
            "ct_lookup_ns",
            "ct_create_ns",
            "ct_marked",
            "ct_mark_ns",
            "ct_mark_errors",
            "ct_marks_lost",
            "ipset_adds",
            "ipset_add_ns",
            "state_writes",
            "state_write_ns",
            "state_refused",
            "restored_replaced",
            "ct_lookups_cached",
            "ct_lookups_over_budget",
            "metrics_refused",
            "metrics_timeouts",
        ];
        const FAMILIES: [&str; 28] = [
            "ftpct_sessions",
            "ftpct_expectations",
            "ftpct_packets_total",
            "ftpct_packets_malformed_total",
            "ftpct_messages_total",
            "ftpct_rewrites_total",
            "ftpct_expectations_total",
            "ftpct_expectations_refused_total",
            "ftpct_parse_failures_total",
            "ftpct_tls_sessions_total",
            "ftpct_lines_too_long_total",
            "ftpct_sessions_started_total",
            "ftpct_sessions_evicted_total",
            "ftpct_kernel_queue_dropped_total",
            "ftpct_packets_untracked_total",
            "ftpct_resyncs_total",
            "ftpct_segments_refused_total",
            "ftpct_events_throttled_total",
            "ftpct_sessions_evicted_with_state_total",
            "ftpct_queue_overruns_total",
            "ftpct_kernel_errors_total",
            "ftpct_rules_missing",
            "ftpct_conntrack_lookups_total",
            "ftpct_state_records_refused_total",
            "ftpct_restored_sessions_replaced_total",
            "ftpct_metrics_connections_refused_total",
            "ftpct_conntrack_created_total",
            "ftpct_packet_latency_seconds",
        ];
        // In `ftpct stats` only: internal timings, latency quantiles, holds, queue bounds.
        const STATS_ONLY: [&str; 33] = [
            "lines_held",
            "hold_gave_up",
            "hold_timeouts",
            "hold_acked",
            "syn_unmatched",
            "events_dropped",
            "actions_dropped",
            "replies_unsolicited",
            "kernel_helper_seen",
            "latency_count",
            "latency_p50_ns",
            "latency_p99_ns",
            "latency_max_ns",
            "latency_plain_count",
            "latency_plain_p50_ns",
            "latency_plain_p99_ns",
            "latency_plain_max_ns",
            "latency_work_count",
            "latency_work_p50_ns",
            "latency_work_p99_ns",
            "latency_work_max_ns",
            "verdict_call_p50_ns",
            "verdict_call_p99_ns",
            "ct_lookup_ns",
            "ct_create_ns",
            "ct_marked",
            "ct_mark_ns",
            "ct_mark_errors",
            "ct_marks_lost",
            "ipset_adds",
            "ipset_add_ns",
            "state_writes",
            "state_write_ns",
        ];
        // In the exposition only: the message counts by type.
        const METRICS_ONLY: [&str; 1] = ["ftpct_messages_total"];

        let (stats_text, metrics_text) = golden_texts();
        let names: Vec<&str> = stats_text
            .lines()
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(names, STATS);
        let families: Vec<&str> = metrics_text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(families, FAMILIES);

        let snap_rows = {
            let (s, k, all, plain, work, verdict) = golden_sample();
            rows(&Snapshot {
                engine: &s,
                shell: &k,
                latency: Latencies {
                    all: &all,
                    plain: &plain,
                    work: &work,
                    verdict: &verdict,
                },
                sessions: 0,
                expectations: 0,
                kernel_queue_drops: (0, 0),
            })
        };
        let stats_only: Vec<&str> = snap_rows
            .iter()
            .filter(|r| r.sample.is_none())
            .filter_map(|r| r.stat)
            .collect();
        assert_eq!(stats_only, STATS_ONLY, "rows not exposed");
        let mut metrics_only: Vec<&str> = snap_rows
            .iter()
            .filter(|r| r.stat.is_none())
            .filter_map(|r| r.sample.map(|m| m.family.name))
            .collect();
        metrics_only.dedup();
        assert_eq!(metrics_only, METRICS_ONLY, "rows not in `ftpct stats`");
        assert!(snap_rows
            .iter()
            .all(|r| r.stat.is_some() || r.sample.is_some()));
        // every sample of a family is one row's, and every family of a row is exposed
        for r in &snap_rows {
            if let Some(m) = r.sample {
                assert!(EXPOSITION.iter().any(|f| f.name == m.family.name));
                assert!(m.family.values.contains(&m.value), "{}", m.value);
            }
        }
        for f in EXPOSITION {
            for v in f.values {
                let n = snap_rows
                    .iter()
                    .filter(|r| {
                        r.sample
                            .is_some_and(|m| m.family.name == f.name && m.value == *v)
                    })
                    .count();
                assert_eq!(n, 1, "{} {v}", f.name);
            }
        }
    }
}
