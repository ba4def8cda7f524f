//! The state file: what must survive a daemon restart (`kill -9` included).
//!
//! One append-only text file: a header, then one record per line (see `Journal`), each line
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
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use nix::libc;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

pub use crate::journal::{
    decode, encode, hash, load_bytes, load_text, LoadReport, Refusals, MAGIC,
};

use crate::engine::Engine;
use crate::types::Timestamp;

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
        // Not through a symbolic link, and not blocking on a FIFO: only a regular file is
        // read (anything else at the path is replaced by the fresh file's rename below).
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path);
        match opened {
            Ok(f) if f.metadata().map_err(err)?.is_file() => {
                let mut bytes = Vec::new();
                f.take(MAX_FILE).read_to_end(&mut bytes).map_err(err)?;
                report = load_bytes(&bytes, &boot, engine, now);
            }
            Ok(_) => report.not_a_file = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => report.not_a_file = true,
            Err(e) => return Err(err(e)),
        }
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(err)?;
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
        let mut f = create_private(&tmp).map_err(err)?;
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
                // a failed fallocate may have extended the file with zeros: cut them off;
                // the file position stays at the end of the snapshot, where appends go
                f.set_len(len as u64).map_err(err)?;
                Sink::Write(f)
            }
        };
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok((sink, len))
    }
}

/// Creates `path` for writing, mode 0600, without following a symbolic link and without
/// opening anything that is already there: a stale file (or a link, a FIFO...) left at the
/// path is removed first (`unlink` removes a link itself, never its target); should one
/// appear again before the open, the open fails instead of writing through it.
fn create_private(path: &Path) -> std::io::Result<File> {
    match nix::unistd::unlinkat(None, path, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .and_then(|f| {
            // whatever the umask
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            Ok(f)
        })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::engine::Config;
    use crate::engine::Journal;
    use crate::expect::{ExpectKind, Expectation};
    use crate::seqadj::Record;
    use crate::types::{CtTuples, Dir, FlowTuple, SessionId};

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
                created: Timestamp(50),
            },
            Journal::ConntrackId {
                id: SessionId(7),
                ct_id: 0xdead_beef,
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
        for rec in samples().iter().take(4) {
            encode(rec, &mut text);
        }
        text.push_str("deadbeef garbage\n");
        encode(&samples()[5], &mut text);
        let mut e = Engine::new(Config::default());
        let r = load_text(&text, "B1", &mut e, Timestamp(200));
        assert_eq!(r.records, 4);
        assert_eq!(r.corrupt_at, Some(6));
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
            let _ = e.restore(&rec, Timestamp(100));
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
                let _ = e.restore(&rec, Timestamp(100));
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
            e.restore(&Journal::ExpectAdd { exp }, Timestamp(100))
                .unwrap();
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

    /// A session as the engine keeps it for a client 10.0.0.2:40000 behind MASQUERADE as
    /// 203.0.113.1:61000, server 198.51.100.2:21; an expectation of its PORT rewritten.
    fn masq_session(id: u64) -> (Journal, Expectation) {
        let ct = CtTuples {
            original: FlowTuple::new(sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            reply: FlowTuple::new(sa("198.51.100.2:21"), sa("203.0.113.1:61000")),
        };
        let start = Journal::SessionStart {
            id: SessionId(id),
            ct,
            created: Timestamp::from_secs(10),
        };
        let exp = Expectation {
            master: SessionId(id),
            kind: ExpectKind::Port,
            src: "198.51.100.2".parse().unwrap(),
            dst: sa("203.0.113.1:50000"),
            nat_to: Some(sa("10.0.0.2:50000")),
            created: Timestamp::from_secs(90),
            expires: Timestamp::from_secs(390),
        };
        (start, exp)
    }

    fn file_of(recs: &[Journal]) -> String {
        let mut text = format!("{MAGIC} boot=B1\n");
        for r in recs {
            encode(r, &mut text);
        }
        text
    }

    #[test]
    fn a_byte_that_is_not_utf8_ends_the_valid_journal_like_a_corrupt_line() {
        let (start, exp) = masq_session(7);
        let mut bytes = file_of(&[start]).into_bytes();
        let good = bytes.len();
        bytes.extend_from_slice(b"0badf00d \xff\xfe\n");
        let mut tail = String::new();
        encode(&Journal::ExpectAdd { exp }, &mut tail);
        bytes.extend_from_slice(tail.as_bytes());
        let mut e = Engine::new(Config::default());
        let r = load_bytes(&bytes, "B1", &mut e, Timestamp::from_secs(100));
        assert_eq!((r.records, r.corrupt_at, r.torn_tail), (1, Some(3), false));
        assert_eq!(
            (r.sessions, r.expectations),
            (1, 0),
            "nothing after the bad byte"
        );
        // a bad byte in the header: no valid header, the file is ignored
        let r = load_bytes(b"ftpct-\xc3state 1 boot=B1\n", "B1", &mut e, Timestamp(0));
        assert!(r.stale);
        // through the file: read, then rewritten as a fresh, valid snapshot
        let path = scratch("utf8");
        std::fs::write(&path, &bytes).unwrap();
        let boot = boot_id();
        let text =
            String::from_utf8_lossy(&bytes[..good]).replace("boot=B1", &format!("boot={boot}"));
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        std::fs::write(&path, &bytes).unwrap();
        let mut e = Engine::new(Config::default());
        let (sf, r) = StateFile::open(&path, &mut e, Timestamp::from_secs(100)).unwrap();
        assert_eq!((r.sessions, r.corrupt_at), (1, Some(3)), "{r:?}");
        drop(sf);
        let fresh = std::fs::read(&path).unwrap();
        let valid = fresh.split(|b| *b == 0).next().unwrap();
        assert!(
            std::str::from_utf8(valid).is_ok(),
            "the new file is text again"
        );
        let mut again = Engine::new(Config::default());
        let (_sf, r) = StateFile::open(&path, &mut again, Timestamp::from_secs(100)).unwrap();
        assert_eq!((r.sessions, r.corrupt_at), (1, None), "{r:?}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn restored_records_are_checked_against_the_engines_rules() {
        let now = Timestamp::from_secs(100);
        let (start, exp) = masq_session(7);
        let bad_exps = [
            // the audit's record: any source, a privileged private port, never expiring
            (
                Expectation {
                    src: "0.0.0.0".parse().unwrap(),
                    nat_to: Some(sa("10.0.0.99:22")),
                    expires: Timestamp(u64::MAX),
                    ..exp
                },
                "expect_address",
            ),
            (
                Expectation {
                    nat_to: Some(sa("10.0.0.2:22")),
                    dst: sa("203.0.113.1:22"),
                    ..exp
                },
                "expect_policy",
            ),
            (
                Expectation {
                    nat_to: Some(sa("10.0.0.99:50000")),
                    ..exp
                },
                "expect_policy",
            ),
            (
                Expectation {
                    dst: sa("198.51.100.9:50000"),
                    ..exp
                },
                "expect_address",
            ),
            (
                Expectation {
                    expires: Timestamp(u64::MAX),
                    ..exp
                },
                "expect_timeout",
            ),
            (
                Expectation {
                    master: SessionId(8),
                    ..exp
                },
                "no_session",
            ),
        ];
        let mut recs = vec![start];
        recs.extend(bad_exps.iter().map(|(e, _)| Journal::ExpectAdd { exp: *e }));
        recs.push(Journal::ExpectAdd { exp });
        let mut e = Engine::new(Config::default());
        let r = load_text(&file_of(&recs), "B1", &mut e, now);
        assert_eq!(r.refused, bad_exps.len(), "{r:#?}");
        let labels: Vec<_> = r.refusals.iter().map(|x| x.first.label()).collect();
        assert_eq!(
            labels,
            [
                "expect_address",
                "expect_policy",
                "expect_timeout",
                "no_session"
            ]
        );
        assert_eq!(r.refusals[0].line, 3);
        assert_eq!(r.refusals[0].count, 2);
        assert_eq!(r.expectations, 1, "only the real one");
        assert_eq!(e.expectations().iter().next().unwrap().1, &exp);

        // sessions: id range, ports, tuples, duplicates, time, max_sessions
        let ct_of = |j: &Journal| match j {
            Journal::SessionStart { ct, .. } => *ct,
            _ => unreachable!(),
        };
        let ct = ct_of(&start);
        let other = |port: u16| CtTuples {
            original: FlowTuple::new(SocketAddr::new(ct.original.src.ip(), port), ct.original.dst),
            reply: FlowTuple::new(ct.reply.src, SocketAddr::new(ct.reply.dst.ip(), port)),
        };
        let ssh = CtTuples {
            original: FlowTuple::new(sa("10.0.0.2:40001"), sa("198.51.100.2:22")),
            reply: FlowTuple::new(sa("198.51.100.2:22"), sa("203.0.113.1:61001")),
        };
        let any = CtTuples {
            original: FlowTuple::new(sa("0.0.0.0:40002"), sa("198.51.100.2:21")),
            reply: FlowTuple::new(sa("198.51.100.2:21"), sa("203.0.113.1:61002")),
        };
        let st = |id: u64, ct: CtTuples, created: u64| Journal::SessionStart {
            id: SessionId(id),
            ct,
            created: Timestamp::from_secs(created),
        };
        let recs = [
            st(u64::MAX, other(40010), 10),
            st(0, other(40011), 10),
            st(9, ssh, 10),
            st(10, any, 10),
            st(11, other(40012), 1000),
            start,
            st(7, other(40013), 10),
            st(12, ct, 10),
            st(13, other(40014), 10),
            st(14, other(40015), 10),
        ];
        let mut cfg = Config::default();
        cfg.policy.max_sessions = 2;
        let mut e = Engine::new(cfg);
        let r = load_text(&file_of(&recs), "B1", &mut e, now);
        let labels: Vec<_> = r
            .refusals
            .iter()
            .map(|x| (x.first.label(), x.count))
            .collect();
        assert_eq!(
            labels,
            [
                ("session_id", 2),
                ("not_control", 1),
                ("tuples", 1),
                ("future", 1),
                ("duplicate", 2),
                ("max_sessions", 1),
            ]
        );
        assert_eq!(r.sessions, 2);
        let mut ids: Vec<u64> = e.sessions().map(|s| s.id.0).collect();
        ids.sort();
        assert_eq!(ids, [7, 13]);
        for r in &r.refusals {
            assert!(!r.first.to_string().is_empty());
        }
    }

    #[test]
    fn the_conntrack_id_is_journaled_snapshotted_and_old_files_still_load() {
        let now = Timestamp::from_secs(100);
        let (start, exp) = masq_session(7);
        let mut e = Engine::new(Config::default());
        e.restore(&start, now).unwrap();
        e.set_conntrack_id(SessionId(7), 42);
        assert_eq!(
            e.poll_journal(),
            Some(Journal::ConntrackId {
                id: SessionId(7),
                ct_id: 42
            })
        );
        e.set_conntrack_id(SessionId(7), 42);
        assert_eq!(e.poll_journal(), None, "journaled once");
        e.set_conntrack_id(SessionId(99), 1);
        assert_eq!(e.poll_journal(), None, "no such session");
        let mut recs = Vec::new();
        e.snapshot(&mut recs);
        let mut again = Engine::new(Config::default());
        let r = load_text(&file_of(&recs), "B1", &mut again, now);
        assert_eq!(r.refused, 0);
        assert_eq!(again.sessions().next().unwrap().ct_id, Some(42));
        // a file without the record (written before it existed): no id, still restored
        let mut again = Engine::new(Config::default());
        let r = load_text(
            &file_of(&[start, Journal::ExpectAdd { exp }]),
            "B1",
            &mut again,
            now,
        );
        assert_eq!((r.sessions, r.expectations, r.refused), (1, 1, 0));
        assert_eq!(again.sessions().next().unwrap().ct_id, None);
    }

    #[test]
    fn the_temporary_file_is_never_written_through_a_link_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let path = scratch("tmplink");
        let dir = path.parent().unwrap().to_path_buf();
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me\n").unwrap();
        let tmp = dir.join("s.state.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        // a link at the state file itself is not read, and replaced
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let mut e = Engine::new(Config::default());
        let (mut sf, r) = StateFile::open(&path, &mut e, Timestamp(100)).unwrap();
        assert!(r.not_a_file, "{r:?}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            meta.file_type().is_file(),
            "the link was replaced by a file"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!tmp.exists());
        // a stale temporary file (a FIFO) from a crashed compaction: removed, not opened
        nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        sf.compact(&e).unwrap();
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        assert!(std::fs::symlink_metadata(&tmp).is_err());
        // a FIFO at the state path does not block the start
        drop(sf);
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let (_sf, r) = StateFile::open(&path, &mut e, Timestamp(100)).unwrap();
        assert!(r.not_a_file);
        let _ = std::fs::remove_dir_all(dir);
    }
}
