//! Datalake channels and files, and triggers: the use cases behind
//! `/organizations/{org}/channels`, `/channels/{channel}` and
//! `/organizations/{org}/deployments/{dep}/triggers`.

use std::collections::BTreeMap;

use super::*;
use sluice_store::FileQuery;

/// A channel as a client creates it.
#[derive(Debug, Default, Clone)]
pub struct NewChannel {
    pub name: Option<String>,
    pub description: Option<String>,
    pub storage_type: Option<String>,
}

/// A file as a client uploads it: its headers and query parameters.
#[derive(Debug, Default, Clone)]
pub struct Upload {
    pub content_type: Option<String>,
    /// `x-abeja-meta-*` header names (any case) to their values, still
    /// percent-encoded as the client sent them.
    pub metadata: Vec<(String, String)>,
    pub lifetime: Option<String>,
    pub conflict_target: Option<String>,
}

/// `GET /channels/{channel}` parameters.
#[derive(Debug, Default, Clone)]
pub struct ListFiles {
    pub items_per_page: Option<String>,
    pub sort: Option<String>,
    pub next_page_token: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub timezone: Option<String>,
}

pub struct FilesPage {
    pub files: Vec<DatalakeFile>,
    pub next_page_token: Option<String>,
}

/// A trigger as a client creates it.
#[derive(Debug, Default, Clone)]
pub struct NewTriggerRequest {
    pub version_id: Option<String>,
    pub input_service_name: Option<String>,
    pub input_service_id: Option<String>,
    pub output_service_name: Option<String>,
    pub output_service_id: Option<String>,
    pub models: Option<Value>,
    pub environment: Option<Value>,
    pub retry_count: Option<i64>,
    pub distribution: Option<i64>,
}

/// A trigger with the version text its faces show beside it.
#[derive(Debug, Clone)]
pub struct TriggerView {
    pub trigger: Trigger,
    pub model_version: Option<String>,
}

pub struct EventsPage {
    pub events: Vec<TriggerEvent>,
    pub next_page_token: Option<String>,
}

const LIFETIMES: [&str; 5] = ["1day", "1week", "1month", "6months", "1year"];
const SERVICE: &str = "datalake";

/// Decodes `%XX` escapes (the client quotes metadata names and values).
fn percent_decode(field: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("{field}: `{s}` has a broken %-escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("{field}: `{s}` is not UTF-8 once decoded")))
}

/// A day (`20180101`, `2018-01-01`) or a time, in UTC.
fn parse_day_or_time(field: &str, v: &str) -> Result<Timestamp> {
    let day = chrono::NaiveDate::parse_from_str(v, "%Y%m%d")
        .or_else(|_| chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d"));
    if let Ok(day) = day {
        return Ok(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    time::parse(v).ok_or_else(|| {
        bad(format!(
            "{field} `{v}` is not a day (YYYYMMDD) or a time (YYYY-MM-DDTHH:MM:SS, UTC)"
        ))
    })
}

/// The state a file list's `next_page_token` carries: the client sends the
/// token alone on later pages, so it holds the order, size and bounds too.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FilesCursor {
    query: FileQuery,
}

impl FilesCursor {
    fn encode(&self) -> String {
        let q = &self.query;
        let n = |t: Option<Timestamp>| t.map(|t| t.timestamp_micros().to_string());
        format!(
            "{}{}.{}.{}.{}",
            if q.page.forward { 'a' } else { 'd' },
            q.page.after.unwrap_or(0),
            q.page.limit,
            n(q.from).unwrap_or_default(),
            n(q.to).unwrap_or_default()
        )
    }

    fn decode(token: &str) -> Option<FilesCursor> {
        let forward = match token.chars().next()? {
            'a' => true,
            'd' => false,
            _ => return None,
        };
        let mut parts = token[1..].split('.');
        let after: i64 = parts.next()?.parse().ok()?;
        let limit: u32 = parts.next()?.parse().ok()?;
        let mut time = || -> Option<Option<Timestamp>> {
            match parts.next()? {
                "" => Some(None),
                t => chrono::DateTime::from_timestamp_micros(t.parse().ok()?).map(Some),
            }
        };
        let (from, to) = (time()?, time()?);
        (parts.next().is_none() && (1..=1000).contains(&limit)).then_some(FilesCursor {
            query: FileQuery {
                page: PageRequest {
                    after: Some(after),
                    forward,
                    limit,
                },
                from,
                to,
            },
        })
    }
}

impl Control {
    fn channel_id(&self, channel: &str) -> Result<ChannelId> {
        ChannelId::parse(channel).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    fn file_id(&self, file: &str) -> Result<FileId> {
        FileId::parse(file).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    pub async fn organization(&self, org: &OrganizationId) -> Result<Organization> {
        Ok(self.store.get_organization(org).await?)
    }

    // ---- channels -------------------------------------------------------

    pub async fn create_channel(
        &self,
        who: &Principal,
        org: &str,
        req: NewChannel,
    ) -> Result<Channel> {
        let org = self.authorize(who, org)?;
        let name = req.name.unwrap_or_default();
        input::check_name("name", &name).map_err(bad)?;
        let storage_type = req.storage_type.unwrap_or_else(|| SERVICE.into());
        if !matches!(storage_type.as_str(), "datalake" | "file") {
            return Err(bad(format!(
                "storage_type must be \"datalake\" or \"file\", got \"{storage_type}\""
            )));
        }
        let now = time::now();
        let channel = Channel {
            id: ChannelId::generate(),
            organization_id: org,
            name,
            description: req.description.unwrap_or_default(),
            storage_type,
            archived: false,
            created_at: now,
            updated_at: now,
        };
        self.store.create_channel(&channel).await?;
        Ok(channel)
    }

    /// A channel of the organization in the path.
    pub async fn get_channel(&self, who: &Principal, org: &str, channel: &str) -> Result<Channel> {
        let org = self.authorize(who, org)?;
        let c = self.store.get_channel(&self.channel_id(channel)?).await?;
        if c.organization_id != org {
            return Err(ControlError::NotFound(format!(
                "channel `{channel}` not found in organization {org}"
            )));
        }
        Ok(c)
    }

    /// A channel named by a `/channels/{channel}` path: the caller must
    /// belong to its organization.
    async fn channel_for(&self, who: &Principal, channel: &str) -> Result<Channel> {
        let c = self.store.get_channel(&self.channel_id(channel)?).await?;
        self.authorize(who, c.organization_id.as_str())?;
        Ok(c)
    }

    pub async fn list_channels(
        &self,
        who: &Principal,
        org: &str,
        limit: Option<u32>,
        offset: Option<u32>,
        filter_archived: Option<&str>,
    ) -> Result<(Vec<Channel>, bool, u32, u32)> {
        let org = self.authorize(who, org)?;
        let include_archived = match filter_archived {
            None | Some("exclude_archived") => false,
            Some("include_archived") => true,
            Some(other) => {
                return Err(bad(format!(
                    "filter_archived must be include_archived or exclude_archived, got `{other}`"
                )))
            }
        };
        let limit = limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(bad(format!("limit must be 1 to 1000, got {limit}")));
        }
        let offset = offset.unwrap_or(0);
        let (items, more) = self
            .store
            .list_channels(&org, include_archived, offset, limit)
            .await?;
        Ok((items, more, limit, offset))
    }

    pub async fn update_channel(
        &self,
        who: &Principal,
        org: &str,
        channel: &str,
        name: Option<String>,
        description: Option<String>,
        archived: Option<bool>,
    ) -> Result<Channel> {
        let mut c = self.get_channel(who, org, channel).await?;
        if let Some(name) = name {
            input::check_name("name", &name).map_err(bad)?;
            c.name = name;
        }
        if let Some(d) = description {
            c.description = d;
        }
        if let Some(a) = archived {
            c.archived = a;
        }
        c.updated_at = time::now();
        self.store.update_channel(&c).await?;
        Ok(c)
    }

    // ---- files ----------------------------------------------------------

    /// Stores an uploaded file: bytes first, then its metadata and its
    /// trigger events in one transaction. Once this answers, every trigger
    /// on the channel will start exactly one run for the file.
    pub async fn upload_file(
        &self,
        who: &Principal,
        channel: &str,
        upload: Upload,
        body: &[u8],
    ) -> Result<(DatalakeFile, u64)> {
        let c = self.channel_for(who, channel).await?;
        if c.archived {
            return Err(ControlError::Conflict(format!(
                "channel {} is archived: unarchive it to upload files",
                c.id
            )));
        }
        if body.len() > self.settings.max_file_bytes {
            return Err(ControlError::TooLarge(format!(
                "the file is {} bytes; the limit is {} (--max-file-bytes)",
                body.len(),
                self.settings.max_file_bytes
            )));
        }
        if let Some(l) = &upload.lifetime {
            if !LIFETIMES.contains(&l.as_str()) {
                return Err(bad(format!(
                    "lifetime must be one of {}, got `{l}`",
                    LIFETIMES.join(", ")
                )));
            }
        }
        if let Some(t) = &upload.conflict_target {
            return Err(bad(format!(
                "conflict_target (`{t}`) is not supported by this server yet"
            )));
        }
        let metadata = self.metadata(&upload.metadata)?;
        let now = time::now();
        let id = FileId::generate(now);
        let object = format!("datalake/{}/{}", c.id, id);
        self.blobs.put(&object, body).await?;
        let file = DatalakeFile {
            seq: 0,
            channel_id: c.id.clone(),
            file_id: id,
            organization_id: c.organization_id.clone(),
            content_type: upload
                .content_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            metadata,
            size: body.len() as i64,
            object,
            lifetime: upload.lifetime,
            source_run_id: None,
            uploaded_at: now,
        };
        match self.store.put_file(&file).await {
            Ok(events) => {
                if events > 0 {
                    crate::bus::wake(&*self.store, &self.wakers, crate::bus::DISPATCHER).await;
                }
                Ok((file, events))
            }
            Err(e) => {
                // Not acknowledged: leave no bytes behind either.
                let _ = self.blobs.delete(&file.object).await;
                Err(e.into())
            }
        }
    }

    /// `x-abeja-meta-*` pairs, decoded, names lowercased.
    fn metadata(&self, pairs: &[(String, String)]) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut total = 0;
        for (k, v) in pairs {
            let k = percent_decode("metadata name", &k.to_ascii_lowercase())?;
            if !k.starts_with(META_PREFIX) || k.len() == META_PREFIX.len() {
                return Err(bad(format!(
                    "metadata name `{k}` must start with `{META_PREFIX}`"
                )));
            }
            let v = percent_decode(&k, v)?;
            total += k.len() + v.len();
            out.insert(k, v);
        }
        if total > 8 * 1024 {
            return Err(bad(format!(
                "metadata is {total} bytes; at most 8192 are kept per file"
            )));
        }
        Ok(out)
    }

    pub async fn list_files(
        &self,
        who: &Principal,
        channel: &str,
        req: ListFiles,
    ) -> Result<FilesPage> {
        let c = self.channel_for(who, channel).await?;
        let query = match req.next_page_token.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => {
                FilesCursor::decode(t)
                    .ok_or_else(|| {
                        bad(format!(
                            "next_page_token `{t}` is not a token this server gave out"
                        ))
                    })?
                    .query
            }
            None => {
                let limit = match req.items_per_page.as_deref() {
                    None | Some("") => 100,
                    Some(n) => n
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| {
                            bad(format!("items_per_page must be 1 to 1000, got `{n}`"))
                        })?,
                };
                let forward = match req.sort.as_deref() {
                    None | Some("") | Some("uploaded_at") => true,
                    Some("-uploaded_at") => false,
                    Some(other) => {
                        return Err(bad(format!(
                            "sort `{other}` is not supported: use uploaded_at or -uploaded_at"
                        )))
                    }
                };
                if let Some(tz) = req.timezone.as_deref() {
                    if !matches!(tz, "" | "UTC" | "utc" | "Z" | "+00:00") {
                        return Err(bad(format!(
                            "timezone `{tz}` is not supported: start and end are read as UTC"
                        )));
                    }
                }
                let bound = |field, v: Option<&str>| {
                    v.filter(|v| !v.is_empty())
                        .map(|v| parse_day_or_time(field, v))
                        .transpose()
                };
                let from = bound("start", req.start.as_deref())?;
                // A day as `end` includes that whole day.
                let to = bound("end", req.end.as_deref())?.map(|t| {
                    match req.end.as_deref().map(|e| e.contains('T')) {
                        Some(false) => t + chrono::Duration::days(1),
                        _ => t,
                    }
                });
                FileQuery {
                    page: PageRequest {
                        after: None,
                        forward,
                        limit,
                    },
                    from,
                    to,
                }
            }
        };
        let page = self.store.list_files(&c.id, query).await?;
        let next_page_token = page.next.map(|after| {
            let mut q = query;
            q.page.after = Some(after);
            FilesCursor { query: q }.encode()
        });
        Ok(FilesPage {
            files: page.items,
            next_page_token,
        })
    }

    pub async fn get_file(
        &self,
        who: &Principal,
        channel: &str,
        file: &str,
    ) -> Result<DatalakeFile> {
        let c = self.channel_for(who, channel).await?;
        Ok(self.store.get_file(&c.id, &self.file_id(file)?).await?)
    }

    pub async fn delete_file(&self, who: &Principal, channel: &str, file: &str) -> Result<FileId> {
        let c = self.channel_for(who, channel).await?;
        let f = self.store.delete_file(&c.id, &self.file_id(file)?).await?;
        // Metadata first: a crash between the two leaves bytes, never a
        // listed file without them.
        let _ = self.blobs.delete(&f.object).await;
        Ok(f.file_id)
    }

    pub async fn set_file_metadata(
        &self,
        who: &Principal,
        channel: &str,
        file: &str,
        metadata: Vec<(String, String)>,
    ) -> Result<DatalakeFile> {
        let c = self.channel_for(who, channel).await?;
        let metadata = self.metadata(&metadata)?;
        Ok(self
            .store
            .set_file_metadata(&c.id, &self.file_id(file)?, &metadata)
            .await?)
    }

    /// The token of a file's pre-signed download URL, and when it expires.
    pub fn file_download_token(&self, f: &DatalakeFile) -> (String, Timestamp) {
        let expires = time::now().timestamp() + self.settings.upload_url_ttl_secs;
        let token = self
            .keys
            .presign("file", &format!("{}/{}", f.channel_id, f.file_id), expires);
        (
            token,
            chrono::DateTime::from_timestamp(expires, 0).unwrap_or_default(),
        )
    }

    /// The file behind a pre-signed download URL, and its bytes.
    pub async fn download_file(&self, token: &str) -> Result<(DatalakeFile, Vec<u8>)> {
        let subject = self
            .keys
            .verify_presigned("file", token, time::now().timestamp())
            .map_err(ControlError::Forbidden)?;
        let (channel, file) =
            parse_datalake_path(&subject).map_err(|e| ControlError::Forbidden(e.to_string()))?;
        let f = self.store.get_file(&channel, &file).await?;
        let bytes = self.blobs.get(&f.object).await?;
        Ok((f, bytes))
    }

    // ---- triggers -------------------------------------------------------

    fn trigger_id(&self, tri: &str) -> Result<TriggerId> {
        TriggerId::parse(tri).map_err(|e| ControlError::NotFound(e.to_string()))
    }

    /// A channel a trigger names in its body: unknown → 400 naming it.
    async fn trigger_channel(
        &self,
        org: &OrganizationId,
        field: &str,
        id: &str,
    ) -> Result<ChannelId> {
        let missing = || {
            bad(format!(
                "{field}: channel `{id}` not found in organization {org}"
            ))
        };
        let id = ChannelId::parse(id).map_err(|_| missing())?;
        let c = match self.store.get_channel(&id).await {
            Ok(c) if &c.organization_id == org => c,
            Ok(_) | Err(StoreError::NotFound(_)) => return Err(missing()),
            Err(e) => return Err(e.into()),
        };
        if c.archived {
            return Err(bad(format!("{field}: channel {id} is archived")));
        }
        Ok(c.id)
    }

    pub async fn create_trigger(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        req: NewTriggerRequest,
    ) -> Result<TriggerView> {
        let (d, ver) = self
            .deployment_and_version(who, org, dep, req.version_id.as_deref())
            .await?;
        match req.input_service_name.as_deref() {
            Some(SERVICE) => {}
            None => return Err(bad("\"input_service_name\" is necessary: \"datalake\"")),
            Some(other) => {
                return Err(bad(format!(
                    "input_service_name must be \"datalake\", got \"{other}\""
                )))
            }
        }
        let input = req
            .input_service_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| bad("\"input_service_id\" is necessary: the channel id"))?;
        let input = self
            .trigger_channel(&d.organization_id, "input_service_id", &input)
            .await?;
        let output = match (req.output_service_name, req.output_service_id) {
            (None, None) => None,
            (Some(name), Some(id)) => {
                if name != SERVICE {
                    return Err(bad(format!(
                        "output_service_name must be \"datalake\", got \"{name}\""
                    )));
                }
                Some(
                    self.trigger_channel(&d.organization_id, "output_service_id", &id)
                        .await?,
                )
            }
            (Some(_), None) => {
                return Err(bad(
                    "output_service_id is necessary when output_service_name is given",
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "output_service_name is necessary when output_service_id is given",
                ))
            }
        };
        let options = super::RunOptions::check(req.retry_count, req.distribution, req.models)?;
        let now = time::now();
        let trigger = Trigger {
            id: TriggerId::generate(),
            organization_id: d.organization_id.clone(),
            deployment_id: d.id.clone(),
            version_id: ver.id.clone(),
            input_channel_id: input,
            output_channel_id: output,
            models: options.models,
            environment: environment("environment", req.environment)?,
            retry_count: options.retry_count,
            distribution: options.distribution,
            created_at: now,
            modified_at: now,
            deleted_at: None,
        };
        self.store.create_trigger(&trigger).await?;
        Ok(TriggerView {
            trigger,
            model_version: Some(ver.version),
        })
    }

    async fn trigger_view(&self, trigger: Trigger) -> Result<TriggerView> {
        let model_version = match self
            .store
            .get_version(
                &trigger.organization_id,
                &trigger.deployment_id,
                &trigger.version_id,
            )
            .await
        {
            Ok(v) => Some(v.version),
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(TriggerView {
            trigger,
            model_version,
        })
    }

    async fn find_trigger(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        tri: &str,
    ) -> Result<Trigger> {
        let d = self.get_deployment(who, org, dep).await?;
        Ok(self
            .store
            .get_trigger(&d.organization_id, &d.id, &self.trigger_id(tri)?)
            .await?)
    }

    pub async fn get_trigger(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        tri: &str,
    ) -> Result<TriggerView> {
        let t = self.find_trigger(who, org, dep, tri).await?;
        self.trigger_view(t).await
    }

    pub async fn list_triggers(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
    ) -> Result<Vec<TriggerView>> {
        let d = self.get_deployment(who, org, dep).await?;
        let mut out = Vec::new();
        for t in self.store.list_triggers(&d.organization_id, &d.id).await? {
            out.push(self.trigger_view(t).await?);
        }
        Ok(out)
    }

    /// Deletes a trigger: from this moment it starts no run; files that
    /// arrived but were not yet dispatched are SKIPPED; its runs stay.
    pub async fn delete_trigger(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        tri: &str,
    ) -> Result<TriggerId> {
        let t = self.find_trigger(who, org, dep, tri).await?;
        self.store
            .delete_trigger(&t.organization_id, &t.deployment_id, &t.id, time::now())
            .await?;
        Ok(t.id)
    }

    /// A page of a trigger's runs, like a deployment's.
    pub async fn trigger_runs(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        tri: &str,
        forward: bool,
        next_page_token: Option<&str>,
    ) -> Result<RunsPage> {
        let t = self.find_trigger(who, org, dep, tri).await?;
        self.list_runs(who, org, dep, Some(&t.id), forward, next_page_token)
            .await
    }

    /// A page of a trigger's events: which file arrived when, and which run
    /// it started (or why none).
    pub async fn trigger_events(
        &self,
        who: &Principal,
        org: &str,
        dep: &str,
        tri: &str,
        forward: bool,
        next_page_token: Option<&str>,
    ) -> Result<EventsPage> {
        let t = self.find_trigger(who, org, dep, tri).await?;
        self.events_of(&t.id, forward, next_page_token).await
    }

    /// A trigger's events, deleted trigger or not (the CLI's view).
    pub async fn events_of(
        &self,
        trigger: &TriggerId,
        forward: bool,
        next_page_token: Option<&str>,
    ) -> Result<EventsPage> {
        // An unknown trigger is "not found", not an empty ledger.
        self.store.find_trigger(trigger).await?;
        let after = next_page_token
            .filter(|t| !t.is_empty())
            .map(|t| parse_token("next_page_token", 'e', t))
            .transpose()?;
        let page = self
            .store
            .list_trigger_events(
                trigger,
                PageRequest {
                    after,
                    forward,
                    limit: self.settings.page_size,
                },
            )
            .await?;
        Ok(EventsPage {
            events: page.items,
            next_page_token: page.next.map(|n| format!("e{n}")),
        })
    }
}

/// Why a run's `input_data` cannot be read.
pub(crate) enum InputError {
    /// It is not in the documented shape.
    Invalid(String),
    /// It names a file that is not there (or not the organization's).
    Missing(String),
    /// The store did not answer.
    Store(sluice_store::StoreError),
}

/// The datalake files a run's `input_data` names (`"$datalake:1":
/// "<channel>/<file>"`), each with the key that named it; a file of another
/// organization is not found, like a missing one.
pub(crate) async fn datalake_inputs(
    store: &dyn MetadataStore,
    org: &sluice_domain::OrganizationId,
    input_data: &Value,
) -> Result<Vec<(String, DatalakeFile)>, InputError> {
    let mut files = Vec::new();
    let Some(fields) = input_data.as_object() else {
        return Ok(files);
    };
    for (key, value) in fields {
        if !key.starts_with("$datalake:") {
            continue;
        }
        let Value::String(path) = value else {
            return Err(InputError::Invalid(format!(
                "input_data.{key} must be \"<channel>/<file>\""
            )));
        };
        let (channel, file) = parse_datalake_path(path)
            .map_err(|e| InputError::Invalid(format!("input_data.{key}: {e}")))?;
        let missing = || InputError::Missing(format!("input_data.{key}: file {path} not found"));
        match store.get_file(&channel, &file).await {
            Ok(f) if &f.organization_id == org => files.push((key.clone(), f)),
            Ok(_) | Err(sluice_store::StoreError::NotFound(_)) => return Err(missing()),
            Err(e) => return Err(InputError::Store(e)),
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_escapes_decode() {
        assert_eq!(percent_decode("m", "a%20b%E3%81%82").unwrap(), "a bあ");
        assert!(percent_decode("m", "a%2").is_err());
        assert!(percent_decode("m", "%ff").is_err());
    }

    #[test]
    fn file_cursors_round_trip_and_refuse_forgeries() {
        let c = FilesCursor {
            query: FileQuery {
                page: PageRequest {
                    after: Some(41),
                    forward: false,
                    limit: 7,
                },
                from: chrono::DateTime::from_timestamp_micros(1_600_000_000_000_000),
                to: None,
            },
        };
        assert_eq!(FilesCursor::decode(&c.encode()), Some(c));
        for bad in ["", "x1.2..", "a1.0..", "a1.2.", "a1.2...", "ax.2.."] {
            assert_eq!(FilesCursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_bounds_read_days_and_times() {
        let d = parse_day_or_time("start", "20180102").unwrap();
        assert_eq!(d.to_rfc3339(), "2018-01-02T00:00:00+00:00");
        parse_day_or_time("start", "2018-01-02").unwrap();
        parse_day_or_time("start", "2018-01-02T03:04:05").unwrap();
        assert!(parse_day_or_time("start", "yesterday").is_err());
    }
}
