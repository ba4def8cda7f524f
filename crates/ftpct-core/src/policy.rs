//! Policy: what the ALG accepts from the control channel, with safe defaults.
//!
//! Each rule is a pure check on values the session already parsed; the engine turns a refusal
//! into an event (logged with the reason, counted) and lets the control packet through
//! unchanged, so that a refused message never wedges the session.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Tunables of the core. Defaults are the safe ones (see docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allow PORT/EPRT/227 to name an address other than the control peer's (bounce attacks;
    /// the kernel's `loose=1`). Default: false.
    pub allow_third_party: bool,
    /// Allow data ports below 1024. Default: false.
    pub allow_privileged_ports: bool,
    /// Live expectations per control session (kernel: 1). Default: 1.
    pub max_expect_per_session: usize,
    /// Expectations in total. Default: 1 Mi.
    pub max_expectations: usize,
    /// How long an expectation waits for its data connection. Default: 300 s.
    pub expect_timeout: Duration,
    /// Public ports that may be chosen for a rewritten data address, inclusive.
    /// The advertised port is kept when free; otherwise the next free one in this range.
    pub nat_port_min: u16,
    /// Upper end of the range of public ports (inclusive).
    pub nat_port_max: u16,
    /// Longest control line buffered while waiting for its end; longer lines are skipped until
    /// their newline and never rewritten. Default: 1024 bytes.
    pub max_line: usize,
    /// Longest time a partial PORT/EPRT/227/229 line is held waiting for its end (never longer
    /// than `session_idle_timeout`). Retransmissions of the held bytes do not end a hold.
    /// Default: 60 s.
    pub hold_timeout: Duration,
    /// What happens to the held bytes when `hold_timeout` passes without the end of the line.
    /// Default: [`HoldTimeoutAction::Keep`].
    pub hold_timeout_action: HoldTimeoutAction,
    /// Tracked control sessions at most; the least recently active one is evicted. Default: 65536.
    pub max_sessions: usize,
    /// A session with no packet for this long is forgotten. Default: 6 h.
    pub session_idle_timeout: Duration,
    /// A session is forgotten this long after FIN in both directions or RST. Default: 10 s.
    pub session_close_linger: Duration,
    /// Mark set on the conntrack entries of admitted data connections. Default: 0x4654 ("FT").
    pub data_mark: u32,
    /// For a session picked up in the middle of its stream (its handshake not seen: ftpct
    /// started after the connection without a state file), take the first segment seen in
    /// each direction as the start of a line, as the kernel helper takes every segment.
    /// Default: false: skip to the first newline, so that a command is never recognised in
    /// the middle of a line (NAT-slipstreaming defence); a PORT/EPRT/227 in the first segment
    /// of such a session is then not rewritten.
    pub pickup_at_segment_start: bool,
    /// Check every segment of a tracked session against both directions' TCP windows, as
    /// conntrack does, and let a segment that fails change nothing (docs/design.md, "Trust
    /// model"). Default: true. Turn off only where ftpct cannot see both directions.
    pub tcp_window_check: bool,
    /// Announcements (PORT/EPRT/227/229) acted on in one segment at most; the rest of the
    /// segment's announcements are refused (`rate_limited`). Default: 32.
    pub max_announce_per_segment: u32,
    /// Announcements acted on per second and session at most (a bucket holding one second's
    /// worth). Default: 2000.
    pub max_announce_per_second: u32,
    /// Log-worthy events (refusals, parse failures, refused segments...) per kind, session and
    /// second at most; the rest are counted in `events_throttled`. Default: 10.
    pub log_events_per_second: u16,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_third_party: false,
            allow_privileged_ports: false,
            max_expect_per_session: 1,
            max_expectations: 1 << 20,
            expect_timeout: Duration::from_secs(300),
            nat_port_min: 1024,
            nat_port_max: 65535,
            max_line: 1024,
            hold_timeout: Duration::from_secs(60),
            hold_timeout_action: HoldTimeoutAction::Keep,
            max_sessions: 65536,
            session_idle_timeout: Duration::from_secs(6 * 3600),
            session_close_linger: Duration::from_secs(10),
            data_mark: 0x4654,
            pickup_at_segment_start: false,
            tcp_window_check: true,
            max_announce_per_segment: 32,
            max_announce_per_second: 2000,
            log_events_per_second: 10,
        }
    }
}

/// What happens to a held partial line when `hold_timeout` passes without its end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HoldTimeoutAction {
    /// The held bytes stay inside (a private address never leaves unrewritten); the session
    /// goes on, and the line is still rewritten if its end ever comes.
    #[default]
    Keep,
    /// The held bytes are let through unchanged with the sender's next packet, and the line is
    /// not rewritten (what `max_hold_retries` used to do after its retransmissions).
    Pass,
}

impl HoldTimeoutAction {
    /// The value as written in the configuration (`keep`, `pass`).
    pub fn label(self) -> &'static str {
        match self {
            HoldTimeoutAction::Keep => "keep",
            HoldTimeoutAction::Pass => "pass",
        }
    }
}

/// Why an announced data address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The announced address is not the control peer's (FTP bounce).
    #[error("address {advertised} is not the control peer {peer} (possible FTP bounce attack; set allow_third_party to permit)")]
    ThirdParty {
        /// The address in the line.
        advertised: IpAddr,
        /// The control connection's peer (the announcer).
        peer: IpAddr,
    },
    /// The data port is below 1024.
    #[error("privileged data port {0} (set allow_privileged_ports to permit)")]
    PrivilegedPort(u16),
    /// The address family differs from the control connection's.
    #[error("address family of {0} does not match the control connection")]
    FamilyMismatch(IpAddr),
    /// Behind NAT, no public port in the range is free.
    #[error("no free public port in {0}-{1}")]
    NoPublicPort(u16, u16),
    /// The expectation table is full.
    #[error("expectation table full")]
    TableFull,
    /// Another session already expects this destination.
    #[error("another session already expects {0}")]
    Clash(SocketAddr),
    /// Over the per-segment or per-second announcement budget.
    #[error("too many announcements in one segment or one second (max_announce_per_segment, max_announce_per_second)")]
    RateLimited,
}

impl Refusal {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::ThirdParty { .. } => "bounce",
            Refusal::PrivilegedPort(_) => "privileged_port",
            Refusal::FamilyMismatch(_) => "family",
            Refusal::NoPublicPort(..) => "no_public_port",
            Refusal::TableFull => "table_full",
            Refusal::Clash(_) => "clash",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

impl Policy {
    /// How long a partial line is held at most: `hold_timeout`, never longer than the session's
    /// idle timeout.
    pub fn hold_limit(&self) -> Duration {
        self.hold_timeout.min(self.session_idle_timeout)
    }

    /// Checks an address announced by `peer` (the sender of the message, as seen before NAT).
    pub fn check_announced(&self, announced: SocketAddr, peer: IpAddr) -> Result<(), Refusal> {
        if announced.is_ipv4() != peer.is_ipv4() {
            return Err(Refusal::FamilyMismatch(announced.ip()));
        }
        if !self.allow_third_party && announced.ip() != peer {
            return Err(Refusal::ThirdParty {
                advertised: announced.ip(),
                peer,
            });
        }
        if !self.allow_privileged_ports && announced.port() < 1024 {
            return Err(Refusal::PrivilegedPort(announced.port()));
        }
        Ok(())
    }

    /// Picks the public port for a rewritten address: `wanted` if it is in range and free,
    /// else the next free one in the range (wrapping), else `None`. `in_use` is asked at most
    /// once per candidate, and at most `limit` candidates are tried (bounded work per packet).
    pub fn pick_port(
        &self,
        wanted: u16,
        limit: u32,
        mut in_use: impl FnMut(u16) -> bool,
    ) -> Option<u16> {
        let (lo, hi) = (self.nat_port_min.max(1), self.nat_port_max);
        if lo > hi {
            return None;
        }
        let span = u32::from(hi - lo) + 1;
        let start = if (lo..=hi).contains(&wanted) {
            wanted
        } else {
            lo
        };
        let mut p = start;
        for _ in 0..span.min(limit) {
            if !in_use(p) {
                return Some(p);
            }
            p = if p >= hi { lo } else { p + 1 };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_refuse_bounce_and_privileged() {
        let p = Policy::default();
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(p
            .check_announced("10.0.0.2:40000".parse().unwrap(), peer)
            .is_ok());
        assert_eq!(
            p.check_announced("10.0.0.9:40000".parse().unwrap(), peer),
            Err(Refusal::ThirdParty {
                advertised: "10.0.0.9".parse().unwrap(),
                peer
            })
        );
        assert_eq!(
            p.check_announced("10.0.0.2:22".parse().unwrap(), peer),
            Err(Refusal::PrivilegedPort(22))
        );
        assert!(matches!(
            p.check_announced("[fd00::1]:4000".parse().unwrap(), peer),
            Err(Refusal::FamilyMismatch(_))
        ));
        let loose = Policy {
            allow_third_party: true,
            allow_privileged_ports: true,
            ..Policy::default()
        };
        assert!(loose
            .check_announced("10.0.0.9:22".parse().unwrap(), peer)
            .is_ok());
    }

    #[test]
    fn pick_port_keeps_wanted_or_takes_next_free() {
        let p = Policy {
            nat_port_min: 5000,
            nat_port_max: 5003,
            ..Policy::default()
        };
        assert_eq!(p.pick_port(5001, 100, |_| false), Some(5001));
        assert_eq!(p.pick_port(5001, 100, |x| x == 5001), Some(5002));
        assert_eq!(p.pick_port(5003, 100, |x| x == 5003), Some(5000));
        assert_eq!(p.pick_port(80, 100, |_| false), Some(5000));
        assert_eq!(p.pick_port(5001, 100, |_| true), None);
        assert_eq!(p.pick_port(5001, 2, |x| x < 5003), None);
    }
}
