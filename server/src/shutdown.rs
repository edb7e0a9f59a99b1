//! Shutdown signalling. The process-wide flag is set by the signal thread;
//! each shard polls it and fires its local [`Event`], which wakes every task
//! waiting on it (accept loop, connection readers, long polls).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A one-shot, shard-local broadcast event. Cheap to clone.
#[derive(Clone, Default)]
pub struct Event {
    inner: Rc<EventInner>,
}

#[derive(Default)]
struct EventInner {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn fire(&self) {
        self.inner.fired.set(true);
        for w in self.inner.waiters.borrow_mut().drain(..) {
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
        }
    }
}

pub struct EventWait {
    inner: Rc<EventInner>,
}

impl Future for EventWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.fired.get() {
            return Poll::Ready(());
        }
        let mut w = self.inner.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
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
