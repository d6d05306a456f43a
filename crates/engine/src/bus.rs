//! Wake-ups between processes that share a PostgreSQL store: a `serve`
//! whose scheduler made runs RUNNABLE wakes the `worker`s at once, a job
//! queried from the command line wakes the server's importer, instead of
//! each waiting for its next poll. The store carries them (`NOTIFY` on
//! [`sluice_store::WAKE_CHANNEL`], the loop's name and the sending
//! process's [`Wakers::origin`] as payload); each process relays what it
//! hears from the others to its own [`Wakers`]. Polling stays:
//! a wake-up lost (a listener reconnecting) costs one poll interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_store::{MetadataStore, WakeListener};

use crate::lease::Backoff;
use crate::shutdown::Shutdown;
use crate::Wakers;

pub const SCHEDULER: &str = "scheduler";
pub const WORKERS: &str = "workers";
pub const DISPATCHER: &str = "dispatcher";
pub const IMPORTER: &str = "importer";
pub const ACTIONS: &str = "actions";
pub const API: &str = "api";

/// Every loop a wake-up can name.
pub const LOOPS: [&str; 6] = [SCHEDULER, WORKERS, DISPATCHER, IMPORTER, ACTIONS, API];

/// The loops whose one pass takes the work of every process sharing the
/// store (the scheduler admits every submitted run, the dispatcher turns
/// every pending event into its run; a pass waits for another process's
/// under the store's locks, it does not skip its work). When one runs in
/// this process, waking it here is enough: the other processes' are not
/// sent a NOTIFY (a burst of submits sent one for most runs — a statement
/// each, and a wake-up of every listener).
const ONE_PASS_TAKES_ALL: [&str; 2] = [SCHEDULER, DISPATCHER];

/// The wake-ups of one loop sent to other processes, coalesced: a burst of
/// submits (each waking the schedulers) sends a few NOTIFYs, not one each.
/// Wake-ups are numbered as they are asked for (each after its caller's
/// change is committed); one NOTIFY is sent at a time, and answers every
/// wake-up numbered before it started.
#[derive(Default)]
pub struct Coalesced {
    asked: AtomicU64,
    /// The last wake-up number a sent NOTIFY answered.
    answered: tokio::sync::Mutex<u64>,
}

/// Wakes `what` here and in every process sharing the store; returns once
/// a NOTIFY sent after the call began has gone out (this one, or another
/// caller's that started later).
pub async fn wake(store: &dyn MetadataStore, wakers: &Wakers, what: &str) {
    if let Some(n) = wakers.named(what) {
        n.notify_one();
    }
    if store.wake_url().is_none() || (ONE_PASS_TAKES_ALL.contains(&what) && wakers.serves(what)) {
        return;
    }
    let Some(sent) = wakers.sent(what) else {
        notify(store, wakers, what).await;
        return;
    };
    sent.after(|| notify(store, wakers, what)).await;
}

impl Coalesced {
    /// Runs `send` unless a send that began after this call has already
    /// gone out (answered true); one send at a time.
    pub async fn after<F: std::future::Future<Output = bool>>(&self, send: impl FnOnce() -> F) {
        let mine = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut answered = self.answered.lock().await;
        if *answered >= mine {
            return;
        }
        let answers = self.asked.load(Ordering::SeqCst);
        if send().await {
            *answered = answers;
        }
    }
}

async fn notify(store: &dyn MetadataStore, wakers: &Wakers, what: &str) -> bool {
    match store.wake(&format!("{what}@{}", wakers.origin)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("waking {what} in other processes: {e}");
            false
        }
    }
}

/// Relays the wake-ups other processes send to this one's `wakers` until
/// `shutdown` stops it; reconnects (backing off) when the store goes
/// away. Nothing to do for a store one process owns.
pub async fn relay(store: Arc<dyn MetadataStore>, wakers: Arc<Wakers>, shutdown: Shutdown) {
    let Some(url) = store.wake_url().map(str::to_owned) else {
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(500));
    while !shutdown.is_stopping() {
        let mut listener = match WakeListener::connect(&url).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("listening for wake-ups: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.after(false)) => {}
                    _ = shutdown.stopping() => {}
                }
                continue;
            }
        };
        backoff.after(true);
        loop {
            tokio::select! {
                _ = shutdown.stopping() => return,
                heard = listener.next() => match heard {
                    Ok(heard) => {
                        // `<loop>@<origin>`; this process's own were relayed already.
                        let (what, origin) = heard.split_once('@').unwrap_or((&heard, ""));
                        if origin == wakers.origin {
                            continue;
                        }
                        if let Some(n) = wakers.named(what) {
                            n.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!("listening for wake-ups: {e}");
                        break;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of many concurrent wake-ups returns only once a send that began
    /// after it was asked for has gone out; they share far fewer sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_wake_ups_share_sends_that_began_after_them() {
        let sent = Arc::new(Coalesced::default());
        let clock = Arc::new(AtomicU64::new(0));
        let sends = Arc::new(std::sync::Mutex::new(Vec::new()));
        // The 200 ask at once, however busy the machine.
        let start = Arc::new(tokio::sync::Barrier::new(200));
        let mut callers = Vec::new();
        for _ in 0..200 {
            let (sent, clock, sends) = (sent.clone(), clock.clone(), sends.clone());
            let start = start.clone();
            callers.push(tokio::spawn(async move {
                start.wait().await;
                let asked = clock.fetch_add(1, Ordering::SeqCst);
                sent.after(|| async {
                    let began = clock.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    sends.lock().unwrap().push(began);
                    true
                })
                .await;
                let returned = clock.fetch_add(1, Ordering::SeqCst);
                let sends = sends.lock().unwrap();
                assert!(
                    sends.iter().any(|&b| b > asked && b < returned),
                    "a wake-up asked at {asked} returned at {returned} with no send begun between: {sends:?}"
                );
            }));
        }
        for c in callers {
            c.await.unwrap();
        }
        let n = sends.lock().unwrap().len();
        assert!((1..50).contains(&n), "{n} sends for 200 wake-ups");
    }

    /// A send that failed answers nobody: the next wake-up sends again.
    #[tokio::test]
    async fn a_failed_send_is_tried_again() {
        let sent = Coalesced::default();
        let tries = AtomicU64::new(0);
        for ok in [false, true] {
            sent.after(|| async {
                tries.fetch_add(1, Ordering::SeqCst);
                ok
            })
            .await;
        }
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }
}
