//! `ftpct replay`: runs the core over a recorded capture (pcap or pcapng) and reports what it
//! would have parsed, rewritten and expected, so a lab user can check the NAT traversal of a
//! recorded FTP session without root, netfilter or a running daemon.
//!
//! # The model
//!
//! A capture is taken on one side of the gateway. With NAT it is the **private side**: the
//! client's side for `--snat PUBLIC_IP` (client behind MASQUERADE), the server's side for
//! `--dnat PUBLIC_IP` (server behind DNAT of the control port). Packets sent by the private host
//! are what the gateway received; packets from the far side are what the gateway delivered,
//! i.e. already translated back. Replay rebuilds, for each packet, what arrived at the gateway:
//! - a control packet from the far side gets the public address back as its destination (same
//!   port) and its acknowledgement number and SACK blocks mapped into the sequence space of the
//!   rewritten stream (the inverse of the engine's post-conntrack fix-up);
//! - a data connection's SYN from the far side to the private host gets the destination of the
//!   expectation that translates to it (`nat_to`).
//!
//! Each packet then goes through [`Hook::PreConntrack`], with synthesized conntrack tuples when
//! the engine asks ([`crate::engine::Conntrack`]): without NAT the untranslated tuples; with
//! `--snat P` `original = client -> server`, `reply = server -> P:client_port`; with `--dnat P`
//! `original = client -> P:server_port`, `reply = server -> client`. With NAT, the packet the
//! engine let through is then translated as the kernel would between the hooks (DNAT of the
//! original direction, de-SNAT of the reply direction) and goes through [`Hook::PostConntrack`],
//! so the counts show the engine's seq/ack fix-ups. The capture's timestamps are the engine's
//! clock; [`Engine::handle_timeout`] runs as time passes.
//!
//! A capture taken on the public side (the client's address is the `--snat` address, or the
//! server's the `--dnat` one) holds the already translated dialog: its sessions are replayed
//! without NAT, with a warning.
//!
//! # Output
//!
//! One record per interesting event, never per packet: capture, session start and end, each FTP
//! message the engine acted on (with the line as sent), each rewrite (with the new line), each
//! expectation created / used / removed and each refusal, then at the end one `seq` record per
//! session (sequence offsets and fix-up counts), the expectations still pending and a summary.
//! Text by default, JSON lines (one object per line with a `type` field) with
//! [`OutputFormat::Json`]. Times are seconds since the first packet of the capture. The output
//! depends only on the capture and the options.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pcap_parser::traits::{PcapNGPacketBlock, PcapReaderIterator};
use pcap_parser::{Block, PcapBlockOwned, PcapError};

use crate::engine::{Action, Config, CtLookup, EndReason, Engine, Event, RemoveReason, Verdict};
use crate::expect::{ExpectId, Expectation};
use crate::packet::{self, Edit, PacketError, TcpPacket};

use crate::driver::{Driver, Kernel};
use crate::engine::{Conntrack, LineRef};
use crate::policy::Policy;
use crate::seqadj::SeqAdj;
use crate::types::{CtTuples, Dir, FlowTuple, Hook, RelatedEntry, SessionId, Timestamp};
use ftpct_core::render::{self, Value};
use ftpct_core::report::{self, NatPlan, Offsets, Record, SeqRecord};

// ---------------------------------------------------------------------------------------------
// Options, summary, errors

/// Output format of [`run`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Human-friendly lines.
    #[default]
    Text,
    /// JSON lines: one object per line, each with a `type` field.
    Json,
}

/// The NAT the gateway applied to the recorded control connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nat {
    /// No NAT: the engine only parses and expects.
    #[default]
    None,
    /// The client is behind MASQUERADE / SNAT to this address (capture on the client side).
    Snat(IpAddr),
    /// The server is behind DNAT from this address (capture on the server side).
    Dnat(IpAddr),
}

/// What [`run`] replays and how it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// The capture; `-` reads standard input.
    pub file: PathBuf,
    pub format: OutputFormat,
    pub nat: Nat,
    /// TCP ports of FTP control connections (server side). Default: 21.
    pub ports: Vec<u16>,
    /// The engine's policy (defaults, or a configuration file's).
    pub policy: Policy,
}

impl ReplayOptions {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        ReplayOptions {
            file: file.into(),
            format: OutputFormat::Text,
            nat: Nat::None,
            ports: vec![21],
            policy: Policy::default(),
        }
    }
}

pub use ftpct_core::report::{CaptureFormat, Summary};

/// Why a replay failed. A capture that breaks off in the middle still produces the records of
/// the packets before the break, the end-of-capture records and the summary, then this error.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("invalid options: {0}")]
    Options(String),
    #[error("the capture is empty")]
    Empty,
    #[error("not a pcap or pcapng capture (unrecognised file header)")]
    NotACapture,
    #[error("the capture ends inside its file header ({0} bytes)")]
    ShortHeader(u64),
    #[error("the capture is truncated: the record at byte {offset} is incomplete ({packets} packets read before it)")]
    Truncated { offset: u64, packets: u64 },
    #[error(
        "the capture is corrupt at byte {offset} ({packets} packets read before it): {detail}"
    )]
    Corrupt {
        offset: u64,
        packets: u64,
        detail: String,
    },
    #[error("cannot read the capture: {0}")]
    Read(String),
    #[error("cannot write the output: {0}")]
    Write(#[from] io::Error),
}

/// Replays the capture `opts.file` (`-`: standard input) and writes the report to `out`.
///
/// Link types: Ethernet (with 802.1Q / 802.1ad tags), Linux cooked capture v1 and v2 (what
/// `tcpdump -i any` writes), raw IP (`DLT_RAW`, `LINKTYPE_IPV4`, `LINKTYPE_IPV6`) and BSD
/// loopback. Frames of other link types, non-IP, non-TCP, fragmented and malformed frames are
/// skipped and counted.
pub fn run(opts: &ReplayOptions, out: &mut dyn Write) -> Result<Summary, ReplayError> {
    if opts.file.as_os_str() == "-" {
        return replay(io::stdin(), opts, out);
    }
    let f = File::open(&opts.file).map_err(|source| ReplayError::Open {
        path: opts.file.clone(),
        source,
    })?;
    replay(f, opts, out)
}

/// Like [`run`], reading the capture from `input` (`opts.file` is not used).
pub fn replay<R: Read + Send>(
    input: R,
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<Summary, ReplayError> {
    if opts.ports.is_empty() || opts.ports.contains(&0) {
        return Err(ReplayError::Options(
            "control ports must be a non-empty list of ports 1-65535".into(),
        ));
    }
    let mut cap = CaptureReader::open(input)?;
    let mut r = Replayer::new(opts, out, cap.format);
    r.start()?;
    let mut frame = Vec::with_capacity(2048);
    let failure = loop {
        match cap.next(&mut frame) {
            Ok(Some(meta)) => r.frame(meta, &frame)?,
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if let Some(e) = &failure {
        r.warning(None, &e.to_string())?;
    }
    r.finish(failure.is_none())?;
    r.out.flush()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(r.sum),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading pcap / pcapng

/// Largest record accepted (the reader's buffer grows up to this).
const MAX_RECORD: usize = 64 << 20;
const INITIAL_BUFFER: usize = 1 << 18;

/// Reads until `buf` is full or the input ends (pcap-parser expects a read to return all it
/// asked for unless at the end), and keeps the text of an I/O error for the report.
struct FullRead<R> {
    inner: R,
    error: Arc<Mutex<Option<String>>>,
}

impl<R: Read> Read for FullRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if let Ok(mut slot) = self.error.lock() {
                        *slot = Some(e.to_string());
                    }
                    return Err(e);
                }
            }
        }
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug)]
struct Iface {
    linktype: i32,
    /// Timestamp units per second.
    resolution: u64,
    /// Seconds added to every timestamp.
    offset: i64,
}

/// One packet record.
#[derive(Clone, Copy, Debug)]
struct FrameMeta {
    ts_ns: u64,
    linktype: i32,
}

struct CaptureReader<'r> {
    inner: Box<dyn PcapReaderIterator + Send + 'r>,
    format: CaptureFormat,
    read_error: Arc<Mutex<Option<String>>>,
    /// Legacy pcap: link type and whether timestamps are in nanoseconds.
    legacy: Option<(i32, bool)>,
    /// pcapng: interfaces of the current section.
    ifaces: Vec<Iface>,
    last_ts: u64,
    packets: u64,
    capacity: usize,
}

fn ts_to_ns(secs: i128, frac: u128, resolution: u64) -> u64 {
    let res = u128::from(resolution.max(1));
    let ns = secs.saturating_mul(1_000_000_000) + (frac * 1_000_000_000 / res) as i128;
    u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
}

impl<'r> CaptureReader<'r> {
    fn open<R: Read + Send + 'r>(input: R) -> Result<Self, ReplayError> {
        let read_error = Arc::new(Mutex::new(None));
        let mut input = FullRead {
            inner: input,
            error: read_error.clone(),
        };
        // Look at the magic number ourselves for a clear error, then let pcap-parser read.
        let mut head = [0u8; 4];
        let n = input
            .read(&mut head)
            .map_err(|e| ReplayError::Read(e.to_string()))?;
        if n == 0 {
            return Err(ReplayError::Empty);
        }
        const MAGICS: [([u8; 4], CaptureFormat); 7] = [
            ([0x0a, 0x0d, 0x0d, 0x0a], CaptureFormat::PcapNg),
            ([0xd4, 0xc3, 0xb2, 0xa1], CaptureFormat::Pcap),
            ([0xa1, 0xb2, 0xc3, 0xd4], CaptureFormat::Pcap),
            ([0x4d, 0x3c, 0xb2, 0xa1], CaptureFormat::Pcap),
            ([0xa1, 0xb2, 0x3c, 0x4d], CaptureFormat::Pcap),
            ([0x34, 0xcd, 0xb2, 0xa1], CaptureFormat::Pcap),
            ([0xa1, 0xb2, 0xcd, 0x34], CaptureFormat::Pcap),
        ];
        let format = match MAGICS.iter().find(|(m, _)| m[..n] == head[..n]) {
            Some((_, _)) if n < 4 => return Err(ReplayError::ShortHeader(n as u64)),
            Some((_, f)) => *f,
            None => return Err(ReplayError::NotACapture),
        };
        let chained = io::Cursor::new(head[..n].to_vec()).chain(input);
        let chained = FullRead {
            inner: chained,
            error: read_error.clone(),
        };
        let inner = pcap_parser::create_reader(INITIAL_BUFFER, chained).map_err(|e| match e {
            PcapError::Eof => ReplayError::Empty,
            PcapError::Incomplete(_) | PcapError::UnexpectedEof => {
                ReplayError::ShortHeader(n as u64)
            }
            PcapError::ReadError => ReplayError::Read(
                read_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "read error".into()),
            ),
            PcapError::HeaderNotRecognized => ReplayError::Corrupt {
                offset: 0,
                packets: 0,
                detail: format!("invalid {} file header", format.label()),
            },
            other => ReplayError::Corrupt {
                offset: 0,
                packets: 0,
                detail: format!("invalid {} file header ({other:?})", format.label()),
            },
        })?;
        Ok(CaptureReader {
            inner,
            format,
            read_error,
            legacy: None,
            ifaces: Vec::new(),
            last_ts: 0,
            packets: 0,
            capacity: INITIAL_BUFFER,
        })
    }

    fn offset(&self) -> u64 {
        self.inner.consumed() as u64
    }

    fn corrupt(&self, detail: impl Into<String>) -> ReplayError {
        ReplayError::Corrupt {
            offset: self.offset(),
            packets: self.packets,
            detail: detail.into(),
        }
    }

    /// The next packet record: its bytes into `frame`. `None` at the end of the capture.
    fn next(&mut self, frame: &mut Vec<u8>) -> Result<Option<FrameMeta>, ReplayError> {
        loop {
            let offset = self.offset();
            let packets = self.packets;
            let (len, meta) = match self.inner.next() {
                Ok((len, block)) => {
                    let meta = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            self.legacy = Some((h.network.0, h.is_nanosecond_precision()));
                            None
                        }
                        PcapBlockOwned::Legacy(b) => {
                            let (linktype, nanos) = self.legacy.unwrap_or((1, false));
                            let frac_res = if nanos { 1_000_000_000 } else { 1_000_000 };
                            let ts =
                                ts_to_ns(i128::from(b.ts_sec), u128::from(b.ts_usec), frac_res);
                            frame.clear();
                            frame.extend_from_slice(b.data);
                            Some(Ok(FrameMeta {
                                ts_ns: ts,
                                linktype,
                            }))
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            self.ifaces.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            self.ifaces.push(Iface {
                                linktype: idb.linktype.0,
                                resolution: idb.ts_resolution().unwrap_or(1_000_000),
                                offset: idb.ts_offset(),
                            });
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            match self.ifaces.get(epb.if_id as usize).copied() {
                                Some(i) => {
                                    let ts =
                                        (u128::from(epb.ts_high) << 32) | u128::from(epb.ts_low);
                                    let res = u128::from(i.resolution.max(1));
                                    let secs = (ts / res) as i128 + i128::from(i.offset);
                                    let ts = ts_to_ns(secs, ts % res, i.resolution);
                                    frame.clear();
                                    frame.extend_from_slice(epb.packet_data());
                                    Some(Ok(FrameMeta {
                                        ts_ns: ts,
                                        linktype: i.linktype,
                                    }))
                                }
                                None => Some(Err(format!(
                                    "packet block for interface {} which was not described",
                                    epb.if_id
                                ))),
                            }
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                            match self.ifaces.first().copied() {
                                Some(i) => {
                                    frame.clear();
                                    frame.extend_from_slice(spb.packet_data());
                                    Some(Ok(FrameMeta {
                                        ts_ns: self.last_ts,
                                        linktype: i.linktype,
                                    }))
                                }
                                None => Some(Err(
                                    "simple packet block before any interface description".into(),
                                )),
                            }
                        }
                        PcapBlockOwned::NG(_) => None,
                    };
                    (len, meta)
                }
                Err(PcapError::Eof) => return Ok(None),
                Err(PcapError::Incomplete(_)) => {
                    self.refill()?;
                    continue;
                }
                Err(PcapError::BufferTooSmall) => {
                    if self.capacity >= MAX_RECORD {
                        return Err(self
                            .corrupt(format!("a record is larger than {} MiB", MAX_RECORD >> 20)));
                    }
                    self.capacity *= 2;
                    if !self.inner.grow(self.capacity) {
                        return Err(self.corrupt("cannot grow the read buffer"));
                    }
                    self.refill()?;
                    continue;
                }
                Err(PcapError::UnexpectedEof) => {
                    return Err(ReplayError::Truncated { offset, packets })
                }
                Err(PcapError::ReadError) => return Err(self.read_failed()),
                Err(PcapError::NomError(_, kind)) | Err(PcapError::OwnedNomError(_, kind)) => {
                    return Err(ReplayError::Corrupt {
                        offset,
                        packets,
                        detail: format!("invalid block or record ({kind:?})"),
                    })
                }
                Err(PcapError::HeaderNotRecognized) => {
                    return Err(ReplayError::Corrupt {
                        offset,
                        packets,
                        detail: "unrecognised block".into(),
                    })
                }
            };
            self.inner.consume(len);
            match meta {
                None => continue,
                Some(Ok(m)) => {
                    self.packets += 1;
                    self.last_ts = m.ts_ns;
                    return Ok(Some(m));
                }
                Some(Err(detail)) => {
                    return Err(ReplayError::Corrupt {
                        offset,
                        packets,
                        detail,
                    })
                }
            }
        }
    }

    fn refill(&mut self) -> Result<(), ReplayError> {
        match self.inner.refill() {
            Ok(()) => Ok(()),
            Err(_) => Err(self.read_failed()),
        }
    }

    fn read_failed(&self) -> ReplayError {
        ReplayError::Read(
            self.read_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_else(|| "read error".into()),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Link layer

enum Link<'a> {
    Ip(&'a [u8]),
    Unsupported,
    NotIp,
    Malformed,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|x| u16::from_be_bytes([x[0], x[1]]))
}

/// An IP packet by its version nibble.
fn ip_by_version(b: &[u8]) -> Link<'_> {
    match b.first().map(|v| v >> 4) {
        Some(4) | Some(6) => Link::Ip(b),
        Some(_) => Link::NotIp,
        None => Link::Malformed,
    }
}

fn ip_by_ethertype(ethertype: u16, rest: &[u8]) -> Link<'_> {
    match ethertype {
        0x0800 | 0x86dd => ip_by_version(rest),
        _ => Link::NotIp,
    }
}

/// Strips the link layer down to the IP header.
fn strip_link(linktype: i32, frame: &[u8]) -> Link<'_> {
    match linktype & 0xffff {
        // Ethernet, with up to three VLAN tags.
        1 => {
            let mut at = 12;
            for _ in 0..4 {
                let Some(et) = be16(frame, at) else {
                    return Link::Malformed;
                };
                match et {
                    0x8100 | 0x88a8 | 0x9100 => at += 4,
                    _ => {
                        return match frame.get(at + 2..) {
                            Some(rest) => ip_by_ethertype(et, rest),
                            None => Link::Malformed,
                        }
                    }
                }
            }
            Link::NotIp
        }
        // Linux cooked capture v1: protocol at 14, header 16 bytes.
        113 => match (be16(frame, 14), frame.get(16..)) {
            (Some(p), Some(rest)) => ip_by_ethertype(p, rest),
            _ => Link::Malformed,
        },
        // Linux cooked capture v2: protocol at 0, header 20 bytes.
        276 => match (be16(frame, 0), frame.get(20..)) {
            (Some(p), Some(rest)) => ip_by_ethertype(p, rest),
            _ => Link::Malformed,
        },
        // Raw IP: LINKTYPE_RAW, DLT_RAW (12, 14 on some systems), LINKTYPE_IPV4, LINKTYPE_IPV6.
        101 | 12 | 14 | 228 | 229 => ip_by_version(frame),
        // BSD loopback / OpenBSD loop: a 4-byte address family.
        0 | 108 => match frame.get(4..) {
            Some(rest) => ip_by_version(rest),
            None => Link::Malformed,
        },
        _ => Link::Unsupported,
    }
}

/// Drops link-layer padding after the IP packet.
fn trim_ip(ip: &[u8]) -> &[u8] {
    let len = match ip.first().map(|v| v >> 4) {
        Some(4) => be16(ip, 2).map(usize::from),
        Some(6) => match be16(ip, 4) {
            Some(0) | None => None, // jumbogram or short: leave as is
            Some(p) => Some(40 + usize::from(p)),
        },
        _ => None,
    };
    match len {
        Some(l) if l <= ip.len() && l > 0 => &ip[..l],
        _ => ip,
    }
}

/// Rewrites the source and/or destination address of an IP packet in place (no checksums).
fn set_addrs(ip: &mut [u8], src: Option<IpAddr>, dst: Option<IpAddr>) -> bool {
    let v6 = ip.first().map(|v| v >> 4) == Some(6);
    for (addr, v4_at, v6_at) in [(src, 12, 8), (dst, 16, 24)] {
        let Some(a) = addr else { continue };
        match (a, v6) {
            (IpAddr::V4(a), false) => match ip.get_mut(v4_at..v4_at + 4) {
                Some(b) => b.copy_from_slice(&a.octets()),
                None => return false,
            },
            (IpAddr::V6(a), true) => match ip.get_mut(v6_at..v6_at + 16) {
                Some(b) => b.copy_from_slice(&a.octets()),
                None => return false,
            },
            _ => return false,
        }
    }
    true
}

/// Sets the TCP ports of a packet in place (no checksums).
fn set_ports(ip: &mut [u8], tcp_off: usize, src: Option<u16>, dst: Option<u16>) -> bool {
    for (p, at) in [(src, tcp_off), (dst, tcp_off + 2)] {
        let Some(p) = p else { continue };
        match ip.get_mut(at..at + 2) {
            Some(b) => b.copy_from_slice(&p.to_be_bytes()),
            None => return false,
        }
    }
    true
}

// ---------------------------------------------------------------------------------------------
// The line behind a message (from the engine's event)

/// A message's line, as the engine's event names it ([`Engine::event_line`]).
#[derive(Clone, Debug, Default)]
struct Line {
    /// Sequence number of the line's first byte (sender's space).
    start: u32,
    text: Vec<u8>,
}

/// The line after a rewrite: the engine's replacement record applied to the original line.
fn rewritten_line(line: &Line, adj: &SeqAdj) -> Option<Vec<u8>> {
    let len = line.text.len() as u32;
    let rec = adj.records().find(|r| {
        let rel = r.pos.wrapping_sub(line.start);
        rel < len && rel.saturating_add(r.old_len) <= len
    })?;
    let a = rec.pos.wrapping_sub(line.start) as usize;
    let b = a + rec.old_len as usize;
    let mut out = Vec::with_capacity(line.text.len() + 8);
    out.extend_from_slice(line.text.get(..a)?);
    out.extend_from_slice(rec.new_bytes());
    out.extend_from_slice(line.text.get(b..)?);
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Annotations

/// What replay adds to an event's record (after the event's own fields): the line behind a
/// message, the rewritten line, the NAT of the related entry the simulated kernel made.
#[derive(Debug)]
enum Extra {
    /// A line (`None`: not seen), lossy UTF-8.
    Line(&'static str, Option<String>),
    /// An IP address (`None`: none).
    Ip(&'static str, Option<IpAddr>),
    /// An address (`None`: none).
    Addr(&'static str, Option<SocketAddr>),
}

impl Extra {
    fn line(key: &'static str, l: Option<&[u8]>) -> Extra {
        Extra::Line(key, l.map(|b| String::from_utf8_lossy(b).into_owned()))
    }

    fn value(&self) -> render::Extra<'_> {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> Value<'_> {
            match v {
                Some(v) => Value::Display(v),
                None => Value::None,
            }
        }
        match self {
            Extra::Line(k, Some(l)) => (k, Value::Str(l)),
            Extra::Line(k, None) => (k, Value::None),
            Extra::Ip(k, a) => (k, opt(a)),
            Extra::Addr(k, a) => (k, opt(a)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The replay

/// How one control connection was translated by the gateway, as replay models it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    None,
    Snat(IpAddr),
    Dnat(IpAddr),
    /// NAT was asked for but the capture shows the public side, or another address family.
    Untranslatable(&'static str),
}

/// Captured endpoints of a control connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    client: SocketAddr,
    server: SocketAddr,
}

/// A direction's sequence offset after its rewrites, and how many rewrite records it has.
fn offsets_of(adj: &SeqAdj) -> Offsets {
    Offsets {
        after: adj.offset_after(),
        rewrites: adj.records().count(),
    }
}

/// What replay keeps per engine session.
#[derive(Debug)]
struct SessInfo {
    ct: CtTuples,
    /// The sequence offsets per direction, as the engine's session had them at its last
    /// rewrite (and at the end of the capture): reported at the end, also for ended sessions.
    offsets: [Offsets; 2],
    seq_adjusted: u64,
    ack_adjusted: u64,
    dropped: u64,
    end: Option<EndReason>,
    /// Last message line per direction (for the rewrite's new line and refusals).
    last_line: [Option<Line>; 2],
}

/// The simulated kernel replay runs the daemon's [`Driver`] over: its conntrack holds the
/// entry of the control connection as replay's NAT plan makes it, and its RELATED entries are
/// collected (in order, paired with the engine's `ExpectUsed` events); marks, set elements and
/// the journal have no effect on what replay shows.
struct SimKernel {
    entry: CtLookup,
    related: VecDeque<RelatedEntry>,
}

impl SimKernel {
    fn new(entry: CtLookup) -> SimKernel {
        SimKernel {
            entry,
            related: VecDeque::new(),
        }
    }
}

impl Conntrack for SimKernel {
    fn lookup(&mut self, _: &FlowTuple, _: bool) -> CtLookup {
        self.entry
    }
}

impl Kernel for SimKernel {
    fn run(&mut self, a: Action) {
        if let Action::CreateRelated(e) = a {
            self.related.push_back(e);
        }
    }
    fn persist(&mut self, engine: &mut Engine) {
        while engine.poll_journal().is_some() {}
    }
}

/// A warning an event calls for: its session and sentence.
type Warning = Option<(SessionId, &'static str)>;

struct PacketCtx {
    /// Related entries the engine asked for, in order (paired with `ExpectUsed`).
    related: VecDeque<RelatedEntry>,
}

/// The simulated kernel's NAT: which connections are control connections (the ports), how
/// the gateway translated each (the `--snat`/`--dnat` plan: the conntrack entry
/// [`SimKernel`] answers with), what the gateway received of a captured packet, and the
/// destination rewrite between the hooks. It reads the engine's state (a session's sequence
/// map, the live expectations) where the kernel would have its own.
struct SimNat {
    nat: Nat,
    ports: Vec<u16>,
    tmp: Vec<u8>,
}

impl SimNat {
    /// Client and server of a control connection, and whether the packet is from the client.
    fn classify(&self, t: FlowTuple) -> Option<(Conn, bool)> {
        if self.ports.contains(&t.dst.port()) {
            Some((
                Conn {
                    client: t.src,
                    server: t.dst,
                },
                true,
            ))
        } else if self.ports.contains(&t.src.port()) {
            Some((
                Conn {
                    client: t.dst,
                    server: t.src,
                },
                false,
            ))
        } else {
            None
        }
    }

    fn plan(&self, c: Conn) -> Plan {
        match self.nat {
            Nat::None => Plan::None,
            Nat::Snat(p) => {
                if p.is_ipv4() != c.client.is_ipv4() {
                    Plan::Untranslatable("the --snat address is of another family than the session")
                } else if c.client.ip() == p {
                    Plan::Untranslatable(
                        "the client already has the --snat address: the capture shows the public side, replayed without NAT",
                    )
                } else {
                    Plan::Snat(p)
                }
            }
            Nat::Dnat(p) => {
                if p.is_ipv4() != c.server.is_ipv4() {
                    Plan::Untranslatable("the --dnat address is of another family than the session")
                } else if c.server.ip() == p {
                    Plan::Untranslatable(
                        "the server already has the --dnat address: the capture shows the public side, replayed without NAT",
                    )
                } else {
                    Plan::Dnat(p)
                }
            }
        }
    }

    fn tuples(c: Conn, plan: Plan) -> CtTuples {
        let original = FlowTuple::new(c.client, c.server);
        match plan {
            Plan::Snat(p) => CtTuples {
                original,
                reply: FlowTuple::new(c.server, SocketAddr::new(p, c.client.port())),
            },
            Plan::Dnat(p) => CtTuples {
                original: FlowTuple::new(c.client, SocketAddr::new(p, c.server.port())),
                reply: FlowTuple::new(c.server, c.client),
            },
            Plan::None | Plan::Untranslatable(_) => CtTuples::untranslated(original),
        }
    }

    /// Rebuilds in `gw` the packet as it arrived at the gateway from the captured one.
    fn gateway_input(
        &mut self,
        engine: &Engine,
        cap: &TcpPacket<'_>,
        ctl: Option<(Conn, bool)>,
        gw: &mut Vec<u8>,
    ) {
        gw.clear();
        gw.extend_from_slice(cap.bytes);
        match ctl {
            Some((c, from_client)) => {
                let plan = self.plan(c);
                // The far side's packets were translated back by the gateway.
                let (far, private_dir, public) = match plan {
                    Plan::Snat(p) => (!from_client, Dir::Original, p),
                    Plan::Dnat(p) => (from_client, Dir::Reply, p),
                    Plan::None | Plan::Untranslatable(_) => return,
                };
                if !far {
                    return;
                }
                if !set_addrs(gw, None, Some(public)) {
                    return;
                }
                let ct = Self::tuples(c, plan);
                let tuple = if from_client { ct.original } else { ct.reply };
                let adj = engine
                    .session_of(tuple, Hook::PreConntrack)
                    .and_then(|(sid, _)| engine.session(sid))
                    .map(|s| &s.dir(private_dir).seqadj);
                let Ok(p) = TcpPacket::parse(gw) else {
                    return;
                };
                let identity = SeqAdj::new();
                let adj = adj.unwrap_or(&identity);
                let ack = if p.flags.ack { adj.map(p.ack) } else { p.ack };
                let map = |x: u32| adj.map(x);
                let edit = Edit {
                    seq: p.seq,
                    ack,
                    payload: None,
                    sack: Some(&map),
                    clear_fin: false,
                };
                let mut tmp = std::mem::take(&mut self.tmp);
                if packet::build(&p, &edit, &mut tmp).is_ok() {
                    std::mem::swap(gw, &mut tmp);
                }
                self.tmp = tmp;
            }
            None => {
                // A data connection's SYN from the far side to the private host: the gateway
                // saw it addressed to the expectation's public destination.
                if self.nat == Nat::None || !cap.flags.syn || cap.flags.ack {
                    return;
                }
                let Some((_, exp)) = engine.expectations().iter().find(|(_, e)| {
                    e.nat_to == Some(cap.tuple.dst)
                        && (e.src.is_unspecified() || e.src == cap.tuple.src.ip())
                }) else {
                    return;
                };
                let dst = exp.dst;
                if set_addrs(gw, None, Some(dst.ip()))
                    && set_ports(gw, cap.tcp_off, None, Some(dst.port()))
                {
                    self.rechecksum(gw);
                }
            }
        }
    }

    /// Recomputes the checksums of `buf` (after an address or port change).
    fn rechecksum(&mut self, buf: &mut Vec<u8>) {
        let Ok(p) = TcpPacket::parse(buf) else {
            return;
        };
        let edit = Edit {
            seq: p.seq,
            ack: p.ack,
            payload: None,
            sack: None,
            clear_fin: false,
        };
        let mut tmp = std::mem::take(&mut self.tmp);
        if packet::build(&p, &edit, &mut tmp).is_ok() {
            std::mem::swap(buf, &mut tmp);
        }
        self.tmp = tmp;
    }

    /// What conntrack does between the hooks to a packet of a session with tuples `ct` that
    /// arrived as `gw_tuple`: DNAT (original) or de-SNAT (reply) of its destination, in `mid`.
    /// False when the packet is of neither direction or cannot be rewritten.
    fn between_hooks(&mut self, ct: CtTuples, gw_tuple: FlowTuple, mid: &mut Vec<u8>) -> bool {
        let new_dst = if gw_tuple == ct.original {
            ct.reply.src
        } else if gw_tuple == ct.reply {
            ct.original.src
        } else {
            return false;
        };
        let Ok(p) = TcpPacket::parse(mid) else {
            return false;
        };
        let tcp_off = p.tcp_off;
        if !set_addrs(mid, None, Some(new_dst.ip()))
            || !set_ports(mid, tcp_off, None, Some(new_dst.port()))
        {
            return false;
        }
        self.rechecksum(mid);
        true
    }

    /// The conntrack entry of a packet's control connection (`ctl`): its tuples as the NAT
    /// plan makes them; none for other packets.
    fn entry(&self, ctl: Option<(Conn, bool)>) -> CtLookup {
        match ctl {
            Some((c, _)) => CtLookup::Found {
                tuples: Self::tuples(c, self.plan(c)),
                id: None,
            },
            None => CtLookup::Missing,
        }
    }
}

struct Replayer<'o> {
    out: &'o mut dyn Write,
    json: bool,
    /// The simulated kernel's NAT model.
    sim: SimNat,
    engine: Engine,
    /// The daemon's per-packet sequence (`driver.rs`), over [`SimKernel`].
    driver: Driver,
    t0: Option<u64>,
    now: Timestamp,
    sum: Summary,
    sessions: BTreeMap<SessionId, SessInfo>,
    /// Our numbers for the engine's expectation ids (E1, E2, ... in creation order).
    expect_no: HashMap<ExpectId, u64>,
    next_expect: u64,
    gw_buf: Vec<u8>,
    mid_buf: Vec<u8>,
}

impl<'o> Replayer<'o> {
    fn new(opts: &ReplayOptions, out: &'o mut dyn Write, format: CaptureFormat) -> Self {
        let cfg = Config {
            control_ports: opts.ports.clone(),
            policy: opts.policy.clone(),
            hash_key: [0, 0],
        };
        Replayer {
            out,
            json: opts.format == OutputFormat::Json,
            sim: SimNat {
                nat: opts.nat,
                ports: opts.ports.clone(),
                tmp: Vec::with_capacity(2048),
            },
            engine: {
                let mut e = Engine::new(cfg);
                // the report shows the line behind each message
                e.keep_event_lines(true);
                e
            },
            driver: Driver::new(),
            t0: None,
            now: Timestamp::ZERO,
            sum: Summary {
                format,
                ..Summary::default()
            },
            sessions: BTreeMap::new(),
            expect_no: HashMap::new(),
            next_expect: 1,
            gw_buf: Vec::with_capacity(2048),
            mid_buf: Vec::with_capacity(2048),
        }
    }

    fn line(&mut self, s: &str) -> io::Result<()> {
        self.out.write_all(s.as_bytes())?;
        self.out.write_all(b"\n")
    }

    /// Seconds since the first packet, microsecond precision.
    fn t(&self) -> String {
        let d = self.now.0.saturating_sub(self.t0.unwrap_or(self.now.0));
        format!("{}.{:06}", d / 1_000_000_000, (d % 1_000_000_000) / 1000)
    }

    /// Writes a record of the report that is not an event (the core's `report`).
    fn record(&mut self, r: Record<'_>) -> io::Result<()> {
        let s = report::render(&r, self.json);
        self.line(&s)
    }

    fn start(&mut self) -> io::Result<()> {
        let (label, public) = match self.sim.nat {
            Nat::None => ("none", None),
            Nat::Snat(ip) => ("snat", Some(ip)),
            Nat::Dnat(ip) => ("dnat", Some(ip)),
        };
        let ports = self.sim.ports.clone();
        self.record(Record::Capture {
            format: self.sum.format,
            nat: NatPlan { label, public },
            ports: &ports,
        })
    }

    fn warning(&mut self, session: Option<SessionId>, message: &str) -> io::Result<()> {
        let t = self.t();
        self.record(Record::Warning {
            t: &t,
            session,
            message,
        })
    }

    fn frame(&mut self, meta: FrameMeta, frame: &[u8]) -> io::Result<()> {
        self.sum.packets_read += 1;
        if self.t0.is_none() {
            self.t0 = Some(meta.ts_ns);
        }
        // Time never runs backwards for the engine (captures from several interfaces can be
        // slightly out of order).
        self.now = self.now.max(Timestamp(meta.ts_ns));
        let ip = match strip_link(meta.linktype, frame) {
            Link::Ip(ip) => trim_ip(ip),
            Link::Unsupported => {
                if self.sum.skipped_link == 0 {
                    let lt = meta.linktype;
                    self.warning(
                        None,
                        &format!("link type {lt} is not supported; its frames are skipped"),
                    )?;
                }
                self.sum.skipped_link += 1;
                return Ok(());
            }
            Link::NotIp => {
                self.sum.skipped_non_ip += 1;
                return Ok(());
            }
            Link::Malformed => {
                self.sum.skipped_malformed += 1;
                return Ok(());
            }
        };
        match TcpPacket::parse(ip) {
            Ok(_) => {}
            Err(PacketError::NotTcp) => {
                self.sum.skipped_non_tcp += 1;
                return Ok(());
            }
            Err(PacketError::Fragment) => {
                self.sum.skipped_fragment += 1;
                return Ok(());
            }
            Err(_) => {
                self.sum.skipped_malformed += 1;
                return Ok(());
            }
        }
        self.timeouts()?;
        self.packet(ip)
    }

    fn timeouts(&mut self) -> io::Result<()> {
        if let Some(t) = self.engine.poll_timeout() {
            if t <= self.now {
                self.engine.handle_timeout(self.now);
                let mut kernel = SimKernel::new(CtLookup::Missing);
                self.driver.run_actions(&mut self.engine, &mut kernel);
                kernel.persist(&mut self.engine);
                let mut ctx = PacketCtx {
                    related: kernel.related,
                };
                self.drain(&mut ctx)?;
            }
        }
        Ok(())
    }

    /// One captured TCP packet (bytes from the IP header on).
    fn packet(&mut self, captured: &[u8]) -> io::Result<()> {
        let Ok(cap) = TcpPacket::parse(captured) else {
            return Ok(());
        };
        let ctl = self.sim.classify(cap.tuple);
        let mut ctx = PacketCtx {
            related: VecDeque::new(),
        };

        // What arrived at the gateway.
        let mut gw = std::mem::take(&mut self.gw_buf);
        self.sim.gateway_input(&self.engine, &cap, ctl, &mut gw);
        let gw_tuple = match TcpPacket::parse(&gw) {
            Ok(p) => p.tuple,
            Err(_) => {
                self.gw_buf = gw;
                return Ok(());
            }
        };

        // Pre-conntrack hook.
        // The simulated kernel's conntrack entry of this control connection: its NAT plan.
        let entry = self.sim.entry(ctl);
        let mut kernel = SimKernel::new(entry);
        let now = self.now;
        let v = self
            .driver
            .decide(&mut self.engine, &mut kernel, &gw, Hook::PreConntrack, now);
        // The verdict: the packet continues as accepted or modified, or not at all.
        let mut mid = std::mem::take(&mut self.mid_buf);
        mid.clear();
        match v {
            Verdict::AcceptModified => mid.extend_from_slice(self.engine.modified_packet()),
            Verdict::Accept => mid.extend_from_slice(&gw),
            Verdict::Drop => {}
        }
        self.driver.after_verdict(&mut kernel);
        ctx.related = kernel.related;
        self.drain(&mut ctx)?;
        let sid = self
            .engine
            .session_of(gw_tuple, Hook::PreConntrack)
            .map(|(sid, _)| sid);
        if let Some(s) = sid.and_then(|sid| self.sessions.get_mut(&sid)) {
            match v {
                Verdict::AcceptModified => s.seq_adjusted += 1,
                Verdict::Drop => s.dropped += 1,
                _ => {}
            }
        }
        match v {
            Verdict::AcceptModified => self.sum.seq_adjusted += 1,
            Verdict::Drop => self.sum.dropped += 1,
            _ => {}
        }

        // Between the hooks: conntrack, then DNAT (original) or de-SNAT (reply) of the
        // destination. Then the post-conntrack hook.
        if self.sim.nat != Nat::None && v != Verdict::Drop {
            if let Some(sid) = sid {
                self.post(sid, gw_tuple, &mut mid)?;
            }
        }
        self.gw_buf = gw;
        self.mid_buf = mid;
        Ok(())
    }

    /// The post-conntrack hook for a packet of session `sid` that passed the pre hook as `mid`.
    fn post(&mut self, sid: SessionId, gw_tuple: FlowTuple, mid: &mut Vec<u8>) -> io::Result<()> {
        let Some(s) = self.sessions.get(&sid) else {
            return Ok(());
        };
        if !self.sim.between_hooks(s.ct, gw_tuple, mid) {
            return Ok(());
        }
        let mut kernel = SimKernel::new(CtLookup::Missing);
        let v = self.driver.decide(
            &mut self.engine,
            &mut kernel,
            mid,
            Hook::PostConntrack,
            self.now,
        );
        self.driver.after_verdict(&mut kernel);
        if v == Verdict::AcceptModified {
            self.sum.ack_adjusted += 1;
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.ack_adjusted += 1;
            }
        }
        let mut ctx = PacketCtx {
            related: kernel.related,
        };
        self.drain(&mut ctx)
    }

    /// Takes the engine's events and reports them (the driver carried out the actions).
    fn drain(&mut self, ctx: &mut PacketCtx) -> io::Result<()> {
        while let Some(e) = self.engine.poll_event() {
            self.event(e, ctx)?;
        }
        Ok(())
    }

    /// The line an event names, copied for the report.
    fn event_line(&self, r: LineRef) -> Option<Line> {
        self.engine.event_line(r).map(|t| Line {
            start: r.pos(),
            text: t.to_vec(),
        })
    }

    /// Takes the offsets of session `sid` from the engine.
    fn refresh_offsets(&mut self, sid: SessionId) {
        if let Some(s) = self.engine.session(sid) {
            let offsets = [
                offsets_of(&s.dir(Dir::Original).seqadj),
                offsets_of(&s.dir(Dir::Reply).seqadj),
            ];
            if let Some(info) = self.sessions.get_mut(&sid) {
                info.offsets = offsets;
            }
        }
    }

    fn last_line(&self, sid: SessionId, dir: Dir) -> Option<&Line> {
        self.sessions
            .get(&sid)
            .and_then(|s| s.last_line[dir.index()].as_ref())
    }

    fn expect_number(&mut self, id: ExpectId) -> u64 {
        if let Some(n) = self.expect_no.get(&id) {
            return *n;
        }
        let n = self.next_expect;
        self.next_expect += 1;
        self.expect_no.insert(id, n);
        n
    }

    /// Replay's number of the expectation of `e` (E1, E2, ... in creation order).
    fn expect_of(&mut self, e: &Event) -> Option<u64> {
        match *e {
            Event::ExpectCreated { id, .. }
            | Event::ExpectUsed { id, .. }
            | Event::ExpectRemoved { id, .. } => Some(self.expect_number(id)),
            _ => None,
        }
    }

    /// One event: replay's bookkeeping, then its record from the core's renderer (text: the
    /// `ftpct events` line; JSON: the event's object) with what only replay knows after the
    /// event's own fields, then the warning the event calls for, if any.
    fn event(&mut self, e: Event, ctx: &mut PacketCtx) -> io::Result<()> {
        let n = self.expect_of(&e);
        let (extras, warning) = self.bookkeep(&e, ctx);
        let extras: Vec<render::Extra<'_>> = extras.iter().map(Extra::value).collect();
        let t = self.t();
        let s = render::replay_record(&e, self.now, &t, n, &extras, self.json);
        self.line(&s)?;
        match warning {
            Some((sid, why)) => self.warning(Some(sid), why),
            None => Ok(()),
        }
    }

    /// What replay keeps of an event (its sessions, their last lines and end, the counts the
    /// engine has no counter for), what it adds to the event's record, and a warning to
    /// print after it.
    fn bookkeep(&mut self, e: &Event, ctx: &mut PacketCtx) -> (Vec<Extra>, Warning) {
        let extras = match *e {
            Event::SessionStart { id, ct } => return (Vec::new(), self.session_started(id, ct)),
            Event::SessionEnd { id, reason, .. } => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.end = Some(reason);
                }
                Vec::new()
            }
            Event::Message { id, kind, line } => {
                let line = self.event_line(line);
                let extra = Extra::line("line", line.as_ref().map(|l| l.text.as_slice()));
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.last_line[render::msg_dir(kind).index()] = line;
                }
                vec![extra]
            }
            Event::ParseFailed { line, .. } => {
                let line = self.event_line(line);
                vec![Extra::line(
                    "line",
                    line.as_ref().map(|l| l.text.as_slice()),
                )]
            }
            Event::Rewritten { id, kind, .. } => self.rewritten(id, render::expect_dir(kind)),
            Event::NotRewritten { .. } => {
                self.sum.not_rewritten += 1;
                Vec::new()
            }
            Event::ExpectUsed { .. } => {
                let rel = ctx.related.pop_front();
                vec![
                    Extra::Ip("nat_src", rel.and_then(|r| r.nat_src)),
                    Extra::Addr("nat_dst", rel.and_then(|r| r.nat_dst)),
                ]
            }
            Event::ExpectRemoved { reason, .. } => {
                if reason != RemoveReason::Expired {
                    self.sum.expect_removed += 1;
                }
                Vec::new()
            }
            Event::Refused { id, kind, .. } => {
                let line = self.last_line(id, render::expect_dir(kind));
                vec![Extra::line("line", line.map(|l| l.text.as_slice()))]
            }
            _ => Vec::new(),
        };
        (extras, None)
    }

    /// A new session: what replay keeps of it; a warning if its NAT cannot be replayed.
    fn session_started(&mut self, id: SessionId, ct: CtTuples) -> Warning {
        // The captured endpoints: the client's is never translated on the private side
        // (snat: it is the private address; dnat: the client is public), the server's is the
        // reply's source (snat: public server; dnat: its private address).
        let plan = self.sim.plan(Conn {
            client: ct.original.src,
            server: ct.reply.src,
        });
        self.sessions.insert(
            id,
            SessInfo {
                ct,
                offsets: [Offsets::default(); 2],
                seq_adjusted: 0,
                ack_adjusted: 0,
                dropped: 0,
                end: None,
                last_line: [None, None],
            },
        );
        match plan {
            Plan::Untranslatable(why) => Some((id, why)),
            _ => None,
        }
    }

    /// A rewrite of a line sent in `dir`: the line before and after it (the engine's rewrite
    /// record applied to the last line of that direction).
    fn rewritten(&mut self, id: SessionId, dir: Dir) -> Vec<Extra> {
        self.refresh_offsets(id);
        let old = self.last_line(id, dir);
        let new = old.and_then(|l| rewritten_line(l, &self.engine.session(id)?.dir(dir).seqadj));
        vec![
            Extra::line("line", old.map(|l| l.text.as_slice())),
            Extra::line("new_line", new.as_deref()),
        ]
    }

    /// End of the capture: per-session sequence offsets, pending expectations, summary.
    fn finish(&mut self, complete: bool) -> io::Result<()> {
        self.take_engine_counts();
        for r in self.seq_records() {
            self.record(Record::Seq(r))?;
        }
        let now = self.now;
        for (n, exp) in self.pending() {
            self.record(Record::Pending { n, exp, now })?;
        }
        let summary = self.sum.clone();
        self.record(Record::Summary {
            summary: &summary,
            complete,
        })
    }

    /// The counts the engine keeps ([`Engine::stats`]), into the summary.
    fn take_engine_counts(&mut self) {
        let st = self.engine.stats();
        let s = &mut self.sum;
        s.sessions = st.sessions_started;
        s.messages = st.messages.iter().sum();
        s.rewrites = st.rewrites;
        s.expect_created = st.expect_created;
        s.expect_used = st.expect_used;
        s.expect_expired = st.expect_expired;
        s.refusals =
            st.refused_bounce + st.refused_privileged + st.refused_other + st.refused_rate_limited;
        s.parse_failures = st.parse_failures;
    }

    /// Every session's offsets and fix-up counts, and its state: `open`, `closing` (FIN both
    /// ways or RST, not yet forgotten) or why it ended.
    fn seq_records(&mut self) -> Vec<SeqRecord> {
        let live: Vec<(SessionId, bool)> = self
            .engine
            .sessions()
            .map(|s| (s.id, s.is_closing()))
            .collect();
        for &(sid, _) in &live {
            self.refresh_offsets(sid);
        }
        self.sessions
            .iter()
            .map(|(&session, s)| SeqRecord {
                session,
                state: match s.end {
                    Some(r) => r.label(),
                    None if live.contains(&(session, true)) => "closing",
                    None => "open",
                },
                offsets: s.offsets,
                seq_adjusted: s.seq_adjusted,
                ack_adjusted: s.ack_adjusted,
                dropped: s.dropped,
            })
            .collect()
    }

    /// The engine's expectations still live, in replay's order (E1, E2, ...).
    fn pending(&mut self) -> Vec<(u64, Expectation)> {
        let live: Vec<(ExpectId, Expectation)> = self
            .engine
            .expectations()
            .iter()
            .map(|(id, e)| (id, *e))
            .collect();
        let mut pending: Vec<(u64, Expectation)> = live
            .into_iter()
            .map(|(id, e)| (self.expect_number(id), e))
            .collect();
        pending.sort_unstable_by_key(|(n, _)| *n);
        pending
    }
}
