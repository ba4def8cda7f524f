#!/usr/bin/env python3
"""Lists the elements of a hash:ip,port ipset through netlink, without the `ipset` program.

Runs inside a lab namespace (tests/common calls it through `ip netns exec`):

  ipset_list.py NAME

prints one line per element, like `ipset list` does: `ADDR,tcp:PORT timeout SECONDS`
(addresses of either family). Exit status 0 when the set exists, 1 otherwise.

The messages (linux/netfilter/ipset/ip_set.h): IPSET_CMD_LIST (7) of the NFNL_SUBSYS_IPSET (6)
subsystem, as a dump, with IPSET_ATTR_PROTOCOL (7) and IPSET_ATTR_SETNAME; each answer carries
the elements in IPSET_ATTR_ADT, one nested IPSET_ATTR_DATA per element.
"""

import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
IPSET_CMD_LIST = 7
IPSET_PROTOCOL = 7
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 1, 4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF

# top-level attributes
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_DATA, ATTR_ADT = 1, 2, 7, 8
# element attributes
ATTR_IP, ATTR_PORT, ATTR_TIMEOUT, ATTR_PROTO = 1, 4, 6, 7
ATTR_IPADDR_IPV4, ATTR_IPADDR_IPV6 = 1, 2


def nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def attrs(buf):
    out = []
    i = 0
    while i + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, i)
        if n < 4:
            break
        out.append((kind & NLA_TYPE_MASK, buf[i + 4:i + n]))
        i += (n + 3) & ~3
    return out


def element(data):
    addr = port = proto = timeout = None
    for kind, val in attrs(data):
        if kind == ATTR_IP:
            for k2, v2 in attrs(val):
                if k2 == ATTR_IPADDR_IPV4:
                    addr = socket.inet_ntop(socket.AF_INET, v2[:4])
                elif k2 == ATTR_IPADDR_IPV6:
                    addr = socket.inet_ntop(socket.AF_INET6, v2[:16])
        elif kind == ATTR_PORT:
            port = struct.unpack("!H", val[:2])[0]
        elif kind == ATTR_PROTO:
            proto = val[0]
        elif kind == ATTR_TIMEOUT:
            timeout = struct.unpack("!I", val[:4])[0]
    name = {6: "tcp", 17: "udp"}.get(proto, str(proto))
    line = "%s,%s:%s" % (addr, name, port)
    if timeout is not None:
        line += " timeout %d" % timeout
    return line


def main():
    if len(sys.argv) != 2:
        print("usage: ipset_list.py NAME", file=sys.stderr)
        return 2
    name = sys.argv[1].encode() + b"\0"
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    s.settimeout(5)
    body = struct.pack("!BBH", socket.AF_INET, 0, 0)
    body += nla(ATTR_PROTOCOL, bytes([IPSET_PROTOCOL])) + nla(ATTR_SETNAME, name)
    hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_LIST,
                      NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, 1, 0)
    s.send(hdr + body)
    lines = []
    while True:
        buf = s.recv(1 << 20)
        i = 0
        while i + 16 <= len(buf):
            n, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, i)
            if n < 16:
                break
            msg = buf[i + 16:i + n]
            i += (n + 3) & ~3
            if kind == NLMSG_DONE:
                for ln in lines:
                    print(ln)
                return 0
            if kind == NLMSG_ERROR:
                err = struct.unpack_from("=i", msg)[0]
                if err == 0:
                    continue
                print("ipset_list.py: %s: error %d" % (sys.argv[1], -err), file=sys.stderr)
                return 1
            for kind2, val in attrs(msg[4:]):
                if kind2 == ATTR_ADT:
                    for k3, v3 in attrs(val):
                        if k3 == ATTR_DATA:
                            lines.append(element(v3))


if __name__ == "__main__":
    sys.exit(main())
