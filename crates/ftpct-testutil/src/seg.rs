//! TCP segments described field by field, built with etherparse and read back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use etherparse::{IpSlice, PacketBuilder, TcpOptionElement, TcpSlice};

use crate::csum::checksums_ok;

/// `"10.0.0.2:40000"` or `"[fd00::2]:21"` as a [`SocketAddr`] (panics on a typo).
pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// One IPv4 or IPv6 TCP segment (TTL/hop limit 64, no IP options).
///
/// `ack` is written only when `ack_flag` is set. TCP options, in this order: window scale
/// (`NOP, WS`) when `wscale` is set, SACK (`NOP, NOP, SACK`) with up to four blocks when `sack`
/// is not empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    /// The ACK flag.
    pub ack_flag: bool,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
    /// The raw receive window.
    pub window: u16,
    /// The window scale option (SYNs).
    pub wscale: Option<u8>,
    pub sack: Vec<(u32, u32)>,
    pub payload: Vec<u8>,
}

impl Default for Seg {
    /// Unspecified addresses (0.0.0.0:0), no flags, window 65000.
    fn default() -> Self {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        Seg {
            src: any,
            dst: any,
            seq: 0,
            ack: 0,
            syn: false,
            ack_flag: false,
            fin: false,
            rst: false,
            psh: false,
            window: 65000,
            wscale: None,
            sack: Vec::new(),
            payload: Vec::new(),
        }
    }
}

impl Seg {
    /// A segment with the ACK flag and `payload`.
    pub fn new(src: SocketAddr, dst: SocketAddr, seq: u32, ack: u32, payload: &[u8]) -> Self {
        Seg {
            src,
            dst,
            seq,
            ack,
            ack_flag: true,
            payload: payload.to_vec(),
            ..Seg::default()
        }
    }

    /// A SYN (no ACK flag).
    pub fn syn(src: SocketAddr, dst: SocketAddr, seq: u32) -> Self {
        Seg {
            src,
            dst,
            seq,
            syn: true,
            ..Seg::default()
        }
    }

    /// The packet's bytes, from the IP header on, with valid checksums.
    pub fn bytes(&self) -> Vec<u8> {
        let b = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => panic!("mixed address families: {} -> {}", self.src, self.dst),
        };
        let mut b = b.tcp(self.src.port(), self.dst.port(), self.seq, self.window);
        if self.ack_flag {
            b = b.ack(self.ack);
        }
        if self.syn {
            b = b.syn();
        }
        if self.fin {
            b = b.fin();
        }
        if self.rst {
            b = b.rst();
        }
        if self.psh {
            b = b.psh();
        }
        let mut opts = Vec::new();
        if let Some(ws) = self.wscale {
            opts.extend([TcpOptionElement::Noop, TcpOptionElement::WindowScale(ws)]);
        }
        if let Some((&first, rest)) = self.sack.split_first() {
            assert!(rest.len() <= 3, "at most four SACK blocks");
            let more: [Option<(u32, u32)>; 3] = std::array::from_fn(|i| rest.get(i).copied());
            opts.extend([
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::SelectiveAcknowledgement(first, more),
            ]);
        }
        if !opts.is_empty() {
            b = b.options(&opts).expect("TCP options fit");
        }
        let mut v = Vec::with_capacity(b.size(self.payload.len()));
        b.write(&mut v, &self.payload).expect("build");
        v
    }

    /// Reads a TCP/IP packet back (panics if it is not one).
    pub fn parse(bytes: &[u8]) -> Seg {
        let ip = IpSlice::from_slice(bytes).expect("an IP packet");
        let tcp = TcpSlice::from_slice(ip.payload().payload).expect("a TCP segment");
        let mut wscale = None;
        let mut sack = Vec::new();
        for o in tcp.options_iterator() {
            match o {
                Ok(TcpOptionElement::SelectiveAcknowledgement(first, rest)) => {
                    sack.push(first);
                    sack.extend(rest.iter().flatten().copied());
                }
                Ok(TcpOptionElement::WindowScale(ws)) => wscale = Some(ws),
                _ => {}
            }
        }
        Seg {
            src: SocketAddr::new(ip.source_addr(), tcp.source_port()),
            dst: SocketAddr::new(ip.destination_addr(), tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            syn: tcp.syn(),
            ack_flag: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            psh: tcp.psh(),
            window: tcp.window_size(),
            wscale,
            sack,
            payload: tcp.payload().to_vec(),
        }
    }

    /// [`Seg::parse`] of a packet the engine handed out: asserts its IP and TCP checksums
    /// with the [oracle](crate::csum) first.
    pub fn parse_checked(bytes: &[u8]) -> Seg {
        assert!(checksums_ok(bytes), "bad checksum");
        Seg::parse(bytes)
    }

    /// Sequence number just after the segment (SYN and FIN count one each).
    pub fn seq_end(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload.len() as u32)
            .wrapping_add(u32::from(self.syn) + u32::from(self.fin))
    }
}

/// The SACK blocks of a packet's TCP options, or `None` if it does not parse as TCP/IP or
/// etherparse cannot read its options.
pub fn sack_blocks(bytes: &[u8]) -> Option<Vec<(u32, u32)>> {
    let ip = IpSlice::from_slice(bytes).ok()?;
    let tcp = TcpSlice::from_slice(ip.payload().payload).ok()?;
    let mut v = Vec::new();
    for o in tcp.options_iterator() {
        if let TcpOptionElement::SelectiveAcknowledgement(first, rest) = o.ok()? {
            v.push(first);
            v.extend(rest.iter().flatten().copied());
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_v4_and_v6_with_options() {
        for (src, dst) in [
            (sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            (sa("[fd00::2]:40000"), sa("[fd00:1::2]:21")),
        ] {
            let s = Seg {
                seq: 7,
                ack: 9,
                ack_flag: true,
                syn: true,
                psh: true,
                window: 1234,
                wscale: Some(7),
                sack: vec![(1, 2), (3, 4), (5, 6), (7, 8)],
                payload: b"PORT 1,2,3,4,5,6\r\n".to_vec(),
                ..Seg::new(src, dst, 0, 0, b"")
            };
            let b = s.bytes();
            assert!(checksums_ok(&b));
            assert_eq!(Seg::parse_checked(&b), s);
            assert_eq!(sack_blocks(&b), Some(s.sack.clone()));
        }
    }

    #[test]
    fn ack_number_only_with_the_flag() {
        let s = Seg {
            ack: 77,
            ..Seg::syn(sa("10.0.0.2:1"), sa("10.0.0.3:21"), 5)
        };
        let p = Seg::parse(&s.bytes());
        assert!(!p.ack_flag && p.syn);
        assert_eq!(p.ack, 0);
        assert_eq!(p.seq_end(), 6);
    }
}
