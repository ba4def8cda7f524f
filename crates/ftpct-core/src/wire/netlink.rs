//! Netlink framing for the nfnetlink subsystems: `nlmsghdr`, `nfgenmsg`, attribute TLVs with
//! their 4-byte alignment and nesting, control messages (ACK, error, done) and batches.
//!
//! - [`MsgBuilder`] writes `nlmsghdr` + `nfgenmsg` + attributes (nested ones flagged with
//!   [`NLA_F_NESTED`], payloads padded to 4 bytes, big-endian helpers) into a caller-owned,
//!   reused `Vec<u8>`: no allocation once the buffer has grown to the largest message.
//! - [`NlMsgIter`] / [`AttrIter`] / [`Attr`] parse in place. Every length read is checked
//!   against the bytes actually present; malformed input gives [`WireError::Malformed`], never
//!   a panic or an out-of-bounds read.
//! - [`NlMsg::kind`] says what a message of an answer is (data, ACK, refusal with an errno,
//!   end of a dump); [`set_seq`] and [`stamp_batch`] number requests.
//!
//! Kernel facts relied on (include/uapi/linux/netlink.h, netfilter/nfnetlink.h):
//! - every nfnetlink message is `nlmsghdr` (16 bytes, host byte order) + `nfgenmsg` (family,
//!   version 0, big-endian `res_id`) + attributes; the message type is `subsystem << 8 |
//!   command`; attribute headers are in host byte order, payloads in network byte order;
//! - the kernel answers a request flagged `NLM_F_ACK` with an `NLMSG_ERROR` message whose
//!   `error` is 0 (success) or a negative errno, carrying the request's sequence number; a dump
//!   (`NLM_F_DUMP`) ends with `NLMSG_DONE`. ipset uses private errnos above 4096.

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// `NLM_F_REQUEST`: a request to the kernel.
pub const NLM_F_REQUEST: u16 = 0x01;
/// `NLM_F_MULTI`: one message of a multipart answer (a dump).
pub const NLM_F_MULTI: u16 = 0x02;
/// `NLM_F_ACK`: the kernel is to acknowledge the request.
pub const NLM_F_ACK: u16 = 0x04;
/// `NLM_F_DUMP_INTR`: the dump was interrupted by a change; read it again.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT` (get requests).
pub const NLM_F_ROOT: u16 = 0x100;
/// `NLM_F_MATCH` (get requests).
pub const NLM_F_MATCH: u16 = 0x200;
/// `NLM_F_DUMP`: every object, not one.
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
/// `NLM_F_REPLACE` (new requests).
pub const NLM_F_REPLACE: u16 = 0x100;
/// `NLM_F_EXCL` (new requests): fail if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE` (new requests): create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_APPEND` (new requests): add at the end.
pub const NLM_F_APPEND: u16 = 0x800;

/// `NLMSG_NOOP`: nothing, skip it.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an ACK (error 0) or a refusal (negative errno).
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`: data was lost.
pub const NLMSG_OVERRUN: u16 = 4;

/// `NFNETLINK_V0`.
pub const NFNETLINK_V0: u8 = 0;
/// nfnetlink subsystem of conntrack ([`super::ctnetlink`]).
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// nfnetlink subsystem of ipset ([`super::ipset`]).
pub const NFNL_SUBSYS_IPSET: u8 = 6;
/// nfnetlink subsystem of nf_tables ([`super::nftables`]).
pub const NFNL_SUBSYS_NFTABLES: u8 = 10;
/// `NFNL_MSG_BATCH_BEGIN` (`NLMSG_MIN_TYPE`): opens a batch; its `res_id` names the subsystem.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`: closes a batch, which the subsystem then commits.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

/// `NFPROTO_INET` (the nf_tables `inet` family).
pub const NFPROTO_INET: u8 = 1;
/// `NFPROTO_IPV4` (= `AF_INET`).
pub const NFPROTO_IPV4: u8 = 2;
/// `NFPROTO_IPV6` (= `AF_INET6`).
pub const NFPROTO_IPV6: u8 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;

/// The nfnetlink message type of `cmd` in `subsys`.
pub const fn nfnl_msg_type(subsys: u8, cmd: u8) -> u16 {
    ((subsys as u16) << 8) | cmd as u16
}

/// Rounds `len` up to the 4-byte netlink alignment (saturating near `usize::MAX`).
pub const fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Errors of the netlink codecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Received bytes that do not parse: a length out of bounds, a value too short.
    #[error("malformed netlink message: {0}")]
    Malformed(&'static str),
    /// A request that does not fit the netlink length fields.
    #[error("netlink request too long: {0}")]
    TooLong(&'static str),
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
#[derive(Debug)]
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

    /// Starts a message after those already in `buf` (a batch); [`MsgBuilder::finish`] then
    /// returns the whole buffer.
    pub fn append(
        buf: &'a mut Vec<u8>,
        msg_type: u16,
        flags: u16,
        family: u8,
        res_id: u16,
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq, set by the sender
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

    fn header(&mut self, len: usize, ty: u16, what: &'static str) {
        let len16 = u16::try_from(len).unwrap_or_else(|_| {
            self.overflow = Some(what);
            u16::MAX
        });
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
    }

    /// Appends an attribute with a raw payload.
    pub fn put(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        self.header(
            NLA_HDRLEN.saturating_add(payload.len()),
            ty,
            "attribute longer than 65535 bytes",
        );
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A one-byte attribute.
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
        self.header(
            NLA_HDRLEN.saturating_add(s.len()).saturating_add(1),
            ty,
            "string attribute longer than 65535 bytes",
        );
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
        self
    }

    /// An IPv4 address attribute.
    pub fn put_ipv4(&mut self, ty: u16, ip: Ipv4Addr) -> &mut Self {
        self.put(ty, &ip.octets())
    }

    /// An IPv6 address attribute.
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
        if let Some(slot) = self.buf.get_mut(nest.0..nest.0.saturating_add(2)) {
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

    /// Writes the total length into the header and returns the message bytes (the whole
    /// buffer, for a message appended to a batch).
    pub fn finish(self) -> Result<&'a mut [u8], WireError> {
        if let Some(what) = self.overflow {
            return Err(WireError::TooLong(what));
        }
        let len = u32::try_from(self.buf.len().saturating_sub(self.start))
            .map_err(|_| WireError::TooLong("message"))?;
        let slot = self
            .buf
            .get_mut(self.start..self.start.saturating_add(4))
            .ok_or(WireError::TooLong("message shorter than nlmsghdr"))?;
        slot.copy_from_slice(&len.to_ne_bytes());
        Ok(self.buf.as_mut_slice())
    }
}

/// Writes `seq` into the `nlmsg_seq` of the message at the start of `msg`.
pub fn set_seq(msg: &mut [u8], seq: u32) -> Result<(), WireError> {
    if msg.len() < NLMSG_HDRLEN {
        return Err(WireError::TooLong("message shorter than nlmsghdr"));
    }
    let slot = msg
        .get_mut(8..12)
        .ok_or(WireError::TooLong("message shorter than nlmsghdr"))?;
    slot.copy_from_slice(&seq.to_ne_bytes());
    Ok(())
}

/// The sequence numbers [`stamp_batch`] gave the messages of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSeqs {
    /// The first message's.
    pub first: u32,
    /// The last message's.
    pub last: u32,
    /// How many messages carry `NLM_F_ACK` (the answers to wait for).
    pub acks: usize,
}

impl BatchSeqs {
    /// Whether an answer with sequence number `seq` is about a message of the batch.
    pub fn contains(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.first) <= self.last.wrapping_sub(self.first)
    }
}

/// Gives each message of `batch` its own sequence number, `first` then upwards (wrapping),
/// and counts those that ask for an ACK.
pub fn stamp_batch(batch: &mut [u8], first: u32) -> Result<BatchSeqs, WireError> {
    let mut seq = first;
    let mut last = first.wrapping_sub(1);
    let mut acks = 0usize;
    let mut at = 0usize;
    while at < batch.len() {
        let rest = batch.get_mut(at..).unwrap_or_default();
        let len =
            ne_u32(rest, 0).ok_or(WireError::TooLong("batch shorter than nlmsghdr"))? as usize;
        let flags = ne_u16(rest, 6).ok_or(WireError::TooLong("batch header"))?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(WireError::TooLong("batch message length"));
        }
        set_seq(rest, seq)?;
        if flags & NLM_F_ACK != 0 {
            acks += 1;
        }
        last = seq;
        seq = seq.wrapping_add(1);
        at = at.saturating_add(align4(len));
    }
    Ok(BatchSeqs { first, last, acks })
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes(s.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(s.try_into().ok()?))
}

/// One netlink message of a received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
    /// Everything after the `nlmsghdr`, within `nlmsg_len`.
    pub payload: &'a [u8],
}

/// What an `NLMSG_ERROR` or `NLMSG_DONE` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Error code 0: the request was carried out (or the dump is complete).
    Ack,
    /// A negative error code: the kernel refused, with this errno (positive; ipset's own
    /// codes are above 4096).
    Refused(i32),
}

impl Outcome {
    fn of(code: i32) -> Outcome {
        if code == 0 {
            Outcome::Ack
        } else {
            Outcome::Refused(code.saturating_neg())
        }
    }
}

/// What a message of an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// A message of the subsystem (an entry, a rule, a set header...).
    Data,
    /// `NLMSG_NOOP`.
    Noop,
    /// `NLMSG_OVERRUN`: the kernel lost messages.
    Overrun,
    /// `NLMSG_ERROR`: the answer to a request.
    Error(Outcome),
    /// `NLMSG_DONE`: the end of a dump, with its status.
    Done(Outcome),
}

impl<'a> NlMsg<'a> {
    /// For `NLMSG_ERROR`: the error code (0 = ACK, else a negative errno). For `NLMSG_DONE`: the
    /// optional status of the dump (0 when absent).
    pub fn error_code(&self) -> Result<i32, WireError> {
        match self.payload.get(0..4).and_then(|s| s.try_into().ok()) {
            Some(s) => Ok(i32::from_ne_bytes(s)),
            None if self.msg_type == NLMSG_DONE => Ok(0),
            None => Err(WireError::Malformed(
                "NLMSG_ERROR shorter than its error code",
            )),
        }
    }

    /// What this message is: data, or one of the control messages.
    pub fn kind(&self) -> Result<MsgKind, WireError> {
        Ok(match self.msg_type {
            NLMSG_NOOP => MsgKind::Noop,
            NLMSG_OVERRUN => MsgKind::Overrun,
            NLMSG_ERROR => MsgKind::Error(Outcome::of(self.error_code()?)),
            NLMSG_DONE => MsgKind::Done(Outcome::of(self.error_code()?)),
            _ => MsgKind::Data,
        })
    }

    /// The `nfgenmsg` of an nfnetlink message and an iterator over its attributes.
    pub fn nfgen(&self) -> Result<(NfGenMsg, AttrIter<'a>), WireError> {
        let h: [u8; NFGENMSG_LEN] = self
            .payload
            .get(0..NFGENMSG_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(WireError::Malformed(
                "nfnetlink message shorter than nfgenmsg",
            ))?;
        let [family, version, r0, r1] = h;
        let g = NfGenMsg {
            family,
            version,
            res_id: u16::from_be_bytes([r0, r1]),
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

    /// Whether this is command `cmd` of subsystem `subsys`.
    pub fn is(&self, subsys: u8, cmd: u8) -> bool {
        self.msg_type == nfnl_msg_type(subsys, cmd)
    }
}

/// `struct nfgenmsg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NfGenMsg {
    /// `nfgen_family` (`NFPROTO_*`).
    pub family: u8,
    /// `version` (`NFNETLINK_V0`).
    pub version: u8,
    /// `res_id` (host order here; big-endian on the wire).
    pub res_id: u16,
}

/// Iterates over the netlink messages of one received datagram. Stops after the first error.
#[derive(Clone, Debug)]
pub struct NlMsgIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> NlMsgIter<'a> {
    /// The messages of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        NlMsgIter { buf, failed: false }
    }

    fn parse(b: &'a [u8]) -> Result<(NlMsg<'a>, usize), WireError> {
        let len = ne_u32(b, 0).ok_or(WireError::Malformed("truncated nlmsghdr"))? as usize;
        let payload = b
            .get(NLMSG_HDRLEN..len)
            .ok_or(WireError::Malformed("nlmsg_len out of bounds"))?;
        let msg = NlMsg {
            msg_type: ne_u16(b, 4).unwrap_or(0),
            flags: ne_u16(b, 6).unwrap_or(0),
            seq: ne_u32(b, 8).unwrap_or(0),
            pid: ne_u32(b, 12).unwrap_or(0),
            payload,
        };
        Ok((msg, align4(len).min(b.len())))
    }
}

impl<'a> Iterator for NlMsgIter<'a> {
    type Item = Result<NlMsg<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        match Self::parse(self.buf) {
            Ok((msg, used)) => {
                self.buf = self.buf.get(used..).unwrap_or_default();
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    raw_type: u16,
    payload: &'a [u8],
}

impl<'a> Attr<'a> {
    /// An attribute of type `raw_type` (flags included) with `payload`.
    pub fn new(raw_type: u16, payload: &'a [u8]) -> Self {
        Attr { raw_type, payload }
    }
    /// The attribute kind, without the nested/byte-order flags.
    pub fn kind(&self) -> u16 {
        self.raw_type & NLA_TYPE_MASK
    }
    /// The type as on the wire, flags included.
    pub fn raw_type(&self) -> u16 {
        self.raw_type
    }
    /// Whether `NLA_F_NESTED` is set.
    pub fn is_nested(&self) -> bool {
        self.raw_type & NLA_F_NESTED != 0
    }
    /// The payload, without header and padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    fn fixed<const N: usize>(&self, what: &'static str) -> Result<[u8; N], WireError> {
        self.payload
            .get(..N)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(WireError::Malformed(what))
    }
    /// The first byte.
    pub fn u8(&self) -> Result<u8, WireError> {
        let [v] = self.fixed::<1>("u8 attribute too short")?;
        Ok(v)
    }
    /// A big-endian 16-bit value.
    pub fn be16(&self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.fixed("be16 attribute too short")?))
    }
    /// A big-endian 32-bit value.
    pub fn be32(&self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.fixed("be32 attribute too short")?))
    }
    /// A big-endian 64-bit value.
    pub fn be64(&self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.fixed("be64 attribute too short")?))
    }
    /// An IPv4 address.
    pub fn ipv4(&self) -> Result<Ipv4Addr, WireError> {
        Ok(Ipv4Addr::from(self.fixed::<4>("IPv4 attribute too short")?))
    }
    /// An IPv6 address.
    pub fn ipv6(&self) -> Result<Ipv6Addr, WireError> {
        Ok(Ipv6Addr::from(
            self.fixed::<16>("IPv6 attribute too short")?,
        ))
    }
    /// A string attribute, up to its first NUL.
    pub fn str(&self) -> Result<&'a str, WireError> {
        std::str::from_utf8(nul_terminated(self.payload))
            .map_err(|_| WireError::Malformed("string attribute is not UTF-8"))
    }
    /// The attributes nested in this one.
    pub fn nested(&self) -> AttrIter<'a> {
        AttrIter::new(self.payload)
    }
}

/// The bytes of `b` before its first NUL (all of them without one).
pub fn nul_terminated(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(end) => b.get(..end).unwrap_or(b),
        None => b,
    }
}

/// Iterates over a list of attributes. Stops after the first malformed one.
#[derive(Clone, Debug)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> AttrIter<'a> {
    /// The attributes in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        AttrIter { buf, failed: false }
    }

    /// Sorts the attributes into a table indexed by kind (like the kernel's `nla_parse`). Kinds
    /// at or above `N` are ignored; for a kind present twice the last one wins.
    pub fn table<const N: usize>(self) -> Result<[Option<Attr<'a>>; N], WireError> {
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
    type Item = Result<Attr<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.len() < NLA_HDRLEN {
            // Fewer than 4 trailing bytes are padding.
            return None;
        }
        let b = self.buf;
        let len = usize::from(ne_u16(b, 0).unwrap_or(0));
        let raw_type = ne_u16(b, 2).unwrap_or(0);
        let Some(payload) = (len >= NLA_HDRLEN)
            .then(|| b.get(NLA_HDRLEN..len))
            .flatten()
        else {
            self.failed = true;
            return Some(Err(WireError::Malformed("attribute length out of bounds")));
        };
        self.buf = b.get(align4(len).min(b.len())..).unwrap_or_default();
        Some(Ok(Attr { raw_type, payload }))
    }
}

/// Looks attribute `kind` up in a table made by [`AttrIter::table`] (`None` when absent or
/// beyond the table).
pub fn get<'a, const N: usize>(t: &[Option<Attr<'a>>; N], kind: u16) -> Option<Attr<'a>> {
    t.get(usize::from(kind)).copied().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(get(&inner, 3), inner[3]);
        assert_eq!(get(&inner, 9), None);
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
        assert!(matches!(b.finish(), Err(WireError::TooLong(_))));
        let mut b = MsgBuilder::new(&mut buf, 0, 0, 0, 0);
        b.put_cstr(1, &"x".repeat(70_000));
        assert!(matches!(b.finish(), Err(WireError::TooLong(_))));
        let mut b = MsgBuilder::new(&mut buf, 0, 0, 0, 0);
        let n = b.nest_start(1);
        for _ in 0..2 {
            b.put(2, &vec![0u8; 40_000]);
        }
        b.nest_end(n);
        assert!(matches!(b.finish(), Err(WireError::TooLong(_))));
    }

    #[test]
    fn malformed_input_never_panics() {
        // Attribute claiming more bytes than present.
        let bad = [200u8, 0, 1, 0, 1, 2];
        let mut it = AttrIter::new(&bad);
        assert!(matches!(it.next(), Some(Err(WireError::Malformed(_)))));
        assert!(it.next().is_none());
        // Attribute with length < header.
        let bad = [2u8, 0, 1, 0];
        assert!(matches!(AttrIter::new(&bad).next(), Some(Err(_))));
        // Short typed reads.
        let a = Attr::new(1, &[1, 2]);
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
            let _ = m.kind();
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

    fn control(ty: u16, code: Option<i32>) -> Vec<u8> {
        let len = 16 + if code.is_some() { 20 } else { 0 };
        let mut d = vec![0u8; len];
        d[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        d[4..6].copy_from_slice(&ty.to_ne_bytes());
        if let Some(c) = code {
            d[16..20].copy_from_slice(&c.to_ne_bytes());
        }
        d
    }

    #[test]
    fn error_code_and_kind_of_control_messages() {
        let d = control(NLMSG_ERROR, Some(-17));
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(m.error_code().unwrap(), -17);
        assert_eq!(m.kind().unwrap(), MsgKind::Error(Outcome::Refused(17)));
        let d = control(NLMSG_ERROR, Some(0));
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(m.kind().unwrap(), MsgKind::Error(Outcome::Ack));
        let d = control(NLMSG_ERROR, None);
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert!(m.kind().is_err());
        let d = control(NLMSG_DONE, None);
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(m.kind().unwrap(), MsgKind::Done(Outcome::Ack));
        let d = control(NLMSG_DONE, Some(-4));
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(m.kind().unwrap(), MsgKind::Done(Outcome::Refused(4)));
        for (ty, kind) in [
            (NLMSG_NOOP, MsgKind::Noop),
            (NLMSG_OVERRUN, MsgKind::Overrun),
            (0x0100, MsgKind::Data),
        ] {
            let d = control(ty, None);
            let m = NlMsgIter::new(&d).next().unwrap().unwrap();
            assert_eq!(m.kind().unwrap(), kind);
        }
        // i32::MIN does not overflow the negation.
        let d = control(NLMSG_ERROR, Some(i32::MIN));
        let m = NlMsgIter::new(&d).next().unwrap().unwrap();
        assert_eq!(
            m.kind().unwrap(),
            MsgKind::Error(Outcome::Refused(i32::MAX))
        );
    }

    #[test]
    fn batch_stamping() {
        let mut buf = Vec::new();
        MsgBuilder::append(&mut buf, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 10)
            .finish()
            .unwrap();
        let mut b = MsgBuilder::append(&mut buf, 0x0a0c, NLM_F_REQUEST | NLM_F_ACK, 1, 0);
        b.put_cstr(1, "abc");
        b.finish().unwrap();
        MsgBuilder::append(&mut buf, NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, 10)
            .finish()
            .unwrap();
        let s = stamp_batch(&mut buf, u32::MAX).unwrap();
        assert_eq!((s.first, s.last, s.acks), (u32::MAX, 1, 1));
        let seqs: Vec<u32> = NlMsgIter::new(&buf).map(|m| m.unwrap().seq).collect();
        assert_eq!(seqs, [u32::MAX, 0, 1]);
        assert!(s.contains(u32::MAX) && s.contains(0) && s.contains(1));
        assert!(!s.contains(2) && !s.contains(u32::MAX - 1));
        // A cut batch is refused, not sent half-numbered.
        let n = buf.len();
        assert!(stamp_batch(&mut buf[..n - 4], 1).is_err());
        assert!(stamp_batch(&mut buf[..10], 1).is_err());
        assert!(set_seq(&mut [0u8; 15], 1).is_err());
        assert!(set_seq(&mut [0u8; 16], 1).is_ok());
    }

    /// A list of attributes as values, to build and compare.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Tree {
        Leaf(u16, Vec<u8>),
        Nest(u16, Vec<Tree>),
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = (0u16..0x3fff, proptest::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(k, v)| Tree::Leaf(k, v));
        leaf.prop_recursive(3, 24, 4, |inner| {
            (0u16..0x3fff, proptest::collection::vec(inner, 0..4))
                .prop_map(|(k, v)| Tree::Nest(k, v))
        })
    }

    fn put(b: &mut MsgBuilder<'_>, t: &Tree) {
        match t {
            Tree::Leaf(k, v) => {
                b.put(*k, v);
            }
            Tree::Nest(k, kids) => {
                let n = b.nest_start(*k);
                for c in kids {
                    put(b, c);
                }
                b.nest_end(n);
            }
        }
    }

    fn read(attrs: AttrIter<'_>) -> Vec<Tree> {
        attrs
            .map(|a| {
                let a = a.unwrap();
                if a.is_nested() {
                    Tree::Nest(a.kind(), read(a.nested()))
                } else {
                    Tree::Leaf(a.kind(), a.payload().to_vec())
                }
            })
            .collect()
    }

    proptest! {
        /// Encode, then decode: the same attributes, nesting and message header.
        #[test]
        fn attributes_round_trip(
            ty in any::<u16>(), flags in any::<u16>(), family in any::<u8>(),
            res_id in any::<u16>(), seq in any::<u32>(),
            attrs in proptest::collection::vec(tree(), 0..6),
        ) {
            let mut buf = Vec::new();
            let mut b = MsgBuilder::new(&mut buf, ty, flags, family, res_id);
            for a in &attrs {
                put(&mut b, a);
            }
            let msg = b.finish().unwrap();
            set_seq(msg, seq).unwrap();
            let mut it = NlMsgIter::new(msg);
            let m = it.next().unwrap().unwrap();
            prop_assert!(it.next().is_none());
            prop_assert_eq!((m.msg_type, m.flags, m.seq), (ty, flags, seq));
            let (g, list) = m.nfgen().unwrap();
            prop_assert_eq!(g, NfGenMsg { family, version: 0, res_id });
            prop_assert_eq!(read(list), attrs);
        }

        /// Arbitrary bytes: every decoder answers, none panics.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            walk(&data);
            for a in AttrIter::new(&data).flatten() {
                let _ = (a.str(), a.be64(), a.nested().count());
            }
            let mut d = data.clone();
            let _ = stamp_batch(&mut d, 7);
        }
    }
}
