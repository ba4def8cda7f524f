//! One queued packet, as every shell of the engine handles it: the daemon over the real
//! kernel (netlink), `ftpct replay` over a simulated one.
//!
//! The sequence is fixed here once: [`Driver::decide`] gives the packet to
//! [`Engine::handle_packet`] (whose conntrack lookup is the [`Kernel`]'s), carries out the
//! actions the packet's fate depends on ([`When::BeforeVerdict`]) and writes the journal; the
//! caller then issues the verdict (its own clock and error handling around it); then
//! [`Driver::after_verdict`] carries out the actions that may wait ([`When::AfterVerdict`]).
//! The engine's events are the caller's to drain (the daemon logs them, replay prints them).
//!
//! Generic over the kernel (no dynamic dispatch per action); the engine's conntrack step takes
//! `&mut dyn Conntrack`, asked at most once per packet.

use crate::engine::{Action, Conntrack, Engine, Verdict, When};
use crate::types::{Hook, Timestamp};

/// What a driver needs from the kernel, real or simulated: the conntrack lookup of an unknown
/// control connection ([`Conntrack`]), carrying out an [`Action`] (a RELATED conntrack entry,
/// a conntrack mark, a set element added or deleted), and keeping the engine's journal.
pub trait Kernel: Conntrack {
    /// Carries out one action of the engine.
    fn run(&mut self, a: Action);
    /// Takes the engine's journal records (`Engine::poll_journal`) and keeps them, before the
    /// verdict of the packet that caused them.
    fn persist(&mut self, engine: &mut Engine);
}

/// The per-packet driver: the actions of the current packet that wait for its verdict.
#[derive(Debug, Default)]
pub struct Driver {
    deferred: Vec<Action>,
}

impl Driver {
    pub fn new() -> Driver {
        Driver {
            deferred: Vec::with_capacity(16),
        }
    }

    /// The verdict of one queued packet, with everything it depends on done: the conntrack
    /// lookup (asked of `kernel` by the engine, at most once), the actions due before the
    /// verdict, the journal. The caller issues the verdict (with
    /// [`Engine::modified_packet`] for [`Verdict::AcceptModified`]), then calls
    /// [`Driver::after_verdict`].
    pub fn decide<K: Kernel>(
        &mut self,
        engine: &mut Engine,
        kernel: &mut K,
        packet: &[u8],
        hook: Hook,
        now: Timestamp,
    ) -> Verdict {
        let v = engine.handle_packet(packet, hook, now, kernel);
        while let Some(a) = engine.poll_action() {
            match a.when() {
                When::BeforeVerdict => kernel.run(a),
                When::AfterVerdict => self.deferred.push(a),
            }
        }
        kernel.persist(engine);
        v
    }

    /// Once the verdict is out: the actions that waited for it.
    pub fn after_verdict<K: Kernel>(&mut self, kernel: &mut K) {
        for a in self.deferred.drain(..) {
            kernel.run(a);
        }
    }

    /// Outside a packet (timers, a reload, a restore): every pending action now.
    pub fn run_actions<K: Kernel>(&mut self, engine: &mut Engine, kernel: &mut K) {
        self.after_verdict(kernel);
        while let Some(a) = engine.poll_action() {
            kernel.run(a);
        }
    }
}
