//! Spoofed segments from a real attacker host, end to end in the namespace lab (issue 10,
//! attacks 1, 2, 4 and 5).
//!
//! ftpct's control-packet queue sits in raw PREROUTING: it sees every segment before conntrack's
//! TCP window check, before rp_filter and before the filter table. These tests put a fourth
//! namespace on the gateway's link (`Lab::attacker`: its own veth `to-att`, rp_filter off in the
//! gateway) that knows only the control connection's 4-tuple (read from the gateway's conntrack
//! table, as anyone on the path could learn it) and sends raw IPv4 segments with the address of
//! one of the peers (`tests/lab/spoof.py`), while a real transfer runs on that control
//! connection:
//!
//! - [`spoofed_synack_on_a_live_session_ftpct`]: SYN-ACKs "from the server" with random seq/ack,
//!   after PORT rewrites that shortened the client's stream (masq: the session has an offset);
//! - [`spoofed_rst_with_a_random_seq_ftpct`]: RSTs "from the server" at random sequence numbers;
//! - [`spoofed_rst_in_the_window_ftpct`]: RSTs "from the server" inside the client's window but
//!   not at the exact next sequence number (this attacker also watched the server's segments on
//!   the gateway's link: the one test where it knows more than the 4-tuple);
//! - [`blind_spoofed_port_ftpct`]: `x\r\nPORT <client>,31,144\r\n` "from the client", sprayed
//!   over the whole sequence space (one sequence number lands less than 2^28 ahead of the real
//!   stream, whatever it is; each sent 8 times, more than ftpct's out-of-order drops before a
//!   resync): to plant an expectation for port 8080 on the client, or to force a resync;
//! - [`spoofed_227_opens_no_pinhole_ftpct`] (dnat: the server behind a port forward): `227
//!   Entering Passive Mode (<server private>,31,144)` "from the server", sprayed the same way, to
//!   open an inbound pinhole from the internet to the server's port 8080.
//!
//! Each runs the real session with tests/lab/ftpscript.py: login, one transfer that makes the
//! rewrite (offset), a 4 MiB transfer paused after 1 MiB (the attack happens there, with the data
//! connection open and the 226 still to come over the control connection), then another transfer
//! and a NOOP on the same control connection (a control connection whose offset or stream
//! position was lost stalls or gets `500 Illegal PORT command.`), and QUIT. The test asserts,
//! collecting every failure before it reports (so a run against a vulnerable ftpct shows all
//! that broke):
//!
//! - the spoofed segments reached the gateway on `to-att` (and, for ftpct, its queue): the test
//!   is not vacuous because the attack went nowhere;
//! - at the pause, right after the attack: ftpct still tracks the same session (same id), open,
//!   with the same sequence offsets; no resync, no expectation created, no expectation in
//!   `ftpct list` for port 8080, none in `conntrack -L expect`, no entry in `conntrack -L`;
//! - the whole session succeeds (every file sha256-checked);
//! - afterwards nothing reaches the inside host's listener on 8080 through the gateway's public
//!   address (a planted expectation would DNAT it there), and no conntrack entry to 8080 is
//!   NATed to the inside host;
//! - the refusals are counted: `synack_ignored`, `rst_ignored` (for the SYN-ACKs and the random
//!   RSTs, the segment's own counter plus `packets_out_of_window` covers every segment sent:
//!   whichever check refuses it first; the in-window RSTs all in `rst_ignored`) and
//!   `packets_out_of_window` (> 0) for the sprayed data segments.
//!   These counters come with the engine's fix for issue 10; [`counter`] fails with a message
//!   naming the missing counter when the daemon does not report it.
//!
//! The `*_kernel_helper` variants run the same attack against the kernel's nf_conntrack_ftp
//! (the reference: it only sees what conntrack accepted) with the same functional assertions,
//! and print what conntrack did with the segments (`conntrack -S` invalid count). The control
//! test [`the_session_needs_an_alg`] runs the session without any ALG: it must fail, so a
//! passing run proves the ALG did its work while under attack.
//!
//! ftpct runs with `session_close_linger = 1` so that a session a spoofed RST closed would be
//! forgotten within the pause (the default is 10 s), which keeps the file's wall time short.
//!
//! Needs root, like the e2e tests (they fail, never skip, without it).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use common::{wait_for_file, Alg, FtpctStats, Lab, Run, Topology};

/// The port the attacker tries to open.
const ATTACK_PORT: u16 = 8080;
/// Bytes of the 4 MiB transfer read before the pause in which the attack happens.
const PAUSE_AFTER: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    /// Issue 10 attack 1: SYN-ACK from the server's address on the live control connection.
    SynAck,
    /// Attack 2: RST from the server's address with a random sequence number.
    Rst,
    /// Attack 2 by an attacker who knows the window (an on-path observer, or a spray with a step
    /// smaller than the window): RSTs inside the client's receive window, not at the exact next
    /// sequence number (RFC 5961 3.2: answer with a challenge ACK, do not reset).
    RstInWindow,
    /// Attack 4 (and 3): blind `PORT <client>,31,144` from the client's address, sprayed.
    BlindPort,
    /// Attack 5: blind `227 (<server private>,31,144)` from the server's address, sprayed.
    Spoofed227,
}

impl Attack {
    fn topology(self) -> Topology {
        match self {
            Attack::Spoofed227 => Topology::Dnat,
            _ => Topology::Masq,
        }
    }
    /// The data mode of the session: the one whose rewrite gives the session an offset.
    fn mode(self) -> &'static str {
        match self {
            Attack::Spoofed227 => "pasv",
            _ => "port",
        }
    }
    /// Whether the attack aims at a pinhole to [`ATTACK_PORT`] that a probe can try.
    fn pinhole(self) -> bool {
        matches!(self, Attack::BlindPort | Attack::Spoofed227)
    }
}

// ---- helpers -----------------------------------------------------------------------------------

/// Assertions collected over a whole scenario, reported together.
struct Checks {
    test: String,
    failed: Vec<String>,
    notes: Vec<String>,
}

impl Checks {
    fn new(test: &str) -> Checks {
        Checks {
            test: test.to_string(),
            failed: Vec::new(),
            notes: Vec::new(),
        }
    }
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failed.push(what.into());
        }
    }
    fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }
    #[track_caller]
    fn finish(self) {
        eprintln!("[{}] {}", self.test, self.notes.join("\n  "));
        assert!(
            self.failed.is_empty(),
            "[{}] {} check(s) failed:\n- {}",
            self.test,
            self.failed.len(),
            self.failed.join("\n- ")
        );
    }
}

/// A counter of `ftpct stats` that the spoofing defences of issue 10 add. `Err` names the
/// missing counter (the daemon predates the fix), so that the scenario fails for that reason.
fn counter(stats: &FtpctStats, name: &str) -> Result<u64, String> {
    stats.values.get(name).copied().ok_or_else(|| {
        format!(
            "`ftpct stats` has no counter `{name}`: this ftpct does not count refused spoofed \
             segments (the window validation of issue 10 is missing)"
        )
    })
}

/// `after - before` of a counter both snapshots have (0 when absent).
fn delta(before: &FtpctStats, after: &FtpctStats, name: &str) -> u64 {
    match (before.values.get(name), after.values.get(name)) {
        (Some(b), Some(a)) => a.saturating_sub(*b),
        _ => 0,
    }
}

/// A background process killed (and reaped) when dropped.
struct Background(Option<Child>);

impl Background {
    /// Waits for it to exit: (success, stdout + stderr).
    fn finish(mut self) -> (bool, String) {
        let child = self.0.take().expect("child");
        let out = child.wait_with_output().expect("wait for the child");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
    /// Kills it and returns its stdout.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("child");
        let _ = child.kill();
        let out = child.wait_with_output().expect("wait for the child");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The control connection's tuples from the gateway's conntrack table.
#[derive(Clone, Debug)]
struct CtTuple {
    /// Original direction (client → server, as the client sends it): src, sport, dst, dport.
    orig: (String, u16, String, u16),
    /// Reply direction (server → client, as the server sends it).
    reply: (String, u16, String, u16),
}

impl CtTuple {
    /// `IP:PORT` pairs of a segment "from the client".
    fn as_client(&self) -> (String, String) {
        let (s, sp, d, dp) = &self.orig;
        (format!("{s}:{sp}"), format!("{d}:{dp}"))
    }
    /// `IP:PORT` pairs of a segment "from the server".
    fn as_server(&self) -> (String, String) {
        let (s, sp, d, dp) = &self.reply;
        (format!("{s}:{sp}"), format!("{d}:{dp}"))
    }
}

/// The one ESTABLISHED control connection in the gateway.
#[track_caller]
fn control_tuple(lab: &Lab) -> CtTuple {
    let port = lab.port().to_string();
    let r = lab.gw(&["conntrack", "-L", "-p", "tcp", "--dport", &port]);
    let rows: Vec<CtTuple> = r
        .stdout
        .lines()
        .filter(|l| l.contains(" ESTABLISHED "))
        .filter_map(parse_ct_line)
        .filter(|t| t.orig.3 == lab.port())
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "one established control connection expected in the gateway:\n{}",
        r.stdout
    );
    rows[0].clone()
}

fn parse_ct_line(l: &str) -> Option<CtTuple> {
    let mut src = Vec::new();
    let mut dst = Vec::new();
    let mut sport = Vec::new();
    let mut dport = Vec::new();
    for w in l.split_whitespace() {
        if let Some(v) = w.strip_prefix("src=") {
            src.push(v.to_string());
        } else if let Some(v) = w.strip_prefix("dst=") {
            dst.push(v.to_string());
        } else if let Some(v) = w.strip_prefix("sport=") {
            sport.push(v.parse().ok()?);
        } else if let Some(v) = w.strip_prefix("dport=") {
            dport.push(v.parse().ok()?);
        }
    }
    if src.len() < 2 || dst.len() < 2 || sport.len() < 2 || dport.len() < 2 {
        return None;
    }
    Some(CtTuple {
        orig: (src[0].clone(), sport[0], dst[0].clone(), dport[0]),
        reply: (src[1].clone(), sport[1], dst[1].clone(), dport[1]),
    })
}

/// Packets received by the gateway on the attacker's link.
fn attacker_rx_packets(lab: &Lab) -> u64 {
    let r = lab.gw(&["cat", "/sys/class/net/to-att/statistics/rx_packets"]);
    r.stdout.trim().parse().unwrap_or(0)
}

/// conntrack's `invalid` count in the gateway, summed over the CPUs (`conntrack -S`).
fn conntrack_invalid(lab: &Lab) -> u64 {
    let r = lab.gw(&["conntrack", "-S"]);
    r.stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("invalid="))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// `ftpct sessions`: the line of the session whose client is `client` (`IP:PORT`), as
/// `key=value` fields plus the id under `id`.
fn ftpct_session(lab: &Lab, client: &str) -> Option<BTreeMap<String, String>> {
    let r = lab.ftpct_cli("sessions");
    let want = format!("client={client}");
    let line = r
        .stdout
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == want))?;
    let mut m = BTreeMap::new();
    let mut words = line.split_whitespace();
    m.insert("id".to_string(), words.next()?.to_string());
    for w in words {
        if let Some((k, v)) = w.split_once('=') {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m.insert("line".to_string(), line.to_string());
    Some(m)
}

/// The session fields that an attack must not change: id, state, offsets and their positions.
fn session_identity(m: &BTreeMap<String, String>) -> String {
    ["id", "state", "seq_orig", "seq_reply"]
        .iter()
        .map(|k| format!("{k}={}", m.get(*k).map(String::as_str).unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Expectations for [`ATTACK_PORT`] in `ftpct list`.
fn ftpct_expectations_for_attack_port(lab: &Lab) -> Vec<String> {
    let r = lab.ftpct_cli("list");
    let want = format!("dport={ATTACK_PORT}");
    r.stdout
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == want))
        .map(str::to_string)
        .collect()
}

/// Kernel expectations (`conntrack -L expect`) for [`ATTACK_PORT`].
fn kernel_expectations_for_attack_port(lab: &Lab) -> Vec<String> {
    let r = lab.exec("gw", &["conntrack", "-L", "expect"]);
    let want = format!("dport={ATTACK_PORT}");
    r.stdout
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w == want))
        .map(str::to_string)
        .collect()
}

/// Every conntrack entry (any direction) with port [`ATTACK_PORT`] in the gateway.
fn conntrack_entries_to_attack_port(lab: &Lab) -> Vec<String> {
    let r = lab.exec("gw", &["conntrack", "-L"]);
    let want = [
        format!("dport={ATTACK_PORT}"),
        format!("sport={ATTACK_PORT}"),
    ];
    r.stdout
        .lines()
        .filter(|l| l.split_whitespace().any(|w| want.iter().any(|x| x == w)))
        .map(str::to_string)
        .collect()
}

/// Conntrack entries to [`ATTACK_PORT`] that the gateway NATs to `inside` (the host behind it):
/// a pinhole. (A SYN to the gateway's own address on that port, refused by the gateway, has an
/// entry too, but not NATed.)
fn pinhole_entries(lab: &Lab, inside: &str) -> Vec<String> {
    let r = lab.exec("gw", &["conntrack", "-L", "-p", "tcp"]);
    r.stdout
        .lines()
        .filter(|l| {
            parse_ct_line(l).is_some_and(|t| {
                t.orig.3 == ATTACK_PORT && t.reply.0 == inside && t.reply.1 == ATTACK_PORT
            })
        })
        .map(str::to_string)
        .collect()
}

/// Starts `spoof.py sniff` in the gateway on `to-srv`, for the server's segments from the
/// control port: it keeps the server's next sequence number in `out`.
fn start_sniffer(lab: &Lab, out: &Path) -> Background {
    let port = lab.port().to_string();
    let out = out.to_string_lossy().into_owned();
    let mut child = lab.spawn_python(
        "gw",
        "spoof.py",
        &[
            "sniff", "--iface", "to-srv", "--sport", &port, "--out", &out,
        ],
    );
    let mut line = String::new();
    let mut so = BufReader::new(child.stdout.take().expect("stdout"));
    let _ = so.read_line(&mut line);
    if line.trim() != "READY" {
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        let _ = child.kill();
        let _ = child.wait();
        panic!("the sniffer did not start: {line}{err}");
    }
    child.stdout = Some(so.into_inner());
    Background(Some(child))
}

/// Starts `spoof.py listen` on [`ATTACK_PORT`] in namespace `which`; waits until it listens.
fn start_listener(lab: &Lab, which: &str) -> Background {
    let port = ATTACK_PORT.to_string();
    let mut child = lab.spawn_python(which, "spoof.py", &["listen", "--port", &port]);
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let _ = out.read_line(&mut line);
    if line.trim() != "READY" {
        let mut err = String::new();
        let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
        let _ = child.kill();
        let _ = child.wait();
        panic!("the listener on {ATTACK_PORT} did not start in {which}: {line}{err}");
    }
    // Its further output (ACCEPTED lines) is read when it is stopped.
    child.stdout = Some(out.into_inner());
    Background(Some(child))
}

/// Sends the attack from the attacker namespace; returns the number of segments sent. `next`:
/// the server's next sequence number, for [`Attack::RstInWindow`].
#[track_caller]
fn send_attack(lab: &Lab, attack: Attack, ct: &CtTuple, next: Option<u32>) -> (u64, Run) {
    let cli_ip = lab.env_var("CLI_IP");
    let srv_ip = lab.env_var("SRV_IP");
    let dotted = |ip: &str| ip.replace('.', ",");
    let (p1, p2) = (ATTACK_PORT >> 8, ATTACK_PORT & 0xff);
    let (src, dst, flags, payload, spray, copies) = match attack {
        Attack::SynAck => {
            let (s, d) = ct.as_server();
            (s, d, "SA", String::new(), 4, 1)
        }
        Attack::Rst => {
            let (s, d) = ct.as_server();
            (s, d, "R", String::new(), 4, 1)
        }
        Attack::RstInWindow => {
            let (s, d) = ct.as_server();
            (s, d, "R", String::new(), 0, 1)
        }
        Attack::BlindPort => {
            let (s, d) = ct.as_client();
            let text = format!("x\\r\\nPORT {},{p1},{p2}\\r\\n", dotted(&cli_ip));
            (s, d, "PA", text, 16, 8)
        }
        Attack::Spoofed227 => {
            let (s, d) = ct.as_server();
            let text = format!(
                "x\\r\\n227 Entering Passive Mode ({},{p1},{p2}).\\r\\n",
                dotted(&srv_ip)
            );
            (s, d, "PA", text, 16, 8)
        }
    };
    let spray = spray.to_string();
    let copies = copies.to_string();
    let mut args = vec![
        "tcp",
        "--src",
        &src,
        "--dst",
        &dst,
        "--flags",
        flags,
        "--payload",
        &payload,
        "--spray",
        &spray,
        "--copies",
        &copies,
    ];
    // In the window, never at the exact next sequence number.
    let list = next
        .map(|n| {
            [1u32, 64, 512, 2048]
                .iter()
                .map(|d| n.wrapping_add(*d).to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    if attack == Attack::RstInWindow {
        assert!(
            next.is_some(),
            "RstInWindow needs the sniffed sequence number"
        );
        args.extend(["--seq-list", &list]);
    }
    let r = lab.python("att", "spoof.py", &args);
    assert!(r.ok(), "spoof.py failed: {r}");
    let sent = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("SENT "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("spoof.py printed no SENT line: {r}"));
    (sent, r)
}

// ---- the scenario ------------------------------------------------------------------------------

fn scenario(test: &str, attack: Attack, alg: Alg) {
    let mut lab = Lab::up(test, attack.topology());
    lab.server();
    lab.attacker();
    match alg {
        Alg::Ftpct => lab.start_ftpct_with_config("session_close_linger = 1\n", &[]),
        other => lab.enable(other),
    }
    let mut c = Checks::new(test);
    let cli_ip = lab.env_var("CLI_IP");
    let srv_ip = lab.env_var("SRV_IP");
    let public_ip = lab.env_var("GW_PUBLIC_IP");
    // The host behind the gateway that a planted expectation would expose, and the peer outside
    // that would then connect to it through the gateway's public address.
    let (inside_ns, inside_ip, outside_ns) = match attack.topology() {
        Topology::Dnat => ("srv", srv_ip.clone(), "cli"),
        _ => ("cli", cli_ip.clone(), "srv"),
    };
    let listener = attack.pinhole().then(|| start_listener(&lab, inside_ns));
    // The in-window RST's attacker watches the server's segments on the gateway's link to it.
    let next_file = lab.state_dir().join("server-next.txt");
    let sniffer = (attack == Attack::RstInWindow).then(|| start_sniffer(&lab, &next_file));

    // The real session, paused in the middle of the 4 MiB transfer.
    let here = lab.state_dir().join("pause.reached");
    let go = lab.state_dir().join("pause.go");
    let mode = attack.mode();
    let first = format!("retr:{mode}:small.txt");
    let paused = format!(
        "retrpause:{mode}:big.bin:{PAUSE_AFTER}:{}:{}",
        here.display(),
        go.display()
    );
    let after = format!("retr:{mode}:f01.bin");
    let session = Background(Some(lab.spawn_ftpscript(
        5,
        None,
        &["login", &first, &paused, &after, "cmd:NOOP=>200", "quit"],
    )));
    if !wait_for_file(&here, 20) {
        let (_, out) = session.finish();
        panic!("[{test}] the session did not reach the pause (the lab or the ALG is broken before any attack):\n{out}");
    }

    let ct = control_tuple(&lab);
    let (client, _) = ct.as_client();
    let ftpct = alg == Alg::Ftpct;
    let stats0 = ftpct.then(|| lab.ftpct_stats());
    let session0 = if ftpct {
        let s = ftpct_session(&lab, &client);
        assert!(
            s.is_some(),
            "[{test}] ftpct does not track the control connection {client} before the attack:\n{}",
            lab.ftpct_cli("sessions")
        );
        s
    } else {
        None
    };
    if let Some(s) = &session0 {
        // The premise of attack 1/5: the session has an offset (the rewrite changed a length).
        let offset = match attack.topology() {
            Topology::Dnat => "seq_reply",
            _ => "seq_orig",
        };
        let v = s.get(offset).cloned().unwrap_or_default();
        assert!(
            !v.starts_with("offset:+0"),
            "[{test}] the session has no sequence offset before the attack ({offset}={v}): {}",
            s["line"]
        );
    }
    let queued0 = lab.nfqueue_proc().map(|q| q.id_sequence);
    let rx0 = attacker_rx_packets(&lab);
    let invalid0 = conntrack_invalid(&lab);

    // The attack.
    let next = sniffer.as_ref().map(|_| {
        let text = std::fs::read_to_string(&next_file).unwrap_or_default();
        text.trim()
            .strip_prefix("NEXT ")
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or_else(|| {
                panic!("[{test}] the sniffer saw no data segment from the server: {text:?}")
            })
    });
    drop(sniffer);
    let (sent, spoof_run) = send_attack(&lab, attack, &ct, next);
    c.note(format!(
        "{attack:?} against {alg:?}: sent {sent} segments\n{}",
        spoof_run.stdout.trim_end()
    ));
    // Let the gateway handle them; after a RST, longer than ftpct's close linger (1 s).
    std::thread::sleep(Duration::from_millis(
        if matches!(attack, Attack::Rst | Attack::RstInWindow) {
            2500
        } else {
            300
        },
    ));

    // Right after the attack, while the transfer is still paused.
    let rx = attacker_rx_packets(&lab) - rx0;
    c.check(
        rx >= sent,
        format!("the gateway received {rx} packets on to-att, fewer than the {sent} sent: the attack did not arrive (the test is vacuous)"),
    );
    let invalid = conntrack_invalid(&lab) - invalid0;
    c.note(format!(
        "conntrack marked {invalid} packet(s) INVALID during the attack (conntrack -S)"
    ));
    let k = kernel_expectations_for_attack_port(&lab);
    c.check(
        k.is_empty(),
        format!("kernel expectation(s) for port {ATTACK_PORT}: {k:?}"),
    );
    let e = conntrack_entries_to_attack_port(&lab);
    c.check(
        e.is_empty(),
        format!("conntrack entries to port {ATTACK_PORT} before anyone connected there: {e:?}"),
    );
    if ftpct {
        if let (Some(q0), Some(q)) = (queued0, lab.nfqueue_proc().map(|q| q.id_sequence)) {
            c.check(
                q - q0 >= sent,
                format!("ftpct's queue got {} packets during the attack, fewer than the {sent} spoofed ones: they never reached ftpct", q - q0),
            );
        }
        let e = ftpct_expectations_for_attack_port(&lab);
        c.check(
            e.is_empty(),
            format!("expectation planted for port {ATTACK_PORT} (`ftpct list`): {e:?}"),
        );
        let before = session0.as_ref().expect("checked above");
        match ftpct_session(&lab, &client) {
            None => c.check(
                false,
                format!(
                    "ftpct no longer tracks the control connection {client} (was: {}); sessions now:\n{}",
                    before["line"],
                    lab.ftpct_cli("sessions").stdout
                ),
            ),
            Some(now) => c.check(
                session_identity(&now) == session_identity(before),
                format!(
                    "the session changed: before `{}`, after `{}`",
                    before["line"], now["line"]
                ),
            ),
        }
        let s0 = stats0.as_ref().expect("ftpct");
        let s1 = lab.ftpct_stats();
        for name in [
            "resyncs",
            "expect_created",
            "replies_unsolicited",
            "sessions_started",
        ] {
            let d = delta(s0, &s1, name);
            c.check(d == 0, format!("{name} +{d} during the attack"));
        }
    }

    // The rest of the session.
    std::fs::write(&go, b"").expect("pause.go");
    let (ok, out) = session.finish();
    c.check(
        ok,
        format!("the session failed after the attack:\n{}", out.trim_end()),
    );

    if let Some(listener) = listener {
        // A planted expectation would now let the outside peer reach the inside host's port.
        let port = ATTACK_PORT.to_string();
        let probe = lab.python(
            outside_ns,
            "spoof.py",
            &["connect", "--host", &public_ip, "--port", &port],
        );
        let accepted = listener.stop();
        c.check(
            !probe.ok() && !accepted.contains("ACCEPTED"),
            format!(
                "a connection from the {outside_ns} namespace to {public_ip}:{ATTACK_PORT} reached {inside_ip}:{ATTACK_PORT} (a pinhole): {}{}",
                probe.stdout.trim_end(),
                accepted.trim_end()
            ),
        );
        let p = pinhole_entries(&lab, &inside_ip);
        c.check(
            p.is_empty(),
            format!("conntrack entries to port {ATTACK_PORT} NATed to {inside_ip}: {p:?}"),
        );
    }
    let k = kernel_expectations_for_attack_port(&lab);
    c.check(
        k.is_empty(),
        format!("kernel expectation(s) for port {ATTACK_PORT} at the end: {k:?}"),
    );

    if ftpct {
        let e = ftpct_expectations_for_attack_port(&lab);
        c.check(
            e.is_empty(),
            format!("expectation for port {ATTACK_PORT} at the end (`ftpct list`): {e:?}"),
        );
        let s0 = stats0.as_ref().expect("ftpct");
        let s1 = lab.ftpct_stats();
        // The counters of the fix: every one must exist (a clear failure on a daemon without
        // them), then the refused segments must show in them.
        let own = match attack {
            Attack::SynAck => Some("synack_ignored"),
            Attack::Rst => Some("rst_ignored"),
            Attack::RstInWindow => Some("rst_ignored"),
            _ => None,
        };
        let names: Vec<&str> = std::iter::once("packets_out_of_window")
            .chain(own)
            .collect();
        let missing: Vec<String> = names.iter().filter_map(|n| counter(&s1, n).err()).collect();
        if !missing.is_empty() {
            for m in missing {
                c.check(false, m);
            }
        } else {
            let d_oow = delta(s0, &s1, "packets_out_of_window");
            match own {
                Some(name) if attack == Attack::RstInWindow => {
                    // In the window: only the exact-sequence rule refuses these.
                    let d_own = delta(s0, &s1, name);
                    c.check(
                        d_own >= sent,
                        format!("{sent} in-window RSTs, but {name} +{d_own} (packets_out_of_window +{d_oow})"),
                    );
                    c.note(format!("{name} +{d_own}, packets_out_of_window +{d_oow}"));
                }
                Some(name) => {
                    // Whichever check refuses the segment first counts it: its own counter or
                    // the window check's.
                    let d_own = delta(s0, &s1, name);
                    c.check(
                        d_own + d_oow >= sent,
                        format!(
                            "{sent} spoofed segments, but only {name} +{d_own} and packets_out_of_window +{d_oow}"
                        ),
                    );
                    c.note(format!("{name} +{d_own}, packets_out_of_window +{d_oow}"));
                }
                None => {
                    c.check(
                        d_oow > 0,
                        format!("{sent} spoofed segments, but packets_out_of_window +0"),
                    );
                    c.note(format!("packets_out_of_window +{d_oow}"));
                }
            }
        }
    }
    c.finish();
}

// ---- attack 1: SYN-ACK -------------------------------------------------------------------------

/// Issue 10, attack 1: four SYN-ACKs with the server's address and port, to the client's public
/// address and port, random seq/ack, on a live control connection whose client stream two PORT
/// rewrites shortened (masq: offset -4). ftpct must keep the session (same id, same offset): a
/// SYN-ACK on a live session is not a new connection unless it answers a SYN ftpct saw. The
/// transfer and the next PORT/RETR and NOOP must work; `synack_ignored` counts them.
#[test]
fn spoofed_synack_on_a_live_session_ftpct() {
    scenario(
        "spoofed_synack_on_a_live_session_ftpct",
        Attack::SynAck,
        Alg::Ftpct,
    );
}

/// Attack 1 against the kernel helper (reference). Measured: conntrack lets such a SYN-ACK
/// through as "ignored" (not INVALID) and the client answers it with a duplicate ACK; the
/// helper and its sequence adjustment are unaffected and the session goes on.
#[test]
fn spoofed_synack_on_a_live_session_kernel_helper() {
    scenario(
        "spoofed_synack_on_a_live_session_kernel_helper",
        Attack::SynAck,
        Alg::KernelHelper,
    );
}

// ---- attack 2: RST -----------------------------------------------------------------------------

/// Issue 10, attack 2: four RSTs from the server's address at random sequence numbers (spread
/// over the sequence space) while the transfer is paused. ftpct must not close the session
/// (accept a RST only at the exact expected sequence number, as the kernel does): 2.5 s later,
/// more than the 1 s close linger, the session is still open with its offset, and the rest of
/// the session works; `rst_ignored` counts them.
#[test]
fn spoofed_rst_with_a_random_seq_ftpct() {
    scenario(
        "spoofed_rst_with_a_random_seq_ftpct",
        Attack::Rst,
        Alg::Ftpct,
    );
}

/// Attack 2 against the kernel helper. Measured: conntrack marks the RSTs INVALID (not in the
/// window) and they never reach the client.
#[test]
fn spoofed_rst_with_a_random_seq_kernel_helper() {
    scenario(
        "spoofed_rst_with_a_random_seq_kernel_helper",
        Attack::Rst,
        Alg::KernelHelper,
    );
}

/// Attack 2 by an attacker who knows where the window is (it watched the server's segments on
/// the gateway's link, or sprayed with a step smaller than the window): four RSTs from the
/// server's address at 1, 64, 512 and 2048 bytes past the server's next sequence number,
/// inside the client's window but not at the exact next sequence number. conntrack lets them
/// through (a possible challenge ACK) and the client answers each with a challenge ACK (RFC
/// 5961); ftpct must not close the session either: `rst_ignored` counts every one.
#[test]
fn spoofed_rst_in_the_window_ftpct() {
    scenario(
        "spoofed_rst_in_the_window_ftpct",
        Attack::RstInWindow,
        Alg::Ftpct,
    );
}

/// The in-window RSTs against the kernel helper. Measured: conntrack accepts them without
/// changing the connection's state, the client sends challenge ACKs, the session goes on.
#[test]
fn spoofed_rst_in_the_window_kernel_helper() {
    scenario(
        "spoofed_rst_in_the_window_kernel_helper",
        Attack::RstInWindow,
        Alg::KernelHelper,
    );
}

// ---- attack 4 (and 3): blind PORT --------------------------------------------------------------

/// Issue 10, attacks 4 and 3: 16 sequence numbers spread over the whole space (one of them is
/// less than 2^28 ahead of the real client stream, far outside its window), each sent 8 times,
/// carrying `x\r\nPORT 10,77,100,102,31,144\r\n` from the client's address. ftpct must not
/// resync onto them nor parse them: no expectation for port 8080, no resync, the session's
/// stream position intact (the next real PORT is rewritten: `500 Illegal PORT command.`
/// otherwise), nothing from the server reaches the client's listener on 8080 through
/// 203.0.113.1:8080; `packets_out_of_window` counts them.
#[test]
fn blind_spoofed_port_ftpct() {
    scenario("blind_spoofed_port_ftpct", Attack::BlindPort, Alg::Ftpct);
}

/// Attack 4 against the kernel helper. Measured: conntrack marks every one of them INVALID
/// (outside the window), the helper never parses them.
#[test]
fn blind_spoofed_port_kernel_helper() {
    scenario(
        "blind_spoofed_port_kernel_helper",
        Attack::BlindPort,
        Alg::KernelHelper,
    );
}

// ---- attack 5: spoofed 227 behind a port forward -----------------------------------------------

/// Issue 10, attack 5: the server 10.77.2.2 behind the gateway's port forward (dnat), passive
/// mode (each 227 rewrite lengthens the server's stream: offset +4). The attacker sprays
/// `x\r\n227 Entering Passive Mode (10,77,2,2,31,144).\r\n` with the server's private address
/// (which rp_filter would drop on to-att: ftpct sees it before that). ftpct must not take it:
/// no expectation 203.0.113.1:8080 → 10.77.2.2:8080, the client cannot reach the server's
/// listener on 8080 through the public address, the session's 226 and next PASV/RETR work;
/// `packets_out_of_window` counts them.
#[test]
fn spoofed_227_opens_no_pinhole_ftpct() {
    scenario(
        "spoofed_227_opens_no_pinhole_ftpct",
        Attack::Spoofed227,
        Alg::Ftpct,
    );
}

/// Attack 5 against the kernel helper. Measured: conntrack marks them INVALID; no kernel
/// expectation, no pinhole.
#[test]
fn spoofed_227_opens_no_pinhole_kernel_helper() {
    scenario(
        "spoofed_227_opens_no_pinhole_kernel_helper",
        Attack::Spoofed227,
        Alg::KernelHelper,
    );
}

// ---- control -----------------------------------------------------------------------------------

/// The same sessions (masq with PORT, dnat with PASV), without an attack and without any ALG,
/// must fail: so the sessions above succeed only because the ALG kept working under attack.
#[test]
fn the_session_needs_an_alg() {
    let test = "the_session_needs_an_alg";
    // masq: vsftpd refuses the client's private address; dnat: the client gets the server's
    // private address, which it has no route to.
    for (topo, mode, symptom) in [
        (Topology::Masq, "port", "500 Illegal PORT command."),
        (
            Topology::Dnat,
            "pasv",
            "227 Entering Passive Mode (10,77,2,2,",
        ),
    ] {
        let lab = Lab::up(test, topo);
        lab.server();
        let first = format!("retr:{mode}:small.txt");
        let r = lab.ftpscript(3, None, &["login", &first, "quit"]);
        assert!(
            !r.ok(),
            "[{test}] {} {mode} without an ALG succeeded: the scenario does not need the ALG: {r}",
            topo.name()
        );
        assert!(
            r.contains(symptom),
            "[{test}] {} {mode} without an ALG failed, but not with `{symptom}`: {r}",
            topo.name()
        );
    }
}
