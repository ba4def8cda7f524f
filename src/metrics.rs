//! Prometheus text exposition of the daemon's counters (opt-in: `metrics = ADDR` in the config
//! or `--metrics ADDR`). Names follow node_exporter's conntrack metrics
//! (`node_nf_conntrack_entries`, ...): `ftpct_` prefix, `_total` on counters, base units.
//!
//! Rendering is a pure function of the counters, so it is unit-tested; `daemon.rs` serves it.

use std::fmt::Write as _;

use crate::engine::Stats;

/// Sub-buckets per power of two: 8, so a bucket is at most 12.5 % wide.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for every `u64`.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Per-packet processing time (queue in → verdict issued) in nanoseconds, log-linear buckets (as
/// HdrHistogram with 3 significant bits): below 8 ns one bucket per value, then each power of
/// two split into 8 equal buckets. Quantiles are within 12.5 % of the true value; recording is
/// a few integer operations and never allocates.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Box<[u64; BUCKETS]>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Box::new([0; BUCKETS]),
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

/// The bucket of a sample.
fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let shift = 63 - ns.leading_zeros() - SUB_BITS;
    (shift as usize + 1) * SUB + ((ns >> shift) as usize & (SUB - 1))
}

/// The first value above bucket `i` (its exclusive upper bound).
fn bucket_end(i: usize) -> u64 {
    if i < SUB {
        return i as u64 + 1;
    }
    let shift = (i / SUB - 1) as u32;
    let top = (SUB + i % SUB) as u64 + 1;
    top.checked_shl(shift).unwrap_or(u64::MAX)
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        if let Some(x) = self.buckets.get_mut(bucket_of(ns)) {
            *x += 1;
        }
        self.count += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }
    /// An upper bound of quantile `q` (0..=1), in ns: the end of the bucket that holds it,
    /// never above the largest sample.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return bucket_end(i).saturating_sub(1).min(self.max_ns);
            }
        }
        self.max_ns
    }
    /// Samples below `2^exp` ns.
    fn below_pow2(&self, exp: u32) -> u64 {
        let end = if exp <= SUB_BITS {
            1usize << exp
        } else {
            (exp - SUB_BITS + 1) as usize * SUB
        };
        self.buckets.iter().take(end).sum()
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn max(&self) -> u64 {
        self.max_ns
    }
}

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
    /// State file records refused at the restore ([`crate::restore`]).
    pub state_refused: u64,
    /// Restored sessions forgotten because their tuple now belongs to another connection.
    pub restored_replaced: u64,
    /// Unknown packets not looked up ([`crate::lookup`]): found missing a moment ago, or
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

/// Everything a scrape shows.
pub struct Snapshot<'a> {
    pub engine: &'a Stats,
    pub shell: &'a ShellStats,
    pub latency: &'a Histogram,
    pub sessions: usize,
    pub expectations: usize,
    /// The kernel's drops on our queue: (queue full, netlink socket full).
    pub kernel_queue_drops: (u64, u64),
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// The exposition text (format version 0.0.4).
pub fn render(s: &Snapshot<'_>) -> String {
    let e = s.engine;
    let k = s.shell;
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "ftpct_sessions",
        "gauge",
        "FTP control connections tracked.",
        &[("", s.sessions as u64)],
    );
    metric(
        &mut out,
        "ftpct_expectations",
        "gauge",
        "Expected data connections (like node_nf_conntrack_entries for the expect table).",
        &[("", s.expectations as u64)],
    );
    metric(
        &mut out,
        "ftpct_packets_total",
        "counter",
        "Queued packets by verdict.",
        &[
            ("verdict=\"accepted\"", e.packets_accepted),
            ("verdict=\"modified\"", e.packets_modified),
            ("verdict=\"dropped_held\"", e.packets_dropped_held),
            ("verdict=\"dropped_out_of_order\"", e.packets_dropped_ooo),
        ],
    );
    metric(
        &mut out,
        "ftpct_packets_malformed_total",
        "counter",
        "Queued packets that were not TCP/IP.",
        &[("", e.packets_malformed)],
    );
    let kinds = [
        "port", "eprt", "pasv", "epsv", "227", "229", "auth_tls", "234",
    ];
    let labels: Vec<String> = kinds.iter().map(|k| format!("type=\"{k}\"")).collect();
    let samples: Vec<(&str, u64)> = labels
        .iter()
        .zip(e.messages.iter())
        .map(|(l, v)| (l.as_str(), *v))
        .collect();
    metric(
        &mut out,
        "ftpct_messages_total",
        "counter",
        "FTP messages parsed, by type.",
        &samples,
    );
    metric(
        &mut out,
        "ftpct_rewrites_total",
        "counter",
        "Addresses rewritten for NAT.",
        &[("", e.rewrites)],
    );
    metric(
        &mut out,
        "ftpct_expectations_total",
        "counter",
        "Expectation events.",
        &[
            ("event=\"created\"", e.expect_created),
            ("event=\"used\"", e.expect_used),
            ("event=\"expired\"", e.expect_expired),
            ("event=\"evicted\"", e.expect_evicted),
        ],
    );
    metric(
        &mut out,
        "ftpct_expectations_refused_total",
        "counter",
        "Announced data addresses refused by policy.",
        &[
            ("reason=\"bounce\"", e.refused_bounce),
            ("reason=\"privileged_port\"", e.refused_privileged),
            ("reason=\"rate_limited\"", e.refused_rate_limited),
            ("reason=\"other\"", e.refused_other),
        ],
    );
    metric(
        &mut out,
        "ftpct_parse_failures_total",
        "counter",
        "PORT/EPRT/227/229 that could not be parsed.",
        &[("", e.parse_failures)],
    );
    metric(
        &mut out,
        "ftpct_tls_sessions_total",
        "counter",
        "Sessions that switched to TLS (not inspectable).",
        &[("", e.tls_sessions)],
    );
    metric(
        &mut out,
        "ftpct_lines_too_long_total",
        "counter",
        "Control lines over the length limit.",
        &[("", e.lines_too_long)],
    );
    metric(
        &mut out,
        "ftpct_sessions_started_total",
        "counter",
        "Control sessions tracked since start.",
        &[("", e.sessions_started)],
    );
    metric(
        &mut out,
        "ftpct_sessions_evicted_total",
        "counter",
        "Sessions evicted because the table was full.",
        &[("", e.sessions_evicted)],
    );
    metric(
        &mut out,
        "ftpct_kernel_queue_dropped_total",
        "counter",
        "Packets the kernel dropped on ftpct's queue (nfnetlink_queue queue_dropped/user_dropped).",
        &[
            ("reason=\"queue_full\"", s.kernel_queue_drops.0),
            ("reason=\"socket_full\"", s.kernel_queue_drops.1),
        ],
    );
    metric(
        &mut out,
        "ftpct_packets_untracked_total",
        "counter",
        "Control-port packets without a conntrack entry (ignored).",
        &[("", e.untracked)],
    );
    metric(
        &mut out,
        "ftpct_resyncs_total",
        "counter",
        "Streams resynchronised past bytes that never reached ftpct.",
        &[("", e.resyncs)],
    );
    metric(
        &mut out,
        "ftpct_segments_refused_total",
        "counter",
        "Segments of tracked sessions the kernel would not accept either (the trust model): \
         passed on untouched, no state changed.",
        &[
            ("reason=\"out_of_window\"", e.packets_out_of_window),
            ("reason=\"rst_not_exact\"", e.rst_ignored),
            ("reason=\"synack_on_live_session\"", e.synack_ignored),
            ("reason=\"resync_unacknowledged\"", e.resyncs_refused),
        ],
    );
    metric(
        &mut out,
        "ftpct_events_throttled_total",
        "counter",
        "Events not logged because of the per-session log throttle.",
        &[("", e.events_throttled)],
    );
    metric(
        &mut out,
        "ftpct_sessions_evicted_with_state_total",
        "counter",
        "Evicted sessions that had a sequence offset or a live expectation.",
        &[("", e.sessions_evicted_with_state)],
    );
    metric(
        &mut out,
        "ftpct_queue_overruns_total",
        "counter",
        "NFQUEUE overruns (ENOBUFS: the kernel dropped queued packets).",
        &[("", k.queue_overruns)],
    );
    metric(
        &mut out,
        "ftpct_kernel_errors_total",
        "counter",
        "Failed kernel requests.",
        &[
            ("op=\"verdict\"", k.verdict_errors),
            ("op=\"queue_receive\"", k.queue_errors),
            ("op=\"queue_poll\"", k.queue_poll_errors),
            ("op=\"ct_lookup\"", k.ct_lookup_errors),
            ("op=\"ct_create\"", k.ct_create_errors),
            ("op=\"ipset\"", k.ipset_errors),
            ("op=\"state_file\"", k.state_errors),
        ],
    );
    metric(
        &mut out,
        "ftpct_rules_missing",
        "gauge",
        "ftpct's own firewall rules found missing at the last rule check (0: all there, or not \
         checked: rule_check_interval = 0 or rules not in nf_tables).",
        &[("", k.rules_missing)],
    );
    metric(
        &mut out,
        "ftpct_conntrack_lookups_total",
        "counter",
        "Packets of unknown connections on the control ports: conntrack looked up, known \
         missing (negative cache), or over the per-second lookup budget (accepted untouched).",
        &[
            ("result=\"looked_up\"", k.ct_lookups),
            ("result=\"cached_missing\"", k.ct_lookups_cached),
            ("result=\"over_budget\"", k.ct_lookups_over_budget),
        ],
    );
    metric(
        &mut out,
        "ftpct_state_records_refused_total",
        "counter",
        "State file records refused at the restore (they break the engine's rules).",
        &[("", k.state_refused)],
    );
    metric(
        &mut out,
        "ftpct_restored_sessions_replaced_total",
        "counter",
        "Restored sessions dropped because another connection now has their tuple.",
        &[("", k.restored_replaced)],
    );
    metric(
        &mut out,
        "ftpct_metrics_connections_refused_total",
        "counter",
        "Connections of this endpoint closed: over the connection cap, or past the request deadline.",
        &[
            ("reason=\"limit\"", k.metrics_refused),
            ("reason=\"deadline\"", k.metrics_timeouts),
        ],
    );
    metric(
        &mut out,
        "ftpct_conntrack_created_total",
        "counter",
        "Data connection entries created through ctnetlink.",
        &[("", k.ct_created)],
    );
    // Latency histogram in seconds, cumulative buckets.
    let name = "ftpct_packet_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Per queued packet, from its receipt to its verdict being issued."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    // Powers of two from 256 ns to 128 ms: bucket boundaries of the histogram.
    for exp in 8..28u32 {
        let le = (1u64 << exp) as f64 / 1e9;
        let cum = s.latency.below_pow2(exp);
        let _ = writeln!(out, "{name}_bucket{{le=\"{le:e}\"}} {cum}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.latency.count);
    let _ = writeln!(out, "{name}_sum {:e}", s.latency.sum_ns as f64 / 1e9);
    let _ = writeln!(out, "{name}_count {}", s.latency.count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::default();
        for ns in [100u64, 200, 300, 5000, 100_000] {
            h.record(ns);
        }
        assert_eq!(h.count(), 5);
        // within one bucket (12.5 %) above the true value
        let p50 = h.quantile(0.5);
        assert!((300..=300 * 9 / 8).contains(&p50), "{p50}");
        assert_eq!(h.quantile(0.99), 100_000, "capped at the largest sample");
        assert_eq!(h.quantile(0.2), 103, "last value of 100's bucket [96, 104)");
        assert_eq!(h.max(), 100_000);
    }

    #[test]
    fn histogram_buckets_tile_the_range() {
        // every value falls in a bucket whose bounds contain it, buckets are contiguous, and
        // no bucket is wider than 1/8 of its start (beyond the exact ones below 8)
        let mut prev_end = 0u64;
        for i in 0..BUCKETS - 1 {
            let end = bucket_end(i);
            assert!(end > prev_end, "bucket {i}");
            assert_eq!(bucket_of(prev_end), i, "start of bucket {i}");
            assert_eq!(bucket_of(end - 1), i, "end of bucket {i}");
            if prev_end >= 8 {
                assert!(end - prev_end <= prev_end / 8, "bucket {i} too wide");
            }
            prev_end = end;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut h = Histogram::default();
        for ns in [0, 1, 255, 256, 257, 1 << 20, u64::MAX] {
            h.record(ns);
        }
        assert_eq!(h.below_pow2(8), 3);
        assert_eq!(h.below_pow2(9), 5);
        assert_eq!(h.below_pow2(21), 6);
    }

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
            latency: &h,
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
}
