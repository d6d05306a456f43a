//! The dispatcher: drains the trigger event ledger into runs.
//!
//! Every file stored in a channel leaves one PENDING event per live trigger
//! on that channel, written in the file's own transaction. The dispatcher
//! reads PENDING events oldest first and, for each, creates the trigger's
//! run and marks the event DISPATCHED in one transaction
//! ([`sluice_store::DatalakeStore::dispatch_event`]). So a file acknowledged to its
//! uploader starts its run exactly once: after a crash the event is still
//! PENDING and is dispatched on restart; when several dispatchers share a
//! PostgreSQL store, the event's row lock lets one win and the others find
//! it taken.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::json;
use sluice_domain::time;
use sluice_domain::*;
use sluice_store::{MetadataStore, StoreError};

use crate::{queue_name, EngineConfig, Wakers};

const BATCH: u32 = 200;

/// The dispatcher's loop. This process counts as running one from the call
/// on, before the loop's first turn (see [`Wakers::serving`]).
pub fn run(
    store: Arc<dyn MetadataStore>,
    config: EngineConfig,
    wakers: Arc<Wakers>,
) -> impl std::future::Future<Output = ()> {
    wakers.serving(crate::bus::DISPATCHER);
    turns(store, config, wakers)
}

async fn turns(store: Arc<dyn MetadataStore>, config: EngineConfig, wakers: Arc<Wakers>) {
    let mut backoff = crate::lease::Backoff::new(config.poll);
    loop {
        let ok = match dispatch_pending(&*store, config.queues).await {
            Ok(n) if n > 0 => {
                wakers.scheduler.notify_one();
                // A full batch: there may be more at once.
                backoff.after(true);
                continue;
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("dispatching trigger events failed: {e}");
                false
            }
        };
        tokio::select! {
            _ = wakers.dispatcher.notified() => {}
            _ = tokio::time::sleep(backoff.after(ok)) => {}
        }
    }
}

/// Turns one batch of PENDING events into runs; answers how many runs it made.
pub async fn dispatch_pending(store: &dyn MetadataStore, queues: u32) -> Result<u64, StoreError> {
    let events = store.pending_events(BATCH).await?;
    let mut triggers: HashMap<TriggerId, Trigger> = HashMap::new();
    let mut made = 0;
    for event in events {
        let trigger = match triggers.get(&event.trigger_id) {
            Some(t) => t.clone(),
            None => {
                let t = store.find_trigger(&event.trigger_id).await?;
                triggers.insert(t.id.clone(), t.clone());
                t
            }
        };
        if trigger.deleted_at.is_some() {
            let note = "the trigger was deleted before a run was made";
            store.skip_event(event.seq, note, time::now()).await?;
            continue;
        }
        let now = time::now();
        let run = NewRun {
            id: RunId::generate(),
            organization_id: trigger.organization_id.clone(),
            deployment_id: trigger.deployment_id.clone(),
            version_id: trigger.version_id.clone(),
            trigger_id: Some(trigger.id.clone()),
            input_data: json!({ DATALAKE_INPUT: format!("{}/{}", event.channel_id, event.file_id) }),
            models: trigger.models.clone(),
            output_template: serde_json::Value::Null,
            environment: trigger.environment.clone(),
            retry_count: trigger.retry_count,
            distribution: trigger.distribution,
            // The same file never makes two runs of one trigger, whatever
            // path led here.
            idempotency_key: Some(format!(
                "{}/{}/{}",
                trigger.id, event.channel_id, event.file_id
            )),
            created_at: now,
        };
        let queue = queue_name(&trigger.deployment_id, trigger.distribution, queues);
        match store
            .dispatch_event(event.seq, &run, queue.as_deref(), now)
            .await
        {
            Ok(true) => made += 1,
            Ok(false) => {} // another dispatcher took it, or the trigger went
            Err(StoreError::Conflict(m)) => {
                store
                    .skip_event(event.seq, &format!("a run for this file exists: {m}"), now)
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(made)
}
