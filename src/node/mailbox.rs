//! The two queues into one connection's session: data (bounded) and control
//! (unbounded, a handful of items per connection at most).
//!
//! Why not tokio's mpsc: a tokio channel allocates its first block of 32 slots when it
//! is made, about 2.5 KB for the data queue and 2 KB for the control queue of every
//! connection, idle or not; at the idle benchmark's 6 KB per connection that was most
//! of the budget. Here both queues are `VecDeque`s behind one mutex: they allocate only
//! while items wait, and the receiver frees the space once it has drained them.
//!
//! parking_lot `Mutex`: held for a push or a pop, never across `.await`; the waker is
//! woken after the lock is released.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::conn::{Control, Outbound};

struct Boxes {
    queue: VecDeque<Outbound>,
    control: VecDeque<Control>,
    queue_waker: Option<Waker>,
    control_waker: Option<Waker>,
    /// The session has gone: pushes are dropped.
    closed: bool,
}

pub(super) struct Mailbox {
    boxes: Mutex<Boxes>,
    capacity: usize,
}

/// What a push to the data queue did.
pub(super) enum Pushed {
    Queued,
    /// The queue holds `capacity` items: the item was dropped.
    Full,
    /// The session has gone: the item was dropped.
    Closed,
}

impl Mailbox {
    pub(super) fn new(capacity: usize) -> (Arc<Mailbox>, QueueRx, ControlRx) {
        let m = Arc::new(Mailbox {
            boxes: Mutex::new(Boxes {
                queue: VecDeque::new(),
                control: VecDeque::new(),
                queue_waker: None,
                control_waker: None,
                closed: false,
            }),
            capacity,
        });
        (m.clone(), QueueRx(m.clone()), ControlRx(m))
    }

    pub(super) fn push(&self, item: Outbound) -> Pushed {
        let mut b = self.boxes.lock();
        if b.closed {
            return Pushed::Closed;
        }
        if b.queue.len() >= self.capacity {
            return Pushed::Full;
        }
        b.queue.push_back(item);
        let waker = b.queue_waker.take();
        drop(b);
        if let Some(w) = waker {
            w.wake();
        }
        Pushed::Queued
    }

    pub(super) fn push_control(&self, c: Control) {
        let mut b = self.boxes.lock();
        if b.closed {
            return;
        }
        b.control.push_back(c);
        let waker = b.control_waker.take();
        drop(b);
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn close(&self) {
        let mut b = self.boxes.lock();
        b.closed = true;
        b.queue = VecDeque::new();
        b.control = VecDeque::new();
        b.queue_waker = None;
        b.control_waker = None;
    }
}

/// Stores `cx`'s waker unless the same one is stored already.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The session's end of the data queue. Dropping it closes the mailbox.
pub struct QueueRx(Arc<Mailbox>);

impl QueueRx {
    /// The next item. Cancel-safe. Never `None` while the session holds this (the
    /// `Option` keeps the shape of a channel receiver).
    pub async fn recv(&mut self) -> Option<Outbound> {
        poll_fn(|cx| {
            let mut b = self.0.boxes.lock();
            if let Some(item) = b.queue.pop_front() {
                return Poll::Ready(Some(item));
            }
            // Drained: an idle connection keeps no queue memory.
            if b.queue.capacity() > 0 {
                b.queue = VecDeque::new();
            }
            register(&mut b.queue_waker, cx);
            Poll::Pending
        })
        .await
    }

    /// The next item if one is waiting.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.0.boxes.lock().queue.pop_front()
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The session's end of the control queue.
pub struct ControlRx(Arc<Mailbox>);

impl ControlRx {
    /// The next control message. Cancel-safe; never `None` (see [`QueueRx::recv`]).
    pub async fn recv(&mut self) -> Option<Control> {
        poll_fn(|cx| {
            let mut b = self.0.boxes.lock();
            if let Some(c) = b.control.pop_front() {
                return Poll::Ready(Some(c));
            }
            if b.control.capacity() > 0 {
                b.control = VecDeque::new();
            }
            register(&mut b.control_waker, cx);
            Poll::Pending
        })
        .await
    }
}

impl Drop for ControlRx {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn bounded_queue_wakes_the_receiver_and_frees_memory_when_drained() {
        let (m, mut q, mut c) = Mailbox::new(2);
        let waiter = tokio::spawn(async move {
            let first = q.recv().await;
            (q, first)
        });
        tokio::task::yield_now().await;
        assert!(matches!(
            m.push(Outbound::Frame(Bytes::from_static(b"a"))),
            Pushed::Queued
        ));
        let (mut q, first) = waiter.await.unwrap();
        assert!(matches!(first, Some(Outbound::Frame(f)) if &f[..] == b"a"));
        assert!(matches!(
            m.push(Outbound::Frame(Bytes::new())),
            Pushed::Queued
        ));
        assert!(matches!(
            m.push(Outbound::Frame(Bytes::new())),
            Pushed::Queued
        ));
        assert!(matches!(
            m.push(Outbound::Frame(Bytes::new())),
            Pushed::Full
        ));
        assert!(q.try_recv().is_some() && q.try_recv().is_some() && q.try_recv().is_none());
        // A poll that finds the queue empty frees it.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(5), q.recv()).await;
        assert!(pending.is_err());
        assert_eq!(m.boxes.lock().queue.capacity(), 0);
        m.push_control(Control::Unsubscribe {
            channel: "x".into(),
        });
        assert!(matches!(c.recv().await, Some(Control::Unsubscribe { .. })));
        drop(q);
        assert!(matches!(
            m.push(Outbound::Frame(Bytes::new())),
            Pushed::Closed
        ));
    }
}
