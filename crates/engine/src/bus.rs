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
    if store.wake_url().is_none() {
        return;
    }
    let Some(sent) = wakers.sent(what) else {
        notify(store, wakers, what).await;
        return;
    };
    let mine = sent.asked.fetch_add(1, Ordering::SeqCst) + 1;
    let mut answered = sent.answered.lock().await;
    if *answered >= mine {
        return;
    }
    let answers = sent.asked.load(Ordering::SeqCst);
    if notify(store, wakers, what).await {
        *answered = answers;
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
