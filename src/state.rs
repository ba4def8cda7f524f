//! The state file: what must survive a daemon restart (`kill -9` included).
//!
//! One append-only text file: a header, then one record per line (see [`Journal`]), each line
//! prefixed with a hash of its content. The daemon appends the engine's journal records before it
//! issues the verdict of the packet that produced them, with one `write(2)`, so a record is in the
//! kernel's page cache before the rewritten packet leaves: a killed daemon loses nothing. When
//! the file grows, a snapshot of the whole state is written to a temporary file and renamed over
//! it (atomic). On start the file is replayed into the engine:
//! - a header from another boot (`/proc/sys/kernel/random/boot_id`) means the connections are
//!   gone: the file is ignored;
//! - a line whose hash does not match (torn or corrupt file) stops the replay there; what came
//!   before is kept, the rest is reported and not trusted;
//! - the shell then checks each restored session against the kernel's conntrack table and forgets
//!   those whose entry is gone.
//!
//! The default path is the control socket's path with `.state` appended, so daemons in several
//! network namespaces never share a file. `/run` is a tmpfs: the file does not outlive a reboot,
//! which is right, since the connections don't either.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::engine::{Engine, Journal};
use crate::expect::{ExpectKind, Expectation};
use crate::seqadj::Record;
use crate::types::{CtTuples, Dir, FlowTuple, SessionId, Timestamp};

const MAGIC: &str = "ftpct-state 1";
/// Largest state file read back (a bound on memory for a hostile or corrupt file).
const MAX_FILE: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source} (check the directory exists and is writable by ftpct)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What loading found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub records: usize,
    /// The file was from another boot (or had no valid header) and was ignored.
    pub stale: bool,
    /// Line number of the first corrupt line, if any (the rest was ignored).
    pub corrupt_at: Option<usize>,
    pub sessions: usize,
    pub expectations: usize,
}

/// 32-bit FNV-1a: detects torn and edited lines (not an adversary with write access to the
/// file, who could do anything anyway).
fn hash(s: &str) -> u32 {
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

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Replays the text of a state file into `engine`.
pub fn load_text(
    text: &str,
    expected_boot: &str,
    engine: &mut Engine,
    now: Timestamp,
) -> LoadReport {
    let mut report = LoadReport::default();
    let mut lines = text.lines();
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
                engine.restore(&rec, now);
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

/// The open state file.
pub struct StateFile {
    path: PathBuf,
    file: File,
    boot: String,
    buf: String,
    snapshot: Vec<Journal>,
    /// Records appended since the last snapshot.
    appended: usize,
}

impl StateFile {
    /// Loads `path` into `engine` (if it exists), then rewrites it as a fresh snapshot.
    pub fn open(
        path: &Path,
        engine: &mut Engine,
        now: Timestamp,
    ) -> Result<(StateFile, LoadReport), StateError> {
        let err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let boot = boot_id();
        let mut report = LoadReport::default();
        match File::open(path) {
            Ok(f) => {
                let mut text = String::new();
                f.take(MAX_FILE).read_to_string(&mut text).map_err(err)?;
                report = load_text(&text, &boot, engine, now);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(err)?;
        let mut sf = StateFile {
            path: path.to_path_buf(),
            file,
            boot,
            buf: String::with_capacity(4096),
            snapshot: Vec::new(),
            appended: 0,
        };
        sf.compact(engine)?;
        Ok((sf, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the engine's pending journal records (one write); returns how many.
    pub fn append_from(&mut self, engine: &mut Engine) -> Result<usize, StateError> {
        if engine.take_journal_overflow() {
            let mut n = 0;
            while engine.poll_journal().is_some() {
                n += 1;
            }
            self.compact(engine)?;
            return Ok(n);
        }
        self.buf.clear();
        let mut n = 0;
        while let Some(rec) = engine.poll_journal() {
            encode(&rec, &mut self.buf);
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        self.file
            .write_all(self.buf.as_bytes())
            .map_err(|source| StateError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.appended += n;
        let live = engine.session_count() + engine.expectations().len();
        if self.appended > 4 * live + 10_000 {
            self.compact(engine)?;
        }
        Ok(n)
    }

    /// Writes the whole state to a temporary file and renames it over the state file.
    pub fn compact(&mut self, engine: &Engine) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        self.snapshot.clear();
        engine.snapshot(&mut self.snapshot);
        let mut text = String::with_capacity(64 * self.snapshot.len() + 64);
        let _ = writeln!(text, "{MAGIC} boot={}", self.boot);
        for rec in &self.snapshot {
            encode(rec, &mut text);
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        self.appended = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Config;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Journal> {
        let ct = CtTuples {
            original: FlowTuple::new(sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            reply: FlowTuple::new(sa("198.51.100.2:21"), sa("203.0.113.1:61000")),
        };
        vec![
            Journal::SessionStart {
                id: SessionId(7),
                ct,
                created: Timestamp(123),
            },
            Journal::LinePos {
                id: SessionId(7),
                dir: Dir::Reply,
                pos: u32::MAX,
            },
            Journal::Rewrite {
                id: SessionId(7),
                dir: Dir::Original,
                record: Record::new(1005, 12, b"203,0,113,1,4,1").unwrap(),
            },
            Journal::Base {
                id: SessionId(7),
                dir: Dir::Original,
                base: 4294967290,
            },
            Journal::Tls { id: SessionId(7) },
            Journal::ExpectAdd {
                exp: Expectation {
                    master: SessionId(7),
                    kind: ExpectKind::Eprt,
                    src: "fd00::1".parse().unwrap(),
                    dst: sa("[fd00::2]:50000"),
                    nat_to: None,
                    created: Timestamp(5),
                    expires: Timestamp(6),
                },
            },
            Journal::ExpectAdd {
                exp: Expectation {
                    master: SessionId(7),
                    kind: ExpectKind::Port,
                    src: "198.51.100.2".parse().unwrap(),
                    dst: sa("203.0.113.1:50000"),
                    nat_to: Some(sa("10.0.0.2:50000")),
                    created: Timestamp(5),
                    expires: Timestamp(6),
                },
            },
            Journal::ExpectDel {
                src: "198.51.100.2".parse().unwrap(),
                dst: sa("203.0.113.1:50000"),
            },
            Journal::SessionEnd { id: SessionId(7) },
        ]
    }

    #[test]
    fn every_record_round_trips() {
        for rec in samples() {
            let mut s = String::new();
            encode(&rec, &mut s);
            assert!(s.ends_with('\n'));
            assert_eq!(decode(s.trim_end()), Some(rec), "{s}");
        }
    }

    #[test]
    fn corrupt_lines_are_rejected() {
        let mut s = String::new();
        encode(&samples()[0], &mut s);
        let line = s.trim_end();
        // flip one character of the body
        let mut bad = line.to_string();
        bad.replace_range(12..13, "9");
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode("zzzz S 1"), None);
        assert_eq!(
            decode(&format!("{:08x} R 1 o 1 2 abc", hash("R 1 o 1 2 abc"))),
            None
        );
        for junk in ["\u{0}", "12345678", "00000000 ", "ffffffff X"] {
            assert_eq!(decode(junk), None);
        }
    }

    #[test]
    fn replay_stops_at_the_first_corrupt_line_and_ignores_other_boots() {
        let mut text = format!("{MAGIC} boot=B1\n");
        for rec in samples().iter().take(3) {
            encode(rec, &mut text);
        }
        text.push_str("deadbeef garbage\n");
        encode(&samples()[4], &mut text);
        let mut e = Engine::new(Config::default());
        let r = load_text(&text, "B1", &mut e, Timestamp(200));
        assert_eq!(r.records, 3);
        assert_eq!(r.corrupt_at, Some(5));
        assert_eq!(r.sessions, 1);
        let s = e.sessions().next().unwrap();
        assert!(
            !s.encrypted,
            "records after the corrupt line are not trusted"
        );
        assert_eq!(s.dir(Dir::Original).seqadj.records().count(), 1);

        let mut e = Engine::new(Config::default());
        let r = load_text(&text, "B2", &mut e, Timestamp(200));
        assert!(r.stale);
        assert_eq!(e.session_count(), 0);
    }
}
