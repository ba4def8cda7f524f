//! A checksum oracle computed from scratch.
//!
//! The core writes its checksums with etherparse's summing helpers and its own length and
//! pseudo-header arithmetic (`ftpct_core::packet::build`). This module shares neither: it sums
//! the raw bytes itself (RFC 1071: 16-bit big-endian words, end-around carry), takes the
//! lengths from the IP header, and compares the field bit for bit with the checksum a sender
//! computes (the one's complement of the sum with the field zeroed: never 0xffff for TCP or an
//! IPv4 header, since both sums include a non-zero word). etherparse only locates the headers
//! (IPv6 extension headers included).

use std::net::IpAddr;

use etherparse::IpSlice;

/// The 16-bit one's complement sum of `data` (a trailing odd byte is padded with zero).
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    fold(add(0, data))
}

fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of an IPv4 header (`ihl * 4` bytes), its own field (bytes 10..12) taken as 0.
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let sum = add(add(0, &header[..10]), &header[12..]);
    !fold(sum)
}

/// The TCP checksum of `segment` (header and payload) between `src` and `dst`, its own field
/// (bytes 16..18) taken as 0.
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut sum = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = add(sum, &s.octets());
            sum = add(sum, &d.octets());
            sum += 6;
            sum += segment.len() as u64;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = add(sum, &s.octets());
            sum = add(sum, &d.octets());
            sum = add(sum, &(segment.len() as u32).to_be_bytes());
            sum += 6;
        }
        _ => panic!("mixed address families"),
    }
    sum = add(sum, &segment[..16]);
    sum = add(sum, &segment[18..]);
    !fold(sum)
}

/// True when the IPv4 header checksum and the TCP checksum of `bytes` (from the IP header
/// on) are what a sender writes. Panics if `bytes` is not a TCP/IP packet with a full TCP
/// header (callers check that first).
pub fn checksums_ok(bytes: &[u8]) -> bool {
    let ip = IpSlice::from_slice(bytes).expect("an IP packet");
    let seg = ip.payload().payload;
    assert!(seg.len() >= 20, "no full TCP header");
    let tcp_field = u16::from_be_bytes([seg[16], seg[17]]);
    let tcp_ok = tcp_checksum(ip.source_addr(), ip.destination_addr(), seg) == tcp_field;
    match &ip {
        IpSlice::Ipv4(v4) => {
            // Over the raw header bytes (etherparse's `Ipv4Header` drops the reserved flag bit).
            let h = v4.header().slice();
            let field = u16::from_be_bytes([h[10], h[11]]);
            ipv4_header_checksum(h) == field && tcp_ok
        }
        IpSlice::Ipv6(_) => tcp_ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's example: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
    #[test]
    fn rfc1071_example() {
        assert_eq!(
            ones_complement_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(ones_complement_sum(&[0xff]), 0xff00);
    }

    /// A textbook IPv4 header (checksum b861).
    #[test]
    fn known_ipv4_header() {
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        assert_eq!(ones_complement_sum(&h), 0xffff);
    }

    #[test]
    fn agrees_with_etherparse_and_catches_a_flipped_bit() {
        use crate::seg::{sa, Seg};
        for (src, dst) in [
            (sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            (sa("[fd00::2]:40000"), sa("[fd00:1::2]:21")),
        ] {
            for len in [0usize, 1, 2, 17] {
                let payload: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(71)).collect();
                let mut b = Seg::new(src, dst, 0xfffff000, 3, &payload).bytes();
                assert!(checksums_ok(&b), "{src} {len}");
                let last = b.len() - 1;
                b[last] ^= 0x10;
                assert!(!checksums_ok(&b), "{src} {len}: flipped bit not seen");
            }
        }
    }

    /// What an incremental update that forgets a field looks like: seq patched, checksum not.
    /// The oracle sees it; after the core rebuilds the packet it is right again.
    #[test]
    fn stale_checksum_after_a_seq_patch_is_seen_and_the_core_rebuild_fixes_it() {
        use crate::seg::{sa, Seg};
        use ftpct_core::packet::{build, Edit, TcpPacket};
        for (src, dst) in [
            (sa("10.0.0.2:40000"), sa("198.51.100.2:21")),
            (sa("[fd00::2]:40000"), sa("[fd00:1::2]:21")),
        ] {
            let mut b = Seg::new(src, dst, 1000, 7, b"PORT 10,0,0,2,4,1\r\n").bytes();
            let tcp = b.len() - 19 - 20;
            b[tcp + 4..tcp + 8].copy_from_slice(&2000u32.to_be_bytes());
            assert!(!checksums_ok(&b), "{src}: stale checksum not seen");
            let p = TcpPacket::parse(&b).expect("parses");
            let edit = Edit {
                seq: p.seq,
                ack: p.ack,
                payload: None,
                sack: None,
                clear_fin: false,
            };
            let mut out = Vec::new();
            build(&p, &edit, &mut out).expect("builds");
            assert!(checksums_ok(&out), "{src}: rebuilt packet");
            assert_eq!(Seg::parse(&out).seq, 2000);
        }
    }
}
