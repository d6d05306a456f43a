//! A process's shutdown, in two stages every background loop can see:
//! *stopping* (SIGTERM or SIGINT came: claim nothing new, let what runs
//! finish) and *over* (the grace period ended, or a second signal came:
//! hand back what still runs, so that another process takes it at once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const OVER: u8 = 2;

#[derive(Clone)]
pub struct Shutdown {
    state: Arc<watch::Sender<u8>>,
}

/// How long work told to stop at the end of the grace period gets to stop
/// before it is handed back without waiting.
pub const STOP_WAIT: Duration = Duration::from_secs(2);
/// How long a stopping runner waits, past the grace period, for its work
/// to be handed back.
pub const HAND_BACK_WAIT: Duration = Duration::from_secs(5);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            state: Arc::new(watch::Sender::new(RUNNING)),
        }
    }

    /// Claim nothing new from now on.
    pub fn stop(&self) {
        self.state.send_if_modified(|s| {
            let was = *s;
            *s = (*s).max(STOPPING);
            was != *s
        });
    }

    /// The grace period is over: hand back what still runs.
    pub fn end_grace(&self) {
        self.state.send_replace(OVER);
    }

    pub fn is_stopping(&self) -> bool {
        *self.state.borrow() >= STOPPING
    }

    pub fn is_over(&self) -> bool {
        *self.state.borrow() >= OVER
    }

    /// Resolves once the process is stopping.
    pub async fn stopping(&self) {
        self.reached(STOPPING).await
    }

    /// Resolves once the grace period is over.
    pub async fn over(&self) {
        self.reached(OVER).await
    }

    async fn reached(&self, stage: u8) {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = rx.wait_for(|s| *s >= stage).await;
    }

    /// Waits until every one of `slots`' `total` permits is free again
    /// (the work they stand for ended or was handed back): past the grace
    /// period, [`HAND_BACK_WAIT`] more for the work to stop and be handed
    /// back. Answers whether all work ended so.
    pub async fn drained(&self, slots: &Semaphore, total: usize) -> bool {
        let all = slots.acquire_many(total as u32);
        tokio::pin!(all);
        tokio::select! {
            all = &mut all => return all.is_ok(),
            _ = self.over() => {}
        }
        tokio::time::timeout(HAND_BACK_WAIT, all)
            .await
            .is_ok_and(|all| all.is_ok())
    }

    /// Runs `work` to its end — unless the grace period ends first and
    /// `work` has not stopped [`STOP_WAIT`] later (its holder was told to
    /// stop: a load rolling back, a COMMIT that cannot be cut short): then
    /// `None`, and the caller hands the work back without it. Work left so
    /// commits at most once all the same: its lease token moved on, and
    /// a load's ledger row is written in its own transaction.
    pub async fn unless_cut_short<F: std::future::Future>(
        shutdown: Option<&Shutdown>,
        work: F,
    ) -> Option<F::Output> {
        tokio::pin!(work);
        let Some(s) = shutdown else {
            return Some(work.await);
        };
        tokio::select! {
            out = &mut work => Some(out),
            () = s.over() => tokio::time::timeout(STOP_WAIT, &mut work).await.ok(),
        }
    }

    /// Stops on the first SIGTERM or SIGINT; the grace period ends
    /// `grace` later, or at a second signal.
    pub fn on_signals(&self, grace: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            signal().await;
            tracing::info!(
                "shutting down: claiming nothing new; work under way has {} s to finish \
                 (a second signal ends it now)",
                grace.as_secs()
            );
            me.stop();
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = signal() => {}
            }
            me.end_grace();
        });
    }
}

/// The next SIGTERM or SIGINT.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_come_in_order_and_drain_waits_for_work() {
        let s = Shutdown::new();
        assert!(!s.is_stopping());
        let slots = Arc::new(Semaphore::new(2));
        let busy = slots.clone().acquire_owned().await.unwrap();
        s.stop();
        assert!(s.is_stopping() && !s.is_over());
        s.stopping().await;
        let waiter = {
            let (s, slots) = (s.clone(), slots.clone());
            tokio::spawn(async move { s.drained(&slots, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "drained while work was under way");
        drop(busy);
        assert!(waiter.await.unwrap());
        // Work that outlives the grace period: drained answers false.
        let _stuck = slots.clone().acquire_owned().await.unwrap();
        let waiter = {
            let (s, slots) = (s.clone(), slots.clone());
            tokio::spawn(async move { s.drained(&slots, 2).await })
        };
        s.end_grace();
        assert!(!waiter.await.unwrap());
        assert!(s.is_over());
    }
}
