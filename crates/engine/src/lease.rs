//! A lease kept alive while its holder works: import queries and action
//! runs renew theirs the same way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_domain::RunStatus;
use sluice_store::StoreError;
use tokio::task::JoinHandle;

use crate::metrics::{self, METRICS};
use crate::shutdown::Shutdown;

/// Renews a lease every `every` until dropped. `cancel` is set when the
/// holder should stop — a cancel was asked (CANCELING), the lease was
/// lost, or the process's grace period ended — `lost` when it was lost
/// (another worker has the work now), and `handing_back` when the grace
/// period ended (the holder gives the work back once it stopped).
pub(crate) struct KeepAlive {
    task: JoinHandle<()>,
    pub cancel: Arc<AtomicBool>,
    pub lost: Arc<AtomicBool>,
    handing_back: Arc<AtomicBool>,
}

impl KeepAlive {
    /// `renew` renews the lease once and answers the work's status; `what`
    /// names the work in the log. With a `shutdown`, the end of its grace
    /// period stops the work (the lease is still renewed until the holder
    /// hands it back).
    pub fn start<F, Fut>(
        what: String,
        every: Duration,
        shutdown: Option<Shutdown>,
        renew: F,
    ) -> KeepAlive
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<RunStatus, StoreError>> + Send,
    {
        let cancel = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let handing_back = Arc::new(AtomicBool::new(false));
        let (c, l, h) = (cancel.clone(), lost.clone(), handing_back.clone());
        let task = tokio::spawn(async move {
            let mut watching = shutdown;
            loop {
                let over = async {
                    match &watching {
                        Some(s) => s.over().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = over => {
                        h.store(true, Ordering::Relaxed);
                        c.store(true, Ordering::Relaxed);
                        watching = None;
                        continue;
                    }
                }
                match renew().await {
                    Ok(RunStatus::Canceling) => c.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(StoreError::LeaseLost(_)) => {
                        l.store(true, Ordering::Relaxed);
                        c.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => tracing::warn!("renewing the lease of {what}: {e}"),
                }
            }
        });
        KeepAlive {
            task,
            cancel,
            lost,
            handing_back,
        }
    }

    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// The grace period ended while the work ran: unless it finished
    /// anyway, the holder hands it back.
    pub fn handing_back(&self) -> bool {
        self.handing_back.load(Ordering::Relaxed) && !self.lost()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Seconds from `start` (when a piece of work started) to now; 0 when it
/// never started.
pub(crate) fn seconds_since(start: Option<sluice_domain::time::Timestamp>) -> f64 {
    start
        .map(|s| (sluice_domain::time::now() - s).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// How a runner takes the store's answer to handing `id` (work of `kind`,
/// `secs` under way) back at shutdown: counted and logged once when it was
/// handed back; answers whether it was (else its lease is left to expire).
pub(crate) fn handed_back(
    kind: &'static str,
    id: &str,
    answer: Result<bool, StoreError>,
    secs: f64,
) -> bool {
    match answer {
        Ok(true) => {
            METRICS.ended(kind, metrics::HANDED_BACK, secs);
            tracing::info!(
                kind,
                id,
                outcome = metrics::HANDED_BACK,
                duration_ms = (secs * 1000.0) as u64,
                "work handed back"
            );
            true
        }
        Ok(false) => false,
        Err(e) => {
            tracing::warn!("handing back {kind} {id}: {e}");
            false
        }
    }
}

/// A chore done at most once every `every` however often it is asked for
/// (a runner's wake-ups must not redo its reaping each time).
pub(crate) struct Every {
    every: Duration,
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Every {
    pub fn new(every: Duration) -> Every {
        Every {
            every,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether the chore is due now (then it counts as done now).
    pub fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// How long a polling loop waits before its next turn: its poll while the
/// store answers; after each turn that failed, twice as long as after the
/// last (at most 30 s), so a store outage is neither hammered nor logged
/// on every poll.
pub(crate) struct Backoff {
    poll: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(poll: Duration) -> Backoff {
        Backoff { poll, failures: 0 }
    }

    /// The wait after a turn that went well (`ok`) or failed.
    pub fn after(&mut self, ok: bool) -> Duration {
        if ok {
            self.failures = 0;
            return self.poll;
        }
        self.failures = (self.failures + 1).min(16);
        (self.poll.max(Duration::from_millis(100)) * 2u32.pow(self.failures))
            .min(Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_turns_wait_longer_up_to_a_cap_and_a_good_one_resets() {
        let mut b = Backoff::new(Duration::from_millis(200));
        assert_eq!(b.after(true), Duration::from_millis(200));
        assert_eq!(b.after(false), Duration::from_millis(400));
        assert_eq!(b.after(false), Duration::from_millis(800));
        for _ in 0..20 {
            b.after(false);
        }
        assert_eq!(b.after(false), Duration::from_secs(30));
        assert_eq!(b.after(true), Duration::from_millis(200));
    }
}
