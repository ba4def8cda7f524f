//! The expectation table: data connections announced on a control connection and not yet seen,
//! like the kernel's `/proc/net/nf_conntrack_expect`.
//!
//! An expectation says: a TCP SYN from `src` (any source port) to `dst` belongs to the control
//! connection `master`; when `nat_to` is set, the data connection must be DNATed to it.
//! Insert, lookup and expiry are O(1) (hash index + timer wheel); no operation scans the table.
//!
//! # Design
//!
//! Every expectation lives in one node of a slab (`Vec<Node>`, addressed by `u32` indices, free
//! slots chained in a free list). A node holds the [`Expectation`] itself (the API hands out
//! `&Expectation`, so it is stored as is: 112 bytes) and eight `u32` words of bookkeeping
//! (144 bytes in all), so the table needs no heap allocation per entry. Three structures index
//! the nodes:
//!
//! - **dst index**: an open-addressing hash table with linear probing, at most half full, whose
//!   8-byte positions hold a node index and 32 bits of the key's hash, so a miss usually reads no
//!   node at all and a growth rehash needs no hashing. Keys are the destination address and port,
//!   hashed with a per-table random SipHash key (ports come from the network). Deletion shifts
//!   the rest of the probe run back (no tombstones). At most one live expectation per
//!   destination.
//! - **per-master lists**: each master's expectations form a circular doubly linked list in
//!   insertion order (oldest first). Only the oldest node of each master is entered in a second
//!   chained hash table keyed by [`SessionId`]; it also carries the master's entry count.
//! - **timer wheel** with 1 s ticks ([`WHEEL_TICK_NS`]), two levels and an overflow list:
//!   level 0 has 512 slots of one tick each and holds deadlines less than 512 ticks after the
//!   wheel's cursor; level 1 has 512 slots of one revolution (512 ticks) each and holds deadlines
//!   up to 512 revolutions (about 72 h) ahead; later deadlines wait in a sorted overflow list.
//!   A level-1 slot is cascaded into level 0 when the cursor enters its revolution, and overflow
//!   entries move to level 1 as the cursor approaches them, so no deadline is ever missed,
//!   whatever its length. Occupancy bitmaps make skipping empty slots cheap.
//!
//! Level-0 slot lists are unsorted (append is O(1)) and remember a lower bound of their
//! deadlines; the one slot of the tick in progress is sorted the first time `expire` has to
//! take part of it, which makes repeated `expire` calls within a tick O(1 + expired).
//! Level-1 and overflow lists are kept sorted by inserting from the tail, which is O(1) when
//! deadlines arrive in increasing order (a constant timeout and a monotonic clock); otherwise an
//! insert walks past the later deadlines already in the same slot. Only timeouts longer than a
//! revolution (512 s) use these lists.
//!
//! Removal by id is O(1): an [`ExpectId`] is the slot index plus the slot's generation, which is
//! bumped whenever the slot is freed, so a stale id never names a later occupant (a slot whose
//! generation counter is exhausted is retired instead of reused).
//!
//! Memory, measured by `benches/expect.rs` with a counting allocator at 1 M entries: about
//! 165 bytes per expectation after [`ExpectTable::try_reserve`] (144-byte node, 16.8 bytes of dst
//! index, 4.2 bytes of master index) and about 172 bytes when grown by doubling.
//! The slab and the indexes grow by doubling (amortised O(1)); `try_reserve` pre-sizes them.

use std::collections::TryReserveError;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::hashkey::HashKey;
use crate::types::{l3proto, SessionId, Timestamp};

/// Identifier of an expectation; never reused while the table lives.
///
/// Internally the low 32 bits are a slot index and the high 32 bits the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectId(pub u64);

/// What kind of message created the expectation (for logs and the `sessions` listing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectKind {
    /// Announced by `PORT` (the server connects to the client).
    Port,
    /// Announced by `EPRT` (the server connects to the client).
    Eprt,
    /// Announced by a 227 reply (the client connects to the server).
    Pasv227,
    /// Announced by a 229 reply (the client connects to the server).
    Epsv229,
}

impl ExpectKind {
    /// For event lines, replay output and metrics.
    pub fn label(self) -> &'static str {
        match self {
            ExpectKind::Port => "port",
            ExpectKind::Eprt => "eprt",
            ExpectKind::Pasv227 => "227",
            ExpectKind::Epsv229 => "229",
        }
    }
}

/// One expected data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The control session that announced it.
    pub master: SessionId,
    /// How it was announced.
    pub kind: ExpectKind,
    /// Source address the SYN must come from (the source port is a wildcard).
    /// The unspecified address (`0.0.0.0` or `::`) matches any source.
    pub src: IpAddr,
    /// Destination of the SYN as it arrives at the gateway, before NAT (the public address
    /// and port after a rewrite). Only the address and port are significant (IPv6 flow label
    /// and scope id are ignored for indexing and matching).
    pub dst: SocketAddr,
    /// DNAT target for the data connection (the private endpoint), if the message was rewritten.
    pub nat_to: Option<SocketAddr>,
    /// When it was created.
    pub created: Timestamp,
    /// When it expires unused.
    pub expires: Timestamp,
}

/// Why an insert did not happen. A refused insert leaves the table unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InsertError {
    /// The table holds `max_total` expectations (the value carried) and the insert would not
    /// free one (by replacement or per-master eviction).
    #[error("expectation table is full ({0} entries)")]
    TableFull(usize),
    /// Another master already expects a connection to the same destination address and port.
    #[error("another session already expects a connection to this address and port")]
    Clash,
}

/// Result of a successful insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    /// The new expectation's id.
    pub id: ExpectId,
    /// The master's oldest expectation, removed to respect the per-session limit (as the kernel
    /// evicts the oldest when `max_expected` is reached).
    pub evicted: Option<(ExpectId, Expectation)>,
    /// An expectation of the same master for the same `dst` that this one replaced
    /// (e.g. a retransmitted or repeated PORT). Its `src` is normally the same too; should it
    /// differ, the newer announcement still replaces the older one.
    pub replaced: Option<(ExpectId, Expectation)>,
}

/// Limits of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectLimits {
    /// Maximum number of expectations in total (0: no insert succeeds).
    pub max_total: usize,
    /// Maximum number of live expectations per master session (kernel default: 1).
    /// 0 means unlimited, as `max_expected == 0` in the kernel.
    pub max_per_master: usize,
}

impl Default for ExpectLimits {
    fn default() -> Self {
        ExpectLimits {
            max_total: 1 << 20,
            max_per_master: 1,
        }
    }
}

/// Length of one timer-wheel tick in nanoseconds: [`ExpectTable::next_expiry`] may be early by
/// less than this.
pub const WHEEL_TICK_NS: u64 = 1_000_000_000;

/// Level-0 slots (ticks per revolution).
const L0_SLOTS: u64 = 512;
/// Level-1 slots (revolutions).
const L1_SLOTS: u64 = 512;
const BITMAP_WORDS: usize = 8;
/// Bits in an occupancy bitmap: one per wheel slot.
const BITMAP_BITS: usize = BITMAP_WORDS * 64;
const _: () = assert!(L0_SLOTS as usize == BITMAP_BITS && L1_SLOTS as usize == BITMAP_BITS);

/// "No node" in every link.
const NIL: u32 = u32::MAX;
/// Highest number of slots the slab may hold (indices `0..MAX_NODES`, `NIL` excluded).
const MAX_NODES: usize = (u32::MAX - 1) as usize;

/// `Node::loc` of a free (or retired) slot.
const LOC_FREE: u32 = u32::MAX;
/// `Node::loc` of a level-1 slot `s` is `LOC_L1 | s`; of a level-0 slot `s`, just `s`.
const LOC_L1: u32 = 1 << 16;
/// `Node::loc` of the overflow list.
const LOC_FAR: u32 = 2 << 16;
/// A slot's generation reaching this value retires the slot for good.
const GEN_RETIRED: u32 = u32::MAX;

const MIN_BUCKETS: usize = 64;
/// An unused position of the dst index (no node index is `u32::MAX`).
const DST_EMPTY: u64 = u64::MAX;

/// One slab slot.
#[derive(Clone, Copy, Debug)]
struct Node {
    exp: Expectation,
    /// Generation, part of the [`ExpectId`]; bumped when the slot is freed.
    gen: u32,
    /// Which timer list the node is on (`LOC_*`), or `LOC_FREE`.
    loc: u32,
    /// Timer list links (`t_next`: next free slot while free).
    t_prev: u32,
    t_next: u32,
    /// Circular per-master list, in insertion order.
    m_prev: u32,
    m_next: u32,
    /// Next master head in the master hash chain (meaningful on a master's oldest node only).
    h_next: u32,
    /// Number of the master's expectations (meaningful on a master's oldest node only).
    m_count: u32,
}

impl Node {
    /// What a read out of the slab's range gives (see [`Slots`]): free, every link `NIL`.
    const BLANK: Node = Node {
        exp: Expectation {
            master: SessionId(0),
            kind: ExpectKind::Port,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            nat_to: None,
            created: Timestamp(0),
            expires: Timestamp(0),
        },
        gen: 0,
        loc: LOC_FREE,
        t_prev: NIL,
        t_next: NIL,
        m_prev: NIL,
        m_next: NIL,
        h_next: NIL,
        m_count: 0,
    };
}

/// A list of nodes in one timer-wheel slot (or the overflow list).
#[derive(Clone, Copy, Debug)]
struct TimerList {
    head: u32,
    tail: u32,
    /// Lower bound of the deadlines on the list (exact while `sorted`, via the head).
    min: u64,
    /// The list is in deadline order (always for level 1 and the overflow list).
    sorted: bool,
}

impl TimerList {
    const EMPTY: TimerList = TimerList {
        head: NIL,
        tail: NIL,
        min: u64::MAX,
        sorted: false,
    };
    const EMPTY_SORTED: TimerList = TimerList {
        head: NIL,
        tail: NIL,
        min: u64::MAX,
        sorted: true,
    };
}

/// The canonical form of a destination used for hashing and comparing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct DstKey {
    ip: u128,
    port: u16,
    v6: bool,
}

impl DstKey {
    fn of(a: &SocketAddr) -> DstKey {
        match a {
            SocketAddr::V4(a) => DstKey {
                ip: u128::from(u32::from(*a.ip())),
                port: a.port(),
                v6: false,
            },
            SocketAddr::V6(a) => DstKey {
                ip: u128::from(*a.ip()),
                port: a.port(),
                v6: true,
            },
        }
    }
}

/// `vec![value; len]`, failing instead of aborting when the memory cannot be had.
fn filled_vec<T: Copy>(len: usize, value: T) -> Result<Vec<T>, TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)?;
    v.resize(len, value);
    Ok(v)
}

/// An index into [`Slots`]: node indices are `u32`, wheel and hash positions `usize`.
trait SlotIndex: Copy {
    fn slot(self) -> usize;
}

impl SlotIndex for u32 {
    #[inline(always)]
    fn slot(self) -> usize {
        self as usize
    }
}

impl SlotIndex for usize {
    #[inline(always)]
    fn slot(self) -> usize {
        self
    }
}

/// A vector whose accessors cannot panic, for the slab, the hash indexes and the wheel levels.
///
/// Every index the table uses comes from its own links, which always name a live position;
/// should that invariant ever break, a read out of range gives `blank` (whose links are all
/// `NIL`/empty, so every walk stops there) and a write lands in `spare`, which is reset to
/// `blank` first. Debug builds (hence the tests, including the model-based property test)
/// assert instead. Each access costs the one bounds check an index would.
#[derive(Clone, Debug)]
struct Slots<T: Copy> {
    v: Vec<T>,
    blank: T,
    spare: T,
}

impl<T: Copy> Slots<T> {
    fn new(v: Vec<T>, blank: T) -> Self {
        Slots {
            v,
            blank,
            spare: blank,
        }
    }

    #[inline(always)]
    fn at(&self, i: impl SlotIndex) -> &T {
        match self.v.get(i.slot()) {
            Some(x) => x,
            None => {
                debug_assert!(
                    false,
                    "expectation table: read of slot {} out of range",
                    i.slot()
                );
                &self.blank
            }
        }
    }

    #[inline(always)]
    fn at_mut(&mut self, i: impl SlotIndex) -> &mut T {
        match self.v.get_mut(i.slot()) {
            Some(x) => x,
            None => spare_write(&mut self.spare, &self.blank, i.slot()),
        }
    }

    /// A copy of element `i`, or `blank` out of range (debug builds assert).
    #[inline(always)]
    fn val(&self, i: impl SlotIndex) -> T {
        match self.v.get(i.slot()) {
            Some(&x) => x,
            None => *blank_read(&self.blank, i.slot()),
        }
    }

    /// Applies `f` to element `i`; out of range, does nothing (debug builds assert). Unlike
    /// [`Slots::at_mut`], the miss path does not merge with the hot one, so the compiler keeps
    /// the hot path to one compare and one store.
    #[inline(always)]
    fn put(&mut self, i: impl SlotIndex, f: impl FnOnce(&mut T)) {
        match self.v.get_mut(i.slot()) {
            Some(x) => f(x),
            None => missed_write(i.slot()),
        }
    }

    /// Swaps in a new vector (a rehash), returning the old one.
    fn replace(&mut self, fresh: Vec<T>) -> Vec<T> {
        std::mem::replace(&mut self.v, fresh)
    }
}

/// The out-of-range read of [`Slots::val`], kept out of line so the hot path stays one
/// compare and one load.
#[cold]
#[inline(never)]
fn blank_read<T>(blank: &T, i: usize) -> &T {
    debug_assert!(false, "expectation table: read of slot {i} out of range");
    blank
}

/// The out-of-range write of [`Slots::put`]: dropped.
#[cold]
#[inline(never)]
fn missed_write(i: usize) {
    debug_assert!(false, "expectation table: write to slot {i} out of range");
}

/// The out-of-range write of [`Slots::at_mut`]: goes to `spare`, reset to `blank` first.
#[cold]
#[inline(never)]
fn spare_write<'a, T: Copy>(spare: &'a mut T, blank: &T, i: usize) -> &'a mut T {
    debug_assert!(false, "expectation table: write to slot {i} out of range");
    *spare = *blank;
    spare
}

impl<T: Copy> std::ops::Deref for Slots<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.v
    }
}

impl<T: Copy> std::ops::DerefMut for Slots<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.v
    }
}

fn tick_of(t: u64) -> u64 {
    t / WHEEL_TICK_NS
}

fn make_id(idx: u32, gen: u32) -> ExpectId {
    ExpectId((u64::from(gen) << 32) | u64::from(idx))
}

/// The bitmap word holding bit `s`; `s` is a wheel slot (below `BITMAP_BITS`), and the
/// masking lets the compiler drop the bounds check.
fn word_mut(bits: &mut [u64; BITMAP_WORDS], s: usize) -> Option<&mut u64> {
    debug_assert!(s < BITMAP_BITS);
    bits.get_mut((s % BITMAP_BITS) / 64)
}

fn bit_set(bits: &mut [u64; BITMAP_WORDS], s: usize) {
    if let Some(w) = word_mut(bits, s) {
        *w |= 1u64 << (s % 64);
    }
}

fn bit_clear(bits: &mut [u64; BITMAP_WORDS], s: usize) {
    if let Some(w) = word_mut(bits, s) {
        *w &= !(1u64 << (s % 64));
    }
}

fn bit_test(bits: &[u64; BITMAP_WORDS], s: usize) -> bool {
    debug_assert!(s < BITMAP_BITS);
    bits.get((s % BITMAP_BITS) / 64)
        .is_some_and(|w| w >> (s % 64) & 1 != 0)
}

fn bits_any(bits: &[u64; BITMAP_WORDS]) -> bool {
    bits.iter().any(|&w| w != 0)
}

/// First set bit at or after `start`, wrapping around.
fn first_set_circular(bits: &[u64; BITMAP_WORDS], start: usize) -> Option<usize> {
    let start = start % BITMAP_BITS;
    let (w0, b0) = (start / 64, start % 64);
    let high = bits.get(w0).map_or(0, |w| w & (!0u64 << b0));
    if high != 0 {
        return Some(w0 * 64 + high.trailing_zeros() as usize);
    }
    for k in 1..=BITMAP_WORDS {
        let w = (w0 + k) % BITMAP_WORDS;
        let mut word = bits.get(w).copied().unwrap_or(0);
        if k == BITMAP_WORDS {
            // Back at the starting word: only the bits below `start` are left.
            word &= !(!0u64 << b0);
        }
        if word != 0 {
            return Some(w * 64 + word.trailing_zeros() as usize);
        }
    }
    None
}

/// First set bit in `from..=to` (no wrapping).
fn first_set_in(bits: &[u64; BITMAP_WORDS], from: usize, to: usize) -> Option<usize> {
    let mut s = from;
    while s <= to {
        let (w, b) = (s / 64, s % 64);
        let word = bits.get(w)? & (!0u64 << b);
        if word != 0 {
            let found = w * 64 + word.trailing_zeros() as usize;
            return (found <= to).then_some(found);
        }
        s = (w + 1) * 64;
    }
    None
}

/// The table.
pub struct ExpectTable {
    limits: ExpectLimits,
    nodes: Slots<Node>,
    free_head: u32,
    len: usize,
    /// dst hash index, open addressing with linear probing (power-of-two length, at most half
    /// full): `hash32 << 32 | node`, or `DST_EMPTY`.
    dst_slots: Slots<u64>,
    hasher: HashKey,
    /// master hash index: bucket heads of master-head chains (`Node::h_next`).
    master_buckets: Slots<u32>,
    masters: usize,
    /// Wheel cursor: the tick in progress. Every level-0 deadline tick is in
    /// `cur..cur + L0_SLOTS`; every level-1 one in a later revolution less than `L1_SLOTS`
    /// revolutions ahead; the overflow list holds the rest.
    cur: u64,
    l0: Slots<TimerList>,
    l0_bits: [u64; BITMAP_WORDS],
    l1: Slots<TimerList>,
    l1_bits: [u64; BITMAP_WORDS],
    far: TimerList,
    /// Reused buffer for sorting a level-0 slot.
    scratch: Vec<u32>,
}

impl fmt::Debug for ExpectTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectTable")
            .field("limits", &self.limits)
            .field("len", &self.len)
            .field("masters", &self.masters)
            .field("cursor_tick", &self.cur)
            .finish_non_exhaustive()
    }
}

impl Default for ExpectTable {
    fn default() -> Self {
        ExpectTable::new(ExpectLimits::default())
    }
}

impl ExpectTable {
    /// A table hashing data destinations with the zero key (see [`ExpectTable::with_key`]).
    pub fn new(limits: ExpectLimits) -> Self {
        Self::with_key(limits, HashKey::default())
    }

    /// A table hashing data destinations with `key` (the engine's: destinations come from
    /// the network).
    pub fn with_key(limits: ExpectLimits, key: HashKey) -> Self {
        ExpectTable {
            limits,
            nodes: Slots::new(Vec::new(), Node::BLANK),
            free_head: NIL,
            len: 0,
            dst_slots: Slots::new(vec![DST_EMPTY; 2 * MIN_BUCKETS], DST_EMPTY),
            hasher: key,
            master_buckets: Slots::new(vec![NIL; MIN_BUCKETS], NIL),
            masters: 0,
            cur: 0,
            l0: Slots::new(vec![TimerList::EMPTY; L0_SLOTS as usize], TimerList::EMPTY),
            l0_bits: [0; BITMAP_WORDS],
            l1: Slots::new(
                vec![TimerList::EMPTY_SORTED; L1_SLOTS as usize],
                TimerList::EMPTY_SORTED,
            ),
            l1_bits: [0; BITMAP_WORDS],
            far: TimerList::EMPTY_SORTED,
            scratch: Vec::new(),
        }
    }
    /// The limits in force.
    pub fn limits(&self) -> ExpectLimits {
        self.limits
    }
    /// Changes the limits. They apply to later inserts; live expectations stay (after lowering
    /// `max_per_master`, each insert still evicts only the master's single oldest entry).
    pub fn set_limits(&mut self, limits: ExpectLimits) {
        self.limits = limits;
    }
    /// Expectations in the table.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `additional` more expectations (slab and both hash indexes), so that
    /// inserts up to that size never reallocate or rehash. The request is capped at
    /// `max_total`. Fails, leaving the table usable, when the memory cannot be had.
    pub fn try_reserve(&mut self, additional: usize) -> Result<(), TryReserveError> {
        let want = self
            .len
            .saturating_add(additional)
            .min(self.limits.max_total)
            .min(MAX_NODES);
        let free_slots = self.nodes.len() - self.len;
        self.nodes
            .v
            .try_reserve_exact(want.saturating_sub(self.len).saturating_sub(free_slots))?;
        let buckets = want
            .checked_next_power_of_two()
            .unwrap_or(want)
            .max(MIN_BUCKETS);
        let dst_slots = buckets.saturating_mul(2);
        if dst_slots > self.dst_slots.len() {
            let fresh = filled_vec(dst_slots, DST_EMPTY)?;
            self.rehash_dst_into(fresh);
        }
        if buckets > self.master_buckets.len() {
            let fresh = filled_vec(buckets, NIL)?;
            self.rehash_masters_into(fresh);
        }
        Ok(())
    }

    /// Heap bytes held by the table, computed from the capacities of its vectors.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.dst_slots.capacity() * std::mem::size_of::<u64>()
            + (self.master_buckets.capacity() + self.scratch.capacity())
                * std::mem::size_of::<u32>()
            + (self.l0.capacity() + self.l1.capacity()) * std::mem::size_of::<TimerList>()
    }

    /// Number of live expectations of `master`.
    pub fn master_len(&self, master: SessionId) -> usize {
        match self.master_find(master) {
            Some((_, h)) => self.nodes.at(h).m_count as usize,
            None => 0,
        }
    }

    /// Inserts `exp`. A clash with another master's expectation for the same `dst` is refused.
    ///
    /// Order of the checks, as in the kernel's `__nf_ct_expect_check`: an expectation of the
    /// same master for the same `dst` is replaced; then, if the master still has
    /// `max_per_master` expectations, its oldest is evicted; then the total limit applies.
    /// On error nothing changes.
    pub fn insert(&mut self, exp: Expectation) -> Result<Inserted, InsertError> {
        let key = DstKey::of(&exp.dst);
        let hash = self.dst_hash(&key);
        let existing = self.dst_find(&key, hash).map(|(_, i)| i);
        if let Some(e) = existing {
            if self.nodes.at(e).exp.master != exp.master {
                return Err(InsertError::Clash);
            }
        }
        let head = self.master_find(exp.master).map(|(_, h)| h);
        let mut count = head.map_or(0, |h| self.nodes.at(h).m_count as usize);
        if existing.is_some() {
            count = count.saturating_sub(1);
        }
        let per = self.limits.max_per_master;
        let evict = match head {
            Some(h) if per != 0 && count >= per => {
                if Some(h) == existing {
                    Some(self.nodes.at(h).m_next)
                } else {
                    Some(h)
                }
            }
            _ => None,
        };
        let freed = usize::from(existing.is_some()) + usize::from(evict.is_some());
        if self.len + 1 - freed > self.limits.max_total {
            return Err(InsertError::TableFull(self.limits.max_total));
        }
        if self.free_head == NIL && self.nodes.len() >= MAX_NODES {
            return Err(InsertError::TableFull(self.len));
        }

        let replaced = existing.map(|e| self.remove_index(e));
        let evicted = evict.map(|e| self.remove_index(e));

        if self.len == 0 {
            // Nothing is scheduled: the cursor may jump to the present.
            let t = tick_of(exp.created.0.min(exp.expires.0));
            self.cur = self.cur.max(t);
        }
        let i = self.alloc(exp);
        self.dst_link(i, hash);
        self.master_link(i);
        self.timer_place(i);
        self.len += 1;
        Ok(Inserted {
            id: make_id(i, self.nodes.at(i).gen),
            evicted,
            replaced,
        })
    }

    /// The expectation a SYN from `src` to `dst` matches, if any.
    pub fn lookup(&self, src: IpAddr, dst: SocketAddr) -> Option<(ExpectId, &Expectation)> {
        let key = DstKey::of(&dst);
        let (_, i) = self.dst_find(&key, self.dst_hash(&key))?;
        let n = self.nodes.at(i);
        if n.exp.src == src || n.exp.src.is_unspecified() {
            Some((make_id(i, n.gen), &n.exp))
        } else {
            None
        }
    }
    /// The expectation with this id, if it is still there.
    pub fn get(&self, id: ExpectId) -> Option<&Expectation> {
        self.live_index(id).map(|i| &self.nodes.at(i).exp)
    }
    /// Removes and returns an expectation (on use).
    pub fn remove(&mut self, id: ExpectId) -> Option<Expectation> {
        let i = self.live_index(id)?;
        Some(self.remove_index(i).1)
    }
    /// Removes every expectation of `master`, appending them to `out` (oldest first).
    pub fn remove_master(&mut self, master: SessionId, out: &mut Vec<(ExpectId, Expectation)>) {
        let Some((pred, head)) = self.master_find(master) else {
            return;
        };
        let b = self.master_bucket(master);
        let next_head = self.nodes.at(head).h_next;
        self.chain_set_master(b, pred, next_head);
        self.masters -= 1;
        let mut i = head;
        loop {
            let next = self.nodes.at(i).m_next;
            self.timer_unlink(i);
            self.dst_unlink(i);
            out.push(self.free(i));
            if next == head {
                break;
            }
            i = next;
        }
    }
    /// Removes every expectation with `expires <= now`, appending them to `out`.
    ///
    /// Cost: O(expired + revolutions crossed), plus one sort of the current tick's slot the first
    /// time a call lands in the middle of a tick with something due in it.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<(ExpectId, Expectation)>) {
        let now = now.0;
        let now_tick = tick_of(now);
        while self.cur < now_tick {
            if bits_any(&self.l0_bits) {
                // Every deadline in a tick before `now_tick` is due.
                let rev_end = (self.cur / L0_SLOTS + 1) * L0_SLOTS;
                let stop = now_tick.min(rev_end);
                self.drain_l0_ticks(self.cur, stop, out);
                self.cur = stop;
                if stop == rev_end {
                    self.enter_revolution();
                }
            } else {
                // Level 0 is empty: jump to the next revolution that has work, or to now.
                let cur_rev = self.cur / L0_SLOTS;
                let mut target = now_tick / L0_SLOTS;
                if let Some(r) = self.next_l1_revolution() {
                    target = target.min(r);
                }
                if self.far.head != NIL {
                    let dt = tick_of(self.nodes.at(self.far.head).exp.expires.0);
                    let pull = (dt / L0_SLOTS).saturating_sub(L1_SLOTS - 1);
                    target = target.min(pull.max(cur_rev + 1));
                }
                if target <= cur_rev {
                    self.cur = now_tick;
                } else {
                    self.cur = target * L0_SLOTS;
                    self.enter_revolution();
                }
            }
        }
        self.expire_current_tick(now, out);
    }
    /// The earliest `expires` of any entry (may be early by up to one wheel tick, never late).
    ///
    /// Exact unless the earliest deadline sits in a level-0 slot that has not been sorted (then
    /// it is a lower bound within the same tick). Cost: a scan of at most 8 bitmap words per
    /// level and two list heads. After `expire(now)` it is always `> now`, so a
    /// timer armed on it never spins.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        // Level 0 (deadline ticks in `cur..cur + L0_SLOTS`) overlaps only the level-1 slot of
        // the next revolution; every later level-1 slot and the overflow list come after both.
        let next_rev = ((self.cur / L0_SLOTS + 1) % L1_SLOTS) as usize;
        let l1_next = bit_test(&self.l1_bits, next_rev)
            .then(|| self.nodes.at(self.l1.at(next_rev).head).exp.expires.0);
        if let Some(s) = first_set_circular(&self.l0_bits, (self.cur % L0_SLOTS) as usize) {
            let l = self.l0.at(s);
            let t = if l.sorted {
                self.nodes.at(l.head).exp.expires.0
            } else {
                l.min
            };
            return Some(Timestamp(l1_next.map_or(t, |n| n.min(t))));
        }
        let start = ((self.cur / L0_SLOTS) % L1_SLOTS) as usize;
        if let Some(s) = first_set_circular(&self.l1_bits, start) {
            let head = self.l1.at(s).head;
            return Some(self.nodes.at(head).exp.expires);
        }
        if self.far.head != NIL {
            return Some(self.nodes.at(self.far.head).exp.expires);
        }
        None
    }
    /// True if some live expectation has this `dst` (used to pick a free public port).
    pub fn dst_in_use(&self, dst: SocketAddr) -> bool {
        let key = DstKey::of(&dst);
        self.dst_find(&key, self.dst_hash(&key)).is_some()
    }
    /// All expectations, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ExpectId, &Expectation)> + '_ {
        self.nodes
            .v
            .iter()
            .enumerate()
            .filter(|(_, n)| n.loc != LOC_FREE)
            .map(|(i, n)| (make_id(i as u32, n.gen), &n.exp))
    }

    // ---- slab ----

    fn live_index(&self, id: ExpectId) -> Option<u32> {
        let idx = (id.0 & 0xffff_ffff) as u32;
        let gen = (id.0 >> 32) as u32;
        let n = self.nodes.get(idx as usize)?;
        (n.loc != LOC_FREE && n.gen == gen).then_some(idx)
    }

    /// Takes a free slot (the caller checked there is one) and stores `exp` in it.
    fn alloc(&mut self, exp: Expectation) -> u32 {
        if self.free_head != NIL {
            let i = self.free_head;
            let n = self.nodes.at_mut(i);
            self.free_head = n.t_next;
            n.exp = exp;
            i
        } else {
            let i = self.nodes.len() as u32;
            self.nodes.push(Node { exp, ..Node::BLANK });
            i
        }
    }

    /// Releases a slot already unlinked from every structure; returns its id and content.
    fn free(&mut self, i: u32) -> (ExpectId, Expectation) {
        let n = self.nodes.at_mut(i);
        let out = (make_id(i, n.gen), n.exp);
        n.loc = LOC_FREE;
        n.gen = n.gen.wrapping_add(1);
        if n.gen != GEN_RETIRED {
            n.t_next = self.free_head;
            self.free_head = i;
        }
        self.len -= 1;
        out
    }

    fn remove_index(&mut self, i: u32) -> (ExpectId, Expectation) {
        self.timer_unlink(i);
        self.dst_unlink(i);
        self.master_unlink(i);
        self.free(i)
    }

    // ---- dst index ----

    fn dst_hash(&self, key: &DstKey) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// Position in `dst_slots` and node of the live expectation for `key` (`hash` is its hash).
    fn dst_find(&self, key: &DstKey, hash: u32) -> Option<(usize, u32)> {
        let mask = self.dst_slots.len() - 1;
        let mut p = hash as usize & mask;
        loop {
            let s = self.dst_slots.val(p);
            if s == DST_EMPTY {
                return None;
            }
            if (s >> 32) as u32 == hash {
                let i = s as u32;
                if DstKey::of(&self.nodes.at(i).exp.dst) == *key {
                    return Some((p, i));
                }
            }
            p = (p + 1) & mask;
        }
    }

    fn dst_link(&mut self, i: u32, hash: u32) {
        if (self.len + 1) * 2 > self.dst_slots.len() {
            self.rehash_dst(self.dst_slots.len() * 2);
        }
        let mask = self.dst_slots.len() - 1;
        let mut p = hash as usize & mask;
        while self.dst_slots.val(p) != DST_EMPTY {
            p = (p + 1) & mask;
        }
        self.dst_slots
            .put(p, |e| *e = (u64::from(hash) << 32) | u64::from(i));
    }

    fn dst_unlink(&mut self, i: u32) {
        let key = DstKey::of(&self.nodes.at(i).exp.dst);
        match self.dst_find(&key, self.dst_hash(&key)) {
            Some((p, found)) if found == i => self.dst_remove_at(p),
            _ => debug_assert!(false, "dst_unlink: node not indexed"),
        }
    }

    /// Empties position `hole`, shifting later members of its probe run back (no tombstones).
    fn dst_remove_at(&mut self, mut hole: usize) {
        let mask = self.dst_slots.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.dst_slots.val(j);
            if s == DST_EMPTY {
                break;
            }
            let home = (s >> 32) as usize & mask;
            // The entry at `j` must stay if its home lies cyclically in `(hole, j]`.
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.dst_slots.put(hole, |e| *e = s);
                hole = j;
            }
        }
        self.dst_slots.put(hole, |e| *e = DST_EMPTY);
    }

    /// Rebuilds the dst index with `slots` positions, from the stored hashes.
    fn rehash_dst(&mut self, slots: usize) {
        self.rehash_dst_into(vec![DST_EMPTY; slots]);
    }

    /// Moves the dst index into `fresh` (all `DST_EMPTY`, power-of-two length).
    fn rehash_dst_into(&mut self, fresh: Vec<u64>) {
        let old = self.dst_slots.replace(fresh);
        let mask = self.dst_slots.len() - 1;
        for s in old.into_iter().filter(|&s| s != DST_EMPTY) {
            let mut p = (s >> 32) as usize & mask;
            while self.dst_slots.val(p) != DST_EMPTY {
                p = (p + 1) & mask;
            }
            self.dst_slots.put(p, |e| *e = s);
        }
    }

    // ---- per-master lists ----

    fn master_bucket(&self, m: SessionId) -> usize {
        // Fibonacci hashing; session ids are assigned locally, not chosen by peers.
        ((m.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize) & (self.master_buckets.len() - 1)
    }

    /// The master's oldest node and its predecessor in the hash chain (`NIL`: bucket head).
    fn master_find(&self, m: SessionId) -> Option<(u32, u32)> {
        let mut pred = NIL;
        let mut i = self.master_buckets.val(self.master_bucket(m));
        while i != NIL {
            let n = self.nodes.at(i);
            if n.exp.master == m {
                return Some((pred, i));
            }
            pred = i;
            i = n.h_next;
        }
        None
    }

    fn chain_set_master(&mut self, b: usize, pred: u32, to: u32) {
        if pred == NIL {
            self.master_buckets.put(b, |e| *e = to);
        } else {
            self.nodes.put(pred, |e| e.h_next = to);
        }
    }

    fn master_link(&mut self, i: u32) {
        let m = self.nodes.at(i).exp.master;
        if let Some((_, h)) = self.master_find(m) {
            let t = self.nodes.at(h).m_prev;
            self.nodes.put(t, |e| e.m_next = i);
            self.nodes.put(h, |e| {
                e.m_prev = i;
                e.m_count += 1;
            });
            self.nodes.put(i, |n| {
                n.m_prev = t;
                n.m_next = h;
            });
        } else {
            if self.masters + 1 > self.master_buckets.len() {
                self.rehash_masters(self.master_buckets.len() * 2);
            }
            let b = self.master_bucket(m);
            let first = self.master_buckets.val(b);
            self.nodes.put(i, |n| {
                n.m_prev = i;
                n.m_next = i;
                n.m_count = 1;
                n.h_next = first;
            });
            self.master_buckets.put(b, |e| *e = i);
            self.masters += 1;
        }
    }

    fn master_unlink(&mut self, i: u32) {
        let node = self.nodes.at(i);
        let (m, p, n) = (node.exp.master, node.m_prev, node.m_next);
        let (count, h_next) = (node.m_count, node.h_next);
        let Some((pred, h)) = self.master_find(m) else {
            debug_assert!(false, "master_unlink: master not indexed");
            return;
        };
        let b = self.master_bucket(m);
        if n == i {
            // The master's only expectation.
            let next_head = h_next;
            self.chain_set_master(b, pred, next_head);
            self.masters -= 1;
            return;
        }
        self.nodes.put(p, |e| e.m_next = n);
        self.nodes.put(n, |e| e.m_prev = p);
        if h == i {
            // The next oldest becomes the head.
            self.nodes.put(n, |nn| {
                nn.m_count = count.saturating_sub(1);
                nn.h_next = h_next;
            });
            self.chain_set_master(b, pred, n);
        } else {
            self.nodes
                .put(h, |hn| hn.m_count = hn.m_count.saturating_sub(1));
        }
    }

    fn rehash_masters(&mut self, buckets: usize) {
        self.rehash_masters_into(vec![NIL; buckets]);
    }

    /// Moves the master index into `fresh` (all `NIL`, power-of-two length).
    fn rehash_masters_into(&mut self, fresh: Vec<u32>) {
        let old = self.master_buckets.replace(fresh);
        for mut i in old {
            while i != NIL {
                let next = self.nodes.at(i).h_next;
                let b = self.master_bucket(self.nodes.at(i).exp.master);
                self.nodes.put(i, |e| e.h_next = self.master_buckets.val(b));
                self.master_buckets.put(b, |e| *e = i);
                i = next;
            }
        }
    }

    // ---- timer wheel ----

    fn list_get(&self, loc: u32) -> TimerList {
        if loc == LOC_FAR {
            self.far
        } else if loc & LOC_L1 != 0 {
            self.l1.val((loc & !LOC_L1) as usize)
        } else {
            self.l0.val(loc as usize)
        }
    }

    /// Stores a list back, keeping the occupancy bitmaps in step.
    fn list_put(&mut self, loc: u32, l: TimerList) {
        if loc == LOC_FAR {
            self.far = l;
        } else if loc & LOC_L1 != 0 {
            let s = (loc & !LOC_L1) as usize;
            if l.head == NIL {
                self.l1.put(s, |e| *e = TimerList::EMPTY_SORTED);
                bit_clear(&mut self.l1_bits, s);
            } else {
                self.l1.put(s, |e| *e = l);
                bit_set(&mut self.l1_bits, s);
            }
        } else {
            let s = loc as usize;
            if l.head == NIL {
                self.l0.put(s, |e| *e = TimerList::EMPTY);
                bit_clear(&mut self.l0_bits, s);
            } else {
                self.l0.put(s, |e| *e = l);
                bit_set(&mut self.l0_bits, s);
            }
        }
    }

    /// Puts node `i` on the timer list its deadline belongs to, relative to the cursor.
    fn timer_place(&mut self, i: u32) {
        let e = self.nodes.at(i).exp.expires.0;
        let dt = tick_of(e).max(self.cur);
        let loc = if dt - self.cur < L0_SLOTS {
            (dt % L0_SLOTS) as u32
        } else if dt / L0_SLOTS - self.cur / L0_SLOTS < L1_SLOTS {
            LOC_L1 | ((dt / L0_SLOTS) % L1_SLOTS) as u32
        } else {
            LOC_FAR
        };
        let mut l = self.list_get(loc);
        self.nodes.put(i, |e| e.loc = loc);
        if l.head == NIL {
            self.nodes.put(i, |n| {
                n.t_prev = NIL;
                n.t_next = NIL;
            });
            l.head = i;
            l.tail = i;
        } else if !l.sorted {
            let t = l.tail;
            self.nodes.put(t, |e| e.t_next = i);
            self.nodes.put(i, |n| {
                n.t_prev = t;
                n.t_next = NIL;
            });
            l.tail = i;
        } else {
            // Sorted list: walk back from the tail (no step for increasing deadlines);
            // equal deadlines keep insertion order.
            let mut p = l.tail;
            while p != NIL && self.nodes.at(p).exp.expires.0 > e {
                p = self.nodes.at(p).t_prev;
            }
            let next = if p == NIL {
                l.head
            } else {
                self.nodes.at(p).t_next
            };
            self.nodes.put(i, |n| {
                n.t_prev = p;
                n.t_next = next;
            });
            if p == NIL {
                l.head = i;
            } else {
                self.nodes.put(p, |e| e.t_next = i);
            }
            if next == NIL {
                l.tail = i;
            } else {
                self.nodes.put(next, |e| e.t_prev = i);
            }
        }
        l.min = l.min.min(e);
        self.list_put(loc, l);
    }

    fn timer_unlink(&mut self, i: u32) {
        let node = self.nodes.at(i);
        let (loc, p, n) = (node.loc, node.t_prev, node.t_next);
        let mut l = self.list_get(loc);
        if p == NIL {
            l.head = n;
        } else {
            self.nodes.put(p, |e| e.t_next = n);
        }
        if n == NIL {
            l.tail = p;
        } else {
            self.nodes.put(n, |e| e.t_prev = p);
        }
        // An unsorted list keeps its (now possibly low) bound: still a valid lower bound.
        self.list_put(loc, l);
    }

    /// Removes every node of the level-0 slots of ticks `from..to` (all due), which lie in one
    /// revolution.
    fn drain_l0_ticks(&mut self, from: u64, to: u64, out: &mut Vec<(ExpectId, Expectation)>) {
        if from >= to {
            return;
        }
        let lo = (from % L0_SLOTS) as usize;
        let hi = ((to - 1) % L0_SLOTS) as usize;
        let mut s = lo;
        while let Some(found) = first_set_in(&self.l0_bits, s, hi) {
            let mut i = self.l0.at(found).head;
            self.list_put(found as u32, TimerList::EMPTY);
            while i != NIL {
                let next = self.nodes.at(i).t_next;
                self.dst_unlink(i);
                self.master_unlink(i);
                out.push(self.free(i));
                i = next;
            }
            s = found + 1;
        }
    }

    /// Removes the due nodes of the slot of the tick in progress.
    fn expire_current_tick(&mut self, now: u64, out: &mut Vec<(ExpectId, Expectation)>) {
        let s = (self.cur % L0_SLOTS) as usize;
        let l = self.l0.val(s);
        if l.head == NIL {
            return;
        }
        if !l.sorted {
            if l.min > now {
                return;
            }
            self.sort_l0(s);
        }
        loop {
            let h = self.l0.at(s).head;
            if h == NIL || self.nodes.at(h).exp.expires.0 > now {
                break;
            }
            out.push(self.remove_index(h));
        }
    }

    fn sort_l0(&mut self, s: usize) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let mut i = self.l0.at(s).head;
        while i != NIL {
            scratch.push(i);
            i = self.nodes.at(i).t_next;
        }
        let nodes = &self.nodes;
        scratch.sort_unstable_by_key(|&i| (nodes.at(i).exp.expires, i));
        let mut prev = NIL;
        for &i in &scratch {
            self.nodes.put(i, |e| e.t_prev = prev);
            if prev != NIL {
                self.nodes.put(prev, |e| e.t_next = i);
            }
            prev = i;
        }
        if prev != NIL {
            self.nodes.put(prev, |e| e.t_next = NIL);
        }
        let l = self.l0.at_mut(s);
        if let (Some(&first), Some(&last)) = (scratch.first(), scratch.last()) {
            l.head = first;
            l.tail = last;
            l.min = self.nodes.at(first).exp.expires.0;
        }
        l.sorted = true;
        self.scratch = scratch;
    }

    /// The cursor has just moved to the first tick of a revolution: cascade that revolution's
    /// level-1 slot into level 0 and pull overflow entries that are now less than `L1_SLOTS`
    /// revolutions away.
    fn enter_revolution(&mut self) {
        let rev = self.cur / L0_SLOTS;
        let s = (rev % L1_SLOTS) as usize;
        let mut i = self.l1.at(s).head;
        if i != NIL {
            self.list_put(LOC_L1 | s as u32, TimerList::EMPTY_SORTED);
            while i != NIL {
                let next = self.nodes.at(i).t_next;
                self.timer_place(i);
                i = next;
            }
        }
        while self.far.head != NIL {
            let h = self.far.head;
            let dt = tick_of(self.nodes.at(h).exp.expires.0).max(self.cur);
            if dt / L0_SLOTS - rev >= L1_SLOTS {
                break;
            }
            self.timer_unlink(h);
            self.timer_place(h);
        }
    }

    /// The revolution of the first occupied level-1 slot after the cursor's revolution.
    fn next_l1_revolution(&self) -> Option<u64> {
        let rev = self.cur / L0_SLOTS;
        let start = (rev % L1_SLOTS) as usize;
        let s = first_set_circular(&self.l1_bits, start)? as u64;
        let dist = (s + L1_SLOTS - rev % L1_SLOTS) % L1_SLOTS;
        Some(rev + dist)
    }
}

/// Appends one line in the kernel's `/proc/net/nf_conntrack_expect` format, e.g.
/// `297 l3proto = 2 proto=6 src=198.51.100.2 dst=203.0.113.1 sport=0 dport=50000 ftp\n`
/// (remaining seconds, then the expected tuple, then the helper name).
///
/// Source: Linux `net/netfilter/nf_conntrack_expect.c`, `exp_seq_show()`:
/// `"%ld "` with `(long)(expect->timeout.expires - jiffies)/HZ` (truncated), then
/// `"l3proto = %u proto=%u "`, then `print_tuple()` from `nf_conntrack_standalone.c`:
/// `"src=%pI4 dst=%pI4 "` or `"src=%pI6 dst=%pI6 "`, then for TCP `"sport=%hu dport=%hu "`
/// (the expected source port is the wildcard 0), then the helper name with no separator
/// because an FTP expectation has no flags (`"%s%s", flags ? " " : "", helper->name`), no
/// `/class` suffix since `ftp_exp_policy` has no name, and `'\n'`.
///
/// `%pI6` (not `%pI6c`) prints IPv6 uncompressed: eight groups of four lowercase hex digits with
/// leading zeros, e.g. `fd00:0000:0000:0000:0000:0000:0000:0002` (see the kernel's
/// `Documentation/core-api/printk-formats.rst`).
///
/// Differences: an expectation past its deadline but not yet expired prints `0` (the kernel's
/// arithmetic could print a negative number there). `l3proto` follows `dst`; each address is
/// printed in its own family's format.
pub fn format_kernel_line(exp: &Expectation, now: Timestamp, out: &mut String) {
    let remaining = exp.expires.0.saturating_sub(now.0) / 1_000_000_000;
    let _ = write!(
        out,
        "{remaining} l3proto = {} proto=6 src=",
        l3proto(&exp.dst.ip())
    );
    write_kernel_ip(out, exp.src);
    out.push_str(" dst=");
    write_kernel_ip(out, exp.dst.ip());
    let _ = writeln!(out, " sport=0 dport={} ftp", exp.dst.port());
}

/// `%pI4` / `%pI6`.
fn write_kernel_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => {
            let _ = write!(out, "{a}");
        }
        IpAddr::V6(a) => {
            for (k, seg) in a.segments().iter().enumerate() {
                if k > 0 {
                    out.push(':');
                }
                let _ = write!(out, "{seg:04x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const S: u64 = 1_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn exp_at(master: u64, src: &str, dst: &str, created: u64, timeout: u64) -> Expectation {
        Expectation {
            master: SessionId(master),
            kind: ExpectKind::Port,
            src: ip(src),
            dst: sa(dst),
            nat_to: None,
            created: Timestamp(created),
            expires: Timestamp(created.saturating_add(timeout)),
        }
    }
    fn table(total: usize, per: usize) -> ExpectTable {
        ExpectTable::new(ExpectLimits {
            max_total: total,
            max_per_master: per,
        })
    }
    fn expire_ids(t: &mut ExpectTable, now: u64) -> Vec<ExpectId> {
        let mut out = Vec::new();
        t.expire(Timestamp(now), &mut out);
        let mut ids: Vec<_> = out.iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = ExpectTable::default();
        assert!(t.is_empty());
        let e = exp_at(1, "198.51.100.2", "203.0.113.1:50000", 10 * S, 300 * S);
        let ins = t.insert(e).unwrap();
        assert_eq!(ins.evicted, None);
        assert_eq!(ins.replaced, None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(ins.id), Some(&e));
        let (id, got) = t
            .lookup(ip("198.51.100.2"), sa("203.0.113.1:50000"))
            .unwrap();
        assert_eq!((id, *got), (ins.id, e));
        assert!(t.dst_in_use(sa("203.0.113.1:50000")));
        assert!(!t.dst_in_use(sa("203.0.113.1:50001")));
        assert!(t
            .lookup(ip("198.51.100.2"), sa("203.0.113.1:50001"))
            .is_none());
        assert!(t
            .lookup(ip("198.51.100.2"), sa("203.0.113.2:50000"))
            .is_none());
        assert_eq!(t.iter().collect::<Vec<_>>(), vec![(ins.id, &e)]);
        assert_eq!(t.master_len(SessionId(1)), 1);
        assert_eq!(t.next_expiry(), Some(Timestamp(310 * S)));
        assert_eq!(t.remove(ins.id), Some(e));
        assert_eq!(t.remove(ins.id), None);
        assert_eq!(t.get(ins.id), None);
        assert!(t.is_empty());
        assert_eq!(t.master_len(SessionId(1)), 0);
        assert!(!t.dst_in_use(sa("203.0.113.1:50000")));
        assert_eq!(t.next_expiry(), None);
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn lookup_checks_src() {
        let mut t = ExpectTable::default();
        t.insert(exp_at(1, "198.51.100.2", "203.0.113.1:50000", 0, 300 * S))
            .unwrap();
        assert!(t
            .lookup(ip("198.51.100.3"), sa("203.0.113.1:50000"))
            .is_none());
        assert!(t.lookup(ip("::1"), sa("203.0.113.1:50000")).is_none());
        assert!(t
            .lookup(ip("198.51.100.2"), sa("203.0.113.1:50000"))
            .is_some());
        // Unspecified source: any.
        t.insert(exp_at(2, "0.0.0.0", "203.0.113.1:50001", 0, 300 * S))
            .unwrap();
        assert!(t
            .lookup(ip("192.0.2.77"), sa("203.0.113.1:50001"))
            .is_some());
        t.insert(exp_at(3, "::", "[2001:db8::1]:2000", 0, 300 * S))
            .unwrap();
        assert!(t
            .lookup(ip("2001:db8::99"), sa("[2001:db8::1]:2000"))
            .is_some());
    }

    #[test]
    fn ipv6_dst_ignores_flowinfo_and_scope() {
        let mut t = ExpectTable::default();
        let mut e = exp_at(1, "2001:db8::2", "[fd00::2]:2121", 0, 300 * S);
        if let SocketAddr::V6(a) = &mut e.dst {
            a.set_flowinfo(7);
            a.set_scope_id(3);
        }
        t.insert(e).unwrap();
        assert!(t.lookup(ip("2001:db8::2"), sa("[fd00::2]:2121")).is_some());
        assert!(t.dst_in_use(sa("[fd00::2]:2121")));
        // v4 and v4-mapped v6 are different destinations.
        t.insert(exp_at(2, "10.0.0.1", "192.0.2.1:2121", 0, 300 * S))
            .unwrap();
        assert!(!t.dst_in_use(sa("[::ffff:192.0.2.1]:2121")));
    }

    #[test]
    fn per_master_limit_evicts_oldest() {
        // Kernel default: one per master.
        let mut t = ExpectTable::default();
        let a = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        let e2 = exp_at(1, "10.0.0.1", "192.0.2.1:1001", S, 300 * S);
        let b = t.insert(e2).unwrap();
        assert_eq!(b.evicted.map(|(id, _)| id), Some(a.id));
        assert_eq!(b.replaced, None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(a.id), None);
        assert_eq!(t.get(b.id), Some(&e2));

        let mut t = table(100, 2);
        let e1 = exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S);
        let i1 = t.insert(e1).unwrap();
        let i2 = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1001", S, 300 * S))
            .unwrap();
        let other = t
            .insert(exp_at(2, "10.0.0.2", "192.0.2.1:1003", S, 300 * S))
            .unwrap();
        assert_eq!(i2.evicted, None);
        let i3 = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1002", 2 * S, 300 * S))
            .unwrap();
        assert_eq!(i3.evicted, Some((i1.id, e1)));
        assert_eq!(t.master_len(SessionId(1)), 2);
        let i4 = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 3 * S, 300 * S))
            .unwrap();
        assert_eq!(i4.evicted.map(|(id, _)| id), Some(i2.id));
        assert!(t.get(i3.id).is_some() && t.get(i4.id).is_some());
        assert!(t.get(other.id).is_some());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn unlimited_per_master_when_zero() {
        let mut t = table(100, 0);
        for p in 0..50 {
            let r = t
                .insert(exp_at(
                    1,
                    "10.0.0.1",
                    &format!("192.0.2.1:{}", 1000 + p),
                    0,
                    300 * S,
                ))
                .unwrap();
            assert_eq!(r.evicted, None);
        }
        assert_eq!(t.master_len(SessionId(1)), 50);
    }

    #[test]
    fn lowering_per_master_limit_evicts_one_per_insert() {
        let mut t = table(100, 5);
        let mut ids = Vec::new();
        for p in 0..5 {
            ids.push(
                t.insert(exp_at(
                    1,
                    "10.0.0.1",
                    &format!("192.0.2.1:{}", 1000 + p),
                    0,
                    300 * S,
                ))
                .unwrap()
                .id,
            );
        }
        t.set_limits(ExpectLimits {
            max_total: 100,
            max_per_master: 1,
        });
        assert_eq!(t.limits().max_per_master, 1);
        let r = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:2000", 0, 300 * S))
            .unwrap();
        assert_eq!(r.evicted.map(|(id, _)| id), Some(ids[0]));
        assert_eq!(t.master_len(SessionId(1)), 5);
    }

    #[test]
    fn clash_between_masters_changes_nothing() {
        let mut t = table(100, 2);
        let e1 = exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S);
        let a = t.insert(e1).unwrap();
        let err = t.insert(exp_at(2, "10.0.0.1", "192.0.2.1:1000", S, 300 * S));
        assert_eq!(err, Err(InsertError::Clash));
        // Even with a different source.
        let err = t.insert(exp_at(2, "10.9.9.9", "192.0.2.1:1000", S, 300 * S));
        assert_eq!(err, Err(InsertError::Clash));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(a.id), Some(&e1));
        assert_eq!(t.master_len(SessionId(2)), 0);
        assert_eq!(t.next_expiry(), Some(Timestamp(300 * S)));
    }

    #[test]
    fn same_master_same_dst_replaces() {
        let mut t = table(100, 1);
        let e1 = exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S);
        let a = t.insert(e1).unwrap();
        let e2 = exp_at(1, "10.0.0.1", "192.0.2.1:1000", 5 * S, 300 * S);
        let b = t.insert(e2).unwrap();
        assert_eq!(b.replaced, Some((a.id, e1)));
        assert_eq!(b.evicted, None);
        assert_ne!(a.id, b.id);
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(a.id), None);
        assert_eq!(
            t.lookup(ip("10.0.0.1"), sa("192.0.2.1:1000")),
            Some((b.id, &e2))
        );
        assert_eq!(t.next_expiry(), Some(Timestamp(305 * S)));
        // The replaced deadline is gone from the wheel.
        assert!(expire_ids(&mut t, 300 * S).is_empty());
        assert_eq!(expire_ids(&mut t, 305 * S), vec![b.id]);

        // With two allowed, replacing the oldest must not also evict the other one.
        let mut t = table(100, 2);
        let x = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        let y = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1001", 0, 300 * S))
            .unwrap();
        let z = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", S, 300 * S))
            .unwrap();
        assert_eq!(z.replaced.map(|(id, _)| id), Some(x.id));
        assert_eq!(z.evicted, None);
        assert!(t.get(y.id).is_some());
        // Now y is the oldest.
        let w = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1002", S, 300 * S))
            .unwrap();
        assert_eq!(w.evicted.map(|(id, _)| id), Some(y.id));
    }

    #[test]
    fn table_full() {
        let mut t = table(2, 1);
        t.insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        t.insert(exp_at(2, "10.0.0.1", "192.0.2.1:1001", 0, 300 * S))
            .unwrap();
        assert_eq!(
            t.insert(exp_at(3, "10.0.0.1", "192.0.2.1:1002", 0, 300 * S)),
            Err(InsertError::TableFull(2))
        );
        assert_eq!(t.len(), 2);
        // Replacement and eviction free a slot first, as in the kernel.
        let r = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", S, 300 * S))
            .unwrap();
        assert!(r.replaced.is_some());
        let r = t
            .insert(exp_at(2, "10.0.0.1", "192.0.2.1:1005", S, 300 * S))
            .unwrap();
        assert!(r.evicted.is_some());
        assert_eq!(t.len(), 2);
        let mut z = table(0, 1);
        assert_eq!(
            z.insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S)),
            Err(InsertError::TableFull(0))
        );
    }

    #[test]
    fn expiry_at_deadline_not_before() {
        let mut t = ExpectTable::default();
        // Deadline in the middle of a tick.
        let deadline = 310 * S + 500_000_000;
        let a = t
            .insert(exp_at(
                1,
                "10.0.0.1",
                "192.0.2.1:1000",
                10 * S + 500_000_000,
                300 * S,
            ))
            .unwrap();
        let nx = t.next_expiry().unwrap();
        assert!(nx.0 <= deadline && deadline - nx.0 < WHEEL_TICK_NS);
        assert!(expire_ids(&mut t, 20 * S).is_empty());
        assert!(expire_ids(&mut t, 310 * S).is_empty());
        assert!(expire_ids(&mut t, deadline - 1).is_empty());
        assert_eq!(t.next_expiry(), Some(Timestamp(deadline)));
        assert_eq!(expire_ids(&mut t, deadline), vec![a.id]);
        assert!(t.is_empty());

        // Deadline exactly on a tick boundary.
        let b = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 400 * S, 300 * S))
            .unwrap();
        assert!(expire_ids(&mut t, 700 * S - 1).is_empty());
        assert_eq!(expire_ids(&mut t, 700 * S), vec![b.id]);

        // Expired well after the deadline, in one call.
        let c = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 800 * S, 300 * S))
            .unwrap();
        assert_eq!(expire_ids(&mut t, 5000 * S), vec![c.id]);
        assert!(expire_ids(&mut t, 6000 * S).is_empty());
    }

    #[test]
    fn expire_mid_tick_many_in_one_slot() {
        let mut t = table(10_000, 1);
        let mut ids = Vec::new();
        // 1000 deadlines inside one tick, in scrambled order.
        for k in 0..1000u64 {
            let off = (k * 7919) % 1000 * 1_000_000;
            let e = exp_at(
                k,
                "10.0.0.1",
                &format!("192.0.2.1:{}", 1000 + k),
                0,
                100 * S + off,
            );
            ids.push((t.insert(e).unwrap().id, 100 * S + off));
        }
        let mut now = 100 * S;
        let mut expired = 0;
        while !t.is_empty() {
            let nx = t.next_expiry().unwrap().0;
            assert!(nx >= now || expired == 0);
            now = nx.max(now);
            let got = expire_ids(&mut t, now);
            assert!(!got.is_empty(), "no progress at {now}");
            for id in &got {
                let dl = ids.iter().find(|(i, _)| i == id).unwrap().1;
                assert!(dl <= now);
            }
            expired += got.len();
            if let Some(n) = t.next_expiry() {
                assert!(n.0 > now);
            }
        }
        assert_eq!(expired, 1000);
    }

    #[test]
    fn timeouts_longer_than_a_revolution() {
        for timeout in [
            511 * S,
            512 * S,
            513 * S,
            600 * S,
            5_000 * S,
            262_143 * S,
            262_144 * S,
            300_000 * S + 123,
            10_000_000 * S,
        ] {
            for step in [S, 97 * S, 3_600 * S, 1_000_000 * S] {
                if timeout / step > 20_000 {
                    continue;
                }
                let mut t = ExpectTable::default();
                let start = 1_000 * S + 250_000_000;
                let e = exp_at(1, "10.0.0.1", "192.0.2.1:1000", start, timeout);
                let a = t.insert(e).unwrap();
                let deadline = start + timeout;
                let mut now = start;
                loop {
                    let next = (now + step).min(deadline - 1);
                    if next <= now {
                        break;
                    }
                    now = next;
                    assert!(
                        expire_ids(&mut t, now).is_empty(),
                        "early: timeout {timeout} step {step} now {now}"
                    );
                    let nx = t.next_expiry().unwrap().0;
                    assert!(nx <= deadline && deadline - nx < WHEEL_TICK_NS && nx > now);
                }
                assert_eq!(
                    expire_ids(&mut t, deadline),
                    vec![a.id],
                    "timeout {timeout} step {step}"
                );
                assert_eq!(t.next_expiry(), None);
            }
        }
    }

    /// Regression (found by the model test): level 0 is a sliding window, so after the cursor
    /// moves it overlaps the level-1 slot of the next revolution; `next_expiry` must look there.
    #[test]
    fn next_expiry_sees_next_revolution_level1_slot() {
        let mut t = table(6, 2);
        let start = 523_650_065_439;
        t.insert(exp_at(0, "10.0.0.1", "192.0.2.1:1001", start, 290 * S))
            .unwrap();
        // Deadline tick 1035: 512 ticks after the cursor (523), so level 1, revolution 2.
        let b = t
            .insert(exp_at(
                0,
                "10.0.0.1",
                "192.0.2.1:1000",
                start,
                511_349_934_561,
            ))
            .unwrap();
        let now = t.next_expiry().unwrap().0;
        assert_eq!(expire_ids(&mut t, now).len(), 1);
        // Deadline tick 1313: in level 0 now that the cursor is at 813.
        t.insert(exp_at(0, "10.0.0.1", "192.0.2.1:1001", now, 500 * S))
            .unwrap();
        assert_eq!(t.next_expiry(), Some(Timestamp(1_035 * S)));
        assert_eq!(expire_ids(&mut t, 1_035 * S), vec![b.id]);
    }

    #[test]
    fn huge_deadline_does_not_overflow() {
        let mut t = ExpectTable::default();
        let a = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 5 * S, u64::MAX))
            .unwrap();
        assert_eq!(t.get(a.id).unwrap().expires, Timestamp(u64::MAX));
        assert_eq!(t.next_expiry(), Some(Timestamp(u64::MAX)));
        assert!(expire_ids(&mut t, u64::MAX - 1).is_empty());
        assert_eq!(expire_ids(&mut t, u64::MAX), vec![a.id]);
        let b = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", u64::MAX, 300 * S))
            .unwrap();
        assert_eq!(expire_ids(&mut t, u64::MAX), vec![b.id]);
    }

    #[test]
    fn time_going_backwards_and_past_deadlines() {
        let mut t = ExpectTable::default();
        t.insert(exp_at(9, "10.0.0.9", "192.0.2.1:999", 0, 10_000 * S))
            .unwrap();
        expire_ids(&mut t, 1_000 * S);
        // Already past its deadline when inserted.
        let a = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 500 * S, 0))
            .unwrap();
        let b = t
            .insert(exp_at(2, "10.0.0.1", "192.0.2.1:1001", 900 * S, 50 * S))
            .unwrap();
        assert_eq!(t.next_expiry(), Some(Timestamp(500 * S)));
        assert_eq!(expire_ids(&mut t, 400 * S), Vec::<ExpectId>::new());
        assert_eq!(expire_ids(&mut t, 600 * S), vec![a.id]);
        assert_eq!(t.next_expiry(), Some(Timestamp(950 * S)));
        assert_eq!(expire_ids(&mut t, 1_000 * S), vec![b.id]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn remove_master_removes_all_of_it() {
        let mut t = table(100, 0);
        let mut mine = Vec::new();
        for p in 0..5u16 {
            mine.push(
                t.insert(exp_at(
                    7,
                    "10.0.0.1",
                    &format!("192.0.2.1:{}", 1000 + p),
                    u64::from(p) * S,
                    300 * S,
                ))
                .unwrap()
                .id,
            );
            t.insert(exp_at(
                8,
                "10.0.0.2",
                &format!("192.0.2.2:{}", 1000 + p),
                0,
                300 * S,
            ))
            .unwrap();
        }
        let mut out = Vec::new();
        t.remove_master(SessionId(7), &mut out);
        assert_eq!(out.iter().map(|(id, _)| *id).collect::<Vec<_>>(), mine);
        assert!(out.iter().all(|(_, e)| e.master == SessionId(7)));
        assert_eq!(t.len(), 5);
        assert_eq!(t.master_len(SessionId(7)), 0);
        assert!(mine.iter().all(|id| t.get(*id).is_none()));
        assert!(!t.dst_in_use(sa("192.0.2.1:1000")));
        out.clear();
        t.remove_master(SessionId(7), &mut out);
        assert!(out.is_empty());
        t.remove_master(SessionId(8), &mut out);
        assert_eq!(out.len(), 5);
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
        assert!(expire_ids(&mut t, 10_000 * S).is_empty());
    }

    #[test]
    fn stale_ids_after_slot_reuse() {
        let mut t = ExpectTable::default();
        let e1 = exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S);
        let a = t.insert(e1).unwrap();
        t.remove(a.id).unwrap();
        let e2 = exp_at(2, "10.0.0.2", "192.0.2.1:2000", 0, 300 * S);
        let b = t.insert(e2).unwrap();
        // Same slot, different id.
        assert_eq!(a.id.0 & 0xffff_ffff, b.id.0 & 0xffff_ffff);
        assert_ne!(a.id, b.id);
        assert_eq!(t.get(a.id), None);
        assert_eq!(t.remove(a.id), None);
        assert_eq!(t.get(b.id), Some(&e2));
        // Ids that never existed.
        assert_eq!(t.get(ExpectId(u64::MAX)), None);
        assert_eq!(t.remove(ExpectId(12345)), None);
        assert_eq!(t.get(ExpectId(b.id.0 + (1 << 32))), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn slot_generation_exhaustion_retires_the_slot() {
        let mut t = ExpectTable::default();
        let a = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        let idx = (a.id.0 & 0xffff_ffff) as usize;
        t.nodes[idx].gen = GEN_RETIRED - 1;
        let id = make_id(idx as u32, GEN_RETIRED - 1);
        assert!(t.remove(id).is_some());
        let b = t
            .insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        assert_ne!((b.id.0 & 0xffff_ffff) as usize, idx);
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn many_entries_grow_and_shrink() {
        let mut t = table(1 << 20, 1);
        let mut ids = Vec::new();
        for k in 0..20_000u64 {
            let dst = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (k >> 8) as u32)),
                (k & 0xff) as u16 + 1024,
            );
            let e = Expectation {
                master: SessionId(k),
                kind: ExpectKind::Pasv227,
                src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, (k % 250) as u8)),
                dst,
                nat_to: Some(sa("10.1.1.1:21")),
                created: Timestamp(k * 1_000_000),
                expires: Timestamp(k * 1_000_000 + (k % 700) * S),
            };
            ids.push((t.insert(e).unwrap().id, e));
        }
        assert_eq!(t.len(), 20_000);
        for (id, e) in &ids {
            assert_eq!(t.lookup(e.src, e.dst), Some((*id, e)));
        }
        assert!(t.heap_bytes() >= 20_000 * std::mem::size_of::<Node>());
        let mut out = Vec::new();
        t.expire(Timestamp(400 * S), &mut out);
        assert!(out.iter().all(|(_, e)| e.expires.0 <= 400 * S));
        let expected = ids.iter().filter(|(_, e)| e.expires.0 <= 400 * S).count();
        assert_eq!(out.len(), expected);
        for (id, _) in &ids {
            t.remove(*id);
        }
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    /// Random inserts and removals over a large key space against a `HashMap`, exercising
    /// the dst index's probe runs, backward-shift deletion and growth.
    #[test]
    fn dst_index_random_churn() {
        let mut t = table(1 << 20, 0);
        let mut model: std::collections::HashMap<u64, ExpectId> = Default::default();
        let mut x: u64 = 0x1234_5678;
        for step in 0..60_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = x % 6_000;
            let dst = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0xc000_0200 + (k % 7) as u32)),
                (k / 7) as u16,
            );
            if let Some(id) = model.remove(&k) {
                assert_eq!(t.remove(id).map(|e| e.dst), Some(dst));
            } else {
                let e = Expectation {
                    master: SessionId(k % 13),
                    kind: ExpectKind::Port,
                    src: ip("10.0.0.1"),
                    dst,
                    nat_to: None,
                    created: Timestamp(step),
                    expires: Timestamp(step + 300 * S),
                };
                model.insert(k, t.insert(e).unwrap().id);
            }
            if step % 5_000 == 0 {
                for probe in 0..6_000u64 {
                    let dst = SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::from(0xc000_0200 + (probe % 7) as u32)),
                        (probe / 7) as u16,
                    );
                    let got = t.lookup(ip("10.0.0.1"), dst).map(|(id, _)| id);
                    assert_eq!(got, model.get(&probe).copied());
                }
            }
        }
        assert_eq!(t.len(), model.len());
    }

    #[test]
    fn reserve_presizes() {
        let mut t = ExpectTable::default();
        t.try_reserve(1000).unwrap();
        let before = t.heap_bytes();
        for k in 0..1000u64 {
            t.insert(exp_at(
                k,
                "10.0.0.1",
                &format!("192.0.2.{}:{}", k / 200, 1000 + k),
                0,
                300 * S,
            ))
            .unwrap();
        }
        assert_eq!(t.heap_bytes(), before);
    }

    #[test]
    fn try_reserve_is_capped_by_max_total() {
        let mut t = table(100, 1);
        t.insert(exp_at(1, "10.0.0.1", "192.0.2.1:1000", 0, 300 * S))
            .unwrap();
        t.try_reserve(usize::MAX).unwrap();
        assert!(t.heap_bytes() < 100_000);
        assert!(t.lookup(ip("10.0.0.1"), sa("192.0.2.1:1000")).is_some());
        t.insert(exp_at(2, "10.0.0.1", "192.0.2.1:1001", 0, 300 * S))
            .unwrap();
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn kernel_line_ipv4() {
        let e = Expectation {
            master: SessionId(1),
            kind: ExpectKind::Port,
            src: ip("198.51.100.2"),
            dst: sa("203.0.113.1:50000"),
            nat_to: Some(sa("10.0.0.2:50000")),
            created: Timestamp(0),
            expires: Timestamp(300 * S),
        };
        let mut s = String::new();
        format_kernel_line(&e, Timestamp(3 * S + 500_000_000), &mut s);
        assert_eq!(
            s,
            "296 l3proto = 2 proto=6 src=198.51.100.2 dst=203.0.113.1 sport=0 dport=50000 ftp\n"
        );
        // Appends; past the deadline prints 0.
        format_kernel_line(&e, Timestamp(301 * S), &mut s);
        assert!(s.ends_with(
            "\n0 l3proto = 2 proto=6 src=198.51.100.2 dst=203.0.113.1 sport=0 dport=50000 ftp\n"
        ));
    }

    #[test]
    fn kernel_line_ipv6() {
        let e = Expectation {
            master: SessionId(1),
            kind: ExpectKind::Epsv229,
            src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            dst: sa("[fd00::2]:2121"),
            nat_to: None,
            created: Timestamp(0),
            expires: Timestamp(300 * S),
        };
        let mut s = String::new();
        format_kernel_line(&e, Timestamp(S - 1), &mut s);
        assert_eq!(
            s,
            "299 l3proto = 10 proto=6 src=2001:0db8:0000:0000:0000:0000:0000:0002 \
             dst=fd00:0000:0000:0000:0000:0000:0000:0002 sport=0 dport=2121 ftp\n"
        );
        let mut s = String::new();
        let e2 = Expectation {
            src: ip("::"),
            dst: sa("[2001:db8:abcd:12::ff00]:65535"),
            ..e
        };
        format_kernel_line(&e2, Timestamp(0), &mut s);
        assert_eq!(
            s,
            "300 l3proto = 10 proto=6 src=0000:0000:0000:0000:0000:0000:0000:0000 \
             dst=2001:0db8:abcd:0012:0000:0000:0000:ff00 sport=0 dport=65535 ftp\n"
        );
    }

    #[test]
    fn bitmap_helpers() {
        let mut b = [0u64; BITMAP_WORDS];
        assert_eq!(first_set_circular(&b, 0), None);
        assert_eq!(first_set_in(&b, 0, 511), None);
        bit_set(&mut b, 5);
        bit_set(&mut b, 300);
        assert_eq!(first_set_circular(&b, 0), Some(5));
        assert_eq!(first_set_circular(&b, 5), Some(5));
        assert_eq!(first_set_circular(&b, 6), Some(300));
        assert_eq!(first_set_circular(&b, 301), Some(5));
        assert_eq!(first_set_circular(&b, 511), Some(5));
        assert_eq!(first_set_in(&b, 6, 299), None);
        assert_eq!(first_set_in(&b, 6, 300), Some(300));
        assert_eq!(first_set_in(&b, 0, 4), None);
        bit_clear(&mut b, 5);
        assert_eq!(first_set_circular(&b, 301), Some(300));
        bit_clear(&mut b, 300);
        assert!(!bits_any(&b));
    }

    // ---- model test ----

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            master: u8,
            src: u8,
            dst: u8,
            timeout: u64,
        },
        Lookup {
            src: u8,
            dst: u8,
        },
        Remove {
            pick: usize,
        },
        RemoveMaster {
            master: u8,
        },
        Advance {
            by: u64,
        },
        AdvanceToNext {
            extra: u64,
        },
        SetLimits {
            total: usize,
            per: usize,
        },
    }

    const SRCS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "0.0.0.0", "2001:db8::1"];
    const DSTS: [&str; 6] = [
        "192.0.2.1:1000",
        "192.0.2.1:1001",
        "192.0.2.2:1000",
        "[fd00::1]:1000",
        "[fd00::1]:1001",
        "[fd00::2]:1000",
    ];

    fn timeout_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            0..3 * S,
            290 * S..310 * S,
            0..1_200 * S,
            500 * S..600 * S,
            200_000 * S..400_000 * S,
            Just(u64::MAX),
        ]
    }

    fn advance_strategy() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            0..10_000_000u64,
            0..3 * S,
            0..700 * S,
            0..300_000 * S,
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..5, 0u8..4, 0u8..6, timeout_strategy())
                .prop_map(|(master, src, dst, timeout)| Op::Insert { master, src, dst, timeout }),
            3 => (0u8..4, 0u8..6).prop_map(|(src, dst)| Op::Lookup { src, dst }),
            2 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
            1 => (0u8..5).prop_map(|master| Op::RemoveMaster { master }),
            3 => advance_strategy().prop_map(|by| Op::Advance { by }),
            2 => (0u64..3).prop_map(|extra| Op::AdvanceToNext { extra }),
            1 => (0usize..8, 0usize..4).prop_map(|(total, per)| Op::SetLimits { total, per }),
        ]
    }

    #[derive(Default)]
    struct Model {
        /// Live entries in insertion order.
        entries: Vec<(ExpectId, Expectation)>,
        limits: Option<ExpectLimits>,
    }

    impl Model {
        fn limits(&self) -> ExpectLimits {
            self.limits.unwrap()
        }
        fn insert(
            &self,
            e: &Expectation,
        ) -> Result<(Option<ExpectId>, Option<ExpectId>), InsertError> {
            let same_dst = self
                .entries
                .iter()
                .find(|(_, x)| DstKey::of(&x.dst) == DstKey::of(&e.dst));
            if let Some((_, x)) = same_dst {
                if x.master != e.master {
                    return Err(InsertError::Clash);
                }
            }
            let replaced = same_dst.map(|(id, _)| *id);
            let mine: Vec<ExpectId> = self
                .entries
                .iter()
                .filter(|(id, x)| x.master == e.master && Some(*id) != replaced)
                .map(|(id, _)| *id)
                .collect();
            let l = self.limits();
            let evicted =
                (l.max_per_master != 0 && mine.len() >= l.max_per_master).then(|| mine[0]);
            let freed = usize::from(replaced.is_some()) + usize::from(evicted.is_some());
            if self.entries.len() + 1 - freed > l.max_total {
                return Err(InsertError::TableFull(l.max_total));
            }
            Ok((replaced, evicted))
        }
        fn take(&mut self, id: ExpectId) -> Option<Expectation> {
            let pos = self.entries.iter().position(|(i, _)| *i == id)?;
            Some(self.entries.remove(pos).1)
        }
    }

    fn check_same(t: &ExpectTable, m: &Model) {
        assert_eq!(t.len(), m.entries.len());
        let mut a: Vec<_> = t.iter().map(|(id, e)| (id, *e)).collect();
        let mut b = m.entries.clone();
        a.sort_by_key(|(id, _)| *id);
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(a, b);
        let min = m.entries.iter().map(|(_, e)| e.expires.0).min();
        match (t.next_expiry(), min) {
            (None, None) => {}
            (Some(n), Some(min)) => {
                assert!(n.0 <= min, "next_expiry {} late, min {}", n.0, min);
                assert!(
                    min - n.0 < WHEEL_TICK_NS,
                    "next_expiry {} too early, min {}",
                    n.0,
                    min
                );
            }
            (n, min) => panic!("next_expiry {n:?} but model min {min:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn model_agrees(ops in proptest::collection::vec(op_strategy(), 1..120), start in 0u64..2_000 * S) {
            let limits = ExpectLimits { max_total: 6, max_per_master: 2 };
            let mut t = ExpectTable::new(limits);
            let mut m = Model { limits: Some(limits), ..Model::default() };
            let mut now = start;
            let mut seen: Vec<ExpectId> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert { master, src, dst, timeout } => {
                        let e = Expectation {
                            master: SessionId(u64::from(master)),
                            kind: ExpectKind::Eprt,
                            src: ip(SRCS[src as usize]),
                            dst: sa(DSTS[dst as usize]),
                            nat_to: None,
                            created: Timestamp(now),
                            expires: Timestamp(now.saturating_add(timeout)),
                        };
                        let want = m.insert(&e);
                        let got = t.insert(e);
                        match (want, got) {
                            (Err(w), Err(g)) => prop_assert_eq!(w, g),
                            (Ok((rep, ev)), Ok(ins)) => {
                                prop_assert_eq!(ins.replaced.map(|(id, _)| id), rep);
                                prop_assert_eq!(ins.evicted.map(|(id, _)| id), ev);
                                if let Some((id, x)) = ins.replaced {
                                    prop_assert_eq!(m.take(id), Some(x));
                                }
                                if let Some((id, x)) = ins.evicted {
                                    prop_assert_eq!(m.take(id), Some(x));
                                }
                                prop_assert!(!seen.contains(&ins.id), "id reused");
                                seen.push(ins.id);
                                m.entries.push((ins.id, e));
                            }
                            (w, g) => prop_assert!(false, "model {:?} table {:?}", w, g),
                        }
                    }
                    Op::Lookup { src, dst } => {
                        let (src, dst) = (ip(SRCS[src as usize]), sa(DSTS[dst as usize]));
                        let want = m.entries.iter().find(|(_, e)| {
                            DstKey::of(&e.dst) == DstKey::of(&dst) && (e.src == src || e.src.is_unspecified())
                        });
                        let got = t.lookup(src, dst);
                        prop_assert_eq!(got.map(|(id, e)| (id, *e)), want.copied());
                        prop_assert_eq!(
                            t.dst_in_use(dst),
                            m.entries.iter().any(|(_, e)| DstKey::of(&e.dst) == DstKey::of(&dst))
                        );
                    }
                    Op::Remove { pick } => {
                        if !seen.is_empty() {
                            let id = seen[pick % seen.len()];
                            let want = m.take(id);
                            prop_assert_eq!(t.get(id).copied(), want);
                            prop_assert_eq!(t.remove(id), want);
                        }
                    }
                    Op::RemoveMaster { master } => {
                        let master = SessionId(u64::from(master));
                        let want: Vec<_> = m.entries.iter().filter(|(_, e)| e.master == master).copied().collect();
                        m.entries.retain(|(_, e)| e.master != master);
                        let mut out = Vec::new();
                        t.remove_master(master, &mut out);
                        prop_assert_eq!(out, want);
                        prop_assert_eq!(t.master_len(master), 0);
                    }
                    Op::Advance { by } | Op::AdvanceToNext { extra: by } => {
                        if let Op::AdvanceToNext { extra } = op {
                            if let Some(n) = t.next_expiry() {
                                now = now.max(n.0.saturating_add(extra));
                            }
                        } else {
                            now = now.saturating_add(by);
                        }
                        let mut want: Vec<_> = m.entries.iter().filter(|(_, e)| e.expires.0 <= now).copied().collect();
                        m.entries.retain(|(_, e)| e.expires.0 > now);
                        let mut out = Vec::new();
                        t.expire(Timestamp(now), &mut out);
                        out.sort_by_key(|(id, _)| *id);
                        want.sort_by_key(|(id, _)| *id);
                        prop_assert_eq!(out, want);
                        if let Some(n) = t.next_expiry() {
                            prop_assert!(n.0 > now, "next_expiry {} not after now {}", n.0, now);
                        }
                    }
                    Op::SetLimits { total, per } => {
                        let l = ExpectLimits { max_total: total, max_per_master: per };
                        t.set_limits(l);
                        m.limits = Some(l);
                    }
                }
                check_same(&t, &m);
            }
        }
    }
}
