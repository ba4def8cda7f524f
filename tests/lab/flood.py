#!/usr/bin/env python3
"""Connection and packet floods for the fault and hostile-input tests, bounded in count and time.

Runs inside one of the lab's namespaces (tests/common calls it through `ip netns exec`); every
address is a lab address given on the command line.

  flood.py hold --listen IP --port P --seconds S
      (server) accept every connection and hold it open, silently, for S seconds at most; prints
      "READY" once listening and "HELD N" at the end
  flood.py open --dst IP --port P --count N --batch B --seconds S [--ready-file F]
      (client) open N TCP connections in batches of B (each batch waits for its handshakes), hold
      them S seconds at most (or until F disappears, if given), then close them; prints
      "OPENED N FAILED M"
  flood.py halfopen --dst IP --port P --count N --seconds S
      (client) N non-blocking connects whose SYNs are expected to stay unanswered; holds them S
      seconds, prints "SYN_SENT N"
  flood.py raw --dst IP --port P --count N --flags R|A [--payload BYTES] [--sport P]
      (client) N hand-made TCP segments with the given flags (R = RST, A = bare ACK), random source
      ports (or all from --sport) and sequence numbers: packets that belong to no connection;
      prints "SENT N"

The open file limit is raised for the process (root may do so) to fit the counts.
"""

import argparse
import errno
import os
import random
import resource
import select
import socket
import struct
import sys
import time


def raise_nofile(n):
    want = n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
        except (ValueError, OSError):
            # no CAP_SYS_RESOURCE (e.g. in a container): up to the hard limit only
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def cmd_hold(a):
    raise_nofile(a.max)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.listen, a.port))
    ls.listen(4096)
    ls.setblocking(False)
    print("READY", flush=True)
    held = []
    t_end = time.monotonic() + a.seconds
    while time.monotonic() < t_end and len(held) < a.max:
        r, _, _ = select.select([ls], [], [], 0.2)
        if not r:
            continue
        while len(held) < a.max:
            try:
                c, _ = ls.accept()
            except BlockingIOError:
                break
            held.append(c)
    print("HELD %d" % len(held), flush=True)
    for c in held:
        c.close()
    return 0


def cmd_open(a):
    raise_nofile(a.count)
    socks = []
    failed = 0
    t0 = time.monotonic()
    deadline = t0 + a.seconds
    left = a.count
    while left > 0 and time.monotonic() < deadline:
        batch = []
        for _ in range(min(a.batch, left)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((a.dst, a.port))
            if rc not in (0, errno.EINPROGRESS):
                failed += 1
                s.close()
                continue
            batch.append(s)
        left -= a.batch
        # wait for this batch's handshakes (bounded)
        pending = set(batch)
        until = min(deadline, time.monotonic() + a.batch_timeout)
        while pending and time.monotonic() < until:
            p = select.poll()
            for s in pending:
                p.register(s, select.POLLOUT)
            for fd, _ in p.poll(100):
                s = next(x for x in pending if x.fileno() == fd)
                pending.discard(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    socks.append(s)
                else:
                    failed += 1
                    s.close()
        for s in pending:
            failed += 1
            s.close()
    print("OPENED %d FAILED %d in %.2f s" % (len(socks), failed, time.monotonic() - t0), flush=True)
    while time.monotonic() < deadline:
        if a.ready_file and not os.path.exists(a.ready_file):
            break
        time.sleep(0.05)
    for s in socks:
        s.close()
    return 0 if socks else 1


def cmd_halfopen(a):
    raise_nofile(a.count)
    socks = []
    for _ in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((a.dst, a.port))
        socks.append(s)
    print("SYN_SENT %d" % len(socks), flush=True)
    time.sleep(a.seconds)
    for s in socks:
        s.close()
    return 0


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def cmd_raw(a):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    # the source address the kernel will put in the IP header
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((a.dst, a.port))
    src = probe.getsockname()[0]
    probe.close()
    flags = {"R": 0x04, "A": 0x10, "RA": 0x14}[a.flags]
    payload = b"x" * a.payload
    rnd = random.Random(a.seed)
    for _ in range(a.count):
        sport = a.sport or rnd.randint(1024, 65535)
        seq = rnd.getrandbits(32)
        ack = rnd.getrandbits(32) if flags & 0x10 else 0
        hdr = struct.pack("!HHIIBBHHH", sport, a.port, seq, ack, 5 << 4, flags, 1024, 0, 0)
        pseudo = socket.inet_aton(src) + socket.inet_aton(a.dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
        csum = checksum(pseudo + hdr + payload)
        hdr = hdr[:16] + struct.pack("!H", csum) + hdr[18:]
        s.sendto(hdr + payload, (a.dst, 0))
    print("SENT %d" % a.count, flush=True)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--listen", required=True)
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--seconds", type=float, default=20)
    h.add_argument("--max", type=int, default=20000)
    o = sub.add_parser("open")
    o.add_argument("--dst", required=True)
    o.add_argument("--port", type=int, required=True)
    o.add_argument("--count", type=int, required=True)
    o.add_argument("--batch", type=int, default=500)
    o.add_argument("--batch-timeout", type=float, default=5)
    o.add_argument("--seconds", type=float, default=20)
    o.add_argument("--ready-file")
    ho = sub.add_parser("halfopen")
    ho.add_argument("--dst", required=True)
    ho.add_argument("--port", type=int, required=True)
    ho.add_argument("--count", type=int, required=True)
    ho.add_argument("--seconds", type=float, default=2)
    r = sub.add_parser("raw")
    r.add_argument("--dst", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--count", type=int, required=True)
    r.add_argument("--flags", default="R")
    r.add_argument("--payload", type=int, default=0)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--sport", type=int, default=0, help="one source port for all (0: random)")
    a = p.parse_args()
    fn = {"hold": cmd_hold, "open": cmd_open, "halfopen": cmd_halfopen, "raw": cmd_raw}[a.cmd]
    return fn(a)


if __name__ == "__main__":
    sys.exit(main())
