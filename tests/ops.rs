//! The daemon's operator interfaces, end to end in the namespace lab: `ftpct list` and
//! `ftpct sessions` while a session waits for its data connection, `ftpct events`, the
//! Prometheus endpoint and `ftpct stats`. Needs root, like the e2e tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ftpct_bin, Alg, Lab, Topology};

/// An active-mode client that stops after the server accepted its PORT (or EPRT), until told
/// to go on (then RETRs small.txt and quits). Prints `PORT <port>` when it waits.
/// Arguments: server address, local address, `port` or `eprt`.
const HOLDING_CLIENT: &str = r#"
import ftplib, socket, sys
host, local, mode = sys.argv[1], sys.argv[2], sys.argv[3]
ftp = ftplib.FTP()
ftp.connect(host, 21, timeout=5)
ftp.login()
ls = socket.create_server((local, 0), family=socket.AF_INET6 if ":" in local else socket.AF_INET)
port = ls.getsockname()[1]
if mode == "port":
    ftp.sendcmd("PORT %s,%d,%d" % (local.replace(".", ","), port >> 8, port & 255))
else:
    ftp.sendcmd("EPRT |%d|%s|%d|" % (2 if ":" in local else 1, local, port))
print("PORT %d" % port, flush=True)
sys.stdin.readline()
ftp.voidcmd("TYPE I")
ftp.putcmd("RETR small.txt")
ftp.getresp()
conn, _ = ls.accept()
data = b""
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
conn.close()
ftp.voidresp()
ftp.quit()
print("GOT %d" % len(data), flush=True)
"#;

struct Holding {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    port: u16,
}

/// The holding client in the masq lab, with PORT.
fn start_holding_client(lab: &Lab) -> Holding {
    start_holding_client_with(lab, "port")
}

/// The holding client in `lab` (masq, dnat or v6: server and local address from `lab.sh env`)
/// with `port` or `eprt`.
fn start_holding_client_with(lab: &Lab, mode: &str) -> Holding {
    let (target, local) = (lab.env_var("TARGET"), lab.env_var("CLI_IP"));
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("cli"),
            "python3",
            "-c",
            HOLDING_CLIENT,
            &target,
            &local,
            mode,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 in the client namespace");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("client output");
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("client did not get its {mode} accepted: {line:?}"));
    Holding { child, out, port }
}

impl Holding {
    fn finish(mut self) -> String {
        let _ = self.child.stdin.as_mut().expect("stdin").write_all(b"go\n");
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        let st = self.child.wait().expect("wait");
        assert!(st.success(), "holding client failed: {st} {rest}");
        rest
    }
}

#[test]
fn list_and_sessions_show_the_waiting_expectation() {
    let test = "list_and_sessions_show_the_waiting_expectation";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    let h = start_holding_client(&lab);
    let list = lab.ftpct_cli("list");
    list.assert_ok();
    // the kernel's nf_conntrack_expect format, for the server's connection to the public address
    let want = format!(
        "l3proto = 2 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0 dport={} ftp",
        h.port
    );
    let line = list
        .stdout
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| {
            panic!(
                "[{test}] no expectation line with `{want}`:\n{}",
                list.stdout
            )
        });
    let secs: u32 = line
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .expect("seconds left first");
    assert!((290..=300).contains(&secs), "[{test}] timeout left {secs}");
    let sessions = lab.ftpct_cli("sessions");
    sessions.assert_ok();
    let s = sessions
        .stdout
        .lines()
        .find(|l| l.contains("state=open"))
        .unwrap_or_else(|| panic!("[{test}] no open session:\n{}", sessions.stdout));
    for part in [
        "client=10.77.100.102:",
        "server=203.0.113.2:21",
        "snat=203.0.113.1:",
        "rewrites=1",
        "seq_orig=offset:-2,pos:",
    ] {
        assert!(s.contains(part), "[{test}] `{part}` missing in: {s}");
    }
    let done = h.finish();
    assert!(done.contains("GOT 29"), "[{test}] {done}");
    // used: gone from the table
    let list = lab.ftpct_cli("list");
    assert!(
        !list.stdout.contains(&want),
        "[{test}] still listed after use:\n{}",
        list.stdout
    );
}

#[test]
fn events_stream_and_prometheus_metrics() {
    let test = "events_stream_and_prometheus_metrics";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.start_ftpct(&["--metrics", "127.0.0.1:9477"]);
    let sock = lab.ftpct_socket();
    let mut events = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("gw"),
            &ftpct_bin(),
            "events",
            "--socket",
        ])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ftpct events");
    std::thread::sleep(Duration::from_millis(200));
    lab.many("active", 3).assert_ok();
    // read what the stream printed, then stop it
    let out = events.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            lines.push(l);
        }
        lines
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = events.kill();
    let _ = events.wait();
    let lines = reader.join().expect("reader");
    let text = lines.join("\n");
    assert!(text.contains("[NEW] session S"), "[{test}] events:\n{text}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("[NEW] ")
                && l.contains("l3proto = 2 proto=6 src=203.0.113.2 dst=203.0.113.1 sport=0"))
            .count(),
        3,
        "[{test}] three expectations expected:\n{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("[USED]")).count(),
        3,
        "[{test}]\n{text}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("[REWRITE]")).count(),
        3,
        "[{test}]\n{text}"
    );

    // Prometheus: scrape from inside the gateway namespace
    let scrape = lab.exec(
        "gw",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:9477/metrics",
        ],
    );
    scrape.assert_ok();
    let m = &scrape.stdout;
    for want in [
        "ftpct_rewrites_total 3",
        "ftpct_expectations_total{event=\"used\"} 3",
        "ftpct_conntrack_created_total 3",
        "# TYPE ftpct_packet_latency_seconds histogram",
    ] {
        assert!(m.contains(want), "[{test}] `{want}` missing:\n{m}");
    }
    let notfound = lab.exec(
        "gw",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9477/",
        ],
    );
    assert_eq!(notfound.stdout.trim(), "404");
    // the same text over the control socket
    let cli = lab.ftpct_cli("metrics");
    assert!(
        cli.stdout.contains("ftpct_rewrites_total 3"),
        "[{test}] {}",
        cli.stdout
    );
    let stats = lab.ftpct_cli("stats");
    assert!(
        stats.stdout.contains("rewrites 3\n"),
        "[{test}] {}",
        stats.stdout
    );
}

#[test]
fn daemon_keeps_only_cap_net_admin_and_a_private_socket() {
    let test = "daemon_keeps_only_cap_net_admin_and_a_private_socket";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    let pid = std::fs::read_to_string(lab.state_dir().join("ftpct.pid")).expect("pid file");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // CAP_NET_ADMIN is capability 12
    assert_eq!(field("CapEff:"), "0000000000001000", "[{test}]\n{status}");
    assert_eq!(field("CapPrm:"), "0000000000001000", "[{test}]\n{status}");
    assert_eq!(field("CapBnd:"), "0000000000001000", "[{test}]\n{status}");
    assert_eq!(field("CapInh:"), "0000000000000000", "[{test}]\n{status}");
    assert_eq!(field("NoNewPrivs:"), "1", "[{test}]\n{status}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.ftpct_socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "[{test}] control socket mode {mode:o}");
    // and it still does its job with only that capability
    lab.fetch(common::Client::Curl, common::Mode::Port, "small.txt")
        .assert_ok();
    assert!(lab.ftpct_log().contains("privileges dropped"), "[{test}]");
}

/// The lines of an expectation table in the kernel's /proc/net/nf_conntrack_expect format.
fn expect_lines(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.contains("l3proto"))
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect()
}

/// `ftpct list` against the kernel's own table for the same waiting expectation: the session
/// runs once with the kernel helper (its /proc/net/nf_conntrack_expect, read in the gateway) and
/// once with ftpct (`ftpct list`), and the lines must agree field by field: `l3proto = N`,
/// `proto=6`, `src=`, `dst=` (the address format of the family), `sport=0`, the helper name, with
/// the expected port being each session's own data port (the NAT keeps it when free) and the
/// seconds left within a few of each other. Deliberate difference (src/expect.rs
/// `format_kernel_line`): past its deadline but not yet expired, ftpct prints 0 where the kernel
/// may print a negative number; it does not arise here. While ftpct runs, the kernel's table
/// stays empty: ftpct's expectations live in userspace.
fn list_matches_the_kernel_table(test: &str, topo: Topology, mode: &str, want: &[&str]) {
    let mut lab = Lab::up(test, topo);
    lab.server();

    lab.kernel_helper(true);
    let h = start_holding_client_with(&lab, mode);
    let kernel = lab.gw(&["cat", "/proc/net/nf_conntrack_expect"]).stdout;
    let kport = h.port;
    let done = h.finish();
    assert!(done.contains("GOT 29"), "[{test}] {done}");
    lab.kernel_helper(false);

    lab.start_ftpct(&[]);
    let h = start_holding_client_with(&lab, mode);
    let list = lab.ftpct_cli("list");
    list.assert_ok();
    let kernel_meanwhile = lab.gw(&["cat", "/proc/net/nf_conntrack_expect"]).stdout;
    let fport = h.port;
    let done = h.finish();
    assert!(done.contains("GOT 29"), "[{test}] {done}");

    let k = expect_lines(&kernel);
    let f = expect_lines(&list.stdout);
    assert_eq!(k.len(), 1, "[{test}] kernel table:\n{kernel}");
    assert_eq!(f.len(), 1, "[{test}] ftpct list:\n{}", list.stdout);
    assert!(
        expect_lines(&kernel_meanwhile).is_empty(),
        "[{test}] kernel expectations while ftpct runs:\n{kernel_meanwhile}"
    );
    let (k, f) = (&k[0], &f[0]);
    eprintln!("[{test}]\nkernel: {}\nftpct:  {}", k.join(" "), f.join(" "));
    assert_eq!(
        k.len(),
        f.len(),
        "[{test}] field count\nkernel: {k:?}\nftpct:  {f:?}"
    );
    // seconds left: both just after the command, out of the same 300 s
    let secs = |v: &Vec<String>| -> i64 {
        v[0].parse()
            .unwrap_or_else(|_| panic!("[{test}] seconds first: {v:?}"))
    };
    let (ks, fs) = (secs(k), secs(f));
    assert!(
        (295..=300).contains(&ks) && (295..=300).contains(&fs) && (ks - fs).abs() <= 5,
        "[{test}] seconds left: kernel {ks}, ftpct {fs}"
    );
    for (i, (kf, ff)) in k.iter().zip(f.iter()).enumerate().skip(1) {
        if kf.starts_with("dport=") {
            assert_eq!(*kf, format!("dport={kport}"), "[{test}] kernel {k:?}");
            assert_eq!(*ff, format!("dport={fport}"), "[{test}] ftpct {f:?}");
        } else {
            assert_eq!(kf, ff, "[{test}] field {i}\nkernel: {k:?}\nftpct:  {f:?}");
        }
    }
    // and the fields are the ones expected for this lab (not two equally wrong lines)
    for w in want {
        assert!(
            k.iter().any(|x| x == w),
            "[{test}] `{w}` not in the kernel's line {k:?}"
        );
    }
}

#[test]
fn list_matches_the_kernel_table_masq_port() {
    list_matches_the_kernel_table(
        "list_matches_the_kernel_table_masq_port",
        Topology::Masq,
        "port",
        &[
            "l3proto",
            "=",
            "2",
            "proto=6",
            "src=203.0.113.2",
            "dst=203.0.113.1",
            "sport=0",
            "ftp",
        ],
    );
}

#[test]
fn list_matches_the_kernel_table_v6_eprt() {
    list_matches_the_kernel_table(
        "list_matches_the_kernel_table_v6_eprt",
        Topology::V6,
        "eprt",
        &[
            "l3proto",
            "=",
            "10",
            "proto=6",
            "src=fd77:0002:0000:0000:0000:0000:0000:0002",
            "dst=fd77:0001:0000:0000:0000:0000:0000:0002",
            "sport=0",
            "ftp",
        ],
    );
}
