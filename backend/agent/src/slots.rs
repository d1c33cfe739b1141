//! Engine calls off the async threads: one at a time per jail, a bounded
//! number across jails, each waited for no longer than a deadline.
//!
//! A blocking thread cannot be killed. A call that outlives its deadline is
//! abandoned by the task that waited for it (logged, and reported to the
//! caller so the jail is marked with an error), but it keeps its jail's slot
//! until it returns: no other step of that jail starts meanwhile (the engine
//! needs one step at a time per jail), while every other jail goes on. The
//! parallelism permit is given back when the wait ends, so stuck jails never
//! use up the node's parallelism.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stockade_jail::Engine;
use tokio::sync::{OwnedMutexGuard, Semaphore};

/// Why an engine call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// An earlier step of the jail still runs and did not end within the deadline.
    Busy(Duration),
    /// The call did not return within the deadline; it was abandoned.
    TimedOut(Duration),
    /// The call panicked.
    Panicked(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Busy(d) => write!(
                f,
                "an earlier step of the jail has not ended after {} s; retried once it ends",
                d.as_secs()
            ),
            CallError::TimedOut(d) => write!(
                f,
                "the step did not finish within {} s; it was abandoned and is retried once it ends",
                d.as_secs()
            ),
            CallError::Panicked(e) => write!(f, "the step panicked: {e}"),
        }
    }
}

/// The node's engine (`E`) behind per-jail slots and a parallelism bound.
pub(crate) struct Slots<E = Engine> {
    engine: Arc<E>,
    /// One lock per jail (by host name), held for the whole of each call.
    jails: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    parallel: Arc<Semaphore>,
    deadline: Duration,
    /// Jails whose abandoned call has since returned, for [`Slots::take_freed`].
    freed: Arc<Mutex<Vec<String>>>,
    /// Rung when an abandoned call returns.
    freed_ring: Arc<tokio::sync::Notify>,
}

impl<E: Send + Sync + 'static> Slots<E> {
    pub(crate) fn new(engine: Arc<E>, parallelism: usize, deadline: Duration) -> Self {
        Self {
            engine,
            jails: Mutex::new(HashMap::new()),
            parallel: Arc::new(Semaphore::new(parallelism.max(1))),
            deadline,
            freed: Arc::default(),
            freed_ring: Arc::default(),
        }
    }

    /// Resolves when a call abandoned past its deadline has returned.
    pub(crate) async fn freed(&self) {
        self.freed_ring.notified().await;
    }

    /// The jails whose abandoned calls have returned since the last call:
    /// their slots are free again, so they may be retried at once.
    pub(crate) fn take_freed(&self) -> Vec<String> {
        std::mem::take(&mut *self.freed.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn lock_of(&self, jail: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.jails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(jail.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets the slots of jails `keep` does not name and nobody uses.
    pub(crate) fn prune(&self, keep: impl Fn(&str) -> bool) {
        self.jails
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, lock| keep(name) || Arc::strong_count(lock) > 1);
    }

    /// Runs `f` on a blocking thread as the only step of jail `jail`,
    /// waiting at most the deadline for an earlier step and then for `f`.
    pub(crate) async fn call<T, F>(
        &self,
        jail: &str,
        step: &'static str,
        f: F,
    ) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(&E) -> T + Send + 'static,
    {
        let lock = self.lock_of(jail);
        let guard = match tokio::time::timeout(self.deadline, lock.lock_owned()).await {
            Ok(g) => g,
            Err(_) => {
                tracing::warn!(
                    jail,
                    step,
                    "an earlier step of the jail is still running; skipped"
                );
                return Err(CallError::Busy(self.deadline));
            }
        };
        self.run(Some(guard), jail, step, f).await
    }

    /// Runs `f`, which concerns no single jail, on a blocking thread with the deadline.
    pub(crate) async fn node_call<T, F>(&self, step: &'static str, f: F) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(&E) -> T + Send + 'static,
    {
        self.run(None, "-", step, f).await
    }

    async fn run<T, F>(
        &self,
        guard: Option<OwnedMutexGuard<()>>,
        jail: &str,
        step: &'static str,
        f: F,
    ) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: FnOnce(&E) -> T + Send + 'static,
    {
        let Ok(permit) = self.parallel.clone().acquire_owned().await else {
            return Err(CallError::Panicked("the agent is shutting down".into()));
        };
        let engine = self.engine.clone();
        let mut handle = tokio::task::spawn_blocking(move || {
            // The jail's slot stays taken until the call returns, however late.
            let _guard = guard;
            f(&engine)
        });
        let outcome = tokio::time::timeout(self.deadline, &mut handle).await;
        drop(permit);
        if outcome.is_err() {
            let (freed, ring, name) =
                (self.freed.clone(), self.freed_ring.clone(), jail.to_owned());
            tokio::spawn(async move {
                let _ = handle.await;
                tracing::info!(jail = %name, "an abandoned engine step has ended");
                freed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(name);
                ring.notify_one();
            });
        }
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Panicked(e.to_string())),
            Err(_) => {
                tracing::error!(
                    jail,
                    step,
                    deadline = ?self.deadline,
                    "an engine step did not finish in time; abandoned, the jail's slot stays taken until it ends"
                );
                Err(CallError::TimedOut(self.deadline))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(parallelism: usize, deadline: Duration) -> Slots<()> {
        Slots::new(Arc::new(()), parallelism, deadline)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_jail_keeps_its_own_slot_and_nothing_else() {
        let s = Arc::new(slots(1, Duration::from_millis(200)));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck = s
            .call("a", "stuck", move |_| {
                let _ = wait.recv();
            })
            .await;
        assert_eq!(stuck, Err(CallError::TimedOut(Duration::from_millis(200))));
        // Another jail runs although the only permit was the stuck call's.
        assert_eq!(s.call("b", "other", |_| 7).await, Ok(7));
        // The stuck jail gets no second step while the first still runs.
        assert_eq!(
            s.call("a", "again", |_| 1).await,
            Err(CallError::Busy(Duration::from_millis(200)))
        );
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), s.freed())
            .await
            .expect("the end of the abandoned call is announced");
        assert_eq!(s.take_freed(), ["a"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match s.call("a", "after", |_| 2).await {
                Ok(v) => break assert_eq!(v, 2),
                Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
            }
        }
    }

    #[tokio::test]
    async fn steps_of_one_jail_never_overlap() {
        let s = Arc::new(slots(4, Duration::from_secs(10)));
        let inside = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (s, inside) = (s.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                s.call("a", "step", move |_| {
                    let n = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    n
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(
                t.await.unwrap(),
                Ok(0),
                "no other step of the jail was inside"
            );
        }
    }
}
