//! The daemon's operator interfaces, end to end in the namespace lab: `ftpct list` and
//! `ftpct sessions` while a session waits for its data connection, `ftpct events`, the
//! Prometheus endpoint and `ftpct stats`. Needs root, like the e2e tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ftpct_bin, Alg, Lab, Topology};

/// An active-mode client in the masq lab that stops after the server accepted its PORT, until
/// told to go on (then RETRs small.txt and quits). Prints `PORT <port>` when it waits.
const HOLDING_CLIENT: &str = r#"
import ftplib, socket, sys
ftp = ftplib.FTP()
ftp.connect("203.0.113.2", 21, timeout=5)
ftp.login()
ls = socket.create_server(("10.77.100.102", 0))
port = ls.getsockname()[1]
ftp.sendcmd("PORT 10,77,100,102,%d,%d" % (port >> 8, port & 255))
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

fn start_holding_client(lab: &Lab) -> Holding {
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("cli"),
            "python3",
            "-c",
            HOLDING_CLIENT,
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
        .unwrap_or_else(|| panic!("client did not get its PORT accepted: {line:?}"));
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
