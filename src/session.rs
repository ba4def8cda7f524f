//! Per-control-connection state: stream position and line assembly for each direction, the
//! rewrites made so far ([`SeqAdj`]), and the FTP command/reply context around PORT, EPRT, PASV,
//! EPSV, 227, 229 and AUTH TLS.
//!
//! Reassembly works on the original (sender's) sequence space: `next` is the first byte not yet
//! fed to the line assembler, so every byte is parsed exactly once, whatever the segmentation,
//! retransmissions or duplicates. A line is only parsed from its first byte: a session picked up
//! in the middle of a stream skips to the first newline, so a command can never be recognised in
//! the middle of a line (NAT-slipstreaming defence).

use crate::seqadj::SeqAdj;
use crate::types::{CtTuples, Dir, SessionId, Timestamp};

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
    /// How often the held bytes were seen again without their continuation.
    pub hold_tries: u8,
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
            hold_tries: 0,
            no_rewrite_line: false,
            max_seg: 0,
            fin: false,
            restored: false,
            gap_drops: 0,
            seqadj: SeqAdj::new(),
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
        self.hold_tries = 0;
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
        let nl = rest.iter().position(|&b| b == b'\n');
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
    #[default]
    None,
    Pasv,
    Epsv,
    AuthTls,
}

/// A tracked control connection.
#[derive(Clone, Debug)]
pub struct Session {
    pub id: SessionId,
    /// The kernel's conntrack tuples of the control connection (NAT mapping).
    pub ct: CtTuples,
    pub dirs: [DirState; 2],
    pub pending: Pending,
    /// Code of the multi-line reply in progress (`NNN-` seen, `NNN ` not yet).
    pub multiline: Option<u16>,
    /// A 227 address was already taken from the current multi-line reply.
    pub multiline_done: bool,
    /// AUTH TLS was accepted: the channel is encrypted and no longer inspected.
    pub encrypted: bool,
    pub created: Timestamp,
    pub last_seen: Timestamp,
    /// RST seen.
    pub reset: bool,
    /// Counters for the `sessions` listing.
    pub rewrites: u32,
    pub expectations: u32,
}

impl Session {
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
            reset: false,
            rewrites: 0,
            expectations: 0,
        }
    }

    /// Some sequence number of this connection moves (in either direction): its packets need
    /// mapping after conntrack too, and its conntrack entry carries `seqadj_mark`.
    pub fn shifts_sequence(&self) -> bool {
        self.dirs.iter().any(|d| d.seqadj.shifts())
    }

    pub fn dir(&self, d: Dir) -> &DirState {
        &self.dirs[d.index()]
    }

    pub fn dir_mut(&mut self, d: Dir) -> &mut DirState {
        &mut self.dirs[d.index()]
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
