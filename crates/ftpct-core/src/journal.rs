//! The state file's record format, pure: one line per [`Journal`] record (`encode`,
//! `decode`), each with an FNV-1a hash against torn and edited lines, after a header line
//! `ftpct-state 1 boot=<boot id>`; and the replay of a file's text into an [`Engine`]
//! (`load_text`, `load_bytes`), where every record goes through [`Engine::restore`]'s checks.
//! The file itself (preallocation, the shared mapping, the private temporary file, the boot
//! id) is the `ftpct` crate's `state` module.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::engine::{Engine, Journal, RestoreRefusal};
use crate::expect::{ExpectKind, Expectation};
use crate::seqadj::Record;
use crate::types::{CtTuples, Dir, FlowTuple, SessionId, Timestamp};

/// The first word of the header line.
pub const MAGIC: &str = "ftpct-state 1";

/// What loading found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Records read back (applied or refused).
    pub records: usize,
    /// The file was from another boot (or had no valid header) and was ignored.
    pub stale: bool,
    /// Line number of the first corrupt line (a bad hash, a malformed record, or a byte that is
    /// not UTF-8), if any: the rest was ignored.
    pub corrupt_at: Option<usize>,
    /// Sessions restored.
    pub sessions: usize,
    /// Expectations restored.
    pub expectations: usize,
    /// The file ended with an unterminated line (ignored).
    pub torn_tail: bool,
    /// Something other than a regular file (a symbolic link, a FIFO, a directory...) was at
    /// the path: not read; a regular file replaces it.
    pub not_a_file: bool,
    /// Records that [`Engine::restore`] refused (they changed nothing).
    pub refused: usize,
    /// The first refusal of each kind ([`RestoreRefusal::label`]): its line, the reason and
    /// how many records were refused for that kind, in the order first seen.
    pub refusals: Vec<Refusals>,
}

/// Records refused for one kind of reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusals {
    /// Line of the first one.
    pub line: usize,
    /// The first one's reason.
    pub first: RestoreRefusal,
    /// How many records were refused for this kind of reason.
    pub count: usize,
}

impl LoadReport {
    fn refuse(&mut self, line: usize, why: RestoreRefusal) {
        self.refused += 1;
        match self
            .refusals
            .iter_mut()
            .find(|r| r.first.label() == why.label())
        {
            Some(r) => r.count += 1,
            None => self.refusals.push(Refusals {
                line,
                first: why,
                count: 1,
            }),
        }
    }
}

/// 32-bit FNV-1a: detects torn and edited lines (not an adversary with write access to the
/// file, who could do anything anyway).
pub fn hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn dir_code(d: Dir) -> char {
    match d {
        Dir::Original => 'o',
        Dir::Reply => 'r',
    }
}

fn kind_code(k: ExpectKind) -> &'static str {
    match k {
        ExpectKind::Port => "port",
        ExpectKind::Eprt => "eprt",
        ExpectKind::Pasv227 => "227",
        ExpectKind::Epsv229 => "229",
    }
}

/// Appends one record as a line (with its hash) to `out`.
pub fn encode(rec: &Journal, out: &mut String) {
    let mut body = String::with_capacity(96);
    let _ = match rec {
        Journal::SessionStart { id, ct, created } => write!(
            body,
            "S {} {} {} {} {} {}",
            id.0, ct.original.src, ct.original.dst, ct.reply.src, ct.reply.dst, created.0
        ),
        Journal::ConntrackId { id, ct_id } => write!(body, "C {} {}", id.0, ct_id),
        Journal::LinePos { id, dir, pos } => write!(body, "L {} {} {}", id.0, dir_code(*dir), pos),
        Journal::Rewrite { id, dir, record } => {
            let _ = write!(
                body,
                "R {} {} {} {} ",
                id.0,
                dir_code(*dir),
                record.pos,
                record.old_len
            );
            for b in record.new_bytes() {
                let _ = write!(body, "{b:02x}");
            }
            Ok(())
        }
        Journal::Base { id, dir, base } => write!(body, "B {} {} {}", id.0, dir_code(*dir), base),
        Journal::Tls { id } => write!(body, "T {}", id.0),
        Journal::SessionEnd { id } => write!(body, "E {}", id.0),
        Journal::ExpectAdd { exp } => write!(
            body,
            "X {} {} {} {} {} {} {}",
            exp.master.0,
            kind_code(exp.kind),
            exp.src,
            exp.dst,
            exp.nat_to
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            exp.created.0,
            exp.expires.0
        ),
        Journal::ExpectDel { src, dst } => write!(body, "Y {src} {dst}"),
    };
    let _ = writeln!(out, "{:08x} {}", hash(&body), body);
}

/// Parses one line written by [`encode`]. `None` for a bad hash or a malformed record.
pub fn decode(line: &str) -> Option<Journal> {
    let (h, body) = line.split_once(' ')?;
    if u32::from_str_radix(h, 16).ok()? != hash(body) {
        return None;
    }
    let f: Vec<&str> = body.split(' ').collect();
    let id = |i: usize| f.get(i)?.parse::<u64>().ok().map(SessionId);
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    let u32f = |i: usize| f.get(i)?.parse::<u32>().ok();
    let sa = |i: usize| f.get(i)?.parse::<SocketAddr>().ok();
    let ip = |i: usize| f.get(i)?.parse::<IpAddr>().ok();
    let dir = |i: usize| match *f.get(i)? {
        "o" => Some(Dir::Original),
        "r" => Some(Dir::Reply),
        _ => None,
    };
    let rec = match *f.first()? {
        "S" if f.len() == 7 => Journal::SessionStart {
            id: id(1)?,
            ct: CtTuples {
                original: FlowTuple::new(sa(2)?, sa(3)?),
                reply: FlowTuple::new(sa(4)?, sa(5)?),
            },
            created: Timestamp(num(6)?),
        },
        "C" if f.len() == 3 => Journal::ConntrackId {
            id: id(1)?,
            ct_id: u32f(2)?,
        },
        "L" if f.len() == 4 => Journal::LinePos {
            id: id(1)?,
            dir: dir(2)?,
            pos: u32f(3)?,
        },
        "R" if f.len() == 6 => {
            let hex = f.get(5)?;
            if hex.len() % 2 != 0 || hex.len() > 2 * crate::seqadj::MAX_REPLACEMENT {
                return None;
            }
            let mut bytes = [0u8; crate::seqadj::MAX_REPLACEMENT];
            let n = hex.len() / 2;
            for (i, b) in bytes.iter_mut().take(n).enumerate() {
                *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Journal::Rewrite {
                id: id(1)?,
                dir: dir(2)?,
                record: Record::new(u32f(3)?, u32f(4)?, bytes.get(..n)?)?,
            }
        }
        "B" if f.len() == 4 => Journal::Base {
            id: id(1)?,
            dir: dir(2)?,
            base: u32f(3)?,
        },
        "T" if f.len() == 2 => Journal::Tls { id: id(1)? },
        "E" if f.len() == 2 => Journal::SessionEnd { id: id(1)? },
        "X" if f.len() == 8 => Journal::ExpectAdd {
            exp: Expectation {
                master: id(1)?,
                kind: match *f.get(2)? {
                    "port" => ExpectKind::Port,
                    "eprt" => ExpectKind::Eprt,
                    "227" => ExpectKind::Pasv227,
                    "229" => ExpectKind::Epsv229,
                    _ => return None,
                },
                src: ip(3)?,
                dst: sa(4)?,
                nat_to: match *f.get(5)? {
                    "-" => None,
                    _ => Some(sa(5)?),
                },
                created: Timestamp(num(6)?),
                expires: Timestamp(num(7)?),
            },
        },
        "Y" if f.len() == 3 => Journal::ExpectDel {
            src: ip(1)?,
            dst: sa(2)?,
        },
        _ => return None,
    };
    Some(rec)
}

/// Replays the bytes of a state file into `engine`, as [`load_text`] does, up to the first
/// byte that is not part of valid UTF-8 text: such a byte is corruption like a bad hash, and
/// the line it is on and the rest are not trusted (the daemon then writes a fresh file).
pub fn load_bytes(
    bytes: &[u8],
    expected_boot: &str,
    engine: &mut Engine,
    now: Timestamp,
) -> LoadReport {
    let bytes = bytes.split(|b| *b == 0).next().unwrap_or(&[]);
    let (text, bad_at) = match std::str::from_utf8(bytes) {
        Ok(t) => (t, None),
        Err(e) => {
            let valid = bytes.get(..e.valid_up_to()).unwrap_or(&[]);
            // valid UTF-8 up to there, by construction
            let t = std::str::from_utf8(valid).unwrap_or("");
            (t, Some(t.bytes().filter(|b| *b == b'\n').count() + 1))
        }
    };
    let mut report = load_text(text, expected_boot, engine, now);
    if let (Some(line), false) = (bad_at, report.stale) {
        // The valid part ends inside the bad line: not a torn append, a corrupt line.
        report.torn_tail = false;
        report.corrupt_at = Some(report.corrupt_at.map_or(line, |l| l.min(line)));
    }
    report
}

/// Replays the text of a state file into `engine`: the text up to the first zero byte (the
/// preallocated rest of the file), without an unterminated last line (an append cut short).
/// Every record goes through [`Engine::restore`]'s checks; the refused ones are counted in the
/// report.
pub fn load_text(
    text: &str,
    expected_boot: &str,
    engine: &mut Engine,
    now: Timestamp,
) -> LoadReport {
    let mut report = LoadReport::default();
    let text = text.split('\0').next().unwrap_or("");
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    report.torn_tail = complete.len() < text.len();
    let mut lines = complete.lines();
    match lines.next() {
        Some(h) if h == format!("{MAGIC} boot={expected_boot}") => {}
        _ => {
            report.stale = true;
            return report;
        }
    }
    for (i, line) in lines.enumerate() {
        match decode(line) {
            Some(rec) => {
                if let Err(why) = engine.restore(&rec, now) {
                    report.refuse(i + 2, why);
                }
                report.records += 1;
            }
            None => {
                report.corrupt_at = Some(i + 2);
                break;
            }
        }
    }
    report.sessions = engine.session_count();
    report.expectations = engine.expectations().len();
    report
}
