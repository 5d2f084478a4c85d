// mcp-edge patch: this whole file.
//
//! The bounded pipe between the two halves of the HTTP/1 proxy loop (`proxy_h1`).
//!
//! The halves run in one task (`try_join!`), one sender and one receiver each way, at most
//! `TASK_BUFFER_SIZE` (4) tasks in flight. tokio's mpsc channel, used here before, allocates a
//! 32-slot block and a cache-padded shared state whatever the bound: about 1.8 KB per pipe, two
//! pipes per request, held for the request's whole life (an idle SSE stream's, for hours). This
//! pipe holds its bound's worth of slots and the two wakers, behind one uncontended lock.
//!
//! Only what the proxy loop uses of tokio's API: `send`, `reserve`, `try_reserve`, `is_closed`,
//! `Permit::send`, `recv`; the same semantics (a permit holds a slot until it sends or drops;
//! the receiver sees every task sent before the sender went away, then `None`; dropping the
//! receiver closes the pipe and drops what it held).

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

struct State<T> {
    queue: VecDeque<T>,
    bound: usize,
    /// Permits handed out and not yet used or dropped.
    reserved: usize,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
}

type Shared<T> = Arc<Mutex<State<T>>>;

fn lock<T>(shared: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // The lock is never held across user code that could panic; a poisoned one is still sound.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// A pipe holding at most `bound` values.
pub(crate) fn channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(State {
        queue: VecDeque::with_capacity(bound),
        bound,
        reserved: 0,
        recv_waker: None,
        send_waker: None,
        sender_gone: false,
        receiver_gone: false,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

/// The receiver is gone: nothing sent now would be read.
#[derive(Debug)]
pub(crate) struct Closed;

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the task pipe's receiver is gone")
    }
}

impl std::error::Error for Closed {}

/// Why `try_reserve` gave no permit.
#[derive(Debug)]
pub(crate) enum TryReserveError {
    Full,
    Closed,
}

impl fmt::Display for TryReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("the task pipe is full"),
            Self::Closed => Closed.fmt(f),
        }
    }
}

impl std::error::Error for TryReserveError {}

pub(crate) struct Sender<T>(Shared<T>);

impl<T> Sender<T> {
    /// A slot, now, if one is free.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TryReserveError> {
        let mut s = lock(&self.0);
        if s.receiver_gone {
            return Err(TryReserveError::Closed);
        }
        if s.queue.len() + s.reserved >= s.bound {
            return Err(TryReserveError::Full);
        }
        s.reserved += 1;
        Ok(Permit { shared: &self.0 })
    }

    /// A slot, once one is free.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, Closed> {
        poll_fn(|cx| {
            let mut s = lock(&self.0);
            if s.receiver_gone {
                return Poll::Ready(Err(Closed));
            }
            if s.queue.len() + s.reserved < s.bound {
                s.reserved += 1;
                return Poll::Ready(Ok(()));
            }
            park(&mut s.send_waker, cx);
            Poll::Pending
        })
        .await?;
        // Built in the same poll that took the slot: a dropped future never leaks one.
        Ok(Permit { shared: &self.0 })
    }

    /// Sends `value` once a slot is free; `Closed` (and `value` dropped) if the receiver is gone.
    pub(crate) async fn send(&self, value: T) -> Result<(), Closed> {
        self.reserve().await?.send(value);
        Ok(())
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.0).receiver_gone
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.0);
            s.sender_gone = true;
            s.recv_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_pipe::Sender")
    }
}

/// One reserved slot; dropped unused, it frees the slot.
pub(crate) struct Permit<'a, T> {
    shared: &'a Mutex<State<T>>,
}

impl<T> Permit<'_, T> {
    /// Puts `value` in the reserved slot (dropping it if the receiver is gone).
    pub(crate) fn send(self, value: T) {
        let (waker, dropped) = {
            let mut s = lock(self.shared);
            s.reserved -= 1;
            if s.receiver_gone {
                (None, Some(value))
            } else {
                s.queue.push_back(value);
                (s.recv_waker.take(), None)
            }
        };
        std::mem::forget(self); // the slot is used, not freed
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(self.shared);
            s.reserved -= 1;
            s.send_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task_pipe::Permit")
    }
}

pub(crate) struct Receiver<T>(Shared<T>);

impl<T> Receiver<T> {
    /// The next value; `None` once the sender is gone and every value sent was read.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let (value, waker) = {
                let mut s = lock(&self.0);
                match s.queue.pop_front() {
                    Some(v) => (v, s.send_waker.take()),
                    None if s.sender_gone => return Poll::Ready(None),
                    None => {
                        park(&mut s.recv_waker, cx);
                        return Poll::Pending;
                    }
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
            Poll::Ready(Some(value))
        })
        .await
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (queued, waker) = {
            let mut s = lock(&self.0);
            s.receiver_gone = true;
            (std::mem::take(&mut s.queue), s.send_waker.take())
        };
        drop(queued);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn values_arrive_in_order_then_none_after_the_sender_goes() {
        let (tx, mut rx) = channel(4);
        tx.send(1).await.unwrap();
        tx.try_reserve().unwrap().send(2);
        tx.reserve().await.unwrap().send(3);
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_bound_holds_and_a_read_frees_a_slot() {
        let (tx, mut rx) = channel(2);
        tx.send(1).await.unwrap();
        tx.try_reserve().unwrap().send(2);
        assert!(matches!(tx.try_reserve(), Err(TryReserveError::Full)));
        // A waiting send is woken by the read that frees a slot.
        let waiting = tokio::spawn(async move {
            tx.send(3).await.unwrap();
            tx
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.recv().await, Some(1));
        let tx = waiting.await.unwrap();
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert!(rx.recv().now_or_never().is_none(), "empty, sender alive: pending");
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_dropped_permit_frees_its_slot() {
        let (tx, _rx) = channel::<u8>(1);
        let permit = tx.try_reserve().unwrap();
        assert!(matches!(tx.try_reserve(), Err(TryReserveError::Full)));
        drop(permit);
        assert!(tx.try_reserve().is_ok());
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_the_pipe_and_wakes_a_waiting_sender() {
        let (tx, rx) = channel(1);
        tx.send(Arc::new(())).await.unwrap();
        let waiting = tokio::spawn(async move {
            let r = tx.send(Arc::new(())).await;
            (r.is_err(), tx.is_closed(), matches!(tx.try_reserve(), Err(TryReserveError::Closed)))
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), (true, true, true));
    }

    #[tokio::test]
    async fn values_left_in_the_pipe_are_dropped_with_the_receiver() {
        let (tx, rx) = channel(2);
        let value = Arc::new(());
        tx.send(value.clone()).await.unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&value), 1);
        assert!(tx.is_closed());
    }
}
