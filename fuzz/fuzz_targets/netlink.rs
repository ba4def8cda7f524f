//! Feeds arbitrary bytes, as a datagram from the kernel, to every netlink decoder of the core's
//! `wire` module: the message stream split and control-message kinds (`wire::netlink`), the
//! attribute walk, the conntrack entry parser (`wire::ctnetlink`), the ipset header, protocol,
//! type and element parsers (`wire::ipset`), and the nf_tables rule, chain, base-chain and set
//! element parsers (`wire::nftables`). The kernel is trusted to be well-formed, but a parser
//! must never panic or read out of bounds on any input.
//!
//! Checks: no panic; every message lies inside the input and the split consumes it in order;
//! every attribute's payload lies inside the input; re-encoding a decoded attribute list with
//! the builder decodes equal (kinds, flags, payloads, nesting); batch numbering of arbitrary
//! bytes either fails or numbers every message.

#![no_main]

use ftpct_core::wire::netlink::{
    stamp_batch, AttrIter, MsgBuilder, NlMsgIter, NLA_F_NESTED,
};
use ftpct_core::wire::{ctnetlink, ipset, nftables};
use libfuzzer_sys::fuzz_target;

fn inside(p: &[u8], data: &[u8]) -> bool {
    let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
    let (pl, ph) = (p.as_ptr() as usize, p.as_ptr() as usize + p.len());
    p.is_empty() || (lo <= pl && ph <= hi)
}

/// An attribute list as values: raw type (without `NLA_F_NESTED` for a list), payload or
/// children.
#[derive(Debug, PartialEq, Eq)]
enum Tree {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Tree>),
}

/// Decodes `attrs` (children of attributes flagged nested, while they parse whole), checking
/// that every payload lies inside `data`.
fn decode(attrs: AttrIter<'_>, data: &[u8], depth: u32) -> Vec<Tree> {
    let mut out = Vec::new();
    for a in attrs.flatten() {
        let p = a.payload();
        assert!(inside(p, data), "attribute payload outside the datagram");
        let _ = (
            a.u8(),
            a.be16(),
            a.be32(),
            a.be64(),
            a.ipv4(),
            a.ipv6(),
            a.str(),
        );
        // Payloads flagged nested whose attributes all parse are decoded as a list (bytes
        // the iterator skips as padding are not part of the value); any other payload is a
        // leaf, kept with its raw type and flags.
        if a.is_nested() && a.nested().all(|c| c.is_ok()) && depth < 6 {
            out.push(Tree::Nest(
                a.raw_type() & !NLA_F_NESTED,
                decode(a.nested(), data, depth + 1),
            ));
        } else {
            out.push(Tree::Leaf(a.raw_type(), p.to_vec()));
        }
    }
    out
}

fn encode(b: &mut MsgBuilder<'_>, trees: &[Tree]) {
    for t in trees {
        match t {
            Tree::Leaf(ty, p) => {
                b.put(*ty, p);
            }
            Tree::Nest(kind, kids) => {
                let n = b.nest_start(*kind);
                encode(b, kids);
                b.nest_end(n);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut consumed = 0usize;
    for m in NlMsgIter::new(data).take(64) {
        let Ok(m) = m else { break };
        assert!(inside(m.payload, data), "message outside the datagram");
        // Messages come in order, each after the previous one's header.
        let at = m.payload.as_ptr() as usize - data.as_ptr() as usize;
        assert!(at >= consumed + 16, "messages out of order");
        consumed = at + m.payload.len();

        let _ = (m.error_code(), m.kind());
        let _ = ctnetlink::parse_entry_msg(&m);
        let _ = ipset::parse_header(&m, "ftpct4");
        let _ = ipset::parse_protocol(&m);
        let _ = ipset::parse_type_revision(&m);
        let _ = ipset::parse_element(&m);
        let _ = nftables::parse_rule(&m);
        let _ = nftables::parse_chain(&m);
        let _ = nftables::parse_chain_is_base(&m);
        let _ = nftables::parse_element(&m);
        let Ok((g, attrs)) = m.nfgen() else { continue };
        let _ = ctnetlink::parse_entry(attrs.clone());

        // Round trip: re-encode the decoded attributes; they decode equal.
        let trees = decode(attrs, data, 0);
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(&mut buf, m.msg_type, m.flags, g.family, g.res_id);
        encode(&mut b, &trees);
        if let Ok(msg) = b.finish() {
            let copy = msg.to_vec();
            let again = NlMsgIter::new(&copy).next().unwrap().unwrap();
            let (g2, attrs2) = again.nfgen().unwrap();
            assert_eq!((g2.family, g2.res_id), (g.family, g.res_id));
            assert_eq!(decode(attrs2, &copy, 0), trees, "re-encoded attributes differ");
        }
    }

    // Batch numbering: either an error, or every message gets the next number.
    let mut batch = data.to_vec();
    if let Ok(seqs) = stamp_batch(&mut batch, 1) {
        let n = NlMsgIter::new(&batch).map_while(Result::ok).count() as u32;
        assert_eq!(seqs.last.wrapping_sub(seqs.first).wrapping_add(1), n);
    }
});
