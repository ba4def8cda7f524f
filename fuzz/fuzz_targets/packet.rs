//! `ftpct::packet`: `TcpPacket::parse` on arbitrary bytes, and `packet::build` with arbitrary
//! edits on whatever parses.
//!
//! Input: 16 bytes of edit parameters, then the packet (IP header first).
//! Invariants: no panic; the parsed offsets lie within the packet; an identity edit always
//! builds (the engine's post hook relies on it) and reproduces a packet with valid checksums
//! byte for byte; any edit that builds re-parses with the same tuple, the edited seq/ack,
//! payload and FIN flag, valid IP and TCP checksums, and SACK edges mapped.

#![no_main]

use ftpct::packet::{build, Edit, PacketError, TcpPacket};
use ftpct_fuzz::Reader;
use ftpct_testutil::checksums_ok;
use ftpct_testutil::seg::sack_blocks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let params = r.bytes(16);
    let bytes = r.rest();
    let mut p = Reader::new(params);
    let seq = p.u32();
    let ack = p.u32();
    let mode = p.u8();
    let sack_delta = p.u32();
    let new_len = p.u16();
    let fill = p.u8();

    let Ok(pkt) = TcpPacket::parse(bytes) else {
        return;
    };
    assert!(pkt.tcp_off + 20 <= pkt.payload_off, "{pkt:?}");
    assert!(pkt.payload_off <= pkt.payload_end && pkt.payload_end <= bytes.len());
    assert_eq!(pkt.payload().len() as u32, pkt.payload_len());
    let _ = pkt.seq_end();

    // Identity edit: must build; same bytes when the input's checksums were right.
    let mut out = Vec::new();
    let id = Edit {
        seq: pkt.seq,
        ack: pkt.ack,
        payload: None,
        sack: None,
        clear_fin: false,
    };
    build(&pkt, &id, &mut out).expect("identity edit of a parsed packet must build");
    assert!(checksums_ok(&out), "identity build has bad checksums");
    let again = TcpPacket::parse(&out).expect("identity build re-parses");
    assert_eq!(again.tuple, pkt.tuple);
    // An IPv6 payload length of 0 (jumbogram) is read by etherparse as "up to the end of the
    // slice"; the builder writes the real length, so only then may the bytes differ.
    let v6_len0 = pkt.tuple.is_ipv6() && bytes.get(4..6) == Some(&[0, 0][..]);
    if !v6_len0 && checksums_ok(&bytes[..pkt.payload_end]) {
        assert_eq!(
            &out[..],
            &bytes[..pkt.payload_end],
            "identity build changed bytes"
        );
    }

    // Arbitrary edit.
    let new_payload: Vec<u8> = if mode & 1 == 0 {
        Vec::new()
    } else {
        let n = if mode & 8 != 0 {
            usize::from(new_len)
        } else {
            usize::from(new_len) % 1500
        };
        (0..n).map(|i| fill.wrapping_add(i as u8)).collect()
    };
    let map = move |x: u32| x.wrapping_add(sack_delta);
    let edit = Edit {
        seq,
        ack,
        payload: (mode & 1 != 0).then_some(&new_payload[..]),
        sack: (mode & 2 != 0).then_some(&map as &dyn Fn(u32) -> u32),
        clear_fin: mode & 4 != 0,
    };
    match build(&pkt, &edit, &mut out) {
        Ok(()) => {
            let q = TcpPacket::parse(&out).expect("built packet re-parses");
            assert_eq!(q.tuple, pkt.tuple, "tuple changed");
            assert_eq!(q.seq, seq);
            assert_eq!(q.ack, ack);
            let want_payload = edit.payload.unwrap_or_else(|| pkt.payload());
            assert_eq!(q.payload(), want_payload);
            assert_eq!(q.payload_end, out.len());
            assert_eq!(q.flags.syn, pkt.flags.syn);
            assert_eq!(q.flags.rst, pkt.flags.rst);
            assert_eq!(q.flags.ack, pkt.flags.ack);
            assert_eq!(q.flags.fin, pkt.flags.fin && !edit.clear_fin);
            assert!(checksums_ok(&out), "bad checksums after edit");
            if edit.sack.is_some() {
                if let (Some(a), Some(b)) = (sack_blocks(bytes), sack_blocks(&out)) {
                    let mapped: Vec<_> = a.iter().map(|&(l, r)| (map(l), map(r))).collect();
                    assert_eq!(b, mapped, "SACK blocks not mapped");
                }
            } else if let (Some(a), Some(b)) = (sack_blocks(bytes), sack_blocks(&out)) {
                assert_eq!(a, b, "SACK blocks changed without a map");
            }
        }
        Err(PacketError::TooLarge) => {
            assert!(pkt.payload_off + new_payload.len() > 65535);
        }
        Err(e) => {
            // Only a SACK map may fail (malformed options); the rest built above.
            assert!(edit.sack.is_some(), "edit failed: {e:?}");
            assert_eq!(e, PacketError::BadTcp);
        }
    }
});
