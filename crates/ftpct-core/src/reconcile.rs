//! What the shell asks the engine when it brings the kernel's state in line with the
//! engine's: which control connections must carry `seqadj_mark` (the periodic mark check),
//! whether a restored session still is the connection conntrack has, and the marks and set
//! elements a restored engine needs. The engine decides; the shell only does the kernel I/O
//! (a conntrack get, a mark update, an ipset add) and counts.

use crate::engine::{Action, Engine};
use crate::restore::{restored_identity, watch_timeout, CtSeen, Identity};
use crate::types::{FlowTuple, SessionId, Timestamp};

/// Where the periodic mark check goes on ([`Engine::mark_check_batch`]): after the session
/// id it checked last, or from the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkCursor(u64);

/// What [`Engine::settle_restored`] did with a restored session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Conntrack has the same connection (`Identity::Same`): kept.
    Kept,
    /// The same tuples, no id saved (`Identity::Unproven`): kept, the entry's id recorded.
    IdRecorded,
    /// Conntrack has no entry under its tuple: forgotten.
    Gone,
    /// Another connection has its tuple now (`Identity::Other`): forgotten.
    Replaced {
        /// The conntrack id it was saved with.
        saved_id: Option<u32>,
    },
}

impl Engine {
    /// The next control connections the periodic mark check looks at: at most `n` of those
    /// whose entry must carry `seqadj_mark` ([`crate::session::Session::needs_mark`]), the
    /// lowest session ids after `cursor`, in id order (their conntrack original tuples), and
    /// the cursor for the next check: after the last one returned, or from the start again
    /// when fewer than `n` were left.
    pub fn mark_check_batch(&self, cursor: MarkCursor, n: usize) -> (Vec<FlowTuple>, MarkCursor) {
        let mut batch: Vec<(u64, FlowTuple)> = self
            .sessions()
            .filter(|s| s.id.0 > cursor.0 && s.needs_mark())
            .map(|s| (s.id.0, s.ct.original))
            .collect();
        // the n lowest ids, without sorting them all
        if batch.len() > n {
            batch.select_nth_unstable_by_key(n, |(id, _)| *id);
            batch.truncate(n);
        }
        batch.sort_unstable_by_key(|(id, _)| *id);
        let next = if batch.len() < n {
            MarkCursor::default()
        } else {
            MarkCursor(batch.last().map_or(0, |(id, _)| *id))
        };
        (batch.into_iter().map(|(_, t)| t).collect(), next)
    }

    /// After a restore: settles session `id` against what conntrack has under its original
    /// tuple now (`seen`, `None` when it has no entry). A session whose entry is gone or is
    /// another connection (`restored_identity`; with `seqadj_mark = mark_bits`, nonzero, an
    /// entry that must carry the mark and does not is another connection) is forgotten; the
    /// id of one saved without is recorded.
    pub fn settle_restored(
        &mut self,
        id: SessionId,
        seen: Option<&CtSeen>,
        mark_bits: u32,
    ) -> Settled {
        let Some(s) = self.session(id) else {
            return Settled::Gone;
        };
        let (ct, saved_id) = (s.ct, s.ct_id);
        let required_mark = (mark_bits != 0 && s.needs_mark()).then_some(mark_bits);
        let Some(seen) = seen else {
            self.forget_session(id);
            return Settled::Gone;
        };
        match restored_identity(&ct, saved_id, required_mark, seen) {
            Identity::Same => Settled::Kept,
            Identity::Unproven => {
                self.set_conntrack_id(id, seen.id);
                Settled::IdRecorded
            }
            Identity::Other => {
                self.forget_session(id);
                Settled::Replaced { saved_id }
            }
        }
    }

    /// The kernel work a restored engine needs, as the same actions the packet path emits:
    /// [`Action::MarkAdjusted`] for each control connection that needs `seqadj_mark` (the
    /// kernel keeps marks across a restart, but rules may have been installed or a mark
    /// cleared since), then [`Action::WatchDst`] for each live expectation, with the whole
    /// seconds it has left at `now` (`watch_timeout`).
    pub fn restore_actions(&self, now: Timestamp) -> impl Iterator<Item = Action> + '_ {
        let marks = self
            .sessions()
            .filter(|s| s.needs_mark())
            .map(|s| Action::MarkAdjusted {
                original: s.ct.original,
            });
        let watches = self
            .expectations()
            .iter()
            .map(move |(_, e)| Action::WatchDst {
                dst: e.dst,
                timeout_secs: watch_timeout(e.expires, now),
            });
        marks.chain(watches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Config, Journal};
    use crate::expect::{ExpectKind, Expectation};
    use crate::seqadj::Record;
    use crate::types::{CtTuples, Dir};
    use std::net::SocketAddr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ct(i: u16) -> CtTuples {
        let client = sa(&format!("10.0.0.2:{}", 40000 + i));
        let server = sa("198.51.100.2:21");
        CtTuples {
            original: FlowTuple::new(client, server),
            reply: FlowTuple::new(server, client),
        }
    }

    const NOW: Timestamp = Timestamp::from_secs(1000);

    /// An engine restored with sessions 1..=n; those in `shifted` have a rewrite that
    /// changed a length (a sequence offset).
    fn restored(n: u16, shifted: &[u16]) -> Engine {
        let mut e = Engine::new(Config::default());
        for i in 1..=n {
            let id = SessionId(u64::from(i));
            let start = Journal::SessionStart {
                id,
                ct: ct(i),
                created: Timestamp::from_secs(10),
            };
            e.restore(&start, NOW).unwrap();
            if shifted.contains(&i) {
                let record = Record::new(100, 26, b"PORT 10,0,0,2,156,65\r\n").unwrap();
                let rw = Journal::Rewrite {
                    id,
                    dir: Dir::Original,
                    record,
                };
                e.restore(&rw, NOW).unwrap();
            }
        }
        e
    }

    fn ids_of(e: &Engine, tuples: &[FlowTuple]) -> Vec<u64> {
        tuples
            .iter()
            .map(|t| e.sessions().find(|s| s.ct.original == *t).unwrap().id.0)
            .collect()
    }

    #[test]
    fn mark_checks_go_round_the_sessions_that_need_the_mark() {
        let shifted: Vec<u16> = (1..=20).filter(|i| i % 3 != 0).collect();
        let e = restored(20, &shifted);
        assert!(e.sessions().all(|s| s.needs_mark() == (s.id.0 % 3 != 0)));
        let mut cursor = MarkCursor::default();
        let mut seen = Vec::new();
        let mut batches = 0;
        loop {
            let (batch, next) = e.mark_check_batch(cursor, 4);
            assert!(batch.len() <= 4);
            seen.extend(ids_of(&e, &batch));
            batches += 1;
            cursor = next;
            if cursor == MarkCursor::default() {
                break;
            }
        }
        // 14 sessions need the mark: batches of 4, 4, 4, then 2 and back to the start
        assert_eq!(batches, 4);
        let want: Vec<u64> = shifted.iter().map(|i| u64::from(*i)).collect();
        assert_eq!(seen, want, "each once, in id order, none without the mark");
        // the cursor wrapped: the next batch starts again with the lowest ids
        let (batch, next) = e.mark_check_batch(cursor, 4);
        assert_eq!(ids_of(&e, &batch), [1, 2, 4, 5]);
        assert_eq!(next, MarkCursor(5));
    }

    #[test]
    fn a_session_needs_the_mark_for_an_offset_or_for_acknowledged_holds() {
        let mut s = crate::session::Session::new(SessionId(1), ct(1), NOW);
        assert!(!s.needs_mark());
        s.marked = true;
        assert!(s.needs_mark());
        let e = restored(1, &[1]);
        assert!(e.sessions().all(|s| s.needs_mark() && !s.marked));
    }

    #[test]
    fn a_full_last_batch_wraps_on_the_next_check() {
        let e = restored(4, &[1, 2, 3, 4]);
        let (batch, next) = e.mark_check_batch(MarkCursor::default(), 2);
        assert_eq!(ids_of(&e, &batch), [1, 2]);
        let (batch, next) = e.mark_check_batch(next, 2);
        assert_eq!(ids_of(&e, &batch), [3, 4]);
        // nothing after 4: an empty check, then from the start
        let (batch, next) = e.mark_check_batch(next, 2);
        assert!(batch.is_empty());
        assert_eq!(next, MarkCursor::default());
        // a cursor past every id (its session ended) wraps too
        let (batch, next) = e.mark_check_batch(MarkCursor(99), 2);
        assert!(batch.is_empty());
        assert_eq!(next, MarkCursor::default());
        // nothing needs the mark: nothing to check
        let none = restored(3, &[]);
        assert_eq!(
            none.mark_check_batch(MarkCursor::default(), 32),
            (Vec::new(), MarkCursor::default())
        );
    }

    #[test]
    fn restored_sessions_are_settled_against_conntrack() {
        let bits = 0x10_0000;
        let mut e = restored(5, &[2, 4]);
        let id = |i: u64| SessionId(i);
        let seen = |i: u16, ct_id: u32, mark: u32| CtSeen {
            tuples: ct(i),
            id: ct_id,
            mark,
        };
        e.restore(
            &Journal::ConntrackId {
                id: id(3),
                ct_id: 33,
            },
            NOW,
        )
        .unwrap();
        e.restore(
            &Journal::ConntrackId {
                id: id(4),
                ct_id: 44,
            },
            NOW,
        )
        .unwrap();
        while e.poll_journal().is_some() {}
        // 1: gone from conntrack
        assert_eq!(e.settle_restored(id(1), None, bits), Settled::Gone);
        assert_eq!(e.poll_journal(), Some(Journal::SessionEnd { id: id(1) }));
        // 2: an offset, no id saved, marked: kept and its id recorded (and journalled)
        assert_eq!(
            e.settle_restored(id(2), Some(&seen(2, 22, bits)), bits),
            Settled::IdRecorded
        );
        assert_eq!(
            e.poll_journal(),
            Some(Journal::ConntrackId {
                id: id(2),
                ct_id: 22
            })
        );
        // 3: no offset, the same id, no mark needed
        assert_eq!(
            e.settle_restored(id(3), Some(&seen(3, 33, 0)), bits),
            Settled::Kept
        );
        // 4: an offset, the same id, but unmarked: another connection
        assert_eq!(
            e.settle_restored(id(4), Some(&seen(4, 44, 0)), bits),
            Settled::Replaced { saved_id: Some(44) }
        );
        // 5: other tuples
        assert_eq!(
            e.settle_restored(id(5), Some(&seen(1, 55, 0)), bits),
            Settled::Replaced { saved_id: None }
        );
        let left: Vec<u64> = e.sessions().map(|s| s.id.0).collect();
        let mut left = left;
        left.sort_unstable();
        assert_eq!(left, [2, 3]);
        // without seqadj_mark the mark proves nothing and is not required
        let mut e = restored(1, &[1]);
        e.restore(
            &Journal::ConntrackId {
                id: id(1),
                ct_id: 7,
            },
            NOW,
        )
        .unwrap();
        assert_eq!(
            e.settle_restored(id(1), Some(&seen(1, 7, 0)), 0),
            Settled::Kept
        );
        // an unknown session: nothing to keep
        assert_eq!(e.settle_restored(id(9), None, 0), Settled::Gone);
        assert_eq!(e.session_count(), 1);
    }

    #[test]
    fn a_restored_engine_asks_for_its_marks_and_set_elements() {
        let mut e = restored(4, &[2]);
        // a 227 of sessions 3 and 4: the client (the SYN's source) may connect to the
        // server's port
        let exp = |master: u64, dst: &str, expires: Timestamp| Expectation {
            master: SessionId(master),
            kind: ExpectKind::Pasv227,
            src: sa("10.0.0.2:0").ip(),
            dst: sa(dst),
            nat_to: None,
            created: Timestamp::from_secs(900),
            expires,
        };
        let a = exp(3, "198.51.100.2:50000", Timestamp::from_secs(1100));
        let b = exp(4, "198.51.100.2:50001", Timestamp(NOW.0 + 1_500_000_000));
        e.restore(&Journal::ExpectAdd { exp: a }, NOW).unwrap();
        e.restore(&Journal::ExpectAdd { exp: b }, NOW).unwrap();
        let later = Timestamp(NOW.0 + 400_000_000);
        let actions: Vec<Action> = e.restore_actions(later).collect();
        let (marks, watches) = actions.split_at(1);
        assert_eq!(
            marks,
            [Action::MarkAdjusted {
                original: ct(2).original
            }]
        );
        let mut watches = watches.to_vec();
        watches.sort_by_key(|a| match a {
            Action::WatchDst { dst, .. } => dst.port(),
            _ => 0,
        });
        assert_eq!(
            watches,
            [
                // 99.6 s left: 99; 1.1 s left: 1
                Action::WatchDst {
                    dst: a.dst,
                    timeout_secs: 99
                },
                Action::WatchDst {
                    dst: b.dst,
                    timeout_secs: 1
                },
            ]
        );
        // asking changes nothing and queues nothing
        assert_eq!(e.poll_action(), None);
        assert_eq!(e.restore_actions(later).count(), 3);
    }
}
