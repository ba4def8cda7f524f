//! Helpers shared by the fuzz targets: a byte reader to decode operations from the fuzz input,
//! and checks of a built packet with etherparse (independent of `ftpct::packet`).

use etherparse::{IpSlice, TcpOptionElement, TcpSlice};

/// Reads little-endian numbers and byte strings from the fuzz input; yields zeros once the
/// input is exhausted (so every input decodes to something, and short inputs stay short).
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// True when the IP header checksum (IPv4) and the TCP checksum are valid.
/// Panics if `bytes` is not an IP/TCP packet (callers check that first).
pub fn checksums_ok(bytes: &[u8]) -> bool {
    let ip = IpSlice::from_slice(bytes).expect("ip");
    let tcp = TcpSlice::from_slice(ip.payload().payload).expect("tcp");
    match &ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header();
            // Over the raw header bytes: etherparse's `Ipv4Header` drops the reserved flag bit.
            let hdr_ok = ones_complement_sum(h.slice()) == 0xffff;
            let c = tcp
                .calc_checksum_ipv4(h.source(), h.destination())
                .expect("csum v4");
            hdr_ok && c == tcp.checksum()
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header();
            let c = tcp
                .calc_checksum_ipv6(h.source(), h.destination())
                .expect("csum v6");
            c == tcp.checksum()
        }
    }
}

/// The SACK blocks of a packet's TCP options, or `None` if etherparse cannot read the options.
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

/// The 16-bit one's complement sum of `data` (a valid IPv4 header sums to 0xffff).
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
