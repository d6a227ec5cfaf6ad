//! A deliberately small HTTP/1.1 responder for the operator's endpoints:
//! GET (and HEAD) only, one request per connection (`Connection: close`), a
//! bounded request head and a read deadline, a cap on connections. It is
//! meant for a loopback scrape address, not the internet.
//!
//! | path       | answer |
//! |------------|--------|
//! | `/metrics` | Prometheus text format 0.0.4 |
//! | `/healthz` | 200 `ok` while the process and its event loop answer |
//! | `/readyz`  | 200 `ready`, or 503 with the reason (no listener, no healthy upstream) |
//! | `/routes`  | the active routes as JSON |

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{Metrics, Status};

/// The content type Prometheus expects for format 0.0.4.
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request head read (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// One response, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Extra header lines, without CRLF.
    pub headers: Vec<String>,
}

impl Reply {
    fn text(code: u16, body: impl Into<String>) -> Reply {
        Reply {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// The bytes on the wire; the body is left out for HEAD.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.code,
            reason(self.code),
            self.content_type,
            self.body.len()
        );
        for h in &self.headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A request head that could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

/// Reads the request line of a complete head; an error is the reply to send.
pub fn parse_head(head: &[u8]) -> Result<RequestLine, Reply> {
    let bad = || Reply::text(400, "bad request\n");
    let line_end = head.iter().position(|&b| b == b'\n').ok_or_else(bad)?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| bad())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Reply::text(505, "only HTTP/1.x is served\n"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    // Origin form ("/metrics?x") or absolute form ("http://host/metrics").
    let path = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    if !path.starts_with('/') {
        return Err(bad());
    }
    let path = path.split(['?', '#']).next().unwrap_or("/");
    Ok(RequestLine {
        method: method.to_string(),
        path: path.to_string(),
    })
}

/// The reply for one request.
pub fn route(req: &RequestLine, metrics: &Metrics, status: &dyn Status) -> Reply {
    if req.method != "GET" && req.method != "HEAD" {
        let mut r = Reply::text(405, "only GET and HEAD are served\n");
        r.headers.push("Allow: GET, HEAD".into());
        return r;
    }
    match req.path.as_str() {
        "/metrics" => {
            status.refresh(metrics);
            Reply {
                code: 200,
                content_type: CONTENT_TYPE_METRICS,
                body: metrics.render(&status.extra_metrics()),
                headers: Vec::new(),
            }
        }
        "/healthz" | "/livez" => match status.alive() {
            Ok(()) => Reply::text(200, "ok\n"),
            Err(why) => Reply::text(503, format!("not ok: {}\n", one_line(&why))),
        },
        "/readyz" => match status.ready() {
            Ok(()) => Reply::text(200, "ready\n"),
            Err(why) => Reply::text(503, format!("not ready: {}\n", one_line(&why))),
        },
        "/routes" => {
            let mut body = serde_json::to_string_pretty(&status.routes_json()).unwrap_or_else(|_| "null".into());
            body.push('\n');
            Reply {
                code: 200,
                content_type: "application/json",
                body,
                headers: Vec::new(),
            }
        }
        "/" => Reply::text(
            200,
            "dnsbridge\n/metrics  Prometheus metrics\n/healthz  liveness\n/readyz   readiness (listeners bound, an upstream healthy)\n/routes   active routes (JSON)\n",
        ),
        _ => Reply::text(404, "not found; try /metrics, /healthz, /readyz, /routes\n"),
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, metrics: Arc<Metrics>, status: Arc<dyn Status>) {
    serve_with(listener, metrics, status, READ_TIMEOUT).await
}

pub(crate) async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<dyn Status>,
    read_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept error");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let _ = serve_one(stream, &metrics, &*status, read_timeout).await;
            drop(permit);
        });
    }
}

/// Reads one request head (bounded in size and time) and answers it.
async fn serve_one(
    mut stream: TcpStream,
    metrics: &Metrics,
    status: &dyn Status,
    read_timeout: Duration,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(read_timeout, read_head(&mut stream)).await;
    let (reply, head_only) = match head {
        Err(_) => (Reply::text(408, "request timeout\n"), false),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (Reply::text(431, "request head too large\n"), false),
        Ok(Ok(Some(head))) => match parse_head(&head) {
            Ok(req) => (route(&req, metrics, status), req.method == "HEAD"),
            Err(r) => (r, false),
        },
    };
    let bytes = reply.to_bytes(head_only);
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The bytes up to the blank line that ends the head, or None when it is
/// larger than [`MAX_REQUEST_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&buf[scan_from..]) {
            buf.truncate(scan_from + end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

/// The end of "\r\n\r\n" (or a bare "\n\n") in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
