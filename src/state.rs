//! The state file: what must survive a daemon restart (`kill -9` included).
//!
//! One append-only text file: a header, then one record per line (see [`Journal`]), each line
//! prefixed with a hash of its content. The daemon appends the engine's journal records before it
//! issues the verdict of the packet that produced them, so a record is in the kernel's page cache
//! before the rewritten packet leaves: a killed daemon loses nothing. The file is preallocated
//! (`posix_fallocate`) and mapped shared into the daemon's memory, so an append is a copy into the
//! page cache, without a system call (a third of the control packets append a record: one per
//! completed line); after the records, the file holds zero bytes up to its preallocated size.
//! Where the file cannot be preallocated or mapped, records are appended with `write(2)`, one
//! call per packet. When the file grows, or its preallocated space is used up, a snapshot of the
//! whole state is written to a temporary file and renamed over it (atomic). On start the file is
//! replayed into the engine:
//! - a header from another boot (`/proc/sys/kernel/random/boot_id`) means the connections are
//!   gone: the file is ignored;
//! - a line whose hash does not match (corrupt file) stops the replay there; what came before is
//!   kept, the rest is reported and not trusted;
//! - an unterminated last line is an append cut short by the daemon's death, before the verdict
//!   of its packet: it is ignored;
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
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

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
    /// The file ended with an unterminated line (ignored).
    pub torn_tail: bool,
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
    const PATH: &str = "/proc/sys/kernel/random/boot_id";
    std::fs::read_to_string(PATH)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "cannot read {PATH} ({e}): a state file written before a reboot cannot be \
                     told from this boot's and would be restored. Fix: let the daemon read \
                     /proc/sys (under systemd, remove ProcSubset=pid from the unit), or keep \
                     state_file on a tmpfs such as /run"
                )
            });
            "unknown".into()
        })
}

/// Replays the text of a state file into `engine`: the text up to the first zero byte (the
/// preallocated rest of the file), without an unterminated last line (an append cut short).
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

/// Smallest preallocated size of the state file.
const MIN_CAPACITY: usize = 1 << 20;

/// The file's preallocated size for a snapshot of `len` bytes: room for as many bytes of records
/// again, at least [`MIN_CAPACITY`], so that compactions stay proportional to the appends.
fn capacity_for(len: usize) -> usize {
    (2 * len + (256 << 10)).max(MIN_CAPACITY)
}

/// A state file mapped shared into memory, with `cap` bytes preallocated and `used` of them
/// holding records.
struct Mapping {
    ptr: NonNull<u8>,
    cap: usize,
    used: usize,
}

impl Mapping {
    /// Preallocates `file` to `cap` bytes and maps it; its first `used` bytes are the records.
    fn new(file: &File, used: usize, cap: usize) -> std::io::Result<Mapping> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let len = NonZeroUsize::new(cap).ok_or(std::io::ErrorKind::InvalidInput)?;
        let off = nix::libc::off_t::try_from(cap).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // Reserve the blocks now: a write into a hole of a full file system through a mapping
        // is a SIGBUS, a failed fallocate is an error we can handle (fall back to write(2)).
        nix::fcntl::posix_fallocate(file.as_raw_fd(), 0, off)?;
        // SAFETY: a new shared mapping of `cap` bytes of a file that is at least that long (just
        // preallocated); nothing else in this process maps it. Only `append` writes through it,
        // within bounds. Another process truncating the file would make accesses fault
        // (SIGBUS): the file lives in ftpct's own state directory, and docs/operations.md says
        // not to edit it while the daemon runs.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                0,
            )
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            cap,
            used,
        })
    }

    /// Copies `bytes` after the records; `false` (and nothing written) if they do not fit.
    fn append(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.cap - self.used {
            return false;
        }
        // SAFETY: `used + bytes.len() <= cap`, the mapping's length; `bytes` is not in it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.used),
                bytes.len(),
            );
        }
        self.used += bytes.len();
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of `cap` bytes, not used after this.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.cap) };
    }
}

/// Where appends go.
enum Sink {
    Mapped(Mapping),
    /// `write(2)` with `O_APPEND`, where the file cannot be preallocated or mapped.
    Write(File),
}

/// The open state file.
pub struct StateFile {
    path: PathBuf,
    sink: Sink,
    boot: String,
    /// Encoded records before they are appended; also the snapshot's chunks.
    buf: String,
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
        let (sink, _) = Self::write_snapshot(path, &boot, engine, &mut String::new())?;
        let sf = StateFile {
            path: path.to_path_buf(),
            sink,
            boot,
            buf: String::with_capacity(4096),
            appended: 0,
        };
        Ok((sf, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether appends go through a memory mapping (else `write(2)`).
    pub fn is_mapped(&self) -> bool {
        matches!(self.sink, Sink::Mapped(_))
    }

    /// Appends the engine's pending journal records; returns how many.
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
        let written = match &mut self.sink {
            Sink::Mapped(m) => m.append(self.buf.as_bytes()),
            Sink::Write(f) => {
                f.write_all(self.buf.as_bytes())
                    .map_err(|source| StateError::Io {
                        path: self.path.clone(),
                        source,
                    })?;
                true
            }
        };
        self.appended += n;
        let live = engine.session_count() + engine.expectations().len();
        // Full: the snapshot holds these records' effect (the engine has applied them).
        if !written || self.appended > 4 * live + 10_000 {
            self.compact(engine)?;
        }
        Ok(n)
    }

    /// Writes the whole state to a temporary file and renames it over the state file.
    pub fn compact(&mut self, engine: &Engine) -> Result<(), StateError> {
        let (sink, _) = Self::write_snapshot(&self.path, &self.boot, engine, &mut self.buf)?;
        // The old mapping (if any) is unmapped here, after the new file is in place.
        self.sink = sink;
        self.appended = 0;
        Ok(())
    }

    /// Writes a snapshot to `path.tmp`, preallocates and maps it, renames it over `path`; falls
    /// back to appends with `write(2)` if preallocating or mapping fails. Returns the sink and
    /// the snapshot's length.
    fn write_snapshot(
        path: &Path,
        boot: &str,
        engine: &Engine,
        text: &mut String,
    ) -> Result<(Sink, usize), StateError> {
        let err = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.to_path_buf().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err)?;
        // Streamed in chunks: a snapshot of a million expectations is ~100 MB of text, which
        // must not sit in memory (neither as records nor as text) next to the tables.
        const CHUNK: usize = 64 << 10;
        text.clear();
        let _ = writeln!(text, "{MAGIC} boot={boot}");
        let mut len = 0;
        let mut failed = None;
        engine.snapshot_each(|rec| {
            if failed.is_some() {
                return;
            }
            encode(&rec, text);
            if text.len() >= CHUNK {
                len += text.len();
                failed = f.write_all(text.as_bytes()).err();
                text.clear();
            }
        });
        if let Some(e) = failed {
            return Err(err(e));
        }
        len += text.len();
        f.write_all(text.as_bytes()).map_err(err)?;
        text.clear();
        text.shrink_to(CHUNK);
        let sink = match Mapping::new(&f, len, capacity_for(len)) {
            Ok(m) => Sink::Mapped(m),
            Err(e) => {
                tracing::debug!(error = %e, "state file not mapped; appending with write(2)");
                // a failed fallocate may have extended the file with zeros: cut them off
                f.set_len(len as u64).map_err(err)?;
                drop(f);
                let f = OpenOptions::new().append(true).open(&tmp).map_err(err)?;
                Sink::Write(f)
            }
        };
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok((sink, len))
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

    #[test]
    fn zero_padding_and_a_torn_last_line_are_not_records() {
        let mut text = format!("{MAGIC} boot=B1\n");
        for rec in samples().iter().take(3) {
            encode(rec, &mut text);
        }
        let mut torn = String::new();
        encode(&samples()[3], &mut torn);
        text.push_str(&torn[..torn.len() / 2]);
        text.push_str(&"\0".repeat(100));
        let mut e = Engine::new(Config::default());
        let r = load_text(&text, "B1", &mut e, Timestamp(200));
        assert_eq!((r.records, r.corrupt_at, r.torn_tail), (3, None, true));
        // zeros right after complete records: nothing torn
        let text = format!("{MAGIC} boot=B1\n{torn}\0\0");
        let r = load_text(
            &text,
            "B1",
            &mut Engine::new(Config::default()),
            Timestamp(0),
        );
        assert_eq!((r.records, r.torn_tail), (1, false));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ftpct-state-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("s.state")
    }

    #[test]
    fn appends_through_the_mapping_reach_the_file() {
        let path = scratch("mapping");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut m = Mapping::new(&f, 0, 4096).unwrap();
        assert!(m.append(b"hello\n"));
        assert!(m.append(&[b'x'; 4090]));
        assert!(!m.append(b"!"), "full: refused, nothing written");
        // read(2) sees what was copied into the mapping: the page cache is shared
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 4096);
        assert_eq!(&back[..6], b"hello\n");
        assert_eq!(back[4095], b'x');
        drop(m);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_reopened_state_file_gives_back_the_state() {
        let path = scratch("reopen");
        let mut e = Engine::new(Config::default());
        for rec in samples() {
            e.restore(&rec, Timestamp(100));
        }
        let (sf, _) = StateFile::open(&path, &mut e, Timestamp(100)).unwrap();
        assert!(
            sf.is_mapped(),
            "tmpfs and most file systems can be preallocated"
        );
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(len, MIN_CAPACITY, "preallocated");
        // as after a kill: no compaction, the mapping dropped with the process
        drop(sf);
        let mut again = Engine::new(Config::default());
        let (_sf, r) = StateFile::open(&path, &mut again, Timestamp(100)).unwrap();
        assert!(!r.stale && r.corrupt_at.is_none() && !r.torn_tail, "{r:?}");
        assert_eq!(again.session_count(), e.session_count());
        assert_eq!(again.expectations().len(), e.expectations().len());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_snapshot_larger_than_a_chunk_is_written_whole() {
        let path = scratch("chunks");
        let mut cfg = Config::default();
        cfg.policy.max_expect_per_session = 100_000;
        let mut e = Engine::new(cfg.clone());
        for rec in samples() {
            if !matches!(rec, Journal::SessionEnd { .. }) {
                e.restore(&rec, Timestamp(100));
            }
        }
        assert_eq!(e.session_count(), 1);
        // 3000 more expectations of session 7: ~300 kB of records, several 64 kB chunks
        for port in 20_000..23_000u16 {
            let exp = Expectation {
                master: SessionId(7),
                kind: ExpectKind::Port,
                src: "198.51.100.2".parse().unwrap(),
                dst: SocketAddr::new("203.0.113.1".parse().unwrap(), port),
                nat_to: Some(SocketAddr::new("10.0.0.2".parse().unwrap(), port)),
                created: Timestamp(100),
                expires: Timestamp(300_000_000_100),
            };
            e.restore(&Journal::ExpectAdd { exp }, Timestamp(100));
        }
        let want = e.expectations().len();
        assert!(want >= 3000, "{want}");
        let (sf, _) = StateFile::open(&path, &mut e, Timestamp(100)).unwrap();
        drop(sf);
        let mut again = Engine::new(cfg);
        let (_sf, r) = StateFile::open(&path, &mut again, Timestamp(100)).unwrap();
        assert!(r.corrupt_at.is_none() && !r.torn_tail, "{r:?}");
        assert_eq!(again.expectations().len(), want);
        assert_eq!(again.session_count(), e.session_count());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
