//! Awaiting a batch of futures together.
//!
//! Owns [`await_all`]: every future of a batch is polled as soon as it can
//! make progress, not in turn. A backend read is sent when it is called,
//! except while a re-attach is under way, when it waits for that and is
//! sent only when next polled (`session.rs`): awaited one after another, a
//! pipelined chunk of such reads went out one round trip at a time.
//!
//! Must not know about ZooKeeper or the cache: it deals in futures only.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The outputs of `futures`, in their order, once all are ready. Each
/// future is polled first in order, then again only after it woke, once
/// per round however often it woke: the cost is at most one poll per
/// woken future per round, not one per future per wake.
pub async fn await_all<T, F: Future<Output = T>>(futures: Vec<F>) -> Vec<T> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    let woken = Arc::new(Woken {
        state: Mutex::new(WokenState {
            indices: (0..pending.len()).collect(),
            queued: vec![true; pending.len()],
            parent: None,
        }),
    });
    let wakers: Vec<Waker> = (0..pending.len())
        .map(|index| {
            Waker::from(Arc::new(Slot {
                index,
                woken: woken.clone(),
            }))
        })
        .collect();
    let mut left = pending.len();
    std::future::poll_fn(|cx| {
        let ready = {
            let mut state = woken.state.lock().unwrap_or_else(|e| e.into_inner());
            state.parent = Some(cx.waker().clone());
            let ready = std::mem::take(&mut state.indices);
            // A wake from here on (during the polls below, too) queues the
            // future for the next round.
            for &index in &ready {
                state.queued[index] = false;
            }
            ready
        };
        for index in ready {
            let Some(future) = pending[index].as_mut() else {
                continue;
            };
            let mut slot_cx = Context::from_waker(&wakers[index]);
            if let Poll::Ready(value) = future.as_mut().poll(&mut slot_cx) {
                out[index] = Some(value);
                pending[index] = None;
                left -= 1;
            }
        }
        if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The futures woken since the last poll, and the task awaiting them.
struct Woken {
    state: Mutex<WokenState>,
}

struct WokenState {
    /// Futures to poll in the next round, each once.
    indices: Vec<usize>,
    /// Per future: whether it is in `indices`.
    queued: Vec<bool>,
    parent: Option<Waker>,
}

/// One future's waker: notes its index, wakes the awaiting task.
struct Slot {
    index: usize,
    woken: Arc<Woken>,
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let parent = {
            let mut state = self.woken.state.lock().unwrap_or_else(|e| e.into_inner());
            if !std::mem::replace(&mut state.queued[self.index], true) {
                state.indices.push(self.index);
            }
            state.parent.clone()
        };
        if let Some(parent) = parent {
            parent.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Futures that each wait for a gate, then take 100 ms: awaited
    /// together, the batch takes 100 ms after the gate opens (awaited in
    /// turn, as before, 100 ms per future). Paused time: exact.
    #[tokio::test(start_paused = true)]
    async fn futures_that_start_only_when_polled_run_together() {
        let (open, gate) = tokio::sync::watch::channel(false);
        let futures: Vec<_> = (0..50u32)
            .map(|i| {
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    i
                }
            })
            .collect();
        let start = tokio::time::Instant::now();
        let batch = tokio::spawn(await_all(futures));
        tokio::time::sleep(Duration::from_millis(10)).await;
        open.send_replace(true);
        let out = batch.await.expect("batch");
        assert_eq!(out, (0..50).collect::<Vec<_>>(), "outputs in order");
        assert_eq!(start.elapsed(), Duration::from_millis(110));
    }

    /// A future that wakes itself ten times before it waits is polled once
    /// more for them, not ten times (before: 12 polls in all).
    #[tokio::test(start_paused = true)]
    async fn a_future_woken_many_times_is_polled_once_per_round() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let polls = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(AtomicBool::new(false));
        let waiting: Arc<Mutex<Option<Waker>>> = Arc::default();
        let future = {
            let (polls, go, waiting) = (polls.clone(), go.clone(), waiting.clone());
            std::future::poll_fn(move |cx| {
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    for _ in 0..10 {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
                if go.load(Ordering::SeqCst) {
                    return Poll::Ready(());
                }
                *waiting.lock().expect("waker") = Some(cx.waker().clone());
                Poll::Pending
            })
        };
        let batch = tokio::spawn(await_all(vec![future]));
        tokio::time::sleep(Duration::from_millis(10)).await;
        go.store(true, Ordering::SeqCst);
        if let Some(waker) = waiting.lock().expect("waker").take() {
            waker.wake();
        }
        batch.await.expect("batch");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            3,
            "first poll, one for its wakes, one for go"
        );
    }

    /// Ready futures and an empty batch.
    #[tokio::test]
    async fn ready_futures_and_an_empty_batch() {
        let out = await_all((0..5).map(|i| async move { i * 2 }).collect()).await;
        assert_eq!(out, vec![0, 2, 4, 6, 8]);
        let none: Vec<std::future::Ready<u8>> = Vec::new();
        assert!(await_all(none).await.is_empty());
    }

    /// Futures that complete out of order, each woken many times.
    #[tokio::test(start_paused = true)]
    async fn out_of_order_completion_keeps_the_order() {
        let futures: Vec<_> = (0..20u64)
            .map(|i| async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(20 - i)).await;
                }
                i
            })
            .collect();
        assert_eq!(await_all(futures).await, (0..20).collect::<Vec<_>>());
    }
}
