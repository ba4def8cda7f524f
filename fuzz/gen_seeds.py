#!/usr/bin/env python3
"""Writes the hand-made seed inputs fuzz/corpus/<target>/seed-* for the packet, seqadj,
session_lines and engine targets (the parser seeds are plain text lines, kept as they are).

The encodings follow the decoders at the top of each fuzz target. Run from anywhere:
    python3 fuzz/gen_seeds.py
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def tcp(src_port, dst_port, seq, ack, flags, payload, options=b""):
    off = (20 + len(options)) // 4
    hdr = struct.pack("!HHIIBBHHH", src_port, dst_port, seq, ack, off << 4, flags, 64000, 0, 0)
    return hdr + options + payload


def v4(src, dst, seg, ip_options=b""):
    ihl = (20 + len(ip_options)) // 4
    total = 20 + len(ip_options) + len(seg)
    s, d = bytes(src), bytes(dst)
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(seg))
    c = csum(pseudo + seg)
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, 0x4000, 64, 6, 0, s, d) + ip_options
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + seg


def v6(src, dst, seg, ext=b"", first_next=6):
    s, d = bytes(src), bytes(dst)
    pseudo = s + d + struct.pack("!IxxxB", len(seg), 6)
    c = csum(pseudo + seg)
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    hdr = struct.pack("!IHBB", 6 << 28, len(ext) + len(seg), first_next if ext else 6, 64) + s + d
    return hdr + ext + seg


ACK, SYN, FIN, RST, PSH = 0x10, 0x02, 0x01, 0x04, 0x08
C4, S4 = [10, 0, 0, 2], [198, 51, 100, 2]
C6 = [0xFD, 0x77, 0, 1] + [0] * 11 + [2]
S6 = [0xFD, 0x77, 0, 2] + [0] * 11 + [2]
SACK = bytes([1, 1, 5, 10]) + struct.pack("!II", 600, 700)


def packet_seeds():
    def params(seq, ack, mode, delta, new_len, fill):
        return struct.pack("<IIBIHB", seq, ack, mode, delta, new_len, fill)

    pkts = [
        v4(C4, S4, tcp(40000, 21, 1000, 2000, ACK | PSH, b"PORT 10,0,0,2,195,80\r\n")),
        v4(S4, C4, tcp(21, 40000, 5, 1, ACK | SYN, b"")),
        v4(C4, S4, tcp(40000, 21, 1000, 500, ACK, b"", SACK)),
        v4(C4, S4, tcp(40000, 21, 1, 2, ACK | FIN, b"QUIT\r\n"), ip_options=bytes([1, 1, 1, 0])),
        v6(C6, S6, tcp(40000, 21, 7, 9, ACK, b"EPSV\r\n")),
        # hop-by-hop extension header (8 bytes of padding options)
        v6(C6, S6, tcp(40000, 21, 7, 9, ACK, b"EPRT |2|fd77:1::2|50000|\r\n"),
           ext=bytes([6, 0, 1, 4, 0, 0, 0, 0]), first_next=0),
        v4(C4, S4, tcp(40000, 2121, 1, 2, RST, b"")),
    ]
    edits = [
        params(1005, 1990, 1, 0, 24, ord("P")),
        params(0xFFFFFFF0, 0, 0, 0, 0, 0),
        params(1000, 497, 2, 3, 0, 0),
        params(1, 2, 4 | 1, 0, 3, ord("a")),
        params(9, 7, 1, 0, 1400, 0),
        params(9, 7, 3, 0xFFFFFFFF, 30, ord("1")),
        params(1, 2, 1 | 8, 0, 65535, 0),
    ]
    for i, (p, e) in enumerate(zip(pkts, edits)):
        write("packet", "%02d" % (i + 1), e + p)


def seqadj_seeds():
    def add(gap, old, new):
        return bytes([0]) + struct.pack("<HBB", gap, old, len(new)) + new

    def probe(op, x):
        return bytes([op]) + struct.pack("<H", x)

    def transform(a, n):
        return bytes([5]) + struct.pack("<HH", a, n)

    port = add(5, 12, b"203,0,113,10,4,1") + add(80, 16, b"1,2,3,4,4,1")
    write("seqadj", "01", struct.pack("<I", 1000) + port + probe(3, 1) + probe(3, 20) + transform(0, 140) + bytes([6]))
    # near the wrap, and a repeated and an overlapping record
    write("seqadj", "02", struct.pack("<I", 0xFFFFFFFC) + add(0, 4, b"abcdefgh") + bytes([2, 0]) + bytes([2, 3])
          + transform(0, 20) + probe(3, 2) + bytes([4]) + struct.pack("<I", 9))
    # more than MAX_RECORDS (16) rewrites: folding
    many = b"".join(add(30, 2, b"abc") for _ in range(20))
    write("seqadj", "03", struct.pack("<I", 7) + many + transform(600, 200) + probe(3, 100) + bytes([6]))
    # an empty and a too long replacement
    write("seqadj", "04", struct.pack("<I", 0) + add(3, 0, b"x") + add(3, 4, b"y" * 60) + add(1, 80, b"") + transform(0, 100))


def session_seeds():
    def chunks(*cs):
        return b"".join(bytes([len(c)]) + c for c in cs)

    write("session_lines", "01", bytes([16]) + struct.pack("<I", 100) + bytes([1])
          + chunks(b"USER a\r\nPA", b"SS b\r\nNOOP\n"))
    write("session_lines", "02", bytes([16]) + struct.pack("<I", 0) + bytes([0])
          + chunks(b"T 1,2,3,4,5,6\r\nPORT 1\r\n"))
    write("session_lines", "03", bytes([16]) + struct.pack("<I", 0xFFFFFFF0) + bytes([1])
          + chunks(b"0123456789abcdefghij", b"more junk\r\nNOOP\r\n", b"x" * 40, b"\n"))
    write("session_lines", "04", bytes([255]) + struct.pack("<I", 5) + bytes([1])
          + chunks(b"227 Entering Passive Mode (10,1,0,2,195,80).\r\n", b"\r\n\r\n\n", b"\r"))


# engine: token indices in fuzz_targets/engine.rs TOKENS
T = {name: i for i, name in enumerate([
    "USER", "PASS", "PORT_C", "PORT_S", "PORT_PLAIN", "EPRT4", "EPRT6", "PASV", "EPSV", "AUTH",
    "227", "227_ZERO", "227_PLAIN", "227_MULTI", "229", "229_MULTI", "234", "200", "150", "220",
    "PORT_SP", "ADDR_PART", "PORT_PART", "CRLF", "LF", "227_SP", "229_SP", "PORT_PRIV", "PORT_3RD",
])}


def engine_policy(max_sessions=4, max_exp=8, per=1, flags=0, hold=3, exp_to=60, idle=200, linger=2):
    return bytes([max_sessions - 1, max_exp, per, flags, hold, exp_to - 1, idle - 1, linger])


def ctl(hook, flow, reply=False, fl=0, hint=0, tb=1, param=0, toks=(), raw=None, seq=None, ack=None):
    """A control packet event; hook 0 pre, 1 post, 2 forward. fl: flags | seq mode << 4 | ack mode << 6."""
    out = bytes([hook, flow | (0x80 if reply else 0), fl, hint, tb]) + struct.pack("<H", param)
    if (fl >> 4) & 3 == 3:
        out += struct.pack("<I", seq)
    if fl >> 6 == 3:
        out += struct.pack("<I", ack)
    items = list(toks)
    out += bytes([len(items) + (1 if raw else 0)])
    for t in items:
        out += bytes([T[t]])
    if raw:
        out += bytes([255, len(raw)]) + raw
    return out


def handshake(flow, hint=0, tb=1):
    return bytes([3, flow, hint, tb])


def watched_syn(src, idx=0):
    return bytes([4, src, 1 | (idx << 1)]) + struct.pack("<H", 0) + bytes([1]) + struct.pack("<I", 1)


def timeout(m):
    return bytes([6, m])


def engine_seeds():
    MASQ, DNAT, BOTH, PLAIN, V6 = 0, 4, 8, 12, 16
    # masquerade: PORT rewritten, server's data SYN to the watched address
    write("engine", "01-masq-port", engine_policy() + handshake(MASQ)
          + ctl(2, MASQ, True, toks=["220"]) + ctl(2, MASQ, toks=["USER"]) + ctl(2, MASQ, True, toks=["200"])
          + ctl(2, MASQ, toks=["PORT_C"]) + ctl(2, MASQ, True, toks=["200"]) + watched_syn(0) + timeout(1))
    # DNAT: PASV / 227 and EPSV / 229 rewritten, client's data SYN
    write("engine", "02-dnat-pasv", engine_policy(per=2) + handshake(DNAT) + ctl(2, DNAT, toks=["PASV"])
          + ctl(2, DNAT, True, toks=["227"]) + watched_syn(1) + ctl(2, DNAT, toks=["EPSV"])
          + ctl(2, DNAT, True, toks=["229"]) + watched_syn(1, 1) + timeout(1) + timeout(1))
    # a PORT split across segments (held, merged), then retransmitted
    write("engine", "03-split-port", engine_policy() + handshake(MASQ)
          + ctl(2, MASQ, toks=["PORT_SP", "ADDR_PART"]) + ctl(2, MASQ, fl=1 << 4, param=3, toks=["PORT_PART", "CRLF"])
          + ctl(2, MASQ, fl=1 << 4, param=30) + ctl(2, MASQ, True, toks=["200"]))
    # both NATs, IPv6, no NAT; session picked up mid-stream through NeedConntrack
    write("engine", "04-families", engine_policy(max_sessions=2) + ctl(0, BOTH, toks=["USER", "PORT_C"])
          + ctl(2, BOTH, True, toks=["227"]) + handshake(V6, hint=3) + ctl(2, V6, toks=["EPRT6"])
          + ctl(2, V6, True, toks=["229"]) + ctl(2, PLAIN, hint=1, toks=["PORT_PLAIN"]) + timeout(0) + timeout(1))
    # multi-line 227, AUTH TLS, FIN/RST, SACK on the post hook, raw garbage
    write("engine", "05-misc", engine_policy(flags=8, linger=0) + handshake(DNAT + 1) + ctl(2, DNAT + 1, toks=["PASV"])
          + ctl(2, DNAT + 1, True, toks=["227_MULTI", "227"]) + ctl(1, DNAT + 1, hint=0x80, param=0x1005)
          + ctl(2, DNAT + 1, toks=["AUTH"]) + ctl(2, DNAT + 1, True, toks=["234"]) + ctl(2, DNAT + 1, fl=0x04)
          + ctl(2, DNAT + 1, True, fl=0x04) + bytes([5, 0, 8]) + b"\x45\x00\x00\x08abcd" + timeout(1)
          + ctl(0, DNAT + 1, fl=0x08 | 0x30, seq=123) + timeout(1))
    # refusals: bounce, privileged port, table limits, port clash between sessions
    write("engine", "06-refusals", engine_policy(max_sessions=2, max_exp=1, flags=4) + handshake(MASQ) + handshake(MASQ + 1)
          + ctl(2, MASQ, toks=["PORT_3RD", "PORT_PRIV", "PORT_C"]) + ctl(2, MASQ + 1, toks=["PORT_C"])
          + handshake(MASQ + 2) + ctl(2, MASQ + 2, fl=2 << 4, param=5, toks=["USER"]) + timeout(1))


if __name__ == "__main__":
    packet_seeds()
    seqadj_seeds()
    session_seeds()
    engine_seeds()
