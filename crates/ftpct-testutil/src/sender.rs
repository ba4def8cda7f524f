//! A timed TCP sender: split lines against senders with Linux's retransmission behaviour.
//!
//! The sender model: new data goes out at once (TCP_NODELAY) or, with Nagle, only while nothing
//! is unacknowledged; a tail loss probe 200 ms after a transmission (2 RTT + the minimum RTO for
//! one segment in flight, RTT ~0 here) that sends pending data with Nagle off, or else the last
//! segment again; a retransmission timeout (200 ms, doubling to 120 s) that enters loss recovery,
//! where the congestion window is one segment: only the first unacknowledged segment goes out
//! (with whatever was already sent after it, up to the MSS, collapsed into it), and new data only
//! once everything sent is acknowledged. The receiver acknowledges new data at once or after a
//! delayed-ACK time, a retransmission of data it has at once, and never a pure ACK. Time is
//! stepped in milliseconds; the engine's timers run on the same clock.

use crate::gateway::Lab;
use crate::seg::Seg;

#[derive(Clone, Copy, Debug)]
pub struct SenderModel {
    pub nagle: bool,
    pub mss: usize,
    /// The receiver's delayed ACK of new data, ms (0: at once).
    pub delack_ms: u64,
    /// The first transmission of the second part is lost before the gateway.
    pub lose_rest_once: bool,
    /// The first segment the gateway delivers after the pause is lost after it.
    pub lose_after_gw_once: bool,
}

impl Default for SenderModel {
    fn default() -> Self {
        SenderModel {
            nagle: false,
            mss: 1400,
            delack_ms: 40,
            lose_rest_once: false,
            lose_after_gw_once: false,
        }
    }
}

/// How a [`timed_split`] ended.
pub struct TimedRun {
    /// Milliseconds until everything the sender wrote was acknowledged (None: never, within
    /// the run's limit).
    pub done_ms: Option<u64>,
    pub retransmissions: u32,
}

/// The sender (`c2s`: the client, else the server) writes `first` at t = 0 and `rest` at
/// t = `pause_ms`; runs until all is acknowledged or `limit_ms`.
pub fn timed_split(
    lab: &mut Lab,
    c2s: bool,
    first: &[u8],
    rest: &[u8],
    pause_ms: u64,
    m: SenderModel,
    limit_ms: u64,
) -> TimedRun {
    let t0 = lab.gw.now;
    let base_off = {
        let Lab { cli, srv, .. } = lab;
        let snd = if c2s { cli } else { srv };
        snd.out.len()
    };
    let mut sent = base_off;
    let mut wrote_rest = false;
    let mut rto_ms = 200u64;
    let mut rto_at: Option<u64> = None;
    let mut tlp_at: Option<u64> = None;
    let mut tlp_done = false;
    let mut loss = false;
    let mut recovery = 0usize;
    let mut last_seg = (0usize, 0usize);
    let mut delayed_ack: Option<(u64, Seg)> = None;
    let mut lost_rest = false;
    let mut lost_after = false;
    let mut retrans = 0u32;
    {
        let Lab { cli, srv, .. } = lab;
        let snd = if c2s { cli } else { srv };
        snd.write(first);
    }
    for t in 0..=limit_ms {
        lab.gw.now = t0.plus(std::time::Duration::from_millis(t));
        lab.gw.timers();
        if t >= pause_ms && !wrote_rest {
            wrote_rest = true;
            let Lab { cli, srv, .. } = lab;
            let snd = if c2s { cli } else { srv };
            snd.write(rest);
        }
        let Lab { gw, cli, srv } = lab;
        let (snd, rcv) = if c2s { (cli, srv) } else { (srv, cli) };
        let una = snd.snd_una.wrapping_sub(snd.isn.wrapping_add(1)) as usize;
        let written = snd.out.len();
        if wrote_rest && una == written {
            return TimedRun {
                done_ms: Some(t),
                retransmissions: retrans,
            };
        }
        // What goes out this millisecond: (from, to, is a retransmission).
        let mut out: Vec<(usize, usize, bool)> = Vec::new();
        let outstanding = sent > una;
        if let Some(at) = rto_at.filter(|&at| at <= t && outstanding) {
            let _ = at;
            loss = true;
            recovery = sent;
            out.push((una, sent.min(una + m.mss), true));
            rto_ms = (rto_ms * 2).min(120_000);
            rto_at = Some(t + rto_ms);
            tlp_at = None;
        } else if let Some(at) = tlp_at.filter(|&at| at <= t && outstanding && !loss) {
            let _ = at;
            tlp_done = true;
            tlp_at = None;
            if sent < written {
                out.push((sent, written.min(sent + m.mss), false));
            } else {
                out.push((last_seg.0, last_seg.1, true));
            }
            rto_at = Some(t + rto_ms);
        }
        // New data: cwnd 1 in loss recovery; Nagle while anything is unacknowledged.
        let new_from = out.iter().map(|o| o.1).max().unwrap_or(sent).max(sent);
        let blocked = (loss && (sent > una || !out.is_empty())) || (m.nagle && sent > una);
        if new_from < written && !blocked {
            let mut a = new_from;
            while a < written {
                let b = written.min(a + m.mss);
                out.push((a, b, false));
                a = b;
                if loss {
                    break;
                }
            }
        }
        for (a, b, re) in out {
            if re {
                retrans += 1;
            }
            if b > sent {
                sent = b;
            }
            last_seg = (a, b);
            if rto_at.is_none() {
                rto_at = Some(t + rto_ms);
            }
            if !loss && !tlp_done && tlp_at.is_none() {
                tlp_at = Some(t + 200);
            }
            let seg = snd.seg(a, b);
            if m.lose_rest_once && !lost_rest && wrote_rest && b > base_off + first.len() {
                lost_rest = true;
                continue;
            }
            let Some(d) = gw.forward(&seg) else {
                continue;
            };
            if m.lose_after_gw_once && !lost_after && wrote_rest {
                lost_after = true;
                continue;
            }
            let before = rcv.rcv_nxt();
            let ack = rcv.receive(&d);
            if d.payload.is_empty() {
                continue; // a pure ACK is not acknowledged
            }
            let old = rcv.rcv_nxt() == before;
            if old || m.delack_ms == 0 {
                delayed_ack = None;
                if let Some(back) = gw.forward(&ack) {
                    snd.receive(&back);
                }
            } else if delayed_ack.is_none() {
                delayed_ack = Some((t + m.delack_ms, ack));
            } else {
                delayed_ack = Some((delayed_ack.map_or(t, |x| x.0), ack));
            }
        }
        if let Some((at, _)) = &delayed_ack {
            if *at <= t {
                let (_, ack) = delayed_ack.take().unwrap();
                // the latest state of the receiver
                let mut ack = ack;
                ack.ack = rcv.rcv_nxt();
                if let Some(back) = gw.forward(&ack) {
                    snd.receive(&back);
                }
            }
        }
        // The sender's reaction to what was acknowledged.
        let una2 = snd.snd_una.wrapping_sub(snd.isn.wrapping_add(1)) as usize;
        if una2 > una {
            rto_ms = 200;
            tlp_done = false;
            if loss && una2 >= recovery {
                loss = false;
            }
            rto_at = (sent > una2).then_some(t + rto_ms);
            tlp_at = (sent > una2 && !loss).then_some(t + 200);
        }
    }
    TimedRun {
        done_ms: None,
        retransmissions: retrans,
    }
}
