//! TCP window validation: the engine's trust model (docs/design.md, "Trust model").
//!
//! ftpct reads the control connection at raw PREROUTING/OUTPUT, before conntrack's
//! `tcp_in_window`, rp_filter and the filter table. A packet seen there has passed no check, so
//! the engine checks every segment of a tracked session itself, the way conntrack will a moment
//! later: a segment whose sequence or acknowledgement number lies outside what the two
//! endpoints have said so far changes no state (no line is parsed, no stream position moves, no
//! session ends) and is passed on untouched; conntrack then marks it INVALID and the firewall
//! decides. ftpct sees both directions, so it can do what conntrack does.
//!
//! The four conditions are conntrack's (`net/netfilter/nf_conntrack_proto_tcp.c`, after
//! Rooij's "Real stateful TCP packet filtering in IP Filter"), for a segment `seq..end` with
//! acknowledgement `ack` from *sender* to *receiver*:
//!
//! 1. `seq <= sender.maxend`: not beyond what the receiver allowed (its highest `ack + window`);
//! 2. `end > sender.end - receiver.maxwin`: not older than the receiver's largest window;
//! 3. `ack <= receiver.end`: acknowledges nothing the receiver did not send;
//! 4. `ack > receiver.end - max(sender.maxwin, 66000)`: not an ancient acknowledgement.
//!
//! All numbers here are in each sender's *original* sequence space (before ftpct's rewrites):
//! the engine maps an acknowledgement back through the acknowledged direction's rewrite log
//! before it calls [`check`]. A direction whose handshake was not seen (a session picked up in
//! the middle, or restored from the state file) has an unknown window scale; its windows are
//! then taken at the largest scale (14), as liberal as the kernel is with such connections.
//!
//! RST: conntrack closes a connection only on an RST whose sequence number is exactly the one
//! the receiver expects next (its highest acknowledgement), or the end of the sender's own last
//! segment (a reset that follows data); any other RST in the window leaves it open (RFC 5961's
//! challenge ACK answers it). [`rst_closes`] is that rule.

/// Largest window scale (RFC 7323, section 2.3).
pub(crate) const MAX_SCALE: u8 = 14;
/// Conntrack's floor for the acknowledgement window (`MAXACKWINDOW`).
const MIN_ACK_WINDOW: u32 = 66_000;

/// What one direction (the *sender*) has shown of its stream. Conntrack's `ip_ct_tcp_state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// A trusted segment of this sender was seen: the fields below mean something.
    pub seen: bool,
    /// The sender's window scale; `None` while unknown (handshake not seen).
    pub scale: Option<u8>,
    /// Highest `seq + len` sent (`td_end`).
    pub end: u32,
    /// Highest sequence number the receiver has allowed: its `ack + window` (`td_maxend`).
    pub maxend: u32,
    /// Largest window the sender advertised, scaled (`td_maxwin`).
    pub maxwin: u32,
    /// Highest acknowledgement the sender sent, in the receiver's space (`td_maxack`).
    pub maxack: Option<u32>,
    /// Highest acknowledgement of an otherwise trusted segment that was refused only because
    /// it acknowledged bytes ftpct never saw (they bypassed it: a fail-open queue), bounded by
    /// the receiver's window. It changes nothing but lets `acknowledged` see those bytes.
    pub ack_beyond: Option<u32>,
}

/// One segment as `check` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The first sequence number the segment occupies.
    pub seq: u32,
    /// `seq` plus the payload length, plus one for SYN and for FIN.
    pub end: u32,
    /// The acknowledgement (mapped into the receiver's original space); `None` without ACK.
    pub ack: Option<u32>,
    /// The raw window field.
    pub win: u16,
    /// A SYN (or SYN-ACK).
    pub syn: bool,
}

/// Why a segment is not trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Untrusted {
    /// The segment starts beyond the receiver's window.
    #[error("sequence number beyond the receiver's window")]
    SeqAhead,
    /// The segment ends before what the receiver already acknowledged.
    #[error("sequence number before the receiver's window")]
    SeqBehind,
    /// The acknowledgement is for bytes the other side never sent.
    #[error("acknowledges bytes that were never sent")]
    AckAhead,
    /// The acknowledgement is older than the window allows.
    #[error("acknowledgement older than the window")]
    AckBehind,
}

impl Untrusted {
    /// For metrics and event lines.
    pub fn label(self) -> &'static str {
        match self {
            Untrusted::SeqAhead => "seq_ahead",
            Untrusted::SeqBehind => "seq_behind",
            Untrusted::AckAhead => "ack_ahead",
            Untrusted::AckBehind => "ack_behind",
        }
    }
}

/// `a <= b` in sequence space.
fn le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) as i32 >= 0
}

/// `a < b` in sequence space.
fn lt(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) as i32 > 0
}

impl Window {
    /// The window scale used for bounds: the largest one while it is unknown.
    fn scale_or_max(&self) -> u8 {
        self.scale.unwrap_or(MAX_SCALE)
    }

    /// A segment's window, scaled (a SYN's window is never scaled).
    pub fn scaled(&self, seg: &Segment) -> u32 {
        let w = u32::from(seg.win);
        if seg.syn {
            w
        } else {
            w << self.scale_or_max()
        }
    }
}

/// Checks a segment from `sender` to `receiver` (conditions 1–4 of the module documentation).
/// Conditions that need a direction that was never seen are skipped, as conntrack skips them.
pub(crate) fn check(sender: &Window, receiver: &Window, seg: &Segment) -> Result<(), Untrusted> {
    if sender.seen && receiver.seen && !le(seg.seq, sender.maxend) {
        return Err(Untrusted::SeqAhead);
    }
    if sender.seen
        && receiver.maxwin != 0
        && !lt(
            sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
            seg.end,
        )
    {
        return Err(Untrusted::SeqBehind);
    }
    if let (Some(ack), true) = (seg.ack, receiver.seen) {
        if !le(ack, receiver.end) {
            return Err(Untrusted::AckAhead);
        }
        let w = sender.maxwin.max(MIN_ACK_WINDOW);
        if !lt(receiver.end.wrapping_sub(w).wrapping_sub(1), ack) {
            return Err(Untrusted::AckBehind);
        }
    }
    Ok(())
}

/// Takes a trusted segment into both windows (conntrack's update after a passed check).
pub(crate) fn update(sender: &mut Window, receiver: &mut Window, seg: &Segment) {
    let win = sender.scaled(seg);
    if !sender.seen {
        sender.seen = true;
        sender.end = seg.end;
        sender.maxwin = win.max(1);
        sender.maxend = seg.end.wrapping_add(sender.maxwin);
        if let (Some(ack), false) = (seg.ack, receiver.seen) {
            // Nothing seen the other way yet: what this segment acknowledges is all we know.
            receiver.end = ack;
            receiver.maxend = ack;
        }
    } else {
        sender.maxwin = sender.maxwin.max(win);
        if lt(sender.end, seg.end) {
            sender.end = seg.end;
        }
    }
    let Some(ack) = seg.ack else {
        return;
    };
    if sender.maxack.map_or(true, |m| lt(m, ack)) {
        sender.maxack = Some(ack);
    }
    if receiver.maxwin != 0 && lt(sender.maxend, seg.end) {
        receiver.maxwin = receiver
            .maxwin
            .saturating_add(seg.end.wrapping_sub(sender.maxend));
    }
    let allowed = ack.wrapping_add(win).wrapping_add(u32::from(win == 0));
    if lt(receiver.maxend, allowed) || !receiver.seen {
        receiver.maxend = allowed;
    }
}

/// Starts both windows from a handshake: `client` sent a SYN (`syn`, if it was seen) and
/// `server` answered with this SYN-ACK. Window scaling is in force only when both sides
/// offered it, and a SYN-ACK offers it only when the SYN did.
pub(crate) fn from_handshake(
    syn: Option<(Segment, Option<u8>)>,
    synack: &Segment,
    synack_scale: Option<u8>,
) -> (Window, Window) {
    let scaling = synack_scale.is_some();
    let mut client = Window::default();
    let mut server = Window {
        scale: Some(if scaling {
            synack_scale.unwrap_or(0)
        } else {
            0
        }),
        ..Window::default()
    };
    match syn {
        Some((seg, scale)) => {
            client.scale = Some(if scaling { scale.unwrap_or(0) } else { 0 });
            update(&mut client, &mut server, &seg);
        }
        // The SYN was not seen: the client's scale is 0 unless scaling is in force.
        None => client.scale = (!scaling).then_some(0),
    }
    update(&mut server, &mut client, synack);
    (client, server)
}

/// Whether an RST with sequence number `seq` from `sender` closes the connection (see the
/// module documentation). Without any acknowledgement from the receiver yet, an RST inside
/// the window ([`check`] passed) is taken.
pub(crate) fn rst_closes(sender: &Window, receiver: &Window, seq: u32) -> bool {
    match receiver.maxack {
        Some(expected) => seq == expected || (sender.seen && seq == sender.end),
        None => true,
    }
}

/// Whether the receiver has acknowledged every byte before `seq` (bytes that reached it
/// without passing through ftpct); resynchronising onto bytes beyond that is never safe.
pub(crate) fn acknowledged(receiver: &Window, seq: u32) -> bool {
    [receiver.maxack, receiver.ack_beyond]
        .iter()
        .flatten()
        .any(|&a| le(seq, a))
}

/// Notes the acknowledgement of a segment refused as [`Untrusted::AckAhead`] (see
/// [`Window::ack_beyond`]); one beyond the window the acknowledged side was given is ignored.
pub(crate) fn note_ack_beyond(sender: &mut Window, receiver: &Window, seg: &Segment) {
    if let Some(ack) = seg.ack {
        if le(ack, receiver.maxend) && sender.ack_beyond.map_or(true, |a| lt(a, ack)) {
            sender.ack_beyond = Some(ack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, len: u32, ack: u32, win: u16) -> Segment {
        Segment {
            seq,
            end: seq.wrapping_add(len),
            ack: Some(ack),
            win,
            syn: false,
        }
    }

    /// Client ISN 1000, server ISN 5000, no window scaling, 64000-byte windows.
    fn established() -> (Window, Window) {
        let syn = Segment {
            seq: 1000,
            end: 1001,
            ack: None,
            win: 64000,
            syn: true,
        };
        let synack = Segment {
            seq: 5000,
            end: 5001,
            ack: Some(1001),
            win: 64000,
            syn: true,
        };
        let (mut c, mut s) = from_handshake(Some((syn, None)), &synack, None);
        let ack = seg(1001, 0, 5001, 64000);
        check(&c, &s, &ack).unwrap();
        update(&mut c, &mut s, &ack);
        (c, s)
    }

    #[test]
    fn in_window_segments_pass_and_move_the_edges() {
        let (mut c, mut s) = established();
        let data = seg(1001, 100, 5001, 64000);
        assert_eq!(check(&c, &s, &data), Ok(()));
        update(&mut c, &mut s, &data);
        assert_eq!(c.end, 1101);
        let reply = seg(5001, 50, 1101, 64000);
        assert_eq!(check(&s, &c, &reply), Ok(()));
        update(&mut s, &mut c, &reply);
        assert_eq!(c.maxend, 1101 + 64000);
        assert!(acknowledged(&s, 1101) && !acknowledged(&s, 1102));
        // A retransmission of old data is fine.
        assert_eq!(check(&c, &s, &seg(1001, 100, 5051, 64000)), Ok(()));
    }

    #[test]
    fn blind_sequence_and_acknowledgement_numbers_are_refused() {
        let (c, s) = established();
        assert_eq!(
            check(&c, &s, &seg(1001 + 1_000_000, 10, 5001, 100)),
            Err(Untrusted::SeqAhead)
        );
        assert_eq!(
            check(&c, &s, &seg(1001u32.wrapping_sub(200_000), 10, 5001, 100)),
            Err(Untrusted::SeqBehind)
        );
        assert_eq!(
            check(&c, &s, &seg(1001, 10, 9000, 100)),
            Err(Untrusted::AckAhead)
        );
        assert_eq!(
            check(&c, &s, &seg(1001, 10, 5001u32.wrapping_sub(70_000), 100)),
            Err(Untrusted::AckBehind)
        );
    }

    #[test]
    fn only_an_exact_rst_closes() {
        let (c, s) = established();
        // The server acknowledged up to 1001: the client's RST must carry 1001.
        assert!(rst_closes(&c, &s, 1001));
        assert!(!rst_closes(&c, &s, 1500));
        assert!(!rst_closes(&c, &s, 0xdead_beef));
    }

    #[test]
    fn scaling_needs_both_sides_and_unknown_scales_are_liberal() {
        let synack = Segment {
            seq: 5000,
            end: 5001,
            ack: Some(1001),
            win: 1000,
            syn: true,
        };
        // No SYN seen, SYN-ACK offers scaling: the client's scale is unknown (liberal).
        let (c, s) = from_handshake(None, &synack, Some(7));
        assert_eq!((c.scale, s.scale), (None, Some(7)));
        assert_eq!(c.scaled(&seg(0, 0, 0, 1)), 1 << MAX_SCALE);
        // SYN-ACK without scaling: both are 0, whatever the SYN said.
        let syn = Segment {
            seq: 1000,
            end: 1001,
            ack: None,
            win: 1000,
            syn: true,
        };
        let (c, s) = from_handshake(Some((syn, Some(9))), &synack, None);
        assert_eq!((c.scale, s.scale), (Some(0), Some(0)));
    }

    #[test]
    fn a_picked_up_direction_starts_from_its_first_segment() {
        let (mut c, mut s) = (Window::default(), Window::default());
        let first = seg(70_000, 10, 9_000, 500);
        assert_eq!(check(&c, &s, &first), Ok(()));
        update(&mut c, &mut s, &first);
        // The server's first segment must not acknowledge more than the client sent.
        assert_eq!(
            check(&s, &c, &seg(9_000, 5, 80_000, 500)),
            Err(Untrusted::AckAhead)
        );
        assert_eq!(check(&s, &c, &seg(9_000, 5, 70_010, 500)), Ok(()));
    }
}
