//! One pull per path at a time, shared by everyone who asks while it runs:
//! many clients missing the same path at once cause one upstream fetch.
//! A pull goes through [`Stage`]s that askers watch: asking the upstreams,
//! then (once a narinfo verified) streaming its NAR through a [`Tee`],
//! then done. The pull runs in a task of its own, so a client that hangs
//! up does not cancel it for the others (nor leave a half-done ingest).
//! This is per process: replicas may each fetch once, and the ingest's
//! upserts make that harmless.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use attic::narinfo::NarInfo;
use futures::FutureExt;
use tokio::sync::watch;

use super::tee::Tee;

/// Where a pull is.
#[derive(Debug, Clone)]
pub enum Stage {
    /// Asking the upstreams for a narinfo.
    Asking,
    /// An upstream's narinfo verified; its NAR is being fetched and stored.
    Streaming(Arc<Streaming>),
    /// Over: whether the path is now stored.
    Done(bool),
}

/// A path whose NAR is on its way from an upstream.
#[derive(Debug)]
pub struct Streaming {
    /// The narinfo as the upstream signed it, with only the signatures
    /// that verified under its configured key.
    pub narinfo: NarInfo,
    /// Its NAR's decoded bytes, as they arrive.
    pub tee: Arc<Tee>,
}

/// What a pull reports its stages through.
#[derive(Debug, Clone)]
pub struct Progress(Arc<watch::Sender<Stage>>);

impl Progress {
    /// The NAR of `streaming` is about to be fetched.
    pub fn streaming(&self, streaming: Arc<Streaming>) {
        self.0.send_replace(Stage::Streaming(streaming));
    }

    /// Whether clients were told of a narinfo already: another upstream
    /// must not be asked in its place.
    pub fn has_streamed(&self) -> bool {
        matches!(*self.0.borrow(), Stage::Streaming(_))
    }
}

/// Pulls in flight, by key.
pub struct InFlight<K> {
    pulls: Arc<Mutex<HashMap<K, Progress>>>,
}

impl<K> std::fmt::Debug for InFlight<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").finish_non_exhaustive()
    }
}

impl<K> Default for InFlight<K> {
    fn default() -> Self {
        Self {
            pulls: Arc::default(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + 'static> InFlight<K> {
    /// The stages of the pull of `key`: started now with `pull`, or joined
    /// if one is running (then `pull` is dropped unrun). A pull that
    /// panics is done, with nothing stored.
    pub fn start_or_join<F, P>(&self, key: K, pull: P) -> watch::Receiver<Stage>
    where
        P: FnOnce(Progress) -> F,
        F: Future<Output = bool> + Send + 'static,
    {
        let mut pulls = self.lock();
        if let Some(progress) = pulls.get(&key) {
            return progress.0.subscribe();
        }
        let progress = Progress(Arc::new(watch::Sender::new(Stage::Asking)));
        let stages = progress.0.subscribe();
        let work = AssertUnwindSafe(pull(progress.clone())).catch_unwind();
        pulls.insert(key.clone(), progress.clone());
        // Spawned under the lock: the task's own removal of its key waits
        // until the key is in the map.
        let map = Arc::clone(&self.pulls);
        tokio::spawn(async move {
            let stored = work.await.unwrap_or(false);
            let last = progress.0.send_replace(Stage::Done(stored));
            map.lock()
                .expect("the in-flight lock is never poisoned")
                .remove(&key);
            // The verdict goes to the tee's clients last: one that asks
            // again once its NAR ended finds the path stored, or a miss.
            if let Stage::Streaming(streaming) = last {
                streaming.tee.finish(stored);
            }
        });
        stages
    }

    /// The stages of the pull of `key`, if one is running.
    pub fn find(&self, key: &K) -> Option<watch::Receiver<Stage>> {
        self.lock().get(key).map(|progress| progress.0.subscribe())
    }

    /// How many keys have a pull running.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Progress>> {
        self.pulls
            .lock()
            .expect("the in-flight lock is never poisoned")
    }
}

/// The first stage past asking: streaming, or done.
pub async fn answered(mut stages: watch::Receiver<Stage>) -> Stage {
    match stages
        .wait_for(|stage| !matches!(stage, Stage::Asking))
        .await
    {
        Ok(stage) => stage.clone(),
        Err(_) => Stage::Done(false),
    }
}

/// Whether the pull stored the path, once it is over.
pub async fn stored(mut stages: watch::Receiver<Stage>) -> bool {
    match stages
        .wait_for(|stage| matches!(stage, Stage::Done(_)))
        .await
    {
        Ok(stage) => matches!(*stage, Stage::Done(true)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_askers_of_one_key_share_one_pull() {
        let pulls: InFlight<&'static str> = InFlight::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let askers: Vec<_> = (0..8)
            .map(|_| {
                let (runs, gate) = (runs.clone(), gate.clone());
                pulls.start_or_join("path", move |_| async move {
                    gate.notified().await;
                    runs.fetch_add(1, Ordering::SeqCst);
                    true
                })
            })
            .collect();
        assert_eq!(pulls.running(), 1);
        assert!(pulls.find(&"path").is_some());
        gate.notify_one();
        for stages in askers {
            assert!(stored(stages).await);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The key goes right after the last stage is sent.
        while pulls.running() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(pulls.find(&"path").is_none());
        let again = pulls.start_or_join("path", |_| async { false });
        assert!(!stored(again).await, "once done, the next ask pulls again");
    }

    #[tokio::test]
    async fn askers_hear_of_the_narinfo_before_the_pull_ends() {
        let pulls: InFlight<u8> = InFlight::default();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let narinfo: NarInfo = "StorePath: /nix/store/ywnwmg5zvmlcpvjwq2954829721gl7nd-top\n\
            URL: nar/ywnwmg5zvmlcpvjwq2954829721gl7nd.nar\n\
            NarHash: sha256:0wa3dnpxybqbkdccfajfj76q6raxbzsjlqv005sr3p41p5zv3j6l\n\
            NarSize: 328\n\
            References: \n"
            .parse()
            .expect("a narinfo");
        let stages = pulls.start_or_join(1, move |progress| async move {
            progress.streaming(Arc::new(Streaming {
                narinfo,
                tee: Arc::default(),
            }));
            let _ = released.await;
            true
        });
        assert!(matches!(
            answered(stages.clone()).await,
            Stage::Streaming(_)
        ));
        let _ = release.send(());
        assert!(stored(stages).await);
    }

    #[tokio::test]
    async fn a_pull_that_panics_is_done_with_nothing_stored() {
        let pulls: InFlight<u8> = InFlight::default();
        let stages = pulls.start_or_join(1, |_| async { panic!("boom") });
        assert!(!stored(stages).await);
    }
}
