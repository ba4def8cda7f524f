//! Conntrack through ctnetlink: look up the entry of a control connection, and create the
//! entry that admits an FTP data connection as RELATED (and translates it).
//!
//! What it is for: the daemon sees control packets in NFQUEUE and needs (1) the conntrack tuples
//! of their connection, to know the NAT (the gateway's public address is `reply.dst` of a
//! MASQUERADEd client) and the master tuple; (2) to create, when a data connection's first SYN is
//! queued, the conntrack entry the kernel then uses for that connection.
//!
//! Kernel facts relied on (include/uapi/linux/netfilter/nfnetlink_conntrack.h,
//! net/netfilter/nf_conntrack_netlink.c, and `shared/notes/kernel-mechanisms.md`, verified by
//! `tests/kernel_netns.rs`):
//! - `IPCTNL_MSG_CT_GET` looks the given tuple up in the conntrack hash, which holds both tuples
//!   of every entry: whether it is sent as `CTA_TUPLE_ORIG` or `CTA_TUPLE_REPLY` makes no
//!   difference, an original-direction and a reply-direction packet as they arrive are both
//!   found ([`Ctnetlink::lookup`]); `ENOENT` when there is none.
//! - Those two tuples are the only ones hashed. A reply packet of a source-NATed connection
//!   after conntrack (mangle POSTROUTING/INPUT, [`Hook::PostConntrack`](crate::types::Hook))
//!   carries the *de-NATed* tuple `server → private client`, which is neither; it is the
//!   inverse of the original tuple, as an original packet after DNAT is the inverse of the
//!   reply tuple. So [`Ctnetlink::get`] tries the packet's tuple, then its inverse (a second
//!   request only on a miss), and finds the entry at every hook ftpct queues in.
//! - `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE|NLM_F_EXCL` creates an entry; it needs both tuples and
//!   `CTA_TIMEOUT`. `CTA_TUPLE_MASTER` names the master by one of its tuples; the new entry gets
//!   `IPS_EXPECTED` and its first packet is classified RELATED. No master → `ENOENT`; the
//!   tuple already tracked → `EEXIST`.
//! - `CTA_NAT_DST` (min = max address and port) sets up DNAT; the REPLY tuple must then be sent
//!   un-NATed (the plain inverse of the original), otherwise no `IPS_DST_NAT` is set and the
//!   packet goes to the gateway itself. The kernel sets a null SNAT binding for the entry, so a
//!   MASQUERADE rule does not touch the data connection.
//! - The DNAT is only applied where a nat base chain exists for PREROUTING (see [`crate::rules`]).
//! - `CTA_PROTOINFO{TCP{STATE=NONE}}` + `CTA_TIMEOUT` are accepted; the SYN moves it on.
//!
//! Every request is built into a buffer reused across calls; answers are parsed in place.

use nix::libc;

use crate::netlink::{NetlinkSocket, NlError, WireError};
use crate::types::{l3proto, CtTuples, FlowTuple, RelatedEntry};
use ftpct_core::wire::ctnetlink::{self as wire, EntryError, Which};

pub use ftpct_core::wire::ctnetlink::{
    status, CtEntry, TCP_CONNTRACK_CLOSE, TCP_CONNTRACK_NONE, TCP_CONNTRACK_TIME_WAIT,
};

/// Errors of conntrack requests. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error(
        "ctnetlink: permission denied: ftpct needs CAP_NET_ADMIN (run it as root or grant the \
         capability)"
    )]
    PermissionDenied,
    #[error(
        "ctnetlink: a conntrack entry with this tuple already exists (the data connection is \
         already tracked); callers treat this as success"
    )]
    AlreadyExists,
    #[error(
        "ctnetlink: the master (control connection) entry {0} is gone: the control connection \
         closed or timed out, so the expectation is stale and can be dropped"
    )]
    MasterNotFound(FlowTuple),
    #[error(
        "ctnetlink: the conntrack table is full ({}): raise net.netfilter.nf_conntrack_max or \
         shed load", crate::netlink::errno_text(*.0)
    )]
    TableFull(i32),
    #[error("ctnetlink: the kernel does not support this request (operation not supported): {0}")]
    NotSupported(&'static str),
    #[error("ctnetlink: the kernel rejected the request as invalid (EINVAL): {0}")]
    Invalid(&'static str),
    #[error("ctnetlink: the tuple {0} mixes IPv4 and IPv6 addresses; this is a bug in the caller")]
    MixedFamilies(FlowTuple),
    #[error(
        "ctnetlink: {op} failed: {}; check that conntrack is loaded in this network namespace \
         (modules nf_conntrack and nf_conntrack_netlink) and that ftpct has CAP_NET_ADMIN there; \
         if it repeats, report it with this errno and the kernel version",
        crate::netlink::errno_text(*errno)
    )]
    Kernel { op: &'static str, errno: i32 },
    #[error(
        "ctnetlink: the kernel answered with an entry ftpct cannot read ({0}); please report \
         this as an ftpct bug with the kernel version"
    )]
    BadAnswer(&'static str),
    #[error("{}", netlink_text(.0))]
    Netlink(NlError),
}

/// The text of a netlink-layer error, with what to check where the netlink layer says nothing
/// about it (a failed receive, a refusal with an errno ctnetlink has no meaning for).
fn netlink_text(e: &NlError) -> String {
    match e {
        NlError::Recv(_) | NlError::Kernel { .. } => format!(
            "ctnetlink: {e}; check that conntrack is loaded (modules nf_conntrack and \
             nf_conntrack_netlink), that ftpct has CAP_NET_ADMIN, and the machine's free memory"
        ),
        other => other.to_string(),
    }
}

impl From<NlError> for CtError {
    fn from(e: NlError) -> Self {
        match e {
            NlError::Send(nix::errno::Errno::EPERM) | NlError::Open(nix::errno::Errno::EPERM) => {
                CtError::PermissionDenied
            }
            other => CtError::Netlink(other),
        }
    }
}

impl From<WireError> for CtError {
    fn from(e: WireError) -> Self {
        CtError::Netlink(e.into())
    }
}

impl From<EntryError> for CtError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Incomplete(what) => CtError::BadAnswer(what),
            EntryError::Wire(w) => w.into(),
            _ => CtError::BadAnswer("unreadable entry"),
        }
    }
}

impl CtError {
    /// True for [`CtError::AlreadyExists`], which the daemon treats as success (a retransmitted
    /// SYN, or another instance created the same entry).
    pub fn is_already_exists(&self) -> bool {
        matches!(self, CtError::AlreadyExists)
    }
}

/// A ctnetlink socket with a reused request buffer.
#[derive(Debug)]
pub struct Ctnetlink {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

impl Ctnetlink {
    /// Opens a ctnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, CtError> {
        Ok(Ctnetlink {
            sock: NetlinkSocket::open()?,
            buf: Vec::with_capacity(512),
        })
    }

    /// The conntrack entry (TCP) that a packet with this tuple belongs to, whichever direction
    /// the packet is and whether it is seen before or after NAT (see the module doc: the
    /// tuple, then its inverse). `Ok(None)` if there is none.
    pub fn get(&mut self, packet: &FlowTuple) -> Result<Option<CtTuples>, CtError> {
        Ok(self.get_entry(packet)?.map(|e| e.tuples))
    }

    /// Like [`Ctnetlink::get`], with the entry's id, status, mark, timeout and TCP state.
    pub fn get_entry(&mut self, packet: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        if let Some(e) = self.query(Which::Original, packet)? {
            return Ok(Some(e));
        }
        // A packet after conntrack whose addresses were translated back: as the reply of the
        // original tuple, or as the original of the reply tuple.
        self.query(Which::Reply, &packet.inverse())
    }

    /// The entry one of whose two tuples is exactly `tuple` (a single request).
    pub fn lookup(&mut self, tuple: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        self.query(Which::Original, tuple)
    }

    fn query(&mut self, which: Which, t: &FlowTuple) -> Result<Option<CtEntry>, CtError> {
        family_of(t)?;
        wire::build_get(&mut self.buf, which, t)?;
        let mut found: Option<Result<CtEntry, CtError>> = None;
        let r = self.sock.transact(&mut self.buf, |m| {
            if let Some(e) = wire::parse_entry_msg(m).transpose() {
                found = Some(e.map_err(CtError::from));
            }
            Ok::<(), CtError>(())
        });
        match r {
            Ok(()) => found.transpose(),
            Err(e) => match kernel_errno(&e) {
                Some(libc::ENOENT) => Ok(None),
                Some(errno) => Err(map_errno("get", errno, None)),
                None => Err(e),
            },
        }
    }

    /// Creates the conntrack entry of a data connection (see the module doc):
    /// `CTA_TUPLE_ORIG` = `e.original`, `CTA_TUPLE_REPLY` = its plain inverse,
    /// `CTA_TUPLE_MASTER` = `e.master`, `CTA_NAT_SRC`/`CTA_NAT_DST` = `e.nat_src`/`e.nat_dst` if any, `CTA_MARK`,
    /// `CTA_TIMEOUT`, TCP state NONE.
    pub fn create_related(&mut self, e: &RelatedEntry) -> Result<(), CtError> {
        let family = family_of(&e.original)?;
        if family_of(&e.master)? != family {
            return Err(CtError::MixedFamilies(e.master));
        }
        if let Some(to) = e.nat_dst {
            if l3proto(&to.ip()) != family {
                return Err(CtError::MixedFamilies(FlowTuple::new(e.original.src, to)));
            }
        }
        wire::build_create_related(&mut self.buf, e)?;
        self.sock
            .request_ack(&mut self.buf)
            .map_err(|err| match err.errno() {
                Some(errno) => map_errno("create", errno, Some(e.master)),
                None => err.into(),
            })
    }

    /// Sets the bits `bits` in the mark of the entry whose original tuple is `original`, leaving
    /// its other bits as they are (an update: `CTA_MARK` = `CTA_MARK_MASK` = `bits`; the kernel
    /// computes `(mark & !bits) ^ bits`). `Ok(false)` if there is no such entry.
    pub fn set_mark_bits(&mut self, original: &FlowTuple, bits: u32) -> Result<bool, CtError> {
        family_of(original)?;
        wire::build_set_mark_bits(&mut self.buf, original, bits)?;
        request_on_entry(&mut self.sock, &mut self.buf, "mark")
    }

    /// Deletes the entry whose original tuple is `original`. `Ok(false)` if there was none.
    pub fn delete(&mut self, original: &FlowTuple) -> Result<bool, CtError> {
        family_of(original)?;
        wire::build_delete(&mut self.buf, original)?;
        request_on_entry(&mut self.sock, &mut self.buf, "delete")
    }

    /// Number of conntrack entries (all protocols, both families) in this network namespace,
    /// by a dump. Meant for tests and diagnostics, not for the packet path.
    pub fn dump_count(&mut self) -> Result<usize, CtError> {
        // No attribute and family AF_UNSPEC: every entry.
        wire::build_dump(&mut self.buf)?;
        let mut n = 0usize;
        self.sock
            .transact(&mut self.buf, |m| {
                if wire::is_entry(m) {
                    n += 1;
                }
                Ok::<(), CtError>(())
            })
            .map_err(|e| match kernel_errno(&e) {
                Some(errno) => map_errno("dump", errno, None),
                None => e,
            })?;
        Ok(n)
    }
}

fn kernel_errno(e: &CtError) -> Option<i32> {
    match e {
        CtError::Netlink(NlError::Kernel { errno }) => Some(*errno),
        _ => None,
    }
}

/// Sends a request about one existing entry: `Ok(false)` when the kernel has no such entry.
fn request_on_entry(
    sock: &mut NetlinkSocket,
    msg: &mut [u8],
    op: &'static str,
) -> Result<bool, CtError> {
    match sock.request_ack(msg) {
        Ok(()) => Ok(true),
        Err(err) => match err.errno() {
            Some(libc::ENOENT) => Ok(false),
            Some(errno) => Err(map_errno(op, errno, None)),
            None => Err(err.into()),
        },
    }
}

fn map_errno(op: &'static str, errno: i32, master: Option<FlowTuple>) -> CtError {
    match errno {
        libc::EPERM | libc::EACCES => CtError::PermissionDenied,
        libc::EEXIST => CtError::AlreadyExists,
        libc::ENOENT => match master {
            Some(m) => CtError::MasterNotFound(m),
            None => CtError::Kernel { op, errno },
        },
        libc::ENOMEM | libc::ENOSPC => CtError::TableFull(errno),
        libc::EOPNOTSUPP => CtError::NotSupported(
            "the kernel lacks conntrack or NAT support for this family/protocol \
             (check CONFIG_NF_CONNTRACK, CONFIG_NF_NAT and CONFIG_NF_CT_NETLINK)",
        ),
        libc::EINVAL => CtError::Invalid(
            "check that all tuples are TCP and of one address family, that the NAT target \
             matches that family, and that the kernel has NAT for it (CONFIG_NF_NAT)",
        ),
        _ => CtError::Kernel { op, errno },
    }
}

fn family_of(t: &FlowTuple) -> Result<u8, CtError> {
    wire::family_of(t).ok_or(CtError::MixedFamilies(*t))
}

/// Parses the attributes of a conntrack entry as the kernel answers a lookup (the core's
/// [`ftpct_core::wire::ctnetlink::parse_entry`] with this module's errors).
pub fn parse_entry(attrs: crate::netlink::AttrIter<'_>) -> Result<CtEntry, CtError> {
    wire::parse_entry(attrs).map_err(CtError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn mixed_families_rejected() {
        let t = FlowTuple::new(sa("10.0.0.2:1"), sa("[2001:db8::1]:2"));
        assert!(matches!(family_of(&t), Err(CtError::MixedFamilies(_))));
    }

    #[test]
    fn errno_mapping() {
        let m = FlowTuple::new(sa("10.0.0.2:1"), sa("10.0.0.1:21"));
        assert!(map_errno("create", libc::EEXIST, Some(m)).is_already_exists());
        assert!(matches!(
            map_errno("create", libc::ENOENT, Some(m)),
            CtError::MasterNotFound(_)
        ));
        assert!(matches!(
            map_errno("create", libc::ENOSPC, None),
            CtError::TableFull(_)
        ));
        assert!(matches!(
            map_errno("create", libc::EPERM, None),
            CtError::PermissionDenied
        ));
        let msg = CtError::PermissionDenied.to_string();
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
    }

    #[test]
    fn every_error_says_what_to_do() {
        let m = FlowTuple::new(sa("10.0.0.2:1"), sa("10.0.0.1:21"));
        let all = [
            CtError::PermissionDenied,
            CtError::AlreadyExists,
            CtError::MasterNotFound(m),
            map_errno("create", libc::ENOSPC, None),
            map_errno("create", libc::EOPNOTSUPP, None),
            map_errno("create", libc::EINVAL, None),
            CtError::MixedFamilies(m),
            map_errno("get", libc::EBUSY, None),
            CtError::BadAnswer("x"),
            CtError::Netlink(NlError::Recv(nix::errno::Errno::ENOMEM)),
            CtError::Netlink(NlError::Kernel { errno: libc::EBUSY }),
            CtError::Netlink(NlError::Timeout(std::time::Duration::from_secs(5))),
        ];
        for e in all {
            let t = e.to_string();
            assert!(
                ["check", "raise", "report", "bug", "grant", "treat", "dropped"]
                    .iter()
                    .any(|w| t.contains(w)),
                "no fix in: {t}"
            );
        }
        let t = map_errno("get", libc::EBUSY, None).to_string();
        assert!(t.starts_with("ctnetlink: get failed: "), "{t}");
        assert!(t.contains("nf_conntrack_netlink"), "{t}");
    }
}
