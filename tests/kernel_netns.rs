//! Kernel integration tests of the I/O modules: ipset, ctnetlink, nfqueue and rules.
//!
//! They need root (CAP_NET_ADMIN and CAP_SYS_ADMIN, to create network namespaces) and the
//! `ip`, `iptables`, `ip6tables`, `ipset` and `python3` programs. Without root they fail with a
//! message saying so; they never pass silently.
//!
//! Each test builds its own network namespaces, named after the test and the process id, and
//! deletes them in a `Drop` guard, also when the test panics. Traffic stays between these
//! namespaces (TEST-NET addresses 192.0.2.0/24 and 203.0.113.0/24, and 2001:db8::/32).
//! Kernel-facing code runs in a thread moved into a namespace with `setns(2)` (sockets keep the
//! namespace they were created in); commands run with `ip netns exec`.
//!
//! Topology of the NAT tests (`Topo`):
//! ```text
//!   client (C)                gateway (G)                         server (S)
//!   eth0 192.0.2.2/24  ---  gc 192.0.2.1/24   gs 203.0.113.1/24  ---  eth0 203.0.113.2/24
//!        2001:db8:1::2/64       2001:db8:1::1/64  2001:db8:2::1/64      2001:db8:2::2/64
//! ```
//! G forwards with policy DROP, `ESTABLISHED,RELATED -j ACCEPT`, `INVALID -j DROP`, accepts new
//! connections from C, MASQUERADEs IPv4 out of `gs` and routes IPv6 without NAT.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ftpct::ctnetlink::{status, CtError, Ctnetlink};
use ftpct::ipset::{Ipset, IpsetError, SetFamily};
use ftpct::nfqueue::{NfQueue, Packet, QueueError, QueueOptions};
use ftpct::rules::{self, RuleSpec};
use ftpct::types::{FlowTuple, Hook, RelatedEntry};

#[path = "common/netns.rs"]
mod netns;
use netns::{require_root, run_cmd, Netns};

// ---------------------------------------------------------------------------------------------
// Harness

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Client, NAT gateway and server namespaces (see the file doc).
struct Topo {
    c: Netns,
    g: Netns,
    s: Netns,
}

const C4: &str = "192.0.2.2";
const G4_PUB: &str = "203.0.113.1";
const S4: &str = "203.0.113.2";
const C6: &str = "2001:db8:1::2";
const S6: &str = "2001:db8:2::2";

impl Topo {
    fn new(tag: &str) -> Topo {
        let t = Topo {
            c: Netns::new(&format!("{tag}-c")),
            g: Netns::new(&format!("{tag}-g")),
            s: Netns::new(&format!("{tag}-s")),
        };
        let (c, g, s) = (&t.c.name, &t.g.name, &t.s.name);
        for (a, an, b, bn) in [(c, "eth0", g, "gc"), (s, "eth0", g, "gs")] {
            let out = run_cmd(
                "ip",
                &[
                    "link", "add", an, "netns", a, "type", "veth", "peer", "name", bn, "netns", b,
                ],
            );
            assert!(
                out.status.success(),
                "veth: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        t.c.shw("ip addr add 192.0.2.2/24 dev eth0");
        t.c.shw("ip addr add 2001:db8:1::2/64 dev eth0 nodad");
        t.c.shw("ip link set eth0 up");
        t.c.shw("ip route add default via 192.0.2.1");
        t.c.shw("ip -6 route add default via 2001:db8:1::1");
        t.s.shw("ip addr add 203.0.113.2/24 dev eth0");
        t.s.shw("ip addr add 2001:db8:2::2/64 dev eth0 nodad");
        t.s.shw("ip link set eth0 up");
        // IPv4: the server knows only the public side (NAT). IPv6: routed, no NAT.
        t.s.shw("ip -6 route add 2001:db8:1::/64 via 2001:db8:2::1");
        t.g.shw("ip addr add 192.0.2.1/24 dev gc");
        t.g.shw("ip addr add 2001:db8:1::1/64 dev gc nodad");
        t.g.shw("ip addr add 203.0.113.1/24 dev gs");
        t.g.shw("ip addr add 2001:db8:2::1/64 dev gs nodad");
        t.g.shw("ip link set gc up");
        t.g.shw("ip link set gs up");
        t.g.shw("sysctl -qw net.ipv4.ip_forward=1");
        t.g.shw("sysctl -qw net.ipv6.conf.all.forwarding=1");
        for ipt in ["iptables", "ip6tables"] {
            t.g.shw(&format!("{ipt} -w -P FORWARD DROP"));
            // Counts RELATED packets (no target), then the stock rules.
            t.g.shw(&format!(
                "{ipt} -w -A FORWARD -m conntrack --ctstate RELATED"
            ));
            t.g.shw(&format!(
                "{ipt} -w -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
            ));
            t.g.shw(&format!(
                "{ipt} -w -A FORWARD -m conntrack --ctstate INVALID -j DROP"
            ));
            t.g.shw(&format!("{ipt} -w -A FORWARD -i gc -o gs -j ACCEPT"));
        }
        t.g.shw("iptables -w -t nat -A POSTROUTING -o gs -j MASQUERADE");
        t
    }

    /// Packets counted by G's `--ctstate RELATED` counting rule.
    fn related_packets(&self, ipt: &str) -> u64 {
        let out = self.g.sh(&[ipt, "-w", "-n", "-v", "-x", "-L", "FORWARD"]);
        for line in out.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // pkts bytes target? prot opt in out source destination ...: the counting rule has
            // no target, so "ctstate RELATED" ends the line.
            if line.trim_end().ends_with("ctstate RELATED") {
                return cols[0].parse().unwrap();
            }
        }
        panic!("no RELATED counting rule in\n{out}");
    }
}

/// Accepts one connection within `timeout`.
fn accept_within(l: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).unwrap();
                return Some((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > end {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// In namespace `ns`, connects from `src` (fixed port) to `dst` with python3, sends `msg`,
/// and returns what the peer answered, or the error text.
fn python_connect(
    ns: &Netns,
    src: SocketAddr,
    dst: SocketAddr,
    msg: &str,
) -> Result<String, String> {
    let fam = if src.is_ipv4() { "AF_INET" } else { "AF_INET6" };
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.{fam}, socket.SOCK_STREAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{}', {}))\n\
         s.settimeout(3)\n\
         s.connect(('{}', {}))\n\
         s.sendall(b'{msg}')\n\
         print(s.recv(100).decode(), end='')\n",
        src.ip(),
        src.port(),
        dst.ip(),
        dst.port()
    );
    let out = ns.exec(&["python3", "-c", &script]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// ipset

#[test]
fn ipset_create_add_test_del_v4_v6() {
    require_root("kernel_netns");
    let ns = Netns::new("ipset");
    let v4 = sa("192.0.2.10:40000");
    let v6 = sa("[2001:db8::10]:40001");
    ns.run(|| {
        let mut s = Ipset::open().unwrap();
        let (min, max) = s.protocol().unwrap();
        assert!(min <= 7 && max >= 7, "kernel ipset protocol {min}..{max}");
        s.create_hash_ip_port("ftpct4", SetFamily::V4, 120, 1 << 20)
            .unwrap();
        // Idempotent.
        s.create_hash_ip_port("ftpct4", SetFamily::V4, 120, 1 << 20)
            .unwrap();
        s.create_hash_ip_port("ftpct6", SetFamily::V6, 120, 1 << 20)
            .unwrap();
        s.add("ftpct4", v4, 60).unwrap();
        s.add("ftpct6", v6, 60).unwrap();
        assert!(s.test("ftpct4", v4).unwrap());
        assert!(s.test("ftpct6", v6).unwrap());
        assert!(!s.test("ftpct4", sa("192.0.2.10:40001")).unwrap());
        assert!(!s.test("ftpct6", sa("[2001:db8::11]:40001")).unwrap());
        // Re-adding replaces: the timeout restarts at the new value.
        s.add("ftpct4", v4, 3000).unwrap();
    });
    let l4 = ns.sh(&["ipset", "list", "ftpct4"]);
    let l6 = ns.sh(&["ipset", "list", "ftpct6"]);
    assert!(l4.contains("Type: hash:ip,port"), "{l4}");
    assert!(l4.contains("family inet "), "{l4}");
    assert!(l6.contains("family inet6 "), "{l6}");
    let line4 = l4
        .lines()
        .find(|l| l.starts_with("192.0.2.10,tcp:40000 timeout "))
        .unwrap_or_else(|| panic!("element missing:\n{l4}"));
    let left: u32 = line4.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(left > 2900, "timeout not replaced: {line4}");
    assert!(l6.contains("2001:db8::10,tcp:40001 timeout "), "{l6}");

    ns.sh(&["ipset", "create", "other", "hash:ip"]);
    ns.run(|| {
        let mut s = Ipset::open().unwrap();
        s.del("ftpct4", v4).unwrap();
        s.del("ftpct4", v4).unwrap(); // missing is fine
        s.del("ftpct6", v6).unwrap();
        assert!(!s.test("ftpct4", v4).unwrap());
        assert!(!s.test("ftpct6", v6).unwrap());
        s.add("ftpct4", v4, 60).unwrap();
        s.flush("ftpct4").unwrap();
        assert!(!s.test("ftpct4", v4).unwrap());
        let e = s
            .create_hash_ip_port("other", SetFamily::V4, 120, 1 << 20)
            .unwrap_err();
        assert!(matches!(e, IpsetError::SetConflict(_)), "{e}");
        let e = s.add("nosuchset", v4, 10).unwrap_err();
        assert!(matches!(e, IpsetError::SetNotFound(_)), "{e}");
        let e = s.add("ftpct4", v6, 10).unwrap_err();
        assert!(matches!(e, IpsetError::FamilyMismatch(_)), "{e}");
        s.destroy("ftpct4").unwrap();
        s.destroy("ftpct4").unwrap(); // missing is fine
        s.destroy("ftpct6").unwrap();
    });
    let out = ns.exec(&["ipset", "list", "ftpct4"]);
    assert!(!out.status.success(), "ftpct4 still exists after destroy");
}

// ---------------------------------------------------------------------------------------------
// ctnetlink

#[test]
fn ctnetlink_get_finds_both_directions_and_the_nat() {
    require_root("kernel_netns");
    let t = Topo::new("ctget");
    let l4 = t.s.run(|| TcpListener::bind((S4, 2121)).unwrap());
    let l6 = t.s.run(|| TcpListener::bind((S6, 2121)).unwrap());
    let c4 = t.c.run(|| TcpStream::connect((S4, 2121)).unwrap());
    let c6 = t.c.run(|| TcpStream::connect((S6, 2121)).unwrap());
    let (_s4, peer4) = accept_within(&l4, Duration::from_secs(3)).expect("v4 accept");
    let (_s6, peer6) = accept_within(&l6, Duration::from_secs(3)).expect("v6 accept");
    let orig4 = FlowTuple::new(c4.local_addr().unwrap(), sa(&format!("{S4}:2121")));
    let orig6 = FlowTuple::new(c6.local_addr().unwrap(), sa(&format!("[{S6}]:2121")));
    assert_eq!(orig4.src.ip(), C4.parse::<IpAddr>().unwrap());
    assert_eq!(peer4.ip(), G4_PUB.parse::<IpAddr>().unwrap(), "MASQUERADE");
    assert_eq!(peer6, orig6.src, "IPv6 is routed without NAT");

    t.g.run(|| {
        let mut ct = Ctnetlink::open().unwrap();
        // IPv4, client → server packet (original direction).
        let a = ct.get(&orig4).unwrap().expect("entry of the v4 connection");
        assert_eq!(a.original, orig4);
        assert_eq!(a.reply, FlowTuple::new(orig4.dst, peer4));
        assert!(a.is_src_nat() && !a.is_dst_nat());
        // Server → gateway public address (reply direction, as it arrives at G).
        let b = ct
            .get(&FlowTuple::new(orig4.dst, peer4))
            .unwrap()
            .expect("reply lookup");
        assert_eq!(a, b);
        // A single lookup finds the entry by either of its tuples, whatever attribute carries
        // it...
        let by_reply = ct
            .lookup(&FlowTuple::new(orig4.dst, peer4))
            .unwrap()
            .unwrap();
        assert_eq!(by_reply.tuples, a);
        // ...but a reply packet after de-SNAT (server → private client, as mangle POSTROUTING
        // sees it) carries neither tuple; `get` finds it through the inverse.
        assert_eq!(ct.lookup(&orig4.inverse()).unwrap(), None);
        assert_eq!(ct.get(&orig4.inverse()).unwrap(), Some(a));
        let e = ct.get_entry(&orig4).unwrap().unwrap();
        assert_ne!(e.status & status::IPS_SRC_NAT, 0);
        assert_ne!(e.status & status::IPS_CONFIRMED, 0);
        assert_eq!(e.tcp_state, Some(3), "TCP_CONNTRACK_ESTABLISHED");

        // IPv6, untranslated, both directions.
        let a6 = ct.get(&orig6).unwrap().expect("entry of the v6 connection");
        assert_eq!(a6.original, orig6);
        assert_eq!(a6.reply, orig6.inverse());
        assert!(!a6.is_src_nat() && !a6.is_dst_nat());
        assert_eq!(ct.get(&orig6.inverse()).unwrap(), Some(a6));

        // Marking the control connection (seqadj_mark): only the given bits change.
        let mark0 = ct.get_entry(&orig4).unwrap().unwrap().mark;
        assert!(ct.set_mark_bits(&orig4, 0x0010_0000).unwrap());
        assert_eq!(
            ct.get_entry(&orig4).unwrap().unwrap().mark,
            mark0 | 0x0010_0000
        );
        assert!(ct.set_mark_bits(&orig4, 0x0000_0003).unwrap());
        assert!(ct.set_mark_bits(&orig4, 0x0010_0000).unwrap(), "idempotent");
        assert_eq!(
            ct.get_entry(&orig4).unwrap().unwrap().mark,
            mark0 | 0x0010_0003
        );

        // Unknown connection.
        assert_eq!(
            ct.get(&FlowTuple::new(sa("192.0.2.2:1"), sa("203.0.113.2:2")))
                .unwrap(),
            None
        );
        assert!(!ct
            .set_mark_bits(&FlowTuple::new(sa("192.0.2.2:1"), sa("203.0.113.2:2")), 1)
            .unwrap());
        assert!(ct.dump_count().unwrap() >= 2);
    });
    drop((c4, c6));
}

/// One data connection admitted by `create_related`; no NAT = IPv6 without NAT.
fn data_connection_through_gateway(t: &Topo, v6: bool) {
    let (s_ip, c_ip, data_dst) = if v6 {
        (S6, C6, sa(&format!("[{C6}]:40000")))
    } else {
        (S4, C4, sa(&format!("{G4_PUB}:50000")))
    };
    let ipt = if v6 { "ip6tables" } else { "iptables" };
    let fmt = |ip: &str, port: u16| -> SocketAddr { SocketAddr::new(ip.parse().unwrap(), port) };
    // Control connection (the master): client → server port 21.
    let ctl_l = t.s.run(|| TcpListener::bind(fmt(s_ip, 21)).unwrap());
    let ctl_c = t.c.run(|| TcpStream::connect(fmt(s_ip, 21)).unwrap());
    let (_ctl_s, _) = accept_within(&ctl_l, Duration::from_secs(3)).expect("control accept");
    let master = FlowTuple::new(ctl_c.local_addr().unwrap(), fmt(s_ip, 21));
    // The client's data listener.
    let data_l = t.c.run(|| TcpListener::bind(fmt(c_ip, 40000)).unwrap());

    // Without an entry the connection does not reach the client.
    let before = t.related_packets(ipt);
    let r = python_connect(&t.s, fmt(s_ip, 2019), data_dst, "no-entry");
    assert!(r.is_err(), "connection without entry succeeded: {r:?}");
    assert!(accept_within(&data_l, Duration::from_millis(200)).is_none());

    let entry = RelatedEntry {
        original: FlowTuple::new(fmt(s_ip, 2020), data_dst),
        // As the engine asks for it (nf_nat_follow_master): source kept, destination DNATed.
        nat_src: if v6 {
            None
        } else {
            Some(s_ip.parse().unwrap())
        },
        nat_dst: if v6 { None } else { Some(fmt(c_ip, 40000)) },
        master,
        mark: 0x4654,
        timeout_secs: 30,
    };
    t.g.run(|| {
        let mut ct = Ctnetlink::open().unwrap();
        ct.create_related(&entry).unwrap();
        let e = ct.create_related(&entry).unwrap_err();
        assert!(e.is_already_exists(), "{e}");
        // Stale master.
        let mut stale = entry;
        stale.original.src.set_port(2021);
        stale.master.src.set_port(1);
        let e = ct.create_related(&stale).unwrap_err();
        assert!(matches!(e, CtError::MasterNotFound(_)), "{e}");

        let got = ct
            .get_entry(&entry.original)
            .unwrap()
            .expect("created entry");
        assert_eq!(got.tuples.original, entry.original);
        assert_eq!(got.mark, 0x4654);
        assert_ne!(
            got.status & status::IPS_EXPECTED,
            0,
            "status {:#x}",
            got.status
        );
        match entry.nat_dst {
            Some(to) => {
                assert_ne!(
                    got.status & status::IPS_DST_NAT,
                    0,
                    "status {:#x}",
                    got.status
                );
                // The kernel rewrote the reply tuple to the NAT target.
                assert_eq!(got.tuples.reply.src, to);
                assert!(got.tuples.is_dst_nat());
                // The SYN after DNAT (server → private client) is found too.
                let mid = FlowTuple::new(entry.original.src, to);
                assert_eq!(got.tuples.mid(), mid);
                assert_eq!(ct.get(&mid).unwrap(), Some(got.tuples));
            }
            None => assert_eq!(got.tuples.reply, entry.original.inverse()),
        }
        assert!(got.timeout_secs <= 30 && got.timeout_secs > 0);
    });

    // The data connection: server → data_dst, admitted RELATED and delivered to the client.
    let data_c = {
        let l = &data_l;
        std::thread::scope(|sc| {
            let h = sc.spawn(move || {
                let (mut s, peer) = accept_within(l, Duration::from_secs(5)).expect("data accept");
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).unwrap();
                s.write_all(b"ok-from-client").unwrap();
                (peer, String::from_utf8_lossy(&buf[..n]).into_owned())
            });
            let answer = python_connect(&t.s, fmt(s_ip, 2020), data_dst, "data-through-alg");
            let (peer, got) = h.join().unwrap();
            assert_eq!(answer.as_deref(), Ok("ok-from-client"));
            (peer, got)
        })
    };
    assert_eq!(
        data_c.0,
        fmt(s_ip, 2020),
        "the client sees the server's real address"
    );
    assert_eq!(data_c.1, "data-through-alg");
    let after = t.related_packets(ipt);
    assert!(
        after > before,
        "no packet classified RELATED ({before} → {after})"
    );
    t.g.run(|| {
        let mut ct = Ctnetlink::open().unwrap();
        let e = ct.get_entry(&entry.original).unwrap().expect("data entry");
        assert_ne!(e.status & status::IPS_SEEN_REPLY, 0);
        assert!(ct.delete(&entry.original).unwrap());
        assert!(!ct.delete(&entry.original).unwrap());
    });
    drop(ctl_c);
}

#[test]
fn ctnetlink_create_related_admits_and_nats_the_data_connection_v4() {
    require_root("kernel_netns");
    let t = Topo::new("ctnew4");
    // The nat PREROUTING base chain (rules group (d)); without it the DNAT is never applied.
    t.g.shw("iptables -w -t nat -A PREROUTING -m comment --comment ftpct");
    data_connection_through_gateway(&t, false);
}

#[test]
fn ctnetlink_create_related_admits_the_data_connection_v6_without_nat() {
    require_root("kernel_netns");
    let t = Topo::new("ctnew6");
    data_connection_through_gateway(&t, true);
}

// ---------------------------------------------------------------------------------------------
// nfqueue

fn recv_within(q: &mut NfQueue, timeout: Duration) -> Option<Packet> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(p) = q.recv().unwrap() {
            return Some(p);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ipv4_header_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, c) in h.chunks(2).enumerate() {
        if i == 5 {
            continue; // the checksum field itself
        }
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Replaces the UDP payload of an IPv4 packet (no IP options), with UDP checksum 0.
fn udp4_with_payload(pkt: &[u8], data: &[u8]) -> Vec<u8> {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let mut out = pkt[..ihl + 8].to_vec();
    out.extend_from_slice(data);
    let total = out.len() as u16;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    let udp_len = (8 + data.len()) as u16;
    out[ihl + 4..ihl + 6].copy_from_slice(&udp_len.to_be_bytes());
    out[ihl + 6..ihl + 8].copy_from_slice(&[0, 0]);
    let c = ipv4_header_checksum(&out[..ihl]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out
}

/// The queue socket found by `NfQueue::open` is the one the kernel has bound to the queue:
/// its port id is the queue's peer in /proc/net/netfilter/nfnetlink_queue.
fn queue_peer_portid(queue: u16) -> Option<u32> {
    let t = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()?;
    t.lines().find_map(|l| {
        let c: Vec<&str> = l.split_whitespace().collect();
        (c.first()?.parse::<u16>().ok()? == queue).then(|| c.get(1)?.parse().ok())?
    })
}

#[test]
fn nfqueue_accept_modify_drop_udp() {
    require_root("kernel_netns");
    let ns = Netns::new("nfq");
    ns.shw("iptables -w -t raw -A OUTPUT -p udp --dport 5000 -j NFQUEUE --queue-num 3");
    ns.run(|| {
        let mut q = NfQueue::open(3, QueueOptions::default()).unwrap();
        let addr: nix::sys::socket::NetlinkAddr =
            nix::sys::socket::getsockname(q.as_raw_fd()).unwrap();
        assert_eq!(
            Some(addr.pid()),
            queue_peer_portid(3),
            "as_raw_fd is the queue socket"
        );

        let rx = UdpSocket::bind("127.0.0.1:5000").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 128];

        // Accept unchanged.
        tx.send_to(b"hello", "127.0.0.1:5000").unwrap();
        let p = recv_within(&mut q, Duration::from_secs(2)).expect("queued packet");
        let b = p.payload();
        assert_eq!(b[0] >> 4, 4, "payload starts at the IPv4 header");
        assert_eq!(b[9], 17, "UDP");
        assert!(b.ends_with(b"hello"));
        assert_eq!(p.raw_hook(), 3, "NF_INET_LOCAL_OUT");
        assert_eq!(p.hook(), Some(Hook::PreConntrack));
        assert!(p.checksum_ready());
        q.verdict_accept(p).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");

        // Same-length rewrite.
        tx.send_to(b"hello", "127.0.0.1:5000").unwrap();
        let p = recv_within(&mut q, Duration::from_secs(2)).expect("queued packet");
        let new = udp4_with_payload(p.payload(), b"HELLO");
        q.verdict_accept_modified(p, &new).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"HELLO");

        // Longer rewrite.
        tx.send_to(b"hello", "127.0.0.1:5000").unwrap();
        let p = recv_within(&mut q, Duration::from_secs(2)).expect("queued packet");
        let new = udp4_with_payload(p.payload(), b"hello, longer world");
        q.verdict_accept_modified(p, &new).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello, longer world");

        // Drop.
        tx.send_to(b"drop me", "127.0.0.1:5000").unwrap();
        let p = recv_within(&mut q, Duration::from_secs(2)).expect("queued packet");
        q.verdict_drop(p).unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert!(rx.recv(&mut buf).is_err(), "dropped packet was delivered");
        assert!(q.recv().unwrap().is_none());
    });
}

/// A socket receive buffer overflow is reported as the non-fatal `Overrun`, and the queue keeps
/// working after it.
#[test]
fn nfqueue_overrun_is_reported_and_not_fatal() {
    require_root("kernel_netns");
    let ns = Netns::new("nfqovr");
    ns.shw("iptables -w -t raw -A OUTPUT -p udp --dport 5001 -j NFQUEUE --queue-num 4");
    ns.run(|| {
        let opts = QueueOptions {
            rcvbuf: 1, // the kernel rounds it up to its minimum, a few KiB
            ..QueueOptions::default()
        };
        let mut q = NfQueue::open(4, opts).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..100 {
            let _ = tx.send_to(&[0u8; 1200], "127.0.0.1:5001");
        }
        let (mut overruns, mut got) = (0, 0);
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            match q.recv() {
                Ok(Some(p)) => {
                    got += 1;
                    q.verdict_drop(p).unwrap();
                }
                Ok(None) if got + overruns > 0 => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e @ QueueError::Overrun) => {
                    assert!(!e.is_fatal());
                    overruns += 1;
                }
                Err(e) => panic!("unexpected queue error: {e}"),
            }
        }
        assert!(
            overruns >= 1,
            "no overrun reported ({got} packets received)"
        );
        assert!((1..100).contains(&got), "{got} packets received");
        tx.send_to(b"after overrun", "127.0.0.1:5001").unwrap();
        let p = recv_within(&mut q, Duration::from_secs(2)).expect("queue works after overrun");
        assert!(p.payload().ends_with(b"after overrun"));
        q.verdict_drop(p).unwrap();
    });
}

/// Rules groups (c) + ipset + nfqueue together: a SYN to an address,port in the set is queued
/// in raw PREROUTING before conntrack; one not in the set is not.
#[test]
fn nfqueue_data_syn_selected_by_ipset_rule() {
    require_root("kernel_netns");
    let a = Netns::new("syn-a");
    let b = Netns::new("syn-b");
    let out = run_cmd(
        "ip",
        &[
            "link", "add", "eth0", "netns", &a.name, "type", "veth", "peer", "name", "eth0",
            "netns", &b.name,
        ],
    );
    assert!(
        out.status.success(),
        "veth: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.shw("ip addr add 192.0.2.1/24 dev eth0");
    a.shw("ip link set eth0 up");
    b.shw("ip addr add 192.0.2.2/24 dev eth0");
    b.shw("ip link set eth0 up");
    let spec = RuleSpec {
        queue: 5,
        bypass: true,
        ..RuleSpec::default()
    };
    let (l1, l2) = b.run(|| {
        rules::apply(&spec).unwrap();
        let mut s = Ipset::open().unwrap();
        s.add(&spec.set4, sa("192.0.2.2:7000"), 60).unwrap();
        (
            TcpListener::bind("192.0.2.2:7000").unwrap(),
            TcpListener::bind("192.0.2.2:7001").unwrap(),
        )
    });
    for gso in [false, true] {
        b.run(|| {
            let mut q = NfQueue::open(
                5,
                QueueOptions {
                    gso,
                    ..QueueOptions::default()
                },
            )
            .unwrap();
            std::thread::scope(|sc| {
                let conn = sc.spawn(|| a.run(|| TcpStream::connect("192.0.2.2:7000")));
                let p = recv_within(&mut q, Duration::from_secs(3)).expect("SYN queued");
                let pl = p.payload();
                assert_eq!(pl[9], 6, "TCP");
                let ihl = usize::from(pl[0] & 0x0f) * 4;
                assert_eq!(u16::from_be_bytes([pl[ihl + 2], pl[ihl + 3]]), 7000);
                assert_eq!(pl[ihl + 13] & 0x12, 0x02, "a pure SYN");
                assert_eq!(p.raw_hook(), 0, "NF_INET_PRE_ROUTING");
                assert_eq!(p.hook(), Some(Hook::PreConntrack));
                eprintln!(
                    "nfqueue over veth, gso={gso}: checksum_ready={} (TCP checksum {})",
                    p.checksum_ready(),
                    if tcp4_checksum_ok(pl) {
                        "complete"
                    } else {
                        "partial"
                    }
                );
                if !gso {
                    assert!(p.checksum_ready());
                }
                if p.checksum_ready() {
                    assert!(tcp4_checksum_ok(pl), "checksum_ready but checksum invalid");
                }
                q.verdict_accept(p).unwrap();
                let s = conn.join().unwrap().expect("connection after accept");
                drop(s);
                let _ = accept_within(&l1, Duration::from_secs(1)).expect("accepted");
            });
            // Not in the set: not queued, connects directly.
            let s = a.run(|| TcpStream::connect("192.0.2.2:7001")).unwrap();
            drop(s);
            let _ = accept_within(&l2, Duration::from_secs(1)).expect("accepted");
            assert!(
                q.recv().unwrap().is_none(),
                "a SYN outside the set was queued"
            );
        });
    }
    b.run(|| {
        assert_eq!(rules::delete(&spec).unwrap(), 20);
    });
}

fn tcp4_checksum_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let seg = &p[ihl..total];
    let mut sum = 0u32;
    for c in p[12..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    sum += 6 + seg.len() as u32;
    for c in seg.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

// ---------------------------------------------------------------------------------------------
// rules

#[test]
fn rules_apply_is_idempotent_and_delete_removes_exactly_ours() {
    require_root("kernel_netns");
    let ns = Netns::new("rules");
    // The admin's own rules, which must survive.
    ns.shw("iptables -w -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT");
    ns.shw("iptables -w -t raw -A PREROUTING -p tcp --dport 21 -j ACCEPT");
    ns.shw("ip6tables -w -t nat -A PREROUTING -p tcp --dport 8080 -j REDIRECT --to-ports 80");
    let spec = RuleSpec::default();
    let expected = rules::rules(&spec).unwrap();
    ns.run(|| {
        assert_eq!(rules::apply(&spec).unwrap(), expected.len());
        assert_eq!(rules::apply(&spec).unwrap(), 0, "second apply added rules");
    });
    let save4 = ns.sh(&["iptables-save"]);
    let save6 = ns.sh(&["ip6tables-save"]);
    let ours = |s: &str| s.lines().filter(|l| l.contains("--comment ftpct")).count();
    assert_eq!(
        ours(&save4) + ours(&save6),
        expected.len(),
        "{save4}\n{save6}"
    );
    assert!(
        save4.contains("-A PREROUTING -m comment --comment ftpct"),
        "{save4}"
    );
    assert!(save4.contains("--match-set ftpct4 dst,dst"), "{save4}");
    assert!(save6.contains("--match-set ftpct6 dst,dst"), "{save6}");
    assert!(
        save4.contains("-A OUTPUT -p tcp -m multiport --sports 21"),
        "{save4}"
    );
    assert!(ns.sh(&["ipset", "list", "-n"]).contains("ftpct6"));

    ns.run(|| {
        assert_eq!(rules::delete(&spec).unwrap(), expected.len());
        assert_eq!(rules::delete(&spec).unwrap(), 0);
    });
    let save4 = ns.sh(&["iptables-save"]);
    let save6 = ns.sh(&["ip6tables-save"]);
    assert_eq!(ours(&save4) + ours(&save6), 0, "{save4}\n{save6}");
    assert!(
        save4.contains("--ctstate RELATED,ESTABLISHED -j ACCEPT"),
        "{save4}"
    );
    assert!(
        save4.contains("-A PREROUTING -p tcp -m tcp --dport 21 -j ACCEPT"),
        "{save4}"
    );
    assert!(save6.contains("REDIRECT --to-ports 80"), "{save6}");
    assert!(!ns.sh(&["ipset", "list", "-n"]).contains("ftpct"));
    let _ = Ipv4Addr::LOCALHOST;
}
