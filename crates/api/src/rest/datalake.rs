//! Handlers of the datalake and trigger APIs.

use axum::body::Body;
use sluice_engine::control::{ListFiles, NewChannel, NewTriggerRequest, Upload};

use super::*;

pub(super) fn routes(table: Table) -> Table {
    let org = "/organizations/{org}/channels";
    let channel = &format!("{org}/{{channel}}");
    let file = "/channels/{channel}/{file}";
    let tri = "/organizations/{org}/deployments/{dep}/triggers";
    const FILES: &[&str] = &[
        "items_per_page",
        "sort",
        "next_page_token",
        "start",
        "end",
        "timezone",
    ];
    const PAGE: &[&str] = &["scan_forward", "next_page_token"];
    table
        .at(
            Method::GET,
            org,
            op(
                "listChannels",
                "The organization's datalake channels",
                "Channels",
            )
            .query(&["limit", "offset", "filter_archived"]),
            list_channels,
        )
        .at(
            Method::POST,
            org,
            op("createChannel", "Create a channel", "ChannelAnswer").json("ChannelBody"),
            create_channel,
        )
        .at(
            Method::GET,
            channel,
            op("getChannel", "A channel", "ChannelAnswer"),
            get_channel,
        )
        .at(
            Method::PATCH,
            channel,
            op(
                "updateChannel",
                "Rename or describe a channel",
                "ChannelAnswer",
            )
            .json("ChannelBody"),
            patch_channel,
        )
        .at(
            Method::POST,
            &format!("{channel}/archive"),
            op("archiveChannel", "Archive a channel", "ChannelAnswer"),
            archive_channel,
        )
        .at(
            Method::POST,
            &format!("{channel}/unarchive"),
            op("unarchiveChannel", "Unarchive a channel", "ChannelAnswer"),
            unarchive_channel,
        )
        .at(
            Method::GET,
            "/channels/{channel}",
            op("listFiles", "A channel's files, a page at a time", "Files").query(FILES),
            list_files,
        )
        .at(
            Method::POST,
            "/channels/{channel}/upload",
            op(
                "uploadFile",
                "Upload a file (x-abeja-meta-* headers are its metadata)",
                "UploadedFile",
            )
            .query(&["lifetime", "conflict_target"])
            .bytes_in(),
            upload_file,
        )
        .at(
            Method::GET,
            file,
            op("getFile", "A file, with a pre-signed download URL", "File"),
            get_file,
        )
        .at(
            Method::DELETE,
            file,
            op("deleteFile", "Delete a file", "Message"),
            delete_file,
        )
        .at(
            Method::PUT,
            &format!("{file}/metadata"),
            op("putFileMetadata", "Replace a file's metadata", "File").json("FileMetadata"),
            put_file_metadata,
        )
        .public(
            Method::GET,
            "/files/{token}",
            op("downloadFile", "A file's bytes, by its pre-signed URL", "").bytes_out(),
            download_file,
        )
        .at(
            Method::GET,
            tri,
            op("listTriggers", "A deployment's triggers", "Triggers"),
            list_triggers,
        )
        .at(
            Method::POST,
            tri,
            op(
                "createTrigger",
                "Run a version on every file a channel receives",
                "Trigger",
            )
            .json("TriggerBody"),
            create_trigger,
        )
        .at(
            Method::GET,
            &format!("{tri}/{{tri}}"),
            op("getTrigger", "A trigger", "Trigger"),
            get_trigger,
        )
        .at(
            Method::DELETE,
            &format!("{tri}/{{tri}}"),
            op("deleteTrigger", "Delete a trigger", "Message"),
            delete_trigger,
        )
        .at(
            Method::GET,
            &format!("{tri}/{{tri}}/runs"),
            op("triggerRuns", "The runs a trigger started", "Runs").query(PAGE),
            trigger_runs,
        )
        .at(
            Method::GET,
            &format!("{tri}/{{tri}}/events"),
            op(
                "triggerEvents",
                "Every file a trigger saw, and the run it started or why none",
                "TriggerEvents",
            )
            .query(PAGE),
            trigger_events,
        )
}

// ---- channels -----------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct ChannelBody {
    name: Option<String>,
    description: Option<String>,
    storage_type: Option<String>,
}

/// The organization envelope every channel answer comes in.
async fn envelope(s: &ApiState, org: &sluice_domain::OrganizationId) -> Result<Value> {
    let o = s.control.organization(org).await?;
    Ok(json!({
        "organization_id": o.id,
        "organization_name": o.name,
        "created_at": wire::iso_z(&o.created_at),
        "updated_at": wire::iso_z(&o.created_at),
    }))
}

async fn with_channel(s: &ApiState, c: &sluice_domain::Channel) -> Result<Json<Value>> {
    let mut out = envelope(s, &c.organization_id).await?;
    out["channel"] = wire::channel(c);
    Ok(Json(out))
}

async fn create_channel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: ChannelBody = body(&bytes)?;
    let req = NewChannel {
        name: b.name,
        description: b.description,
        storage_type: b.storage_type,
    };
    let c = s.control.create_channel(&who, &org, req).await?;
    with_channel(&s, &c).await
}

#[derive(Debug, Deserialize)]
struct ChannelsQuery {
    limit: Option<String>,
    offset: Option<String>,
    filter_archived: Option<String>,
}

pub(super) fn number(field: &str, v: Option<&str>) -> Result<Option<u32>> {
    v.filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<u32>().map_err(|_| {
                ApiError::bad_request(format!("{field} must be a whole number, got `{v}`"))
            })
        })
        .transpose()
}

async fn list_channels(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(org): Path<String>,
    Query(q): Query<ChannelsQuery>,
) -> Result<Json<Value>> {
    let (channels, more, limit, offset) = s
        .control
        .list_channels(
            &who,
            &org,
            number("limit", q.limit.as_deref())?,
            number("offset", q.offset.as_deref())?,
            q.filter_archived.as_deref(),
        )
        .await?;
    let org = s.control.authorize(&who, &org)?;
    let mut out = envelope(&s, &org).await?;
    out["channels"] = channels.iter().map(wire::channel).collect();
    out["limit"] = json!(limit);
    out["offset"] = json!(offset);
    out["has_next"] = json!(more);
    Ok(Json(out))
}

async fn get_channel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, channel)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let c = s.control.get_channel(&who, &org, &channel).await?;
    with_channel(&s, &c).await
}

async fn patch_channel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, channel)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: ChannelBody = body(&bytes)?;
    let c = s
        .control
        .update_channel(&who, &org, &channel, b.name, b.description, None)
        .await?;
    with_channel(&s, &c).await
}

async fn archive_channel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, channel)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let c = s
        .control
        .update_channel(&who, &org, &channel, None, None, Some(true))
        .await?;
    with_channel(&s, &c).await
}

async fn unarchive_channel(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, channel)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let c = s
        .control
        .update_channel(&who, &org, &channel, None, None, Some(false))
        .await?;
    with_channel(&s, &c).await
}

// ---- files --------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct UploadQuery {
    lifetime: Option<String>,
    conflict_target: Option<String>,
}

/// `x-abeja-meta-*` headers, as sent (still percent-encoded).
fn metadata_headers(headers: &HeaderMap) -> Result<Vec<(String, String)>> {
    headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(sluice_domain::META_PREFIX))
        .map(|(k, v)| {
            let v = v.to_str().map_err(|_| {
                ApiError::bad_request(format!("header {k} must be ASCII (percent-encode it)"))
            })?;
            Ok((k.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

async fn upload_file(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(channel): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    raw: Body,
) -> Result<Json<Value>> {
    let limit = s.control.settings().max_file_bytes;
    let bytes = axum::body::to_bytes(raw, limit + 1).await.map_err(|_| {
        ApiError::from(sluice_engine::control::ControlError::TooLarge(format!(
            "the file is over the limit of {limit} bytes (--max-file-bytes)"
        )))
    })?;
    let upload = Upload {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        metadata: metadata_headers(&headers)?,
        lifetime: q.lifetime,
        conflict_target: q.conflict_target,
    };
    let (file, _) = s
        .control
        .upload_file(&who, &channel, upload, &bytes)
        .await?;
    Ok(Json(wire::file(&file)))
}

#[derive(Debug, Deserialize)]
struct FilesQuery {
    items_per_page: Option<String>,
    sort: Option<String>,
    next_page_token: Option<String>,
    start: Option<String>,
    end: Option<String>,
    timezone: Option<String>,
}

fn with_download(s: &ApiState, headers: &HeaderMap, f: &sluice_domain::DatalakeFile) -> Value {
    let (token, expires) = s.control.file_download_token(f);
    let mut v = wire::file(f);
    v["download_uri"] = json!(format!("{}/files/{token}", public_url(s, headers)));
    v["url_expires_on"] = json!(wire::iso_offset(&expires));
    v
}

async fn list_files(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path(channel): Path<String>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let req = ListFiles {
        items_per_page: q.items_per_page,
        sort: q.sort,
        next_page_token: q.next_page_token,
        start: q.start,
        end: q.end,
        timezone: q.timezone,
    };
    let page = s.control.list_files(&who, &channel, req).await?;
    Ok(Json(json!({
        "files": page.files.iter().map(|f| with_download(&s, &headers, f)).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}

async fn get_file(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((channel, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let f = s.control.get_file(&who, &channel, &file).await?;
    Ok(Json(with_download(&s, &headers, &f)))
}

async fn delete_file(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((channel, file)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let id = s.control.delete_file(&who, &channel, &file).await?;
    Ok(Json(json!({"message": format!("deleted file ({id})")})))
}

async fn put_file_metadata(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((channel, file)): Path<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let pairs: std::collections::BTreeMap<String, Value> = body(&bytes)?;
    let pairs = pairs
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(v) => Ok((k, v)),
            other => Err(ApiError::bad_request(format!(
                "metadata `{k}` must be a string, got {other}"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let f = s
        .control
        .set_file_metadata(&who, &channel, &file, pairs)
        .await?;
    Ok(Json(with_download(&s, &headers, &f)))
}

async fn download_file(State(s): State<ApiState>, Path(token): Path<String>) -> Result<Response> {
    let (f, bytes) = s.control.download_file(&token).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, f.content_type)],
        bytes,
    )
        .into_response())
}

// ---- triggers -----------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct TriggerBody {
    version_id: Option<String>,
    input_service_name: Option<String>,
    input_service_id: Option<String>,
    output_service_name: Option<String>,
    output_service_id: Option<String>,
    models: Option<Value>,
    environment: Option<Value>,
    retry_count: Option<i64>,
    distribution: Option<i64>,
}

async fn create_trigger(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
    bytes: Bytes,
) -> Result<Json<Value>> {
    let b: TriggerBody = body(&bytes)?;
    let req = NewTriggerRequest {
        version_id: b.version_id,
        input_service_name: b.input_service_name,
        input_service_id: b.input_service_id,
        output_service_name: b.output_service_name,
        output_service_id: b.output_service_id,
        models: b.models,
        environment: b.environment,
        retry_count: b.retry_count,
        distribution: b.distribution,
    };
    let t = s.control.create_trigger(&who, &org, &dep, req).await?;
    Ok(Json(wire::trigger(&t)))
}

async fn list_triggers(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let triggers = s.control.list_triggers(&who, &org, &dep).await?;
    Ok(Json(
        json!({"entries": triggers.iter().map(wire::trigger).collect::<Vec<_>>()}),
    ))
}

async fn get_trigger(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, tri)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let t = s.control.get_trigger(&who, &org, &dep, &tri).await?;
    Ok(Json(wire::trigger(&t)))
}

async fn delete_trigger(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, tri)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let id = s.control.delete_trigger(&who, &org, &dep, &tri).await?;
    Ok(Json(json!({"message": format!("{id} deleted")})))
}

async fn trigger_runs(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, tri)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let forward = scan_forward(q.scan_forward.as_deref())?;
    let page = s
        .control
        .trigger_runs(
            &who,
            &org,
            &dep,
            &tri,
            forward,
            q.next_page_token.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "entries": page.runs.iter().map(wire::run).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}

async fn trigger_events(
    State(s): State<ApiState>,
    Caller(who): Caller,
    Path((org, dep, tri)): Path<(String, String, String)>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let forward = scan_forward(q.scan_forward.as_deref())?;
    let page = s
        .control
        .trigger_events(
            &who,
            &org,
            &dep,
            &tri,
            forward,
            q.next_page_token.as_deref(),
        )
        .await?;
    Ok(Json(json!({
        "entries": page.events.iter().map(wire::trigger_event).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}
