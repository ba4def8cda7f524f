//! Checks of the records a state file gives back ([`crate::engine::Engine::restore`]): what
//! the packet path would never have produced is refused, so that a hand-edited or planted
//! state file cannot open pinholes or shift sequence numbers the policy forbids.
//!
//! Pure functions on the engine's types (no I/O): the engine calls them before it applies a
//! record, and the state-file loader counts and reports the refusals.

use std::net::SocketAddr;

use crate::expect::{ExpectKind, Expectation};
use crate::policy::{Policy, Refusal};
use crate::session::Session;
use crate::types::{CtTuples, Dir, SessionId, Timestamp};

/// Why a restored record was refused (it changed nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreRefusal {
    /// The session id is 0 or the largest one.
    #[error("session id {0} is out of range (ids run from 1 to 2^64-2)")]
    SessionId(u64),
    /// The tuples are not those of one TCP connection (the reason).
    #[error("session {0}: {1}")]
    Tuples(SessionId, &'static str),
    /// The server port is not a configured control port.
    #[error("session {0} is not a control connection on a configured port (server port {1}; see `ports`)")]
    NotControl(SessionId, u16),
    /// Created after the time of the restore.
    #[error("session {0} was created after the time of the restore (a file from the future)")]
    Future(SessionId),
    #[error(
        "session {0}: the id or its addresses and ports are already taken by a restored session"
    )]
    /// The id or the tuples are taken by another restored session.
    Duplicate(SessionId),
    /// Over `max_sessions`.
    #[error("more sessions than max_sessions = {0}")]
    TooManySessions(usize),
    /// A rewrite record does not fit the session's rewrite log.
    #[error("session {0}: a rewrite record does not fit its rewrite log")]
    Rewrite(SessionId),
    /// An expectation whose session was not restored.
    #[error("expectation of session {0}, which is not restored")]
    NoSession(SessionId),
    /// The expectation's source is not the session's peer.
    #[error("expectation source {src} is not the session's peer {peer}")]
    ExpectSource {
        /// The expectation's source.
        src: std::net::IpAddr,
        /// The session's peer.
        peer: std::net::IpAddr,
    },
    /// The destination is not one of the session's addresses.
    #[error("expectation {0} does not belong to the session's addresses")]
    ExpectAddress(SocketAddr),
    /// The policy would refuse it now.
    #[error("expectation would be refused by the policy: {0}")]
    ExpectPolicy(Refusal),
    /// It expires later than `expect_timeout` allows.
    #[error("expectation {dst} expires {secs} s from now, beyond expect_timeout = {max} s")]
    ExpectTooLong {
        /// Its destination.
        dst: SocketAddr,
        /// Seconds left before it expires.
        secs: u64,
        /// `expect_timeout`, in seconds.
        max: u64,
    },
    /// Created after the time of the restore.
    #[error("expectation {0} was created after the time of the restore")]
    ExpectFuture(SocketAddr),
    /// The expectation table is full.
    #[error("expectation table full ({0} entries, max_expectations)")]
    ExpectTableFull(usize),
    /// Another restored session expects the same destination.
    #[error("another restored session already expects {0}")]
    ExpectClash(SocketAddr),
}

impl RestoreRefusal {
    /// A short name of the reason, to report each kind once.
    pub fn label(&self) -> &'static str {
        match self {
            RestoreRefusal::SessionId(_) => "session_id",
            RestoreRefusal::Tuples(..) => "tuples",
            RestoreRefusal::NotControl(..) => "not_control",
            RestoreRefusal::Future(_) | RestoreRefusal::ExpectFuture(_) => "future",
            RestoreRefusal::Duplicate(_) => "duplicate",
            RestoreRefusal::TooManySessions(_) => "max_sessions",
            RestoreRefusal::Rewrite(_) => "rewrite",
            RestoreRefusal::NoSession(_) => "no_session",
            RestoreRefusal::ExpectSource { .. } | RestoreRefusal::ExpectAddress(_) => {
                "expect_address"
            }
            RestoreRefusal::ExpectPolicy(_) => "expect_policy",
            RestoreRefusal::ExpectTooLong { .. } => "expect_timeout",
            RestoreRefusal::ExpectTableFull(_) => "max_expectations",
            RestoreRefusal::ExpectClash(_) => "expect_clash",
        }
    }
}

/// The tuples of a control connection as conntrack reports them: one address family, no
/// unspecified, multicast or broadcast address, no port 0.
pub(crate) fn check_restored_tuples(ct: &CtTuples) -> Result<(), &'static str> {
    let ends = [ct.original.src, ct.original.dst, ct.reply.src, ct.reply.dst];
    let v4 = ct.original.src.is_ipv4();
    if ends.iter().any(|a| a.is_ipv4() != v4) {
        return Err("its tuples mix IPv4 and IPv6");
    }
    if ends.iter().any(|a| a.port() == 0) {
        return Err("a tuple has port 0");
    }
    let bad = |a: &SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast(),
        std::net::IpAddr::V6(ip) => ip.is_unspecified() || ip.is_multicast(),
    };
    if ends.iter().any(bad) {
        return Err("a tuple has an unspecified, multicast or broadcast address");
    }
    Ok(())
}

/// Which side announced an expectation of this kind: PORT and EPRT are the client's commands
/// (the original direction), 227 and 229 the server's replies.
fn announcer(kind: ExpectKind) -> Dir {
    match kind {
        ExpectKind::Port | ExpectKind::Eprt => Dir::Original,
        ExpectKind::Pasv227 | ExpectKind::Epsv229 => Dir::Reply,
    }
}

/// An expectation as the engine's `announce` makes them for session `s` under `policy`: its
/// SYN comes from the other peer, its address is the announcer's (or, translated, the public
/// address that the NAT shows the other side, with the announcer's address as `nat_to`), the
/// policy accepts the announced address (no bounce, no privileged port unless allowed), and
/// it expires within `expect_timeout` of `now`.
pub(crate) fn check_restored_expectation(
    policy: &Policy,
    s: &Session,
    exp: &Expectation,
    now: Timestamp,
) -> Result<(), RestoreRefusal> {
    let dir = announcer(exp.kind);
    let peer = s.tuple(dir).src.ip();
    let syn_src = s.tuple(dir.flip()).src.ip();
    let public_ip = s.tuple(dir.flip()).dst.ip();
    if exp.src != syn_src {
        return Err(RestoreRefusal::ExpectSource {
            src: exp.src,
            peer: syn_src,
        });
    }
    let announced = exp.nat_to.unwrap_or(exp.dst);
    policy
        .check_announced(announced, peer)
        .map_err(RestoreRefusal::ExpectPolicy)?;
    if let Some(nat_to) = exp.nat_to {
        // Rewritten: the public address, the announced port or one of nat_ports.
        let in_range = (policy.nat_port_min.max(1)..=policy.nat_port_max).contains(&exp.dst.port());
        if exp.dst.ip() != public_ip
            || exp.dst == nat_to
            || !(exp.dst.port() == nat_to.port() || in_range)
        {
            return Err(RestoreRefusal::ExpectAddress(exp.dst));
        }
    }
    if exp.created > now {
        return Err(RestoreRefusal::ExpectFuture(exp.dst));
    }
    let max = now.plus(policy.expect_timeout);
    if exp.expires > max {
        return Err(RestoreRefusal::ExpectTooLong {
            dst: exp.dst,
            secs: exp.expires.0.saturating_sub(now.0) / 1_000_000_000,
            max: policy.expect_timeout.as_secs(),
        });
    }
    Ok(())
}

/// What conntrack reports now under a restored session's original tuple (the fields of its
/// entry that `restored_identity` looks at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtSeen {
    /// The entry's original and reply tuples.
    pub tuples: CtTuples,
    /// `CTA_ID`.
    pub id: u32,
    /// `CTA_MARK` (0 if absent).
    pub mark: u32,
}

/// Whether a restored session still is the connection that conntrack has under its tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Identity {
    /// The same conntrack id (and mark) and tuples.
    Same,
    /// The same tuples (and mark); the state file had no id (written by an older ftpct).
    Unproven,
    /// Another id, other tuples, or no `seqadj_mark` on an entry that must carry it: a new
    /// connection reuses the addresses and ports.
    Other,
}

/// Compares a restored session (its tuples, its saved conntrack id, and the `seqadj_mark`
/// bits its entry must carry when it needs the mark, [`Session::needs_mark`]) with the entry
/// conntrack has now.
///
/// The id alone is no proof: the kernel computes it from the entry's address and tuple
/// (`nf_ct_get_id`), and a new entry for the same tuple often reuses the memory of the one just
/// freed, so it can get the same id. The mark is the proof for the sessions that matter (those
/// with an offset, whose restore onto another connection would break it): ftpct marked their
/// entry when the offset appeared, the kernel keeps the mark for the entry's life, and nothing
/// marks a new connection while ftpct is down.
pub(crate) fn restored_identity(
    saved: &CtTuples,
    saved_id: Option<u32>,
    required_mark: Option<u32>,
    now: &CtSeen,
) -> Identity {
    if now.tuples != *saved {
        return Identity::Other;
    }
    if required_mark.is_some_and(|bits| now.mark & bits != bits) {
        return Identity::Other;
    }
    match saved_id {
        Some(id) if id == now.id => Identity::Same,
        Some(_) => Identity::Other,
        None => Identity::Unproven,
    }
}

/// The ipset timeout of a restored expectation's destination: the whole seconds left until it
/// `expires` (rounded down), at least 1 (an ipset timeout of 0 means "never"), at most
/// `u32::MAX`.
pub(crate) fn watch_timeout(expires: Timestamp, now: Timestamp) -> u32 {
    let left = expires.0.saturating_sub(now.0) / 1_000_000_000;
    u32::try_from(left.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::FlowTuple;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_restored_session_is_kept_only_for_the_same_conntrack_entry() {
        let ct = CtTuples {
            original: FlowTuple::new(sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            reply: FlowTuple::new(sa("198.51.100.2:21"), sa("203.0.113.1:61000")),
        };
        let entry = |id: u32, tuples: CtTuples| CtSeen {
            tuples,
            id,
            mark: 0x10_0000,
        };
        assert_eq!(
            restored_identity(&ct, Some(7), None, &entry(7, ct)),
            Identity::Same
        );
        // the same addresses and ports, a new connection (a new entry, a new id)
        assert_eq!(
            restored_identity(&ct, Some(7), None, &entry(8, ct)),
            Identity::Other
        );
        // another NAT mapping
        let other = CtTuples {
            reply: FlowTuple::new(sa("198.51.100.2:21"), sa("203.0.113.1:61001")),
            ..ct
        };
        assert_eq!(
            restored_identity(&ct, Some(7), None, &entry(7, other)),
            Identity::Other
        );
        assert_eq!(
            restored_identity(&ct, None, None, &entry(9, ct)),
            Identity::Unproven
        );
        assert_eq!(
            restored_identity(&ct, None, None, &entry(9, other)),
            Identity::Other
        );
        // a session with an offset: its entry must carry seqadj_mark; a new entry (even with
        // the same id: the kernel may reuse the freed entry's memory) does not
        let bits = Some(0x10_0000);
        assert_eq!(
            restored_identity(&ct, Some(7), bits, &entry(7, ct)),
            Identity::Same
        );
        let unmarked = CtSeen {
            mark: 0x4654,
            ..entry(7, ct)
        };
        assert_eq!(
            restored_identity(&ct, Some(7), bits, &unmarked),
            Identity::Other
        );
        assert_eq!(
            restored_identity(&ct, None, bits, &unmarked),
            Identity::Other
        );
        assert_eq!(
            restored_identity(&ct, Some(7), None, &unmarked),
            Identity::Same,
            "no offset: the mark is not required"
        );
        // other bits besides the mark's are fine; only some of the mark's bits are not
        let more = CtSeen {
            mark: 0x10_00ff,
            ..entry(7, ct)
        };
        assert_eq!(restored_identity(&ct, Some(7), bits, &more), Identity::Same);
        let part = CtSeen {
            mark: 0x10,
            ..entry(7, ct)
        };
        assert_eq!(
            restored_identity(&ct, Some(7), Some(0x11), &part),
            Identity::Other
        );
    }

    #[test]
    fn watch_timeouts_round_down_to_whole_seconds_never_to_zero() {
        let s = Timestamp::from_secs;
        assert_eq!(watch_timeout(s(130), s(10)), 120);
        // 119.999 s left: 119
        assert_eq!(watch_timeout(Timestamp(s(130).0 - 1), s(10)), 119);
        // below a second left, due now, or already past: 1 (0 would be "no timeout")
        assert_eq!(watch_timeout(Timestamp(s(10).0 + 999_999_999), s(10)), 1);
        assert_eq!(watch_timeout(s(10), s(10)), 1);
        assert_eq!(watch_timeout(s(5), s(10)), 1);
        // beyond u32 seconds: capped
        assert_eq!(
            watch_timeout(Timestamp(u64::MAX), Timestamp::ZERO),
            u32::MAX
        );
        assert_eq!(
            watch_timeout(s(u64::from(u32::MAX) + 1), Timestamp::ZERO),
            u32::MAX
        );
        assert_eq!(
            watch_timeout(s(u64::from(u32::MAX)), Timestamp::ZERO),
            u32::MAX
        );
    }
}
