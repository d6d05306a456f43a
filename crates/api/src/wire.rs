//! The Run/Deployment API's wire shapes (ABEJA Platform), apart from the
//! handlers that fill them.

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_domain::time;
use sluice_domain::*;
use sluice_engine::control::{RunView, TriggerView};

#[derive(Debug, Default, Deserialize)]
pub struct DeploymentBody {
    pub name: Option<String>,
    pub description: Option<String>,
    pub default_environment: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionBody {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub handler: String,
    #[serde(default)]
    pub image: String,
    pub user_parameters: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RunBody {
    #[serde(default)]
    pub version_id: String,
    pub input_data: Option<Value>,
    pub models: Option<Value>,
    pub output_template: Option<Value>,
    pub environment: Option<Value>,
    pub retry_count: Option<i64>,
    pub distribution: Option<i64>,
}

pub fn user(u: Option<&User>) -> Value {
    match u {
        None => Value::Null,
        Some(u) => json!({
            "id": u.id,
            "email": u.email,
            "display_name": null,
            "is_registered": true,
            "role": "admin",
            "created_at": time::format(&u.created_at),
            "updated_at": time::format(&u.created_at),
        }),
    }
}

pub fn deployment(d: &Deployment, creator: Option<&User>) -> Value {
    json!({
        "deployment_id": d.id,
        "organization_id": d.organization_id,
        "name": d.name,
        "description": d.description,
        "creator": user(creator),
        "default_environment": d.default_environment,
        "runs": [],
        "services": [],
        "triggers": [],
        "created_at": time::format(&d.created_at),
        "modified_at": time::format(&d.modified_at),
    })
}

pub fn version(v: &Version) -> Value {
    json!({
        "deployment_id": v.deployment_id,
        "version": v.version,
        "version_id": v.id,
        "handler": v.handler,
        "image": v.image,
        "user_parameters": v.user_parameters,
        "uploaded": v.archive.is_some(),
        "created_at": time::format(&v.created_at),
        "modified_at": time::format(&v.modified_at),
    })
}

pub fn run(view: &RunView) -> Value {
    let r = &view.run;
    let mut v = json!({
        "run_id": r.id,
        "deployment_id": r.deployment_id,
        "models": r.models,
        "model_version": view.model_version,
        "model_version_id": r.version_id,
        "input_data": r.input_data,
        "output_template": r.output_template,
        "retry_count": r.retry_count,
        "distribution": r.distribution,
        "status": r.status,
        "user_env_vars": r.environment,
        "attempt_count": r.attempt,
        "error": r.error,
        "created_at": time::format(&r.created_at),
        "modified_at": time::format(&r.modified_at),
        "started_at": r.started_at.as_ref().map(time::format),
        "finished_at": r.finished_at.as_ref().map(time::format),
    });
    if let Some(t) = &r.trigger_id {
        v["trigger_id"] = json!(t);
    }
    v
}

pub fn attempt(a: &RunAttempt) -> Value {
    json!({
        "attempt": a.attempt,
        "worker": a.worker,
        "outcome": a.outcome,
        "error": a.error,
        "started_at": time::format(&a.started_at),
        "running_at": a.running_at.as_ref().map(time::format),
        "finished_at": a.finished_at.as_ref().map(time::format),
    })
}

pub fn log_event(e: &LogEvent) -> Value {
    json!({"message": e.message, "timestamp": time::format(&e.timestamp)})
}

// ---- datalake and triggers ------------------------------------------------

/// `2018-05-15T17:14:03Z`, as channels show times.
pub fn iso_z(t: &time::Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2018-05-15T17:14:03+00:00`, as files show times.
pub fn iso_offset(t: &time::Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
}

/// `2020-12-30T11:30:07.960767+00:00`, as the action API shows times.
pub fn iso_micros(t: &time::Timestamp) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

/// Percent-encodes like Python's `urllib.parse.quote`: the client unquotes
/// every metadata name and value it receives.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn channel(c: &Channel) -> Value {
    json!({
        "channel_id": c.id,
        "name": c.name,
        "display_name": c.name,
        "description": c.description,
        "storage_type": c.storage_type,
        "archived": c.archived,
        "created_at": iso_z(&c.created_at),
        "updated_at": iso_z(&c.updated_at),
    })
}

pub fn file(f: &DatalakeFile) -> Value {
    let metadata: serde_json::Map<String, Value> = f
        .metadata
        .iter()
        .map(|(k, v)| (quote(k), Value::String(quote(v))))
        .collect();
    json!({
        "channel_id": f.channel_id,
        "file_id": f.file_id,
        "content_type": f.content_type,
        "metadata": metadata,
        "size": f.size,
        "lifetime": f.lifetime,
        "uploaded_at": iso_offset(&f.uploaded_at),
    })
}

pub fn trigger(view: &TriggerView) -> Value {
    let t = &view.trigger;
    json!({
        "trigger_id": t.id,
        "organization_id": t.organization_id,
        "deployment_id": t.deployment_id,
        "model_version": view.model_version,
        "model_version_id": t.version_id,
        "input_service_name": "datalake",
        "input_service_id": t.input_channel_id,
        "output_service_name": t.output_channel_id.as_ref().map(|_| "datalake"),
        "output_service_id": t.output_channel_id,
        "models": t.models,
        "retry_count": t.retry_count,
        "distribution": t.distribution,
        "user_env_vars": t.environment,
        "created_at": time::format(&t.created_at),
        "modified_at": time::format(&t.modified_at),
    })
}

pub fn trigger_event(e: &TriggerEvent) -> Value {
    json!({
        "trigger_id": e.trigger_id,
        "channel_id": e.channel_id,
        "file_id": e.file_id,
        "state": e.state.as_str(),
        "run_id": e.run_id,
        "note": e.note,
        "created_at": time::format(&e.created_at),
        "dispatched_at": e.dispatched_at.as_ref().map(time::format),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_quoted_like_python() {
        assert_eq!(quote("x-abeja-meta-filename"), "x-abeja-meta-filename");
        assert_eq!(quote("a b/c%"), "a%20b/c%25");
        assert_eq!(quote("あ"), "%E3%81%82");
    }
}
