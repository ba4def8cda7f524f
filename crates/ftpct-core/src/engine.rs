//! The sans-IO FTP ALG engine: packets and timestamps in; verdicts, actions and events out.
//!
//! Shaped like quinn-proto's `Connection`. Every driver (the daemon, `ftpct replay`, the
//! simulation tests, the benches, the fuzz targets) does the same: it calls
//! [`Engine::handle_packet`] once per queued packet with a [`Conntrack`] to ask for the entry
//! of an unknown control connection, drains [`Engine::poll_action`] (kernel work; each
//! [`Action::when`] says whether before the verdict), issues the returned [`Verdict`], logs
//! what [`Engine::poll_event`] yields, persists [`Engine::poll_journal`], and calls
//! [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says so. The engine never reads a
//! clock and does no I/O, so every rule is tested with simulated packets and time.
//!
//! Sequence spaces (see [`Hook`]): at [`Hook::PreConntrack`] the payload is parsed, rewritten,
//! and the packet's own `seq` mapped into the receiver's space; at [`Hook::PostConntrack`] the
//! `ack` and SACK blocks are mapped back into the sender's space. Conntrack, between the two,
//! therefore sees one consistent sequence space per direction and its strict window tracking
//! keeps accepting the connection.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::expect::{
    ExpectId, ExpectKind, ExpectLimits, ExpectTable, Expectation, InsertError, Inserted,
};
use crate::hashkey::HashKey;
use crate::packet::{self, Edit, TcpPacket};
use crate::parser::{self, Command, ParseError};
use crate::policy::{HoldTimeoutAction, Policy, Refusal};
pub use crate::restore::RestoreRefusal;
use crate::restore::{check_restored_expectation, check_restored_tuples};
use crate::session::{
    Admit, DirState, FlowKey, LineOut, Pending, Session, SessionTable, SynCache, MAX_CUSTODY,
};
pub use crate::stats::Stats;
use crate::types::{CtTuples, Dir, FlowTuple, Hook, RelatedEntry, SessionId, Timestamp};
use crate::window::{self, Segment, Untrusted};

/// Engine configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// TCP ports of FTP control connections (server side).
    pub control_ports: Vec<u16>,
    /// What is allowed and the limits (see [`Policy`]).
    pub policy: Policy,
    /// Key of the hash tables indexed by values from the network (flows, data destinations),
    /// so that an attacker cannot choose colliding ones. The daemon draws it at start; the
    /// default (zero) is for tests and replays.
    pub hash_key: [u64; 2],
}

impl Default for Config {
    fn default() -> Self {
        Config {
            control_ports: vec![21],
            policy: Policy::default(),
            hash_key: [0, 0],
        }
    }
}

/// What a conntrack lookup found (see [`Conntrack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtLookup {
    /// The entry's tuples, and its id (`CTA_ID`) when the kernel gave one: the id is kept
    /// with the session, so that after a restart a new connection that reuses the addresses
    /// and ports of a saved one does not inherit its offsets.
    Found {
        /// The entry's original and reply tuples.
        tuples: CtTuples,
        /// Its `CTA_ID`, if the kernel gave one.
        id: Option<u32>,
    },
    /// The kernel has no entry, or the lookup was not made (a budget, an error).
    Missing,
}

/// The kernel's conntrack table, as the engine needs it: [`Engine::handle_packet`] asks it
/// at most once per packet, for the first packet of a control connection it does not know
/// (by the packet's tuple, either direction). The daemon answers with a ctnetlink GET, replay
/// and the tests with a model of the NAT; every driver of the engine passes one, so none has
/// to fold the lookup into a second call.
pub trait Conntrack {
    /// The entry of `tuple`; `syn_ack` tells that the packet is a SYN-ACK (a new session).
    fn lookup(&mut self, tuple: &FlowTuple, syn_ack: bool) -> CtLookup;
}

impl<F: FnMut(&FlowTuple, bool) -> CtLookup> Conntrack for F {
    fn lookup(&mut self, tuple: &FlowTuple, syn_ack: bool) -> CtLookup {
        self(tuple, syn_ack)
    }
}

/// A conntrack table without entries: every unknown flow stays untracked.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoConntrack;

impl Conntrack for NoConntrack {
    fn lookup(&mut self, _: &FlowTuple, _: bool) -> CtLookup {
        CtLookup::Missing
    }
}

/// Where [`Engine::handle_packet`] sends a packet.
enum Route {
    /// A tracked control connection, in this direction.
    Session(SessionId, Dir),
    /// A SYN that may open an expected data connection.
    DataSyn,
    /// Nothing to do: accepted unchanged.
    Pass,
}

/// When the shell carries out an [`Action`] (see [`Action::when`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Before the verdict of the packet that caused it: the packet's fate depends on it.
    BeforeVerdict,
    /// After the verdict (it may wait; nothing the packet does depends on it).
    AfterVerdict,
}

/// What to do with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue unchanged.
    Accept,
    /// Let it continue as [`Engine::modified_packet`].
    AcceptModified,
    /// Drop it (a held partial line, or an out-of-order segment; the sender retransmits).
    Drop,
}

/// Kernel work for the shell, in the order [`Engine::poll_action`] yields it; [`Action::when`]
/// says whether it must be done before the verdict of the packet that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create this conntrack entry (ctnetlink) so the data connection is RELATED and NATed.
    CreateRelated(RelatedEntry),
    /// Let SYNs to `dst` be queued (ipset add with this timeout).
    WatchDst {
        /// The data connection's destination.
        dst: SocketAddr,
        /// The set element's timeout: the expectation's.
        timeout_secs: u32,
    },
    /// Stop queueing SYNs to `dst` (ipset del).
    UnwatchDst {
        /// The data connection's destination.
        dst: SocketAddr,
    },
    /// The control connection `original` (its conntrack original tuple) now has a sequence
    /// offset (a rewrite changed a length, [`Session::shifts_sequence`]): from its next packet
    /// on, acknowledgement numbers need mapping after conntrack.
    /// Emitted once per session, before the verdict of the packet whose rewrite caused it; the
    /// shell marks the conntrack entry, and the post-conntrack queue rules may select marked
    /// connections only (`seqadj_mark`).
    MarkAdjusted {
        /// The control connection's original tuple.
        original: FlowTuple,
    },
}

impl Action {
    /// When the shell carries it out: a conntrack entry, a set element or a mark before the
    /// verdict of the packet that caused it (the data connection's SYN is that packet, the
    /// server may connect as soon as it reads the PORT, the next packet needs the mark); a set
    /// element's removal may wait until after it.
    pub fn when(&self) -> When {
        match self {
            Action::UnwatchDst { .. } => When::AfterVerdict,
            Action::CreateRelated(_) | Action::WatchDst { .. } | Action::MarkAdjusted { .. } => {
                When::BeforeVerdict
            }
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides sent FIN (after the linger).
    Closed,
    /// An RST at the exact sequence number.
    Reset,
    /// No trusted segment for the idle timeout.
    Idle,
    /// The session table was full.
    Evicted,
    /// A new connection with the same addresses and ports started.
    Reused,
}

impl EndReason {
    /// For log lines.
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Reset => "reset",
            EndReason::Idle => "idle timeout",
            EndReason::Evicted => "evicted (session table full)",
            EndReason::Reused => "replaced by a new connection with the same addresses and ports",
        }
    }

    /// For metrics and event lines.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::Closed => "closed",
            EndReason::Reset => "reset",
            EndReason::Idle => "idle",
            EndReason::Evicted => "evicted",
            EndReason::Reused => "reused",
        }
    }
}

/// Why an expectation went away without being used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its timeout passed.
    Expired,
    /// The per-session limit evicted it for a newer one.
    Evicted,
    /// The same data address was announced again.
    Replaced,
    /// Its control session ended.
    MasterGone,
}

impl RemoveReason {
    /// For log lines.
    pub fn describe(self) -> &'static str {
        match self {
            RemoveReason::Expired => "expired unused",
            RemoveReason::Evicted => "evicted by a newer one (per-session limit)",
            RemoveReason::Replaced => "replaced",
            RemoveReason::MasterGone => "control session ended",
        }
    }

    /// For metrics and event lines.
    pub fn label(self) -> &'static str {
        match self {
            RemoveReason::Expired => "expired",
            RemoveReason::Evicted => "evicted",
            RemoveReason::Replaced => "replaced",
            RemoveReason::MasterGone => "master_gone",
        }
    }
}

/// The FTP messages the engine acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// `PORT` (client).
    Port,
    /// `EPRT` (client).
    Eprt,
    /// `PASV` (client).
    Pasv,
    /// `EPSV` (client).
    Epsv,
    /// `227 Entering Passive Mode` (server).
    Reply227,
    /// `229 Entering Extended Passive Mode` (server).
    Reply229,
    /// `AUTH TLS` (client).
    AuthTls,
    /// `234`, AUTH accepted (server): the channel is encrypted from here.
    Reply234,
}

impl MsgKind {
    /// The label in metrics (`type="..."`), event lines and replay output.
    pub fn label(self) -> &'static str {
        match self {
            MsgKind::Port => "port",
            MsgKind::Eprt => "eprt",
            MsgKind::Pasv => "pasv",
            MsgKind::Epsv => "epsv",
            MsgKind::Reply227 => "227",
            MsgKind::Reply229 => "229",
            MsgKind::AuthTls => "auth_tls",
            MsgKind::Reply234 => "234",
        }
    }
}

/// Something worth a log line or a metric. New kinds may be added: match with a `_` arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A control session started (or was picked up mid-stream).
    SessionStart {
        /// The session.
        id: SessionId,
        /// Its conntrack tuples (the NAT mapping).
        ct: CtTuples,
    },
    /// A control session ended.
    SessionEnd {
        /// The session.
        id: SessionId,
        /// Its conntrack tuples.
        ct: CtTuples,
        /// Why.
        reason: EndReason,
    },
    /// An FTP message the engine acts on was parsed.
    Message {
        /// The session.
        id: SessionId,
        /// Which message.
        kind: MsgKind,
        /// The line it was parsed from ([`Engine::event_line`]).
        line: LineRef,
    },
    /// An announced address was rewritten for NAT.
    Rewritten {
        /// The session.
        id: SessionId,
        /// Which announcement.
        kind: ExpectKind,
        /// The address in the line.
        from: SocketAddr,
        /// The address written instead.
        to: SocketAddr,
    },
    /// A data connection is expected.
    ExpectCreated {
        /// Its id in the expectation table.
        id: ExpectId,
        /// The expectation.
        exp: Expectation,
    },
    /// An expected data connection arrived and was admitted as RELATED.
    ExpectUsed {
        /// Its id.
        id: ExpectId,
        /// The expectation it matched.
        exp: Expectation,
        /// The data connection's tuple.
        data: FlowTuple,
    },
    /// An expectation went away unused.
    ExpectRemoved {
        /// Its id.
        id: ExpectId,
        /// The expectation.
        exp: Expectation,
        /// Why.
        reason: RemoveReason,
    },
    /// An announced data address was refused: no expectation, the line unchanged.
    Refused {
        /// The session.
        id: SessionId,
        /// Which announcement.
        kind: ExpectKind,
        /// The announced address.
        addr: SocketAddr,
        /// Why.
        reason: Refusal,
    },
    /// An FTP message could not be parsed; let through unchanged.
    ParseFailed {
        /// The session.
        id: SessionId,
        /// Who sent it.
        dir: Dir,
        /// Which message it looked like.
        kind: MsgKind,
        /// What was wrong.
        error: ParseError,
        /// The line that failed ([`Engine::event_line`]).
        line: LineRef,
    },
    /// AUTH TLS accepted: data connections of this session will not be admitted.
    TlsStarted {
        /// The session.
        id: SessionId,
    },
    /// A line longer than `max_line`: let through, not parsed.
    LineTooLong {
        /// The session.
        id: SessionId,
        /// Who sent it.
        dir: Dir,
    },
    /// A partial line was held for `hold_timeout` without its end. With
    /// [`HoldTimeoutAction::Keep`] its held bytes (`held`) stay inside; with `Pass` they are let
    /// through unchanged with the sender's next packet and the line is not rewritten.
    HoldTimedOut {
        /// The session.
        id: SessionId,
        /// Who sent the line.
        dir: Dir,
        /// Bytes held.
        held: u32,
        /// How long they were held (`hold_timeout`).
        after: Duration,
        /// What happened to them.
        action: HoldTimeoutAction,
    },
    /// A message needed rewriting but its line had already been let through.
    NotRewritten {
        /// The session.
        id: SessionId,
        /// Which announcement.
        kind: ExpectKind,
    },
    /// Bytes before a segment never came; tracking continues at the next line.
    Resynced {
        /// The session.
        id: SessionId,
        /// Which direction.
        dir: Dir,
    },
    /// A segment of a tracked session that the kernel would not accept either (the trust
    /// model, `window.rs`): passed on untouched, no state changed.
    SegmentRefused {
        /// The session.
        id: SessionId,
        /// Who sent the segment.
        dir: Dir,
        /// Why it was refused.
        why: SegmentRefusal,
    },
    /// More than `log_events_per_second` events of this kind in one second from one session:
    /// the rest of this second's are not reported (counted in `events_throttled`).
    Throttled {
        /// The session.
        id: SessionId,
        /// The kind of event, as throttled.
        kind: &'static str,
    },
    /// A queued packet that is not TCP/IP the engine can read (accepted unchanged).
    Malformed {
        /// Why it could not be read.
        error: packet::PacketError,
        /// Its length in bytes.
        len: usize,
        /// Where it was queued.
        hook: Hook,
    },
    /// The session table is full and sessions are being evicted; `protected_left` is false
    /// when only sessions with sequence offsets or live expectations were left to evict.
    EvictionStarted {
        /// `max_sessions`.
        max_sessions: usize,
        /// Sessions without offsets or expectations are still left to evict.
        protected_left: bool,
    },
}

/// The control line behind an event ([`Event::Message`], [`Event::ParseFailed`]): read it with
/// [`Engine::event_line`] while the event is being handled (before the engine handles the next
/// packet: a line that starts with no event queued drops the lines kept before it). With [`Engine::keep_event_lines`] on, the engine copies a line only when an
/// event names it, into one reused buffer of bounded size; off (the default), events carry
/// [`LineRef::NONE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineRef {
    gen: u32,
    start: u32,
    len: u32,
    pos: u32,
}

impl LineRef {
    /// No line (not kept, or the event was made outside the line path).
    pub const NONE: LineRef = LineRef {
        gen: 0,
        start: 0,
        len: 0,
        pos: 0,
    };

    /// The sequence number of the line's first byte, in its sender's space.
    pub fn pos(self) -> u32 {
        self.pos
    }
}

/// Bytes of event lines kept at once (beyond them, events carry [`LineRef::NONE`]).
const MAX_EVENT_TEXT: usize = 64 << 10;

/// Why a segment of a tracked session was not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRefusal {
    /// Outside the TCP window (conntrack marks it INVALID).
    Window(Untrusted),
    /// An RST whose sequence number is not the exact one expected: it closes nothing.
    Rst,
    /// A SYN-ACK on a live session that answers no SYN of a new connection.
    SynAck,
}

impl SegmentRefusal {
    /// For event lines and metrics.
    pub fn label(self) -> &'static str {
        match self {
            SegmentRefusal::Window(u) => u.label(),
            SegmentRefusal::Rst => "rst_not_exact",
            SegmentRefusal::SynAck => "synack_on_live_session",
        }
    }

    /// For log lines.
    pub fn describe(self) -> String {
        match self {
            SegmentRefusal::Window(u) => u.to_string(),
            SegmentRefusal::Rst => {
                "RST with a sequence number other than the expected one (closes nothing)".into()
            }
            SegmentRefusal::SynAck => "SYN-ACK on a live session that answers no new SYN".into(),
        }
    }
}

impl Event {
    /// Which per-session throttle an event counts against (log-worthy events only).
    fn throttle_kind(&self) -> Option<(SessionId, usize, &'static str)> {
        match *self {
            Event::Refused { id, .. } => Some((id, 0, "refused")),
            Event::ParseFailed { id, .. } => Some((id, 1, "parse_failed")),
            Event::LineTooLong { id, .. } => Some((id, 2, "line_too_long")),
            Event::NotRewritten { id, .. } => Some((id, 3, "not_rewritten")),
            Event::Resynced { id, .. } => Some((id, 4, "resynced")),
            Event::SegmentRefused { id, .. } => Some((id, 5, "segment_refused")),
            Event::HoldTimedOut { id, .. } => Some((id, 6, "hold_timed_out")),
            _ => None,
        }
    }
}

/// A change of the state that must survive a daemon restart (the shell appends these to the
/// state file before it issues the verdict of the packet that caused them; see `state.rs`).
/// Replaying a snapshot followed by later records with [`Engine::restore`] rebuilds the
/// sessions' rewrite logs, stream positions and the expectation table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    /// A session started (or was picked up).
    SessionStart {
        /// The session.
        id: SessionId,
        /// Its conntrack tuples.
        ct: CtTuples,
        /// When it started.
        created: Timestamp,
    },
    /// The conntrack entry id (`CTA_ID`) of the session's control connection (see
    /// [`Engine::set_conntrack_id`]).
    ConntrackId {
        /// The session.
        id: SessionId,
        /// `CTA_ID`.
        ct_id: u32,
    },
    /// The stream of `dir` continues at a line start at `pos`.
    LinePos {
        /// The session.
        id: SessionId,
        /// The direction.
        dir: Dir,
        /// Original sequence number of the line start.
        pos: u32,
    },
    /// A rewrite record of `dir` (see [`crate::seqadj::Record`]).
    Rewrite {
        /// The session.
        id: SessionId,
        /// The direction.
        dir: Dir,
        /// The record.
        record: crate::seqadj::Record,
    },
    /// The folded offset of `dir` (snapshots only).
    Base {
        /// The session.
        id: SessionId,
        /// The direction.
        dir: Dir,
        /// The folded offset.
        base: u32,
    },
    /// The session went TLS: no longer inspected.
    Tls {
        /// The session.
        id: SessionId,
    },
    /// The session ended.
    SessionEnd {
        /// The session.
        id: SessionId,
    },
    /// An expectation was created.
    ExpectAdd {
        /// The expectation.
        exp: Expectation,
    },
    /// An expectation was removed.
    ExpectDel {
        /// Where its data connection comes from.
        src: std::net::IpAddr,
        /// Where it goes.
        dst: SocketAddr,
    },
}

const MAX_EVENTS: usize = 4096;
const MAX_ACTIONS: usize = 4096;
/// Public port candidates tried per rewrite (bounded work on the packet path).
const PORT_TRIES: u32 = 4096;
/// CTA_TIMEOUT of a created data entry, until its SYN moves it on.
const DATA_CT_TIMEOUT: u32 = 120;
/// Segments dropped after a gap before the stream is resynchronised past it.
const MAX_GAP_DROPS: u8 = 6;
/// Minimum segment size assumed when merging held bytes into the next segment.
const MIN_MERGE: u32 = 536;
/// Least recently active sessions looked at for one without state to evict.
const EVICT_SCAN: usize = 64;

/// The engine. See the module documentation.
pub struct Engine {
    cfg: Config,
    /// The control connections, their flow index and their deadlines.
    sessions: SessionTable,
    expect: ExpectTable,
    next_session: u64,
    events: VecDeque<Event>,
    /// The lines behind the queued events ([`LineRef`]), and their generation (0 = none).
    event_text: Vec<u8>,
    event_gen: u32,
    /// Whether events name their lines ([`Engine::keep_event_lines`]).
    keep_lines: bool,
    actions: VecDeque<Action>,
    journal: VecDeque<Journal>,
    /// Set when a journal record could not be queued: the shell must write a full snapshot.
    journal_overflow: bool,
    stats: Stats,
    out: Vec<u8>,
    line: Vec<u8>,
    orig: Vec<u8>,
    xform: Vec<u8>,
    fmt: Vec<u8>,
    scratch_removed: Vec<(ExpectId, Expectation)>,
    /// Handshakes in progress: the SYNs that will start the clients' windows.
    syns: SynCache,
    /// Evicting since the table last had room (one WARN per episode).
    evicting: bool,
    /// ... and it came to sessions with sequence offsets or expectations.
    evicting_state: bool,
    /// When each current hold reaches `hold_timeout` (one entry per held line, removed when
    /// the hold ends).
    holds: BTreeSet<(Timestamp, SessionId, usize)>,
    /// Time of the packet or timeout being handled.
    now: Timestamp,
}

/// When a session ends unless a packet comes: idle timeout, or the linger after a close.
fn deadline_of(p: &Policy, s: &Session) -> Timestamp {
    session_deadline(s, p.session_idle_timeout, p.session_close_linger)
}

fn session_deadline(s: &Session, idle: Duration, linger: Duration) -> Timestamp {
    if s.is_closing() {
        s.last_seen.plus(linger)
    } else {
        s.last_seen.plus(idle)
    }
}

impl Engine {
    /// An engine with no sessions and no expectations.
    pub fn new(cfg: Config) -> Self {
        let limits = ExpectLimits {
            max_total: cfg.policy.max_expectations,
            max_per_master: cfg.policy.max_expect_per_session.max(1),
        };
        let key = HashKey::new(cfg.hash_key);
        Engine {
            sessions: SessionTable::with_key(key.clone()),
            expect: ExpectTable::with_key(limits, key.clone()),
            syns: SynCache::with_key(key),
            cfg,
            next_session: 1,
            events: VecDeque::new(),
            event_text: Vec::new(),
            event_gen: 1,
            keep_lines: false,
            actions: VecDeque::new(),
            journal: VecDeque::new(),
            journal_overflow: false,
            stats: Stats::default(),
            out: Vec::with_capacity(2048),
            line: Vec::with_capacity(256),
            orig: Vec::with_capacity(2048),
            xform: Vec::with_capacity(2048),
            fmt: Vec::with_capacity(64),
            scratch_removed: Vec::new(),
            evicting: false,
            evicting_state: false,
            holds: BTreeSet::new(),
            now: Timestamp::ZERO,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Applies a new configuration (SIGHUP reload) without touching live state.
    pub fn reconfigure(&mut self, mut cfg: Config) {
        // The tables keep the key they were made with.
        cfg.hash_key = self.cfg.hash_key;
        self.expect.set_limits(ExpectLimits {
            max_total: cfg.policy.max_expectations,
            max_per_master: cfg.policy.max_expect_per_session.max(1),
        });
        self.cfg = cfg;
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every session, in no order.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> + '_ {
        self.sessions.values()
    }

    /// The session `id`, if it is live.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// The session a packet with this tuple at `hook` belongs to, and its direction.
    pub fn session_of(&self, tuple: FlowTuple, hook: Hook) -> Option<(SessionId, Dir)> {
        self.sessions.lookup(&FlowKey {
            tuple,
            post: hook == Hook::PostConntrack,
        })
    }

    /// Sessions, deadline entries and flow keys held: the session table's memory, which must
    /// follow the live sessions (one deadline and at most 4 flow keys each).
    pub fn table_footprint(&self) -> (usize, usize, usize) {
        let (deadlines, flows) = self.sessions.footprint();
        (self.sessions.len(), deadlines, flows)
    }

    /// Held partial lines waiting for their end or their time bound (one entry each).
    pub fn holds_pending(&self) -> usize {
        self.holds.len()
    }

    /// How many sessions are tracked.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The expectation table (read only).
    pub fn expectations(&self) -> &ExpectTable {
        &self.expect
    }

    /// The packet to send for [`Verdict::AcceptModified`].
    pub fn modified_packet(&self) -> &[u8] {
        &self.out
    }

    /// The next event, oldest first (`None` when there is none).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Event::Message`] and [`Event::ParseFailed`] name their line (off by default:
    /// `ftpct replay` shows lines, the daemon does not pay for copying them).
    pub fn keep_event_lines(&mut self, on: bool) {
        self.keep_lines = on;
    }

    /// The control line (without its terminator) behind an event just taken from
    /// [`Engine::poll_event`]; `None` when it was not kept, or is gone (see [`LineRef`]).
    pub fn event_line(&self, r: LineRef) -> Option<&[u8]> {
        if r.gen != self.event_gen {
            return None;
        }
        let start = r.start as usize;
        self.event_text.get(start..start + r.len as usize)
    }

    /// Gives the events pushed since `from` that name a line (still [`LineRef::NONE`]) the
    /// line `line` at `pos`, copying it once.
    #[cold]
    #[inline(never)]
    fn name_line(&mut self, from: usize, line: &[u8], pos: u32) {
        if from == 0 && !self.event_text.is_empty() {
            // The queue was empty when this line began: every event naming the lines kept so
            // far has been taken (and its line read), so they can go.
            self.event_text.clear();
            self.event_gen = self.event_gen.wrapping_add(1).max(1);
        }
        let mut named: Option<LineRef> = None;
        for i in from..self.events.len() {
            let Some(Event::Message { line: r, .. } | Event::ParseFailed { line: r, .. }) =
                self.events.get(i)
            else {
                continue;
            };
            if *r != LineRef::NONE {
                continue;
            }
            let lr = match named {
                Some(lr) => lr,
                None => {
                    let text = line.strip_suffix(b"\r").unwrap_or(line);
                    if self.event_text.len() + text.len() > MAX_EVENT_TEXT {
                        return;
                    }
                    let lr = LineRef {
                        gen: self.event_gen,
                        start: self.event_text.len() as u32,
                        len: text.len() as u32,
                        pos,
                    };
                    self.event_text.extend_from_slice(text);
                    named = Some(lr);
                    lr
                }
            };
            if let Some(Event::Message { line: r, .. } | Event::ParseFailed { line: r, .. }) =
                self.events.get_mut(i)
            {
                *r = lr;
            }
        }
    }

    /// The next action for the shell, in order (`None` when there is none).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next state change to persist.
    pub fn poll_journal(&mut self) -> Option<Journal> {
        self.journal.pop_front()
    }

    /// True (once) when journal records were lost to the queue bound: persist a full snapshot.
    pub fn take_journal_overflow(&mut self) -> bool {
        std::mem::take(&mut self.journal_overflow)
    }

    fn journal(&mut self, j: Journal) {
        if self.journal.len() >= MAX_ACTIONS {
            self.journal_overflow = true;
            return;
        }
        self.journal.push_back(j);
    }

    /// The whole persistent state as records, in an order [`Engine::restore`] accepts.
    pub fn snapshot_each(&self, mut emit: impl FnMut(Journal)) {
        let mut ids: Vec<&SessionId> = self.sessions.keys().collect();
        ids.sort();
        for id in ids {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            emit(Journal::SessionStart {
                id: *id,
                ct: s.ct,
                created: s.created,
            });
            if let Some(ct_id) = s.ct_id {
                emit(Journal::ConntrackId { id: *id, ct_id });
            }
            for dir in [Dir::Original, Dir::Reply] {
                let d = s.dir(dir);
                if d.seqadj.base() != 0 {
                    emit(Journal::Base {
                        id: *id,
                        dir,
                        base: d.seqadj.base(),
                    });
                }
                for r in d.seqadj.records() {
                    emit(Journal::Rewrite {
                        id: *id,
                        dir,
                        record: *r,
                    });
                }
                if d.synced && !d.skipping {
                    emit(Journal::LinePos {
                        id: *id,
                        dir,
                        pos: d.line_start,
                    });
                }
            }
            if s.encrypted {
                emit(Journal::Tls { id: *id });
            }
        }
        let mut exps: Vec<_> = self.expect.iter().collect();
        exps.sort_by_key(|(id, _)| *id);
        for (_, e) in exps {
            emit(Journal::ExpectAdd { exp: *e });
        }
    }

    /// [`Engine::snapshot_each`] into a vector.
    pub fn snapshot(&self, out: &mut Vec<Journal>) {
        self.snapshot_each(|j| out.push(j));
    }

    /// Applies one persisted record (state file replay at start), after checking it against
    /// the invariants and limits the packet path keeps (a record is trusted no further than
    /// its hash, which only detects torn lines). A refused record changes nothing; records of
    /// unknown sessions (ended, or refused before) and expired expectations are ignored, so a
    /// replay after a session's end is harmless.
    pub fn restore(&mut self, rec: &Journal, now: Timestamp) -> Result<(), RestoreRefusal> {
        self.now = now;
        match *rec {
            Journal::SessionStart { id, ct, created } => {
                let next = match id.0.checked_add(1) {
                    Some(n) if id.0 != 0 => n,
                    _ => return Err(RestoreRefusal::SessionId(id.0)),
                };
                check_restored_tuples(&ct).map_err(|why| RestoreRefusal::Tuples(id, why))?;
                if !self.is_control_port(ct.original.dst.port())
                    && !self.is_control_port(ct.reply.src.port())
                {
                    return Err(RestoreRefusal::NotControl(id, ct.original.dst.port()));
                }
                if created > now {
                    return Err(RestoreRefusal::Future(id));
                }
                let taken = [ct.original, ct.reply].iter().any(|t| {
                    self.sessions
                        .lookup(&FlowKey {
                            tuple: *t,
                            post: false,
                        })
                        .is_some()
                });
                if self.sessions.contains_key(&id) || taken {
                    return Err(RestoreRefusal::Duplicate(id));
                }
                let max = self.cfg.policy.max_sessions.max(1);
                if self.sessions.len() >= max {
                    return Err(RestoreRefusal::TooManySessions(max));
                }
                let mut s = Session::new(id, ct, created);
                s.last_seen = now;
                let deadline = deadline_of(&self.cfg.policy, &s);
                self.sessions.insert(s, deadline);
                self.next_session = self.next_session.max(next);
            }
            Journal::ConntrackId { id, ct_id } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.ct_id = Some(ct_id);
                }
            }
            Journal::LinePos { id, dir, pos } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    let d = s.dir_mut(dir);
                    d.sync(pos, true);
                    d.restored = true;
                }
            }
            Journal::Rewrite { id, dir, record } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.dir_mut(dir)
                        .seqadj
                        .add(record.pos, record.old_len, record.new_bytes())
                        .map_err(|_| RestoreRefusal::Rewrite(id))?;
                }
            }
            Journal::Base { id, dir, base } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.dir_mut(dir).seqadj.set_base(base);
                }
            }
            Journal::Tls { id } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.encrypted = true;
                }
            }
            Journal::SessionEnd { id } => {
                if self.sessions.remove(id).is_some() {
                    let mut removed = Vec::new();
                    self.expect.remove_master(id, &mut removed);
                }
            }
            Journal::ExpectAdd { exp } => {
                let Some(s) = self.sessions.get(&exp.master) else {
                    return Err(RestoreRefusal::NoSession(exp.master));
                };
                check_restored_expectation(&self.cfg.policy, s, &exp, now)?;
                if exp.expires > now {
                    self.expect.insert(exp).map_err(|e| match e {
                        InsertError::TableFull(n) => RestoreRefusal::ExpectTableFull(n),
                        InsertError::Clash => RestoreRefusal::ExpectClash(exp.dst),
                    })?;
                }
            }
            Journal::ExpectDel { src, dst } => {
                if let Some((id, _)) = self.expect.lookup(src, dst) {
                    self.expect.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Records the conntrack entry id (`CTA_ID`) of a session and journals it (from a
    /// [`CtLookup::Found`], or the shell's check of a restored session): after a restart the
    /// shell compares it with the kernel's entry, so that a new connection that
    /// reuses the addresses and ports of a saved one does not inherit its offsets.
    pub fn set_conntrack_id(&mut self, id: SessionId, ct_id: u32) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.ct_id != Some(ct_id) {
            s.ct_id = Some(ct_id);
            self.journal(Journal::ConntrackId { id, ct_id });
        }
    }

    /// Forgets a session (e.g. its conntrack entry is gone after a restart).
    pub fn forget_session(&mut self, id: SessionId) {
        self.end_session(id, EndReason::Closed);
    }

    /// When [`Engine::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let s = self.sessions.next_deadline();
        let t = match (s, self.expect.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (t, self.holds.first().map(|h| h.0)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A hold reached `hold_timeout` without the end of its line.
    fn hold_timed_out(&mut self, sid: SessionId, di: usize, t: Timestamp) {
        let action = self.cfg.policy.hold_timeout_action;
        let after = self.cfg.policy.hold_limit();
        let dir = if di == 0 { Dir::Original } else { Dir::Reply };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let d = s.dir_mut(dir);
        let Some(h) = d.held_from else {
            return;
        };
        if d.hold_deadline != Some(t) {
            return;
        }
        d.hold_deadline = None;
        let held = d
            .line_start
            .wrapping_add(d.line.len() as u32)
            .wrapping_sub(h);
        if action == HoldTimeoutAction::Pass {
            d.hold_release = true;
        }
        self.stats.hold_timeouts += 1;
        self.event(Event::HoldTimedOut {
            id: sid,
            dir,
            held,
            after,
            action,
        });
    }

    /// Expires expectations and idle or closed sessions.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.now = now;
        let mut removed = std::mem::take(&mut self.scratch_removed);
        removed.clear();
        self.expect.expire(now, &mut removed);
        for (id, exp) in removed.drain(..) {
            self.stats.expect_expired += 1;
            self.unwatch(&exp);
            self.event(Event::ExpectRemoved {
                id,
                exp,
                reason: RemoveReason::Expired,
            });
        }
        self.scratch_removed = removed;
        while let Some(&(t, sid, di)) = self.holds.first() {
            if t > now {
                break;
            }
            self.holds.remove(&(t, sid, di));
            self.hold_timed_out(sid, di, t);
        }
        let (idle, linger) = (
            self.cfg.policy.session_idle_timeout,
            self.cfg.policy.session_close_linger,
        );
        while let Some(sid) = self
            .sessions
            .next_due(now, |s| session_deadline(s, idle, linger))
        {
            let Some(s) = self.sessions.get(&sid) else {
                break;
            };
            let reason = if s.reset {
                EndReason::Reset
            } else if s.is_closing() {
                EndReason::Closed
            } else {
                EndReason::Idle
            };
            self.end_session(sid, reason);
        }
    }

    fn event(&mut self, e: Event) {
        if let Some((sid, kind, label)) = e.throttle_kind() {
            let (now, limit) = (self.now, self.cfg.policy.log_events_per_second);
            let admit = match self.sessions.get_mut(&sid) {
                Some(s) => s.throttle.admit(kind, now, limit),
                None => Admit::Yes,
            };
            match admit {
                Admit::Yes => {}
                Admit::FirstSuppressed => {
                    self.stats.events_throttled += 1;
                    self.push_event(Event::Throttled {
                        id: sid,
                        kind: label,
                    });
                    return;
                }
                Admit::No => {
                    self.stats.events_throttled += 1;
                    return;
                }
            }
        }
        self.push_event(e);
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.stats.events_dropped += 1;
            return;
        }
        self.events.push_back(e);
    }

    fn action(&mut self, a: Action) {
        if self.actions.len() < MAX_ACTIONS {
            self.actions.push_back(a);
        } else {
            // Only a mass expiry between two drains gets here (every packet queues a handful);
            // what is lost is then an `UnwatchDst` whose set element times out by itself.
            self.stats.actions_dropped += 1;
        }
    }

    /// An expectation left the table: stop queueing its SYNs and journal it.
    fn unwatch(&mut self, exp: &Expectation) {
        self.action(Action::UnwatchDst { dst: exp.dst });
        self.journal(Journal::ExpectDel {
            src: exp.src,
            dst: exp.dst,
        });
    }

    fn is_control_port(&self, p: u16) -> bool {
        self.cfg.control_ports.contains(&p)
    }

    /// Handles one queued packet (bytes from the IP header on): one call, one verdict. `ct`
    /// is asked for the conntrack entry of a control connection the engine does not know yet.
    /// Actions ([`Engine::poll_action`]), events and journal records it caused are queued.
    pub fn handle_packet(
        &mut self,
        bytes: &[u8],
        hook: Hook,
        now: Timestamp,
        ct: &mut dyn Conntrack,
    ) -> Verdict {
        self.now = now;
        let pkt = match TcpPacket::parse(bytes) {
            Ok(p) => p,
            Err(error) => return self.malformed(error, bytes.len(), hook),
        };
        let verdict = match self.route(&pkt, hook, ct) {
            Route::Session(sid, dir) if hook == Hook::PostConntrack => {
                self.post(&pkt, sid, dir, now)
            }
            Route::Session(sid, dir) => self.pre(&pkt, sid, dir, now),
            Route::DataSyn => self.data_syn(&pkt, now),
            Route::Pass => Verdict::Accept,
        };
        match verdict {
            Verdict::Accept => self.stats.packets_accepted += 1,
            Verdict::AcceptModified => self.stats.packets_modified += 1,
            Verdict::Drop => {}
        }
        verdict
    }

    /// A packet that is not TCP/IP the engine can read: accepted unchanged, counted, reported.
    fn malformed(&mut self, error: packet::PacketError, len: usize, hook: Hook) -> Verdict {
        self.stats.packets_malformed += 1;
        self.stats.packets_accepted += 1;
        self.event(Event::Malformed { error, len, hook });
        Verdict::Accept
    }

    /// The session a packet belongs to; a SYN-ACK that reopens a tuple, or the first packet of
    /// an unknown flow, goes on to [`Engine::unknown_flow`].
    fn route(&mut self, pkt: &TcpPacket<'_>, hook: Hook, ct: &mut dyn Conntrack) -> Route {
        let post = hook == Hook::PostConntrack;
        let key = FlowKey {
            tuple: pkt.tuple,
            post,
        };
        if let Some((sid, dir)) = self.sessions.lookup(&key) {
            let synack_on_live = !post && dir == Dir::Reply && pkt.flags.syn && pkt.flags.ack;
            if !synack_on_live {
                return Route::Session(sid, dir);
            }
            if !self.known_synack(sid, pkt) {
                return Route::Pass;
            }
        }
        self.unknown_flow(pkt, post, ct)
    }

    /// A packet of no session: a data SYN, a control SYN (remembered for its window), or the
    /// first packet of a control connection, which starts a session once conntrack knows it.
    fn unknown_flow(&mut self, pkt: &TcpPacket<'_>, post: bool, ct: &mut dyn Conntrack) -> Route {
        let control = self.is_control_port(pkt.tuple.dst.port())
            || self.is_control_port(pkt.tuple.src.port());
        if !post && pkt.flags.syn && !pkt.flags.ack {
            if !control {
                return Route::DataSyn;
            }
            self.record_syn(pkt);
            return Route::Pass;
        }
        if post || !control || pkt.flags.rst {
            return Route::Pass;
        }
        let (tuples, ct_id) = match ct.lookup(&pkt.tuple, pkt.flags.syn && pkt.flags.ack) {
            CtLookup::Found { tuples, id } => (tuples, id),
            CtLookup::Missing => {
                // No conntrack entry: not a connection the firewall let through (a stray or
                // spoofed segment). Tracking it would let junk evict real sessions.
                self.stats.untracked += 1;
                return Route::Pass;
            }
        };
        let Some((sid, dir)) = self.new_session(pkt, tuples, self.now) else {
            return Route::Pass;
        };
        if let Some(id) = ct_id {
            self.set_conntrack_id(sid, id);
        }
        Route::Session(sid, dir)
    }

    /// A SYN-ACK on a live session. A new connection reuses the addresses and ports only when
    /// the old one is closing or the SYN-ACK answers a SYN the client sent since (conntrack's
    /// rule): then the old session ends (its sequence shifts would break the new one) and
    /// `true` lets the caller start the new one. Anything else (a retransmission, or a spoofed
    /// SYN-ACK) passes untouched and changes nothing: `false`.
    fn known_synack(&mut self, sid: SessionId, pkt: &TcpPacket<'_>) -> bool {
        let Some(s) = self.sessions.get(&sid) else {
            return true;
        };
        let answers_syn = s.reopen_syn.map(|isn| isn.wrapping_add(1)) == Some(pkt.ack);
        if s.is_closing() || answers_syn {
            self.end_session(sid, EndReason::Reused);
            return true;
        }
        let r = s.dir(Dir::Reply);
        let retransmission = r.synced && r.next == pkt.seq.wrapping_add(1);
        if !retransmission {
            self.stats.synack_ignored += 1;
            self.event(Event::SegmentRefused {
                id: sid,
                dir: Dir::Reply,
                why: SegmentRefusal::SynAck,
            });
        }
        false
    }

    /// Remembers a control connection's SYN for the window of the session its SYN-ACK starts.
    fn record_syn(&mut self, pkt: &TcpPacket<'_>) {
        let seg = segment_of(pkt, None);
        self.syns.record(pkt.tuple, seg, pkt.wscale, self.now);
    }

    fn new_session(
        &mut self,
        pkt: &TcpPacket<'_>,
        ct: CtTuples,
        now: Timestamp,
    ) -> Option<(SessionId, Dir)> {
        let dir = if pkt.tuple == ct.original {
            Dir::Original
        } else if pkt.tuple == ct.reply {
            Dir::Reply
        } else {
            return None;
        };
        if !self.is_control_port(ct.original.dst.port())
            && !self.is_control_port(ct.reply.src.port())
        {
            return None;
        }
        if self.sessions.len() >= self.cfg.policy.max_sessions.max(1) {
            self.evict_one();
        } else if self.sessions.len() < self.cfg.policy.max_sessions / 10 * 9 {
            self.evicting = false;
            self.evicting_state = false;
        }
        let id = SessionId(self.next_session);
        self.next_session = self.next_session.saturating_add(1);
        let mut s = Session::new(id, ct, now);
        if dir == Dir::Reply && pkt.flags.syn && pkt.flags.ack {
            // SYN-ACK: both streams start here, at a line start, and so do both windows.
            s.dir_mut(Dir::Reply).sync(pkt.seq.wrapping_add(1), true);
            s.dir_mut(Dir::Original).sync(pkt.ack, true);
            let syn = self.syns.take(&ct.original, pkt.ack, now);
            let synack = segment_of(pkt, Some(pkt.ack));
            let (client, server) = window::from_handshake(syn, &synack, pkt.wscale);
            s.dir_mut(Dir::Original).win = client;
            s.dir_mut(Dir::Reply).win = server;
        }
        let deadline = deadline_of(&self.cfg.policy, &s);
        self.sessions.insert(s, deadline);
        self.stats.sessions_started += 1;
        self.journal(Journal::SessionStart {
            id,
            ct,
            created: now,
        });
        if dir == Dir::Reply && pkt.flags.syn && pkt.flags.ack {
            for (d, pos) in [
                (Dir::Reply, pkt.seq.wrapping_add(1)),
                (Dir::Original, pkt.ack),
            ] {
                self.journal(Journal::LinePos { id, dir: d, pos });
            }
        }
        self.event(Event::SessionStart { id, ct });
        Some((id, dir))
    }

    /// Ends one session to make room (bounded memory under a flood of sessions): the least
    /// recently active one among those without sequence offsets or live expectations (idle
    /// connections that lose nothing), looking at the [`EVICT_SCAN`] least recently active;
    /// only when all of those have state, the least recently active one.
    fn evict_one(&mut self) {
        let expect = &self.expect;
        let stateless = |s: &Session| !s.shifts_sequence() && expect.master_len(s.id) == 0;
        let pick = self.sessions.oldest_matching(EVICT_SCAN, stateless);
        let (sid, with_state) = match pick {
            Some(sid) => (sid, false),
            None => {
                let policy = &self.cfg.policy;
                let Some(sid) = self
                    .sessions
                    .next_due(Timestamp(u64::MAX), |s| deadline_of(policy, s))
                else {
                    return;
                };
                (sid, true)
            }
        };
        // One WARN when evicting starts, and one more if it comes to sessions with state.
        if !self.evicting || (with_state && !self.evicting_state) {
            self.evicting = true;
            self.evicting_state |= with_state;
            self.event(Event::EvictionStarted {
                max_sessions: self.cfg.policy.max_sessions,
                protected_left: !with_state,
            });
        }
        self.stats.sessions_evicted += 1;
        if with_state {
            self.stats.sessions_evicted_with_state += 1;
        }
        self.end_session(sid, EndReason::Evicted);
    }

    fn end_session(&mut self, sid: SessionId, reason: EndReason) {
        let Some(s) = self.sessions.remove(sid) else {
            return;
        };
        for (i, d) in s.dirs.iter().enumerate() {
            if let Some(t) = d.hold_deadline {
                self.holds.remove(&(t, sid, i));
            }
        }
        let mut removed = std::mem::take(&mut self.scratch_removed);
        removed.clear();
        self.expect.remove_master(sid, &mut removed);
        for (id, exp) in removed.drain(..) {
            self.unwatch(&exp);
            self.event(Event::ExpectRemoved {
                id,
                exp,
                reason: RemoveReason::MasterGone,
            });
        }
        self.scratch_removed = removed;
        self.journal(Journal::SessionEnd { id: sid });
        self.event(Event::SessionEnd {
            id: sid,
            ct: s.ct,
            reason,
        });
    }

    /// A SYN that is not on a control port: a data connection that may match an expectation.
    fn data_syn(&mut self, pkt: &TcpPacket<'_>, now: Timestamp) -> Verdict {
        let Some((id, _)) = self.expect.lookup(pkt.tuple.src.ip(), pkt.tuple.dst) else {
            self.stats.syn_unmatched += 1;
            return Verdict::Accept;
        };
        let Some(exp) = self.expect.remove(id) else {
            return Verdict::Accept;
        };
        self.unwatch(&exp);
        let Some(master) = self.sessions.get(&exp.master) else {
            return Verdict::Accept;
        };
        if exp.expires <= now {
            self.stats.expect_expired += 1;
            self.event(Event::ExpectRemoved {
                id,
                exp,
                reason: RemoveReason::Expired,
            });
            return Verdict::Accept;
        }
        // Follow the master's NAT like the kernel's nf_nat_follow_master: the data connection
        // appears to come from where the master's peer sends to, and goes to the announced
        // (private) endpoint.
        let announcer = match exp.kind {
            ExpectKind::Port | ExpectKind::Eprt => Dir::Original,
            ExpectKind::Pasv227 | ExpectKind::Epsv229 => Dir::Reply,
        };
        let snat = master.tuple(announcer).dst.ip();
        let dnat = exp.nat_to.unwrap_or(exp.dst);
        let translated = snat != pkt.tuple.src.ip() || dnat != pkt.tuple.dst;
        let entry = RelatedEntry {
            original: pkt.tuple,
            nat_src: translated.then_some(snat),
            nat_dst: translated.then_some(dnat),
            master: master.ct.original,
            mark: self.cfg.policy.data_mark,
            timeout_secs: DATA_CT_TIMEOUT,
        };
        self.stats.expect_used += 1;
        self.action(Action::CreateRelated(entry));
        self.event(Event::ExpectUsed {
            id,
            exp,
            data: pkt.tuple,
        });
        Verdict::Accept
    }

    /// After conntrack: map ACK and SACK back into the sender's space.
    fn post(&mut self, pkt: &TcpPacket<'_>, sid: SessionId, dir: Dir, now: Timestamp) -> Verdict {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Verdict::Accept;
        };
        s.last_seen = now;
        // Held bytes of the other direction that ftpct acknowledges for this receiver.
        let mut custody_ack = None;
        if pkt.flags.ack {
            let other = s.dir_mut(dir.flip());
            if other.custody_from.is_some() || other.hold_waiting {
                let acked = other.seqadj.unmap(pkt.ack);
                let (ack, started) = take_custody(other, acked);
                custody_ack = ack;
                if started {
                    self.stats.hold_acked += 1;
                }
            }
        }
        let Some(s) = self.sessions.get(&sid) else {
            return Verdict::Accept;
        };
        let adj = &s.dir(dir.flip()).seqadj;
        if custody_ack.is_none() && (!adj.shifts() || !pkt.flags.ack) {
            return Verdict::Accept;
        }
        let ack = custody_ack.unwrap_or_else(|| adj.unmap(pkt.ack));
        let map = |x: u32| adj.unmap(x);
        let edit = Edit {
            seq: pkt.seq,
            ack,
            payload: None,
            sack: Some(&map),
            clear_fin: false,
        };
        match packet::build(pkt, &edit, &mut self.out) {
            Ok(()) => Verdict::AcceptModified,
            Err(_) => Verdict::Accept,
        }
    }

    /// Before conntrack: parse new bytes, rewrite, and map `seq` into the receiver's space.
    /// One segment goes through these steps in order: trust check, placement in its stream,
    /// line assembly and holding (which fills a [`SegPlan`]), the hold timer, and the
    /// emission of the byte range the plan says.
    fn pre(&mut self, pkt: &TcpPacket<'_>, sid: SessionId, dir: Dir, now: Timestamp) -> Verdict {
        if pkt.flags.syn {
            self.syn_of_live(pkt, sid, dir);
            return Verdict::Accept;
        }
        if !self.trusted(pkt, sid, dir) {
            return Verdict::Accept;
        }
        let rel = match self.place(pkt, sid, dir, now) {
            Ok(rel) => rel,
            Err(v) => return v,
        };
        let mut plan = SegPlan::default();
        self.orig.clear();
        self.assemble(pkt, sid, dir, rel, &mut plan);
        self.track_hold(sid, dir, &plan, now);
        self.emit(pkt, sid, dir, &mut plan)
    }

    /// A SYN or SYN-ACK of a live session carries no line: it may only announce a new
    /// connection on the same addresses and ports (see `known_synack`).
    fn syn_of_live(&mut self, pkt: &TcpPacket<'_>, sid: SessionId, dir: Dir) {
        if dir == Dir::Original && !pkt.flags.ack {
            self.record_syn(pkt);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.reopen_syn = Some(pkt.seq);
            }
        }
    }

    /// Takes a trusted segment into its session: the session is seen now, a new announce
    /// budget starts, an RST or FIN may close it (it then lingers). Places the segment in its
    /// direction's stream and returns where it starts and ends relative to the next byte
    /// expected (`DirState::next`). A direction picked up mid-stream or just restored starts
    /// here; a segment after a gap is dropped (see `bridge_gap`). `Err` is the verdict for a
    /// segment that goes no further.
    fn place(
        &mut self,
        pkt: &TcpPacket<'_>,
        sid: SessionId,
        dir: Dir,
        now: Timestamp,
    ) -> Result<(i32, i32), Verdict> {
        let pickup_trusted = self.cfg.policy.pickup_at_segment_start;
        let Some(mut s) = self.sessions.get_mut(&sid) else {
            return Err(Verdict::Accept);
        };
        if note_segment(s, pkt, dir, now) {
            let t = now.plus(self.cfg.policy.session_close_linger);
            self.sessions.reschedule(sid, t);
            s = match self.sessions.get_mut(&sid) {
                Some(s) => s,
                None => return Err(Verdict::Accept),
            };
        }
        let (seq, plen) = (pkt.seq, pkt.payload_len());
        let end = seq.wrapping_add(plen);
        let d = s.dir_mut(dir);
        d.max_seg = d.max_seg.max(plen);
        if !d.synced {
            // Picked up mid-stream (restart without state, or the SYN-ACK was missed; SYNs
            // never get here, see `syn_of_live`).
            d.sync(seq, pickup_trusted);
        }
        if d.restored {
            // First packet after a restart: bytes forwarded before the restart but not yet
            // journaled (part of a line) leave a gap; continue from here at the next line.
            d.restored = false;
            if end_diff(seq, d.next) > 0 {
                d.sync(seq, false);
            }
        }
        if end_diff(seq, d.next) > 0 && plen > 0 {
            return self.bridge_gap(sid, dir, seq, end);
        }
        let rel = (end_diff(seq, d.next), end_diff(end, d.next));
        if rel.1 > 0 {
            d.gap_drops = 0;
        }
        Ok(rel)
    }

    /// A gap before this segment: we cannot know what the missing bytes rewrite, so the
    /// segment cannot be placed yet. Drop it; the sender retransmits in order. If the gap never
    /// fills (bytes that reached the receiver without passing through ftpct, e.g. a fail-open
    /// queue overflow), the receiver has acknowledged them and the sender will never send them
    /// again: resynchronise at the next line instead of wedging.
    fn bridge_gap(
        &mut self,
        sid: SessionId,
        dir: Dir,
        seq: u32,
        end: u32,
    ) -> Result<(i32, i32), Verdict> {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Err(Verdict::Accept);
        };
        let d = s.dir_mut(dir);
        if d.gap_drops < MAX_GAP_DROPS {
            d.gap_drops += 1;
            self.stats.packets_dropped_ooo += 1;
            return Err(Verdict::Drop);
        }
        // Never resynchronise onto bytes that jumped ahead of what the receiver has
        // acknowledged: the missing bytes must have reached it.
        if !window::acknowledged(&s.dir(dir.flip()).win, seq) {
            self.stats.resyncs_refused += 1;
            self.stats.packets_dropped_ooo += 1;
            return Err(Verdict::Drop);
        }
        let d = s.dir_mut(dir);
        d.sync(seq, false);
        d.gap_drops = 0;
        self.stats.resyncs += 1;
        self.event(Event::Resynced { id: sid, dir });
        Ok((0, end_diff(end, seq)))
    }

    /// Feeds the segment's new bytes to the line assembler and decides what of the partial
    /// line is held; a retransmission that reaches into held bytes keeps them held. Fills
    /// `plan`, and `self.orig` with the bytes a merge would put in front of the segment.
    fn assemble(
        &mut self,
        pkt: &TcpPacket<'_>,
        sid: SessionId,
        dir: Dir,
        rel: (i32, i32),
        plan: &mut SegPlan,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        release_passed_hold(s.dir_mut(dir), &mut self.orig, plan, &mut self.stats);
        let plen = pkt.payload_len();
        let (rel_start, rel_end) = rel;
        if rel_end > 0 && plen > 0 && s.encrypted {
            // Encrypted: no parsing, just advance.
            s.dir_mut(dir).next = pkt.seq.wrapping_add(plen);
        } else if rel_end > 0 && plen > 0 {
            let d = s.dir(dir);
            let held = d.held_from;
            // Bytes of the held partial line, needed if they are merged into this segment.
            if let Some(h) = held {
                let from = h.wrapping_sub(d.line_start) as usize;
                self.orig
                    .extend_from_slice(d.line.get(from..).unwrap_or(&[]));
            }
            let skip = (-rel_start).max(0) as usize;
            let fresh = pkt.payload().get(skip..).unwrap_or(&[]);
            self.feed(sid, dir, fresh, self.cfg.policy.max_line);
            self.hold_after_feed(pkt, sid, dir, held, plan);
        } else if plen > 0 {
            retransmission_into_hold(s.dir_mut(dir), pkt, plan, &mut self.stats);
        }
    }

    /// After new bytes were fed: a hold whose line is complete (or too long, or cut off by a
    /// close) ends, and the part of a partial line that a rewrite may change once the line is
    /// complete is held. What comes before the address can never change: it is forwarded, so
    /// the receiver acknowledges it and the sender goes on sending.
    fn hold_after_feed(
        &mut self,
        pkt: &TcpPacket<'_>,
        sid: SessionId,
        dir: Dir,
        held: Option<u32>,
        plan: &mut SegPlan,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let multiline = s.multiline;
        let nat = rewrite_possible(&s.ct, dir);
        let closing = pkt.flags.fin || pkt.flags.rst;
        let d = s.dir_mut(dir);
        if let Some(h) = held {
            end_hold(d, h, closing, plan, &mut self.stats);
        }
        let open_line = !d.line.is_empty() && !d.skipping && !d.no_rewrite_line;
        if !open_line || closing || !nat {
            return;
        }
        let Some(off) = held_offset(dir, &d.line, multiline) else {
            return;
        };
        let h = d.held_from.unwrap_or(d.line_start.wrapping_add(off as u32));
        if d.held_from.is_none() {
            d.held_from = Some(h);
            d.hold_waiting = false;
            plan.hold_started = true;
            self.stats.lines_held += 1;
        }
        plan.hold_from = Some(h);
        plan.elicit = d.hold_waiting;
    }

    /// Keeps the hold timer in step with the hold, and marks the connection when ftpct is
    /// about to acknowledge held bytes itself (custody): those acknowledgements pass through
    /// the post-conntrack hook only once the connection is marked.
    fn track_hold(&mut self, sid: SessionId, dir: Dir, plan: &SegPlan, now: Timestamp) {
        let hold_limit = self.cfg.policy.hold_limit();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let d = s.dir_mut(dir);
        if plan.hold_started {
            let t = now.plus(hold_limit);
            d.hold_deadline = Some(t);
            self.holds.insert((t, sid, dir.index()));
        } else if d.held_from.is_none() {
            if let Some(t) = d.hold_deadline.take() {
                self.holds.remove(&(t, sid, dir.index()));
            }
        }
        if plan.mark && !s.shifts_sequence() && !s.marked {
            s.marked = true;
            let original = s.ct.original;
            self.action(Action::MarkAdjusted { original });
        }
    }

    /// Builds what the segment carries: the byte range of the original stream the plan
    /// decides (merged bytes in front, held bytes left out), rewritten and mapped into the
    /// receiver's sequence space.
    fn emit(
        &mut self,
        pkt: &TcpPacket<'_>,
        sid: SessionId,
        dir: Dir,
        plan: &mut SegPlan,
    ) -> Verdict {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return Verdict::Accept;
        };
        let d = s.dir(dir);
        custody_prefix(d, pkt, &mut self.orig, plan);
        let range = merged_range(d, pkt, plan, &mut self.orig);
        let Some((start, stop)) = hold_back(d, pkt, plan, range, &mut self.orig, &mut self.stats)
        else {
            return Verdict::Drop;
        };
        let (seq, payload) = (pkt.seq, pkt.payload());
        let end = seq.wrapping_add(pkt.payload_len());
        // Bytes of this segment up to `stop` (none when all of it is held).
        let keep = end_diff(stop, seq).max(0) as usize;
        self.orig
            .extend_from_slice(payload.get(..keep).unwrap_or(payload));
        let changed_range = start != seq || stop != end;
        let adj = &d.seqadj;
        if !changed_range && adj.is_identity() {
            return Verdict::Accept;
        }
        let new_seq = adj.transform(start, &self.orig, &mut self.xform);
        if !changed_range && new_seq == seq && self.xform == payload {
            return Verdict::Accept;
        }
        let edit = Edit {
            seq: new_seq,
            ack: pkt.ack,
            payload: Some(&self.xform),
            sack: None,
            clear_fin: stop != end,
        };
        let v = match packet::build(pkt, &edit, &mut self.out) {
            Ok(()) => Verdict::AcceptModified,
            Err(_) => Verdict::Accept,
        };
        s.dir_mut(dir).seqadj.trim(crate::seqadj::MAX_RECORDS);
        v
    }

    /// The trust model (`window.rs`): checks a segment of a live session against both
    /// directions' windows, and an RST against the exact sequence number; a segment that
    /// fails is counted and reported, and changes nothing. A trusted one moves the windows.
    fn trusted(&mut self, pkt: &TcpPacket<'_>, sid: SessionId, dir: Dir) -> bool {
        let checking = self.cfg.policy.tcp_window_check;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return false;
        };
        // The acknowledgement is in the acknowledged stream's rewritten space.
        let ack = pkt
            .flags
            .ack
            .then(|| s.dir(dir.flip()).seqadj.unmap(pkt.ack));
        let seg = segment_of(pkt, ack);
        let [orig, reply] = &mut s.dirs;
        let (sender, receiver) = match dir {
            Dir::Original => (&mut orig.win, &mut reply.win),
            Dir::Reply => (&mut reply.win, &mut orig.win),
        };
        let refusal = match window::check(sender, receiver, &seg) {
            Err(u) if checking => {
                if u == Untrusted::AckAhead {
                    window::note_ack_beyond(sender, receiver, &seg);
                }
                Some(SegmentRefusal::Window(u))
            }
            _ if pkt.flags.rst && !window::rst_closes(sender, receiver, pkt.seq) => {
                Some(SegmentRefusal::Rst)
            }
            _ => None,
        };
        let Some(why) = refusal else {
            window::update(sender, receiver, &seg);
            return true;
        };
        match why {
            SegmentRefusal::Rst => self.stats.rst_ignored += 1,
            _ => self.stats.packets_out_of_window += 1,
        }
        self.event(Event::SegmentRefused { id: sid, dir, why });
        false
    }

    /// Feeds in-order bytes of one direction and acts on each complete line.
    // Kept out of line: inlined into `pre`, its per-line session lookups stop being
    // inlined themselves (measured: +300 instructions per ten-line segment).
    #[inline(never)]
    fn feed(&mut self, sid: SessionId, dir: Dir, fresh: &[u8], max_line: usize) {
        let mut pos = 0usize;
        let mut line = std::mem::take(&mut self.line);
        let mut completed = false;
        while let Some(s) = self.sessions.get_mut(&sid) {
            match s
                .dir_mut(dir)
                .next_line(fresh, &mut pos, max_line, &mut line)
            {
                LineOut::NeedMore => break,
                LineOut::Overlong => {
                    self.stats.lines_too_long += 1;
                    self.event(Event::LineTooLong { id: sid, dir });
                }
                LineOut::Line(at) => {
                    completed = true;
                    let no_rewrite = s.dir(dir).no_rewrite_line;
                    s.dir_mut(dir).no_rewrite_line = false;
                    let queued = self.events.len();
                    match dir {
                        Dir::Original => self.on_command(sid, &line, at, no_rewrite),
                        Dir::Reply => self.on_reply(sid, &line, at, no_rewrite),
                    }
                    if self.keep_lines {
                        self.name_line(queued, &line, at);
                    }
                }
            }
        }
        self.line = line;
        if completed {
            if let Some(d) = self.sessions.get(&sid).map(|s| s.dir(dir)) {
                if !d.skipping {
                    let pos = d.line_start;
                    self.journal(Journal::LinePos { id: sid, dir, pos });
                }
            }
        }
    }

    fn count(&mut self, sid: SessionId, kind: MsgKind) {
        if let Some(n) = self.stats.messages.get_mut(kind as usize) {
            *n += 1;
        }
        self.event(Event::Message {
            id: sid,
            kind,
            line: LineRef::NONE,
        });
    }

    fn on_command(&mut self, sid: SessionId, line: &[u8], at: u32, no_rewrite: bool) {
        match parser::parse_command(line) {
            Ok(Command::Port(f)) => {
                self.count(sid, MsgKind::Port);
                let a = Announced {
                    dir: Dir::Original,
                    kind: ExpectKind::Port,
                    addr: SocketAddr::V4(f.addr),
                    span: f.span,
                    line_at: at,
                    delim: 0,
                    no_rewrite,
                };
                self.announce(sid, a);
            }
            Ok(Command::Eprt { found, delim }) => {
                self.count(sid, MsgKind::Eprt);
                let a = Announced {
                    dir: Dir::Original,
                    kind: ExpectKind::Eprt,
                    addr: found.addr,
                    span: found.span,
                    line_at: at,
                    delim,
                    no_rewrite,
                };
                self.announce(sid, a);
            }
            Ok(Command::Pasv) => {
                self.count(sid, MsgKind::Pasv);
                self.set_pending(sid, Pending::Pasv);
            }
            Ok(Command::Epsv) => {
                self.count(sid, MsgKind::Epsv);
                self.set_pending(sid, Pending::Epsv);
            }
            Ok(Command::AuthTls) => {
                self.count(sid, MsgKind::AuthTls);
                self.set_pending(sid, Pending::AuthTls);
            }
            Ok(Command::Other) => {}
            Err(error) => {
                let kind = if line
                    .get(..4)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"EPRT"))
                {
                    MsgKind::Eprt
                } else {
                    MsgKind::Port
                };
                self.stats.parse_failures += 1;
                self.event(Event::ParseFailed {
                    id: sid,
                    dir: Dir::Original,
                    kind,
                    error,
                    line: LineRef::NONE,
                });
            }
        }
    }

    fn set_pending(&mut self, sid: SessionId, p: Pending) {
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.pending = p;
        }
    }

    fn on_reply(&mut self, sid: SessionId, line: &[u8], at: u32, no_rewrite: bool) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let Some((code, last)) = reply_position(s, parser::parse_reply_start(line)) else {
            return;
        };
        let first_in_reply = !s.multiline_done;
        if last {
            s.multiline = None;
        }
        match code {
            227 | 229 if first_in_reply => {
                self.passive_reply(sid, code, line, at, no_rewrite, last)
            }
            234 if last => {
                if s.pending == Pending::AuthTls {
                    s.encrypted = true;
                    s.pending = Pending::None;
                    self.journal(Journal::Tls { id: sid });
                    self.stats.tls_sessions += 1;
                    self.count(sid, MsgKind::Reply234);
                    self.event(Event::TlsStarted { id: sid });
                }
            }
            _ => {
                if last && !(100..200).contains(&code) {
                    s.pending = Pending::None;
                }
            }
        }
    }

    /// The first line of a 227 or 229 reply (`last` if it is also the last).
    fn passive_reply(
        &mut self,
        sid: SessionId,
        code: u16,
        line: &[u8],
        at: u32,
        no_rewrite: bool,
        last: bool,
    ) {
        let (kind, msg, parsed) = if code == 227 {
            let p = parser::parse_227(line).map(|f| (SocketAddr::V4(f.addr), f.span));
            (ExpectKind::Pasv227, MsgKind::Reply227, p)
        } else {
            // 229 carries no address: the data connection goes to the control peer.
            let p = parser::parse_229(line).map(|f| {
                (
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), f.addr),
                    f.span,
                )
            });
            (ExpectKind::Epsv229, MsgKind::Reply229, p)
        };
        let (addr, span) = match parsed {
            Ok(found) => found,
            // Only a final line without an address is a failure (pure-ftpd's "227 Logout."
            // included): let it through, log it, never block.
            Err(error) if last => {
                self.stats.parse_failures += 1;
                let e = Event::ParseFailed {
                    id: sid,
                    dir: Dir::Reply,
                    kind: msg,
                    error,
                    line: LineRef::NONE,
                };
                return self.event(e);
            }
            Err(_) => return,
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.multiline_done = s.multiline.is_some();
        // Either passive command may get either reply (a 229 answering PASV is common); a
        // reply no passive command asked for is taken too, as the kernel helper takes it,
        // and counted.
        if !matches!(s.pending, Pending::Pasv | Pending::Epsv) {
            self.stats.replies_unsolicited += 1;
        }
        s.pending = Pending::None;
        self.count(sid, msg);
        let a = Announced {
            dir: Dir::Reply,
            kind,
            addr,
            span,
            line_at: at,
            delim: 0,
            no_rewrite,
        };
        self.announce(sid, a);
    }

    /// Acts on an announced data address: policy, public address and port, rewrite,
    /// expectation. Each step that refuses reports it and ends here.
    fn announce(&mut self, sid: SessionId, a: Announced) {
        let Some(d) = self.destination(sid, &a) else {
            return;
        };
        if d.rewrite && !self.format_rewrite(sid, &a, &d) {
            return;
        }
        let timeout = self.cfg.policy.expect_timeout;
        let exp = Expectation {
            master: sid,
            kind: a.kind,
            src: d.syn_src,
            dst: d.dst,
            nat_to: (d.dst != d.announced).then_some(d.announced),
            created: self.now,
            expires: self.now.plus(timeout),
        };
        let ins = match self.expect.insert(exp) {
            Ok(ins) => ins,
            Err(InsertError::TableFull(_)) => {
                return self.refuse(sid, a.kind, d.announced, Refusal::TableFull)
            }
            Err(InsertError::Clash) => {
                return self.refuse(sid, a.kind, d.announced, Refusal::Clash(d.dst))
            }
        };
        self.expectation_added(sid, &ins, d.dst);
        if d.rewrite && !self.rewrite_line(sid, &a, &d, ins.id, &exp) {
            return;
        }
        self.journal(Journal::ExpectAdd { exp });
        self.action(Action::WatchDst {
            dst: d.dst,
            timeout_secs: u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX),
        });
        self.event(Event::ExpectCreated { id: ins.id, exp });
    }

    /// Where the announced data connection will go: the announcer's own address for an
    /// implicit one (227 with 0,0,0,0 and every 229 mean "the address you are connected to"),
    /// the public address behind NAT, and a free public port. `None` when the budget or the
    /// policy refuses it, or no port is free.
    fn destination(&mut self, sid: SessionId, a: &Announced) -> Option<Destination> {
        let policy = &self.cfg.policy;
        let (per_segment, per_second) = (
            policy.max_announce_per_segment,
            policy.max_announce_per_second,
        );
        let s = self.sessions.get_mut(&sid)?;
        if !s.budget.spend(self.now, per_segment, per_second) {
            self.refuse(sid, a.kind, a.addr, Refusal::RateLimited);
            return None;
        }
        // The announcer's real address, and where the other side's packets go.
        let peer = s.tuple(a.dir).src.ip();
        let implicit = a.addr.ip().is_unspecified();
        let announced = if implicit {
            SocketAddr::new(peer, a.addr.port())
        } else {
            a.addr
        };
        let public_ip = s.tuple(a.dir.flip()).dst.ip();
        let syn_src = s.tuple(a.dir.flip()).src.ip();
        if let Err(reason) = self.cfg.policy.check_announced(announced, peer) {
            self.refuse(sid, a.kind, announced, reason);
            return None;
        }
        let translated = public_ip != peer;
        let ip = if translated {
            public_ip
        } else {
            announced.ip()
        };
        let dst = self.public_port(
            sid,
            a.kind,
            announced,
            SocketAddr::new(ip, announced.port()),
            syn_src,
            translated,
        )?;
        Some(Destination {
            announced,
            syn_src,
            dst,
            // An implicit address stays implicit unless the port had to change.
            rewrite: dst != announced && !(implicit && dst.port() == announced.port()),
        })
    }

    /// Keeps the announced port when it is free (or already this session's), else behind NAT
    /// takes the next free one in the range; `None` (refused) when there is none, or when
    /// there is no NAT and the port is another expectation's.
    fn public_port(
        &mut self,
        sid: SessionId,
        kind: ExpectKind,
        announced: SocketAddr,
        mut dst: SocketAddr,
        syn_src: IpAddr,
        translated: bool,
    ) -> Option<SocketAddr> {
        let expect = &self.expect;
        if expect.lookup(syn_src, dst).map(|(_, e)| e.master) == Some(sid)
            || !expect.dst_in_use(dst)
        {
            return Some(dst);
        }
        if !translated {
            self.refuse(sid, kind, announced, Refusal::Clash(dst));
            return None;
        }
        let ip = dst.ip();
        let policy = &self.cfg.policy;
        match policy.pick_port(announced.port(), PORT_TRIES, |p| {
            expect.dst_in_use(SocketAddr::new(ip, p))
        }) {
            Some(p) => {
                dst.set_port(p);
                Some(dst)
            }
            None => {
                let (lo, hi) = (policy.nat_port_min, policy.nat_port_max);
                self.refuse(sid, kind, announced, Refusal::NoPublicPort(lo, hi));
                None
            }
        }
    }

    /// Writes the new address text into `self.fmt`, in the announcement's own syntax. False
    /// when the line may not be rewritten (reported) or the family does not fit (refused).
    fn format_rewrite(&mut self, sid: SessionId, a: &Announced, d: &Destination) -> bool {
        if a.no_rewrite {
            self.event(Event::NotRewritten {
                id: sid,
                kind: a.kind,
            });
            return false;
        }
        self.fmt.clear();
        match (a.kind, d.dst) {
            (ExpectKind::Port | ExpectKind::Pasv227, SocketAddr::V4(v4)) => {
                parser::format_port_args(v4, &mut self.fmt)
            }
            (ExpectKind::Eprt, dst) => parser::format_eprt_args(dst, a.delim, &mut self.fmt),
            (ExpectKind::Epsv229, dst) => parser::format_port_number(dst.port(), &mut self.fmt),
            (_, SocketAddr::V6(_)) => {
                self.refuse(
                    sid,
                    a.kind,
                    d.announced,
                    Refusal::FamilyMismatch(d.dst.ip()),
                );
                return false;
            }
        }
        true
    }

    /// Counts a new expectation for its session, and reports the ones it displaced (the
    /// session's oldest beyond its limit, or one for the same destination).
    fn expectation_added(&mut self, sid: SessionId, ins: &Inserted, dst: SocketAddr) {
        self.stats.expect_created += 1;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.expectations += 1;
        }
        for (old, reason) in [
            (ins.evicted, RemoveReason::Evicted),
            (ins.replaced, RemoveReason::Replaced),
        ] {
            let Some((oid, oexp)) = old else {
                continue;
            };
            if reason == RemoveReason::Evicted {
                self.stats.expect_evicted += 1;
            }
            if oexp.dst != dst {
                self.unwatch(&oexp);
            }
            self.event(Event::ExpectRemoved {
                id: oid,
                exp: oexp,
                reason,
            });
        }
    }

    /// Records the rewrite of the address text (`self.fmt`) in the direction's sequence log;
    /// the first offset of a connection marks it (its acknowledgements need mapping back
    /// after conntrack). False when the log refuses it: the expectation is withdrawn and the
    /// line goes out as it was.
    fn rewrite_line(
        &mut self,
        sid: SessionId,
        a: &Announced,
        d: &Destination,
        id: ExpectId,
        exp: &Expectation,
    ) -> bool {
        let pos = a.line_at.wrapping_add(a.span.start as u32);
        let old_len = a.span.len() as u32;
        let mut first_offset = None;
        let added = self.sessions.get_mut(&sid).map(|s| {
            let shifted = s.shifts_sequence();
            let ok = s.dir_mut(a.dir).seqadj.add(pos, old_len, &self.fmt).is_ok();
            if ok && !shifted && s.shifts_sequence() {
                first_offset = Some(s.ct.original);
            }
            ok
        });
        if let Some(original) = first_offset {
            self.action(Action::MarkAdjusted { original });
        }
        if added != Some(true) {
            self.expect.remove(id);
            self.journal(Journal::ExpectDel {
                src: exp.src,
                dst: exp.dst,
            });
            self.event(Event::NotRewritten {
                id: sid,
                kind: a.kind,
            });
            return false;
        }
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.rewrites += 1;
            if let Some(record) = s.dir(a.dir).seqadj.records().last().copied() {
                self.journal(Journal::Rewrite {
                    id: sid,
                    dir: a.dir,
                    record,
                });
            }
        }
        self.stats.rewrites += 1;
        self.event(Event::Rewritten {
            id: sid,
            kind: a.kind,
            from: d.announced,
            to: d.dst,
        });
        true
    }

    fn refuse(&mut self, sid: SessionId, kind: ExpectKind, addr: SocketAddr, reason: Refusal) {
        match reason {
            Refusal::ThirdParty { .. } => self.stats.refused_bounce += 1,
            Refusal::PrivilegedPort(_) => self.stats.refused_privileged += 1,
            Refusal::RateLimited => self.stats.refused_rate_limited += 1,
            _ => self.stats.refused_other += 1,
        }
        self.event(Event::Refused {
            id: sid,
            kind,
            addr,
            reason,
        });
    }
}
/// Which reply a line belongs to (its code), and whether it ends it, given the reply in
/// progress (`Session::multiline`); a line that starts a multi-line reply opens it. `None` for
/// a line that is in no reply.
fn reply_position(s: &mut Session, start: Option<parser::ReplyStart>) -> Option<(u16, bool)> {
    match (s.multiline, start) {
        (Some(c), Some(r)) if r.code == c && !r.multiline => Some((c, true)),
        (Some(c), _) => Some((c, false)),
        (None, Some(r)) => {
            s.multiline_done = false;
            if r.multiline {
                s.multiline = Some(r.code);
            }
            Some((r.code, !r.multiline))
        }
        (None, None) => None,
    }
}

/// A data address announced in a line (PORT, EPRT, 227, 229), as the parser found it.
struct Announced {
    /// Who announced it (PORT and EPRT: the client; 227 and 229: the server).
    dir: Dir,
    kind: ExpectKind,
    addr: SocketAddr,
    /// Where the address text is in the line, and the line's first sequence number.
    span: std::ops::Range<usize>,
    line_at: u32,
    /// EPRT's delimiter (0 for the others).
    delim: u8,
    /// The line may not be rewritten (part of it went out before it was complete).
    no_rewrite: bool,
}

/// Where an announced data connection goes (`Engine::destination`).
struct Destination {
    /// The announced address, an implicit one made explicit (the announcer's).
    announced: SocketAddr,
    /// Where the data connection's SYN comes from.
    syn_src: IpAddr,
    /// Where it goes: the public address and port behind NAT.
    dst: SocketAddr,
    /// The line must be rewritten to say `dst`.
    rewrite: bool,
}

/// What the line assembler decided for the bytes around one segment (`Engine::pre`), for
/// `Engine::emit` to carry out.
#[derive(Default)]
struct SegPlan {
    /// The bytes before the segment from here on go out in front of it (they are in
    /// `Engine::orig`).
    merged_from: Option<u32>,
    /// ... whatever the size: ftpct acknowledged them to the sender, which never sends them
    /// again.
    forced: bool,
    /// The bytes from here on are held.
    hold_from: Option<u32>,
    /// The sender waits for the held bytes: make the receiver acknowledge at once.
    elicit: bool,
    /// A hold started with this segment (its timer starts).
    hold_started: bool,
    /// The sender waits for held bytes for the first time: ftpct takes custody, which needs the
    /// connection marked.
    mark: bool,
}

/// A trusted segment: its session is seen now, a new announce budget starts, and an RST or
/// FIN may close the session. True if the session starts closing with it.
fn note_segment(s: &mut Session, pkt: &TcpPacket<'_>, dir: Dir, now: Timestamp) -> bool {
    s.last_seen = now;
    s.budget.new_segment();
    let was_closing = s.is_closing();
    if pkt.flags.rst {
        s.reset = true;
    }
    if pkt.flags.fin {
        s.dir_mut(dir).fin = true;
    }
    !was_closing && s.is_closing()
}

/// `hold_timeout_action = pass` after the hold timed out: the held bytes go out unchanged
/// with this segment.
fn release_passed_hold(
    d: &mut DirState,
    orig: &mut Vec<u8>,
    plan: &mut SegPlan,
    stats: &mut Stats,
) {
    if !d.hold_release {
        return;
    }
    d.hold_release = false;
    if let Some(h) = d.held_from.take() {
        let from = h.wrapping_sub(d.line_start) as usize;
        orig.extend_from_slice(d.line.get(from..).unwrap_or(&[]));
        d.no_rewrite_line = true;
        d.hold_waiting = false;
        plan.merged_from = Some(h);
        plan.forced = true;
        stats.hold_gave_up += 1;
    }
}

/// The hold that started at `h` after new bytes were fed: it goes on while the line is
/// incomplete; a complete (rewritten) or too long line goes out with this segment; a line cut
/// off by the sender's close never becomes a command (a server drops a partial line at the
/// end), and its bytes go out unchanged so that the close reaches the receiver in order.
fn end_hold(d: &mut DirState, h: u32, closing: bool, plan: &mut SegPlan, stats: &mut Stats) {
    let open = d.held_from.is_some() && !d.line.is_empty() && end_diff(h, d.line_start) >= 0;
    if open && !closing {
        return;
    }
    d.held_from = None;
    d.hold_waiting = false;
    plan.merged_from = Some(h);
    if open {
        d.no_rewrite_line = true;
        plan.forced = true;
        stats.hold_gave_up += 1;
    } else {
        plan.forced = d.custody_from.is_some();
    }
}

/// A retransmission of bytes already fed. If it reaches into the held bytes, they must not be
/// forwarded yet: they are held until the line is complete, too long, or the time bound
/// passes, however often they come again. One from the first held byte (or before) means the
/// sender waits for them to be acknowledged (a duplicate of a later piece does not). A close
/// with the line incomplete lets the bytes go with it (see `end_hold`).
fn retransmission_into_hold(
    d: &mut DirState,
    pkt: &TcpPacket<'_>,
    plan: &mut SegPlan,
    stats: &mut Stats,
) {
    let Some(h) = d.held_from else {
        return;
    };
    let (seq, end) = (pkt.seq, pkt.seq.wrapping_add(pkt.payload_len()));
    if pkt.flags.fin || pkt.flags.rst {
        d.held_from = None;
        d.hold_waiting = false;
        d.no_rewrite_line = true;
        stats.hold_gave_up += 1;
    } else if end_diff(end, h) > 0 {
        if end_diff(seq, h) <= 0 && !d.hold_waiting {
            d.hold_waiting = true;
            plan.mark = true;
        }
        plan.hold_from = Some(h);
        plan.elicit = d.hold_waiting;
    }
}

/// A segment right after bytes in custody (the sender's retransmission of what followed
/// them, which the receiver may not have): they go out in front of it.
fn custody_prefix(d: &DirState, pkt: &TcpPacket<'_>, orig: &mut Vec<u8>, plan: &mut SegPlan) {
    let (None, Some(c), true) = (plan.merged_from, d.custody_from, pkt.payload_len() > 0) else {
        return;
    };
    let k = pkt.seq.wrapping_sub(c) as usize;
    if end_diff(pkt.seq, c) > 0 && k <= d.custody.len() {
        orig.clear();
        orig.extend_from_slice(d.custody.get(..k).unwrap_or(&[]));
        plan.merged_from = Some(c);
        plan.forced = true;
    }
}

/// The byte range of the original stream the segment carries before holding: its own, or
/// from `merged_from` on when the merged bytes fit (or must go). `orig` keeps the merged
/// bytes only if the merge happens.
fn merged_range(
    d: &DirState,
    pkt: &TcpPacket<'_>,
    plan: &SegPlan,
    orig: &mut Vec<u8>,
) -> (u32, u32) {
    let (seq, plen) = (pkt.seq, pkt.payload_len());
    let end = seq.wrapping_add(plen);
    let (mut start, mut stop, mut prefix_len) = (seq, end, 0usize);
    if plen == 0 && !pkt.flags.fin && !pkt.flags.syn {
        // A pure ACK sent after bytes we hold: the receiver has not seen those bytes, so its
        // sequence number is where the held line starts (else it may be discarded as beyond
        // the window, and its acknowledgement with it).
        if let Some(h) = d.held_from {
            start = h;
        }
    }
    if let Some(h) = plan.merged_from {
        let total = end.wrapping_sub(h);
        let limit = d.max_seg.max(MIN_MERGE);
        if end_diff(seq, h) > 0
            && (total <= limit || plan.forced)
            && orig.len() == seq.wrapping_sub(h) as usize
        {
            start = h;
            prefix_len = orig.len();
            if total > limit {
                // The rest of the segment comes again (the sender did not get it
                // acknowledged); what ftpct acknowledged (at most MAX_CUSTODY) always fits.
                stop = h.wrapping_add(limit);
            }
        }
    }
    orig.truncate(prefix_len);
    (start, stop)
}

/// Leaves the held bytes out of the range. When every byte of the segment is held, it carries
/// what it acknowledges (and its window) at the held start, so the other direction goes on;
/// `None` when it has no acknowledgement either (dropped).
fn hold_back(
    d: &DirState,
    pkt: &TcpPacket<'_>,
    plan: &SegPlan,
    (start, stop): (u32, u32),
    orig: &mut Vec<u8>,
    stats: &mut Stats,
) -> Option<(u32, u32)> {
    let Some(h) = plan.hold_from else {
        return Some((start, stop));
    };
    if end_diff(h, start) > 0 {
        return Some((start, if end_diff(h, stop) < 0 { h } else { stop }));
    }
    stats.packets_dropped_held += 1;
    if !pkt.flags.ack {
        return None;
    }
    // (nothing of what a merge put in front goes out either)
    orig.clear();
    if !plan.elicit {
        return Some((h, h));
    }
    // The sender waits for the held bytes: carry the byte before them again (the receiver
    // has it), which the receiver acknowledges at once, unlike a pure ACK; ftpct's
    // post-conntrack hook then acknowledges the held bytes to the sender (custody).
    let before = h.wrapping_sub(d.line_start) as usize;
    let start = h.wrapping_sub(1);
    match before.checked_sub(1).and_then(|i| d.line.get(i)) {
        Some(&b) => {
            orig.push(b);
            Some((start, h))
        }
        None => Some((start, start)),
    }
}

/// A packet as the window check sees it, with its acknowledgement already mapped.
fn segment_of(pkt: &TcpPacket<'_>, ack: Option<u32>) -> Segment {
    Segment {
        seq: pkt.seq,
        end: pkt.seq_end(),
        ack,
        win: pkt.window,
        syn: pkt.flags.syn,
    }
}

/// `a - b` in sequence space.
fn end_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// The receiver of direction `d` acknowledged `acked` (in the sender's space). If the sender
/// waits for held bytes (`hold_waiting`) and the receiver has everything before them, ftpct
/// takes them into custody; while it has bytes in custody, the acknowledgement the sender gets
/// covers them (returned). Custody ends once the receiver acknowledges all of them. The second
/// value is true when a hold's bytes were taken into custody for the first time.
fn take_custody(d: &mut DirState, acked: u32) -> (Option<u32>, bool) {
    let mut started = false;
    if let (true, Some(h)) = (d.hold_waiting, d.held_from) {
        let from = h.wrapping_sub(d.line_start) as usize;
        let held = d.line.get(from..).unwrap_or(&[]);
        if end_diff(acked, h) >= 0
            && !held.is_empty()
            && held.len() <= MAX_CUSTODY
            && (d.custody_from != Some(h) || d.custody.len() < held.len())
        {
            started = d.custody_from != Some(h);
            d.custody_from = Some(h);
            d.custody.clear();
            d.custody.extend_from_slice(held);
        }
    }
    let Some(c) = d.custody_from else {
        return (None, started);
    };
    let end = c.wrapping_add(d.custody.len() as u32);
    if end_diff(acked, end) >= 0 {
        // The receiver has them: nothing in custody any more.
        d.custody_from = None;
        d.custody = Vec::new();
        return (None, started);
    }
    if end_diff(acked, c) >= 0 {
        return (Some(end), started);
    }
    (None, started)
}

/// Where, in a partial line that may become a message whose address gets rewritten, the bytes
/// that a rewrite could change begin (`None`: the line cannot need a rewrite, or nothing that
/// could change has arrived yet). The rewritten span of PORT/EPRT starts after the verb and its
/// spaces; that of 227/229 at the first digit after the reply code (see `parser`).
fn held_offset(dir: Dir, partial: &[u8], multiline: Option<u16>) -> Option<usize> {
    fn prefix_of(partial: &[u8], word: &[u8]) -> bool {
        partial
            .iter()
            .zip(word)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }
    let off = match dir {
        Dir::Original => {
            if !(prefix_of(partial, b"PORT ") || prefix_of(partial, b"EPRT ")) {
                return None;
            }
            let spaces = partial.iter().skip(4).take_while(|&&b| b == b' ').count();
            4 + spaces
        }
        Dir::Reply => {
            let coded = prefix_of(partial, b"227") || prefix_of(partial, b"229");
            if !coded && !matches!(multiline, Some(227) | Some(229)) {
                return None;
            }
            let from = if partial
                .get(..3)
                .is_some_and(|c| c.iter().all(u8::is_ascii_digit))
            {
                3
            } else if coded {
                // "22": the code itself is not complete yet
                return None;
            } else {
                0
            };
            from + partial.iter().skip(from).position(u8::is_ascii_digit)?
        }
    };
    (off < partial.len()).then_some(off)
}

/// Does a message sent in direction `dir` of this connection need its address rewritten?
fn rewrite_possible(ct: &CtTuples, dir: Dir) -> bool {
    match dir {
        Dir::Original => ct.is_src_nat(),
        Dir::Reply => ct.is_dst_nat(),
    }
}
