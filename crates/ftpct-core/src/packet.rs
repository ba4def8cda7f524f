//! IP + TCP layer: slicing a queued packet, and building its modified copy.
//!
//! Header parsing uses `etherparse` (zero-copy slices, IPv6 extension headers); the output
//! builder is ours because it must patch seq/ack/SACK and splice a new payload into a
//! caller-owned buffer without allocating, then recompute both checksums in full (packets from
//! veth often carry CHECKSUM_PARTIAL, so an incremental update of the received checksum would be
//! wrong; the kernel sends a modified packet with exactly the checksum we give it).

use std::net::{IpAddr, SocketAddr};

use etherparse::checksum::u64_16bit_word;
use etherparse::{IpNumber, IpSlice, TcpOptionElement, TcpSlice};

use crate::types::FlowTuple;

/// Why a packet was not understood. Such packets are accepted unchanged by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// The IP header is truncated or inconsistent.
    #[error("malformed IP header")]
    BadIp,
    /// The packet is not TCP.
    #[error("not TCP")]
    NotTcp,
    /// An IP fragment (conntrack defragments before ftpct's rules, so this is not ours).
    #[error("IP fragment")]
    Fragment,
    /// The TCP header is truncated or inconsistent.
    #[error("malformed TCP header")]
    BadTcp,
    /// The rewritten packet would exceed the largest IP packet.
    #[error("packet too large to rewrite")]
    TooLarge,
}

/// TCP flags the engine cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

/// A parsed TCP/IP packet, borrowing the queued bytes.
#[derive(Clone, Copy, Debug)]
pub struct TcpPacket<'a> {
    /// The whole IP packet.
    pub bytes: &'a [u8],
    /// Source and destination address and port.
    pub tuple: FlowTuple,
    /// The sequence number.
    pub seq: u32,
    /// The acknowledgement number (meaningful with ACK).
    pub ack: u32,
    /// The flags the engine looks at.
    pub flags: Flags,
    /// The raw (unscaled) receive window.
    pub window: u16,
    /// The window scale option (RFC 7323), read on SYN segments only (the only ones that may
    /// carry it); capped at 14.
    pub wscale: Option<u8>,
    /// Offset of the TCP header in `bytes`.
    pub tcp_off: usize,
    /// Offset of the TCP payload in `bytes`.
    pub payload_off: usize,
    /// End of the TCP payload (the IP length; trailing link padding is ignored).
    pub payload_end: usize,
}

impl<'a> TcpPacket<'a> {
    /// Parses an IPv4 or IPv6 packet carrying TCP.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let ip = IpSlice::from_slice(bytes).map_err(|_| PacketError::BadIp)?;
        if ip.is_fragmenting_payload() {
            return Err(PacketError::Fragment);
        }
        let payload = ip.payload();
        if payload.ip_number != IpNumber::TCP {
            return Err(PacketError::NotTcp);
        }
        let tcp = TcpSlice::from_slice(payload.payload).map_err(|_| PacketError::BadTcp)?;
        let base = bytes.as_ptr() as usize;
        let tcp_off = (payload.payload.as_ptr() as usize).wrapping_sub(base);
        let payload_off = (tcp.payload().as_ptr() as usize).wrapping_sub(base);
        let payload_end = payload_off.saturating_add(tcp.payload().len());
        if tcp_off > bytes.len() || payload_end > bytes.len() || payload_off > payload_end {
            return Err(PacketError::BadTcp);
        }
        let tuple = FlowTuple::new(
            SocketAddr::new(ip.source_addr(), tcp.source_port()),
            SocketAddr::new(ip.destination_addr(), tcp.destination_port()),
        );
        let wscale = if tcp.syn() {
            tcp.options_iterator().find_map(|o| match o {
                Ok(TcpOptionElement::WindowScale(v)) => Some(v.min(14)),
                _ => None,
            })
        } else {
            None
        };
        Ok(TcpPacket {
            bytes,
            tuple,
            seq: tcp.sequence_number(),
            ack: tcp.acknowledgment_number(),
            flags: Flags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            },
            window: tcp.window_size(),
            wscale,
            tcp_off,
            payload_off,
            payload_end,
        })
    }

    /// The TCP payload.
    pub fn payload(&self) -> &'a [u8] {
        self.bytes
            .get(self.payload_off..self.payload_end)
            .unwrap_or(&[])
    }

    /// Length of the TCP payload.
    pub fn payload_len(&self) -> u32 {
        u32::try_from(self.payload_end.saturating_sub(self.payload_off)).unwrap_or(u32::MAX)
    }

    /// Sequence number just after the payload (SYN and FIN count one each).
    pub fn seq_end(&self) -> u32 {
        let mut end = self.seq.wrapping_add(self.payload_len());
        if self.flags.syn {
            end = end.wrapping_add(1);
        }
        if self.flags.fin {
            end = end.wrapping_add(1);
        }
        end
    }

    fn is_ipv6(&self) -> bool {
        self.tuple.src.is_ipv6()
    }
}

/// What to change in a packet.
pub struct Edit<'p> {
    /// The new sequence number.
    pub seq: u32,
    /// The new acknowledgement number.
    pub ack: u32,
    /// New payload; `None` keeps the original one.
    pub payload: Option<&'p [u8]>,
    /// Maps every SACK block edge (left and right) when set.
    pub sack: Option<&'p dyn Fn(u32) -> u32>,
    /// Clears FIN (used when the payload is truncated before the end of the segment).
    pub clear_fin: bool,
}

/// Writes the edited copy of `pkt` into `out` (cleared first) with valid IP and TCP checksums.
pub fn build(pkt: &TcpPacket<'_>, edit: &Edit<'_>, out: &mut Vec<u8>) -> Result<(), PacketError> {
    let payload = edit.payload.unwrap_or_else(|| pkt.payload());
    out.clear();
    let headers = pkt
        .bytes
        .get(..pkt.payload_off)
        .ok_or(PacketError::BadTcp)?;
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    let total = out.len();
    let tcp_off = pkt.tcp_off;
    let tcp_len = total.checked_sub(tcp_off).ok_or(PacketError::BadTcp)?;

    // IP lengths and header checksum.
    if pkt.is_ipv6() {
        // IPv6 payload length covers extension headers too.
        let plen = u16::try_from(total.checked_sub(40).ok_or(PacketError::BadIp)?)
            .map_err(|_| PacketError::TooLarge)?;
        put16(out, 4, plen)?;
    } else {
        let tl = u16::try_from(total).map_err(|_| PacketError::TooLarge)?;
        put16(out, 2, tl)?;
        let ihl = usize::from(out.first().copied().ok_or(PacketError::BadIp)? & 0x0f) * 4;
        put16(out, 10, 0)?;
        let hdr = out.get(..ihl).ok_or(PacketError::BadIp)?;
        let csum = u64_16bit_word::ones_complement(u64_16bit_word::add_slice(0, hdr)).to_be();
        put16(out, 10, csum)?;
    }

    // TCP header fields.
    put32(out, tcp_off + 4, edit.seq)?;
    put32(out, tcp_off + 8, edit.ack)?;
    if edit.clear_fin {
        let f = out.get_mut(tcp_off + 13).ok_or(PacketError::BadTcp)?;
        *f &= !0x01;
    }
    if let Some(map) = edit.sack {
        rewrite_sack(out, tcp_off, pkt.payload_off, map)?;
    }
    put16(out, tcp_off + 16, 0)?;

    // TCP checksum over the pseudo header and the whole segment.
    let mut sum: u64 = 0;
    match (pkt.tuple.src.ip(), pkt.tuple.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = u64_16bit_word::add_4bytes(sum, s.octets());
            sum = u64_16bit_word::add_4bytes(sum, d.octets());
            sum = u64_16bit_word::add_2bytes(sum, [0, 6]);
            let l = u16::try_from(tcp_len).map_err(|_| PacketError::TooLarge)?;
            sum = u64_16bit_word::add_2bytes(sum, l.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = u64_16bit_word::add_slice(sum, &s.octets());
            sum = u64_16bit_word::add_slice(sum, &d.octets());
            let l = u32::try_from(tcp_len).map_err(|_| PacketError::TooLarge)?;
            sum = u64_16bit_word::add_4bytes(sum, l.to_be_bytes());
            sum = u64_16bit_word::add_4bytes(sum, [0, 0, 0, 6]);
        }
        _ => return Err(PacketError::BadIp),
    }
    let seg = out.get(tcp_off..).ok_or(PacketError::BadTcp)?;
    sum = u64_16bit_word::add_slice(sum, seg);
    let csum = u64_16bit_word::ones_complement(sum).to_be();
    put16(out, tcp_off + 16, csum)?;
    Ok(())
}

/// Maps the edges of SACK blocks (option kind 5) in the TCP options of `out`.
fn rewrite_sack(
    out: &mut [u8],
    tcp_off: usize,
    opts_end: usize,
    map: &dyn Fn(u32) -> u32,
) -> Result<(), PacketError> {
    let mut i = tcp_off + 20;
    while i < opts_end {
        let kind = *out.get(i).ok_or(PacketError::BadTcp)?;
        match kind {
            0 => break,
            1 => i += 1,
            _ => {
                let len = usize::from(*out.get(i + 1).ok_or(PacketError::BadTcp)?);
                if len < 2 || i + len > opts_end {
                    return Err(PacketError::BadTcp);
                }
                if kind == 5 {
                    let mut j = i + 2;
                    while j + 8 <= i + len {
                        for edge in [j, j + 4] {
                            let v = get32(out, edge)?;
                            put32(out, edge, map(v))?;
                        }
                        j += 8;
                    }
                }
                i += len;
            }
        }
    }
    Ok(())
}

fn put16(buf: &mut [u8], at: usize, v: u16) -> Result<(), PacketError> {
    // Checksums are computed as native-endian sums of big-endian words; callers pass values
    // already in the byte order they want on the wire via `to_be` where needed.
    let b = buf.get_mut(at..at + 2).ok_or(PacketError::BadTcp)?;
    b.copy_from_slice(&v.to_be_bytes());
    Ok(())
}

fn put32(buf: &mut [u8], at: usize, v: u32) -> Result<(), PacketError> {
    let b = buf.get_mut(at..at + 4).ok_or(PacketError::BadTcp)?;
    b.copy_from_slice(&v.to_be_bytes());
    Ok(())
}

fn get32(buf: &[u8], at: usize) -> Result<u32, PacketError> {
    let b = buf
        .get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .ok_or(PacketError::BadTcp)?;
    Ok(u32::from_be_bytes(*b))
}

#[cfg(test)]
mod tests {
    //! Test packets are built with etherparse by ftpct-testutil and checked with its checksum
    //! oracle (both independent of the builder under test).
    use super::*;
    use ftpct_testutil::{checksums_ok, Seg};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_v4_and_v6() {
        let b = Seg::new(
            a("10.0.0.2:40000"),
            a("198.51.100.2:21"),
            100,
            7,
            b"PORT 1,2,3,4,5,6\r\n",
        )
        .bytes();
        let p = TcpPacket::parse(&b).unwrap();
        assert_eq!(p.tuple.src, a("10.0.0.2:40000"));
        assert_eq!(p.seq, 100);
        assert_eq!(p.ack, 7);
        assert_eq!(p.payload(), b"PORT 1,2,3,4,5,6\r\n");
        assert_eq!(p.seq_end(), 100 + 18);
        let b6 = Seg::new(a("[fd00::2]:40000"), a("[fd00:1::2]:21"), 5, 9, b"EPSV\r\n").bytes();
        let p6 = TcpPacket::parse(&b6).unwrap();
        assert_eq!(p6.tuple.dst, a("[fd00:1::2]:21"));
        assert_eq!(p6.payload(), b"EPSV\r\n");
    }

    #[test]
    fn rejects_garbage_without_panic() {
        for n in 0..64 {
            let v: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let _ = TcpPacket::parse(&v);
        }
        let mut b = Seg::new(a("10.0.0.2:1"), a("10.0.0.3:21"), 1, 1, b"x").bytes();
        b.truncate(30);
        assert!(TcpPacket::parse(&b).is_err());
    }

    #[test]
    fn build_longer_and_shorter_payload_has_valid_checksums() {
        for (src, dst) in [
            (a("10.0.0.2:40000"), a("198.51.100.2:21")),
            (a("[fd00::2]:40000"), a("[fd00:1::2]:21")),
        ] {
            let b = Seg::new(src, dst, 1000, 2000, b"PORT 10,0,0,2,4,1\r\n").bytes();
            let p = TcpPacket::parse(&b).unwrap();
            for new in [&b"PORT 198,51,100,100,4,1\r\n"[..], b"PORT 1,2,3,4,4,1\r\n"] {
                let mut out = Vec::new();
                let edit = Edit {
                    seq: 1005,
                    ack: 1990,
                    payload: Some(new),
                    sack: None,
                    clear_fin: false,
                };
                build(&p, &edit, &mut out).unwrap();
                assert!(checksums_ok(&out));
                let q = TcpPacket::parse(&out).unwrap();
                assert_eq!(q.payload(), new);
                assert_eq!(q.seq, 1005);
                assert_eq!(q.ack, 1990);
                assert_eq!(q.tuple, p.tuple);
            }
        }
    }

    #[test]
    fn build_maps_sack_blocks() {
        let mut s = Seg::new(a("10.0.0.2:40000"), a("198.51.100.2:21"), 1, 500, b"");
        s.sack = vec![(600u32, 700u32), (800, 900)];
        let b = s.bytes();
        let p = TcpPacket::parse(&b).unwrap();
        let f = |x: u32| x + 3;
        let mut out = Vec::new();
        build(
            &p,
            &Edit {
                seq: 1,
                ack: 497,
                payload: None,
                sack: Some(&f),
                clear_fin: false,
            },
            &mut out,
        )
        .unwrap();
        assert!(checksums_ok(&out));
        let tcp =
            TcpSlice::from_slice(IpSlice::from_slice(&out).unwrap().payload().payload).unwrap();
        let mut found = vec![];
        for o in tcp.options_iterator() {
            if let Ok(etherparse::TcpOptionElement::SelectiveAcknowledgement(first, rest)) = o {
                found.push(first);
                found.extend(rest.iter().flatten().copied());
            }
        }
        assert_eq!(found, vec![(603, 703), (803, 903)]);
    }
}
