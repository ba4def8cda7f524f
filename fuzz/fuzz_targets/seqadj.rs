//! `ftpct::seqadj::SeqAdj`: arbitrary sequences of `add` / `map` / `unmap` / `transform`,
//! checked against a model that keeps every rewrite (no folding) and materialises the
//! rewritten stream.
//!
//! Input: the ISN (4 bytes), then operations (one opcode byte and its arguments each).
//! Rewrites are generated in stream order with bounded gaps (as the engine makes them: one per
//! line, lines in order), plus overlapping / repeated ones that must be refused or ignored.
//! Invariants: no panic; `add` succeeds exactly when the model says so; `map` equals the model
//! and is monotone; `unmap(map(p)) == p` outside replaced ranges; `transform` of any segment
//! agrees byte for byte with the model's rewritten stream at the mapped position, and the
//! segment's end maps to where its output ends. Positions before the folded (forgotten)
//! rewrites are only checked for not panicking (the documented limitation).

#![no_main]

use ftpct::seqadj::{SeqAdj, SeqAdjError, MAX_RECORDS, MAX_REPLACEMENT};
use ftpct_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

/// A rewrite in stream offsets (relative to the ISN).
#[derive(Clone, Debug, PartialEq)]
struct Rec {
    pos: u64,
    old: u64,
    new: Vec<u8>,
}

fn orig_byte(off: u64) -> u8 {
    (off.wrapping_mul(131) ^ (off >> 8)) as u8
}

struct Model {
    isn: u32,
    recs: Vec<Rec>,
}

impl Model {
    fn last_end(&self) -> u64 {
        self.recs.last().map_or(0, |r| r.pos + r.old)
    }
    /// End of the last folded record: positions from here on are mapped exactly.
    fn exact_from(&self) -> u64 {
        let folded = self.recs.len().saturating_sub(MAX_RECORDS);
        if folded == 0 {
            0
        } else {
            let r = &self.recs[folded - 1];
            r.pos + r.old
        }
    }
    /// Model map, as an offset from the ISN in the receiver's space.
    fn map(&self, p: u64) -> u64 {
        let mut d: i64 = 0;
        for r in &self.recs {
            if p <= r.pos {
                break;
            }
            let rel = p - r.pos;
            if rel >= r.old {
                d += r.new.len() as i64 - r.old as i64;
                continue;
            }
            return (r.pos as i64 + d) as u64 + rel.min(r.new.len() as u64);
        }
        (p as i64 + d) as u64
    }
    /// Inside a replaced range, or at the end of a range replaced by nothing (a deletion maps
    /// its start and its end to the same point, so `unmap` can only return the start).
    /// The engine never deletes (its replacements are formatted addresses), so this is an
    /// API edge case only.
    fn inside(&self, p: u64) -> bool {
        self.recs
            .iter()
            .any(|r| p > r.pos && (p < r.pos + r.old || (p == r.pos + r.old && r.new.is_empty())))
    }
    /// The rewritten stream for original offsets `0..end` (end after every record).
    fn stream(&self, end: u64) -> Vec<u8> {
        let mut w = Vec::new();
        let mut cur = 0u64;
        for r in &self.recs {
            w.extend((cur..r.pos).map(orig_byte));
            w.extend_from_slice(&r.new);
            cur = r.pos + r.old;
        }
        w.extend((cur..end.max(cur)).map(orig_byte));
        w
    }
    fn seq(&self, off: u64) -> u32 {
        self.isn.wrapping_add(off as u32)
    }
}

fn diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let isn = r.u32();
    let mut m = Model {
        isn,
        recs: Vec::new(),
    };
    let mut s = SeqAdj::new();
    let mut out = Vec::new();
    let mut ops = 0;
    while !r.is_empty() && ops < 200 {
        ops += 1;
        match r.u8() % 7 {
            // add in stream order
            0 | 1 => {
                let gap = u64::from(r.u16() % 600);
                let old = u64::from(r.u8() % 81);
                let n = usize::from(r.u8() % 64);
                let new = r.bytes(n).to_vec();
                let pos = m.last_end() + gap;
                let res = s.add(m.seq(pos), old as u32, &new);
                // the engine trims after every emitted packet; the model folds the same way
                s.trim(MAX_RECORDS);
                let rec = Rec { pos, old, new };
                let want = if old == 0 || rec.new.is_empty() {
                    Err(SeqAdjError::Empty)
                } else if rec.new.len() > MAX_REPLACEMENT {
                    Err(SeqAdjError::TooLong)
                } else {
                    Ok(())
                };
                assert_eq!(res, want, "add {rec:?}");
                if res.is_ok() && m.recs.last() != Some(&rec) {
                    m.recs.push(rec);
                }
            }
            // add overlapping or repeating the last record
            2 => {
                let back = u64::from(r.u8());
                let Some(last) = m.recs.last().cloned() else {
                    continue;
                };
                let end = last.pos + last.old;
                let (pos, old, new) = if back == 0 {
                    // the same line seen again: a no-op
                    (last.pos, last.old, last.new.clone())
                } else {
                    (end.saturating_sub(back), 1, b"x".to_vec())
                };
                let rec = Rec { pos, old, new };
                let want = if rec == last {
                    Ok(())
                } else {
                    Err(SeqAdjError::Overlap)
                };
                assert_eq!(
                    s.add(m.seq(pos), old as u32, &rec.new),
                    want,
                    "{rec:?} after {last:?}"
                );
                s.trim(MAX_RECORDS);
            }
            // map / unmap around the records
            3 => {
                let lo = m.exact_from();
                let hi = m.last_end() + 64;
                let p = lo + u64::from(r.u16()) % (hi - lo + 1);
                let mp = s.map(m.seq(p));
                assert_eq!(mp, m.seq(m.map(p)), "map({p})");
                let mp1 = s.map(m.seq(p + 1));
                assert!(diff(mp1, mp) >= 0, "map not monotone at {p}");
                if !m.inside(p) {
                    assert_eq!(s.unmap(mp), m.seq(p), "unmap(map({p}))");
                }
            }
            // unmap / map of arbitrary values: no panic
            4 => {
                let q = r.u32();
                let _ = s.unmap(q);
                let _ = s.map(q);
                let _ = s.transform(q, &[b'x'; 3], &mut out);
            }
            // transform of a segment from the exactly-mapped region
            5 => {
                let lo = m.exact_from();
                let hi = m.last_end() + 64;
                let a = lo + u64::from(r.u16()) % (hi - lo + 1);
                let len = u64::from(r.u16() % 1500);
                let payload: Vec<u8> = (a..a + len).map(orig_byte).collect();
                let ns = s.transform(m.seq(a), &payload, &mut out);
                assert_eq!(ns, m.seq(m.map(a)), "transform start of {a}");
                let w = m.stream(a + len);
                let at = ns.wrapping_sub(isn) as usize;
                assert!(
                    at + out.len() <= w.len(),
                    "segment {a}+{len} out of the stream"
                );
                assert_eq!(&w[at..at + out.len()], &out[..], "segment {a}+{len} bytes");
                assert_eq!(
                    s.map(m.seq(a + len)),
                    ns.wrapping_add(out.len() as u32),
                    "segment {a}+{len} end"
                );
            }
            // offsets and introspection
            _ => {
                let _ = s.offset_after();
                let _ = s.correction_pos();
                assert_eq!(s.records().count(), m.recs.len().min(MAX_RECORDS));
                assert_eq!(s.is_identity(), m.recs.is_empty());
                let total: i64 = m
                    .recs
                    .iter()
                    .map(|r| r.new.len() as i64 - r.old as i64)
                    .sum();
                assert_eq!(s.offset_after(), total as i32);
            }
        }
    }
});
