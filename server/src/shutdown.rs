//! Shutdown signalling. The process-wide flag is set by the signal thread;
//! each shard polls it and fires its local [`Event`], which wakes every task
//! waiting on it (accept loop, connection readers, long polls).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A one-shot, shard-local broadcast event. Cheap to clone.
///
/// Invariant: `waiters` holds one waker per [`EventWait`] that is pending
/// and not yet dropped, and nothing else: a wait removes its waker when it
/// is dropped, so the set stays as small as the waits alive (every
/// connection's read loop and long poll makes a new one per turn).
#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<EventInner>,
}

#[derive(Default)]
struct EventInner {
    fired: Cell<bool>,
    next_id: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl Event {
    pub fn fire(&self) {
        self.inner.fired.set(true);
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.inner.fired.get()
    }

    /// Resolves once [`Event::fire`] has been called.
    pub fn wait(&self) -> EventWait {
        EventWait {
            inner: self.inner.clone(),
            id: None,
        }
    }

    /// Waits registered and not yet dropped.
    #[cfg(test)]
    fn waiters(&self) -> usize {
        self.inner.waiters.borrow().len()
    }
}

pub struct EventWait {
    inner: Rc<EventInner>,
    /// Its key in `waiters`, once polled.
    id: Option<u64>,
}

impl Future for EventWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.get() {
            return Poll::Ready(());
        }
        let id = match self.id {
            Some(id) => id,
            None => {
                let id = self.inner.next_id.get();
                self.inner.next_id.set(id + 1);
                self.id = Some(id);
                id
            }
        };
        let mut w = self.inner.waiters.borrow_mut();
        match w.get_mut(&id) {
            Some(old) if old.will_wake(cx.waker()) => {}
            Some(old) => old.clone_from(cx.waker()),
            None => {
                w.insert(id, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for EventWait {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.inner.waiters.borrow_mut().remove(&id);
        }
    }
}

/// Resolves when the first of `futs` does (an empty list never resolves).
pub async fn first_of(futs: Vec<Pin<Box<dyn Future<Output = ()>>>>) {
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if f.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wait that is dropped leaves nothing behind (it once did: every read
    /// loop turn left a waker in a list scanned on each poll, so a long-lived
    /// server leaked memory and spent a sixth of its CPU scanning it), and
    /// fire still wakes every wait that is pending.
    #[test]
    fn dropped_waits_leave_no_waker_and_fire_wakes_the_pending() {
        let ev = Event::default();
        let waker = futures_lite::future::block_on(std::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..10_000 {
            let mut w = ev.wait();
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        }
        assert_eq!(ev.waiters(), 0);
        let mut a = ev.wait();
        let mut b = ev.wait();
        assert!(Pin::new(&mut a).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut b).poll(&mut cx).is_pending());
        assert_eq!(ev.waiters(), 2);
        ev.fire();
        assert_eq!(ev.waiters(), 0);
        assert!(Pin::new(&mut a).poll(&mut cx).is_ready());
        assert!(Pin::new(&mut ev.wait()).poll(&mut cx).is_ready());
    }
}
