//! The engine driven like the kernel drives it, with simulated TCP endpoints, a simulated NAT
//! gateway and a simulated clock (in the spirit of quinn-proto's test harness).
//!
//! The gateway model (`ftpct_testutil::gateway`) runs each packet through: the engine at the
//! pre-conntrack hook, a model of conntrack's strict window check, DNAT / de-SNAT, the engine at
//! the post-conntrack hook, and SNAT / de-DNAT. Receivers assert that every byte they get agrees
//! with what they got before at the same position (one consistent stream), senders assert that
//! no ACK acknowledges data they never sent.

use ftpct::engine::{Action, Config, CtLookup, Engine, Event, NoConntrack, Verdict};
use ftpct::policy::Policy;
use ftpct::types::{CtTuples, FlowTuple, Hook, Timestamp};
use ftpct_testutil::drive::found;
use ftpct_testutil::gateway::{CLI, GW_PUB, SRV};
use ftpct_testutil::sender::{timed_split, SenderModel, TimedRun};
use ftpct_testutil::{sa, Endpoint, Gw, Lab, Seg, SimConntrack};
use proptest::prelude::*;

fn cfg() -> Config {
    Config::default()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// With `keep_event_lines`, the events of parsed messages and parse failures name their line
/// (as sent, without its terminator), valid while the event is handled; other lines are not
/// copied. Off (the default), no line is kept.
#[test]
fn message_events_carry_their_line() {
    let mut lab = Lab::masq(cfg());
    lab.gw.engine.keep_event_lines(true);
    lab.server_says("220 ready\r\n");
    lab.client_says("USER anonymous\r\n");
    lab.server_says("331 ok\r\n");
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    lab.server_says("200 PORT command successful.\r\n");
    lab.client_says("PASV\r\n");
    lab.server_says("227 Entering Passive Mode (198,51,100,2,300,1)\r\n");
    let lines: Vec<Option<String>> = lab
        .gw
        .seen
        .lines
        .iter()
        .map(|l| l.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect();
    assert_eq!(
        lines,
        [
            Some("PORT 10,0,0,2,195,80".to_string()),
            Some("PASV".to_string()),
            Some("227 Entering Passive Mode (198,51,100,2,300,1)".to_string()),
        ]
    );
    // read after a later poll returned None: no longer there
    let stale = lab.events().iter().find_map(|e| match e {
        Event::Message { line, .. } => Some(*line),
        _ => None,
    });
    assert_eq!(lab.gw.engine.event_line(stale.expect("a message")), None);

    let mut off = Lab::masq(cfg());
    off.client_says("PORT 10,0,0,2,195,80\r\n");
    assert_eq!(off.gw.seen.lines, [None]);
}

#[test]
fn masq_port_rewritten_and_data_connection_admitted_with_nat() {
    let mut lab = Lab::masq(cfg());
    lab.server_says("220 ready\r\n");
    lab.client_says("USER anonymous\r\n");
    lab.server_says("331 ok\r\n");
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    lab.server_says("200 PORT command successful.\r\n");
    lab.client_says("RETR f\r\n");
    assert_eq!(
        lab.server_got(),
        "USER anonymous\r\nPORT 203,0,113,1,195,80\r\nRETR f\r\n"
    );
    assert_eq!(
        lab.client_got(),
        "220 ready\r\n331 ok\r\n200 PORT command successful.\r\n"
    );
    lab.all_acked();
    let acts = lab.gw.take_actions();
    assert!(acts.contains(&Action::WatchDst {
        dst: sa("203.0.113.1:50000"),
        timeout_secs: 300
    }));
    // the server's active-mode data connection: from its port 20 to the public address
    let e = lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50000")
        .expect("related entry");
    assert_eq!(
        e.original,
        FlowTuple::new(sa("198.51.100.2:20"), sa("203.0.113.1:50000"))
    );
    assert_eq!(e.nat_dst, Some(sa("10.0.0.2:50000")));
    assert_eq!(e.nat_src, Some("198.51.100.2".parse().unwrap()));
    assert_eq!(e.master, lab.gw.ct.original);
    // used: a second SYN does not match
    assert!(lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50000")
        .is_none());
    assert!(lab.gw.engine.expectations().is_empty());
}

#[test]
fn rewrites_that_lengthen_and_shorten_keep_seq_and_ack_consistent() {
    let mut lab = Lab::masq(cfg());
    let mut want = String::new();
    // public address 203.0.113.1 is longer than 10.0.0.2 and shorter than 10.100.200.250
    for (i, private) in ["10,0,0,2", "10,0,0,2", "10,0,0,2"].iter().enumerate() {
        let port = 50000 + i as u16;
        lab.client_says(&format!(
            "PORT {},{},{}\r\n",
            private,
            port >> 8,
            port & 255
        ));
        want.push_str(&format!(
            "PORT 203,0,113,1,{},{}\r\n",
            port >> 8,
            port & 255
        ));
        lab.server_says("200 ok\r\n");
        lab.client_says("NOOP\r\n");
        want.push_str("NOOP\r\n");
    }
    assert_eq!(lab.server_got(), want);
    lab.all_acked();

    let ct = CtTuples {
        original: FlowTuple::new(sa("10.100.200.250:40000"), sa(SRV)),
        reply: FlowTuple::new(sa(SRV), sa("1.2.3.4:61000")),
    };
    let mut lab = Lab::with(
        cfg(),
        ct,
        sa("10.100.200.250:40000"),
        sa(SRV),
        sa(SRV),
        sa("1.2.3.4:61000"),
    );
    let mut want = String::new();
    for i in 0..20u16 {
        let port = 40000 + i * 7;
        lab.client_says(&format!(
            "PORT 10,100,200,250,{},{}\r\n",
            port >> 8,
            port & 255
        ));
        want.push_str(&format!("PORT 1,2,3,4,{},{}\r\n", port >> 8, port & 255));
        lab.server_says("200 ok\r\n");
    }
    assert_eq!(lab.server_got(), want);
    lab.all_acked();
}

#[test]
fn port_split_across_two_segments_is_rewritten() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("USER a\r\n");
    let (a, b) = lab.cli.write(b"PORT 10,0,0,2,195,80\r\n");
    // the first piece goes only up to the address, which is held...
    assert!(lab.c2s(a, a + 9));
    assert_eq!(lab.server_got(), "USER a\r\nPORT ");
    // ...and merged into the second
    assert!(lab.c2s(a + 9, b));
    assert_eq!(lab.server_got(), "USER a\r\nPORT 203,0,113,1,195,80\r\n");
    lab.all_acked();
    assert!(lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50000")
        .is_some());
}

#[test]
fn split_port_after_a_complete_line_in_the_same_segment() {
    let mut lab = Lab::masq(cfg());
    let (a, b) = lab.cli.write(b"NOOP\r\nPORT 10,0,0,2,195,80\r\n");
    // the segment carries NOOP and the start of PORT: NOOP and the verb go through, the
    // start of the address is held
    assert!(lab.c2s(a, a + 12));
    assert_eq!(lab.server_got(), "NOOP\r\nPORT ");
    // the sender's retransmission timer fires: resend from the first unacknowledged byte
    assert!(lab.c2s(a + 6, b));
    assert_eq!(lab.server_got(), "NOOP\r\nPORT 203,0,113,1,195,80\r\n");
    lab.all_acked();
}

#[test]
fn held_line_retransmitted_again_and_again_is_never_let_through() {
    let mut lab = Lab::masq(cfg());
    let (a, b) = lab.cli.write(b"PORT 10,0,0,2,195,80\r\n");
    let base = lab.cli.isn.wrapping_add(1);
    assert!(lab.c2s(a, a + 9), "the verb goes through");
    assert_eq!(lab.cli.snd_una, base.wrapping_add(a as u32 + 5));
    // The sender waits for the held part (a retransmission timer, or Nagle): however often it
    // comes again, it is never let through. ftpct sends the byte before it again instead, which
    // the server acknowledges at once, and acknowledges the held bytes to the client itself.
    for _ in 0..20 {
        assert!(lab.c2s(a + 5, a + 9));
        assert_eq!(lab.server_got(), "PORT ");
    }
    assert_eq!(
        lab.cli.snd_una,
        base.wrapping_add(a as u32 + 9),
        "the held bytes are acknowledged by ftpct"
    );
    // so the client sends the rest, and the line is rewritten as a whole
    assert!(lab.c2s(a + 9, b));
    assert_eq!(lab.server_got(), "PORT 203,0,113,1,195,80\r\n");
    lab.all_acked();
    assert!(!lab
        .events()
        .iter()
        .any(|e| matches!(e, Event::HoldTimedOut { .. } | Event::NotRewritten { .. })));
    let st = lab.gw.engine.stats();
    assert_eq!(
        (st.hold_acked, st.hold_timeouts, st.hold_gave_up),
        (1, 0, 0)
    );
    // the connection was marked once (its acknowledgements are changed after conntrack)
    let marks = lab
        .gw
        .take_actions()
        .into_iter()
        .filter(|a| matches!(a, Action::MarkAdjusted { .. }))
        .count();
    assert!(marks >= 1);
}

#[test]
fn retransmissions_and_resegmentation_of_the_rewritten_segment() {
    let mut lab = Lab::masq(cfg());
    let (a, b) = lab.cli.write(b"PORT 10,0,0,2,195,80\r\nNOOP\r\n");
    let p = lab.cli.seg(a, b);
    let first = lab.gw.forward(&p).unwrap();
    // the same segment again: same bytes out
    let again = lab.gw.forward(&p).unwrap();
    assert_eq!(first.payload, again.payload);
    assert_eq!(first.seq, again.seq);
    // re-segmented retransmissions splitting the rewritten range
    for cut in [a + 1, a + 8, a + 12, a + 20, a + 24] {
        let x = lab.gw.forward(&lab.cli.seg(a, cut)).unwrap();
        let y = lab.gw.forward(&lab.cli.seg(cut, b)).unwrap();
        lab.srv.receive(&x);
        lab.srv.receive(&y);
    }
    lab.srv.receive(&first);
    assert_eq!(lab.server_got(), "PORT 203,0,113,1,195,80\r\nNOOP\r\n");
    // only one expectation, despite the repeats
    assert_eq!(lab.gw.engine.expectations().len(), 1);
}

#[test]
fn out_of_order_segment_is_dropped_then_accepted_in_order() {
    let mut lab = Lab::masq(cfg());
    let (a, b) = lab.cli.write(b"NOOP\r\nPORT 10,0,0,2,195,80\r\n");
    assert!(!lab.c2s(a + 6, b), "segment after a gap is dropped");
    assert!(lab.c2s(a, a + 6));
    assert!(lab.c2s(a + 6, b));
    assert_eq!(lab.server_got(), "NOOP\r\nPORT 203,0,113,1,195,80\r\n");
    lab.all_acked();
}

#[test]
fn sack_blocks_are_mapped_back() {
    let mut lab = Lab::masq(cfg());
    let (a, _) = lab.cli.write(b"PORT 10,0,0,2,195,80\r\n");
    let (c, d) = lab.cli.write(b"NOOP\r\n");
    let (e, f) = lab.cli.write(b"NOOP\r\n");
    assert!(lab.c2s(a, c));
    // lose the first NOOP after the gateway, deliver the second: the server SACKs it
    let lost = lab.gw.forward(&lab.cli.seg(c, d)).unwrap();
    let second = lab.gw.forward(&lab.cli.seg(e, f)).unwrap();
    let ack = lab.srv.receive(&second);
    assert_eq!(ack.sack.len(), 1);
    let back = lab.gw.forward(&ack).unwrap();
    // in the client's space the SACK block is exactly the second NOOP
    let base = lab.cli.isn.wrapping_add(1);
    assert_eq!(
        back.sack,
        vec![(base.wrapping_add(e as u32), base.wrapping_add(f as u32))]
    );
    lab.cli.receive(&back);
    lab.srv.receive(&lost);
    assert_eq!(
        lab.server_got(),
        "PORT 203,0,113,1,195,80\r\nNOOP\r\nNOOP\r\n"
    );
}

#[test]
fn dnat_server_227_and_229_are_rewritten_to_the_public_address() {
    let mut lab = Lab::dnat(cfg());
    lab.client_says("PASV\r\n");
    lab.server_says("227 Entering Passive Mode (10,1,0,2,117,48).\r\n");
    assert_eq!(
        lab.client_got(),
        "227 Entering Passive Mode (203,0,113,1,117,48).\r\n"
    );
    let e = lab
        .data_syn("198.51.100.7:41000", "203.0.113.1:30000")
        .expect("related");
    assert_eq!(e.nat_dst, Some(sa("10.1.0.2:30000")));
    assert_eq!(e.nat_src, Some("198.51.100.7".parse().unwrap()));
    lab.client_says("EPSV\r\n");
    lab.server_says("229 Entering Extended Passive Mode (|||30001|)\r\n");
    assert!(
        lab.client_got().ends_with("(|||30001|)\r\n"),
        "port kept when free"
    );
    let e = lab
        .data_syn("198.51.100.7:41001", "203.0.113.1:30001")
        .expect("related");
    assert_eq!(e.nat_dst, Some(sa("10.1.0.2:30001")));
    lab.all_acked();
}

/// The passive command is context, not a filter: a 229 answering PASV (what many servers
/// send) and a 227 answering EPSV both give their expectation; a 227 nobody asked for is taken
/// too, as the kernel helper takes it, and counted as unsolicited.
#[test]
fn passive_replies_answering_either_command_or_none() {
    let mut lab = Lab::dnat(cfg());
    lab.client_says("PASV\r\n");
    lab.server_says("229 Entering Extended Passive Mode (|||30002|)\r\n");
    assert!(lab
        .data_syn("198.51.100.7:41002", "203.0.113.1:30002")
        .is_some());
    lab.client_says("EPSV\r\n");
    lab.server_says("227 Entering Passive Mode (10,1,0,2,117,51).\r\n");
    assert!(lab.client_got().ends_with("(203,0,113,1,117,51).\r\n"));
    assert!(lab
        .data_syn("198.51.100.7:41003", "203.0.113.1:30003")
        .is_some());
    assert_eq!(lab.gw.engine.stats().replies_unsolicited, 0);
    lab.server_says("227 Entering Passive Mode (10,1,0,2,117,52).\r\n");
    assert!(lab.client_got().ends_with("(203,0,113,1,117,52).\r\n"));
    assert_eq!(lab.gw.engine.stats().replies_unsolicited, 1);
    lab.all_acked();
}

#[test]
fn multiline_227_and_zero_address() {
    let mut lab = Lab::dnat(cfg());
    lab.client_says("PASV\r\n");
    lab.server_says("227-Entering Passive Mode\r\n227-(10,1,0,2,117,48)\r\n227 ok\r\n");
    assert!(lab.client_got().contains("(203,0,113,1,117,48)"));
    lab.client_says("PASV\r\n");
    lab.server_says("227 =0,0,0,0,117,49\r\n");
    // 0,0,0,0 means the control peer: nothing to rewrite, but the expectation is made
    assert!(lab.client_got().ends_with("227 =0,0,0,0,117,49\r\n"));
    assert!(lab
        .data_syn("198.51.100.7:41001", "203.0.113.1:30001")
        .is_some());
}

#[test]
fn ipv6_eprt_and_epsv_without_nat() {
    let mut lab = Lab::v6(cfg());
    lab.client_says("EPRT |2|fd77:1::2|50000|\r\n");
    assert_eq!(lab.server_got(), "EPRT |2|fd77:1::2|50000|\r\n");
    let e = lab
        .data_syn("[fd77:2::2]:20", "[fd77:1::2]:50000")
        .expect("related");
    assert_eq!(e.nat_dst, None);
    assert_eq!(e.nat_src, None);
    lab.client_says("EPSV\r\n");
    lab.server_says("229 Entering Extended Passive Mode (|||30000|)\r\n");
    assert!(lab
        .data_syn("[fd77:1::2]:45000", "[fd77:2::2]:30000")
        .is_some());
    // a SYN from another source does not match
    lab.client_says("EPSV\r\n");
    lab.server_says("229 Entering Extended Passive Mode (|||30002|)\r\n");
    assert!(lab
        .data_syn("[fd77:1::99]:45000", "[fd77:2::2]:30002")
        .is_none());
}

#[test]
fn bounce_and_privileged_ports_are_refused_and_line_untouched() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 192,0,2,9,195,80\r\n");
    lab.client_says("PORT 10,0,0,2,0,22\r\n");
    assert_eq!(
        lab.server_got(),
        "PORT 192,0,2,9,195,80\r\nPORT 10,0,0,2,0,22\r\n"
    );
    assert!(lab.gw.engine.expectations().is_empty());
    assert_eq!(lab.gw.engine.stats().refused_bounce, 1);
    assert_eq!(lab.gw.engine.stats().refused_privileged, 1);
    // permitted when configured
    let mut c = cfg();
    c.policy = Policy {
        allow_third_party: true,
        allow_privileged_ports: true,
        ..Policy::default()
    };
    let mut lab = Lab::masq(c);
    lab.client_says("PORT 10,0,0,2,0,22\r\n");
    assert_eq!(lab.gw.engine.expectations().len(), 1);
}

#[test]
fn injection_attempts_are_ignored() {
    let mut lab = Lab::masq(cfg());
    // command text inside another line
    lab.client_says("NOOP PORT 10,0,0,2,195,80\r\n");
    // a line that starts in one segment and contains PORT at the start of the next segment
    let (a, b) = lab.cli.write(b"SITE xx\r\n");
    let _ = (a, b);
    let (a, _) = lab.cli.write(b"STOR a");
    let (_, d) = lab.cli.write(b"PORT 10,0,0,2,195,81\r\n");
    assert!(lab.c2s(a - 9, a + 6));
    assert!(lab.c2s(a + 6, d));
    // PORT in the server -> client direction
    lab.server_says("PORT 10,0,0,2,195,82\r\n");
    // a 227 in the client -> server direction
    lab.client_says("227 Entering Passive Mode (198,51,100,2,195,83)\r\n");
    assert!(lab.gw.engine.expectations().is_empty());
    assert_eq!(lab.gw.engine.stats().rewrites, 0);
}

#[test]
fn tls_stops_inspection_with_a_warning() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("AUTH TLS\r\n");
    lab.server_says("234 Proceed with negotiation.\r\n");
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, Event::TlsStarted { .. })));
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    assert_eq!(lab.server_got(), "AUTH TLS\r\nPORT 10,0,0,2,195,80\r\n");
    assert!(lab.gw.engine.expectations().is_empty());
    assert_eq!(lab.gw.engine.stats().tls_sessions, 1);
}

#[test]
fn unparseable_227_passes_and_session_continues() {
    let mut lab = Lab::dnat(cfg());
    lab.client_says("PASV\r\n");
    lab.server_says("227 Logout.\r\n");
    assert_eq!(lab.client_got(), "227 Logout.\r\n");
    assert_eq!(lab.gw.engine.stats().parse_failures, 1);
    lab.client_says("PASV\r\n");
    lab.server_says("227 Entering Passive Mode (10,1,0,2,117,48).\r\n");
    assert!(lab.client_got().ends_with("(203,0,113,1,117,48).\r\n"));
}

#[test]
fn per_session_limit_evicts_the_oldest_and_expiry_unwatches() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    lab.client_says("PORT 10,0,0,2,195,81\r\n");
    assert_eq!(lab.gw.engine.expectations().len(), 1);
    assert!(lab.gw.take_actions().contains(&Action::UnwatchDst {
        dst: sa("203.0.113.1:50000")
    }));
    assert!(lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50000")
        .is_none());
    // expiry after 300 s
    let t = lab.gw.engine.poll_timeout().expect("a timer");
    assert!(t <= lab.gw.now.plus(std::time::Duration::from_secs(300)));
    lab.gw
        .engine
        .handle_timeout(lab.gw.now.plus(std::time::Duration::from_secs(301)));
    assert!(lab.gw.engine.expectations().is_empty());
    let mut unwatched = false;
    while let Some(a) = lab.gw.engine.poll_action() {
        unwatched |= a
            == Action::UnwatchDst {
                dst: sa("203.0.113.1:50001"),
            };
    }
    assert!(unwatched);
}

#[test]
fn public_port_moves_when_taken_by_another_session() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    // a second client behind the same gateway announcing the same port
    let ct2 = CtTuples {
        original: FlowTuple::new(sa("10.0.0.3:40000"), sa(SRV)),
        reply: FlowTuple::new(sa(SRV), sa("203.0.113.1:61001")),
    };
    let mut c2 = Endpoint::new(sa("10.0.0.3:40000"), sa(SRV), 5000, 0x7000_0000);
    lab.gw.ct = ct2;
    lab.gw.td_end = [None, None];
    let synack = Seg {
        src: sa(SRV),
        dst: sa("203.0.113.1:61001"),
        seq: 0x7000_0000,
        ack: 5001,
        syn: true,
        ack_flag: true,
        ..Default::default()
    };
    lab.gw.forward(&synack).unwrap();
    let (a, b) = c2.write(b"PORT 10,0,0,3,195,80\r\n");
    let out = lab.gw.forward(&c2.seg(a, b)).unwrap();
    assert_eq!(out.payload, b"PORT 203,0,113,1,195,81\r\n");
    let e = lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50001")
        .expect("second session");
    assert_eq!(e.nat_dst, Some(sa("10.0.0.3:50000")));
}

#[test]
fn session_ends_after_close_and_its_expectations_go() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    let (a, _) = lab.cli.write(b"");
    let mut fin = lab.cli.seg(a, a);
    fin.fin = true;
    lab.gw.forward(&fin).unwrap();
    let mut sfin = lab.srv.seg(0, 0);
    sfin.fin = true;
    lab.gw.forward(&sfin).unwrap();
    assert_eq!(lab.gw.engine.session_count(), 1);
    // The close moved the session's one deadline (to the linger), it did not add one.
    assert_eq!(lab.gw.engine.table_footprint(), (1, 1, 4));
    lab.gw
        .engine
        .handle_timeout(lab.gw.now.plus(std::time::Duration::from_secs(11)));
    assert_eq!(lab.gw.engine.session_count(), 0);
    assert!(lab.gw.engine.expectations().is_empty());
    // Nothing of the session is left (its idle-timeout entry used to linger for 6 h).
    assert_eq!(lab.gw.engine.table_footprint(), (0, 0, 0));
}

#[test]
fn overlong_lines_are_bounded_and_tracking_recovers() {
    let mut lab = Lab::masq(cfg());
    let junk = vec![b'x'; 1400];
    for _ in 0..200 {
        let (a, b) = lab.cli.write(&junk);
        assert!(lab.c2s(a, b));
    }
    lab.client_says("\r\nPORT 10,0,0,2,195,80\r\n");
    assert!(lab.server_got().ends_with("PORT 203,0,113,1,195,80\r\n"));
    assert!(lab.gw.engine.stats().lines_too_long >= 1);
}

#[test]
fn session_picked_up_mid_stream_starts_at_a_line_boundary() {
    // no SYN-ACK seen (e.g. daemon restarted without state)
    let ct = CtTuples {
        original: FlowTuple::new(sa(CLI), sa(SRV)),
        reply: FlowTuple::new(sa(SRV), sa(GW_PUB)),
    };
    let mut gw = Gw::new(cfg(), ct);
    let mut cli = Endpoint::new(sa(CLI), sa(SRV), 100, 200);
    let (a, b) = cli.write(b"T 10,0,0,2,195,80\r\nPORT 10,0,0,2,195,81\r\n");
    let out = gw.forward(&cli.seg(a, b)).unwrap();
    assert_eq!(
        out.payload,
        b"T 10,0,0,2,195,80\r\nPORT 203,0,113,1,195,81\r\n"
    );
}

/// `pickup_at_segment_start`: the kernel helper's behaviour for a session picked up mid-stream
/// (the first segment starts a line); off by default, where the same segment is not rewritten.
#[test]
fn pickup_at_segment_start_trusts_the_first_segment() {
    let ct = CtTuples {
        original: FlowTuple::new(sa(CLI), sa(SRV)),
        reply: FlowTuple::new(sa(SRV), sa(GW_PUB)),
    };
    for (trusted, want) in [
        (false, "PORT 10,0,0,2,195,80\r\n"),
        (true, "PORT 203,0,113,1,195,80\r\n"),
    ] {
        let mut c = cfg();
        c.policy.pickup_at_segment_start = trusted;
        let mut gw = Gw::new(c, ct);
        let mut cli = Endpoint::new(sa(CLI), sa(SRV), 100, 200);
        let (a, b) = cli.write(b"PORT 10,0,0,2,195,80\r\n");
        let out = gw.forward(&cli.seg(a, b)).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.payload),
            want,
            "trusted={trusted}"
        );
    }
}

#[test]
fn unknown_flows_and_garbage_are_accepted_untouched() {
    let mut e = Engine::new(cfg());
    for n in 0..200usize {
        let junk: Vec<u8> = (0..n).map(|i| (i * 7 + n * 13) as u8).collect();
        assert_eq!(
            e.handle_packet(&junk, Hook::PreConntrack, Timestamp::ZERO, &mut NoConntrack),
            Verdict::Accept
        );
    }
    // SYN to nothing expected
    let syn = Seg {
        src: sa("1.1.1.1:5"),
        dst: sa("2.2.2.2:6"),
        syn: true,
        ..Default::default()
    };
    assert_eq!(
        e.handle_packet(
            &syn.bytes(),
            Hook::PreConntrack,
            Timestamp::ZERO,
            &mut NoConntrack
        ),
        Verdict::Accept
    );
    assert_eq!(e.stats().syn_unmatched, 1);
}

// ---------------------------------------------------------------------------------------------
// Property: any interleaving of segmentation, loss after the gateway, duplication and
// retransmission delivers exactly the rewritten stream, with every ACK valid for the sender and
// for conntrack.

fn script() -> (Vec<u8>, Vec<u8>) {
    let mut c = Vec::new();
    let mut want = Vec::new();
    for i in 0..6u16 {
        let port = 50000 + i;
        c.extend_from_slice(b"TYPE I\r\n");
        want.extend_from_slice(b"TYPE I\r\n");
        c.extend_from_slice(format!("PORT 10,0,0,2,{},{}\r\n", port >> 8, port & 255).as_bytes());
        want.extend_from_slice(
            format!("PORT 203,0,113,1,{},{}\r\n", port >> 8, port & 255).as_bytes(),
        );
        c.extend_from_slice(b"RETR file\r\n");
        want.extend_from_slice(b"RETR file\r\n");
    }
    (c, want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn stream_survives_any_segmentation_loss_and_retransmission(
        ops in prop::collection::vec((1usize..40, any::<bool>(), any::<bool>()), 1..200),
    ) {
        let (script, want) = script();
        let mut lab = Lab::masq(cfg());
        lab.cli.write(&script);
        let total = script.len();
        // The sender: sends from snd position with random sizes; "loss" after the gateway
        // drops a delivered packet; "dup" sends the segment twice. When it reaches the end it
        // goes back to the first unacknowledged byte (retransmission), until all is acked.
        let mut pos = 0usize;
        let mut steps = 0;
        let mut i = 0;
        // bounded loss, so that a schedule aligned with the sender's cycle cannot starve it
        let mut losses_left = 40;
        while steps < 5000 {
            steps += 1;
            let acked = lab.cli.snd_una.wrapping_sub(lab.cli.isn.wrapping_add(1)) as usize;
            if acked == total { break; }
            if pos >= total { pos = acked; }
            let (size, lose, dup) = ops[i % ops.len()];
            i += 1;
            let end = (pos + size).min(total);
            let seg = lab.cli.seg(pos, end);
            let times = if dup { 2 } else { 1 };
            for _ in 0..times {
                if let Some(d) = lab.gw.forward(&seg) {
                    if lose && losses_left > 0 { losses_left -= 1; continue; }
                    let ack = lab.srv.receive(&d);
                    if let Some(back) = lab.gw.forward(&ack) {
                        lab.cli.receive(&back);
                    }
                }
            }
            pos = end;
        }
        prop_assert_eq!(lab.srv.received(), want);
        lab.all_acked();
        prop_assert_eq!(lab.gw.engine.stats().rewrites, 6);
    }
}

/// Moves the lab's gateway onto a new engine restored from what the daemon would have written:
/// the journal records as they were appended (`snapshot == false`) or one snapshot.
fn restart(lab: &mut Lab, snapshot: bool) -> ftpct::state::LoadReport {
    let mut text = String::from("ftpct-state 1 boot=test\n");
    if snapshot {
        let mut recs = Vec::new();
        lab.gw.engine.snapshot(&mut recs);
        for r in &recs {
            ftpct::state::encode(r, &mut text);
        }
    } else {
        while let Some(r) = lab.gw.engine.poll_journal() {
            ftpct::state::encode(&r, &mut text);
        }
    }
    let mut e = Engine::new(cfg());
    let report = ftpct::state::load_text(&text, "test", &mut e, lab.gw.now);
    lab.gw.engine = e;
    report
}

#[test]
fn restart_from_journal_or_snapshot_continues_every_session() {
    for snapshot in [false, true] {
        let mut lab = Lab::masq(cfg());
        let mut want = String::new();
        for i in 0..5u16 {
            let port = 50000 + i;
            lab.client_says(&format!("PORT 10,0,0,2,{},{}\r\n", port >> 8, port & 255));
            want.push_str(&format!(
                "PORT 203,0,113,1,{},{}\r\n",
                port >> 8,
                port & 255
            ));
            lab.server_says("200 ok\r\n");
        }
        // the last PORT's expectation is pending; a retransmission of an early segment is due
        let (a, b) = (0, 22);
        let report = restart(&mut lab, snapshot);
        assert_eq!(report.sessions, 1, "snapshot={snapshot}");
        assert_eq!(report.expectations, 1);
        assert!(report.corrupt_at.is_none() && !report.stale);
        // the old segment is mapped exactly as before the restart
        let again = lab.gw.forward(&lab.cli.seg(a, b)).unwrap();
        lab.srv.receive(&again);
        // the pending expectation survived
        assert!(lab
            .data_syn("198.51.100.2:20", "203.0.113.1:50004")
            .is_some());
        // and the session goes on: more rewrites, acks still consistent
        for i in 5..8u16 {
            let port = 50000 + i;
            lab.client_says(&format!("PORT 10,0,0,2,{},{}\r\n", port >> 8, port & 255));
            want.push_str(&format!(
                "PORT 203,0,113,1,{},{}\r\n",
                port >> 8,
                port & 255
            ));
            lab.server_says("200 ok\r\n");
        }
        assert_eq!(lab.server_got(), want, "snapshot={snapshot}");
        lab.all_acked();
    }
}

#[test]
fn restart_in_the_middle_of_a_line_resumes_at_the_next_line() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    // a line that is not a candidate for holding is half forwarded when the daemon dies
    let (a, b) = lab.cli.write(b"NOOP and some text\r\n");
    assert!(lab.c2s(a, a + 8));
    restart(&mut lab, false);
    // the sender continues after the forwarded part: the gap is accepted, not dropped forever
    assert!(lab.c2s(a + 8, b));
    lab.client_says("PORT 10,0,0,2,195,81\r\n");
    assert!(lab
        .server_got()
        .ends_with("NOOP and some text\r\nPORT 203,0,113,1,195,81\r\n"));
    lab.all_acked();
}

#[test]
fn a_gap_that_never_fills_is_skipped_instead_of_wedging_the_session() {
    let mut lab = Lab::masq(cfg());
    // bytes that reached the server without passing through the engine (queue bypass)
    let (a, b) = lab.cli.write(b"NOOP\r\n");
    let missed = lab.cli.seg(a, b);
    lab.gw.conntrack(&missed, 0); // the kernel saw them
                                  // ... and the server's acknowledgement of them, which does pass through (ftpct refuses
                                  // it: it acknowledges bytes ftpct never saw, but it is what allows the resync below)
    let ack = lab.srv.receive(&missed);
    lab.gw.forward(&ack);
    let (c, d) = lab.cli.write(b"PORT 10,0,0,2,195,80\r\n");
    let mut delivered = false;
    for _ in 0..10 {
        if lab.c2s(c, d) {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the session must not stay wedged");
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, Event::Resynced { .. })));
    // resynchronised in the middle of nowhere: this line is skipped, the next one is tracked
    lab.client_says("PORT 10,0,0,2,195,81\r\n");
    assert!(
        lab.server_got().ends_with("PORT 203,0,113,1,195,81\r\n"),
        "{}",
        lab.server_got()
    );
}

#[test]
fn split_227_forwards_the_text_before_the_address_and_holds_the_rest() {
    let mut lab = Lab::dnat(cfg());
    lab.client_says("PASV\r\n");
    let (a, b) = lab
        .srv
        .write(b"227 Entering Passive Mode (10,1,0,2,117,48).\r\n");
    // cut inside the address: the text up to the first digit goes through at once
    assert!(lab.s2c(a, a + 32));
    assert_eq!(lab.client_got(), "227 Entering Passive Mode (");
    // the server retransmits only what was not acknowledged, then the rest
    assert!(lab.s2c(a + 27, a + 32), "its acknowledgement goes through");
    assert_eq!(lab.client_got(), "227 Entering Passive Mode (");
    assert!(lab.s2c(a + 27, b));
    assert_eq!(
        lab.client_got(),
        "227 Entering Passive Mode (203,0,113,1,117,48).\r\n"
    );
    lab.all_acked();
    assert!(lab
        .data_syn("198.51.100.7:41000", "203.0.113.1:30000")
        .is_some());
}

#[test]
fn a_new_connection_on_a_remembered_tuple_starts_a_new_session() {
    let mut lab = Lab::masq(cfg());
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    assert!(
        lab.gw
            .engine
            .sessions()
            .next()
            .unwrap()
            .dir(ftpct::types::Dir::Original)
            .seqadj
            .offset_after()
            != 0
    );
    // the same addresses and ports again, with new sequence numbers (the old session was never
    // seen closing): the SYN-ACK must not be shifted by the old session's offsets
    let (cisn, sisn) = (0x1000_0000u32, 0x2000_0000u32);
    let syn = Seg {
        src: sa(CLI),
        dst: sa(SRV),
        seq: cisn,
        syn: true,
        ..Default::default()
    };
    // (conntrack, too, starts a new entry)
    lab.gw.td_end = [None, None];
    lab.gw.forward(&syn).unwrap();
    let synack = Seg {
        src: sa(SRV),
        dst: sa(GW_PUB),
        seq: sisn,
        ack: cisn.wrapping_add(1),
        syn: true,
        ack_flag: true,
        ..Default::default()
    };
    let out = lab.gw.forward(&synack).unwrap();
    assert_eq!(
        out.ack,
        cisn.wrapping_add(1),
        "the new connection's SYN-ACK is not shifted"
    );
    assert!(lab.events().iter().any(|e| matches!(
        e,
        Event::SessionEnd {
            reason: ftpct::engine::EndReason::Reused,
            ..
        }
    )));
    assert_eq!(lab.gw.engine.session_count(), 1);
    // and a retransmitted SYN-ACK of the new connection keeps its session
    lab.gw.forward(&synack).unwrap();
    assert_eq!(lab.gw.engine.stats().sessions_started, 2);
}

// ---------------------------------------------------------------------------------------------
// Spoofed segments (the trust model, docs/design.md): an attacker who knows only the 4-tuple of
// a live control connection sends segments with guessed sequence numbers. None may change a
// session, an expectation, an offset or a stream position.

/// A session with a sequence offset (+3: `10,0,0,2` becomes `203,0,113,1`) and an expectation.
fn lab_with_offset() -> Lab {
    let mut lab = Lab::masq(cfg());
    lab.server_says("220 ready\r\n");
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    lab.server_says("200 ok\r\n");
    assert_eq!(lab.gw.engine.expectations().len(), 1);
    lab.gw.seen.events.clear();
    lab
}

/// The session goes on after the attack: its offset still applies (the server gets the
/// rewritten stream, every byte acknowledged), and a new PORT is rewritten and expected.
fn assert_session_intact(lab: &mut Lab) {
    lab.client_says("NOOP\r\n");
    lab.server_says("200 noop\r\n");
    lab.client_says("PORT 10,0,0,2,195,81\r\n");
    lab.server_says("200 ok\r\n");
    assert_eq!(
        lab.server_got(),
        "PORT 203,0,113,1,195,80\r\nNOOP\r\nPORT 203,0,113,1,195,81\r\n"
    );
    assert_eq!(
        lab.client_got(),
        "220 ready\r\n200 ok\r\n200 noop\r\n200 ok\r\n"
    );
    lab.all_acked();
    assert!(lab
        .data_syn("198.51.100.2:20", "203.0.113.1:50001")
        .is_some());
    assert!(
        !lab.events()
            .iter()
            .any(|e| matches!(e, Event::SessionEnd { .. } | Event::Resynced { .. })),
        "{:?}",
        lab.events()
    );
}

fn spoof(lab: &mut Lab, src: &str, dst: &str, f: impl FnOnce(&mut Seg)) -> Option<Seg> {
    let mut p = Seg {
        src: sa(src),
        dst: sa(dst),
        ack_flag: true,
        ..Default::default()
    };
    f(&mut p);
    lab.gw
        .hook(p.bytes(), Hook::PreConntrack)
        .map(|b| Seg::parse_checked(&b))
}

/// Attack 1: a SYN-ACK with random seq/ack used to end the session as "reused" and start a new
/// one without the offset, desynchronising the control connection.
#[test]
fn spoofed_synack_does_not_replace_a_live_session() {
    let mut lab = lab_with_offset();
    for (seq, ack) in [(0x1234_5678u32, 0x9abc_def0u32), (7, 0xfffff001)] {
        let out = spoof(&mut lab, SRV, GW_PUB, |p| {
            p.syn = true;
            p.seq = seq;
            p.ack = ack;
        });
        assert!(out.is_some(), "passed on untouched (conntrack decides)");
    }
    assert_eq!(lab.gw.engine.session_count(), 1);
    assert_eq!(lab.gw.engine.stats().synack_ignored, 2);
    assert_session_intact(&mut lab);
}

/// A SYN-ACK that answers a new SYN of the client on the same tuple does start a new
/// connection (the old one's end was missed): the legitimate reuse still works.
#[test]
fn synack_answering_a_new_syn_replaces_the_session() {
    let mut lab = lab_with_offset();
    spoof(&mut lab, CLI, SRV, |p| {
        p.syn = true;
        p.ack_flag = false;
        p.seq = 0x5555_0000;
    });
    spoof(&mut lab, SRV, GW_PUB, |p| {
        p.syn = true;
        p.seq = 0x6666_0000;
        p.ack = 0x5555_0001;
    });
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, Event::SessionEnd { reason, .. } if *reason == ftpct::engine::EndReason::Reused)));
    assert_eq!(lab.gw.engine.stats().synack_ignored, 0);
}

/// Attack 2: an RST with a random sequence number used to end the session after the close
/// linger (normal silence while a transfer runs), losing offsets and expectations.
#[test]
fn spoofed_rst_with_a_wrong_sequence_number_ends_nothing() {
    let mut lab = lab_with_offset();
    for seq in [0x1234_5678u32, lab.srv.snd_nxt().wrapping_add(1000)] {
        spoof(&mut lab, SRV, GW_PUB, |p| {
            p.rst = true;
            p.seq = seq;
            p.ack = 0;
            p.ack_flag = false;
        })
        .expect("passed on");
    }
    // the first is outside the window, the second inside it but not exact
    assert_eq!(lab.gw.engine.stats().packets_out_of_window, 1);
    assert_eq!(lab.gw.engine.stats().rst_ignored, 1);
    // 20 s without packets: longer than the close linger
    lab.gw.now = lab.gw.now.plus(std::time::Duration::from_secs(20));
    let now = lab.gw.now;
    lab.gw.engine.handle_timeout(now);
    assert_eq!(lab.gw.engine.session_count(), 1);
    assert_session_intact(&mut lab);
}

/// The real RST (at the sequence number the client acknowledged) does end the session.
#[test]
fn exact_rst_ends_the_session() {
    let mut lab = lab_with_offset();
    let seq = lab.srv.snd_nxt();
    spoof(&mut lab, SRV, GW_PUB, |p| {
        p.rst = true;
        p.seq = seq;
        p.ack_flag = false;
    });
    lab.gw.now = lab.gw.now.plus(std::time::Duration::from_secs(20));
    let now = lab.gw.now;
    lab.gw.engine.handle_timeout(now);
    assert_eq!(lab.gw.engine.session_count(), 0);
}

/// Attack 3: segments ~1 MB ahead used to force a resync after six drops, after which the
/// client's real PORT was taken for a retransmission: no rewrite, no expectation.
#[test]
fn out_of_window_segments_force_no_resync() {
    let mut lab = lab_with_offset();
    let ahead = lab.cli.snd_nxt().wrapping_add(1_000_000);
    let ack = lab.cli.rcv_nxt();
    for i in 0..7u32 {
        spoof(&mut lab, CLI, SRV, |p| {
            p.seq = ahead.wrapping_add(i * 100);
            p.ack = ack;
            p.payload = b"NOOP\r\n".to_vec();
        })
        .expect("passed on untouched");
    }
    assert_eq!(lab.gw.engine.stats().packets_out_of_window, 7);
    assert_eq!(lab.gw.engine.stats().resyncs, 0);
    assert_session_intact(&mut lab);
}

/// Attack 4: blind segments with `x\r\nPORT <client>,31,144` ahead of the stream used to plant
/// an expectation for port 8080. Far ahead they are out of the window; a little ahead (inside
/// the window, so dropped as out of order) they never resynchronise the stream, because the
/// server never acknowledged the bytes before them.
#[test]
fn blind_spoofed_port_plants_no_expectation() {
    let mut lab = lab_with_offset();
    let ack = lab.cli.rcv_nxt();
    for off in [3_000_000u32, 200, 400, 600, 800, 1000, 1200, 1400, 1600] {
        let seq = lab.cli.snd_nxt().wrapping_add(off);
        spoof(&mut lab, CLI, SRV, |p| {
            p.seq = seq;
            p.ack = ack;
            p.payload = b"x\r\nPORT 10,0,0,2,31,144\r\n".to_vec();
        });
    }
    let st = lab.gw.engine.stats().clone();
    assert_eq!(st.resyncs, 0);
    assert!(
        st.resyncs_refused > 0 && st.packets_out_of_window >= 1,
        "{st:?}"
    );
    assert!(lab
        .gw
        .engine
        .expectations()
        .iter()
        .all(|(_, e)| e.dst.port() != 8080));
    assert_session_intact(&mut lab);
}

/// Attack 5: server behind a port forward; a spoofed `227` from the server's private address
/// with a guessed sequence number used to open an inbound pinhole to 192.168.1.10:8080.
#[test]
fn spoofed_227_opens_no_pinhole() {
    let mut lab = Lab::dnat(cfg());
    lab.server_says("220 ready\r\n");
    lab.client_says("PASV\r\n");
    for seq in [0x0bad_cafe_u32, lab.srv.snd_nxt().wrapping_add(5_000_000)] {
        let out = spoof(&mut lab, "10.1.0.2:21", "198.51.100.7:40000", |p| {
            p.seq = seq;
            p.ack = 0x1000;
            p.payload = b"227 Entering Passive Mode (10,1,0,2,31,144)\r\n".to_vec();
        })
        .expect("passed on untouched");
        assert_eq!(
            out.payload, b"227 Entering Passive Mode (10,1,0,2,31,144)\r\n",
            "not rewritten"
        );
    }
    assert_eq!(lab.gw.engine.expectations().len(), 0);
    assert_eq!(lab.gw.engine.stats().packets_out_of_window, 2);
    assert!(lab
        .data_syn("198.51.100.7:50000", "203.0.113.1:8080")
        .is_none());
    // the real reply still works
    lab.server_says("227 Entering Passive Mode (10,1,0,2,195,80)\r\n");
    assert_eq!(lab.gw.engine.expectations().len(), 1);
}

/// Attack 6: one segment full of PORT lines. Bounce PORTs used to give 81 WARN lines; PORTs of
/// the client's own address 140 set updates and hundreds of journal records and events. Now
/// a segment acts on at most `max_announce_per_segment` announcements and a session reports
/// at most `log_events_per_second` events of a kind per second (then one `Throttled`).
#[test]
fn one_segment_of_port_lines_is_bounded() {
    let mut lab = Lab::masq(cfg());
    lab.server_says("220 ready\r\n");
    let bounce: String = "PORT 1,2,3,4,5,6\r\n".repeat(1458 / 18);
    lab.client_says(&bounce);
    let refused = lab
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Refused { .. }))
        .count();
    let policy = Policy::default();
    assert_eq!(refused, usize::from(policy.log_events_per_second));
    assert_eq!(
        lab.events()
            .iter()
            .filter(|e| matches!(e, Event::Throttled { .. }))
            .count(),
        1
    );
    assert!(lab.gw.engine.stats().events_throttled >= 70);
    lab.gw.seen.events.clear();
    // refused ones count against the budget too (it bounds the work, not only the successes)
    let limited_before = lab.gw.engine.stats().refused_rate_limited;
    assert_eq!(
        limited_before,
        1458 / 18 - u64::from(policy.max_announce_per_segment)
    );
    let own: String = (0..80)
        .map(|i| format!("PORT 10,0,0,2,100,{i}\r\n"))
        .collect();
    lab.client_says(&own);
    let st = lab.gw.engine.stats();
    let cap = u64::from(policy.max_announce_per_segment);
    assert_eq!(st.expect_created, cap);
    assert_eq!(st.rewrites, cap);
    assert_eq!(st.refused_rate_limited - limited_before, 80 - cap);
    let watches = lab
        .gw
        .take_actions()
        .iter()
        .filter(|a| matches!(a, Action::WatchDst { .. } | Action::UnwatchDst { .. }))
        .count() as u64;
    assert!(
        watches <= 2 * cap,
        "{watches} set updates: {:?}",
        lab.gw.seen.actions
    );
}

/// The per-second budget: past `max_announce_per_second` in one second, announcements are
/// refused until the bucket refills.
#[test]
fn announcements_per_second_are_bounded_and_refill() {
    let mut c = cfg();
    c.policy.max_announce_per_second = 5;
    let mut lab = Lab::masq(c);
    lab.server_says("220 ready\r\n");
    for i in 0..8u8 {
        lab.client_says(&format!("PORT 10,0,0,2,100,{i}\r\n"));
        lab.server_says("200 ok\r\n");
    }
    assert_eq!(lab.gw.engine.stats().expect_created, 5);
    assert_eq!(lab.gw.engine.stats().refused_rate_limited, 3);
    lab.gw.now = lab.gw.now.plus(std::time::Duration::from_secs(1));
    lab.client_says("PORT 10,0,0,2,100,99\r\n");
    assert_eq!(lab.gw.engine.stats().expect_created, 6);
}

/// Attack 7: at `max_sessions`, eviction used to take the least recently active session, which
/// is the idle control connection of a running transfer (with an offset). Sessions without
/// offsets or expectations go first now, with one WARN when eviction starts.
#[test]
fn eviction_spares_sessions_with_offsets_and_expectations() {
    let mut c = cfg();
    c.policy.max_sessions = 4;
    let mut lab = Lab::masq(c);
    lab.server_says("220 ready\r\n");
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    lab.server_says("200 ok\r\n");
    lab.gw.seen.events.clear();
    // an inside user opens 20 more control connections (only their SYN-ACKs matter here)
    for port in 41000..41020u16 {
        let cli = sa(&format!("10.0.0.2:{port}"));
        let public = sa(&format!("203.0.113.1:{port}"));
        let ct = CtTuples {
            original: FlowTuple::new(cli, sa(SRV)),
            reply: FlowTuple::new(sa(SRV), public),
        };
        let synack = Seg {
            src: sa(SRV),
            dst: public,
            seq: 77,
            ack: 1001,
            syn: true,
            ack_flag: true,
            ..Default::default()
        };
        lab.gw.now = lab.gw.now.plus(std::time::Duration::from_millis(10));
        let bytes = synack.bytes();
        let v = lab.gw.engine.handle_packet(
            &bytes,
            Hook::PreConntrack,
            lab.gw.now,
            &mut SimConntrack::answering(found(ct)),
        );
        assert_eq!(v, Verdict::Accept);
    }
    while let Some(e) = lab.gw.engine.poll_event() {
        lab.gw.seen.events.push(e);
    }
    let st = lab.gw.engine.stats();
    assert_eq!(st.sessions_evicted, 17);
    assert_eq!(st.sessions_evicted_with_state, 0);
    let warns: Vec<_> = lab
        .events()
        .iter()
        .filter(|e| matches!(e, Event::EvictionStarted { .. }))
        .collect();
    assert_eq!(warns.len(), 1, "{warns:?}");
    lab.gw.seen.events.clear();
    assert_session_intact(&mut lab);
}

/// When every session has state, eviction still bounds memory, and says so.
#[test]
fn eviction_of_sessions_with_state_is_counted_and_warned() {
    let mut c = cfg();
    c.policy.max_sessions = 1;
    let mut lab = Lab::masq(c);
    lab.server_says("220 ready\r\n");
    lab.client_says("PORT 10,0,0,2,195,80\r\n");
    let public = sa("203.0.113.1:41000");
    let ct = CtTuples {
        original: FlowTuple::new(sa("10.0.0.2:41000"), sa(SRV)),
        reply: FlowTuple::new(sa(SRV), public),
    };
    let synack = Seg {
        src: sa(SRV),
        dst: public,
        seq: 77,
        ack: 1001,
        syn: true,
        ack_flag: true,
        ..Default::default()
    };
    let now = lab.gw.now;
    lab.gw.engine.handle_packet(
        &synack.bytes(),
        Hook::PreConntrack,
        now,
        &mut SimConntrack::answering(found(ct)),
    );
    assert_eq!(lab.gw.engine.stats().sessions_evicted_with_state, 1);
    let mut warned = false;
    while let Some(e) = lab.gw.engine.poll_event() {
        warned |= matches!(
            e,
            Event::EvictionStarted {
                protected_left: false,
                ..
            }
        );
    }
    assert!(warned);
}

// ---------------------------------------------------------------------------------------------
// Time: split lines against senders with Linux's retransmission behaviour (the sender model:
// ftpct_testutil::sender).

fn port_line() -> &'static [u8] {
    b"PORT 10,0,0,2,195,80\r\n"
}
const PORT_REWRITTEN: &str = "PORT 203,0,113,1,195,80\r\n";

/// One split PORT through a masquerading gateway: the line cut at `cut`, a pause, a model.
#[track_caller]
fn split_port_case(cut: usize, pause_ms: u64, m: SenderModel) -> (Lab, TimedRun) {
    let mut lab = Lab::masq(cfg());
    let line = port_line();
    let r = timed_split(
        &mut lab,
        true,
        &line[..cut],
        &line[cut..],
        pause_ms,
        m,
        pause_ms + 10_000,
    );
    let ctx = format!("cut {cut} pause {pause_ms} ms {m:?}");
    assert!(
        r.done_ms.is_some(),
        "{ctx}: never completed (server got {:?}, {} retransmissions)",
        lab.server_got(),
        r.retransmissions
    );
    assert_eq!(lab.server_got(), PORT_REWRITTEN, "{ctx}");
    lab.all_acked();
    assert!(
        !lab.events()
            .iter()
            .any(|e| matches!(e, Event::HoldTimedOut { .. } | Event::NotRewritten { .. })),
        "{ctx}: {:?}",
        lab.events()
    );
    assert_eq!(lab.gw.engine.stats().rewrites, 1, "{ctx}");
    assert_eq!(lab.gw.engine.holds_pending(), 0, "{ctx}");
    (lab, r)
}

#[test]
fn split_port_with_pauses_from_100_ms_to_30_s_is_rewritten() {
    for pause in [100u64, 300, 1000, 5000, 30_000] {
        for nagle in [false, true] {
            for delack_ms in [0u64, 40] {
                let m = SenderModel {
                    nagle,
                    delack_ms,
                    ..SenderModel::default()
                };
                let (_, r) = split_port_case(12, pause, m);
                // The rest follows the pause at once: the sender is not stuck in back-off.
                let done = r.done_ms.unwrap();
                assert!(
                    done <= pause + 250,
                    "pause {pause} nagle {nagle}: done after {done} ms"
                );
            }
        }
    }
}

#[test]
fn split_port_at_every_byte_position_with_and_without_nagle() {
    let len = port_line().len();
    for cut in 1..len {
        for (pause, nagle) in [(0u64, false), (0, true), (1000, false), (1000, true)] {
            let m = SenderModel {
                nagle,
                ..SenderModel::default()
            };
            split_port_case(cut, pause, m);
        }
    }
}

#[test]
fn split_port_one_byte_per_segment() {
    for (pause, nagle) in [(0u64, false), (1000, false), (5000, true), (0, true)] {
        let m = SenderModel {
            nagle,
            mss: 1,
            ..SenderModel::default()
        };
        split_port_case(9, pause, m);
    }
}

#[test]
fn retransmission_with_the_rest_collapsed_in_and_losses_after_the_gateway() {
    for pause in [100u64, 1000, 5000] {
        // the rest's first transmission is lost before ftpct: the next retransmission carries
        // the held part with the rest collapsed into it
        for m in [
            SenderModel {
                lose_rest_once: true,
                ..SenderModel::default()
            },
            // the merged segment is lost after ftpct: the sender retransmits only what ftpct did
            // not acknowledge for the receiver, and ftpct puts the rest in front of it
            SenderModel {
                lose_after_gw_once: true,
                ..SenderModel::default()
            },
            SenderModel {
                lose_after_gw_once: true,
                nagle: true,
                ..SenderModel::default()
            },
        ] {
            split_port_case(12, pause, m);
        }
    }
}

#[test]
fn split_eprt_v4_v6_and_split_227_behind_dnat() {
    // EPRT through the masquerading gateway, cut inside the address
    let line = b"EPRT |1|10.0.0.2|50000|\r\n";
    let mut lab = Lab::masq(cfg());
    let r = timed_split(
        &mut lab,
        true,
        &line[..12],
        &line[12..],
        5000,
        SenderModel::default(),
        20_000,
    );
    assert!(r.done_ms.is_some());
    assert_eq!(lab.server_got(), "EPRT |1|203.0.113.1|50000|\r\n");
    lab.all_acked();
    // IPv6: nothing to rewrite, so nothing is held; the line passes as it comes
    let line = b"EPRT |2|fd77:1::2|50000|\r\n";
    let mut lab = Lab::v6(cfg());
    let r = timed_split(
        &mut lab,
        true,
        &line[..13],
        &line[13..],
        5000,
        SenderModel::default(),
        20_000,
    );
    assert!(r.done_ms.is_some());
    assert_eq!(lab.server_got(), String::from_utf8_lossy(line));
    assert_eq!(lab.gw.engine.stats().lines_held, 0);
    // a 227 written in two parts by a server behind DNAT
    for pause in [100u64, 1000, 5000, 30_000] {
        for nagle in [false, true] {
            let mut lab = Lab::dnat(cfg());
            lab.client_says("PASV\r\n");
            let line = b"227 Entering Passive Mode (10,1,0,2,117,48).\r\n";
            let m = SenderModel {
                nagle,
                ..SenderModel::default()
            };
            let r = timed_split(
                &mut lab,
                false,
                &line[..31],
                &line[31..],
                pause,
                m,
                pause + 10_000,
            );
            assert!(r.done_ms.is_some(), "pause {pause} nagle {nagle}");
            assert_eq!(
                lab.client_got(),
                "227 Entering Passive Mode (203,0,113,1,117,48).\r\n"
            );
            lab.all_acked();
            assert!(lab
                .data_syn("198.51.100.7:41000", "203.0.113.1:30000")
                .is_some());
        }
    }
}

#[test]
fn a_line_that_never_completes_is_bounded_by_hold_timeout() {
    for action in [
        ftpct::policy::HoldTimeoutAction::Keep,
        ftpct::policy::HoldTimeoutAction::Pass,
    ] {
        let mut c = cfg();
        c.policy.hold_timeout = std::time::Duration::from_secs(60);
        c.policy.hold_timeout_action = action;
        let mut lab = Lab::masq(c);
        let r = timed_split(
            &mut lab,
            true,
            b"PORT 10,0,0",
            b"",
            0,
            SenderModel::default(),
            59_000,
        );
        // everything the client sent is acknowledged (ftpct holds the address for the server)
        assert!(r.done_ms.is_some());
        assert_eq!(lab.server_got(), "PORT ");
        assert!(!lab
            .events()
            .iter()
            .any(|e| matches!(e, Event::HoldTimedOut { .. })));
        // the time bound: the engine's own timer, at 60 s after the hold began
        let due = lab.gw.engine.poll_timeout().expect("a hold deadline");
        lab.gw.now = due;
        lab.gw.engine.handle_timeout(due);
        while let Some(e) = lab.gw.engine.poll_event() {
            lab.gw.seen.events.push(e);
        }
        assert!(lab.events().iter().any(|e| matches!(
            e,
            Event::HoldTimedOut { held: 6, action: a, .. } if *a == action
        )));
        assert_eq!(lab.gw.engine.stats().hold_timeouts, 1);
        assert_eq!(lab.gw.engine.holds_pending(), 0);
        // the session lives on; the client acknowledges a reply
        lab.server_says("200 still here\r\n");
        match action {
            ftpct::policy::HoldTimeoutAction::Keep => {
                assert_eq!(lab.server_got(), "PORT ", "nothing leaves unrewritten");
                // and if the rest ever comes, the line is still rewritten
                lab.client_says(",2,195,80\r\n");
                assert_eq!(lab.server_got(), PORT_REWRITTEN);
            }
            ftpct::policy::HoldTimeoutAction::Pass => {
                // let through with the client's next packet (the ACK of that reply)
                assert_eq!(lab.server_got(), "PORT 10,0,0");
                assert_eq!(lab.gw.engine.stats().hold_gave_up, 1);
                lab.client_says(",2,195,80\r\n");
                assert_eq!(lab.server_got(), "PORT 10,0,0,2,195,80\r\n");
            }
        }
        lab.all_acked();
        assert_eq!(lab.gw.engine.session_count(), 1);
    }
}

#[test]
fn a_line_that_grows_without_end_stays_bounded() {
    let mut lab = Lab::masq(cfg());
    let mut junk = b"PORT 10,0,0,2".to_vec();
    junk.extend(std::iter::repeat(b'9').take(4000));
    let r = timed_split(
        &mut lab,
        true,
        &junk[..9],
        &junk[9..],
        1000,
        SenderModel {
            mss: 100,
            ..SenderModel::default()
        },
        30_000,
    );
    assert!(r.done_ms.is_some(), "the overlong line is let through");
    assert_eq!(lab.server_got().len(), junk.len());
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, Event::LineTooLong { .. })));
    for s in lab.gw.engine.sessions() {
        for d in &s.dirs {
            assert!(d.line.len() <= 1024 + 2 && d.custody.len() <= 256);
        }
    }
    assert_eq!(lab.gw.engine.holds_pending(), 0);
}

/// The conntrack lookup is one step of `handle_packet`: asked once for the first packet of a
/// session, never for a known flow, and the entry's id it returns is kept and journaled.
#[test]
fn the_conntrack_lookup_is_asked_once_and_its_id_kept() {
    let mut lab = Lab::masq(cfg());
    let ct = lab.gw.ct;
    let mut e = Engine::new(cfg());
    let mut asked = 0;
    let mut conntrack = |_: &FlowTuple, syn_ack: bool| {
        asked += 1;
        assert!(!syn_ack);
        CtLookup::Found {
            tuples: ct,
            id: Some(4242),
        }
    };
    // a mid-stream segment of the server (no handshake seen): a new session
    let (a, b) = lab.srv.write(b"220 ready\r\n");
    let seg = lab.srv.seg(a, b).bytes();
    let now = Timestamp::from_secs(5);
    e.handle_packet(&seg, Hook::PreConntrack, now, &mut conntrack);
    e.handle_packet(&seg, Hook::PreConntrack, now, &mut conntrack);
    assert_eq!(asked, 1, "a known flow needs no lookup");
    let s = e.sessions().next().expect("a session");
    assert_eq!(s.ct_id, Some(4242));
    let mut journal = Vec::new();
    while let Some(j) = e.poll_journal() {
        journal.push(j);
    }
    assert!(journal
        .iter()
        .any(|j| matches!(j, ftpct::engine::Journal::ConntrackId { ct_id: 4242, .. })));
    // garbage is accepted without asking, and reported with its error
    let mut never = |_: &FlowTuple, _: bool| -> CtLookup { panic!("asked for garbage") };
    assert_eq!(
        e.handle_packet(b"\x45junk", Hook::PreConntrack, now, &mut never),
        Verdict::Accept
    );
    let mut malformed = false;
    while let Some(ev) = e.poll_event() {
        malformed |= matches!(ev, Event::Malformed { len: 5, .. });
    }
    assert!(malformed);
    let _ = &mut lab;
}

/// `faults::split_port_tail_lost_before_ftpct_acks_still_pass` in the simulation: the tail of a
/// split PORT is lost before ftpct; the client's pure ACK of the server's reply carries its
/// `snd_nxt`, past the lost bytes, and must still reach the server (the trust model must not
/// refuse it, and holding must not drop it), with check on and off alike.
#[test]
fn a_pure_ack_past_bytes_lost_before_ftpct_passes_while_a_line_is_held() {
    for check in [true, false] {
        let mut c = cfg();
        c.policy.tcp_window_check = check;
        let mut lab = Lab::masq(c);
        lab.server_says("220 ready\r\n");
        let (a, b) = lab
            .cli
            .write(b"NOOP xxxxxxxxxxxx\r\nPORT 10,0,0,2,156,64\r\n");
        let cut = a + 36;
        // segment A passes (NOOP forwarded, the PORT's address held); B is lost before ftpct
        assert!(lab.c2s(a, cut));
        assert_eq!(lab.server_got(), "NOOP xxxxxxxxxxxx\r\nPORT ");
        let (ra, rb) = lab.srv.write(b"200 NOOP ok.\r\n");
        let reply = lab.srv.seg(ra, rb);
        let delivered = lab.gw.forward(&reply).expect("the reply passes");
        lab.cli.receive(&delivered);
        // the client's ACK of it: seq = snd_nxt, which covers the lost segment B
        let mut ack = lab.cli.seg(b, b);
        ack.seq = lab.cli.snd_nxt();
        let out = lab.gw.forward(&ack);
        let st = lab.gw.engine.stats().clone();
        assert!(out.is_some(), "check={check}: the ACK was dropped: {st:?}");
        assert_eq!(st.packets_out_of_window, 0, "check={check}");
        let out = out.unwrap();
        assert!(out.ack_flag && out.payload.is_empty());
        lab.srv.receive(&out);
        assert_eq!(
            lab.srv.snd_una,
            lab.srv.snd_nxt(),
            "check={check}: reply acknowledged"
        );
        // B comes again: the line completes and is rewritten
        assert!(lab.c2s(cut, b));
        assert!(lab.server_got().ends_with("PORT 203,0,113,1,156,64\r\n"));
    }
}
