//! One piece of work per key at a time, shared by everyone who asks while
//! it runs: many clients missing the same path at once cause one upstream
//! fetch. The work runs in a task of its own, so a client that hangs up
//! does not cancel it for the others (nor leave a half-done ingest).
//! This is per process: replicas may each fetch once, and the ingest's
//! upserts make that harmless.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// The outcome of a run, awaited by everyone who asked for it.
type Running<T> = Shared<BoxFuture<'static, Option<T>>>;

/// Work in flight, by key.
pub struct SingleFlight<K, T: Clone> {
    in_flight: Arc<Mutex<HashMap<K, Running<T>>>>,
}

impl<K, T: Clone> std::fmt::Debug for SingleFlight<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

impl<K, T: Clone> Default for SingleFlight<K, T> {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
        }
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// The outcome of `work` for `key`: started now, or joined if already
    /// running (then `work` is dropped unrun). `None` if the task panicked.
    pub async fn run<F>(&self, key: K, work: F) -> Option<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        let shared = {
            let mut in_flight = self.lock();
            match in_flight.get(&key) {
                Some(running) => running.clone(),
                None => {
                    // Spawned under the lock: the task's own removal of
                    // its key waits until the key is in the map.
                    let map = Arc::clone(&self.in_flight);
                    let done_key = key.clone();
                    let task = tokio::spawn(async move {
                        let outcome = work.await;
                        map.lock()
                            .expect("the single-flight lock is never poisoned")
                            .remove(&done_key);
                        outcome
                    });
                    let shared = async move { task.await.ok() }.boxed().shared();
                    in_flight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// How many keys have work running.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Running<T>>> {
        self.in_flight
            .lock()
            .expect("the single-flight lock is never poisoned")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Polls a future once, as an executor would; whether it finished.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> bool {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx).is_ready())
        })
        .await
    }

    #[tokio::test]
    async fn concurrent_askers_of_one_key_share_one_run() {
        let flights: SingleFlight<&'static str, usize> = SingleFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut askers: Vec<_> = (0..8)
            .map(|_| {
                let (runs, gate) = (runs.clone(), gate.clone());
                Box::pin(flights.run("path", async move {
                    gate.notified().await;
                    runs.fetch_add(1, Ordering::SeqCst) + 1
                }))
            })
            .collect();
        // Each asks once (the first starts the work, the rest join it)
        // before the work may finish.
        for asker in &mut askers {
            assert!(!poll_once(asker).await);
        }
        assert_eq!(flights.running(), 1);
        gate.notify_one();
        for outcome in futures::future::join_all(askers).await {
            assert_eq!(outcome, Some(1));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.running(), 0, "a finished run leaves no key behind");
        // Once done, the next ask runs again.
        assert_eq!(flights.run("path", async { 7 }).await, Some(7));
    }

    #[tokio::test]
    async fn a_dropped_asker_does_not_cancel_the_work() {
        let flights: SingleFlight<u8, u8> = SingleFlight::default();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let asking = flights.run(1, async move {
            tokio::task::yield_now().await;
            let _ = done_tx.send(());
            1
        });
        // Polled once (so the work starts), then dropped.
        let mut asking = Box::pin(asking);
        let _ = poll_once(&mut asking).await;
        drop(asking);
        done_rx.await.expect("the work ran to its end");
    }
}
