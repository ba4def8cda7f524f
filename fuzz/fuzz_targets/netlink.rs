//! Feeds arbitrary bytes, as a datagram from the kernel, to ftpct's netlink parsers: the
//! message and attribute iterators (`ftpct::netlink`), the conntrack entry parser
//! (`ctnetlink::parse_entry`), the ipset header parser (`ipset::parse_header`) and the
//! nf_tables rule and chain parsers of the rule check (`nftables::parse_rule`/`parse_chain`).
//! The kernel is trusted to be well-formed, but a parser must never panic or read out of
//! bounds on any input. Checks: no panic; every attribute's payload lies inside the input.

#![no_main]

use ftpct::netlink::{AttrIter, NlMsgIter};
use libfuzzer_sys::fuzz_target;

fn walk(attrs: AttrIter<'_>, data: &[u8], depth: u32) {
    for a in attrs.flatten() {
        let p = a.payload();
        if !p.is_empty() {
            let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
            let (pl, ph) = (p.as_ptr() as usize, p.as_ptr() as usize + p.len());
            assert!(
                lo <= pl && ph <= hi,
                "attribute payload outside the datagram"
            );
        }
        let _ = (
            a.u8(),
            a.be16(),
            a.be32(),
            a.be64(),
            a.ipv4(),
            a.ipv6(),
            a.str(),
        );
        if depth < 4 {
            walk(a.nested(), data, depth + 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for m in NlMsgIter::new(data).take(64) {
        let Ok(m) = m else { continue };
        let _ = m.error_code();
        let _ = ftpct::nftables::parse_rule(&m);
        let _ = ftpct::nftables::parse_chain(&m);
        let _ = ftpct::ipset::parse_header(&m, "ftpct4");
        if let Ok((_, attrs)) = m.nfgen() {
            let _ = ftpct::ctnetlink::parse_entry(attrs);
        }
        if let Ok((_, attrs)) = m.nfgen() {
            walk(attrs, data, 0);
        }
    }
});
