//! HTTP API sources: dlt's `rest_api` configuration (`client`,
//! `resource_defaults`, `resources`) with sluice's own keys beside it
//! (`name`, `destination`, `dataset`), read strictly — every key sluice
//! does not support is refused by name, with its path — and the API runs
//! made of them: their statuses as the API Run page names them, their task
//! kinds, and the page's search rules.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

pub use crate::action::Problem;
use crate::RunStatus;

/// A source's configuration, checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiSourceConfig {
    pub name: String,
    /// A warehouse declared with `sluice warehouse add` (None: the
    /// embedded one).
    pub destination: Option<String>,
    /// The schema the tables land in (default: the source's name).
    pub dataset: String,
    pub client: Client,
    pub resources: Vec<Resource>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Client {
    pub base_url: String,
    pub headers: Vec<(String, String)>,
    pub auth: Option<Auth>,
    pub paginator: Paginator,
    /// Requests per second at most (sluice's own; None: no cap).
    pub rate_limit: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Auth {
    Bearer {
        token: String,
    },
    ApiKey {
        name: String,
        api_key: String,
        location: KeyLocation,
    },
    HttpBasic {
        username: String,
        password: String,
    },
    Oauth2ClientCredentials {
        access_token_url: String,
        client_id: String,
        client_secret: String,
        access_token_request_data: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyLocation {
    Header,
    Query,
}

/// How the next page is found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Paginator {
    /// dlt's default: a `Link: <…>; rel="next"` header, else a `next` URL
    /// in the body, else one page.
    Auto,
    SinglePage,
    JsonLink {
        next_url_path: String,
    },
    HeaderLink {
        links_next_key: String,
    },
    Cursor {
        cursor_path: String,
        cursor_param: String,
    },
    PageNumber {
        page_param: String,
        base_page: i64,
        total_path: Option<String>,
        maximum_page: Option<i64>,
    },
    Offset {
        limit: i64,
        offset: i64,
        offset_param: String,
        limit_param: String,
        total_path: Option<String>,
        maximum_offset: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteDisposition {
    Append,
    Replace,
    Merge,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resource {
    pub name: String,
    pub endpoint: Endpoint,
    pub primary_key: Vec<String>,
    pub write_disposition: WriteDisposition,
    /// The parent's fields copied into each record (`_<parent>_<field>`).
    pub include_from_parent: Vec<String>,
}

impl Resource {
    /// The resource whose records this one's requests are made for, and
    /// the parameter and field that resolve them.
    pub fn parent(&self) -> Option<(&str, &str, &str)> {
        self.endpoint.params.iter().find_map(|(name, p)| match p {
            Param::Resolve { resource, field } => {
                Some((name.as_str(), resource.as_str(), field.as_str()))
            }
            Param::Value(_) => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    pub path: String,
    pub method: String,
    pub params: Vec<(String, Param)>,
    pub json: Option<Value>,
    pub data_selector: Option<String>,
    /// None: the client's.
    pub paginator: Option<Paginator>,
    pub incremental: Option<Incremental>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Value(String),
    Resolve { resource: String, field: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incremental {
    pub cursor_path: String,
    pub start_param: String,
    pub initial_value: Option<String>,
    pub end_param: Option<String>,
    pub end_value: Option<String>,
}

/// Reads a source file (JSON) strictly: every problem at once, or the
/// checked configuration.
pub fn parse(doc: &Value) -> Result<ApiSourceConfig, Vec<Problem>> {
    let mut r = Reader::default();
    let cfg = r.config(doc);
    match (cfg, r.problems.is_empty()) {
        (Some(c), true) => Ok(c),
        _ => Err(r.problems),
    }
}

/// Replaces the secrets of a source file (auth's tokens, keys, passwords
/// and client secrets; every header's value) by `********`: what is shown.
pub fn hide_secrets(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(client) = doc.get_mut("client").and_then(Value::as_object_mut) {
        if let Some(auth) = client.get_mut("auth").and_then(Value::as_object_mut) {
            for key in ["token", "api_key", "password", "client_secret"] {
                if let Some(v) = auth.get_mut(key) {
                    *v = Value::String("********".into());
                }
            }
        }
        if let Some(headers) = client.get_mut("headers").and_then(Value::as_object_mut) {
            for v in headers.values_mut() {
                *v = Value::String("********".into());
            }
        }
    }
    doc
}

/// `defaults` under `over`: objects merged key by key, anything else
/// taken from `over` (dlt's `resource_defaults`).
fn merged(defaults: &Value, over: &Value) -> Value {
    match (defaults, over) {
        (Value::Object(d), Value::Object(o)) => {
            let mut out = d.clone();
            for (k, v) in o {
                let m = match d.get(k) {
                    Some(dv) => merged(dv, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), m);
            }
            Value::Object(out)
        }
        _ => over.clone(),
    }
}

/// The value at a dotted path (`data`, `meta.next`, `$.links.next`,
/// `items[0].id`).
pub fn select<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.strip_prefix("$.").unwrap_or(path);
    if path.is_empty() || path == "$" {
        return Some(value);
    }
    let mut at = value;
    for part in path.split('.') {
        let (key, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for idx in indexes.split('[').filter(|s| !s.is_empty()) {
            let idx = idx.trim_end_matches(']');
            if idx == "*" {
                continue;
            }
            at = at.get(idx.parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

/// A JSON value as a query parameter's text.
pub fn param_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Default)]
struct Reader {
    problems: Vec<Problem>,
}

const TOP: &[&str] = &[
    "name",
    "destination",
    "dataset",
    "client",
    "resource_defaults",
    "resources",
];
const CLIENT: &[&str] = &["base_url", "headers", "auth", "paginator", "rate_limit"];
const RESOURCE: &[&str] = &[
    "name",
    "endpoint",
    "primary_key",
    "write_disposition",
    "include_from_parent",
];
const ENDPOINT: &[&str] = &[
    "path",
    "method",
    "params",
    "json",
    "data_selector",
    "paginator",
    "incremental",
];
const INCREMENTAL: &[&str] = &[
    "cursor_path",
    "start_param",
    "initial_value",
    "end_param",
    "end_value",
];

impl Reader {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// The object at `path`, its unknown keys refused by name.
    fn object<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
        known: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Some(o) = v.as_object() else {
            self.problem(path, "expected an object");
            return None;
        };
        for k in o.keys() {
            if !known.contains(&k.as_str()) {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                self.problem(
                    &at,
                    format!(
                        "`{k}` is not supported by sluice here (supported: {})",
                        known.join(", ")
                    ),
                );
            }
        }
        Some(o)
    }

    fn text(
        &mut self,
        o: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<String> {
        let at = join(path, key);
        match o.get(key) {
            Some(Value::String(s)) if !s.is_empty() && !s.contains('\0') => Some(s.clone()),
            Some(Value::String(_)) => {
                self.problem(&at, "expected a non-empty text without NUL characters");
                None
            }
            Some(Value::Null) | None => {
                if required {
                    self.problem(&at, "is required");
                }
                None
            }
            Some(_) => {
                self.problem(&at, "expected a text");
                None
            }
        }
    }

    fn int(&mut self, o: &Map<String, Value>, key: &str, path: &str) -> Option<i64> {
        match o.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(n) => Some(n),
                None => {
                    self.problem(&join(path, key), "expected a whole number");
                    None
                }
            },
        }
    }

    fn config(&mut self, doc: &Value) -> Option<ApiSourceConfig> {
        let o = self.object(doc, "", TOP)?;
        let name = self.text(o, "name", "", true);
        if let Some(n) = &name {
            if !valid_name(n) {
                self.problem(
                    "name",
                    "expected letters, digits, `_` or `-` (at most 100), starting with a letter",
                );
            }
        }
        let destination = self.text(o, "destination", "", false);
        let dataset = self.text(o, "dataset", "", false);
        if let Some(d) = &dataset {
            if !valid_identifier(d) {
                self.problem("dataset", "expected a schema name: letters, digits and `_`, starting with a letter (at most 63)");
            }
        }
        let client = match o.get("client") {
            Some(c) => self.client(c),
            None => {
                self.problem("client", "is required");
                None
            }
        };
        let defaults = o
            .get("resource_defaults")
            .cloned()
            .unwrap_or(Value::Object(Map::new()));
        if !defaults.is_object() {
            self.problem("resource_defaults", "expected an object");
        }
        let mut resources = Vec::new();
        match o.get("resources") {
            Some(Value::Array(list)) if !list.is_empty() => {
                for (i, r) in list.iter().enumerate() {
                    let path = format!("resources[{i}]");
                    // A name alone is a resource whose path is its name.
                    let r = match r {
                        Value::String(s) => serde_json::json!({"name": s, "endpoint": {"path": s}}),
                        other => other.clone(),
                    };
                    let r = merged(&defaults, &r);
                    if let Some(res) = self.resource(&r, &path) {
                        resources.push(res);
                    }
                }
            }
            _ => self.problem("resources", "expected a list of at least one resource"),
        }
        self.relations(&resources);
        let name = name?;
        Some(ApiSourceConfig {
            dataset: dataset.unwrap_or_else(|| name.replace('-', "_").to_lowercase()),
            name,
            destination,
            client: client?,
            resources,
        })
    }

    fn client(&mut self, v: &Value) -> Option<Client> {
        let o = self.object(v, "client", CLIENT)?;
        let base_url = self.text(o, "base_url", "client", true);
        if let Some(u) = &base_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.problem("client.base_url", "expected an http:// or https:// URL");
            }
        }
        let mut headers = Vec::new();
        match o.get("headers") {
            None => {}
            Some(Value::Object(h)) => {
                for (k, v) in h {
                    match v.as_str() {
                        Some(s) => headers.push((k.clone(), s.to_owned())),
                        None => self.problem(&format!("client.headers.{k}"), "expected a text"),
                    }
                }
            }
            Some(_) => self.problem("client.headers", "expected an object of texts"),
        }
        let auth = o.get("auth").and_then(|a| self.auth(a));
        let paginator = match o.get("paginator") {
            Some(p) => self.paginator(p, "client.paginator"),
            None => Some(Paginator::Auto),
        };
        let rate_limit = match o.get("rate_limit") {
            None => None,
            Some(v) => match v.as_f64().filter(|r| *r > 0.0) {
                Some(r) => Some(r),
                None => {
                    self.problem("client.rate_limit", "expected requests per second, above 0");
                    None
                }
            },
        };
        Some(Client {
            base_url: base_url?.trim_end_matches('/').to_owned(),
            headers,
            auth,
            paginator: paginator?,
            rate_limit,
        })
    }

    fn auth(&mut self, v: &Value) -> Option<Auth> {
        let path = "client.auth";
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let known: &[&str] = match kind {
            "bearer" => &["type", "token"],
            "api_key" => &["type", "name", "api_key", "location"],
            "http_basic" => &["type", "username", "password"],
            "oauth2_client_credentials" => &[
                "type",
                "access_token_url",
                "client_id",
                "client_secret",
                "access_token_request_data",
            ],
            _ => {
                self.problem(
                    "client.auth.type",
                    format!("`{kind}` is not an auth sluice supports (bearer, api_key, http_basic, oauth2_client_credentials)"),
                );
                return None;
            }
        };
        let o = self.object(v, path, known)?;
        Some(match kind {
            "bearer" => Auth::Bearer {
                token: self.text(o, "token", path, true)?,
            },
            "api_key" => {
                let location = match o.get("location").and_then(Value::as_str) {
                    None | Some("header") => KeyLocation::Header,
                    Some("query") => KeyLocation::Query,
                    Some(other) => {
                        self.problem(
                            "client.auth.location",
                            format!("`{other}`: expected header or query"),
                        );
                        KeyLocation::Header
                    }
                };
                Auth::ApiKey {
                    name: self
                        .text(o, "name", path, false)
                        .unwrap_or_else(|| "Authorization".into()),
                    api_key: self.text(o, "api_key", path, true)?,
                    location,
                }
            }
            "http_basic" => Auth::HttpBasic {
                username: self.text(o, "username", path, true)?,
                password: self.text(o, "password", path, false).unwrap_or_default(),
            },
            _ => {
                let mut data = Vec::new();
                if let Some(d) = o
                    .get("access_token_request_data")
                    .and_then(Value::as_object)
                {
                    data = d.iter().map(|(k, v)| (k.clone(), param_text(v))).collect();
                }
                let url = self.text(o, "access_token_url", path, true);
                let id = self.text(o, "client_id", path, true);
                let secret = self.text(o, "client_secret", path, true);
                Auth::Oauth2ClientCredentials {
                    access_token_url: url?,
                    client_id: id?,
                    client_secret: secret?,
                    access_token_request_data: data,
                }
            }
        })
    }

    fn paginator(&mut self, v: &Value, path: &str) -> Option<Paginator> {
        // A name alone: the paginator with its defaults.
        let v = match v {
            Value::String(s) => serde_json::json!({ "type": s }),
            other => other.clone(),
        };
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let known: &[&str] = match kind.as_str() {
            "auto" | "single_page" => &["type"],
            "json_link" | "json_response" => &["type", "next_url_path"],
            "header_link" => &["type", "links_next_key"],
            "cursor" => &["type", "cursor_path", "cursor_param"],
            "page_number" => &[
                "type",
                "page_param",
                "base_page",
                "total_path",
                "maximum_page",
            ],
            "offset" => &[
                "type",
                "limit",
                "offset",
                "offset_param",
                "limit_param",
                "total_path",
                "maximum_offset",
            ],
            _ => {
                self.problem(
                    &format!("{path}.type"),
                    format!("`{kind}` is not a paginator sluice supports (json_link, header_link, cursor, page_number, offset, single_page, auto)"),
                );
                return None;
            }
        };
        let o = self.object(&v, path, known)?;
        let text_or = |r: &mut Reader, key: &str, default: &str| {
            r.text(o, key, path, false)
                .unwrap_or_else(|| default.to_owned())
        };
        Some(match kind.as_str() {
            "auto" => Paginator::Auto,
            "single_page" => Paginator::SinglePage,
            "json_link" | "json_response" => Paginator::JsonLink {
                next_url_path: text_or(self, "next_url_path", "next"),
            },
            "header_link" => Paginator::HeaderLink {
                links_next_key: text_or(self, "links_next_key", "next"),
            },
            "cursor" => Paginator::Cursor {
                cursor_path: text_or(self, "cursor_path", "cursors.next"),
                cursor_param: text_or(self, "cursor_param", "cursor"),
            },
            "page_number" => {
                let total_path = self.text(o, "total_path", path, false);
                let maximum_page = self.int(o, "maximum_page", path);
                Paginator::PageNumber {
                    page_param: text_or(self, "page_param", "page"),
                    base_page: self.int(o, "base_page", path).unwrap_or(0),
                    total_path,
                    maximum_page,
                }
            }
            _ => {
                let limit = self.int(o, "limit", path);
                if limit.is_none_or(|l| l <= 0) {
                    self.problem(
                        &format!("{path}.limit"),
                        "an offset paginator needs a limit above 0",
                    );
                }
                let total_path = self.text(o, "total_path", path, false);
                let maximum_offset = self.int(o, "maximum_offset", path);
                Paginator::Offset {
                    limit: limit.unwrap_or(1),
                    offset: self.int(o, "offset", path).unwrap_or(0),
                    offset_param: text_or(self, "offset_param", "offset"),
                    limit_param: text_or(self, "limit_param", "limit"),
                    total_path,
                    maximum_offset,
                }
            }
        })
    }

    fn resource(&mut self, v: &Value, path: &str) -> Option<Resource> {
        let o = self.object(v, path, RESOURCE)?;
        let name = self.text(o, "name", path, true);
        if let Some(n) = &name {
            if !valid_identifier(n) {
                self.problem(&join(path, "name"), "expected a table name: letters, digits and `_`, starting with a letter (at most 63)");
            }
        }
        let endpoint = match o.get("endpoint") {
            Some(Value::String(p)) => Some(Endpoint {
                path: p.clone(),
                method: "GET".into(),
                params: Vec::new(),
                json: None,
                data_selector: None,
                paginator: None,
                incremental: None,
            }),
            Some(e) => self.endpoint(e, &join(path, "endpoint")),
            None => name.as_ref().map(|n| Endpoint {
                path: n.clone(),
                method: "GET".into(),
                params: Vec::new(),
                json: None,
                data_selector: None,
                paginator: None,
                incremental: None,
            }),
        };
        let primary_key = match o.get("primary_key") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                self.problem(
                    &join(path, "primary_key"),
                    "expected a field name or a list of them",
                );
                Vec::new()
            }
        };
        let write_disposition = match o.get("write_disposition") {
            None => WriteDisposition::Append,
            Some(v) => {
                let d = match v {
                    Value::String(s) => Some(s.as_str()),
                    Value::Object(m) => m.get("disposition").and_then(Value::as_str),
                    _ => None,
                };
                match d {
                    Some("append") => WriteDisposition::Append,
                    Some("replace") => WriteDisposition::Replace,
                    Some("merge") => WriteDisposition::Merge,
                    _ => {
                        self.problem(
                            &join(path, "write_disposition"),
                            "expected append, replace or merge",
                        );
                        WriteDisposition::Append
                    }
                }
            }
        };
        if write_disposition == WriteDisposition::Merge && primary_key.is_empty() {
            self.problem(&join(path, "primary_key"), "a merge needs a primary_key");
        }
        let include_from_parent = match o.get("include_from_parent") {
            None => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                self.problem(
                    &join(path, "include_from_parent"),
                    "expected a list of field names",
                );
                Vec::new()
            }
        };
        Some(Resource {
            name: name?,
            endpoint: endpoint?,
            primary_key,
            write_disposition,
            include_from_parent,
        })
    }

    fn endpoint(&mut self, v: &Value, path: &str) -> Option<Endpoint> {
        let o = self.object(v, path, ENDPOINT)?;
        let ep_path = self.text(o, "path", path, true);
        let method = match o.get("method").and_then(Value::as_str) {
            None => "GET".to_owned(),
            Some(m) if m.eq_ignore_ascii_case("get") || m.eq_ignore_ascii_case("post") => {
                m.to_uppercase()
            }
            Some(m) => {
                self.problem(
                    &join(path, "method"),
                    format!("`{m}`: expected GET or POST"),
                );
                "GET".to_owned()
            }
        };
        let mut params = Vec::new();
        match o.get("params") {
            None => {}
            Some(Value::Object(p)) => {
                for (k, v) in p {
                    let at = format!("{path}.params.{k}");
                    match v {
                        Value::Object(_) => {
                            let Some(r) = self.object(v, &at, &["type", "resource", "field"])
                            else {
                                continue;
                            };
                            let _ = r;
                            if v.get("type").and_then(Value::as_str) != Some("resolve") {
                                self.problem(
                                    &format!("{at}.type"),
                                    "only `resolve` params are supported",
                                );
                                continue;
                            }
                            let resource = self.text(r, "resource", &at, true);
                            let field = self.text(r, "field", &at, true);
                            if let (Some(resource), Some(field)) = (resource, field) {
                                params.push((k.clone(), Param::Resolve { resource, field }));
                            }
                        }
                        Value::Array(_) => {
                            self.problem(&at, "expected a text, number or a resolve object")
                        }
                        other => params.push((k.clone(), Param::Value(param_text(other)))),
                    }
                }
            }
            Some(_) => self.problem(&join(path, "params"), "expected an object"),
        }
        let resolved = params
            .iter()
            .filter(|(_, p)| matches!(p, Param::Resolve { .. }))
            .count();
        if resolved > 1 {
            self.problem(
                &join(path, "params"),
                "at most one resolve param per resource",
            );
        }
        let paginator = match o.get("paginator") {
            Some(p) => self.paginator(p, &join(path, "paginator")),
            None => None,
        };
        let incremental = match o.get("incremental") {
            None => None,
            Some(v) => {
                let at = join(path, "incremental");
                let i = self.object(v, &at, INCREMENTAL);
                i.and_then(|i| {
                    let cursor_path = self.text(i, "cursor_path", &at, true);
                    let start_param = self.text(i, "start_param", &at, true);
                    let text = |r: &mut Reader, k: &str| match i.get(k) {
                        None | Some(Value::Null) => None,
                        Some(Value::Array(_) | Value::Object(_)) => {
                            r.problem(&join(&at, k), "expected a text or a number");
                            None
                        }
                        Some(v) => Some(param_text(v)),
                    };
                    let initial_value = text(self, "initial_value");
                    let end_value = text(self, "end_value");
                    let end_param = self.text(i, "end_param", &at, false);
                    Some(Incremental {
                        cursor_path: cursor_path?,
                        start_param: start_param?,
                        initial_value,
                        end_param,
                        end_value,
                    })
                })
            }
        };
        let data_selector = self.text(o, "data_selector", path, false);
        Some(Endpoint {
            path: ep_path?,
            method,
            params,
            json: o.get("json").cloned(),
            data_selector,
            paginator,
            incremental,
        })
    }

    /// Every parent exists, is not the resource itself, and no chain of
    /// parents loops; a resolved param appears in the path as `{name}`.
    fn relations(&mut self, resources: &[Resource]) {
        let by_name: BTreeMap<&str, &Resource> =
            resources.iter().map(|r| (r.name.as_str(), r)).collect();
        if by_name.len() != resources.len() {
            self.problem("resources", "two resources have the same name");
        }
        for (i, r) in resources.iter().enumerate() {
            let Some((param, parent, _)) = r.parent() else {
                continue;
            };
            let at = format!("resources[{i}].endpoint.params.{param}");
            if !r.endpoint.path.contains(&format!("{{{param}}}")) {
                self.problem(
                    &format!("resources[{i}].endpoint.path"),
                    format!("expected `{{{param}}}` in the path for the resolved param"),
                );
            }
            if !by_name.contains_key(parent) || parent == r.name {
                self.problem(
                    &at,
                    format!("`{parent}` is not another resource of this source"),
                );
                continue;
            }
            let mut seen = vec![r.name.as_str()];
            let mut up = parent;
            while let Some(p) = by_name.get(up) {
                if seen.contains(&up) {
                    self.problem(&at, "the parents of this resource loop");
                    break;
                }
                seen.push(up);
                match p.parent() {
                    Some((_, next, _)) => up = next,
                    None => break,
                }
            }
        }
        for (i, r) in resources.iter().enumerate() {
            if !r.include_from_parent.is_empty() && r.parent().is_none() {
                self.problem(
                    &format!("resources[{i}].include_from_parent"),
                    "only a resource with a resolve param has a parent",
                );
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn valid_name(s: &str) -> bool {
    s.len() <= 100
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A table or schema name sluice writes without surprises.
pub fn valid_identifier(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The kind of an API run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunType {
    Incremental,
    Destructive,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Incremental => "INCREMENTAL",
            RunType::Destructive => "DESTRUCTIVE",
        }
    }

    pub fn parse(s: &str) -> Option<RunType> {
        match s.to_ascii_uppercase().as_str() {
            "INCREMENTAL" => Some(RunType::Incremental),
            "DESTRUCTIVE" => Some(RunType::Destructive),
            _ => None,
        }
    }
}

/// What the API Run page calls a run's (or a task's) status.
pub fn status_label(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Submitted | RunStatus::Pending | RunStatus::Runnable | RunStatus::Starting => {
            "Waiting to start"
        }
        RunStatus::Running => "Running",
        RunStatus::Succeeded => "Completed",
        RunStatus::Failed => "Failed",
        RunStatus::Canceling => "Canceling …",
        RunStatus::Cancelled => "Cancelled",
        RunStatus::Rejected => "Rejected - previous load still running",
    }
}

/// The columns a source's runs list sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSort {
    Id,
    Type,
    Status,
    Created,
    Started,
    Finished,
    Duration,
    Records,
    Tables,
    Messages,
}

impl RunSort {
    pub const NAMES: [&'static str; 10] = [
        "id", "type", "status", "created", "started", "finished", "duration", "records", "tables",
        "messages",
    ];

    pub fn parse(s: &str) -> Option<RunSort> {
        use RunSort::*;
        let all = [
            Id, Type, Status, Created, Started, Finished, Duration, Records, Tables, Messages,
        ];
        let i = Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s.trim()))?;
        Some(all[i])
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// The message a run rejected for its source's active run carries.
pub const REJECTED_MESSAGE: &str = "Rejected - previous load still running";

/// The tasks of an API run, in the order they run.
pub const EXTRACTION: &str = "extraction";
pub const METADATA_CONSOLIDATION: &str = "metadata_consolidation";
pub const TABLE_CONSOLIDATION: &str = "table_consolidation";
pub const INGESTION: &str = "ingestion";
pub const COMPLETE_INGESTION: &str = "complete_ingestion";

/// What the search box of a run's page matches a task on.
pub struct Searched<'a> {
    pub name: &'a str,
    pub status: &'a str,
    pub table: Option<&'a str>,
    pub messages: &'a [String],
}

/// Whether `text` finds `task`: an acronym of the task's name (an
/// underscore or a space starts a word: `mc` finds
/// `metadata_consolidation`), the name containing it, the status starting
/// with it (`Waiting` finds `Waiting to start`), the table's name or a
/// message containing it — ignoring case. An empty text finds every task.
pub fn search_matches(text: &str, task: &Searched) -> bool {
    let q = text.trim().to_lowercase();
    if q.is_empty() {
        return true;
    }
    let name = task.name.to_lowercase();
    let acronym: String = name
        .split(['_', ' '])
        .filter_map(|w| w.chars().next())
        .collect();
    acronym.starts_with(&q)
        || name.contains(&q)
        || task.status.to_lowercase().starts_with(&q)
        || task.table.is_some_and(|t| t.to_lowercase().contains(&q))
        || task.messages.iter().any(|m| m.to_lowercase().contains(&q))
}

/// The p-th percentile (0–100) of `values`, nearest rank; None when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(doc: Value) -> ApiSourceConfig {
        parse(&doc).unwrap_or_else(|p| panic!("{p:?}"))
    }

    fn problems(doc: Value) -> Vec<String> {
        parse(&doc)
            .expect_err("refused")
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_dlt_config_reads_with_its_defaults_merged() {
        let c = ok(json!({
            "name": "shop",
            "client": {"base_url": "http://127.0.0.1:1/api/", "auth": {"type": "bearer", "token": "t"},
                       "paginator": {"type": "json_link", "next_url_path": "paging.next"}},
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge",
                                  "endpoint": {"params": {"per_page": 100}}},
            "resources": [
                "orders",
                {"name": "customers", "endpoint": {"path": "customers", "params": {"since": "2024"},
                 "incremental": {"cursor_path": "updated_at", "start_param": "since", "initial_value": "2020-01-01"}}},
                {"name": "items", "endpoint": {"path": "orders/{order_id}/items",
                 "params": {"order_id": {"type": "resolve", "resource": "orders", "field": "id"}}},
                 "include_from_parent": ["id"]}
            ]
        }));
        assert_eq!(c.client.base_url, "http://127.0.0.1:1/api");
        assert_eq!(c.dataset, "shop");
        assert_eq!(c.resources.len(), 3);
        let orders = &c.resources[0];
        assert_eq!(orders.endpoint.path, "orders");
        assert_eq!(orders.primary_key, vec!["id"]);
        assert_eq!(orders.write_disposition, WriteDisposition::Merge);
        assert_eq!(
            orders.endpoint.params,
            vec![("per_page".into(), Param::Value("100".into()))]
        );
        let customers = &c.resources[1];
        assert_eq!(
            customers.endpoint.params.len(),
            2,
            "defaults and own params merged"
        );
        assert_eq!(
            customers
                .endpoint
                .incremental
                .as_ref()
                .unwrap()
                .initial_value
                .as_deref(),
            Some("2020-01-01")
        );
        assert_eq!(c.resources[2].parent(), Some(("order_id", "orders", "id")));
    }

    #[test]
    fn what_sluice_does_not_support_is_refused_by_name_with_its_path() {
        let p = problems(json!({
            "name": "x",
            "client": {"base_url": "ftp://h", "auth": {"type": "oauth2_implicit"}, "session": {}},
            "resources": [
                {"name": "a", "endpoint": {"path": "a", "paginator": {"type": "json_link", "next": "x"},
                 "response_actions": []}, "processing_steps": []},
                {"name": "b", "endpoint": {"path": "b", "params": {"a_id": {"type": "resolve", "resource": "nope", "field": "id"}}}},
                {"name": "c", "write_disposition": "merge"}
            ]
        }));
        let expect = [
            "client.session: `session` is not supported",
            "client.base_url: expected an http:// or https:// URL",
            "client.auth.type: `oauth2_implicit` is not an auth",
            "resources[0].processing_steps: `processing_steps` is not supported",
            "resources[0].endpoint.response_actions: `response_actions` is not supported",
            "resources[0].endpoint.paginator.next: `next` is not supported",
            "resources[1].endpoint.params.a_id: `nope` is not another resource",
            "resources[1].endpoint.path: expected `{a_id}` in the path",
            "resources[2].primary_key: a merge needs a primary_key",
        ];
        for e in expect {
            assert!(
                p.iter().any(|m| m.starts_with(e)),
                "{e:?} missing from {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn parents_cannot_loop_and_names_are_checked() {
        let p = problems(json!({
            "name": "1bad",
            "dataset": "has space",
            "client": {"base_url": "http://h"},
            "resources": [
                {"name": "a", "endpoint": {"path": "a/{b}", "params": {"b": {"type": "resolve", "resource": "b", "field": "id"}}}},
                {"name": "b", "endpoint": {"path": "b/{a}", "params": {"a": {"type": "resolve", "resource": "a", "field": "id"}}}},
                {"name": "bad-name\u{0}"}
            ]
        }));
        assert!(
            p.iter().any(|m| m.starts_with("name: expected letters")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("dataset: expected a schema name")),
            "{p:#?}"
        );
        assert!(p.iter().any(|m| m.contains("loop")), "{p:#?}");
        assert!(
            p.iter()
                .any(|m| m.starts_with("resources[2].name: expected a non-empty text without NUL")),
            "{p:#?}"
        );
    }

    #[test]
    fn secrets_are_hidden_from_what_is_shown() {
        let doc = json!({"client": {"auth": {"type": "http_basic", "username": "u", "password": "p"},
                                    "headers": {"X-Key": "k"}}});
        let shown = hide_secrets(&doc);
        assert_eq!(shown["client"]["auth"]["username"], "u");
        assert_eq!(shown["client"]["auth"]["password"], "********");
        assert_eq!(shown["client"]["headers"]["X-Key"], "********");
    }

    #[test]
    fn paths_select_nested_values() {
        let v = json!({"meta": {"next": "u"}, "items": [{"id": 7}]});
        assert_eq!(select(&v, "meta.next"), Some(&json!("u")));
        assert_eq!(select(&v, "$.items[0].id"), Some(&json!(7)));
        assert_eq!(select(&v, "missing.path"), None);
    }

    fn task<'a>(
        name: &'a str,
        status: &'a str,
        table: Option<&'a str>,
        messages: &'a [String],
    ) -> Searched<'a> {
        Searched {
            name,
            status,
            table,
            messages,
        }
    }

    #[test]
    fn search_matches_as_the_run_page_lists() {
        let none: [String; 0] = [];
        let msgs = ["HTTP 429 from /surveys: waited 2 s".to_owned()];
        let mc = task(
            "metadata_consolidation",
            "Completed",
            Some("surveys"),
            &none,
        );
        let ci = task("complete ingestion", "Waiting to start", None, &none);
        let ex = task("Surveys", "Running", Some("surveys__questions"), &msgs);
        // Acronym: an underscore or a space starts a word.
        assert!(search_matches("mc", &mc));
        assert!(search_matches("MC", &mc));
        assert!(search_matches("ci", &ci));
        assert!(!search_matches("mc", &ci));
        // Name contains.
        assert!(search_matches("consol", &mc));
        assert!(!search_matches("consol", &ex));
        // Status starts with (not contains).
        assert!(search_matches("waiting", &ci));
        assert!(!search_matches("to start", &ci));
        // Table contains.
        assert!(search_matches("questions", &ex));
        assert!(!search_matches("questions", &ci));
        // Message contains.
        assert!(search_matches("429", &ex));
        assert!(!search_matches("429", &mc));
        assert!(search_matches("", &mc));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 95.0), Some(5.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}

/// A source as stored: its file sealed (it holds secrets) and shown with
/// them hidden.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSource {
    pub organization_id: crate::OrganizationId,
    pub name: String,
    pub config_sealed: String,
    pub config_shown: Value,
    pub destination: Option<String>,
    pub dataset: String,
    pub created_at: crate::time::Timestamp,
    pub modified_at: crate::time::Timestamp,
}

/// A run of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRun {
    pub seq: i64,
    /// The run's number, as text (`31548`).
    pub id: String,
    pub organization_id: crate::OrganizationId,
    pub source: String,
    pub run_type: RunType,
    pub status: RunStatus,
    /// Why it was rejected, or how it ended.
    pub error: Option<String>,
    /// The run this one retries.
    pub retry_of: Option<String>,
    pub records: i64,
    pub tables: i64,
    pub attempt: i64,
    pub lease_token: i64,
    pub created_at: crate::time::Timestamp,
    pub started_at: Option<crate::time::Timestamp>,
    pub finished_at: Option<crate::time::Timestamp>,
}

/// A task of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiTask {
    pub run_id: String,
    pub position: i64,
    pub name: String,
    /// extraction, metadata_consolidation, table_consolidation, ingestion
    /// or complete_ingestion.
    pub kind: String,
    pub table: Option<String>,
    pub status: RunStatus,
    pub records: i64,
    pub messages: Vec<String>,
    pub started_at: Option<crate::time::Timestamp>,
    pub finished_at: Option<crate::time::Timestamp>,
}

/// A table a run loaded (or is loading): its columns and records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiRunTable {
    pub run_id: String,
    pub table: String,
    /// (name, type) in the warehouse.
    pub columns: Vec<(String, String)>,
    pub records: i64,
}

/// A data load: made only when a run succeeded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataLoad {
    pub run_id: String,
    pub tables: i64,
    pub records: i64,
    pub created_at: crate::time::Timestamp,
}
