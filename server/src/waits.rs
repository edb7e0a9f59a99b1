//! The long-poll waits a shard is running for fetches, so that the fetch
//! that started them can end them the moment its answer goes out.
//!
//! A fetch that finds too little data fans an [`crate::router::Op::Wait`] out
//! to every shard owning one of its partitions; each wait resolves when a
//! partition grows, at its deadline, or when cancelled. The first wait to
//! resolve answers the fetch, so the others would otherwise run until
//! their `wait_ms` (up to 30 s), each holding listeners that every append
//! to those partitions wakes. The fetch therefore sends
//! [`crate::router::Op::CancelWait`] to every shard it asked.
//!
//! Invariants:
//! - A wait is registered under its [`WaitId`] for exactly as long as it
//!   runs ([`WaitGuard`] removes it on drop, cancelled or not).
//! - A cancel that arrives before its wait registered (both travel the mesh,
//!   in separate tasks) is remembered, bounded by
//!   [`LONG_POLL_EARLY_CANCELS_MAX`], so the late wait ends at once.
//! - `live()` is the number of running waits; the `strom_long_poll_waits`
//!   gauge reports it.

use crate::limits::LONG_POLL_EARLY_CANCELS_MAX;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

/// Names one fetch's waits on every shard: the shard that started them and
/// a sequence number of that shard's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WaitId {
    pub origin_shard: usize,
    pub seq: u64,
}

/// Live waits of one shard (touched by its executor only).
#[derive(Default)]
pub struct WaitRegistry {
    /// Dropping a sender wakes its wait (its receiver sees a closed channel).
    live: RefCell<HashMap<WaitId, LocalSender<()>>>,
    /// Cancels that found no wait, oldest first.
    cancelled_early: RefCell<VecDeque<WaitId>>,
    next_seq: Cell<u64>,
}

/// What a new wait gets: a receiver that ends when the wait is cancelled,
/// and the guard that unregisters it.
pub struct WaitGuard {
    registry: Rc<WaitRegistry>,
    id: WaitId,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.registry.live.borrow_mut().remove(&self.id);
    }
}

impl WaitRegistry {
    /// A fresh id for a fetch started on `origin_shard` (this shard).
    pub fn next_id(&self, origin_shard: usize) -> WaitId {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        WaitId { origin_shard, seq }
    }

    /// Registers the wait `id`. `None` when it was already cancelled: the
    /// wait must end at once.
    pub fn register(self: &Rc<Self>, id: WaitId) -> Option<(WaitGuard, LocalReceiver<()>)> {
        {
            let mut early = self.cancelled_early.borrow_mut();
            if let Some(i) = early.iter().position(|e| *e == id) {
                early.remove(i);
                return None;
            }
        }
        let (tx, rx) = local_channel::new_bounded(1);
        let previous = self.live.borrow_mut().insert(id, tx);
        assert!(previous.is_none(), "wait {id:?} registered twice");
        Some((
            WaitGuard {
                registry: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// Ends the wait `id` if it runs; else remembers the cancel for a wait
    /// still on its way.
    pub fn cancel(&self, id: WaitId) {
        if self.live.borrow_mut().remove(&id).is_some() {
            return;
        }
        let mut early = self.cancelled_early.borrow_mut();
        if early.len() >= LONG_POLL_EARLY_CANCELS_MAX {
            early.pop_front();
        }
        early.push_back(id);
    }

    /// Waits running now.
    pub fn live(&self) -> usize {
        self.live.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> WaitId {
        WaitId {
            origin_shard: 1,
            seq,
        }
    }

    #[test]
    fn a_cancel_wakes_the_wait_and_the_guard_unregisters_it() {
        glommio::LocalExecutor::default().run(async {
            let reg = Rc::new(WaitRegistry::default());
            let (guard, rx) = reg.register(id(0)).expect("not cancelled");
            let (guard2, _rx2) = reg.register(id(1)).expect("not cancelled");
            assert_eq!(reg.live(), 2);
            reg.cancel(id(0));
            assert_eq!(reg.live(), 1);
            assert_eq!(rx.recv().await, None, "cancelled wait wakes");
            drop(guard);
            drop(guard2);
            assert_eq!(reg.live(), 0);
        });
    }

    #[test]
    fn a_cancel_before_its_wait_ends_that_wait_at_once_and_is_bounded() {
        let reg = Rc::new(WaitRegistry::default());
        reg.cancel(id(7));
        assert!(reg.register(id(7)).is_none(), "already cancelled");
        // Remembered once: the same id may run again later.
        let again = reg.register(id(7));
        assert!(again.is_some());
        drop(again);
        for seq in 100..100 + 2 * LONG_POLL_EARLY_CANCELS_MAX as u64 {
            reg.cancel(id(seq));
        }
        assert_eq!(
            reg.cancelled_early.borrow().len(),
            LONG_POLL_EARLY_CANCELS_MAX
        );
        assert_eq!(reg.live(), 0);
    }

    #[test]
    fn ids_are_unique_per_origin() {
        let reg = WaitRegistry::default();
        let a = reg.next_id(0);
        let b = reg.next_id(0);
        assert_ne!(a, b);
    }
}
