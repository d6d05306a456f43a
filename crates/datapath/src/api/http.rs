//! The HTTP side of an API source: requests with the source's auth and
//! headers, at most its rate, `429` honoured with `Retry-After`, `5xx` and
//! timeouts retried with capped backoff — each wait reported as a message.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;
use sluice_domain::api_source::{Auth, Client, KeyLocation};

use crate::types::invalid;
use crate::Result;

/// Tries of one request before its failure fails the task.
const TRIES: u32 = 6;
/// The longest wait between two tries (and the longest `Retry-After`
/// honoured as given).
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One answered request.
pub struct Page {
    pub url: String,
    pub headers: HeaderMap,
    pub body: Value,
}

pub struct Http {
    client: reqwest::Client,
    config: Client,
    /// The least time between two requests (the rate cap).
    gap: Option<Duration>,
    last: Option<Instant>,
    /// An OAuth2 access token and when it runs out.
    token: Option<(String, Instant)>,
    /// What happened that a person should know (waits, retries).
    pub messages: Vec<String>,
    /// Requests made, tries included.
    pub requests: u64,
}

/// The timeout of one request: `SLUICE_API_TIMEOUT_SECS`, default 60.
fn timeout() -> Duration {
    std::env::var("SLUICE_API_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(60))
}

impl Http {
    pub fn new(config: &Client) -> Result<Http> {
        let client = reqwest::Client::builder()
            .timeout(timeout())
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| invalid(format!("making the HTTP client: {e}")))?;
        Ok(Http {
            client,
            gap: config.rate_limit.map(|r| Duration::from_secs_f64(1.0 / r)),
            config: config.clone(),
            last: None,
            token: None,
            messages: Vec::new(),
            requests: 0,
        })
    }

    /// `path` under the base URL, or `path` itself when it is a URL.
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}/{}", self.config.base_url, path.trim_start_matches('/'))
        }
    }

    async fn pace(&mut self) {
        if let (Some(gap), Some(last)) = (self.gap, self.last) {
            let since = last.elapsed();
            if since < gap {
                tokio::time::sleep(gap - since).await;
            }
        }
        self.last = Some(Instant::now());
    }

    async fn oauth_token(&mut self) -> Result<Option<String>> {
        let Some(Auth::Oauth2ClientCredentials {
            access_token_url,
            client_id,
            client_secret,
            access_token_request_data,
        }) = &self.config.auth
        else {
            return Ok(None);
        };
        if let Some((t, until)) = &self.token {
            if Instant::now() < *until {
                return Ok(Some(t.clone()));
            }
        }
        // As dlt asks: the client's id and secret in the form body.
        let mut form: Vec<(String, String)> = vec![
            ("client_id".into(), client_id.clone()),
            ("client_secret".into(), client_secret.clone()),
            ("grant_type".into(), "client_credentials".into()),
        ];
        form.extend(access_token_request_data.iter().cloned());
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let answer = self
            .client
            .post(access_token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                invalid(format!(
                    "asking {access_token_url} for an access token: {e}"
                ))
            })?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(invalid(format!(
                "{access_token_url} refused the client credentials: HTTP {status}: {}",
                snippet(&text)
            )));
        }
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| invalid(format!("{access_token_url} answered no JSON token: {e}")))?;
        let token = doc
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{access_token_url} answered no access_token")))?
            .to_owned();
        let life = doc
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        self.token = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(life.saturating_sub(30).max(1)),
        ));
        Ok(Some(token))
    }

    /// Sends one request (GET with `query`, or POST with `json` too),
    /// trying again as the rules say; answers the JSON body.
    pub async fn fetch(
        &mut self,
        method: &str,
        url: &str,
        query: &[(String, String)],
        json: Option<&Value>,
        what: &str,
    ) -> Result<Page> {
        let mut wait = Duration::from_millis(250);
        let mut tried = 0;
        loop {
            tried += 1;
            self.pace().await;
            self.requests += 1;
            let mut req = if method == "POST" {
                self.client.post(url)
            } else {
                self.client.get(url)
            };
            let mut query = query.to_vec();
            for (k, v) in &self.config.headers {
                req = req.header(k, v);
            }
            match &self.config.auth {
                Some(Auth::Bearer { token }) => req = req.bearer_auth(token),
                Some(Auth::ApiKey {
                    name,
                    api_key,
                    location,
                }) => match location {
                    KeyLocation::Header => req = req.header(name, api_key),
                    KeyLocation::Query => query.push((name.clone(), api_key.clone())),
                },
                Some(Auth::HttpBasic { username, password }) => {
                    req = req.basic_auth(username, Some(password))
                }
                Some(Auth::Oauth2ClientCredentials { .. }) => {
                    if let Some(t) = self.oauth_token().await? {
                        req = req.bearer_auth(t);
                    }
                }
                None => {}
            }
            if !query.is_empty() {
                req = req.query(&query);
            }
            if let Some(body) = json {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let sent = req.send().await;
            let answer = match sent {
                Ok(a) => a,
                Err(e) if tried < TRIES && (e.is_timeout() || e.is_connect() || e.is_request()) => {
                    self.messages.push(format!(
                        "{what}: {} — tried again in {:.1} s",
                        if e.is_timeout() {
                            "timed out".to_owned()
                        } else {
                            format!("{e}")
                        },
                        wait.as_secs_f64()
                    ));
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                    continue;
                }
                Err(e) => return Err(invalid(format!("{what}: {e} (after {tried} tries)"))),
            };
            let status = answer.status();
            if status.as_u16() == 429 && tried < TRIES {
                let after = retry_after(answer.headers().get(RETRY_AFTER)).unwrap_or(wait);
                self.messages.push(format!(
                    "{what}: HTTP 429 Too Many Requests — waited {:.1} s (Retry-After)",
                    after.as_secs_f64()
                ));
                tokio::time::sleep(after.min(MAX_WAIT)).await;
                wait = (wait * 2).min(MAX_WAIT);
                continue;
            }
            if status.is_server_error() && tried < TRIES {
                self.messages.push(format!(
                    "{what}: HTTP {} — tried again in {:.1} s",
                    status.as_u16(),
                    wait.as_secs_f64()
                ));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_WAIT);
                continue;
            }
            let final_url = answer.url().to_string();
            let headers = answer.headers().clone();
            let bytes = answer
                .bytes()
                .await
                .map_err(|e| invalid(format!("{what}: reading the answer: {e}")))?;
            if !status.is_success() {
                return Err(invalid(format!(
                    "{what}: HTTP {}: {} (after {tried} tries)",
                    status.as_u16(),
                    snippet(&String::from_utf8_lossy(&bytes))
                )));
            }
            let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .map_err(|e| invalid(format!("{what}: the answer is not JSON: {e}")))?
            };
            return Ok(Page {
                url: final_url,
                headers,
                body,
            });
        }
    }
}

/// `Retry-After` as seconds (or an HTTP date, read as seconds from now).
fn retry_after(v: Option<&HeaderValue>) -> Option<Duration> {
    let s = v?.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Some(Duration::from_secs_f64(secs.max(0.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(s).ok()?;
    let secs = (at.timestamp() - chrono::Utc::now().timestamp()).max(0);
    Some(Duration::from_secs(secs as u64))
}

/// The `rel="<key>"` URL of a `Link` header.
pub fn link(headers: &HeaderMap, key: &str) -> Option<String> {
    for v in headers.get_all("link") {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(',') {
            let mut pieces = part.split(';');
            let url = pieces.next()?.trim();
            let is_key = pieces.any(|p| {
                let p = p.trim();
                p == format!("rel=\"{key}\"") || p == format!("rel={key}")
            });
            if is_key {
                return Some(url.trim_start_matches('<').trim_end_matches('>').to_owned());
            }
        }
    }
    None
}

fn snippet(s: &str) -> String {
    let s = s.trim();
    if s.chars().count() > 300 {
        format!("{}…", s.chars().take(300).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// Percent-encodes a form value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_name_their_next_page() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                "<http://h/a?page=1>; rel=\"prev\", <http://h/a?page=3>; rel=\"next\"",
            ),
        );
        assert_eq!(link(&h, "next").as_deref(), Some("http://h/a?page=3"));
        assert_eq!(link(&h, "last"), None);
    }

    #[test]
    fn retry_after_reads_seconds() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("2"))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(retry_after(Some(&HeaderValue::from_static("soon"))), None);
    }
}
