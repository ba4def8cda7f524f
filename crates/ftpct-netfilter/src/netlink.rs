//! The netlink sockets of the netfilter subsystems ftpct talks to (ctnetlink, ipset, and
//! nf_tables), with the message codec of [`ftpct_core::wire::netlink`] re-exported here.
//!
//! Why hand-rolled: see docs/design.md, "Dependencies": no well-kept crate builds both
//! ctnetlink (with NAT and master tuples) *and* ipset messages, and what ftpct needs is
//! small: build one request into a reused buffer, send it, read the answer.
//!
//! [`NetlinkSocket`] is a `NETLINK_NETFILTER` socket with sequence numbers, a 64 KiB receive
//! buffer allocated once, `MSG_TRUNC` truncation detection, a receive timeout (the kernel
//! answers synchronously; a missing answer is a bug, not a reason to hang the daemon) and
//! `NLMSG_ERROR` → errno handling ([`NetlinkSocket::transact`], [`NetlinkSocket::request_batch`]).
//! Building and parsing are the core's ([`MsgBuilder`], [`NlMsgIter`], [`AttrIter`], [`Attr`]):
//! every length read from the kernel is checked there, and malformed input gives
//! [`NlError::Malformed`], never a panic.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    bind, getsockname, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags,
    NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub use ftpct_core::wire::netlink::*;

/// Size of the receive buffer of a [`NetlinkSocket`]. The kernel sizes dump messages after the
/// reader's buffer (capped at 32 KiB); answers to single requests are far smaller.
pub const RECV_BUF_LEN: usize = 64 * 1024;

/// How long [`NetlinkSocket`] waits for the kernel's answer to a request.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

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

impl From<WireError> for NlError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::TooLong(what) => NlError::TooLong(what),
            WireError::Malformed(what) => NlError::Malformed(what),
            _ => NlError::Malformed("unknown codec error"),
        }
    }
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
        let seq = self.seq.wrapping_add(1);
        set_seq(msg, seq)?;
        self.seq = seq;
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
            for m in NlMsgIter::new(self.rbuf.get(..n).unwrap_or_default()) {
                let m = m.map_err(NlError::from)?;
                if m.seq != seq {
                    continue;
                }
                match m.kind().map_err(NlError::from)? {
                    MsgKind::Error(Outcome::Ack) | MsgKind::Done(Outcome::Ack) => return Ok(()),
                    MsgKind::Error(Outcome::Refused(errno))
                    | MsgKind::Done(Outcome::Refused(errno)) => {
                        return Err(NlError::Kernel { errno }.into())
                    }
                    MsgKind::Noop => {}
                    MsgKind::Overrun => return Err(NlError::Recv(Errno::ENOBUFS).into()),
                    MsgKind::Data => on_msg(&m)?,
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
        let seqs = stamp_batch(batch, self.seq.wrapping_add(1))?;
        self.seq = seqs.last;
        let mut pending = seqs.acks;
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
            for m in NlMsgIter::new(self.rbuf.get(..n).unwrap_or_default()) {
                let m = m?;
                if !seqs.contains(m.seq) {
                    continue;
                }
                match m.kind()? {
                    MsgKind::Error(Outcome::Ack) => pending = pending.saturating_sub(1),
                    MsgKind::Error(Outcome::Refused(errno)) => {
                        return Err(NlError::Kernel { errno })
                    }
                    MsgKind::Overrun => return Err(NlError::Recv(Errno::ENOBUFS)),
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
