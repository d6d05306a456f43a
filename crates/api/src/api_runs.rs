//! The API Run page's wire shapes: API sources, their runs, tasks, tables
//! and durations — the REST face and `sluice source … --json` print the
//! same.

use serde_json::{json, Value};
use sluice_domain::api_source::{status_label, ApiRunTable, ApiSource, ApiTask};
use sluice_domain::time;
use sluice_engine::control::{duration_secs, ApiRunDetail, ApiRunView, Durations};

fn stamp(t: Option<time::Timestamp>) -> Value {
    t.map(|t| Value::String(time::format(&t)))
        .unwrap_or(Value::Null)
}

pub fn source_json(s: &ApiSource) -> Value {
    json!({
        "name": s.name,
        "destination": s.destination.as_deref().unwrap_or("embedded"),
        "dataset": s.dataset,
        "config": s.config_shown,
        "created_at": time::format(&s.created_at),
        "updated_at": time::format(&s.modified_at),
    })
}

pub fn run_json(v: &ApiRunView) -> Value {
    let r = &v.run;
    json!({
        "id": r.id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(r.id.clone())),
        "source": r.source,
        "type": r.run_type.as_str(),
        "status": r.status.as_str(),
        "status_label": status_label(r.status),
        "retry_of": r.retry_of.as_ref().map(|id| id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(id.clone()))),
        "records": r.records,
        "tables": r.tables,
        "messages": v.messages,
        "error": r.error,
        "attempt": r.attempt,
        "created_at": time::format(&r.created_at),
        "started_at": stamp(r.started_at),
        "finished_at": stamp(r.finished_at),
        "duration_secs": duration_secs(r),
    })
}

pub fn task_json(t: &ApiTask) -> Value {
    json!({
        "position": t.position,
        "name": t.name,
        "kind": t.kind,
        "table": t.table,
        "status": t.status.as_str(),
        "status_label": status_label(t.status),
        "records": t.records,
        "messages": t.messages,
        "started_at": stamp(t.started_at),
        "finished_at": stamp(t.finished_at),
    })
}

pub fn table_json(t: &ApiRunTable) -> Value {
    json!({
        "name": t.table,
        "records": t.records,
        "columns": t.columns.iter().map(|(n, ty)| json!({"name": n, "type": ty})).collect::<Vec<_>>(),
    })
}

pub fn detail_json(d: &ApiRunDetail) -> Value {
    let messages = d.messages();
    let mut run = run_json(&ApiRunView {
        run: d.run.clone(),
        messages: messages.len() as i64,
    });
    run["tasks"] = d.tasks.iter().map(task_json).collect();
    run["table_list"] = d.tables.iter().map(table_json).collect();
    run["message_list"] = messages
        .iter()
        .map(|m| json!({"task": m.task, "table": m.table, "message": m.text}))
        .collect();
    run["retryable"] = json!(d.retryable);
    run["data_load"] = match &d.data_load {
        Some(l) => {
            json!({"tables": l.tables, "records": l.records, "created_at": time::format(&l.created_at)})
        }
        None => Value::Null,
    };
    run
}

pub fn durations_json(d: &[Durations]) -> Value {
    json!(d)
}
