//! Sequence-number bookkeeping for rewritten TCP streams (the job of the kernel's
//! `nf_conntrack_seqadj`, generalised).
//!
//! Every payload rewrite of one direction is kept as a [`Record`]: at original sequence number
//! `pos`, `old_len` bytes were replaced by `new` bytes. Together they define a monotone map from
//! the sender's sequence space ("original") to the receiver's ("new"):
//! - outside every record the map is a shift by the sum of the deltas of the records before it,
//!   so it is a bijection there and [`SeqAdj::unmap`] (used for ACKs and SACK blocks of the other
//!   direction) inverts it exactly;
//! - a position inside a replaced range maps into the replacement, clamped to its length, so any
//!   re-segmentation of a retransmission still yields byte ranges that fit together into one
//!   consistent rewritten stream ([`SeqAdj::transform`]).
//!
//! The kernel keeps a single correction position with an offset before and after it, so a
//! retransmission of data from before the second-to-last rewrite gets the wrong offset; here the
//! last [`MAX_RECORDS`] rewrites are kept exactly (more while one segment needs them) and older
//! ones are folded into a base offset. Replacements are stored inline; the record list is
//! allocated once, on the first rewrite of a direction.
//!
//! Cost: the records sit in a ring ([`VecDeque`]), so folding the oldest moves nothing. The
//! offset after the last record is kept, and the kept records always lie within [`SPAN`] bytes
//! of sequence space, so they compare without wrap-around: a position after every record (new
//! data, or the ACK of it) maps in O(1), and [`SeqAdj::map`] and [`SeqAdj::transform`] find
//! the records that matter from the newest back instead of walking all of them from the
//! oldest. A position too far from the records to compare that way takes the plain walk,
//! with the same answer.

use std::collections::VecDeque;

/// How many rewrites per direction are kept exactly between packets ([`SeqAdj::trim`]).
pub const MAX_RECORDS: usize = 16;
/// Hard bound on the records of one direction, whatever happens (many rewritten lines in one
/// segment need all their records until the segment is emitted; then `trim` applies).
pub const HARD_MAX_RECORDS: usize = 256;
/// Longest replacement text (an EPRT argument with a full IPv6 address is 49 bytes).
pub const MAX_REPLACEMENT: usize = 56;
/// The kept records lie within this many bytes of sequence space, from the first one's start
/// to the last one's end: a rewrite further than that from the oldest kept ones folds them
/// (they are a gigabyte behind, long acknowledged). It keeps every comparison between kept
/// positions free of wrap-around.
pub const SPAN: u32 = 1 << 30;
/// Positions closer than this after the first record compare with the records directly.
const NEAR: u32 = 1 << 31;

/// Why a rewrite cannot be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SeqAdjError {
    /// The replacement text is longer than [`MAX_REPLACEMENT`].
    #[error("replacement longer than {MAX_REPLACEMENT} bytes")]
    TooLong,
    /// The rewrite overlaps or precedes an earlier one.
    #[error("rewrite overlaps or precedes an earlier rewrite")]
    Overlap,
    /// The rewritten range is empty.
    #[error("empty rewrite range")]
    Empty,
    /// The rewritten range is [`SPAN`] bytes long or longer (a control line never is).
    #[error("rewrite range of {SPAN} bytes or more")]
    RangeTooLong,
}

/// One rewrite: `old_len` bytes at sequence number `pos` were replaced by `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Original sequence number of the first replaced byte.
    pub pos: u32,
    /// How many original bytes were replaced.
    pub old_len: u32,
    new_len: u8,
    new: [u8; MAX_REPLACEMENT],
}

impl Record {
    /// A record; `None` if `new` is longer than [`MAX_REPLACEMENT`].
    pub fn new(pos: u32, old_len: u32, new: &[u8]) -> Option<Record> {
        let mut r = Record {
            pos,
            old_len,
            new_len: u8::try_from(new.len()).ok()?,
            new: [0; MAX_REPLACEMENT],
        };
        r.new.get_mut(..new.len())?.copy_from_slice(new);
        Some(r)
    }

    /// The replacement bytes.
    pub fn new_bytes(&self) -> &[u8] {
        self.new.get(..usize::from(self.new_len)).unwrap_or(&[])
    }
    fn new_len(&self) -> u32 {
        u32::from(self.new_len)
    }
    fn delta(&self) -> u32 {
        self.new_len().wrapping_sub(self.old_len)
    }
    /// Offset in the replacement of a point `rel` bytes into the original range.
    fn inner(&self, rel: u32) -> u32 {
        if rel >= self.old_len {
            self.new_len()
        } else {
            rel.min(self.new_len())
        }
    }
}

/// Signed distance `a - b` in sequence space.
fn diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

/// The rewrites of one direction of one connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqAdj {
    /// Sum of the deltas of folded (forgotten) records, as a wrapping two's-complement offset.
    base: u32,
    /// `base` plus the delta of every kept record: the offset after the last rewrite.
    total: u32,
    /// In stream order, within [`SPAN`]; allocated only once something is rewritten.
    records: VecDeque<Record>,
}

impl SeqAdj {
    /// An empty log: every map is the identity.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when nothing was ever rewritten: every map is the identity.
    pub fn is_identity(&self) -> bool {
        self.base == 0 && self.records.is_empty()
    }

    /// True when some sequence number moves: a rewrite (kept or folded) changed a length. Only
    /// then do `map`, `unmap` and `transform` differ from the identity (a same-length rewrite
    /// changes bytes, not positions).
    pub fn shifts(&self) -> bool {
        self.base != 0 || self.records.iter().any(|r| r.delta() != 0)
    }

    /// The rewrites kept, oldest first.
    pub fn records(&self) -> impl Iterator<Item = &Record> + '_ {
        self.records.iter()
    }

    /// Folds the oldest records into the base offset until at most `keep` remain. Called after
    /// a packet was emitted: positions before the folded records then map with the newest offset
    /// (only a retransmission of data that old would notice, and it is long acknowledged).
    pub fn trim(&mut self, keep: usize) {
        if self.records.len() <= keep {
            return;
        }
        for _ in keep..self.records.len() {
            self.fold_oldest();
        }
    }

    /// Folds the oldest record into the base offset (the total does not change).
    fn fold_oldest(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.base = self.base.wrapping_add(r.delta());
        }
    }

    /// Offset applied after the last rewrite (what the kernel calls `offset_after`).
    pub fn offset_after(&self) -> i32 {
        self.total as i32
    }

    /// Position of the last rewrite (the kernel's `correction_pos`).
    pub fn correction_pos(&self) -> Option<u32> {
        self.records.back().map(|r| r.pos)
    }

    /// Folded base offset (for the state file).
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Sets the folded base offset (state restore).
    pub fn set_base(&mut self, base: u32) {
        self.total = self.total.wrapping_sub(self.base).wrapping_add(base);
        self.base = base;
    }

    /// Rebuilds from a saved state.
    pub fn restore(base: u32, records: &[(u32, u32, &[u8])]) -> Result<Self, SeqAdjError> {
        let mut s = SeqAdj {
            base,
            total: base,
            ..Default::default()
        };
        for (pos, old_len, new) in records {
            s.add(*pos, *old_len, new)?;
        }
        Ok(s)
    }

    /// Records that `old_len` bytes at `pos` were replaced by `new`. Rewrites must come in
    /// stream order; a repeated identical record (the same line seen again) is accepted as a no-op.
    pub fn add(&mut self, pos: u32, old_len: u32, new: &[u8]) -> Result<(), SeqAdjError> {
        if old_len == 0 || new.is_empty() {
            return Err(SeqAdjError::Empty);
        }
        if new.len() > MAX_REPLACEMENT {
            return Err(SeqAdjError::TooLong);
        }
        if old_len >= SPAN {
            return Err(SeqAdjError::RangeTooLong);
        }
        let mut rec = Record {
            pos,
            old_len,
            new_len: new.len() as u8,
            new: [0; MAX_REPLACEMENT],
        };
        if let Some(dst) = rec.new.get_mut(..new.len()) {
            dst.copy_from_slice(new);
        }
        if let Some(last) = self.records.back() {
            if *last == rec {
                return Ok(());
            }
            if diff(pos, last.pos.wrapping_add(last.old_len)) < 0 {
                return Err(SeqAdjError::Overlap);
            }
        }
        if self.records.len() >= HARD_MAX_RECORDS {
            self.trim(HARD_MAX_RECORDS - 1);
        }
        self.keep_span(pos, old_len);
        self.total = self.total.wrapping_add(rec.delta());
        self.records.push_back(rec);
        Ok(())
    }

    /// Folds the oldest records until a new one at `pos` (after every kept one) ends within
    /// [`SPAN`] of the first kept start. The distance cannot wrap: the kept ones span less
    /// than `SPAN`, the gap to `pos` is under 2^31 (`add` checked the order) and `old_len`
    /// under `SPAN` (`add` refuses longer), so it is under 2^32.
    fn keep_span(&mut self, pos: u32, old_len: u32) {
        let end = pos.wrapping_add(old_len);
        while let Some(first) = self.records.front() {
            if end.wrapping_sub(first.pos) < SPAN {
                break;
            }
            self.fold_oldest();
        }
    }

    /// `p`'s distance from the first kept record's start, if it is close enough after it to
    /// compare with the records directly (no wrap-around: the records span under [`SPAN`]).
    fn near(&self, p: u32) -> Option<(u32, &Record)> {
        let first = self.records.front()?;
        let a = p.wrapping_sub(first.pos);
        (a < NEAR).then_some((a, first))
    }

    /// Maps a sequence number of the sender's space to the receiver's.
    pub fn map(&self, p: u32) -> u32 {
        let Some((a, first)) = self.near(p) else {
            return self.map_walk(p);
        };
        // From the newest back: the records starting at or after `p` take their deltas off
        // the total; the first one starting before `p` is the only one that can contain it
        // (after every record, the newest is that one: O(1)).
        let mut after = 0u32;
        for r in self.records.iter().rev() {
            let start = r.pos.wrapping_sub(first.pos);
            if start < a {
                let rel = a - start;
                if rel < r.old_len {
                    let before = self.total.wrapping_sub(after).wrapping_sub(r.delta());
                    return r.pos.wrapping_add(before).wrapping_add(r.inner(rel));
                }
                break;
            }
            after = after.wrapping_add(r.delta());
        }
        p.wrapping_add(self.total.wrapping_sub(after))
    }

    /// [`SeqAdj::map`] by walking every record (any `p`, even one far from the records).
    fn map_walk(&self, p: u32) -> u32 {
        let mut d = self.base;
        for r in self.records() {
            let rel = diff(p, r.pos);
            if rel <= 0 {
                break;
            }
            if rel as u32 >= r.old_len {
                d = d.wrapping_add(r.delta());
                continue;
            }
            return r.pos.wrapping_add(d).wrapping_add(r.inner(rel as u32));
        }
        p.wrapping_add(d)
    }

    /// Maps a sequence number of the receiver's space back to the sender's (for ACK and SACK of
    /// the other direction). Exact inverse of [`SeqAdj::map`] outside replaced ranges.
    pub fn unmap(&self, q: u32) -> u32 {
        if self.past_new_records(q) {
            return q.wrapping_sub(self.total);
        }
        let mut d = self.base;
        for r in self.records() {
            let new_start = r.pos.wrapping_add(d);
            let rel = diff(q, new_start);
            if rel <= 0 {
                break;
            }
            if rel as u32 >= r.new_len() {
                d = d.wrapping_add(r.delta());
                continue;
            }
            return r.pos.wrapping_add((rel as u32).min(r.old_len));
        }
        q.wrapping_sub(d)
    }

    /// The first kept record that ends after `seq` (those before it cannot touch a segment
    /// starting there), counted from the newest back; 0 when `seq` is too far from the records
    /// to compare.
    fn first_ending_after(&self, seq: u32) -> usize {
        let Some((a, first)) = self.near(seq) else {
            return 0;
        };
        let ends_after = |r: &&Record| {
            u64::from(r.pos.wrapping_sub(first.pos)) + u64::from(r.old_len) > u64::from(a)
        };
        let touching = self.records.iter().rev().take_while(ends_after).count();
        self.records.len() - touching
    }

    /// True if the receiver's `q` is at or after the end of the last kept record's replacement
    /// (or none is kept), where `unmap` is the shift back by `total`. In the receiver's space
    /// the records keep their order and the gaps between them, so they span under 2^31 too.
    fn past_new_records(&self, q: u32) -> bool {
        let (Some(first), Some(last)) = (self.records.front(), self.records.back()) else {
            return true;
        };
        let new_first = first.pos.wrapping_add(self.base);
        let new_end = last.pos.wrapping_add(last.old_len).wrapping_add(self.total);
        let b = q.wrapping_sub(new_first);
        b < NEAR && b >= new_end.wrapping_sub(new_first)
    }

    /// Writes the rewritten form of the original bytes `payload` starting at sequence number
    /// `seq` into `out` (cleared first) and returns the sequence number they start at in the
    /// receiver's space. Works for any segment: first transmission, retransmission, or a
    /// re-segmented retransmission that splits a replaced range.
    pub fn transform(&self, seq: u32, payload: &[u8], out: &mut Vec<u8>) -> u32 {
        out.clear();
        let len = payload.len() as i64;
        let mut cursor: usize = 0;
        for r in self.records.range(self.first_ending_after(seq)..) {
            let start = i64::from(diff(r.pos, seq));
            let end = start + i64::from(r.old_len);
            if end <= 0 {
                continue;
            }
            if start >= len {
                break;
            }
            let ov_start = start.max(0) as usize;
            let ov_end = end.min(len) as usize;
            if let Some(id) = payload.get(cursor..ov_start) {
                out.extend_from_slice(id);
            }
            let a = r.inner((ov_start as i64 - start) as u32) as usize;
            let b = r.inner((ov_end as i64 - start) as u32) as usize;
            if let Some(rep) = r.new_bytes().get(a..b) {
                out.extend_from_slice(rep);
            }
            cursor = ov_end;
        }
        if let Some(rest) = payload.get(cursor..) {
            out.extend_from_slice(rest);
        }
        self.map(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Applies records to an original stream starting at `isn` (the model).
    fn model(isn: u32, orig: &[u8], recs: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut cur = 0usize;
        for (pos, old, new) in recs {
            let s = pos.wrapping_sub(isn) as usize;
            out.extend_from_slice(&orig[cur..s]);
            out.extend_from_slice(new);
            cur = s + *old as usize;
        }
        out.extend_from_slice(&orig[cur..]);
        out
    }

    /// `map` as a walk over every kept record from the base (the definition).
    fn walk_map(s: &SeqAdj, p: u32) -> u32 {
        s.map_walk(p)
    }

    /// `unmap` as a walk over every kept record from the base.
    fn walk_unmap(s: &SeqAdj, q: u32) -> u32 {
        let mut d = s.base;
        for r in s.records() {
            let new_start = r.pos.wrapping_add(d);
            let rel = diff(q, new_start);
            if rel <= 0 {
                break;
            }
            if rel as u32 >= r.new_len() {
                d = d.wrapping_add(r.delta());
                continue;
            }
            return r.pos.wrapping_add((rel as u32).min(r.old_len));
        }
        q.wrapping_sub(d)
    }

    /// `transform` as a walk over every kept record.
    fn walk_transform(s: &SeqAdj, seq: u32, payload: &[u8], out: &mut Vec<u8>) -> u32 {
        out.clear();
        let len = payload.len() as i64;
        let mut cursor: usize = 0;
        for r in s.records() {
            let start = i64::from(diff(r.pos, seq));
            let end = start + i64::from(r.old_len);
            if end <= 0 {
                continue;
            }
            if start >= len {
                break;
            }
            let ov_start = start.max(0) as usize;
            let ov_end = end.min(len) as usize;
            out.extend_from_slice(payload.get(cursor..ov_start).unwrap_or(&[]));
            let a = r.inner((ov_start as i64 - start) as u32) as usize;
            let b = r.inner((ov_end as i64 - start) as u32) as usize;
            out.extend_from_slice(r.new_bytes().get(a..b).unwrap_or(&[]));
            cursor = ov_end;
        }
        out.extend_from_slice(payload.get(cursor..).unwrap_or(&[]));
        walk_map(s, seq)
    }

    #[test]
    fn only_a_length_change_shifts() {
        let mut a = SeqAdj::new();
        assert!(!a.shifts());
        a.add(100, 4, b"wxyz").unwrap();
        assert!(
            !a.is_identity() && !a.shifts(),
            "same length: bytes change, positions do not"
        );
        assert_eq!((a.map(150), a.unmap(150)), (150, 150));
        a.add(200, 4, b"ab").unwrap();
        assert!(a.shifts());
        a.add(300, 2, b"cdef").unwrap();
        a.trim(1);
        assert!(
            a.shifts(),
            "the folded -2 stays in the base, the kept +2 in its record"
        );
    }

    #[test]
    fn lengthen_then_shorten() {
        let mut s = SeqAdj::new();
        assert!(s.is_identity());
        // "PORT 10,0,0,2,4,1" at 1000: args at 1005, 12 bytes -> 18 bytes (+6)
        s.add(1005, 12, b"203,0,113,10,4,1").unwrap(); // 16 bytes: +4
        assert_eq!(s.map(1000), 1000);
        assert_eq!(s.map(1005), 1005);
        assert_eq!(s.map(1017), 1021);
        assert_eq!(s.unmap(1021), 1017);
        s.add(1100, 16, b"1,2,3,4,4,1").unwrap(); // 11 bytes: -5
        assert_eq!(s.map(1116), 1116 + 4 - 5);
        assert_eq!(s.unmap(1115), 1116);
        assert_eq!(s.offset_after(), -1);
        // retransmission of data before both rewrites is unchanged
        assert_eq!(s.map(1001), 1001);
        // between the two
        assert_eq!(s.map(1050), 1054);
    }

    #[test]
    fn wraparound() {
        let mut s = SeqAdj::new();
        let pos = u32::MAX - 3;
        s.add(pos, 4, b"abcdefgh").unwrap();
        assert_eq!(s.map(pos.wrapping_add(4)), pos.wrapping_add(8));
        assert_eq!(s.map(5), 9);
        assert_eq!(s.unmap(9), 5);
    }

    #[test]
    fn repeated_identical_record_is_noop_and_overlap_refused() {
        let mut s = SeqAdj::new();
        s.add(10, 5, b"abcdefg").unwrap();
        s.add(10, 5, b"abcdefg").unwrap();
        assert_eq!(s.records().count(), 1);
        assert_eq!(s.add(12, 5, b"x"), Err(SeqAdjError::Overlap));
        assert_eq!(s.add(20, 0, b"x"), Err(SeqAdjError::Empty));
        assert_eq!(s.add(20, 1, &[b'x'; 60]), Err(SeqAdjError::TooLong));
    }

    #[test]
    fn folding_keeps_the_offset() {
        let mut s = SeqAdj::new();
        for i in 0..(MAX_RECORDS as u32 + 5) {
            s.add(100 * i + 1, 2, b"abc").unwrap();
        }
        assert_eq!(
            s.records().count(),
            MAX_RECORDS + 5,
            "nothing folds before trim"
        );
        s.trim(MAX_RECORDS);
        assert_eq!(s.records().count(), MAX_RECORDS);
        let n = MAX_RECORDS as u32 + 5;
        assert_eq!(s.offset_after(), n as i32);
        assert_eq!(s.map(100 * n + 50), 100 * n + 50 + n);
    }

    #[test]
    fn transform_split_record() {
        let orig = b"xxPORT 10,0,0,2,4,1\r\nyy";
        let isn = 500u32;
        let mut s = SeqAdj::new();
        s.add(isn + 7, 12, b"203,0,113,10,4,1").unwrap();
        let want = model(isn, orig, &[(isn + 7, 12, b"203,0,113,10,4,1".to_vec())]);
        // every split point into two segments
        for cut in 0..=orig.len() {
            let mut out = Vec::new();
            let mut stream = vec![0u8; want.len()];
            let s1 = s.transform(isn, &orig[..cut], &mut out);
            stream[(s1 - isn) as usize..][..out.len()].copy_from_slice(&out);
            let l1 = out.len();
            let s2 = s.transform(isn + cut as u32, &orig[cut..], &mut out);
            assert_eq!(
                (s2 - isn) as usize,
                l1,
                "segments must be contiguous at cut {cut}"
            );
            stream[(s2 - isn) as usize..][..out.len()].copy_from_slice(&out);
            assert_eq!(l1 + out.len(), want.len());
            assert_eq!(stream, want);
        }
    }

    type Stream = (u32, Vec<u8>, Vec<(u32, u32, Vec<u8>)>);

    fn arb_stream() -> impl Strategy<Value = Stream> {
        (
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 1..300),
            prop::collection::vec(
                (
                    1u32..40,
                    1u32..20,
                    prop::collection::vec(any::<u8>(), 0..40),
                ),
                0..8,
            ),
        )
            .prop_map(|(isn, orig, gaps)| {
                let mut recs = Vec::new();
                let mut at = 0u32;
                for (gap, old, new) in gaps {
                    let start = at + gap;
                    if (start + old) as usize > orig.len() {
                        break;
                    }
                    let new = if new.is_empty() { vec![b'z'] } else { new };
                    recs.push((isn.wrapping_add(start), old, new));
                    at = start + old;
                }
                (isn, orig, recs)
            })
    }

    proptest! {
        /// map/unmap are inverse outside replaced ranges, and map is monotone everywhere.
        #[test]
        fn map_is_a_monotone_bijection_outside_records((isn, orig, recs) in arb_stream()) {
            let mut s = SeqAdj::new();
            for (p, o, n) in &recs { s.add(*p, *o, n).unwrap(); }
            let mut prev: Option<u32> = None;
            for i in 0..=orig.len() as u32 {
                let p = isn.wrapping_add(i);
                let m = s.map(p);
                if let Some(pm) = prev { prop_assert!(diff(m, pm) >= 0); }
                prev = Some(m);
                let inside = recs.iter().any(|(rp, o, _)| { let r = diff(p, *rp); r > 0 && (r as u32) < *o });
                if !inside { prop_assert_eq!(s.unmap(m), p); }
            }
        }

        /// Any segmentation, retransmission and reordering of the original stream yields
        /// segments that agree byte for byte with the rewritten stream at their mapped position.
        #[test]
        fn any_interleaving_of_segments_is_consistent(
            (isn, orig, recs) in arb_stream(),
            cuts in prop::collection::vec((0usize..300, 0usize..300), 1..30),
        ) {
            let mut s = SeqAdj::new();
            for (p, o, n) in &recs { s.add(*p, *o, n).unwrap(); }
            let want = model(isn, &orig, &recs);
            let mut covered = vec![false; want.len()];
            let mut segs: Vec<(usize, usize)> = cuts.iter().map(|(a, b)| {
                let a = a % (orig.len() + 1); let b = b % (orig.len() + 1);
                (a.min(b), a.max(b))
            }).collect();
            segs.push((0, orig.len()));
            let mut out = Vec::new();
            for (a, b) in segs {
                let ns = s.transform(isn.wrapping_add(a as u32), &orig[a..b], &mut out);
                let off = ns.wrapping_sub(isn.wrapping_add(0)) as usize;
                let off = off.wrapping_sub(s.base as usize);
                prop_assert!(off + out.len() <= want.len());
                prop_assert_eq!(&want[off..off + out.len()], &out[..]);
                for c in covered.iter_mut().skip(off).take(out.len()) { *c = true; }
                // the segment end maps to where the output ends
                prop_assert_eq!(s.map(isn.wrapping_add(b as u32)), ns.wrapping_add(out.len() as u32));
            }
            prop_assert!(covered.iter().all(|c| *c));
        }

        /// The shortcuts (the kept offset, the walks from the newest record back) give exactly what walking every
        /// record from the base gives, for any records (gaps up to 2^31, wrap-around, folding,
        /// a base from a restore) and any position, near the records or far from them.
        #[test]
        fn shortcuts_agree_with_walking_every_record(
            start in any::<u32>(),
            base in any::<u32>(),
            recs in prop::collection::vec(
                (prop_oneof![0u32..64, 0u32..(1 << 31)], 1u32..80, 1usize..MAX_REPLACEMENT),
                0..24,
            ),
            keep in 0usize..24,
            probes in prop::collection::vec((any::<u32>(), 0usize..24, -90i64..90, 0usize..200), 1..40),
        ) {
            let mut s = SeqAdj::restore(base, &[]).unwrap();
            let mut at = start;
            for (gap, old, new_len) in &recs {
                let pos = at.wrapping_add(*gap);
                s.add(pos, *old, &vec![b'n'; *new_len]).unwrap();
                at = pos.wrapping_add(*old);
            }
            s.trim(keep);
            let kept: Vec<Record> = s.records().copied().collect();
            prop_assert!(kept.len() <= recs.len());
            if let (Some(f), Some(l)) = (kept.first(), kept.last()) {
                prop_assert!(l.pos.wrapping_add(l.old_len).wrapping_sub(f.pos) < SPAN);
            }
            prop_assert_eq!(s.offset_after(), walk_map(&s, kept.last().map_or(0, |l| l.pos.wrapping_add(l.old_len))).wrapping_sub(kept.last().map_or(0, |l| l.pos.wrapping_add(l.old_len))) as i32);
            let payload: Vec<u8> = (0..200u8).collect();
            for (far, near_rec, off, len) in probes {
                // a far position, or one near a kept record's start or end
                let p = match kept.get(near_rec % kept.len().max(1)) {
                    Some(r) if near_rec % 2 == 0 => r.pos.wrapping_add(off as u32),
                    Some(r) => r.pos.wrapping_add(r.old_len).wrapping_add(off as u32),
                    None => far,
                };
                for p in [p, far] {
                    prop_assert_eq!(s.map(p), walk_map(&s, p), "map {}", p);
                    prop_assert_eq!(s.unmap(p), walk_unmap(&s, p), "unmap {}", p);
                    let mut out = Vec::new();
                    let mut want = Vec::new();
                    let got = s.transform(p, &payload[..len], &mut out);
                    prop_assert_eq!(got, walk_transform(&s, p, &payload[..len], &mut want));
                    prop_assert_eq!(out, want);
                }
            }
        }
    }
}
