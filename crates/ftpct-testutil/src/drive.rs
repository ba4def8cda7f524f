//! One packet through the engine, the way the daemon drives it, and simulated conntrack
//! tables.
//!
//! [`step`] is the daemon's sequence (`Engine::handle_packet` with a [`Conntrack`], then the
//! queued actions and events drained in order) written once for the simulation tests, the
//! fuzz targets and the benches. What happens to the actions and events is the caller's
//! [`Sink`]: [`Record`] keeps them, [`Discard`] only hands them to `black_box` (the benches:
//! no work beyond the daemon's in the measured loop). `step` is generic and `#[inline]`, so a
//! bench that calls it compiles to the same code as one that writes the sequence out.

use std::hint::black_box;

use ftpct_core::engine::{Action, Conntrack, CtLookup, Engine, Event, Verdict};
use ftpct_core::types::{CtTuples, FlowTuple, Hook, Timestamp};

/// Where [`step`] and [`drain`] put what the engine queued.
pub trait Sink {
    fn action(&mut self, a: Action);
    fn event(&mut self, e: Event);
    /// The line a `Message` or `ParseFailed` event names (`None` unless the engine keeps
    /// event lines, [`Engine::keep_event_lines`]), given just before that event.
    fn line(&mut self, _line: Option<&[u8]>) {}
    /// The packet as modified, when the verdict is `AcceptModified`.
    fn modified(&mut self, _packet: &[u8]) {}
}

/// Keeps actions and events, in the order the engine yielded them.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// The line of each `Message` / `ParseFailed` event, read as it was taken.
    pub lines: Vec<Option<Vec<u8>>>,
}

impl Sink for Record {
    fn action(&mut self, a: Action) {
        self.actions.push(a);
    }
    fn event(&mut self, e: Event) {
        self.events.push(e);
    }
    fn line(&mut self, line: Option<&[u8]>) {
        self.lines.push(line.map(<[u8]>::to_vec));
    }
}

/// Hands everything to [`black_box`] and keeps nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Discard;

impl Sink for Discard {
    #[inline]
    fn action(&mut self, a: Action) {
        black_box(a);
    }
    #[inline]
    fn event(&mut self, e: Event) {
        black_box(e);
    }
    #[inline]
    fn modified(&mut self, packet: &[u8]) {
        black_box(packet);
    }
}

/// Drains the engine's queued actions, then its events, into `sink`.
#[inline]
pub fn drain<S: Sink + ?Sized>(engine: &mut Engine, sink: &mut S) {
    while let Some(a) = engine.poll_action() {
        sink.action(a);
    }
    while let Some(e) = engine.poll_event() {
        if let Event::Message { line, .. } | Event::ParseFailed { line, .. } = e {
            sink.line(engine.event_line(line));
        }
        sink.event(e);
    }
}

/// One queued packet: `handle_packet` (asking `ct` for an unknown control connection's
/// entry), then the actions and events it queued into `sink`, then the modified packet (if
/// any) to `sink`. Returns the verdict.
#[inline]
pub fn step<S: Sink + ?Sized>(
    engine: &mut Engine,
    bytes: &[u8],
    hook: Hook,
    now: Timestamp,
    ct: &mut dyn Conntrack,
    sink: &mut S,
) -> Verdict {
    let v = engine.handle_packet(bytes, hook, now, ct);
    drain(engine, sink);
    if v == Verdict::AcceptModified {
        sink.modified(engine.modified_packet());
    }
    v
}

/// The packet as it leaves the hook after `verdict`: `bytes` again, the engine's modified
/// packet, or `None` when dropped.
pub fn passed(engine: &Engine, bytes: &[u8], verdict: Verdict) -> Option<Vec<u8>> {
    match verdict {
        Verdict::Accept => Some(bytes.to_vec()),
        Verdict::AcceptModified => Some(engine.modified_packet().to_vec()),
        Verdict::Drop => None,
    }
}

/// An entry found with these tuples and no id.
pub fn found(tuples: CtTuples) -> CtLookup {
    CtLookup::Found { tuples, id: None }
}

/// A conntrack table that gives the same answer for every tuple, and keeps nothing (what the
/// benches pass: as cheap as a closure).
#[derive(Clone, Copy, Debug)]
pub struct Always(pub CtLookup);

impl Conntrack for Always {
    #[inline]
    fn lookup(&mut self, _: &FlowTuple, _: bool) -> CtLookup {
        self.0
    }
}

/// A simulated conntrack table: the entries in `table` are found by either of their tuples
/// (without an id); any other tuple gets `otherwise`. Every lookup is recorded in `asked`.
#[derive(Clone, Debug)]
pub struct SimConntrack {
    pub table: Vec<CtTuples>,
    pub otherwise: CtLookup,
    /// The tuples asked for, and whether the packet was a SYN-ACK.
    pub asked: Vec<(FlowTuple, bool)>,
}

impl SimConntrack {
    /// A table of these entries.
    pub fn table(entries: impl IntoIterator<Item = CtTuples>) -> Self {
        SimConntrack {
            table: entries.into_iter().collect(),
            otherwise: CtLookup::Missing,
            asked: Vec::new(),
        }
    }

    /// A table that answers `answer` for every tuple.
    pub fn answering(answer: CtLookup) -> Self {
        SimConntrack {
            table: Vec::new(),
            otherwise: answer,
            asked: Vec::new(),
        }
    }
}

impl Conntrack for SimConntrack {
    fn lookup(&mut self, tuple: &FlowTuple, syn_ack: bool) -> CtLookup {
        self.asked.push((*tuple, syn_ack));
        self.table
            .iter()
            .find(|ct| ct.original == *tuple || ct.reply == *tuple)
            .map_or(self.otherwise, |&ct| found(ct))
    }
}
