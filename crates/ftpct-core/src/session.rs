//! Per-control-connection state: stream position and line assembly for each direction, the
//! rewrites made so far ([`SeqAdj`]), and the FTP command/reply context around PORT, EPRT, PASV,
//! EPSV, 227, 229 and AUTH TLS.
//!
//! Reassembly works on the original (sender's) sequence space: `next` is the first byte not yet
//! fed to the line assembler, so every byte is parsed exactly once, whatever the segmentation,
//! retransmissions or duplicates. A line is only parsed from its first byte: a session picked up
//! in the middle of a stream skips to the first newline, so a command can never be recognised in
//! the middle of a line (NAT-slipstreaming defence).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use std::collections::VecDeque;
use std::time::Duration;

use crate::hashkey::HashKey;
use crate::seqadj::SeqAdj;
use crate::types::{CtTuples, Dir, FlowTuple, SessionId, Timestamp};
use crate::window::{Segment, Window};

/// Index of the first `\n` in `s`, eight bytes at a time (the zero-byte test of
/// `s ^ 0x0a0a..`: the lowest flagged byte is always a real match; higher ones may not be).
fn find_newline(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0usize;
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8])) ^ NL;
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| base + i)
}

/// Most held bytes ftpct acknowledges for the receiver (a data address argument is at most
/// ~60 bytes; a longer held part is not a real PORT/EPRT/227/229 and is not taken into custody).
pub(crate) const MAX_CUSTODY: usize = 256;

/// What the line assembler produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineOut {
    /// A complete line (now in the caller's buffer, terminator stripped) that starts at this
    /// sequence number.
    Line(u32),
    /// The current line exceeded the limit; it is skipped up to its newline.
    Overlong,
    /// All input consumed; a partial line may remain buffered.
    NeedMore,
}

/// One direction of a control connection.
#[derive(Clone, Debug)]
pub struct DirState {
    /// True once `next` is known.
    pub synced: bool,
    /// First original sequence number not yet fed to the line assembler.
    pub next: u32,
    /// Sequence number of the first byte of the buffered partial line.
    pub line_start: u32,
    /// The partial line (bounded by the policy's `max_line`).
    pub line: Vec<u8>,
    /// Discarding bytes up to the next newline (overlong line, or not at a line start).
    pub skipping: bool,
    /// Bytes from this sequence number up to `next` were not forwarded (held partial line).
    pub held_from: Option<u32>,
    /// When the time bound (`hold_timeout`) ends the current hold; `None` once it passed.
    pub hold_deadline: Option<Timestamp>,
    /// The sender sent the held bytes again: it waits for their acknowledgement (Nagle, or a
    /// retransmission timer with a congestion window of one segment), so ftpct acknowledges
    /// them itself (see `custody`).
    pub hold_waiting: bool,
    /// `hold_timeout_action = pass` and the time bound passed: the held bytes go out unchanged
    /// with the sender's next packet.
    pub hold_release: bool,
    /// Bytes from this sequence number on (`custody`) were acknowledged to the sender by ftpct
    /// on the receiver's behalf: the sender never sends them again, so ftpct delivers them
    /// (merged into the segment that follows them) until the receiver acknowledges them.
    pub custody_from: Option<u32>,
    /// The bytes in custody (at most `MAX_CUSTODY`).
    pub custody: Vec<u8>,
    /// The current line was let through without waiting for its end: do not rewrite it.
    pub no_rewrite_line: bool,
    /// Largest payload seen in this direction (estimate of the MSS for merging held bytes).
    pub max_seg: u32,
    /// FIN seen.
    pub fin: bool,
    /// Position restored from the state file; the first packet may leave a gap (see engine).
    pub restored: bool,
    /// Segments dropped in a row because of a gap before them.
    pub gap_drops: u8,
    /// The rewrites of this direction.
    pub seqadj: SeqAdj,
    /// What this direction has shown of its TCP window (the trust model, `window.rs`).
    pub win: Window,
}

impl Default for DirState {
    fn default() -> Self {
        DirState {
            synced: false,
            next: 0,
            line_start: 0,
            line: Vec::new(),
            skipping: false,
            held_from: None,
            hold_deadline: None,
            hold_waiting: false,
            hold_release: false,
            custody_from: None,
            custody: Vec::new(),
            no_rewrite_line: false,
            max_seg: 0,
            fin: false,
            restored: false,
            gap_drops: 0,
            seqadj: SeqAdj::new(),
            win: Window::default(),
        }
    }
}

impl DirState {
    /// Starts tracking at `seq`; `at_line_start` is false when the session was picked up in
    /// the middle of a stream.
    pub fn sync(&mut self, seq: u32, at_line_start: bool) {
        self.synced = true;
        self.next = seq;
        self.line_start = seq;
        self.line.clear();
        self.skipping = !at_line_start;
        self.held_from = None;
        self.hold_deadline = None;
        self.hold_waiting = false;
        self.hold_release = false;
        self.custody_from = None;
        self.custody = Vec::new();
        self.no_rewrite_line = false;
        self.gap_drops = 0;
    }

    /// Consumes in-order bytes `input[*pos..]` (whose first byte is at sequence `self.next`)
    /// until a line completes. A completed line is moved into `out` without its terminator.
    pub fn next_line(
        &mut self,
        input: &[u8],
        pos: &mut usize,
        max_line: usize,
        out: &mut Vec<u8>,
    ) -> LineOut {
        let rest = input.get(*pos..).unwrap_or(&[]);
        if rest.is_empty() {
            return LineOut::NeedMore;
        }
        let nl = find_newline(rest);
        let take = nl.map_or(rest.len(), |i| i + 1);
        let chunk = rest.get(..take).unwrap_or(&[]);
        *pos += take;
        let seq_after = self.next.wrapping_add(take as u32);
        self.next = seq_after;
        if self.skipping {
            if nl.is_some() {
                self.skipping = false;
                self.line.clear();
                self.line_start = seq_after;
                self.no_rewrite_line = false;
            }
            return if nl.is_some() && *pos < input.len() {
                self.next_line(input, pos, max_line, out)
            } else {
                LineOut::NeedMore
            };
        }
        if self.line.len().saturating_add(chunk.len()) > max_line.saturating_add(2) {
            self.line.clear();
            self.held_from = None;
            self.skipping = nl.is_none();
            self.line_start = seq_after;
            return LineOut::Overlong;
        }
        self.line.extend_from_slice(chunk);
        if nl.is_none() {
            return LineOut::NeedMore;
        }
        let start = self.line_start;
        self.line_start = seq_after;
        // strip "\n" and an optional "\r" before it
        self.line.pop();
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        out.clear();
        std::mem::swap(&mut self.line, out);
        LineOut::Line(start)
    }
}

/// What the client asked for that a reply will answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pending {
    /// Nothing.
    #[default]
    None,
    /// PASV: a 227 (or 229) is expected.
    Pasv,
    /// EPSV: a 229 (or 227) is expected.
    Epsv,
    /// AUTH TLS: a 234 turns inspection off.
    AuthTls,
}

/// A tracked control connection.
#[derive(Clone, Debug)]
pub struct Session {
    /// The engine's id for the session.
    pub id: SessionId,
    /// The kernel's conntrack tuples of the control connection (NAT mapping).
    pub ct: CtTuples,
    /// Per direction, indexed by [`Dir::index`]: original (client → server), reply.
    pub dirs: [DirState; 2],
    /// What the client asked for that a reply will answer.
    pub pending: Pending,
    /// Code of the multi-line reply in progress (`NNN-` seen, `NNN ` not yet).
    pub multiline: Option<u16>,
    /// A 227 address was already taken from the current multi-line reply.
    pub multiline_done: bool,
    /// AUTH TLS was accepted: the channel is encrypted and no longer inspected.
    pub encrypted: bool,
    /// When the session started (or was picked up).
    pub created: Timestamp,
    /// When the last trusted segment was seen.
    pub last_seen: Timestamp,
    /// The session's entry in its table's deadlines (see [`SessionTable`]).
    scheduled: Timestamp,
    /// RST seen.
    pub reset: bool,
    /// [`crate::engine::Action::MarkAdjusted`] was emitted for this connection because ftpct
    /// acknowledges held bytes (its acknowledgements then need the post-conntrack hook).
    pub marked: bool,
    /// Counters for the `sessions` listing.
    pub rewrites: u32,
    /// Expectations created.
    pub expectations: u32,
    /// Sequence number of a SYN seen from the client while this session was live: a SYN-ACK
    /// that answers it starts a new connection on the same addresses and ports.
    pub reopen_syn: Option<u32>,
    /// What announcements (PORT/EPRT/227/229) may still cause (rewrites, expectations, set
    /// updates, journal records).
    pub budget: Budget,
    /// Log-worthy events of this session in the current second, by kind.
    pub throttle: Throttle,
    /// The conntrack entry's id (`CTA_ID`), when the shell has given it
    /// ([`crate::engine::Engine::set_conntrack_id`]): proof of identity after a restart.
    pub ct_id: Option<u32>,
}

/// A session's allowance of announcements: at most `per_segment` in one segment, and a token
/// bucket of `per_second` (refilled continuously, holding at most one second's worth).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    tokens: u32,
    refilled: Timestamp,
    in_segment: u32,
    /// Set once the bucket was full: a new session starts with a full bucket.
    started: bool,
}

impl Budget {
    /// A new segment starts: its own allowance starts again.
    pub fn new_segment(&mut self) {
        self.in_segment = 0;
    }

    /// Takes one announcement from the allowance; false when it is spent.
    pub fn spend(&mut self, now: Timestamp, per_segment: u32, per_second: u32) -> bool {
        if !self.started {
            self.started = true;
            self.tokens = per_second;
            self.refilled = now;
        }
        let elapsed = now.since(self.refilled);
        let earned = u128::from(per_second) * elapsed.as_nanos() / 1_000_000_000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(per_second);
            self.refilled = now;
        }
        if self.in_segment >= per_segment || self.tokens == 0 {
            return false;
        }
        self.in_segment += 1;
        self.tokens -= 1;
        true
    }
}

/// Event kinds whose log lines are throttled per session (see [`Throttle`]).
pub(crate) const THROTTLED_KINDS: usize = 8;

/// Counts a session's log-worthy events per kind in one-second windows, so that one peer
/// cannot fill the log: past `limit` events of a kind in a window the rest are dropped (and
/// counted by the engine); the first dropped one is announced once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    window: Timestamp,
    counts: [u16; THROTTLED_KINDS],
}

/// What [`Throttle::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Log it.
    Yes,
    /// The first one over the limit in this window: say that the rest are suppressed.
    FirstSuppressed,
    /// Drop it (counted).
    No,
}

impl Throttle {
    /// Whether an event of `kind` may be logged at `now`, at most `limit` a second.
    pub fn admit(&mut self, kind: usize, now: Timestamp, limit: u16) -> Admit {
        if now.since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.counts = [0; THROTTLED_KINDS];
        }
        let Some(c) = self.counts.get_mut(kind) else {
            return Admit::Yes;
        };
        *c = c.saturating_add(1);
        match (*c).cmp(&limit.saturating_add(1)) {
            std::cmp::Ordering::Less => Admit::Yes,
            std::cmp::Ordering::Equal => Admit::FirstSuppressed,
            std::cmp::Ordering::Greater => Admit::No,
        }
    }
}

/// SYNs of control connections that have no session yet (sessions start at the SYN-ACK, when
/// conntrack has the entry): their sequence number, window and window scale start the
/// client's [`Window`]. Bounded: the oldest entry gives way, and an entry older than
/// [`SYN_MAX_AGE`] is not used.
#[derive(Default)]
pub(crate) struct SynCache {
    syns: HashMap<FlowTuple, (Segment, Option<u8>, Timestamp), HashKey>,
    order: VecDeque<FlowTuple>,
}

/// Entries kept at most.
pub(crate) const SYN_CACHE_MAX: usize = 4096;
/// A SYN older than this does not start a window (its handshake is long over).
pub(crate) const SYN_MAX_AGE: Duration = Duration::from_secs(75);

impl SynCache {
    /// An empty cache whose index hashes tuples with `key`.
    pub(crate) fn with_key(key: HashKey) -> Self {
        SynCache {
            syns: HashMap::with_hasher(key),
            order: VecDeque::new(),
        }
    }

    /// Remembers a client's SYN (its window start and scale), the oldest going first when full.
    pub(crate) fn record(
        &mut self,
        tuple: FlowTuple,
        syn: Segment,
        scale: Option<u8>,
        now: Timestamp,
    ) {
        if self.syns.insert(tuple, (syn, scale, now)).is_none() {
            self.order.push_back(tuple);
        }
        while self.syns.len() > SYN_CACHE_MAX || self.order.len() > 2 * SYN_CACHE_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.syns.remove(&old);
        }
    }

    /// The SYN of `tuple` that `synack_ack` acknowledges, if it is recent; the entry is used up.
    pub(crate) fn take(
        &mut self,
        tuple: &FlowTuple,
        synack_ack: u32,
        now: Timestamp,
    ) -> Option<(Segment, Option<u8>)> {
        let (seg, scale, at) = self.syns.remove(tuple)?;
        (seg.end == synack_ack && now.since(at) <= SYN_MAX_AGE).then_some((seg, scale))
    }
}

impl Session {
    /// A session for a new control connection, both directions not yet synced.
    pub fn new(id: SessionId, ct: CtTuples, now: Timestamp) -> Self {
        Session {
            id,
            ct,
            dirs: [DirState::default(), DirState::default()],
            pending: Pending::None,
            multiline: None,
            multiline_done: false,
            encrypted: false,
            created: now,
            last_seen: now,
            scheduled: now,
            reset: false,
            marked: false,
            rewrites: 0,
            expectations: 0,
            reopen_syn: None,
            budget: Budget::default(),
            throttle: Throttle::default(),
            ct_id: None,
        }
    }

    /// Some sequence number of this connection moves (in either direction): its packets need
    /// mapping after conntrack too, and its conntrack entry carries `seqadj_mark`.
    pub fn shifts_sequence(&self) -> bool {
        self.dirs.iter().any(|d| d.seqadj.shifts())
    }

    /// Its conntrack entry must carry `seqadj_mark`: a sequence offset, or ftpct acknowledges
    /// held bytes of it ([`Session::marked`]); either way its packets must pass the
    /// post-conntrack hook. (`marked` is not persisted: after a restore this is the offset.)
    pub fn needs_mark(&self) -> bool {
        self.shifts_sequence() || self.marked
    }

    /// One direction's state.
    pub fn dir(&self, d: Dir) -> &DirState {
        let [original, reply] = &self.dirs;
        match d {
            Dir::Original => original,
            Dir::Reply => reply,
        }
    }

    /// One direction's state, to change.
    pub fn dir_mut(&mut self, d: Dir) -> &mut DirState {
        let [original, reply] = &mut self.dirs;
        match d {
            Dir::Original => original,
            Dir::Reply => reply,
        }
    }

    /// Closed: RST, or FIN in both directions.
    pub fn is_closing(&self) -> bool {
        self.reset || (self.dirs[0].fin && self.dirs[1].fin)
    }

    /// The conntrack tuple of direction `d` (`original` or `reply`).
    pub fn tuple(&self, d: Dir) -> crate::types::FlowTuple {
        match d {
            Dir::Original => self.ct.original,
            Dir::Reply => self.ct.reply,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The session table

/// Hasher for [`SessionId`] keys: Fibonacci hashing of the id.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Flow index key: a packet's 5-tuple and which hook class it was seen at (before conntrack a
/// packet carries its sender's addresses; after conntrack and DNAT, the translated ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    /// The packet's tuple.
    pub tuple: FlowTuple,
    /// Seen after conntrack (translated addresses) rather than before.
    pub post: bool,
}

/// The control connections: sessions by id, a flow index from each 5-tuple a packet of the
/// connection can carry (both directions, before and after NAT: 4 keys per session), and one
/// deadline per session in time order (idle timeout or linger after a close).
///
/// Invariant, kept by [`SessionTable::insert`], [`SessionTable::remove`] and
/// [`SessionTable::reschedule`]: every session has exactly its 4 flow keys (unless a newer
/// session took one over) and exactly one deadline entry, and nothing is left of a removed
/// session. Memory is therefore bounded by the number of live sessions. A deadline entry may be
/// earlier than the session's real deadline (activity moves it lazily):
/// [`SessionTable::next_due`] moves such an entry when it is reached.
#[derive(Default)]
pub(crate) struct SessionTable {
    /// Keyed by our own sequential ids (never by network input), so a plain multiplicative
    /// hash is enough; flow keys, which come from packets, are hashed with the engine's key.
    sessions: HashMap<SessionId, Session, BuildHasherDefault<IdHasher>>,
    flows: HashMap<FlowKey, (SessionId, Dir), HashKey>,
    deadlines: BTreeSet<(Timestamp, SessionId)>,
}

/// The 4 flow keys of a connection and the direction each one means.
fn flow_keys(ct: &CtTuples) -> [(FlowKey, Dir); 4] {
    let mid = ct.mid();
    let k = |tuple, post| FlowKey { tuple, post };
    [
        (k(ct.original, false), Dir::Original),
        (k(ct.reply, false), Dir::Reply),
        (k(mid, true), Dir::Original),
        (k(mid.inverse(), true), Dir::Reply),
    ]
}

impl SessionTable {
    /// An empty table whose flow index hashes tuples with `key` (they come from packets).
    pub(crate) fn with_key(key: HashKey) -> Self {
        SessionTable {
            sessions: HashMap::default(),
            flows: HashMap::with_hasher(key),
            deadlines: BTreeSet::new(),
        }
    }

    /// Sessions in the table.
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when the table is empty.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// True if the session is in the table.
    pub(crate) fn contains_key(&self, id: &SessionId) -> bool {
        self.sessions.contains_key(id)
    }

    /// The session with this id.
    #[inline]
    pub(crate) fn get(&self, id: &SessionId) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// The session with this id, to change.
    #[inline]
    pub(crate) fn get_mut(&mut self, id: &SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(id)
    }

    /// Every session, in no order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// Every session's id, in no order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &SessionId> {
        self.sessions.keys()
    }

    /// The session (and the direction) a packet with this key belongs to.
    pub(crate) fn lookup(&self, key: &FlowKey) -> Option<(SessionId, Dir)> {
        self.flows.get(key).copied()
    }

    /// Adds a session (replacing one with the same id), indexes its flow keys (taking them
    /// over from an older session that had them) and schedules its first deadline.
    pub(crate) fn insert(&mut self, mut s: Session, deadline: Timestamp) {
        let id = s.id;
        self.remove(id);
        for (k, dir) in flow_keys(&s.ct) {
            self.flows.insert(k, (id, dir));
        }
        s.scheduled = deadline;
        self.deadlines.insert((deadline, id));
        self.sessions.insert(id, s);
    }

    /// Removes a session with its deadline and the flow keys that still point to it.
    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        self.deadlines.remove(&(s.scheduled, id));
        for (k, _) in flow_keys(&s.ct) {
            if self.flows.get(&k).map(|x| x.0) == Some(id) {
                self.flows.remove(&k);
            }
        }
        Some(s)
    }

    /// Moves a session's deadline to `t`.
    pub(crate) fn reschedule(&mut self, id: SessionId, t: Timestamp) {
        if let Some(s) = self.sessions.get_mut(&id) {
            self.deadlines.remove(&(s.scheduled, id));
            s.scheduled = t;
            self.deadlines.insert((t, id));
        }
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// The session with the earliest deadline if that deadline is not after `now`, where
    /// `real` gives a session's actual deadline: an entry that `real` puts later is moved
    /// there first (so activity never has to touch the deadlines). The caller ends the session
    /// (or reschedules it); otherwise the same one is returned again.
    pub(crate) fn next_due(
        &mut self,
        now: Timestamp,
        real: impl Fn(&Session) -> Timestamp,
    ) -> Option<SessionId> {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                return None;
            }
            let Some(s) = self.sessions.get(&id) else {
                // Not reachable while the invariant holds; never loop on it.
                self.deadlines.remove(&(t, id));
                continue;
            };
            let r = real(s);
            if r > t {
                self.reschedule(id, r);
                continue;
            }
            return Some(id);
        }
        None
    }

    /// Among the `n` sessions with the earliest deadline entries (the least recently active),
    /// the first for which `pred` holds.
    pub(crate) fn oldest_matching(
        &self,
        n: usize,
        pred: impl Fn(&Session) -> bool,
    ) -> Option<SessionId> {
        self.deadlines
            .iter()
            .take(n)
            .filter_map(|(_, id)| self.sessions.get(id))
            .find(|s| pred(s))
            .map(|s| s.id)
    }

    /// Deadline entries and flow keys held (for tests of the invariant).
    pub(crate) fn footprint(&self) -> (usize, usize) {
        (self.deadlines.len(), self.flows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_session(id: u64, port: u16) -> Session {
        use crate::types::FlowTuple;
        let c: std::net::SocketAddr = format!("10.0.0.2:{port}").parse().unwrap();
        let srv: std::net::SocketAddr = "198.51.100.2:21".parse().unwrap();
        let g: std::net::SocketAddr = format!("203.0.113.1:{port}").parse().unwrap();
        let ct = CtTuples {
            original: FlowTuple::new(c, srv),
            reply: FlowTuple::new(srv, g),
        };
        Session::new(SessionId(id), ct, Timestamp::from_secs(0))
    }

    #[test]
    fn table_keeps_one_deadline_per_live_session_and_nothing_after() {
        let mut t = SessionTable::default();
        for i in 0..1000u64 {
            let s = table_session(i, 10_000 + i as u16);
            t.insert(s, Timestamp::from_secs(100 + i));
            // Activity and closes move the deadline; they never add one.
            t.reschedule(SessionId(i), Timestamp::from_secs(50 + i));
            t.reschedule(SessionId(i), Timestamp::from_secs(60 + i));
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.footprint(), (1000, 4000));
        assert_eq!(t.next_deadline(), Some(Timestamp::from_secs(60)));
        for i in 0..1000u64 {
            assert!(t.remove(SessionId(i)).is_some());
        }
        assert!(t.is_empty());
        assert_eq!(t.footprint(), (0, 0));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn table_lookup_and_takeover_of_flow_keys() {
        let mut t = SessionTable::default();
        let a = table_session(1, 40000);
        let key = FlowKey {
            tuple: a.ct.original,
            post: false,
        };
        let rkey = FlowKey {
            tuple: a.ct.reply,
            post: false,
        };
        t.insert(a, Timestamp::from_secs(10));
        assert_eq!(t.lookup(&key), Some((SessionId(1), Dir::Original)));
        assert_eq!(t.lookup(&rkey), Some((SessionId(1), Dir::Reply)));
        // A new session on the same tuples takes the keys over; removing the old one later
        // leaves the new one's keys alone.
        t.insert(table_session(2, 40000), Timestamp::from_secs(20));
        assert_eq!(t.lookup(&key), Some((SessionId(2), Dir::Original)));
        t.remove(SessionId(1));
        assert_eq!(t.lookup(&key), Some((SessionId(2), Dir::Original)));
        assert_eq!(t.footprint(), (1, 4));
    }

    #[test]
    fn next_due_moves_stale_entries_and_returns_due_ones_in_order() {
        let mut t = SessionTable::default();
        t.insert(table_session(1, 1), Timestamp::from_secs(10));
        t.insert(table_session(2, 2), Timestamp::from_secs(20));
        // Session 1 was active: its real deadline is 30.
        let real = |s: &Session| Timestamp::from_secs(if s.id == SessionId(1) { 30 } else { 20 });
        assert_eq!(t.next_due(Timestamp::from_secs(5), real), None);
        assert_eq!(
            t.next_due(Timestamp::from_secs(25), real),
            Some(SessionId(2))
        );
        t.remove(SessionId(2));
        assert_eq!(t.next_due(Timestamp::from_secs(25), real), None);
        assert_eq!(t.next_deadline(), Some(Timestamp::from_secs(30)));
        assert_eq!(
            t.next_due(Timestamp::from_secs(30), real),
            Some(SessionId(1))
        );
        assert_eq!(t.footprint(), (1, 4));
    }

    fn lines(d: &mut DirState, input: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut pos = 0;
        loop {
            match d.next_line(input, &mut pos, 16, &mut buf) {
                LineOut::Line(s) => out.push((s, buf.clone())),
                LineOut::Overlong => out.push((0, b"<overlong>".to_vec())),
                LineOut::NeedMore => break,
            }
        }
        out
    }

    #[test]
    fn lines_across_segments() {
        let mut d = DirState::default();
        d.sync(100, true);
        assert_eq!(
            lines(&mut d, b"USER a\r\nPA"),
            vec![(100, b"USER a".to_vec())]
        );
        assert_eq!(d.line_start, 108);
        assert_eq!(
            lines(&mut d, b"SS b\r\nNOOP\n"),
            vec![(108, b"PASS b".to_vec()), (116, b"NOOP".to_vec())]
        );
        assert_eq!(d.next, 121);
    }

    #[test]
    fn picked_up_mid_stream_skips_to_newline() {
        let mut d = DirState::default();
        d.sync(0, false);
        assert_eq!(
            lines(&mut d, b"T 1,2,3,4,5,6\r\nPORT 1\r\n"),
            vec![(15, b"PORT 1".to_vec())]
        );
    }

    #[test]
    fn overlong_line_is_skipped_to_its_newline() {
        let mut d = DirState::default();
        d.sync(0, true);
        let got = lines(&mut d, b"0123456789abcdefghij");
        assert_eq!(got, vec![(0, b"<overlong>".to_vec())]);
        assert!(d.line.is_empty());
        let got = lines(&mut d, b"more junk\r\nNOOP\r\n");
        assert_eq!(got, vec![(31, b"NOOP".to_vec())]);
        // memory stays bounded whatever the input
        for _ in 0..1000 {
            lines(&mut d, &[b'x'; 1000]);
            assert!(d.line.capacity() <= 64);
        }
    }

    #[test]
    fn find_newline_matches_position() {
        for b in 0..=255u8 {
            let buf = [b; 19];
            let want = (b == b'\n').then_some(0);
            assert_eq!(find_newline(&buf), want, "byte {b:#x}");
        }
        let mut buf = vec![b'x'; 40];
        assert_eq!(find_newline(&buf), None);
        for i in 0..40 {
            for j in i..40 {
                buf.fill(b'x');
                // bytes that fool a carelessly written zero-byte test
                buf[(i + 1) % 40] = 0x0b;
                buf[(i + 2) % 40] = 0x8a;
                buf[j] = b'\n';
                buf[i] = b'\n';
                for len in 0..=40 {
                    let want = buf[..len].iter().position(|&b| b == b'\n');
                    assert_eq!(find_newline(&buf[..len]), want, "i={i} j={j} len={len}");
                }
            }
        }
    }
}
