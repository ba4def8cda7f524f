#!/usr/bin/env python3
"""Spoofed TCP segments for the anti-spoofing tests (tests/spoof.rs), and two small probes.

No dependency beyond Python's standard library: the segments are built by hand (IPv4 and TCP
headers, TCP checksum over the pseudo-header) and sent through a raw socket (IPPROTO_RAW, which
implies IP_HDRINCL: the kernel sends the header as given, with any source address, and fills in
only the IP header checksum and, if zero, the IP id). Runs as root in the lab's attacker
namespace (`lab.sh attacker`), which routes everything to the gateway.

  spoof.py tcp --src IP:PORT --dst IP:PORT --flags FLAGS [--seq N|random] [--ack N|random]
               [--window N] [--payload TEXT] [--spray N] [--copies K] [--gap-ms MS]

      FLAGS: letters of S (SYN) A (ACK) R (RST) P (PSH) F (FIN) U (URG), e.g. SA, R, PA.
      TEXT may use \\r, \\n and \\xHH escapes. --seq and --ack default to random.
      --spray N: N sequence numbers spread evenly over the whole 32-bit space from a random base
      (base + k * 2^32 / N): a blind attacker's way to have one of them land ahead of the real
      stream by less than 2^32 / N, whatever the real sequence number is.
      --seq-list N,N,...: these sequence numbers instead (e.g. next to a sniffed one).
      --copies K: each segment sent K times in a row (default 1).
      Prints one line per sequence number and a last line "SENT <count>".

  spoof.py sniff --iface IF --sport P --out FILE [--seconds S]
      Watches IF (AF_PACKET) for IPv4 TCP segments with source port P that carry data and keeps
      in FILE (rewritten each time) the line "NEXT <seq + length>" of the last one: the next
      sequence number of that sender, as an on-path observer learns it. Prints READY first.

  spoof.py listen --port P [--addr A] [--seconds S]
      A TCP listener (prints READY, then one "ACCEPTED <peer>" line per connection, closes each).

  spoof.py connect --host H --port P [--timeout S]
      Exit 0 and "CONNECTED" if a TCP connection to H:P is established within S seconds (default
      2), else exit 1 and "NOT CONNECTED: <reason>".

Only addresses of the lab's own namespaces are ever given to it by the tests.
"""

import argparse
import codecs
import os
import random
import socket
import struct
import sys
import time

FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20}


def endpoint(s):
    host, _, port = s.rpartition(":")
    return socket.inet_aton(host), host, int(port)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def segment(src, dst, sport, dport, seq, ack, flags, window, payload):
    """One IPv4 packet carrying one TCP segment, checksums valid."""
    tcp_len = 20 + len(payload)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, tcp_len)
    csum = checksum(pseudo + tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    total = 20 + tcp_len
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, random.randrange(1, 0xFFFF), 0x4000,
                     64, socket.IPPROTO_TCP, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + tcp + payload


def num(s):
    return random.getrandbits(32) if s == "random" else int(s, 0) & 0xFFFFFFFF


def cmd_tcp(a):
    src, src_s, sport = endpoint(a.src)
    dst, dst_s, dport = endpoint(a.dst)
    flags = 0
    for c in a.flags.upper():
        if c not in FLAG_BITS:
            raise SystemExit("unknown TCP flag %r (use S A R P F U)" % c)
        flags |= FLAG_BITS[c]
    payload = codecs.decode(a.payload.encode("latin-1"), "unicode_escape").encode("latin-1")
    if a.seq_list:
        seqs = [int(x, 0) & 0xFFFFFFFF for x in a.seq_list.split(",")]
    elif a.spray:
        base = num(a.seq)
        seqs = [(base + k * ((1 << 32) // a.spray)) & 0xFFFFFFFF for k in range(a.spray)]
    else:
        seqs = [num(a.seq)]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = 0
    for seq in seqs:
        ack = num(a.ack)
        pkt = segment(src, dst, sport, dport, seq, ack, flags, a.window, payload)
        for _ in range(a.copies):
            s.sendto(pkt, (dst_s, 0))
            sent += 1
            if a.gap_ms:
                time.sleep(a.gap_ms / 1000.0)
        print("%s:%d -> %s:%d flags=%s seq=%d ack=%d payload=%d bytes x%d"
              % (src_s, sport, dst_s, dport, a.flags, seq, ack, len(payload), a.copies))
    s.close()
    print("SENT %d" % sent, flush=True)
    return 0


def cmd_sniff(a):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.bind((a.iface, 0))
    s.settimeout(0.2)
    print("READY", flush=True)
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end:
        try:
            frame = s.recv(65600)
        except socket.timeout:
            continue
        if len(frame) < 14 + 40 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        if ip[9] != socket.IPPROTO_TCP or len(ip) < ihl + 20:
            continue
        tcp = ip[ihl:]
        sport, _, seq = struct.unpack("!HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        plen = total - ihl - doff
        if sport != a.sport or plen <= 0:
            continue
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            f.write("NEXT %d\n" % ((seq + plen) & 0xFFFFFFFF))
        os.replace(tmp, a.out)
    return 0


def cmd_listen(a):
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind((a.addr, a.port))
    lst.listen(8)
    lst.settimeout(0.2)
    print("READY", flush=True)
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end:
        try:
            conn, peer = lst.accept()
        except socket.timeout:
            continue
        print("ACCEPTED %s:%d" % peer, flush=True)
        conn.close()
    return 0


def cmd_connect(a):
    try:
        c = socket.create_connection((a.host, a.port), a.timeout)
    except OSError as e:
        print("NOT CONNECTED: %s" % e, flush=True)
        return 1
    print("CONNECTED %s:%d -> %s:%d" % (c.getsockname() + c.getpeername()), flush=True)
    c.close()
    return 0


def main():
    p = argparse.ArgumentParser(description="spoofed TCP segments for the ftpct lab")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tcp")
    t.add_argument("--src", required=True)
    t.add_argument("--dst", required=True)
    t.add_argument("--flags", required=True)
    t.add_argument("--seq", default="random")
    t.add_argument("--ack", default="random")
    t.add_argument("--window", type=int, default=502)
    t.add_argument("--payload", default="")
    t.add_argument("--spray", type=int, default=0)
    t.add_argument("--seq-list", default="")
    t.add_argument("--copies", type=int, default=1)
    t.add_argument("--gap-ms", type=float, default=0.0)
    ls = sub.add_parser("listen")
    ls.add_argument("--port", type=int, required=True)
    ls.add_argument("--addr", default="0.0.0.0")
    ls.add_argument("--seconds", type=float, default=60)
    sn = sub.add_parser("sniff")
    sn.add_argument("--iface", required=True)
    sn.add_argument("--sport", type=int, required=True)
    sn.add_argument("--out", required=True)
    sn.add_argument("--seconds", type=float, default=60)
    c = sub.add_parser("connect")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--timeout", type=float, default=2)
    a = p.parse_args()
    return {"tcp": cmd_tcp, "sniff": cmd_sniff, "listen": cmd_listen,
            "connect": cmd_connect}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
