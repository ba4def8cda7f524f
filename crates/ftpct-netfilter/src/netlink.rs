//! A minimal netlink toolkit for the netfilter subsystems ftpct talks to (ctnetlink, ipset, and
//! nf_tables dumps to check its own rules).
//!
//! Why hand-rolled: no well-kept crate builds both ctnetlink *and* ipset messages (the netlink
//! crates cover rtnetlink/genetlink well, netfilter barely; the ipset protocol not at all), and what
//! ftpct needs is small: build one request into a reused buffer, send it, read the answer.
//!
//! Pieces:
//! - [`MsgBuilder`]: writes `nlmsghdr` + `nfgenmsg` + attributes (nested ones flagged with
//!   [`NLA_F_NESTED`], payloads padded to 4 bytes, big-endian helpers) into a caller-owned,
//!   reused `Vec<u8>`: no allocation once the buffer has grown to the largest message.
//! - [`NlMsgIter`] / [`AttrIter`] / [`Attr`]: bounds-checked parsers. Every length read from the
//!   kernel is checked against the bytes actually present; malformed input gives
//!   [`NlError::Malformed`], never a panic or an out-of-bounds read.
//! - [`NetlinkSocket`]: a `NETLINK_NETFILTER` socket with sequence numbers, a 64 KiB receive
//!   buffer allocated once, `MSG_TRUNC` truncation detection, a receive timeout (the kernel answers
//!   synchronously; a missing answer is a bug, not a reason to hang the daemon) and
//!   `NLMSG_ERROR` → errno handling ([`NetlinkSocket::transact`]).
//!
//! Kernel facts relied on (include/uapi/linux/netlink.h, netfilter/nfnetlink.h):
//! - every nfnetlink message is `nlmsghdr` (16 bytes) + `nfgenmsg` (family, version 0,
//!   big-endian `res_id`) + attributes; the message type is `subsystem << 8 | command`;
//! - the kernel answers a request flagged `NLM_F_ACK` with an `NLMSG_ERROR` message whose
//!   `error` is 0 (success) or a negative errno, carrying the request's sequence number; a dump
//!   (`NLM_F_DUMP`) ends with `NLMSG_DONE`. ipset uses private errnos above 4096.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockname, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Length of `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;
/// Length of `struct nlattr`.
pub const NLA_HDRLEN: usize = 4;

/// Attribute type flag: the payload is a list of attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Attribute type flag: the payload is in network byte order (ipset insists on it).
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// Mask giving the attribute kind without the two flags above.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_MULTI: u16 = 0x02;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

/// `NFNETLINK_V0`.
pub const NFNETLINK_V0: u8 = 0;
/// nfnetlink subsystem of conntrack.
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// nfnetlink subsystem of ipset.
pub const NFNL_SUBSYS_IPSET: u8 = 6;
/// nfnetlink subsystem of nf_tables ([`crate::nftables`]).
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// `NFNL_MSG_BATCH_BEGIN` (`NLMSG_MIN_TYPE`): opens a batch; its `res_id` names the subsystem.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`: closes a batch, which the subsystem then commits.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

/// Size of the receive buffer of a [`NetlinkSocket`]. The kernel sizes dump messages after the
/// reader's buffer (capped at 32 KiB); answers to single requests are far smaller.
pub const RECV_BUF_LEN: usize = 64 * 1024;

/// How long [`NetlinkSocket`] waits for the kernel's answer to a request.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// The nfnetlink message type of `cmd` in `subsys`.
pub const fn nfnl_msg_type(subsys: u8, cmd: u8) -> u16 {
    ((subsys as u16) << 8) | cmd as u16
}

/// Rounds `len` up to the 4-byte netlink alignment.
pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Errors of the netlink layer. Subsystem modules map [`NlError::Kernel`] errnos to their own
/// typed errors.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    #[error(
        "netlink: cannot open a NETLINK_NETFILTER socket: {0}; ftpct needs a Linux kernel with \
         nfnetlink and, in a container, permission to open netlink sockets"
    )]
    Open(Errno),
    #[error("netlink: sending to the kernel failed: {0}; check that ftpct has CAP_NET_ADMIN")]
    Send(Errno),
    #[error("netlink: receiving from the kernel failed: {0}")]
    Recv(Errno),
    #[error(
        "netlink: the kernel did not answer within {0:?}; this should not happen, please report \
         it with the kernel version"
    )]
    Timeout(Duration),
    #[error(
        "netlink: a kernel answer of {0} bytes did not fit the receive buffer of {RECV_BUF_LEN} \
         bytes; please report this as an ftpct bug"
    )]
    Truncated(usize),
    #[error(
        "netlink: the kernel sent a malformed message ({0}); please report this as an ftpct bug \
         with the kernel version"
    )]
    Malformed(&'static str),
    #[error(
        "netlink: a request did not fit the netlink length fields ({0}); this is an ftpct bug"
    )]
    TooLong(&'static str),
    /// The kernel answered with a negative errno. ipset uses private values above 4096, so this
    /// keeps the raw number.
    #[error("netlink: the kernel refused the request: {}", errno_text(*.errno))]
    Kernel { errno: i32 },
}

impl NlError {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno } => Some(*errno),
            _ => None,
        }
    }
}

/// Human-readable text of an errno (ipset's private codes print as numbers).
pub fn errno_text(errno: i32) -> String {
    if (1..4096).contains(&errno) {
        format!("{} (errno {errno})", Errno::from_raw(errno).desc())
    } else {
        format!("error code {errno}")
    }
}

// ---------------------------------------------------------------------------------------------
// Building

/// Position of an open nested attribute, returned by [`MsgBuilder::nest_start`].
#[must_use = "a nested attribute must be closed with nest_end"]
#[derive(Debug)]
pub struct Nest(usize);

/// Writes one nfnetlink request into a reused buffer.
///
/// Attribute writers never fail; a length that does not fit the 16-bit attribute length is
/// remembered and reported by [`MsgBuilder::finish`].
pub struct MsgBuilder<'a> {
    buf: &'a mut Vec<u8>,
    /// Where this message starts in `buf` (0 unless appended to a batch).
    start: usize,
    overflow: Option<&'static str>,
}

impl<'a> MsgBuilder<'a> {
    /// Starts an nfnetlink message: clears `buf`, writes the `nlmsghdr` (length and sequence
    /// number are filled in later) and the `nfgenmsg`.
    pub fn new(buf: &'a mut Vec<u8>, msg_type: u16, flags: u16, family: u8, res_id: u16) -> Self {
        buf.clear();
        Self::append(buf, msg_type, flags, family, res_id)
    }

    /// Starts a message after those already in `buf` (a batch, see
    /// [`NetlinkSocket::request_batch`]); [`MsgBuilder::finish`] then returns the whole buffer.
    pub fn append(
        buf: &'a mut Vec<u8>,
        msg_type: u16,
        flags: u16,
        family: u8,
        res_id: u16,
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq, set by NetlinkSocket::send
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0 = let the kernel route it
        buf.push(family);
        buf.push(NFNETLINK_V0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        MsgBuilder {
            buf,
            start,
            overflow: None,
        }
    }

    fn pad(&mut self) {
        let target = align4(self.buf.len());
        self.buf.resize(target, 0);
    }

    /// Appends an attribute with a raw payload.
    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + payload.len();
        let len16 = match u16::try_from(len) {
            Ok(l) => l,
            Err(_) => {
                self.overflow = Some("attribute longer than 65535 bytes");
                u16::MAX
            }
        };
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.put(ty, &[v])
    }

    /// A 16-bit attribute in network byte order.
    pub fn put_be16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A 32-bit attribute in network byte order.
    pub fn put_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A 64-bit attribute in network byte order.
    pub fn put_be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn put_cstr(&mut self, ty: u16, s: &str) -> &mut Self {
        let len = NLA_HDRLEN + s.len() + 1;
        let len16 = u16::try_from(len).unwrap_or_else(|_| {
            self.overflow = Some("string attribute longer than 65535 bytes");
            u16::MAX
        });
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
        self
    }

    pub fn put_ipv4(&mut self, ty: u16, ip: Ipv4Addr) -> &mut Self {
        self.put(ty, &ip.octets())
    }

    pub fn put_ipv6(&mut self, ty: u16, ip: Ipv6Addr) -> &mut Self {
        self.put(ty, &ip.octets())
    }

    /// Opens a nested attribute (`NLA_F_NESTED` is added to `ty`).
    pub fn nest_start(&mut self, ty: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Nest(at)
    }

    /// Closes a nested attribute opened by [`MsgBuilder::nest_start`].
    pub fn nest_end(&mut self, nest: Nest) -> &mut Self {
        let len = self.buf.len().saturating_sub(nest.0);
        let len16 = u16::try_from(len).unwrap_or_else(|_| {
            self.overflow = Some("nested attribute longer than 65535 bytes");
            u16::MAX
        });
        if let Some(slot) = self.buf.get_mut(nest.0..nest.0 + 2) {
            slot.copy_from_slice(&len16.to_ne_bytes());
        }
        self
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was written (never the case after [`MsgBuilder::new`]).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes the total length into the header and returns the message bytes.
    pub fn finish(self) -> Result<&'a mut [u8], NlError> {
        if let Some(what) = self.overflow {
            return Err(NlError::TooLong(what));
        }
        let len =
            u32::try_from(self.buf.len() - self.start).map_err(|_| NlError::TooLong("message"))?;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
        Ok(self.buf.as_mut_slice())
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// One netlink message of a received datagram.
#[derive(Clone, Copy, Debug)]
pub struct NlMsg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the `nlmsghdr`, within `nlmsg_len`.
    pub payload: &'a [u8],
}

impl<'a> NlMsg<'a> {
    /// For `NLMSG_ERROR`: the error code (0 = ACK, else a negative errno). For `NLMSG_DONE`: the
    /// optional status of the dump (0 when absent).
    pub fn error_code(&self) -> Result<i32, NlError> {
        match self.payload.get(0..4) {
            Some(s) => Ok(i32::from_ne_bytes([s[0], s[1], s[2], s[3]])),
            None if self.msg_type == NLMSG_DONE => Ok(0),
            None => Err(NlError::Malformed(
                "NLMSG_ERROR shorter than its error code",
            )),
        }
    }

    /// The `nfgenmsg` of an nfnetlink message and an iterator over its attributes.
    pub fn nfgen(&self) -> Result<(NfGenMsg, AttrIter<'a>), NlError> {
        let h = self.payload.get(0..NFGENMSG_LEN).ok_or(NlError::Malformed(
            "nfnetlink message shorter than nfgenmsg",
        ))?;
        let g = NfGenMsg {
            family: h[0],
            version: h[1],
            res_id: u16::from_be_bytes([h[2], h[3]]),
        };
        let attrs = self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]);
        Ok((g, AttrIter::new(attrs)))
    }

    /// The nfnetlink subsystem of the message type.
    pub fn subsys(&self) -> u8 {
        (self.msg_type >> 8) as u8
    }

    /// The nfnetlink command of the message type.
    pub fn cmd(&self) -> u8 {
        (self.msg_type & 0xff) as u8
    }
}

/// `struct nfgenmsg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NfGenMsg {
    pub family: u8,
    pub version: u8,
    pub res_id: u16,
}

/// Iterates over the netlink messages of one received datagram. Stops after the first error.
#[derive(Clone, Debug)]
pub struct NlMsgIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> NlMsgIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        NlMsgIter { buf, failed: false }
    }
}

impl<'a> Iterator for NlMsgIter<'a> {
    type Item = Result<NlMsg<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let b = self.buf;
        let parsed = (|| {
            let len = ne_u32(b, 0).ok_or(NlError::Malformed("truncated nlmsghdr"))? as usize;
            if len < NLMSG_HDRLEN || len > b.len() {
                return Err(NlError::Malformed("nlmsg_len out of bounds"));
            }
            let msg = NlMsg {
                msg_type: ne_u16(b, 4).unwrap_or(0),
                flags: ne_u16(b, 6).unwrap_or(0),
                seq: ne_u32(b, 8).unwrap_or(0),
                pid: ne_u32(b, 12).unwrap_or(0),
                payload: &b[NLMSG_HDRLEN..len],
            };
            Ok((msg, align4(len).min(b.len())))
        })();
        match parsed {
            Ok((msg, used)) => {
                self.buf = &b[used..];
                Some(Ok(msg))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// One attribute.
#[derive(Clone, Copy, Debug)]
pub struct Attr<'a> {
    raw_type: u16,
    payload: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The attribute kind, without the nested/byte-order flags.
    pub fn kind(&self) -> u16 {
        self.raw_type & NLA_TYPE_MASK
    }
    pub fn is_nested(&self) -> bool {
        self.raw_type & NLA_F_NESTED != 0
    }
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], NlError> {
        self.payload
            .get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(NlError::Malformed(what))
    }
    pub fn u8(&self) -> Result<u8, NlError> {
        Ok(self.fixed::<1>("u8 attribute too short")?[0])
    }
    pub fn be16(&self) -> Result<u16, NlError> {
        Ok(u16::from_be_bytes(self.fixed("be16 attribute too short")?))
    }
    pub fn be32(&self) -> Result<u32, NlError> {
        Ok(u32::from_be_bytes(self.fixed("be32 attribute too short")?))
    }
    pub fn be64(&self) -> Result<u64, NlError> {
        Ok(u64::from_be_bytes(self.fixed("be64 attribute too short")?))
    }
    pub fn ipv4(&self) -> Result<Ipv4Addr, NlError> {
        Ok(Ipv4Addr::from(self.fixed::<4>("IPv4 attribute too short")?))
    }
    pub fn ipv6(&self) -> Result<Ipv6Addr, NlError> {
        Ok(Ipv6Addr::from(
            self.fixed::<16>("IPv6 attribute too short")?,
        ))
    }
    /// A string attribute, up to its first NUL.
    pub fn str(&self) -> Result<&'a str, NlError> {
        let end = self
            .payload
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.payload.len());
        std::str::from_utf8(&self.payload[..end])
            .map_err(|_| NlError::Malformed("string attribute is not UTF-8"))
    }
    /// The attributes nested in this one.
    pub fn nested(&self) -> AttrIter<'a> {
        AttrIter::new(self.payload)
    }
}

/// Iterates over a list of attributes. Stops after the first malformed one.
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> AttrIter<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        AttrIter { buf, failed: false }
    }

    /// Sorts the attributes into a table indexed by kind (like the kernel's `nla_parse`). Kinds
    /// at or above `N` are ignored; for a kind present twice the last one wins.
    pub fn table<const N: usize>(self) -> Result<[Option<Attr<'a>>; N], NlError> {
        let mut t = [None; N];
        for a in self {
            let a = a?;
            if let Some(slot) = t.get_mut(usize::from(a.kind())) {
                *slot = Some(a);
            }
        }
        Ok(t)
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = Result<Attr<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.len() < NLA_HDRLEN {
            // Fewer than 4 trailing bytes are padding.
            return None;
        }
        let b = self.buf;
        let len = usize::from(ne_u16(b, 0).unwrap_or(0));
        let raw_type = ne_u16(b, 2).unwrap_or(0);
        if len < NLA_HDRLEN || len > b.len() {
            self.failed = true;
            return Some(Err(NlError::Malformed("attribute length out of bounds")));
        }
        let attr = Attr {
            raw_type,
            payload: &b[NLA_HDRLEN..len],
        };
        self.buf = &b[align4(len).min(b.len())..];
        Some(Ok(attr))
    }
}

// ---------------------------------------------------------------------------------------------
// Socket

/// Held while this crate creates a `NETLINK_NETFILTER` socket, so that
/// [`crate::nfqueue::NfQueue::open`] can identify the socket the `nfq` crate creates (it does
/// not expose its file descriptor) as the one new netfilter netlink socket of the process.
pub(crate) static NETLINK_OPEN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `NETLINK_NETFILTER` socket for request/answer exchanges with the kernel.
pub struct NetlinkSocket {
    fd: OwnedFd,
    portid: u32,
    seq: u32,
    rbuf: Vec<u8>,
}

impl std::fmt::Debug for NetlinkSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetlinkSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("portid", &self.portid)
            .field("seq", &self.seq)
            .finish()
    }
}

impl NetlinkSocket {
    /// Opens and binds a `NETLINK_NETFILTER` socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NlError> {
        let _guard = NETLINK_OPEN_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NlError::Open)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NlError::Open)?;
        let addr: NetlinkAddr = getsockname(fd.as_raw_fd()).map_err(NlError::Open)?;
        let tv = TimeVal::new(
            RECV_TIMEOUT.as_secs() as nix::sys::time::time_t,
            RECV_TIMEOUT.subsec_micros() as nix::sys::time::suseconds_t,
        );
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(NlError::Open)?;
        // Start from a time-derived sequence so that answers to a previous process's requests
        // on a recycled port id cannot be mistaken for ours.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NetlinkSocket {
            fd,
            portid: addr.pid(),
            seq,
            rbuf: vec![0; RECV_BUF_LEN],
        })
    }

    /// The port id the kernel assigned to this socket.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// Sets the message's sequence number to the next one and sends it to the kernel.
    /// Returns the sequence number used.
    pub fn send(&mut self, msg: &mut [u8]) -> Result<u32, NlError> {
        if msg.len() < NLMSG_HDRLEN {
            return Err(NlError::TooLong("message shorter than nlmsghdr"));
        }
        self.seq = self.seq.wrapping_add(1);
        msg[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match sendto(self.fd.as_raw_fd(), msg, &kernel, MsgFlags::empty()) {
                Ok(_) => return Ok(self.seq),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NlError::Send(e)),
            }
        }
    }

    /// Receives one datagram into the internal buffer and returns its length.
    fn recv_datagram(&mut self) -> Result<usize, NlError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.rbuf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.rbuf.len() => return Err(NlError::Truncated(n)),
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(NlError::Timeout(RECV_TIMEOUT)),
                Err(e) => return Err(NlError::Recv(e)),
            }
        }
    }

    /// Sends `msg` (which must carry `NLM_F_ACK` or `NLM_F_DUMP`) and processes the answer:
    /// every data message carrying the request's sequence number goes to `on_msg`; the exchange
    /// ends with the ACK (`NLMSG_ERROR` 0) or `NLMSG_DONE`. A negative error code ends it with
    /// [`NlError::Kernel`]. Messages with another sequence number (late answers to an abandoned
    /// request) are skipped.
    pub fn transact<E: From<NlError>>(
        &mut self,
        msg: &mut [u8],
        mut on_msg: impl FnMut(&NlMsg<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let seq = self.send(msg)?;
        loop {
            let n = self.recv_datagram()?;
            for m in NlMsgIter::new(&self.rbuf[..n]) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = m.error_code()?;
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(NlError::Kernel {
                            errno: code.saturating_neg(),
                        }
                        .into());
                    }
                    NLMSG_NOOP => {}
                    NLMSG_OVERRUN => return Err(NlError::Recv(Errno::ENOBUFS).into()),
                    _ => on_msg(&m)?,
                }
            }
        }
    }

    /// [`NetlinkSocket::transact`] for requests whose only answer is the ACK.
    pub fn request_ack(&mut self, msg: &mut [u8]) -> Result<(), NlError> {
        self.transact(msg, |_| Ok::<(), NlError>(()))
    }

    /// Sends several messages in one datagram (an nfnetlink batch: `NFNL_MSG_BATCH_BEGIN`, the
    /// requests, `NFNL_MSG_BATCH_END`, which nf_tables needs for every change) and waits for
    /// the answers: each message gets its own sequence number, every message flagged
    /// `NLM_F_ACK` must be acknowledged, and the first error answer to any of them ends the
    /// exchange with [`NlError::Kernel`]. nf_tables applies a batch all or nothing.
    pub fn request_batch(&mut self, batch: &mut [u8]) -> Result<(), NlError> {
        let first = self.seq.wrapping_add(1);
        let mut pending = 0usize;
        let mut at = 0usize;
        while at < batch.len() {
            let len =
                ne_u32(batch, at).ok_or(NlError::TooLong("batch shorter than nlmsghdr"))? as usize;
            let flags = ne_u16(batch, at + 6).ok_or(NlError::TooLong("batch header"))?;
            if len < NLMSG_HDRLEN || at + len > batch.len() {
                return Err(NlError::TooLong("batch message length"));
            }
            self.seq = self.seq.wrapping_add(1);
            batch[at + 8..at + 12].copy_from_slice(&self.seq.to_ne_bytes());
            if flags & NLM_F_ACK != 0 {
                pending += 1;
            }
            at += align4(len);
        }
        let last = self.seq;
        let in_batch = |seq: u32| seq.wrapping_sub(first) <= last.wrapping_sub(first);
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match sendto(self.fd.as_raw_fd(), batch, &kernel, MsgFlags::empty()) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(NlError::Send(e)),
            }
        }
        while pending > 0 {
            let n = self.recv_datagram()?;
            for m in NlMsgIter::new(&self.rbuf[..n]) {
                let m = m?;
                if !in_batch(m.seq) {
                    continue;
                }
                match m.msg_type {
                    NLMSG_ERROR => {
                        let code = m.error_code()?;
                        if code != 0 {
                            return Err(NlError::Kernel {
                                errno: code.saturating_neg(),
                            });
                        }
                        pending = pending.saturating_sub(1);
                    }
                    NLMSG_OVERRUN => return Err(NlError::Recv(Errno::ENOBUFS)),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl AsFd for NetlinkSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetlinkSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_layout_and_padding() {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(&mut buf, nfnl_msg_type(1, 0), NLM_F_REQUEST, 2, 0x1234);
        b.put_u8(7, 0xaa);
        let n = b.nest_start(1);
        b.put_be16(2, 0x0102);
        b.put_cstr(3, "abc");
        b.nest_end(n);
        let msg = b.finish().unwrap();
        assert_eq!(msg.len(), 16 + 4 + 8 + 4 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), 0x0100);
        assert_eq!(&msg[16..20], &[2, 0, 0x12, 0x34]);
        // u8 attribute: len 5, padded to 8.
        assert_eq!(&msg[20..28], &[5, 0, 7, 0, 0xaa, 0, 0, 0]);
        // nested: len 4 + 8 + 8 = 20, type 1 | NESTED.
        assert_eq!(u16::from_ne_bytes(msg[28..30].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(msg[30..32].try_into().unwrap()),
            1 | NLA_F_NESTED
        );

        let m = NlMsgIter::new(msg).next().unwrap().unwrap();
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.res_id, 0x1234);
        let t: [Option<Attr>; 8] = attrs.table().unwrap();
        assert_eq!(t[7].unwrap().u8().unwrap(), 0xaa);
        let nested = t[1].unwrap();
        assert!(nested.is_nested());
        let inner: [Option<Attr>; 4] = nested.nested().table().unwrap();
        assert_eq!(inner[2].unwrap().be16().unwrap(), 0x0102);
        assert_eq!(inner[3].unwrap().str().unwrap(), "abc");
    }

    #[test]
    fn reuses_buffer() {
        let mut buf = Vec::with_capacity(256);
        let cap = buf.capacity();
        for _ in 0..10 {
            let mut b = MsgBuilder::new(&mut buf, 0, 0, 0, 0);
            b.put_be32(1, 5);
            b.finish().unwrap();
        }
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn oversize_attribute_is_an_error() {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(&mut buf, 0, 0, 0, 0);
        b.put(1, &vec![0u8; 70_000]);
        assert!(matches!(b.finish(), Err(NlError::TooLong(_))));
    }

    #[test]
    fn malformed_input_never_panics() {
        // Attribute claiming more bytes than present.
        let bad = [200u8, 0, 1, 0, 1, 2];
        let mut it = AttrIter::new(&bad);
        assert!(matches!(it.next(), Some(Err(NlError::Malformed(_)))));
        assert!(it.next().is_none());
        // Attribute with length < header.
        let bad = [2u8, 0, 1, 0];
        assert!(matches!(AttrIter::new(&bad).next(), Some(Err(_))));
        // Short typed reads.
        let a = Attr {
            raw_type: 1,
            payload: &[1, 2],
        };
        assert!(a.be32().is_err());
        assert!(a.ipv6().is_err());
        assert_eq!(a.be16().unwrap(), 0x0102);
        // nlmsg_len beyond the datagram, or below the header.
        let mut msg = [0u8; 20];
        msg[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(matches!(NlMsgIter::new(&msg).next(), Some(Err(_))));
        msg[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(NlMsgIter::new(&msg).next(), Some(Err(_))));
        // Every prefix and every byte value of a valid message parses or errors, never panics.
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(&mut buf, 0x100, 0, 2, 0);
        let n = b.nest_start(1);
        b.put_be32(2, 7);
        b.nest_end(n);
        let good = b.finish().unwrap().to_vec();
        for cut in 0..=good.len() {
            walk(&good[..cut]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 4, 0x7f, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                walk(&m);
            }
        }
    }

    fn walk(buf: &[u8]) {
        for m in NlMsgIter::new(buf) {
            let Ok(m) = m else { continue };
            let _ = m.error_code();
            if let Ok((_, attrs)) = m.nfgen() {
                for a in attrs.flatten() {
                    let _ = (
                        a.u8(),
                        a.be16(),
                        a.be32(),
                        a.be64(),
                        a.ipv4(),
                        a.ipv6(),
                        a.str(),
                    );
                    for n in a.nested().flatten() {
                        let _ = n.be64();
                    }
                }
            }
        }
    }

    #[test]
    fn error_code_of_ack() {
        let mut d = vec![0u8; 36];
        d[0..4].copy_from_slice(&36u32.to_ne_bytes());
        d[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(m.error_code().unwrap(), -17);
    }
}
