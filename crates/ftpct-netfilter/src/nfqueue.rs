//! The NFQUEUE consumer: a thin wrapper over the `nfq` crate (0.2.5, feature `ct`).
//!
//! What it is for: the daemon receives FTP control packets (twice, see [`Hook`]) and the data
//! SYNs selected by the ipset, decides, and gives each back with a verdict, possibly rewritten.
//!
//! Hook mapping ([`Packet::hook`]): `NF_INET_PRE_ROUTING` and `NF_INET_LOCAL_OUT` →
//! [`Hook::PreConntrack`]; `NF_INET_POST_ROUTING` and `NF_INET_LOCAL_IN` →
//! [`Hook::PostConntrack`]; `NF_INET_FORWARD` → `None`. This relies on the rules of
//! [`crate::rules`]: NFQUEUE rules in the raw table only in PREROUTING/OUTPUT (raw runs before
//! conntrack at priority -300) and in the mangle table only in POSTROUTING/INPUT (after
//! conntrack and DNAT). A queue rule placed elsewhere would be misclassified.
//!
//! Kernel facts relied on (net/netfilter/nfnetlink_queue.c):
//! - the payload starts at the IP header; with copy mode `NFQNL_COPY_PACKET` and a range of
//!   65535 whole packets are copied;
//! - unless `NFQA_CFG_F_GSO` is set ([`QueueOptions::gso`], off by default), the kernel segments
//!   GSO packets and completes `CHECKSUM_PARTIAL` checksums before queueing, so the copy has valid
//!   checksums; with it set, [`Packet::checksum_ready`] (`NFQA_SKB_INFO` without
//!   `NFQA_SKB_CSUMNOTREADY`) says whether the TCP checksum holds only the pseudo-header sum.
//!   Measured here (`tests/kernel_netns.rs`): a TCP SYN arriving over a veth is queued with a
//!   complete checksum and `checksum_ready() == true` without GSO, and with
//!   `checksum_ready() == false` and a partial checksum with GSO;
//! - a modified payload is re-injected with `CHECKSUM_NONE`: it must carry complete checksums;
//!   it may be at most 65535 bytes;
//! - when the socket's receive buffer overflows, `recv` fails with `ENOBUFS` (the packets are
//!   lost: dropped, or accepted with fail-open) if `NETLINK_NO_ENOBUFS` is off, which
//!   [`NfQueue::open`] arranges; this is [`QueueError::Overrun`], counted, not fatal;
//! - the kernel answers a refused verdict with an `NLMSG_ERROR` (e.g. `ENOENT` for a packet id
//!   it no longer holds), which `nfq` returns from the next `recv`:
//!   [`QueueError::KernelRejected`], not fatal;
//! - `nfq` returns the receive call's own errors and the errno of an `NLMSG_ERROR` alike, so
//!   [`classify_recv_error`] decides from the errno: only EBADF, ENOTSOCK, EFAULT and ENOTCONN
//!   (the socket itself is broken) are fatal; the daemon counts and survives the rest.
//!
//! Limitations of `nfq` 0.2.5 (worked around here, not forked):
//! - it does not expose its socket's file descriptor (needed for tokio's `AsyncFd` and for
//!   `SO_RCVBUFFORCE`). [`NfQueue::open`] finds it as the one `NETLINK_NETFILTER` socket
//!   (protocol 12 in `/proc/thread-self/net/netlink`) that appeared while `nfq` opened it, with
//!   this crate's netlink socket creation serialized by a lock; if that is ambiguous (another
//!   library opening netfilter sockets at the same moment), open fails with
//!   [`QueueError::FdNotFound`] rather than guess.
//! - it `assert!`s on some kernel-provided lengths (truncated attributes, missing packet header):
//!   a panic there would mean a broken kernel, which is trusted; accepted.
//! - a modified payload of a different length is copied into a new `Vec` (`set_payload`); a
//!   same-length modification is written in place without allocation.
//! - its receive buffer is one `Vec` shared with the messages handed out; it is reused as long
//!   as the previous [`Packet`] was given its verdict before the next `recv`, which is how the
//!   daemon uses it.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::libc;
use nix::sys::socket::{setsockopt, sockopt};

use crate::types::Hook;

/// Largest payload a verdict can carry (16-bit netlink attribute length minus its header).
pub const MAX_MODIFIED_LEN: usize = u16::MAX as usize - 4;

const NF_INET_PRE_ROUTING: u8 = 0;
const NF_INET_LOCAL_IN: u8 = 1;
const NF_INET_LOCAL_OUT: u8 = 3;
const NF_INET_POST_ROUTING: u8 = 4;
const NETLINK_NETFILTER_PROTO: u32 = 12;

/// Settings of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    /// Kernel queue length (`NFQA_CFG_QUEUE_MAXLEN`): packets waiting for a verdict.
    pub max_len: u32,
    /// Accept instead of drop when the queue is full (`NFQA_CFG_F_FAIL_OPEN`).
    pub fail_open: bool,
    /// Bytes of each packet copied to userspace (65535 = whole packets).
    pub copy_range: u16,
    /// Socket receive buffer in bytes (`SO_RCVBUFFORCE`, falling back to `SO_RCVBUF`).
    pub rcvbuf: usize,
    /// Receive GSO packets unsegmented and with partial checksums (`NFQA_CFG_F_GSO`); see the
    /// module doc. Off by default.
    pub gso: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_len: 4096,
            fail_open: false,
            copy_range: u16::MAX,
            rcvbuf: 8 << 20,
            gso: false,
        }
    }
}

/// Errors of the queue. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "nfqueue: cannot open the netlink socket: {0}; check that ftpct has CAP_NET_ADMIN and \
         that the kernel has NFQUEUE (CONFIG_NETFILTER_NETLINK_QUEUE, module nfnetlink_queue)"
    )]
    Open(io::Error),
    #[error(
        "nfqueue: cannot bind queue {queue}: {source}; another process (another ftpct?) holds \
         this queue, or ftpct lacks CAP_NET_ADMIN: stop it or choose another --queue"
    )]
    Bind { queue: u16, source: io::Error },
    #[error(
        "nfqueue: cannot configure queue {queue} ({what}): {source}; the kernel refused the \
         setting: check that ftpct has CAP_NET_ADMIN in this network namespace and that the \
         kernel's nfnetlink_queue supports it (fail-open and GSO need Linux 3.6 or later)"
    )]
    Config {
        queue: u16,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "nfqueue: cannot identify the queue socket's file descriptor ({0}); another component \
         opened netfilter netlink sockets at the same time: open the queue first at startup"
    )]
    FdNotFound(&'static str),
    #[error(
        "nfqueue: receive buffer overrun (ENOBUFS): the kernel lost queued packets; raise the \
         receive buffer or the queue length if this repeats (not fatal)"
    )]
    Overrun,
    #[error(
        "nfqueue: the kernel refused a verdict or setting: {0} (for example a packet id it no \
         longer holds, after the queue was flushed; not fatal: that packet's sender \
         retransmits). If it repeats, check that no other process binds this queue number \
         and that ftpct keeps CAP_NET_ADMIN"
    )]
    KernelRejected(io::Error),
    #[error(
        "nfqueue: receiving from the queue failed: {0}; not fatal (the socket is still \
         usable, e.g. a message lost under memory pressure): check the machine's free memory \
         if it repeats"
    )]
    RecvTransient(io::Error),
    #[error(
        "nfqueue: the queue socket is unusable: {0}; ftpct exits with an error so that its \
         supervisor restarts it (systemd: Restart=on-failure). Until then the control packets \
         are dropped (fail-closed rules) or pass without the ALG (--bypass rules)"
    )]
    Recv(io::Error),
    #[error(
        "nfqueue: sending a verdict failed: {0}; the packet stays in the kernel queue until \
         the queue is flushed, and its sender retransmits it. If it repeats, check the \
         machine's free memory (ENOMEM/ENOBUFS) and that ftpct keeps CAP_NET_ADMIN"
    )]
    Verdict(io::Error),
    #[error(
        "nfqueue: a modified packet of {0} bytes exceeds the {MAX_MODIFIED_LEN}-byte limit of a \
         verdict; the packet was dropped (this is a bug in the rewrite)"
    )]
    PayloadTooLarge(usize),
}

impl QueueError {
    /// False for the errors the daemon counts, logs and continues after; true for those after
    /// which the queue socket cannot be used any more (the daemon exits with an error, and
    /// its supervisor restarts it).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            QueueError::Overrun
                | QueueError::KernelRejected(_)
                | QueueError::RecvTransient(_)
                | QueueError::Verdict(_)
                | QueueError::PayloadTooLarge(_)
        )
    }
}

/// What a failed receive means. `nfq` returns both the receive call's own errors and the
/// errno of an `NLMSG_ERROR` answer (the kernel refusing an earlier verdict) as an
/// `io::Error`, so the errno alone decides: only the errors that say the socket itself is
/// broken are fatal; ENOBUFS is an overrun; the errnos the kernel gives a refused verdict are
/// [`QueueError::KernelRejected`]; anything else (ENOMEM, or `nfq`'s ENOSPC for a message
/// larger than its buffer) is [`QueueError::RecvTransient`]. `None`: nothing to receive.
pub fn classify_recv_error(e: io::Error) -> Option<QueueError> {
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => None,
        Some(libc::ENOBUFS) => Some(QueueError::Overrun),
        Some(libc::ENOENT | libc::EINVAL | libc::EPERM | libc::ENODEV | libc::EOPNOTSUPP) => {
            Some(QueueError::KernelRejected(e))
        }
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::ENOTCONN) | None => {
            Some(QueueError::Recv(e))
        }
        Some(_) => Some(QueueError::RecvTransient(e)),
    }
}

/// A queued packet, to be handed back with one of the `verdict_*` methods.
#[derive(Debug)]
pub struct Packet {
    msg: nfq::Message,
}

impl Packet {
    /// The packet, starting at the IP header.
    pub fn payload(&self) -> &[u8] {
        self.msg.get_payload()
    }

    /// Where in the pipeline the packet was queued (see the module doc); `None` for a hook
    /// ftpct does not queue in (FORWARD).
    pub fn hook(&self) -> Option<Hook> {
        hook_of(self.msg.get_hook())
    }

    /// The netfilter hook number (`NF_INET_*`).
    pub fn raw_hook(&self) -> u8 {
        self.msg.get_hook()
    }

    /// False if the transport checksum is not computed yet (`NFQA_SKB_CSUMNOTREADY`); only
    /// possible with [`QueueOptions::gso`].
    pub fn checksum_ready(&self) -> bool {
        self.msg.is_checksum_ready()
    }

    /// True for a GSO packet (only with [`QueueOptions::gso`]).
    pub fn is_gso(&self) -> bool {
        self.msg.is_seg_offloaded()
    }

    /// The packet mark (`skb->mark`).
    pub fn mark(&self) -> u32 {
        self.msg.get_nfmark()
    }

    /// Sets the packet mark applied with the verdict.
    pub fn set_mark(&mut self, mark: u32) {
        self.msg.set_nfmark(mark)
    }

    /// The kernel's id of the queued packet.
    pub fn id(&self) -> u32 {
        self.msg.get_packet_id()
    }

    /// Input interface index (0 if none).
    pub fn indev(&self) -> u32 {
        self.msg.get_indev()
    }

    /// Output interface index (0 if none).
    pub fn outdev(&self) -> u32 {
        self.msg.get_outdev()
    }
}

/// Maps an `NF_INET_*` hook number to ftpct's [`Hook`] (see the module doc).
pub fn hook_of(raw: u8) -> Option<Hook> {
    match raw {
        NF_INET_PRE_ROUTING | NF_INET_LOCAL_OUT => Some(Hook::PreConntrack),
        NF_INET_POST_ROUTING | NF_INET_LOCAL_IN => Some(Hook::PostConntrack),
        _ => None,
    }
}

/// A bound NFQUEUE queue.
pub struct NfQueue {
    q: nfq::Queue,
    queue_num: u16,
    fd: RawFd,
}

impl std::fmt::Debug for NfQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NfQueue")
            .field("queue_num", &self.queue_num)
            .field("fd", &self.fd)
            .finish()
    }
}

impl NfQueue {
    /// Opens a netlink socket in the calling thread's network namespace, binds `queue_num` and
    /// configures it: full-packet copy (or `copy_range`), queue length, fail-open, GSO, ENOBUFS
    /// reporting, receive buffer, nonblocking receive.
    pub fn open(queue_num: u16, opts: QueueOptions) -> Result<Self, QueueError> {
        let (mut q, fd) = {
            let _guard = crate::netlink::NETLINK_OPEN_LOCK
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = netfilter_sockets().map_err(QueueError::Open)?;
            let q = nfq::Queue::open().map_err(QueueError::Open)?;
            let after = netfilter_sockets().map_err(QueueError::Open)?;
            let mut new = after
                .iter()
                .filter(|(fd, ino)| before.get(fd) != Some(ino))
                .map(|(fd, _)| *fd);
            let fd = match (new.next(), new.next()) {
                (Some(fd), None) => fd,
                (None, _) => return Err(QueueError::FdNotFound("no new netfilter socket")),
                (Some(_), Some(_)) => {
                    return Err(QueueError::FdNotFound("several new netfilter sockets"))
                }
            };
            (q, fd)
        };
        q.bind(queue_num).map_err(|source| QueueError::Bind {
            queue: queue_num,
            source,
        })?;
        let cfg = |what: &'static str| {
            move |source| QueueError::Config {
                queue: queue_num,
                what,
                source,
            }
        };
        q.set_copy_range(queue_num, opts.copy_range)
            .map_err(cfg("copy range"))?;
        q.set_queue_max_len(queue_num, opts.max_len)
            .map_err(cfg("queue length"))?;
        q.set_fail_open(queue_num, opts.fail_open)
            .map_err(cfg("fail-open"))?;
        q.set_recv_gso(queue_num, opts.gso).map_err(cfg("GSO"))?;
        q.set_recv_enobufs(true).map_err(cfg("ENOBUFS reporting"))?;
        q.set_nonblocking(true);
        let mut nq = NfQueue { q, queue_num, fd };
        nq.set_rcvbuf(opts.rcvbuf)?;
        Ok(nq)
    }

    /// Sets the socket receive buffer: `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN, ignores
    /// `net.core.rmem_max`), else `SO_RCVBUF`.
    pub fn set_rcvbuf(&mut self, bytes: usize) -> Result<(), QueueError> {
        // SAFETY: `self.fd` is the descriptor of the socket owned by `self.q` (identified in
        // `open`), which stays open for as long as `self` lives; the borrow ends in this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        if setsockopt(&fd, sockopt::RcvBufForce, &bytes).is_ok() {
            return Ok(());
        }
        setsockopt(&fd, sockopt::RcvBuf, &bytes).map_err(|e| QueueError::Config {
            queue: self.queue_num,
            what: "receive buffer",
            source: io::Error::from(e),
        })
    }

    /// The queue number.
    pub fn queue_num(&self) -> u16 {
        self.queue_num
    }

    /// The next queued packet, or `None` if there is none right now (`EAGAIN`). Only the
    /// errors for which [`QueueError::is_fatal`] is true mean the socket is unusable (see
    /// [`classify_recv_error`]).
    pub fn recv(&mut self) -> Result<Option<Packet>, QueueError> {
        match self.q.recv() {
            Ok(msg) => Ok(Some(Packet { msg })),
            Err(e) => match classify_recv_error(e) {
                None => Ok(None),
                Some(err) => Err(err),
            },
        }
    }

    /// Lets the packet continue unchanged.
    pub fn verdict_accept(&mut self, mut pkt: Packet) -> Result<(), QueueError> {
        pkt.msg.set_verdict(nfq::Verdict::Accept);
        self.q.verdict(pkt.msg).map_err(QueueError::Verdict)
    }

    /// Lets the packet continue with `new_bytes` (from the IP header on, checksums complete).
    /// Same length: written in place; other length: copied (one allocation).
    pub fn verdict_accept_modified(
        &mut self,
        mut pkt: Packet,
        new_bytes: &[u8],
    ) -> Result<(), QueueError> {
        if new_bytes.len() > MAX_MODIFIED_LEN {
            self.verdict_drop(pkt)?;
            return Err(QueueError::PayloadTooLarge(new_bytes.len()));
        }
        if pkt.msg.get_payload().len() == new_bytes.len() {
            pkt.msg.get_payload_mut().copy_from_slice(new_bytes);
        } else {
            pkt.msg.set_payload(new_bytes.to_vec());
        }
        pkt.msg.set_verdict(nfq::Verdict::Accept);
        self.q.verdict(pkt.msg).map_err(QueueError::Verdict)
    }

    /// Drops the packet.
    pub fn verdict_drop(&mut self, mut pkt: Packet) -> Result<(), QueueError> {
        pkt.msg.set_verdict(nfq::Verdict::Drop);
        self.q.verdict(pkt.msg).map_err(QueueError::Verdict)
    }
}

impl AsRawFd for NfQueue {
    /// The queue socket, for readiness polling (tokio `AsyncFd`). Receive with
    /// [`NfQueue::recv`] only.
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// Socket fds of this process that are `NETLINK_NETFILTER` sockets in the calling thread's
/// network namespace, with their inode.
fn netfilter_sockets() -> io::Result<HashMap<RawFd, u64>> {
    let table = std::fs::read_to_string("/proc/thread-self/net/netlink")?;
    let mut netfilter_inodes = std::collections::HashSet::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let (Some(eth), Some(inode)) = (cols.get(1), cols.get(9)) {
            if eth.parse::<u32>().ok() == Some(NETLINK_NETFILTER_PROTO) {
                if let Ok(i) = inode.parse::<u64>() {
                    netfilter_inodes.insert(i);
                }
            }
        }
    }
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc/thread-self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        else {
            continue;
        };
        if netfilter_inodes.contains(&inode) {
            out.insert(fd, inode);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_mapping() {
        assert_eq!(hook_of(0), Some(Hook::PreConntrack));
        assert_eq!(hook_of(3), Some(Hook::PreConntrack));
        assert_eq!(hook_of(4), Some(Hook::PostConntrack));
        assert_eq!(hook_of(1), Some(Hook::PostConntrack));
        assert_eq!(hook_of(2), None);
        assert_eq!(hook_of(9), None);
    }

    #[test]
    fn fatality() {
        assert!(!QueueError::Overrun.is_fatal());
        assert!(QueueError::Recv(io::Error::from_raw_os_error(libc::EBADF)).is_fatal());
    }

    #[test]
    fn receive_errors_are_fatal_only_when_the_socket_is_broken() {
        let class = |errno| classify_recv_error(io::Error::from_raw_os_error(errno));
        assert!(class(libc::EAGAIN).is_none());
        assert!(class(libc::EINTR).is_none());
        assert!(matches!(class(libc::ENOBUFS), Some(QueueError::Overrun)));
        for errno in [libc::ENOENT, libc::EINVAL, libc::EPERM, libc::ENODEV] {
            let e = class(errno).unwrap();
            assert!(matches!(e, QueueError::KernelRejected(_)), "{e}");
            assert!(!e.is_fatal());
        }
        for errno in [libc::ENOMEM, libc::ENOSPC, libc::EMSGSIZE, libc::EBUSY] {
            let e = class(errno).unwrap();
            assert!(matches!(e, QueueError::RecvTransient(_)), "{e}");
            assert!(!e.is_fatal(), "{e}");
        }
        for errno in [libc::EBADF, libc::ENOTSOCK, libc::EFAULT, libc::ENOTCONN] {
            let e = class(errno).unwrap();
            assert!(e.is_fatal(), "{e}");
            assert!(e.to_string().contains("supervisor restarts it"), "{e}");
        }
        let e = classify_recv_error(io::Error::other("no errno")).unwrap();
        assert!(e.is_fatal());
        assert!(!QueueError::Verdict(io::Error::from_raw_os_error(libc::ENOMEM)).is_fatal());
    }

    #[test]
    fn every_error_says_what_to_do() {
        let e = || io::Error::from_raw_os_error(libc::ENOMEM);
        let all = [
            QueueError::Open(e()),
            QueueError::Bind {
                queue: 3,
                source: e(),
            },
            QueueError::Config {
                queue: 3,
                what: "GSO",
                source: e(),
            },
            QueueError::FdNotFound("x"),
            QueueError::Overrun,
            QueueError::KernelRejected(e()),
            QueueError::RecvTransient(e()),
            QueueError::Recv(e()),
            QueueError::Verdict(e()),
            QueueError::PayloadTooLarge(70_000),
        ];
        for err in all {
            let m = err.to_string();
            assert!(
                [
                    "check",
                    "raise",
                    "stop it",
                    "restart",
                    "bug",
                    "open the queue"
                ]
                .iter()
                .any(|w| m.contains(w)),
                "no fix in: {m}"
            );
        }
    }
}
