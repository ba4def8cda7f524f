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
    let m = &scrape(&lab).text;
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

/// One Prometheus scrape, parsed: sample (`name` or `name{labels}`) → value, and the declared
/// type of each family.
struct Scrape {
    text: String,
    samples: std::collections::BTreeMap<String, f64>,
    types: std::collections::BTreeMap<String, String>,
}

impl Scrape {
    #[track_caller]
    fn get(&self, sample: &str) -> f64 {
        *self
            .samples
            .get(sample)
            .unwrap_or_else(|| panic!("no sample {sample} in the scrape:\n{}", self.text))
    }
    #[track_caller]
    fn int(&self, sample: &str) -> u64 {
        let v = self.get(sample);
        assert!(v >= 0.0 && v.fract() == 0.0, "{sample} = {v}");
        v as u64
    }
}

/// `curl http://127.0.0.1:9477/metrics` in the gateway.
#[track_caller]
fn scrape(lab: &Lab) -> Scrape {
    let r = lab.exec(
        "gw",
        &[
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://127.0.0.1:9477/metrics",
        ],
    );
    r.assert_ok();
    let mut samples = std::collections::BTreeMap::new();
    let mut types = std::collections::BTreeMap::new();
    for l in r.stdout.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("# TYPE name type");
            types.insert(name.to_string(), ty.to_string());
        } else if !l.starts_with('#') && !l.is_empty() {
            let (name, v) = l.rsplit_once(' ').expect("sample value");
            let v: f64 = v
                .parse()
                .unwrap_or_else(|_| panic!("not a number in `{l}`"));
            assert!(
                samples.insert(name.to_string(), v).is_none(),
                "sample {name} twice:\n{}",
                r.stdout
            );
        }
    }
    Scrape {
        text: r.stdout,
        samples,
        types,
    }
}

/// Every family of the Operations issue in a scrape taken after a scenario whose counts are
/// known: packets by verdict, messages by type, rewrites, expectations created, used, expired,
/// evicted and refused by reason, parse failures, TLS sessions, live sessions and
/// expectations, the kernel's queue drops, and the latency histogram (cumulative buckets, +Inf =
/// _count = packets queued, as the kernel counts them).
///
/// One scripted session first (expect_timeout = 2 s): a bounce PORT and a PORT to port 80
/// (refused by ftpct, then by vsftpd), a malformed PORT (a parse failure), EPRT and PORT
/// (rewritten; the second expectation evicts the first: max_expect_per_session = 1), PASV and
/// EPSV (227 and 229; each evicts the previous), a scrape while it waits (1 session, 1
/// expectation), 3 s for the last expectation to expire, AUTH TLS (refused by vsftpd: no TLS
/// session). Then `many active 3` (PORT, EPRT, PORT, all used).
#[test]
fn prometheus_metrics_every_family() {
    let test = "prometheus_metrics_every_family";
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.start_ftpct_with_config("expect_timeout = 2\n", &["--metrics", "127.0.0.1:9477"]);
    let marks = lab.state_dir();
    let (a, b) = (marks.join("mark-a"), marks.join("mark-b"));
    let mark_a = format!("mark:{}", a.display());
    let wait_b = format!("waitfor:{}:20", b.display());
    let script = lab.spawn_ftpscript(
        10,
        None,
        &[
            "login",
            "cmd:PORT 10,77,100,9,156,64=>500",
            "cmd:PORT 10,77,100,102,0,80=>500",
            "cmd:PORT 10,77,100=>500,501",
            "cmd:EPRT |1|10.77.100.102|40001|=>200",
            "cmd:PORT 10,77,100,102,156,66=>200",
            "cmd:PASV=>227",
            "cmd:EPSV=>229",
            &mark_a,
            &wait_b,
            "sleep:3",
            "cmd:AUTH TLS=>5",
            "quit",
        ],
    );
    let t0 = Instant::now();
    while !a.exists() {
        assert!(t0.elapsed() < Duration::from_secs(15), "[{test}] no mark");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mid = scrape(&lab);
    std::fs::write(&b, "").expect("mark b");
    let out = script.wait_with_output().expect("ftpscript");
    assert!(
        out.status.success(),
        "[{test}] script failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mid.int("ftpct_sessions"), 1, "[{test}]\n{}", mid.text);
    assert_eq!(mid.int("ftpct_expectations"), 1, "[{test}]\n{}", mid.text);
    assert_eq!(
        mid.int("ftpct_expectations_total{event=\"created\"}"),
        4,
        "[{test}]\n{}",
        mid.text
    );
    assert_eq!(
        mid.int("ftpct_expectations_total{event=\"expired\"}"),
        0,
        "[{test}]\n{}",
        mid.text
    );
    lab.many("active", 3).assert_ok();

    let m = scrape(&lab);
    let fam = [
        ("ftpct_sessions", "gauge"),
        ("ftpct_expectations", "gauge"),
        ("ftpct_packets_total", "counter"),
        ("ftpct_messages_total", "counter"),
        ("ftpct_rewrites_total", "counter"),
        ("ftpct_expectations_total", "counter"),
        ("ftpct_expectations_refused_total", "counter"),
        ("ftpct_parse_failures_total", "counter"),
        ("ftpct_tls_sessions_total", "counter"),
        ("ftpct_sessions_started_total", "counter"),
        ("ftpct_kernel_queue_dropped_total", "counter"),
        ("ftpct_queue_overruns_total", "counter"),
        ("ftpct_conntrack_created_total", "counter"),
        ("ftpct_packet_latency_seconds", "histogram"),
    ];
    for (name, ty) in fam {
        assert_eq!(
            m.types.get(name).map(String::as_str),
            Some(ty),
            "[{test}] family {name}:\n{}",
            m.text
        );
    }
    let want: &[(&str, u64)] = &[
        // script: bounce, port 80, the evicting PORT; many: PORT, EPRT, PORT
        ("ftpct_messages_total{type=\"port\"}", 5),
        ("ftpct_messages_total{type=\"eprt\"}", 2),
        ("ftpct_messages_total{type=\"pasv\"}", 1),
        ("ftpct_messages_total{type=\"epsv\"}", 1),
        ("ftpct_messages_total{type=\"227\"}", 1),
        ("ftpct_messages_total{type=\"229\"}", 1),
        ("ftpct_messages_total{type=\"auth_tls\"}", 1),
        ("ftpct_messages_total{type=\"234\"}", 0),
        // EPRT and PORT of the script, the three of many (227 carries the public address)
        ("ftpct_rewrites_total", 5),
        ("ftpct_expectations_total{event=\"created\"}", 7),
        ("ftpct_expectations_total{event=\"used\"}", 3),
        ("ftpct_expectations_total{event=\"expired\"}", 1),
        ("ftpct_expectations_total{event=\"evicted\"}", 3),
        ("ftpct_expectations_refused_total{reason=\"bounce\"}", 1),
        (
            "ftpct_expectations_refused_total{reason=\"privileged_port\"}",
            1,
        ),
        ("ftpct_expectations_refused_total{reason=\"other\"}", 0),
        ("ftpct_parse_failures_total", 1),
        ("ftpct_tls_sessions_total", 0),
        ("ftpct_sessions_started_total", 2),
        ("ftpct_conntrack_created_total", 3),
        ("ftpct_expectations", 0),
        ("ftpct_kernel_queue_dropped_total{reason=\"queue_full\"}", 0),
        (
            "ftpct_kernel_queue_dropped_total{reason=\"socket_full\"}",
            0,
        ),
        ("ftpct_queue_overruns_total", 0),
        // nothing held or reordered in this lab
        ("ftpct_packets_total{verdict=\"dropped_held\"}", 0),
        ("ftpct_packets_total{verdict=\"dropped_out_of_order\"}", 0),
    ];
    let wrong: Vec<String> = want
        .iter()
        .filter(|(s, v)| m.int(s) != *v)
        .map(|(s, v)| format!("{s} = {}, expected {v}", m.int(s)))
        .collect();
    assert!(wrong.is_empty(), "[{test}] {wrong:#?}\n{}", m.text);
    // both sessions ended (closed ones linger a few seconds)
    assert!(m.int("ftpct_sessions") <= 2, "[{test}]\n{}", m.text);

    // packets: every queued packet got one verdict and one latency sample
    let queued = lab.nfqueue_proc().expect("queue bound").id_sequence;
    let accepted = m.int("ftpct_packets_total{verdict=\"accepted\"}");
    let modified = m.int("ftpct_packets_total{verdict=\"modified\"}");
    assert!(
        modified >= 5,
        "[{test}] {modified} modified packets for 5 rewrites"
    );
    let count = m.int("ftpct_packet_latency_seconds_count");
    assert_eq!(
        accepted + modified,
        count,
        "[{test}] verdicts vs latency samples\n{}",
        m.text
    );
    assert_eq!(
        count, queued,
        "[{test}] latency samples vs packets the kernel queued"
    );
    // the histogram: cumulative buckets in increasing `le`, +Inf = _count, a mean below 100 ms
    let mut buckets: Vec<(f64, u64)> = m
        .samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix("ftpct_packet_latency_seconds_bucket{le=\"")?
                .strip_suffix("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *v as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    assert!(buckets.len() >= 10, "[{test}] buckets:\n{}", m.text);
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "[{test}] buckets not cumulative: {buckets:?}"
    );
    let last = buckets.last().unwrap();
    assert!(
        last.0.is_infinite() && last.1 == count,
        "[{test}] {buckets:?}"
    );
    assert!(
        buckets[buckets.len() - 2].1 > 0,
        "[{test}] no packet under the largest finite bound: {buckets:?}"
    );
    let sum = m.get("ftpct_packet_latency_seconds_sum");
    assert!(
        sum > 0.0 && sum / (count as f64) < 0.1,
        "[{test}] latency sum {sum} s for {count} packets"
    );
    // the same counters through `ftpct stats`
    let st = lab.ftpct_stats();
    for (stat, sample) in [
        ("rewrites", "ftpct_rewrites_total"),
        (
            "refused_bounce",
            "ftpct_expectations_refused_total{reason=\"bounce\"}",
        ),
        ("parse_failures", "ftpct_parse_failures_total"),
        (
            "expect_expired",
            "ftpct_expectations_total{event=\"expired\"}",
        ),
        ("latency_count", "ftpct_packet_latency_seconds_count"),
    ] {
        assert_eq!(st.get(stat), m.int(sample), "[{test}] {stat} vs {sample}");
    }
}

/// A session that announces TLS (AUTH TLS answered with 234, by tests/lab/fakeftpd.py in place
/// of vsftpd) is counted in `ftpct_tls_sessions_total` and its two messages by type.
#[test]
fn prometheus_metrics_count_a_tls_session() {
    let test = "prometheus_metrics_count_a_tls_session";
    let mut lab = Lab::up(test, Topology::Masq);
    let srv = lab.env_var("SRV_IP");
    let root = lab.state_dir().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let root_s = root.to_string_lossy().into_owned();
    let mut fake = lab.spawn_python(
        "srv",
        "fakeftpd.py",
        &["--listen", &srv, "--root", &root_s, "--seconds", "30"],
    );
    let mut line = String::new();
    BufReader::new(fake.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("fakeftpd output");
    assert_eq!(line.trim(), "READY", "[{test}] fakeftpd did not start");
    lab.start_ftpct(&["--metrics", "127.0.0.1:9477"]);
    let r = lab.ftpscript(5, Some(&root), &["login", "cmd:AUTH TLS=>234"]);
    r.assert_ok();
    let m = scrape(&lab);
    let _ = fake.kill();
    let _ = fake.wait();
    for (s, v) in [
        ("ftpct_tls_sessions_total", 1),
        ("ftpct_messages_total{type=\"auth_tls\"}", 1),
        ("ftpct_messages_total{type=\"234\"}", 1),
        ("ftpct_sessions_started_total", 1),
        ("ftpct_expectations_total{event=\"created\"}", 0),
    ] {
        assert_eq!(m.int(s), v, "[{test}] {s}\n{}", m.text);
    }
}

/// `CLOCK_MONOTONIC` in microseconds (the clock of `MONOTONIC_USEC`).
fn monotonic_usec() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000
}

/// The running daemon speaks sd_notify over a real `$NOTIFY_SOCKET` (a unix datagram socket the
/// test binds, as systemd does for `Type=notify-reload`): `READY=1` once it serves (then its
/// `STATUS=`), `RELOADING=1` with a `MONOTONIC_USEC` taken after the SIGHUP and then `READY=1`
/// again when the reload is done, `STOPPING=1` on SIGTERM, and nothing else.
#[test]
fn sd_notify_ready_reloading_stopping() {
    use nix::sys::signal::Signal;
    use std::os::unix::net::UnixDatagram;
    let test = "sd_notify_ready_reloading_stopping";
    let mut lab = Lab::up(test, Topology::Masq);
    let path = lab.state_dir().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    let recv = |what: &str| -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("[{test}] no notification ({what}): {e}"));
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")
    };
    let nothing_more = |when: &str| {
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            panic!(
                "[{test}] unexpected notification {when}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    };
    let path_s = path.to_string_lossy().into_owned();
    lab.start_ftpct_with_env("", &[], &[("NOTIFY_SOCKET", &path_s)]);
    // start_ftpct returned once the control socket exists; READY=1 says the same
    assert_eq!(recv("start"), "READY=1", "[{test}]");
    let status = recv("status after start");
    assert!(
        status.starts_with("STATUS=") && !status.contains('\n'),
        "[{test}] {status:?}"
    );
    nothing_more("while running");

    let before = monotonic_usec();
    lab.signal_ftpct(Signal::SIGHUP);
    let reloading = recv("reload");
    let after = monotonic_usec();
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "[{test}] {reloading:?}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("[{test}] no MONOTONIC_USEC: {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "[{test}] MONOTONIC_USEC={usec} not between {before} and {after}"
    );
    assert_eq!(lines.next(), None, "[{test}] {reloading:?}");
    assert_eq!(recv("reload done"), "READY=1", "[{test}]");
    assert!(
        recv("status after reload").starts_with("STATUS="),
        "[{test}]"
    );
    nothing_more("after the reload");
    assert!(
        lab.ftpct_log().contains("configuration reloaded"),
        "[{test}] {}",
        lab.ftpct_log()
    );

    let exit = lab.signal_ftpct(Signal::SIGTERM);
    assert_eq!(recv("stop"), "STOPPING=1", "[{test}]");
    assert_eq!(exit, "exit status: 0", "[{test}] {}", lab.ftpct_log());
    nothing_more("after the exit");
}

/// The conntrack entry of the lab's FTP control connection in the gateway: its id, and its
/// original and reply tuples as `conntrack -L` prints them (`src dst sport dport` each).
fn control_entry(lab: &Lab) -> (String, [String; 4], [String; 4]) {
    let out = lab
        .gw(&["conntrack", "-L", "-p", "tcp", "--dport", "21", "-o", "id"])
        .stdout;
    let line = out
        .lines()
        .find(|l| l.contains("ESTABLISHED"))
        .unwrap_or_else(|| panic!("no control connection entry:\n{out}"));
    let mut vals: std::collections::HashMap<&str, Vec<String>> = Default::default();
    for f in line.split_whitespace() {
        if let Some((k, v)) = f.split_once('=') {
            vals.entry(k).or_default().push(v.to_string());
        }
    }
    let get = |k: &str, i: usize| {
        vals.get(k)
            .and_then(|v| v.get(i))
            .cloned()
            .unwrap_or_default()
    };
    let tuple = |i| {
        [
            get("src", i),
            get("dst", i),
            get("sport", i),
            get("dport", i),
        ]
    };
    (get("id", 0), tuple(0), tuple(1))
}

/// A session saved in the state file, restored by the next daemon: kept when its conntrack
/// entry is the same, forgotten when the entry under the same addresses and ports is another
/// one (another conntrack id: a new connection that reuses them, whose sequence numbers the
/// saved offsets would break).
fn restart_against_the_conntrack_entry(test: &str, replace: bool) {
    let mut lab = Lab::up(test, Topology::Masq);
    lab.server();
    lab.enable(Alg::Ftpct);
    let hold = start_holding_client(&lab);
    let sessions = lab.ftpct_cli("sessions").stdout;
    assert!(sessions.contains("rewrites=1"), "[{test}] {sessions}");
    let how = lab.signal_ftpct(nix::sys::signal::Signal::SIGTERM);
    let state = lab.state_dir().join("ftpct.sock.state");
    let text = std::fs::read_to_string(&state).expect("state file");
    assert!(
        text.lines().any(|l| l.split(' ').nth(1) == Some("C")),
        "[{test}] no conntrack id saved ({how}):\n{text}"
    );
    let (id, orig, reply) = control_entry(&lab);
    if replace {
        // the same addresses and ports, a new entry
        lab.gw(&[
            "conntrack",
            "-D",
            "-p",
            "tcp",
            "-s",
            &orig[0],
            "-d",
            &orig[1],
            "--sport",
            &orig[2],
            "--dport",
            &orig[3],
        ]);
        lab.gw(&[
            "conntrack",
            "-I",
            "-p",
            "tcp",
            "-s",
            &orig[0],
            "-d",
            &orig[1],
            "--sport",
            &orig[2],
            "--dport",
            &orig[3],
            "-r",
            &reply[0],
            "-q",
            &reply[1],
            "--reply-port-src",
            &reply[2],
            "--reply-port-dst",
            &reply[3],
            "--state",
            "ESTABLISHED",
            "-u",
            "SEEN_REPLY,ASSURED",
            "-t",
            "300",
        ]);
        let (new_id, o2, r2) = control_entry(&lab);
        assert_eq!((&o2, &r2), (&orig, &reply), "[{test}] same tuples");
        // The kernel derives the id from the entry's address: the new entry often reuses the
        // old one's memory and gets the same id. Without ftpct's mark it is still told apart.
        eprintln!(
            "[{test}] conntrack id {id} -> {new_id} ({})",
            if new_id == id { "reused" } else { "new" }
        );
    }
    lab.start_ftpct(&[]);
    let st = lab.ftpct_stats();
    let log = lab.ftpct_log();
    assert!(log.contains("state restored"), "[{test}]\n{log}");
    if replace {
        // (a later packet of the client may start a new, offset-free session: not counted)
        assert_eq!(
            st.get("restored_replaced"),
            1,
            "[{test}] {}\n{log}",
            st.text
        );
        assert!(
            log.contains("(another conntrack entry) were dropped"),
            "[{test}]\n{log}"
        );
        let mut child = hold.child;
        let _ = child.kill();
        let _ = child.wait();
    } else {
        assert_eq!(st.get("sessions"), 1, "[{test}] {}\n{log}", st.text);
        assert_eq!(st.get("restored_replaced"), 0, "[{test}] {}", st.text);
        let rest = hold.finish();
        assert!(rest.contains("GOT "), "[{test}] {rest}");
    }
}

#[test]
fn a_restored_session_is_kept_while_its_conntrack_entry_is_the_same() {
    restart_against_the_conntrack_entry(
        "a_restored_session_is_kept_while_its_conntrack_entry_is_the_same",
        false,
    );
}

#[test]
fn a_restored_session_is_forgotten_when_its_tuple_has_a_new_conntrack_entry() {
    restart_against_the_conntrack_entry(
        "a_restored_session_is_forgotten_when_its_tuple_has_a_new_conntrack_entry",
        true,
    );
}
