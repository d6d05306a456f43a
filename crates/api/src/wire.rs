//! The Run/Deployment API's wire shapes (seeds 001/002), apart from the
//! handlers that fill them.

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_domain::time;
use sluice_domain::*;
use sluice_engine::control::RunView;

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
