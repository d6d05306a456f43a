//! An open-loop HTTP/1.1 load generator: each kind of request is sent at
//! its own fixed rate whatever the server's answers take, over keep-alive
//! connections, and a request's latency is counted from the moment it was
//! due, not from when a connection was free (so a slow server cannot hide
//! its queue: no coordinated omission).
//!
//! The plan comes as JSON on stdin:
//!
//! ```json
//! {"addr": "127.0.0.1:8080", "seconds": 60, "max_connections": 256,
//!  "kinds": [{"name": "get run", "rate": 500, "method": "GET",
//!             "paths": ["/organizations/1/…"], "headers": {"Authorization": "…"},
//!             "body": null}]}
//! ```
//!
//! and the figures go to stdout as JSON: per kind the requests sent, the
//! answers by status, transport errors, and latency percentiles in ms.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Deserialize)]
struct Plan {
    addr: String,
    seconds: f64,
    #[serde(default = "default_connections")]
    max_connections: usize,
    kinds: Vec<Kind>,
}

fn default_connections() -> usize {
    256
}

#[derive(Deserialize)]
struct Kind {
    name: String,
    rate: f64,
    method: String,
    paths: Vec<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
    /// Requests sent again on a new connection (the server had closed the
    /// idle one they were sent on).
    resent: u64,
    first_error: Option<String>,
    latencies_ms: Vec<f64>,
}

type Conn = BufReader<TcpStream>;

/// The server had closed a kept-alive connection before the request
/// reached it (an idle connection it timed out): the request is sent
/// again on a new one, as HTTP clients do.
const CLOSED: &str = "the connection was closed before an answer began";

struct Pool {
    addr: String,
    idle: Mutex<Vec<Conn>>,
    open: Mutex<usize>,
    max: usize,
}

impl Pool {
    /// An idle connection (and true: it was used before), or a new one
    /// while fewer than `max` are open; `None` when every connection is
    /// busy (the request waits).
    async fn take(&self) -> std::io::Result<Option<(Conn, bool)>> {
        if let Some(c) = self.idle.lock().unwrap().pop() {
            return Ok(Some((c, true)));
        }
        {
            let mut open = self.open.lock().unwrap();
            if *open >= self.max {
                return Ok(None);
            }
            *open += 1;
        }
        match TcpStream::connect(&self.addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                Ok(Some((BufReader::new(s), false)))
            }
            Err(e) => {
                *self.open.lock().unwrap() -= 1;
                Err(e)
            }
        }
    }

    fn give_back(&self, c: Conn) {
        self.idle.lock().unwrap().push(c);
    }

    fn lost(&self) {
        *self.open.lock().unwrap() -= 1;
    }
}

/// Sends one request and reads its answer; the status, or why it failed.
async fn exchange(conn: &mut Conn, request: &[u8]) -> Result<(u16, bool), String> {
    // A failure before the answer's first byte is the connection having
    // been closed under the request.
    conn.get_mut()
        .write_all(request)
        .await
        .map_err(|_| CLOSED.to_owned())?;
    let mut line = String::new();
    conn.read_line(&mut line)
        .await
        .map_err(|_| CLOSED.to_owned())?;
    if line.is_empty() {
        return Err(CLOSED.to_owned());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        conn.read_line(&mut line)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().map_err(|_| "bad content-length")?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)
                .await
                .map_err(|e| format!("read: {e}"))?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(|_| "bad chunk size")?;
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0; length];
        conn.read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
    }
    Ok((status, close))
}

fn request(kind: &Kind, path: &str, host: &str) -> Vec<u8> {
    let mut out = format!("{} {path} HTTP/1.1\r\nHost: {host}\r\n", kind.method);
    for (k, v) in &kind.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = &kind.body {
        out.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input).expect("a plan on stdin");
    let plan: Plan = serde_json::from_str(&input).expect("a plan: see the crate's docs");
    let pool = Arc::new(Pool {
        addr: plan.addr.clone(),
        idle: Mutex::new(Vec::new()),
        open: Mutex::new(0),
        max: plan.max_connections,
    });
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + Duration::from_secs_f64(plan.seconds);
    let mut schedulers = Vec::new();
    let mut tallies = Vec::new();
    for kind in plan.kinds {
        let tally = Arc::new(Mutex::new(Tally::default()));
        tallies.push((kind.name.clone(), tally.clone()));
        let requests: Arc<Vec<Vec<u8>>> = Arc::new(
            kind.paths
                .iter()
                .map(|p| request(&kind, p, &plan.addr))
                .collect(),
        );
        let (pool, every) = (pool.clone(), Duration::from_secs_f64(1.0 / kind.rate));
        schedulers.push(tokio::spawn(async move {
            let mut inflight = Vec::new();
            let mut i: u32 = 0;
            loop {
                let due = start + every * i;
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let req = requests.clone();
                let (pool, tally) = (pool.clone(), tally.clone());
                let which = i as usize % req.len();
                inflight.push(tokio::spawn(async move {
                    let outcome = loop {
                        match pool.take().await {
                            Ok(Some((mut conn, reused))) => {
                                let r = exchange(&mut conn, &req[which]).await;
                                match r {
                                    Err(e) if reused && e == CLOSED => {
                                        pool.lost();
                                        tally.lock().unwrap().resent += 1;
                                        continue;
                                    }
                                    Ok((status, close)) => {
                                        if close {
                                            pool.lost();
                                        } else {
                                            pool.give_back(conn);
                                        }
                                        break Ok(status);
                                    }
                                    Err(e) => {
                                        pool.lost();
                                        break Err(e);
                                    }
                                }
                            }
                            Ok(None) => tokio::time::sleep(Duration::from_micros(200)).await,
                            Err(e) => break Err(format!("connect: {e}")),
                        }
                    };
                    let ms = due.elapsed().as_secs_f64() * 1000.0;
                    let mut t = tally.lock().unwrap();
                    t.sent += 1;
                    match outcome {
                        Ok(status) => *t.statuses.entry(status).or_default() += 1,
                        Err(e) => {
                            t.errors += 1;
                            t.first_error.get_or_insert(e);
                        }
                    }
                    t.latencies_ms.push(ms);
                }));
                i += 1;
            }
            for f in inflight {
                let _ = f.await;
            }
        }));
    }
    for s in schedulers {
        s.await.expect("a scheduler");
    }
    let took = start.elapsed().as_secs_f64();
    let mut kinds = serde_json::Map::new();
    let mut total = 0;
    for (name, tally) in tallies {
        let mut t = tally.lock().unwrap();
        t.latencies_ms.sort_by(f64::total_cmp);
        total += t.sent;
        kinds.insert(
            name,
            json!({
                "sent": t.sent,
                "statuses": t.statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "errors": t.errors,
                "resent": t.resent,
                "first_error": t.first_error,
                "p50_ms": percentile(&t.latencies_ms, 50.0),
                "p99_ms": percentile(&t.latencies_ms, 99.0),
                "max_ms": t.latencies_ms.last().copied().unwrap_or(0.0),
            }),
        );
    }
    println!(
        "{}",
        json!({"seconds": plan.seconds, "drained_after": took, "sent": total, "achieved_rps": total as f64 / plan.seconds, "kinds": kinds})
    );
}
