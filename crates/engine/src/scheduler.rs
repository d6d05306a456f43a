//! The scheduler: admits SUBMITTED runs, moves PENDING runs whose time and
//! queue have come to RUNNABLE, and takes back runs whose worker stopped
//! renewing its lease. On PostgreSQL several schedulers may run; the store
//! serializes their queue step with an advisory lock.

use std::sync::Arc;

use sluice_domain::time;
use sluice_store::MetadataStore;

use crate::{EngineConfig, Wakers};

/// The scheduler's loop. This process counts as running one from the call
/// on, before the loop's first turn (see [`Wakers::serving`]).
pub fn run(
    store: Arc<dyn MetadataStore>,
    config: EngineConfig,
    wakers: Arc<Wakers>,
) -> impl std::future::Future<Output = ()> {
    wakers.serving(crate::bus::SCHEDULER);
    turns(store, config, wakers)
}

async fn turns(store: Arc<dyn MetadataStore>, config: EngineConfig, wakers: Arc<Wakers>) {
    let mut last_reap = std::time::Instant::now();
    let mut backoff = crate::lease::Backoff::new(config.poll);
    let mut ok = true;
    loop {
        tokio::select! {
            _ = wakers.scheduler.notified(), if ok => {}
            _ = tokio::time::sleep(backoff.after(ok)) => {}
        }
        ok = match store.schedule(time::now()).await {
            Ok(n) => {
                if n > 0 {
                    // The workers of every process sharing the store.
                    crate::bus::wake(&*store, &wakers, crate::bus::WORKERS).await;
                }
                true
            }
            Err(e) => {
                tracing::warn!("scheduling failed: {e}");
                false
            }
        };
        if last_reap.elapsed() >= config.heartbeat {
            last_reap = std::time::Instant::now();
            match store.reap(config.retry, time::now()).await {
                Ok(reaped) if !reaped.is_empty() => {
                    crate::metrics::METRICS.took_back(crate::metrics::RUN, &reaped);
                    wakers.scheduler.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("reaping lost leases failed: {e}"),
            }
        }
    }
}
