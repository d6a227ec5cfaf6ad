//! The registry API stage: one HTTP/1.1 GET over the stream the TLS stage
//! opened, and what the answer means for each kind of registry.

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::target::{Kind, Target};

/// Bound on the response head read (status line and headers).
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `GET path` and reads the response head.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    host_header: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let fut = async {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: dnsbridge-check/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sending the request: {e}"))?;
        stream.flush().await.map_err(|e| format!("sending the request: {e}"))?;
        let mut head = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find_head_end(&head) {
                head.truncate(end);
                break;
            }
            if head.len() > MAX_HEAD {
                return Err(format!("the response head is larger than {MAX_HEAD} bytes"));
            }
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // Servers that close without close_notify still sent a head.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(format!("reading the response: {e}")),
            };
            if n == 0 {
                if head.is_empty() {
                    return Err("the server closed the connection without answering".into());
                }
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        parse_head(&head)
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("no HTTP answer within {timeout:?}")),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

fn parse_head(head: &[u8]) -> Result<HttpResponse, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/") {
        let shown: String = status_line.chars().take(60).collect();
        return Err(format!("the server did not answer HTTP (first line {shown:?})"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let reason = parts.next().unwrap_or("").trim().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        reason,
        headers,
    })
}

/// The verdict of the API stage.
pub struct ApiVerdict {
    pub pass: bool,
    pub summary: String,
    pub fix: Option<String>,
    /// Credentials are needed (401): a pass that says so.
    pub needs_credentials: bool,
}

fn pass(summary: String) -> ApiVerdict {
    ApiVerdict {
        pass: true,
        summary,
        fix: None,
        needs_credentials: false,
    }
}

fn fail(summary: String, fix: String) -> ApiVerdict {
    ApiVerdict {
        pass: false,
        summary,
        fix: Some(fix),
        needs_credentials: false,
    }
}

/// What the response means for `target.kind`.
pub fn evaluate(target: &Target, r: &HttpResponse) -> ApiVerdict {
    let line = format!("GET {} -> {} {}", target.path, r.status, r.reason)
        .trim_end()
        .to_string();
    let creds = |extra: String| ApiVerdict {
        pass: true,
        summary: format!(
            "{line}: reachable, credentials needed{extra}; jobs pass them in {}",
            target.kind.credential_hint()
        ),
        fix: None,
        needs_credentials: true,
    };
    if r.status >= 500 {
        return fail(
            format!("{line}: the server failed"),
            "the load balancer reached no healthy registry behind it, or the registry itself is failing: check its targets and logs".into(),
        );
    }
    match target.kind {
        Kind::Docker => {
            let api = r.header("docker-distribution-api-version");
            match (r.status, api) {
                (200, Some(v)) => pass(format!("{line}, {v}: container registry reachable, anonymous access")),
                (401, Some(v)) => {
                    let realm = r
                        .header("www-authenticate")
                        .and_then(auth_realm)
                        .map(|realm| format!(" (token service {realm}: it must be reachable too)"))
                        .unwrap_or_default();
                    let mut v2 = creds(realm);
                    v2.summary = v2.summary.replacen(": reachable", &format!(", {v}: reachable"), 1);
                    v2
                }
                (404, _) => fail(
                    format!("{line}: not a container registry"),
                    "this host:port serves HTTP but no registry API at /v2/: the load balancer forwards to the wrong backend, or use the registry's own host and port".into(),
                ),
                (_, None) => fail(
                    format!("{line} without a Docker-Distribution-API-Version header: not a container registry"),
                    "this host:port answers HTTP but not the registry API: check the load balancer's backend (or a proxy in between), or give --kind for another registry type".into(),
                ),
                (s, Some(_)) => fail(
                    format!("{line}: the registry refused the API root (status {s})"),
                    "the registry answers but refuses /v2/: check its access policy for the executors' addresses".into(),
                ),
            }
        }
        _ if r.status == 401 => creds(String::new()),
        Kind::Npm => match r.status {
            200..=299 => pass(format!("{line}: npm registry reachable")),
            403 => pass_forbidden(&line, target),
            404 => fail(
                format!("{line}: no npm registry at this path"),
                "give the registry's base URL (the one in .npmrc), e.g. https://HOST/api/npm/REPO/ --kind npm".into(),
            ),
            _ => unexpected(&line),
        },
        Kind::Pypi => match r.status {
            200..=299 => pass(format!("{line}: package index reachable")),
            300..=399 => pass(format!(
                "{line}: package index reachable (redirects to {})",
                r.header("location").unwrap_or("?")
            )),
            403 => pass_forbidden(&line, target),
            404 => fail(
                format!("{line}: no simple index at this path"),
                "give the index base URL (the one in PIP_INDEX_URL without /simple/), e.g. https://HOST/repository/pypi/ --kind pypi".into(),
            ),
            _ => unexpected(&line),
        },
        Kind::Maven => match r.status {
            200..=399 => pass(format!("{line}: Maven repository reachable")),
            403 => pass_forbidden(&line, target),
            404 => fail(
                format!("{line}: no Maven repository at this path"),
                "give the repository's base URL (the <url> of settings.xml or pom.xml), e.g. https://HOST/repository/maven-releases/ --kind maven".into(),
            ),
            _ => unexpected(&line),
        },
        Kind::Go => match r.status {
            200..=399 => pass(format!("{line}: Go module proxy reachable")),
            // The GOPROXY protocol defines no root page: any answer proves the path.
            403..=405 => pass(format!("{line}: HTTP reachable (the Go proxy protocol has no root page)")),
            _ => unexpected(&line),
        },
        Kind::Http => match r.status {
            200..=299 => pass(format!("{line}: reachable")),
            300..=399 => pass(format!("{line}: reachable (redirects to {})", r.header("location").unwrap_or("?"))),
            403 => pass_forbidden(&line, target),
            _ => fail(
                line.to_string(),
                format!("{} answers but not with success: check the URL path", target.url()),
            ),
        },
    }
}

fn pass_forbidden(line: &str, target: &Target) -> ApiVerdict {
    ApiVerdict {
        pass: true,
        summary: format!(
            "{line}: reachable, but access is forbidden without (or with these) credentials; jobs pass them in {}",
            target.kind.credential_hint()
        ),
        fix: None,
        needs_credentials: true,
    }
}

fn unexpected(line: &str) -> ApiVerdict {
    fail(
        format!("{line}: unexpected status"),
        "the server answers but not as this kind of registry: check the URL path and --kind".into(),
    )
}

/// The `realm` of a `Bearer` challenge.
fn auth_realm(h: &str) -> Option<String> {
    // Only a Bearer challenge names a token service; Basic's realm is a label.
    if !h.trim_start().to_ascii_lowercase().starts_with("bearer ") {
        return None;
    }
    let i = h.to_ascii_lowercase().find("realm=")?;
    let rest = &h[i + 6..];
    let v = if let Some(q) = rest.strip_prefix('"') {
        q.split('"').next()?
    } else {
        rest.split(',').next()?
    };
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::target::parse_target;

    fn resp(status: u16, headers: &[(&str, &str)]) -> HttpResponse {
        HttpResponse {
            status,
            reason: String::new(),
            headers: headers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        }
    }

    #[test]
    fn parses_head() {
        let r = parse_head(b"HTTP/1.1 401 Unauthorized\r\nDocker-Distribution-Api-Version: registry/2.0\r\nWww-Authenticate: Bearer realm=\"https://auth.corp.example/token\",service=\"r\"").unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(r.header("Docker-Distribution-API-Version"), Some("registry/2.0"));
        assert_eq!(
            auth_realm(r.header("www-authenticate").unwrap()).unwrap(),
            "https://auth.corp.example/token"
        );
        assert!(parse_head(b"SSH-2.0-OpenSSH").is_err());
        assert_eq!(auth_realm("Basic realm=\"basic-realm\""), None);
        assert_eq!(
            auth_realm("Bearer realm=https://a.example/t,service=r").unwrap(),
            "https://a.example/t"
        );
    }

    #[test]
    fn docker_verdicts() {
        let t = parse_target("r.example", None, None).unwrap();
        let hv = ("docker-distribution-api-version", "registry/2.0");
        assert!(evaluate(&t, &resp(200, &[hv])).pass);
        let v = evaluate(&t, &resp(401, &[hv]));
        assert!(v.pass && v.needs_credentials && v.summary.contains("DOCKER_AUTH_CONFIG"));
        assert!(!evaluate(&t, &resp(404, &[hv])).pass);
        assert!(!evaluate(&t, &resp(200, &[])).pass);
        assert!(!evaluate(&t, &resp(401, &[])).pass);
        assert!(!evaluate(&t, &resp(502, &[hv])).pass);
    }

    #[test]
    fn other_kinds() {
        let npm = parse_target("https://n.example/npm/", Some(Kind::Npm), None).unwrap();
        assert!(evaluate(&npm, &resp(200, &[])).pass);
        assert!(!evaluate(&npm, &resp(404, &[])).pass);
        assert!(evaluate(&npm, &resp(401, &[])).summary.contains("NPM_TOKEN"));
        let go = parse_target("https://g.example/", Some(Kind::Go), None).unwrap();
        assert!(evaluate(&go, &resp(404, &[])).pass);
        let http = parse_target("https://h.example/x", None, None).unwrap();
        assert!(!evaluate(&http, &resp(404, &[])).pass);
    }
}
