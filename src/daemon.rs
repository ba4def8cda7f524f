//! The I/O shell: feeds NFQUEUE packets to the [`Engine`], carries out its actions through
//! ctnetlink and ipset, answers the control socket, and handles signals and timers.
//!
//! One current-thread tokio runtime owns everything, so the engine needs no locks: the queue fd is
//! polled with `AsyncFd`, control clients are served by small tasks that ask the main loop for a
//! snapshot over a channel, and the engine's next deadline is a `sleep_until`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ftpct_core::Histogram;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::{self, Settings};
use crate::control::{self, Request};
use crate::ctnetlink::Ctnetlink;
use crate::driver::{Driver, Kernel};
use crate::engine::{Action, Conntrack, CtLookup, Engine, Event, Verdict};
use crate::ipset::{Ipset, SetFamily};
use crate::metrics::{self, ShellStats};
use crate::nfqueue::{NfQueue, Packet, QueueError, QueueOptions};
use crate::nftables::{NfTables, NftSets};
use crate::notify;
use crate::rulecheck::{Checker, Notice};
use crate::rules::RuleSpec;
use crate::state::StateFile;
use crate::types::{FlowTuple, Hook, Timestamp};
use ftpct_core::CtSeen;
use ftpct_core::{Lookup, LookupGuard};
use ftpct_core::{MarkCursor, Settled};

/// What `ftpct run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: Settings,
    /// The configuration file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// The command line's values, applied again over the file at each reload.
    pub overrides: config::Overrides,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Ct(#[from] crate::ctnetlink::CtError),
    #[error(transparent)]
    Ipset(#[from] crate::ipset::IpsetError),
    #[error(transparent)]
    Nft(#[from] crate::nftables::NftError),
    #[error(
        "control socket {path}: {source} (is another ftpct using it? choose another --socket)"
    )]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "control socket {path}: a {kind} is there, not a socket; ftpct only replaces a stale \
         socket of its own. Remove it if nothing needs it (rm {path}), or choose another path \
         (`socket =` in ftpct.conf, or --socket)", path = path.display()
    )]
    SocketPathTaken { path: PathBuf, kind: &'static str },
    #[error("metrics address {addr}: {source} (choose another `metrics` address or remove it)")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Privileges(#[from] crate::privs::PrivError),
    #[error("cannot start the event loop: {0}")]
    Runtime(std::io::Error),
    #[error(
        "the NFQUEUE socket failed {count} times in a row for {secs} s (last: {last}); exiting \
         with an error so that the supervisor restarts ftpct (systemd: Restart=on-failure). \
         Until then control packets are dropped (fail-closed rules) or pass without the ALG \
         (--bypass rules)"
    )]
    QueueFailing { count: u64, secs: u64, last: String },
}

/// How often at most a log line that may repeat on every packet is written.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A log line that may repeat on every packet (a malformed packet, a failed verdict, an
/// overrun): the first occurrence is logged, then at most one line per period, which says how
/// many occurrences it stands for (the counters in `ftpct stats` have them all).
#[derive(Clone, Debug)]
pub struct Throttle {
    every_ns: u64,
    last: Option<Timestamp>,
    pending: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every_ns: u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
            last: None,
            pending: 0,
        }
    }

    /// One occurrence at `now`. `Some(n)` when a line is due: `n` occurrences since the last
    /// line (this one included); `None` while the period since the last line runs.
    pub fn hit(&mut self, now: Timestamp) -> Option<u64> {
        self.pending += 1;
        match self.last {
            Some(t) if now.0.saturating_sub(t.0) < self.every_ns => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

/// Consecutive failures of the queue socket (receive errors with no packet in between, or
/// failed readiness polls): survived, with a pause now and then so that a persistent error
/// cannot spin the CPU, until they have lasted [`ErrorStreak::GIVE_UP`]; then the daemon exits
/// with an error and its supervisor restarts it (a fresh socket).
#[derive(Clone, Debug, Default)]
pub struct ErrorStreak {
    since: Option<Timestamp>,
    count: u64,
}

impl ErrorStreak {
    /// How long nothing but errors may last.
    pub const GIVE_UP: Duration = Duration::from_secs(5);
    /// At least this many errors before giving up (a flushed queue answers up to its length of
    /// refused verdicts in a row, quickly).
    pub const MIN_ERRORS: u64 = 64;

    /// The socket worked (a packet, or nothing to read).
    pub fn ok(&mut self) {
        self.since = None;
        self.count = 0;
    }

    /// One more error at `now`; true when the streak has lasted long enough to give up.
    pub fn error(&mut self, now: Timestamp) -> bool {
        let since = *self.since.get_or_insert(now);
        self.count += 1;
        self.count >= Self::MIN_ERRORS
            && Duration::from_nanos(now.0.saturating_sub(since.0)) >= Self::GIVE_UP
    }

    /// Errors in the streak.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Seconds since the streak began.
    pub fn secs(&self, now: Timestamp) -> u64 {
        self.since
            .map_or(0, |t| now.0.saturating_sub(t.0) / 1_000_000_000)
    }
}

/// Reads CLOCK_MONOTONIC, which keeps counting across a daemon restart.
pub fn monotonic_now() -> Timestamp {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => Timestamp(
            (ts.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec() as u64),
        ),
        Err(_) => Timestamp::ZERO,
    }
}

/// The set (ipset or nft set) of a data address's family.
fn set<'a>(s: &'a Settings, dst: &std::net::SocketAddr) -> &'a str {
    if dst.is_ipv4() {
        &s.ipset4
    } else {
        &s.ipset6
    }
}

/// Where the destinations of expected data connections go, so that their SYNs are queued: the
/// ipsets of the iptables backends, or the nft sets of `table inet ftpct` (`backend = nft`).
#[derive(Debug)]
enum DataSets {
    Ipset(Ipset),
    Nft(NftSets),
}

#[derive(Debug, thiserror::Error)]
enum SetError {
    #[error(transparent)]
    Ipset(#[from] crate::ipset::IpsetError),
    #[error(transparent)]
    Nft(#[from] crate::nftables::NftError),
}

impl DataSets {
    fn add(
        &mut self,
        set: &str,
        dst: std::net::SocketAddr,
        timeout_secs: u32,
    ) -> Result<(), SetError> {
        match self {
            DataSets::Ipset(i) => Ok(i.add(set, dst, timeout_secs)?),
            DataSets::Nft(n) => Ok(n.add(set, dst, timeout_secs)?),
        }
    }

    fn del(&mut self, set: &str, dst: std::net::SocketAddr) -> Result<(), SetError> {
        match self {
            DataSets::Ipset(i) => Ok(i.del(set, dst)?),
            DataSets::Nft(n) => Ok(n.del(set, dst)?),
        }
    }
}

/// The daemon's [`Kernel`] for the [`Driver`]: the real conntrack (ctnetlink), the data sets
/// (ipset or nft) and the state file, borrowed from the [`Shell`] for one packet (or one
/// timer). Its [`Conntrack`] is a ctnetlink GET for the first packet of an unknown control
/// connection, within the bounds of [`LookupGuard`] (a negative cache and a budget per
/// second; beyond them the packet is treated as untracked).
struct ShellKernel<'a> {
    ct: &'a mut Ctnetlink,
    sets: &'a mut DataSets,
    settings: &'a Settings,
    state: &'a mut Option<StateFile>,
    lookups: &'a mut LookupGuard,
    stats: &'a mut ShellStats,
    budget_log: &'a mut Throttle,
    now: Timestamp,
}

impl Conntrack for ShellKernel<'_> {
    fn lookup(&mut self, tuple: &FlowTuple, syn_ack: bool) -> CtLookup {
        let now = self.now;
        match self.lookups.check(tuple, syn_ack, now) {
            Lookup::KnownMissing => {
                self.stats.ct_lookups_cached += 1;
                CtLookup::Missing
            }
            Lookup::OverBudget => {
                self.over_budget(syn_ack);
                CtLookup::Missing
            }
            Lookup::Ask => self.ask(tuple),
        }
    }
}

impl ShellKernel<'_> {
    fn over_budget(&mut self, syn_ack: bool) {
        self.stats.ct_lookups_over_budget += 1;
        let Some(n) = self.budget_log.hit(self.now) else {
            return;
        };
        warn!(
            count = n,
            total = self.stats.ct_lookups_over_budget,
            syn_ack,
            budget = if syn_ack {
                ftpct_core::SYN_ACK_BUDGET
            } else {
                ftpct_core::LOOKUP_BUDGET
            },
            "more packets of unknown connections on the control ports than \
             conntrack lookups per second allowed (a flood of stray or spoofed \
             segments?): the rest are accepted untouched, and a new FTP session \
             among them is picked up at a later packet. Counted in \
             ct_lookups_over_budget; at most one line per {}s",
            LOG_EVERY.as_secs()
        );
    }

    fn ask(&mut self, tuple: &FlowTuple) -> CtLookup {
        self.stats.ct_lookups += 1;
        let t = Instant::now();
        let found = self.ct.get_entry(tuple);
        self.stats.ct_lookup_ns += t.elapsed().as_nanos() as u64;
        match found {
            Ok(Some(e)) => {
                self.lookups.found(tuple);
                if e.helper {
                    warn!(
                        flow = %tuple,
                        "a kernel conntrack helper is attached to this FTP control connection as well: \
                         both would rewrite it; remove the `-j CT --helper ftp` rule for these ports"
                    );
                    self.stats.kernel_helper_seen += 1;
                }
                CtLookup::Found {
                    tuples: e.tuples,
                    id: Some(e.id),
                }
            }
            Ok(None) => {
                self.lookups.found_missing(tuple, self.now);
                CtLookup::Missing
            }
            Err(e) => {
                self.stats.ct_lookup_errors += 1;
                warn!(error = %e, flow = %tuple, "conntrack lookup failed; tracking without NAT information");
                CtLookup::Missing
            }
        }
    }
}

impl Kernel for ShellKernel<'_> {
    fn run(&mut self, a: Action) {
        match a {
            Action::CreateRelated(entry) => {
                let t = Instant::now();
                self.create_related(&entry);
                self.stats.ct_create_ns += t.elapsed().as_nanos() as u64;
            }
            Action::WatchDst { dst, timeout_secs } => {
                let t = Instant::now();
                let r = self.sets.add(set(self.settings, &dst), dst, timeout_secs);
                self.stats.ipset_adds += 1;
                self.stats.ipset_add_ns += t.elapsed().as_nanos() as u64;
                if let Err(e) = r {
                    self.stats.ipset_errors += 1;
                    error!(error = %e, %dst, "cannot watch the data address; its SYN will not reach ftpct");
                }
            }
            Action::MarkAdjusted { original } => self.mark_adjusted(&original),
            Action::UnwatchDst { dst } => {
                if let Err(e) = self.sets.del(set(self.settings, &dst), dst) {
                    self.stats.ipset_errors += 1;
                    debug!(error = %e, %dst, "deleting a data address from its set failed");
                }
            }
        }
    }

    fn persist(&mut self, engine: &mut Engine) {
        if let Some(st) = self.state.as_mut() {
            let t = Instant::now();
            let r = st.append_from(engine);
            if let Ok(n) = r {
                if n > 0 {
                    self.stats.state_writes += 1;
                    self.stats.state_write_ns += t.elapsed().as_nanos() as u64;
                }
            }
            if let Err(e) = r {
                error!(error = %e, "cannot write the state file; continuing without it (a restart will lose sessions)");
                self.stats.state_errors += 1;
                *self.state = None;
            }
        } else {
            while engine.poll_journal().is_some() {}
        }
    }
}

impl ShellKernel<'_> {
    /// Marks a control connection that has a sequence offset (`seqadj_mark`), so that the
    /// post-conntrack rules queue its packets: from now on their acknowledgement numbers need
    /// mapping back. Without the mark those packets would pass unmapped and the connection
    /// would stall, so a failure is an error.
    fn mark_adjusted(&mut self, original: &FlowTuple) {
        let bits = self.settings.seqadj_mark;
        if bits == 0 {
            return;
        }
        let t = Instant::now();
        let r = self.ct.set_mark_bits(original, bits);
        self.stats.ct_marked += 1;
        self.stats.ct_mark_ns += t.elapsed().as_nanos() as u64;
        match r {
            Ok(true) => {}
            Ok(false) => debug!(flow = %original, "control connection gone before its mark"),
            Err(e) => {
                self.stats.ct_mark_errors += 1;
                error!(error = %e, flow = %original, mark = format_args!("{bits:#x}"),
                       "cannot mark the control connection: the post-conntrack rules will not \
                        queue it and its transfers after this rewrite will stall; check \
                        seqadj_mark, or set seqadj_mark = 0 and reinstall the rules");
            }
        }
    }

    /// Creates the data connection's conntrack entry. An entry with the same tuple left in
    /// TIME_WAIT or CLOSE by an earlier data connection (a client reusing its data port) is
    /// replaced, as the kernel itself reopens such an entry on a new SYN: otherwise the SYN would
    /// reopen it as a plain NEW connection, not RELATED and without NAT.
    fn create_related(&mut self, entry: &crate::types::RelatedEntry) {
        use crate::ctnetlink::{TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_TIME_WAIT};
        let mut result = self.ct.create_related(entry);
        if matches!(&result, Err(e) if e.is_already_exists()) {
            let stale = match self.ct.get_entry(&entry.original) {
                Ok(Some(old)) => matches!(
                    old.tcp_state,
                    Some(TCP_CONNTRACK_TIME_WAIT | TCP_CONNTRACK_CLOSE)
                ),
                _ => false,
            };
            if !stale {
                debug!(flow = %entry.original, "data connection already tracked");
                return;
            }
            debug!(flow = %entry.original, "replacing a closed conntrack entry with the same tuple");
            let _ = self.ct.delete(&entry.original);
            result = self.ct.create_related(entry);
        }
        match result {
            Ok(()) => self.stats.ct_created += 1,
            Err(e) if e.is_already_exists() => {
                debug!(flow = %entry.original, "data connection already tracked")
            }
            Err(e) => {
                self.stats.ct_create_errors += 1;
                error!(error = %e, flow = %entry.original, "cannot admit the data connection");
            }
        }
    }
}

struct Shell {
    engine: Engine,
    /// Live event lines for `ftpct events` clients.
    events: broadcast::Sender<String>,
    state: Option<StateFile>,
    ct: Ctnetlink,
    sets: DataSets,
    settings: Settings,
    hist: Histogram,
    /// The same, for packets that needed no kernel work before their verdict, and for those
    /// that did (a conntrack lookup or create, an ipset add, a state write).
    hist_plain: Histogram,
    hist_work: Histogram,
    /// Duration of the verdict call (the kernel's processing of the reinjected packet).
    hist_verdict: Histogram,
    stats: ShellStats,
    /// The per-packet sequence (and the actions that wait for the verdict).
    driver: Driver,
    /// The periodic check of ftpct's own rules; `None` when off or unavailable.
    rule_watch: Option<RuleWatch>,
    /// Where the next `check_marks` starts.
    mark_cursor: MarkCursor,
    /// Rate limits of the lines that may repeat on every packet.
    malformed_log: Throttle,
    verdict_log: Throttle,
    overrun_log: Throttle,
    queue_error_log: Throttle,
    poll_error_log: Throttle,
    lookup_budget_log: Throttle,
    /// Bounds the conntrack lookups of unknown packets.
    lookups: LookupGuard,
    /// Connections of the metrics endpoint: live ones, and the counters of those cut off.
    http: std::sync::Arc<HttpCounters>,
}

/// What the rule check needs: a socket to read the ruleset and the pure [`Checker`].
struct RuleWatch {
    nft: NfTables,
    checker: Checker,
}

impl Shell {
    /// One packet, received at `t0` (before the `recv` call that returned it: its copy out of
    /// the kernel counts in the latency).
    fn process(&mut self, q: &mut NfQueue, pkt: Packet, t0: Instant) {
        let now = monotonic_now();
        let hook = pkt.hook().unwrap_or(Hook::PreConntrack);
        let work_before = self.kernel_work();
        // What the packet's fate depends on happens before its verdict (`Action::when`), and
        // so does the state record (once a rewritten packet has left, its record must survive a
        // kill of the daemon). Removing set elements waits until after it.
        let v = {
            let (engine, driver, mut kernel) = self.parts(now);
            driver.decide(engine, &mut kernel, pkt.payload(), hook, now)
        };
        // The latency ends when the verdict is issued. The verdict call itself then carries the
        // packet on through the kernel (the rest of netfilter, routing, and in a veth lab the
        // receiving namespace's TCP stack): work that the packet costs with or without an ALG,
        // timed apart (`verdict_call_*`).
        let t_verdict = Instant::now();
        let r = match v {
            Verdict::AcceptModified => {
                q.verdict_accept_modified(pkt, self.engine.modified_packet())
            }
            Verdict::Drop => q.verdict_drop(pkt),
            Verdict::Accept => q.verdict_accept(pkt),
        };
        self.hist_verdict
            .record(t_verdict.elapsed().as_nanos() as u64);
        let ns = t_verdict.duration_since(t0).as_nanos() as u64;
        self.hist.record(ns);
        if self.kernel_work() == work_before {
            self.hist_plain.record(ns);
        } else {
            self.hist_work.record(ns);
        }
        if let Err(e) = r {
            self.stats.verdict_errors += 1;
            if let Some(n) = self.verdict_log.hit(now) {
                warn!(
                    error = %e,
                    count = n,
                    total = self.stats.verdict_errors,
                    "verdict failed (counted in verdict_errors; at most one line per {}s)",
                    LOG_EVERY.as_secs()
                );
            }
        }
        {
            let (_, driver, mut kernel) = self.parts(now);
            driver.after_verdict(&mut kernel);
        }
        self.drain_events();
    }

    /// The engine, the driver and the kernel, apart (one packet's or one timer's borrows).
    fn parts(&mut self, now: Timestamp) -> (&mut Engine, &mut Driver, ShellKernel<'_>) {
        (
            &mut self.engine,
            &mut self.driver,
            ShellKernel {
                ct: &mut self.ct,
                sets: &mut self.sets,
                settings: &self.settings,
                state: &mut self.state,
                lookups: &mut self.lookups,
                stats: &mut self.stats,
                budget_log: &mut self.lookup_budget_log,
                now,
            },
        )
    }

    /// A queued packet the engine could not read as TCP/IP ([`Event::Malformed`]: counted in
    /// `packets_malformed` and accepted unchanged): logged with what it means, rate-limited.
    fn report_malformed(&mut self, error: &crate::packet::PacketError, len: usize, hook: Hook) {
        let Some(n) = self.malformed_log.hit(monotonic_now()) else {
            return;
        };
        warn!(
            reason = %error,
            bytes = len,
            hook = hook.label(),
            count = n,
            total = self.engine.stats().packets_malformed,
            "{}",
            malformed_message(self.settings.queue)
        );
    }

    /// A receive error of the queue that is not fatal: counted and logged, rate-limited.
    fn queue_error(&mut self, e: &QueueError, now: Timestamp) {
        if matches!(e, QueueError::Overrun) {
            self.stats.queue_overruns += 1;
            if let Some(n) = self.overrun_log.hit(now) {
                warn!(
                    count = n,
                    total = self.stats.queue_overruns,
                    "NFQUEUE overrun: the kernel dropped queued packets (ENOBUFS); TCP \
                     retransmits them. If frequent, check the CPU load (ftpct_packet_latency_seconds) \
                     and raise the socket buffer"
                );
            }
            return;
        }
        self.stats.queue_errors += 1;
        if let Some(n) = self.queue_error_log.hit(now) {
            warn!(
                count = n,
                total = self.stats.queue_errors,
                "{e} (counted in queue_errors; at most one line per {}s)",
                LOG_EVERY.as_secs()
            );
        }
    }

    /// Kernel operations done so far (netlink requests and state writes): whether a packet
    /// needed any.
    fn kernel_work(&self) -> u64 {
        let k = &self.stats;
        k.ct_lookups
            + k.ct_created
            + k.ct_create_errors
            + k.ipset_adds
            + k.state_writes
            + k.ct_marked
    }

    /// Reads the ruleset and logs what the [`Checker`] makes of it (a few small netlink dumps:
    /// only the tables named raw, mangle, nat and ftpct are read).
    fn check_rules(&mut self) {
        let Some(w) = &mut self.rule_watch else {
            return;
        };
        let notices = match w.nft.read_ftpct() {
            Ok(obs) => w.checker.observe(&obs, monotonic_now()),
            Err(e) => w.checker.read_failed(&e).into_iter().collect(),
        };
        self.stats.rules_missing = w.checker.missing() as u64;
        for n in notices {
            match &n {
                Notice::Missing(_) => warn!(missing = w.checker.missing(), "{n}"),
                n if n.is_warning() => warn!("{n}"),
                _ => info!("{n}"),
            }
        }
    }

    /// Takes the journal records and writes them to the state file.
    fn persist(&mut self) {
        let (engine, _, mut kernel) = self.parts(monotonic_now());
        kernel.persist(engine);
    }

    /// Carries out every pending action (outside a packet: timers, a restore).
    fn run_actions(&mut self) {
        let (engine, driver, mut kernel) = self.parts(monotonic_now());
        driver.run_actions(engine, &mut kernel);
    }

    /// Checks that the control connections with a sequence offset (or marked because ftpct
    /// acknowledged held bytes, `Session::marked`) still carry `seqadj_mark`
    /// (a rule that sets conntrack marks without a mask clears it, and the post-conntrack rules
    /// then stop queueing them: their transfers after a rewrite stall). A few per period, in
    /// turn; a cleared mark is set again and reported.
    fn check_marks(&mut self) {
        const PER_PERIOD: usize = 32;
        let bits = self.settings.seqadj_mark;
        if bits == 0 {
            return;
        }
        let (batch, next) = self.engine.mark_check_batch(self.mark_cursor, PER_PERIOD);
        self.mark_cursor = next;
        let mut lost = 0;
        for original in &batch {
            if let Ok(Some(e)) = self.ct.get_entry(original) {
                if e.mark & bits != bits {
                    lost += 1;
                    self.mark_adjusted(original);
                }
            }
        }
        if lost > 0 {
            self.stats.ct_marks_lost += lost;
            warn!(
                connections = lost,
                mark = format_args!("{bits:#x}"),
                "control connections lost ftpct's conntrack mark (another rule set the mark \
                 without a mask?) and were marked again; their transfers may have stalled \
                 meanwhile. Use --set-xmark with a mask in that rule, or move seqadj_mark to \
                 a bit it leaves alone"
            );
        }
    }

    /// Marks a control connection that has a sequence offset (`seqadj_mark`): see
    /// [`ShellKernel::mark_adjusted`].
    fn mark_adjusted(&mut self, original: &FlowTuple) {
        let (_, _, mut kernel) = self.parts(monotonic_now());
        kernel.mark_adjusted(original);
    }

    fn drain_events(&mut self) {
        let listeners = self.events.receiver_count() > 0;
        let now = monotonic_now();
        while let Some(e) = self.engine.poll_event() {
            match &e {
                Event::Malformed { error, len, hook } => self.report_malformed(error, *len, *hook),
                _ => log_event(&e),
            }
            if listeners {
                if let Some(line) = control::format_event(&e, now) {
                    let _ = self.events.send(line);
                }
            }
        }
    }

    /// After a restore: forget sessions whose conntrack entry is gone or is another
    /// connection now (another id, or other tuples: the addresses and ports were reused since
    /// the state was written), record the id of those saved without one, and make sure the
    /// restored expectations' destinations are in the ipsets again.
    fn revalidate_restored(&mut self) {
        let bits = self.settings.seqadj_mark;
        let sessions: Vec<_> = self
            .engine
            .sessions()
            .map(|s| (s.id, s.ct.original))
            .collect();
        let (mut gone, mut replaced) = (0, 0);
        for (id, original) in sessions {
            let seen = match self.ct.get_entry(&original) {
                Ok(e) => e.map(|e| CtSeen {
                    tuples: e.tuples,
                    id: e.id,
                    mark: e.mark,
                }),
                Err(e) => {
                    warn!(error = %e, session = %id, "cannot check a restored session against conntrack; kept");
                    continue;
                }
            };
            match self.engine.settle_restored(id, seen.as_ref(), bits) {
                Settled::Kept | Settled::IdRecorded => {}
                Settled::Gone => gone += 1,
                Settled::Replaced { saved_id } => {
                    if let Some(e) = seen {
                        debug!(session = %id, flow = %original, saved = ?saved_id, now = e.id,
                               mark = format_args!("{:#x}", e.mark),
                               "restored session's conntrack entry is another connection; forgotten");
                    }
                    replaced += 1;
                }
            }
        }
        self.stats.restored_replaced += replaced;
        if replaced > 0 {
            info!(
                sessions = replaced,
                "restored sessions whose addresses and ports now belong to another connection \
                 (another conntrack entry) were dropped: their offsets would break it"
            );
        }
        if gone > 0 {
            info!(
                sessions = gone,
                "restored sessions whose connection is gone were dropped"
            );
        }
        // The forgotten sessions' set elements go first, then the marks and set elements of
        // those kept: the same actions as on the packet path.
        self.run_actions();
        let restore: Vec<Action> = self.engine.restore_actions(monotonic_now()).collect();
        let (_, _, mut kernel) = self.parts(monotonic_now());
        for a in restore {
            kernel.run(a);
        }
        self.drain_events();
        self.persist();
    }

    fn answer(&self, req: Request) -> String {
        let now = monotonic_now();
        match req {
            Request::List => control::format_list(&self.engine, now),
            Request::Sessions => control::format_sessions(&self.engine, now),
            Request::Stats => self.format_stats(),
            Request::Metrics => self.with_snapshot(metrics::render),
            Request::Events => String::new(),
        }
    }

    /// The shell's counters with those kept by the metrics connections' tasks.
    fn shell_stats(&self) -> ShellStats {
        use std::sync::atomic::Ordering::Relaxed;
        ShellStats {
            metrics_refused: self.http.refused.load(Relaxed),
            metrics_timeouts: self.http.timeouts.load(Relaxed),
            ..self.stats.clone()
        }
    }

    /// The `ftpct stats` text (the counters' tables: `metrics.rs`, `ftpct_core::stats`).
    fn format_stats(&self) -> String {
        self.with_snapshot(metrics::render_stats)
    }

    /// Calls `f` with every counter, gauge and latency the daemon shows.
    fn with_snapshot<T>(&self, f: impl FnOnce(&metrics::Snapshot<'_>) -> T) -> T {
        f(&metrics::Snapshot {
            engine: self.engine.stats(),
            shell: &self.shell_stats(),
            latency: metrics::Latencies {
                all: &self.hist,
                plain: &self.hist_plain,
                work: &self.hist_work,
                verdict: &self.hist_verdict,
            },
            sessions: self.engine.session_count(),
            expectations: self.engine.expectations().len(),
            kernel_queue_drops: kernel_queue_drops(self.settings.queue).unwrap_or((0, 0)),
        })
    }
}

/// The kernel's drop counters of our queue (`/proc/net/netfilter/nfnetlink_queue`, this
/// network namespace): packets dropped because the queue was full, and because the netlink
/// socket could not take them (`queue_dropped`, `user_dropped`).
pub fn kernel_queue_drops(queue: u16) -> Option<(u64, u64)> {
    const PATH: &str = "/proc/net/netfilter/nfnetlink_queue";
    let text = match std::fs::read_to_string(PATH) {
        Ok(t) => t,
        Err(e) => {
            static LOGGED: std::sync::Once = std::sync::Once::new();
            LOGGED.call_once(|| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    // The kernel creates it 0440 root:root: expected when not running as root
                    // (the systemd unit's DynamicUser=, or `user =`).
                    info!(
                        "{PATH} is readable by root only and the daemon does not run as root: \
                         the kernel's drop counters of queue {queue} (queue_dropped, \
                         queue_user_dropped in `ftpct stats`) are reported as 0; read them as \
                         root in that file (fields 6 and 7); queue_overruns still counts the \
                         overruns the daemon sees"
                    )
                } else {
                    warn!(
                        "cannot read {PATH} ({e}): the kernel's drop counters of the queue \
                         (queue_dropped, queue_user_dropped) are reported as 0. Fix: let the \
                         daemon see /proc/net (under systemd, remove ProcSubset=pid from the unit)"
                    )
                }
            });
            return None;
        }
    };
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        Some((f.get(5)?.parse().ok()?, f.get(6)?.parse().ok()?))
    })
}

/// What a malformed queued packet means and what to check: ftpct's rules queue only TCP
/// packets (conntrack's defragmentation runs before them), so something else queues to the
/// same queue number, or the packet is corrupt.
pub fn malformed_message(queue: u16) -> String {
    format!(
        "a queued packet is not a TCP/IP packet ftpct can read; accepted unchanged, without the \
         ALG. ftpct's rules queue only TCP packets to queue {queue}: check for another rule \
         that queues to {queue} (iptables-save | grep NFQUEUE, nft list ruleset | grep queue) \
         and give ftpct or that program another queue number. Counted in packets_malformed \
         (ftpct_packets_malformed_total); at most one line per {}s",
        LOG_EVERY.as_secs()
    )
}

/// One log line per event, with the session id, addresses and NAT, for an admin to follow:
/// the core's renderer (`ftpct_core::render`) gives the prose and the `key=value` fields; the
/// level is checked before anything is formatted.
pub fn log_event(e: &Event) {
    use ftpct_core::render::{describe, Level, LogLine};
    let min = if tracing::enabled!(tracing::Level::DEBUG) {
        Level::Debug
    } else if tracing::enabled!(tracing::Level::INFO) {
        Level::Info
    } else {
        Level::Warn
    };
    let mut line = LogLine::new(min);
    // (`now` only matters for the `ftpct events` line of expectations)
    describe(e, Timestamp::ZERO, &mut line);
    if line.level < min {
        return;
    }
    match line.level {
        Level::Debug => debug!("{}", line.text),
        Level::Info => info!("{}", line.text),
        Level::Warn => warn!("{}", line.text),
    }
}

/// The user to switch to after start: `configured` if set; else, for a daemon started as
/// root, the first of [`crate::privs::DEFAULT_USERS`] when the switch can work (the process
/// may switch users, and the state file's directory is writable by that user, or was created
/// by this start and is given to it); else none (uid 0 with CAP_NET_ADMIN only, with a
/// warning that says how to get out of it). Prepares the directories this start `created`
/// and the state file for the user.
fn choose_user(
    configured: Option<&str>,
    state: Option<&Path>,
    created: &[PathBuf],
) -> Option<String> {
    use nix::unistd::User;
    let user = match configured {
        Some(name) => match User::from_name(name) {
            Ok(Some(u)) => u,
            // drop_privileges reports it
            _ => return Some(name.to_string()),
        },
        None => default_user_to_switch_to()?,
    };
    if user.uid.is_root() {
        return Some(user.name);
    }
    for d in created {
        if let Err(e) = chown_to(&user, d) {
            warn!(error = %e, dir = %d.display(), user = %user.name, "cannot give a directory ftpct created to its user");
        }
    }
    let Some(state) = state else {
        return Some(user.name);
    };
    user_for_state_dir(user, state, configured.is_some())
}

/// Without `user =`: for a daemon started as root, the first of
/// [`crate::privs::DEFAULT_USERS`] if it exists and the process may switch to it; else none
/// (with a warning, unless the daemon was started unprivileged already).
fn default_user_to_switch_to() -> Option<nix::unistd::User> {
    if !nix::unistd::Uid::current().is_root() {
        // started unprivileged already (systemd's DynamicUser=, User=)
        return None;
    }
    let Some(u) = crate::privs::default_user() else {
        warn!(
            users = ?crate::privs::DEFAULT_USERS,
            "running as root (CAP_NET_ADMIN only), which can still write every \
             root-owned file: none of these users exists. Create one (useradd --system \
             --no-create-home ftpct) or set `user =`; `user = root` silences this"
        );
        return None;
    };
    if !crate::privs::can_switch_user() {
        warn!(
            user = %u.name,
            "running as root (CAP_NET_ADMIN only) without CAP_SETUID/CAP_SETGID to \
             switch to an unprivileged user: start ftpct as that user with \
             CAP_NET_ADMIN (systemd: User= or DynamicUser=, AmbientCapabilities=), \
             or set `user = root` to keep uid 0 on purpose"
        );
        return None;
    }
    Some(u)
}

/// Gives `p` (not following a symbolic link) to `user` and its group.
fn chown_to(user: &nix::unistd::User, p: &Path) -> nix::Result<()> {
    nix::unistd::fchownat(
        None,
        p,
        Some(user.uid),
        Some(user.gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// The end of [`choose_user`] for a daemon with a state file: `user` (an unprivileged one) if
/// the state file's directory is writable by it (the file is then given to it) or was
/// `explicit`ly configured (with a warning); else none, staying root with a warning.
fn user_for_state_dir(user: nix::unistd::User, state: &Path, explicit: bool) -> Option<String> {
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let writable = std::fs::metadata(dir).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        crate::privs::may_write_dir(m.mode(), m.uid(), m.gid(), uid, gid)
    });
    if writable {
        // its own file, also for a sticky directory such as /tmp
        if let Err(e) = chown_to(&user, state) {
            warn!(error = %e, state = %state.display(), "cannot give the state file to its user");
        }
        return Some(user.name);
    }
    if explicit {
        warn!(
            user = %user.name,
            dir = %dir.display(),
            "the state file's directory is not writable by the configured user: the state \
             file cannot be rewritten (compacted) after start and will be given up then. Fix: \
             chown {} {} (or let systemd's RuntimeDirectory=/StateDirectory= create it)",
            user.name,
            dir.display()
        );
        return Some(user.name);
    }
    warn!(
        user = %user.name,
        dir = %dir.display(),
        "staying root (CAP_NET_ADMIN only, which can still write every root-owned file): \
         the state file's directory is not writable by the default user {}. Fix: chown {} {}, \
         or put state_file and socket in a directory that does not exist yet (ftpct creates \
         it for that user), or set `user =` (`user = root` keeps uid 0 on purpose)",
        user.name,
        user.name,
        dir.display()
    );
    None
}

/// What is at a path, for an error message.
fn file_kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "device node"
    } else {
        "file that is not a socket"
    }
}

/// Binds the control socket at `path`, mode 0600. Only a stale socket (one that nobody
/// listens on: left by a killed daemon) is replaced; anything else at the path (a regular
/// file, a directory, a symbolic link...) is refused with the fix, never removed or followed.
/// The socket gets its mode before it appears in the file system (`fchmod` of the unbound
/// socket, and a umask of 0177 around `bind`), so no `chmod` by path follows.
fn bind_control_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::FileTypeExt;
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(err)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
        Ok(m) if m.file_type().is_socket() => {
            // A live daemon answers; a stale socket file from a crash does not.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "a daemon is already listening there",
                )));
            }
            std::fs::remove_file(path).map_err(err)?;
        }
        Ok(m) => {
            return Err(DaemonError::SocketPathTaken {
                path: path.to_path_buf(),
                kind: file_kind(m.file_type()),
            })
        }
    }
    bind_private(path).map_err(err)
}

/// A listening Unix socket at `path` created with mode 0600 (see [`bind_control_socket`]).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    use nix::sys::stat::{fchmod, umask, Mode};
    use std::os::fd::AsRawFd;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o600))?;
    let addr = UnixAddr::new(path)?;
    // The daemon is still single-threaded here: the umask change is seen by nothing else.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = socket::bind(fd.as_raw_fd(), &addr);
    umask(old);
    bound?;
    socket::listen(&fd, Backlog::new(128)?)?;
    UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
}

type Asker = mpsc::Sender<(Request, oneshot::Sender<String>)>;

async fn ask(tx: &Asker, req: Request) -> Option<String> {
    let (otx, orx) = oneshot::channel();
    tx.send((req, otx)).await.ok()?;
    orx.await.ok()
}

async fn serve_client(
    stream: tokio::net::UnixStream,
    tx: Asker,
    events: broadcast::Sender<String>,
) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r).take(control::MAX_REQUEST as u64);
    let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
    let req = match (read, Request::parse(&line)) {
        (Ok(Ok(_)), Some(req)) => req,
        _ => {
            let _ = w
                .write_all(
                    b"error: unknown request (expected: list, sessions, stats, events, metrics)\n",
                )
                .await;
            return;
        }
    };
    if req == Request::Events {
        // Streams until the client goes away, like `conntrack -E expect`.
        let mut rx = events.subscribe();
        loop {
            let line = match rx.recv().await {
                Ok(l) => l,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    format!("[LOST] {n} events (client too slow)\n")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if w.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    let answer = ask(&tx, req).await.unwrap_or_default();
    let _ = w.write_all(answer.as_bytes()).await;
    let _ = w.shutdown().await;
}

/// How long a metrics connection may take, from its accept to the end of the response: a
/// client that sends its request slowly (a header line every few seconds) is cut off then.
pub const METRICS_DEADLINE: Duration = Duration::from_secs(5);
/// Metrics connections served at the same time at most; more are closed at once.
pub const METRICS_MAX_CONNECTIONS: usize = 8;

/// The metrics endpoint's connection count and the counters of connections closed early.
#[derive(Debug, Default)]
struct HttpCounters {
    active: std::sync::atomic::AtomicUsize,
    refused: std::sync::atomic::AtomicU64,
    timeouts: std::sync::atomic::AtomicU64,
}

/// One of the [`METRICS_MAX_CONNECTIONS`] places, given back when dropped.
struct HttpSlot(std::sync::Arc<HttpCounters>);

impl HttpSlot {
    /// A place for a new connection, or `None` (counted) when all are taken.
    fn take(c: &std::sync::Arc<HttpCounters>) -> Option<HttpSlot> {
        use std::sync::atomic::Ordering::Relaxed;
        let taken = c
            .active
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < METRICS_MAX_CONNECTIONS).then_some(n + 1)
            })
            .is_ok();
        if taken {
            Some(HttpSlot(c.clone()))
        } else {
            c.refused.fetch_add(1, Relaxed);
            None
        }
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves one metrics connection within [`METRICS_DEADLINE`].
async fn serve_metrics(stream: tokio::net::TcpStream, tx: Asker, slot: HttpSlot) {
    if tokio::time::timeout(METRICS_DEADLINE, respond_metrics(stream, tx))
        .await
        .is_err()
    {
        slot.0
            .timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A minimal HTTP/1.1 responder for Prometheus scrapes: `GET /metrics` only.
async fn respond_metrics(stream: tokio::net::TcpStream, tx: Asker) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r).take(8192);
    let mut first = String::new();
    if r.read_line(&mut first).await.is_err() {
        return;
    }
    // Read (and ignore) the headers up to the empty line.
    loop {
        let mut h = String::new();
        match r.read_line(&mut h).await {
            Ok(n) if n > 0 && h != "\r\n" && h != "\n" => continue,
            _ => break,
        }
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, ctype) =
        if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
            match ask(&tx, Request::Metrics).await {
                Some(b) => ("200 OK", b, "text/plain; version=0.0.4; charset=utf-8"),
                None => ("503 Service Unavailable", String::new(), "text/plain"),
            }
        } else {
            ("404 Not Found", "try /metrics\n".to_string(), "text/plain")
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(head.as_bytes()).await;
    let _ = w.write_all(body.as_bytes()).await;
    let _ = w.shutdown().await;
}

use tokio::io::AsyncReadExt as _;

/// Opens the ipsets of the iptables backends, creating them if missing with the parameters
/// `ftpct rules --apply` uses (so that an existing set is accepted; every element carries its
/// own timeout, the expectation's), and warns about existing sets too small for
/// `max_expectations`.
fn open_ipsets(
    settings: &Settings,
    spec: &RuleSpec,
    config_path: Option<&std::path::Path>,
) -> Result<Ipset, DaemonError> {
    let mut ipset = Ipset::open()?;
    let timeout = crate::rules::SET_DEFAULT_TIMEOUT;
    ipset.create_hash_ip_port(&settings.ipset4, SetFamily::V4, timeout, spec.maxelem)?;
    ipset.create_hash_ip_port(&settings.ipset6, SetFamily::V6, timeout, spec.maxelem)?;
    match crate::rules::small_sets(&mut ipset, spec) {
        Ok(small) => {
            for s in small {
                let cfg = config_path;
                warn!(
                    set = %s.name,
                    maxelem = s.maxelem,
                    max_expectations = s.want,
                    "{}",
                    s.message(
                        &spec.command_line(cfg, "--delete"),
                        &spec.command_line(cfg, "--apply")
                    )
                );
            }
        }
        Err(e) => warn!(error = %e, "cannot read the ipsets' maxelem"),
    }
    Ok(ipset)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOptions) -> Result<(), DaemonError> {
    let mut settings = opts.settings.clone();
    let spec = settings.rule_spec();
    let Opened {
        mut queue,
        listener,
        metrics_listener,
        mut shell,
        created,
    } = open_all(&settings, &spec, opts.config_path.as_deref()).await?;
    shell.revalidate_restored();
    // Everything is open: keep CAP_NET_ADMIN only, and switch to the configured user (or,
    // started as root without `user =`, to the default one where possible).
    let run_as = choose_user(
        settings.user.as_deref(),
        shell.state.as_ref().map(|s| s.path()),
        &created,
    );
    match crate::privs::drop_privileges(run_as.as_deref()) {
        Ok(d) => info!(uid = d.uid, capabilities = ?d.effective, "privileges dropped"),
        Err(e) => return Err(DaemonError::Privileges(e)),
    }
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(DaemonError::Runtime)?;
    let (tx, mut rx) = mpsc::channel::<(Request, oneshot::Sender<String>)>(16);
    announce_running(&settings, &spec, opts.config_path.as_deref());
    let mut recv_streak = ErrorStreak::default();
    let mut poll_streak = ErrorStreak::default();
    let mut rule_timer = periodic_timer(&shell, &settings);
    loop {
        let deadline = engine_deadline(&shell.engine);
        tokio::select! {
            ready = queue.readable_mut() => {
                on_queue_readable(&mut shell, ready, &mut recv_streak, &mut poll_streak).await?;
            }
            _ = sleep_until_or_never(deadline) => on_engine_timer(&mut shell),
            _ = tick_or_never(rule_timer.as_mut()) => {
                shell.check_rules();
                shell.check_marks();
            }
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::spawn(serve_client(stream, tx.clone(), shell.events.clone()));
                }
            }
            conn = accept_or_never(metrics_listener.as_ref()) => {
                if let Ok((stream, _)) = conn {
                    // over the cap: closed at once (dropped), counted in metrics_refused
                    if let Some(slot) = HttpSlot::take(&shell.http) {
                        tokio::spawn(serve_metrics(stream, tx.clone(), slot));
                    }
                }
            }
            Some((req, reply)) = rx.recv() => {
                let _ = reply.send(shell.answer(req));
            }
            _ = hup.recv() => reload(&mut shell, &mut settings, &opts),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    shut_down(&mut shell, &opts);
    Ok(())
}

/// What the daemon opens at start, before it drops its privileges.
struct Opened {
    queue: AsyncFd<NfQueue>,
    listener: UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shell: Shell,
    /// The directories this start created (given to the user it switches to).
    created: Vec<PathBuf>,
}

/// Opens, in this order, the queue, ctnetlink, the data sets, the rule check, the control
/// socket, the state file (restoring the engine from it) and the metrics endpoint, and builds
/// the shell around the engine.
async fn open_all(
    settings: &Settings,
    spec: &RuleSpec,
    config_path: Option<&Path>,
) -> Result<Opened, DaemonError> {
    let qopts = QueueOptions {
        fail_open: settings.fail_open,
        ..QueueOptions::default()
    };
    let queue = NfQueue::open(settings.queue, qopts)?;
    // SAFETY: `NfQueue` owns its netlink socket from `open` until it is dropped, and its
    // `as_raw_fd` always returns that same descriptor, as `AsyncFd::register` requires.
    let queue = unsafe { AsyncFd::register(queue) }.map_err(|e| DaemonError::Runtime(e.into()))?;
    let ct = Ctnetlink::open()?;
    let sets = open_data_sets(settings, spec, config_path)?;
    let rule_watch = open_rule_watch(settings, spec, config_path);
    let state_path = settings.state_path();
    let created = dirs_to_create(settings, &state_path);
    let listener = bind_control_socket(&settings.socket)?;
    let mut engine = Engine::new(crate::engine::Config {
        hash_key: random_hash_key(),
        ..settings.engine_config()
    });
    let state = open_state(&state_path, &mut engine);
    let metrics_listener = match settings.metrics {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };
    let shell = new_shell(settings, engine, ct, sets, state, rule_watch);
    Ok(Opened {
        queue,
        listener,
        metrics_listener,
        shell,
        created,
    })
}

/// The sets of data destinations: nf_tables' (checked: `ftpct rules --apply` creates them)
/// or the ipsets (created if missing).
fn open_data_sets(
    settings: &Settings,
    spec: &RuleSpec,
    config_path: Option<&Path>,
) -> Result<DataSets, DaemonError> {
    if settings.backend == crate::rules::Backend::Nft {
        // The sets are part of `table inet ftpct`, which `ftpct rules --apply` creates (the
        // unit's ExecStartPre); without them no data SYN would ever reach the daemon.
        let mut nft = NftSets::open()?;
        nft.check(&settings.ipset4)?;
        nft.check(&settings.ipset6)?;
        Ok(DataSets::Nft(nft))
    } else {
        Ok(DataSets::Ipset(open_ipsets(settings, spec, config_path)?))
    }
}

/// The shell at start: the engine (restored from the state file), the kernel interfaces,
/// the state file with the count of its refused records, fresh counters and log throttles.
fn new_shell(
    settings: &Settings,
    engine: Engine,
    ct: Ctnetlink,
    sets: DataSets,
    (state, state_refused): (Option<StateFile>, u64),
    rule_watch: Option<RuleWatch>,
) -> Shell {
    let (events_tx, _) = broadcast::channel(1024);
    Shell {
        events: events_tx,
        state,
        engine,
        ct,
        sets,
        settings: settings.clone(),
        hist: Histogram::default(),
        hist_plain: Histogram::default(),
        hist_work: Histogram::default(),
        hist_verdict: Histogram::default(),
        stats: ShellStats {
            state_refused,
            ..ShellStats::default()
        },
        driver: Driver::new(),
        rule_watch,
        mark_cursor: MarkCursor::default(),
        malformed_log: Throttle::new(LOG_EVERY),
        verdict_log: Throttle::new(LOG_EVERY),
        overrun_log: Throttle::new(LOG_EVERY),
        queue_error_log: Throttle::new(LOG_EVERY),
        poll_error_log: Throttle::new(LOG_EVERY),
        lookup_budget_log: Throttle::new(LOG_EVERY),
        lookups: LookupGuard::default(),
        http: std::sync::Arc::new(HttpCounters::default()),
    }
}

/// The start line of the logs, and the readiness and status lines to systemd
/// (`Type=notify`): the queue is bound and the control socket listens.
fn announce_running(settings: &Settings, spec: &RuleSpec, config_path: Option<&Path>) {
    info!(
        queue = settings.queue,
        ports = ?settings.ports,
        socket = %settings.socket.display(),
        fail_open = settings.fail_open,
        "ftpct running; install the rules with `{}` if not done",
        spec.command_line(config_path, "--apply")
    );
    sd_notify(notify::ready(), "READY");
    sd_notify(notify::status(&status_line(settings)), "STATUS");
}

/// The timer of the rule check, which also drives the mark check (`check_marks`) when
/// seqadj_mark is on; none when neither runs. Its first tick is immediate: the rules are
/// checked at start, then every period.
fn periodic_timer(shell: &Shell, settings: &Settings) -> Option<tokio::time::Interval> {
    let periodic = shell.rule_watch.is_some()
        || (settings.seqadj_mark != 0 && !settings.rule_check_interval.is_zero());
    periodic.then(|| {
        let mut t = tokio::time::interval(settings.rule_check_interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// When the engine's next timer is due, on tokio's clock.
fn engine_deadline(engine: &Engine) -> Option<tokio::time::Instant> {
    engine.poll_timeout().map(|t| {
        let now = monotonic_now();
        tokio::time::Instant::now() + Duration::from_nanos(t.0.saturating_sub(now.0))
    })
}

/// Sleeps until `deadline`; without one, never returns.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending::<()>().await,
    }
}

/// The next tick of `timer`; without one, never returns.
async fn tick_or_never(timer: Option<&mut tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// The next connection to the metrics endpoint; without one, never returns.
async fn accept_or_never(
    listener: Option<&tokio::net::TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The engine's timer is due: expiries and timeouts, their actions, the state file, the
/// events.
fn on_engine_timer(shell: &mut Shell) {
    shell.engine.handle_timeout(monotonic_now());
    shell.run_actions();
    shell.persist();
    shell.drain_events();
}

/// The queue's socket is readable (or waiting for it failed): drains what is there, bounded
/// so that timers and the control socket still run. A lasting streak of errors is fatal (so
/// that systemd restarts the daemon).
async fn on_queue_readable(
    shell: &mut Shell,
    ready: std::io::Result<AsyncFdReadyMutGuard<'_, NfQueue>>,
    recv_streak: &mut ErrorStreak,
    poll_streak: &mut ErrorStreak,
) -> Result<(), DaemonError> {
    let mut guard = match ready {
        Ok(g) => g,
        Err(e) => {
            // Only if tokio's I/O driver lost the socket: never seen. Counted, and
            // retried after a pause (not in a hot loop); lasting, it is fatal.
            let now = monotonic_now();
            shell.stats.queue_poll_errors += 1;
            if let Some(n) = shell.poll_error_log.hit(now) {
                error!(
                    error = %e,
                    count = n,
                    "waiting for the NFQUEUE socket failed; retrying in 100 ms \
                     (counted in queue_poll_errors). If it repeats, check the \
                     process's file descriptor limit and free memory; ftpct exits \
                     after {}s of failures so that systemd restarts it",
                    ErrorStreak::GIVE_UP.as_secs()
                );
            }
            if poll_streak.error(now) {
                return Err(DaemonError::QueueFailing {
                    count: poll_streak.count(),
                    secs: poll_streak.secs(now),
                    last: e.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
    };
    poll_streak.ok();
    // Drain what is there, bounded so that timers and the control socket still run.
    for _ in 0..256 {
        let q = guard.get_inner_mut();
        let t0 = Instant::now();
        match q.recv() {
            Ok(Some(pkt)) => {
                recv_streak.ok();
                shell.process(q, pkt, t0);
            }
            Ok(None) => {
                recv_streak.ok();
                guard.clear_ready();
                break;
            }
            Err(e) if e.is_fatal() => return Err(e.into()),
            Err(e) => {
                let now = monotonic_now();
                shell.queue_error(&e, now);
                if recv_streak.error(now) {
                    return Err(DaemonError::QueueFailing {
                        count: recv_streak.count(),
                        secs: recv_streak.secs(now),
                        last: e.to_string(),
                    });
                }
                if recv_streak.count() % ErrorStreak::MIN_ERRORS == 0 {
                    // nothing but errors: let the rest of the loop run
                    break;
                }
            }
        }
    }
    if recv_streak.count() >= ErrorStreak::MIN_ERRORS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Opens the state file and restores what it holds into `engine`, logging what was found;
/// also the number of records refused. Without a state file the daemon runs on, said loudly.
fn open_state(state_path: &Path, engine: &mut Engine) -> (Option<StateFile>, u64) {
    match StateFile::open(state_path, engine, monotonic_now()) {
        Ok((sf, report)) => {
            if report.stale {
                info!(state = %state_path.display(), "state file from another boot (or unreadable header) ignored");
            } else if report.records == 0 {
                info!(state = %state_path.display(), "no saved state");
            } else {
                info!(
                    state = %state_path.display(),
                    records = report.records,
                    sessions = report.sessions,
                    expectations = report.expectations,
                    "state restored"
                );
            }
            if report.torn_tail {
                info!(state = %state_path.display(), "the last state record was cut short (the daemon died while writing it, before its packet's verdict); ignored");
            }
            if !sf.is_mapped() {
                info!(state = %state_path.display(), "state file cannot be preallocated and mapped here; appending with write(2)");
            }
            if let Some(line) = report.corrupt_at {
                warn!(state = %state_path.display(), line, "state file corrupt from this line on; the rest was ignored");
            }
            if report.not_a_file {
                warn!(state = %state_path.display(), "not a regular file (a symbolic link, a FIFO...): not read, replaced by the new state file");
            }
            for r in &report.refusals {
                warn!(
                    state = %state_path.display(),
                    line = r.line,
                    count = r.count,
                    reason = %r.first,
                    "state file records refused (not restored): they break a rule the daemon \
                     keeps for live traffic (the file was edited, or the configuration changed \
                     since); the reason is the first one's"
                );
            }
            (Some(sf), report.refused as u64)
        }
        Err(e) => {
            error!(error = %e, "running without a state file: a restart will lose live sessions");
            (None, 0)
        }
    }
}

/// The periodic check of ftpct's firewall rules (`rule_check_interval`), if it is on and can
/// read the ruleset.
fn open_rule_watch(
    settings: &Settings,
    spec: &RuleSpec,
    config_path: Option<&Path>,
) -> Option<RuleWatch> {
    if settings.rule_check_interval.is_zero() {
        info!("rule check off (rule_check_interval = 0): a removal of ftpct's firewall rules is not reported");
        None
    } else {
        let watch = Checker::new(spec, config_path)
            .map_err(|e| e.to_string())
            .and_then(|checker| {
                let nft = NfTables::open().map_err(|e| e.to_string())?;
                Ok(RuleWatch { nft, checker })
            });
        match watch {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "rule check unavailable: a removal of ftpct's firewall rules will not be reported");
                None
            }
        }
    }
}

/// The directories that this start creates (and may hand over to the unprivileged user).
fn dirs_to_create(settings: &Settings, state_path: &Path) -> Vec<PathBuf> {
    let mut created: Vec<PathBuf> = Vec::new();
    for p in [settings.socket.as_path(), state_path] {
        if let Some(d) = p.parent() {
            if !d.as_os_str().is_empty() && !d.exists() && !created.iter().any(|c| c == d) {
                created.push(d.to_path_buf());
            }
        }
    }
    created
}

/// SIGHUP: reads the configuration file again and applies what can change while running; live
/// sessions and expectations are kept.
fn reload(shell: &mut Shell, settings: &mut Settings, opts: &RunOptions) {
    sd_notify(notify::reloading(), "RELOADING");
    match &opts.config_path {
        Some(p) => match config::load(p) {
            Ok(mut new) => {
                for w in &new.warnings {
                    warn!("{w}");
                }
                opts.overrides.apply(&mut new);
                let (merged, ignored) = settings.reloaded(new);
                shell.engine.reconfigure(merged.engine_config());
                shell.settings = merged.clone();
                *settings = merged;
                info!(config = %p.display(), "configuration reloaded; live sessions and expectations kept");
                if !ignored.is_empty() {
                    warn!(keys = ?ignored, "changed in the file but applied only at restart \
                           (`systemctl restart ftpct`; with the rules: see ftpct.conf(5))");
                }
            }
            Err(e) => error!(error = %e, "reload failed; keeping the running configuration"),
        },
        None => info!("SIGHUP: no --config file to reload"),
    }
    sd_notify(notify::ready(), "READY");
    sd_notify(notify::status(&status_line(settings)), "STATUS");
}

/// After SIGTERM or SIGINT: removes the control socket bound at start and writes the final
/// state.
fn shut_down(shell: &mut Shell, opts: &RunOptions) {
    sd_notify(notify::stopping(), "STOPPING");
    info!(
        sessions = shell.engine.session_count(),
        expectations = shell.engine.expectations().len(),
        "ftpct stopping"
    );
    // The socket that was bound at start (a reload does not move it), if it is still one.
    {
        use std::os::unix::fs::FileTypeExt;
        let sock = &opts.settings.socket;
        if std::fs::symlink_metadata(sock).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(sock);
        }
    }
    if let Some(st) = &mut shell.state {
        if let Err(e) = st.compact(&shell.engine) {
            error!(error = %e, "cannot write the final state");
        }
    }
}

/// The `STATUS=` line shown by `systemctl status ftpct`.
fn status_line(s: &Settings) -> String {
    format!(
        "queue {}, ports {:?}, control socket {}",
        s.queue,
        s.ports,
        s.socket.display()
    )
}

/// Logs a failed notification; systemd then times the service out, which says the rest.
fn sd_notify(r: std::io::Result<bool>, what: &str) {
    if let Err(e) = r {
        warn!(error = %e, "sd_notify {what} failed (NOTIFY_SOCKET)");
    }
}

/// A fresh key for the engine's hash tables (the core draws no random numbers itself): std's
/// per-process random SipHash keys, read through two hashes.
fn random_hash_key() -> [u64; 2] {
    use std::hash::BuildHasher;
    let s = std::collections::hash_map::RandomState::new();
    [s.hash_one(0x6674_7063_u64), s.hash_one(0x006b_6579_u64)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Timestamp {
        Timestamp(s * 1_000_000_000)
    }

    #[test]
    fn throttle_logs_the_first_then_once_per_period_with_the_count() {
        let mut t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.hit(secs(100)), Some(1), "the first one is logged");
        for i in 1..=5 {
            assert_eq!(t.hit(secs(100 + i)), None);
        }
        // the next line says how many it stands for: the 5 suppressed and this one
        assert_eq!(t.hit(secs(110)), Some(6));
        assert_eq!(t.hit(secs(111)), None);
        assert_eq!(t.hit(secs(500)), Some(2));
        assert_eq!(t.hit(secs(520)), Some(1));
    }

    #[test]
    fn an_error_streak_gives_up_only_when_it_lasts() {
        let mut s = ErrorStreak::default();
        // many errors at once (a flushed queue's refused verdicts): survived
        for _ in 0..10_000 {
            assert!(!s.error(secs(10)));
        }
        s.ok();
        assert_eq!(s.count(), 0);
        // a few errors over a long time: survived
        for i in 0..10 {
            assert!(!s.error(secs(20 + i)));
        }
        s.ok();
        // errors without a success for 5 s, at least 64 of them: give up
        let mut gave_up = false;
        for i in 0..1000u64 {
            if s.error(Timestamp(secs(100).0 + i * 10_000_000)) {
                gave_up = true;
                assert_eq!(s.count(), 501, "5 s after the first, at 10 ms each");
                assert_eq!(s.secs(Timestamp(secs(100).0 + i * 10_000_000)), 5);
                break;
            }
        }
        assert!(gave_up);
    }

    /// The log lines of `events`, as the daemon writes them (without timestamps).
    fn log_lines(events: &[Event]) -> Vec<String> {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .map_err(|_| std::io::ErrorKind::Other)?
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(sub, || events.iter().for_each(log_event));
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn session_and_expectation_lines_name_the_session_the_peers_and_the_nat() {
        use crate::expect::{ExpectId, ExpectKind, Expectation};
        use crate::types::{CtTuples, SessionId};
        let sa = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        // a client behind MASQUERADE: 10.77.100.102 leaves as 203.0.113.1
        let ct = CtTuples {
            original: FlowTuple::new(sa("10.77.100.102:40000"), sa("203.0.113.2:21")),
            reply: FlowTuple::new(sa("203.0.113.2:21"), sa("203.0.113.1:40000")),
        };
        let id = SessionId(12);
        let exp = Expectation {
            master: id,
            kind: ExpectKind::Port,
            src: "203.0.113.2".parse().unwrap(),
            dst: sa("203.0.113.1:50000"),
            nat_to: Some(sa("10.77.100.102:50000")),
            created: Timestamp::ZERO,
            expires: secs(300),
        };
        let lines = log_lines(&[
            Event::SessionStart { id, ct },
            Event::ExpectCreated {
                id: ExpectId(3),
                exp,
            },
            Event::SessionEnd {
                id,
                ct,
                reason: crate::engine::EndReason::Closed,
            },
        ]);
        assert_eq!(
            lines,
            [
                " INFO control session start session=S12 client=10.77.100.102:40000 \
                 server=203.0.113.2:21 nat=203.0.113.1:40000 <- 203.0.113.2:21",
                " INFO expecting data connection session=S12 expectation=3 src=203.0.113.2 \
                 dst=203.0.113.1:50000 nat_to=10.77.100.102:50000",
                " INFO control session end session=S12 client=10.77.100.102:40000 \
                 server=203.0.113.2:21 nat=203.0.113.1:40000 <- 203.0.113.2:21 reason=\"closed\"",
            ]
        );
        let untranslated = log_lines(&[Event::ExpectCreated {
            id: ExpectId(4),
            exp: Expectation {
                nat_to: None,
                ..exp
            },
        }]);
        assert!(untranslated[0].ends_with(" nat_to=-"), "{untranslated:?}");
    }

    #[test]
    fn metrics_places_are_capped_and_given_back() {
        use std::sync::atomic::Ordering::Relaxed;
        let c = std::sync::Arc::new(HttpCounters::default());
        let slots: Vec<_> = (0..METRICS_MAX_CONNECTIONS)
            .map(|_| HttpSlot::take(&c).expect("a place"))
            .collect();
        assert!(HttpSlot::take(&c).is_none());
        assert_eq!(c.refused.load(Relaxed), 1);
        drop(slots);
        assert_eq!(c.active.load(Relaxed), 0);
        assert!(HttpSlot::take(&c).is_some());
    }

    #[test]
    fn malformed_packets_are_explained() {
        let m = malformed_message(7);
        assert!(m.contains("accepted unchanged"), "{m}");
        assert!(m.contains("another rule that queues to 7"), "{m}");
        assert!(m.contains("packets_malformed"), "{m}");
    }

    #[test]
    fn fatal_queue_failure_says_what_happens_meanwhile() {
        let e = DaemonError::QueueFailing {
            count: 70,
            secs: 5,
            last: "x".into(),
        }
        .to_string();
        assert!(e.contains("restarts ftpct"), "{e}");
        assert!(e.contains("fail-closed"), "{e}");
    }
}
