//! What one check is about: the private host, the port, whether TLS is used,
//! the registry kind and the path its API is probed on.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use crate::name::Name;

/// The kind of registry behind the name; decides the API probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Container registry (Docker Registry HTTP API v2): `GET /v2/`.
    Docker,
    /// npm registry: `GET <base>/-/ping`.
    Npm,
    /// Maven repository: `GET <base>/`.
    Maven,
    /// Python package index: `GET <base>/simple/`.
    Pypi,
    /// Go module proxy: `GET <base>/`.
    Go,
    /// Any HTTP(S) URL: `GET` the URL as given.
    Http,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Docker => "docker",
            Kind::Npm => "npm",
            Kind::Maven => "maven",
            Kind::Pypi => "pypi",
            Kind::Go => "go",
            Kind::Http => "http",
        }
    }

    /// The variables the jobs read credentials for this kind of registry from.
    pub fn credential_hint(self) -> &'static str {
        match self {
            Kind::Docker => "DOCKER_AUTH_CONFIG (a docker config.json with an \"auths\" entry for the private name)",
            Kind::Npm => "NPM_TOKEN (used from .npmrc as //HOST/:_authToken=${NPM_TOKEN})",
            Kind::Maven => "MAVEN_USERNAME and MAVEN_PASSWORD (used from settings.xml as ${env.MAVEN_USERNAME})",
            Kind::Pypi => "PIP_INDEX_URL (https://USER:TOKEN@HOST/.../simple/)",
            Kind::Go => "GOPROXY with GOAUTH, or a .netrc named by NETRC",
            Kind::Http => "a .netrc named by NETRC",
        }
    }
}

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(Name),
    Ip(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => write!(f, "{n}"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One thing to check, fully resolved from the command line.
#[derive(Debug, Clone)]
pub struct Target {
    /// As the user (or the config) gave it.
    pub input: String,
    pub host: Host,
    pub port: u16,
    /// False only for `http://` URLs: the TLS stage is skipped.
    pub tls: bool,
    pub kind: Kind,
    /// The path the API stage requests (starts with '/').
    pub path: String,
}

impl Target {
    /// The Host header value (port omitted when it is the scheme's default).
    pub fn host_header(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            h => h.to_string(),
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The URL the API stage requests, for display.
    pub fn url(&self) -> String {
        format!(
            "{}://{}{}",
            if self.tls { "https" } else { "http" },
            self.host_header(),
            self.path
        )
    }
}

/// Parses `NAME`, `NAME:PORT`, `IP`, `[IPv6]:PORT` or an `http(s)://` URL.
/// `kind` and `port` are the command-line overrides.
pub fn parse_target(input: &str, kind: Option<Kind>, port: Option<u16>) -> Result<Target, String> {
    let (tls, rest, is_url) = if let Some(r) = strip_prefix_ci(input, "https://") {
        (true, r, true)
    } else if let Some(r) = strip_prefix_ci(input, "http://") {
        (false, r, true)
    } else if input.contains("://") {
        return Err(format!("{input:?}: only http:// and https:// URLs can be checked"));
    } else {
        (true, input, false)
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{input:?}: leave credentials out of the URL; the check reports when the registry asks for them"
        ));
    }
    let (host_text, url_port) = split_host_port(authority).map_err(|e| format!("{input:?}: {e}"))?;
    let host = if let Ok(ip) = host_text.parse::<IpAddr>() {
        Host::Ip(ip)
    } else {
        Host::Name(Name::parse(host_text).map_err(|e| format!("{input:?}: {e}"))?)
    };
    let port = url_port.or(port).unwrap_or(if tls { 443 } else { 80 });
    if port == 0 {
        return Err(format!("{input:?}: port 0 cannot be checked"));
    }
    let base = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let kind = kind.unwrap_or(if is_url && base != "/" {
        Kind::Http
    } else {
        Kind::Docker
    });
    let path = api_path(kind, &base);
    Ok(Target {
        input: input.to_string(),
        host,
        port,
        tls,
        kind,
        path,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    if authority.is_empty() {
        return Err("no host".into());
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or("unclosed '[' in the host")?;
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the address")),
        };
        return Ok((host, port));
    }
    // A bare IPv6 address has several colons and no port.
    if authority.matches(':').count() > 1 {
        return Ok((authority, None));
    }
    match authority.split_once(':') {
        Some((h, p)) => Ok((h, Some(parse_port(p)?))),
        None => Ok((authority, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    p.parse::<u16>().map_err(|_| format!("{p:?} is not a port number"))
}

/// The path the API stage requests for `kind`, given the base path of the URL.
fn api_path(kind: Kind, base: &str) -> String {
    let dir = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    match kind {
        // The registry API always lives at the root of the host.
        Kind::Docker => "/v2/".to_string(),
        Kind::Npm => format!("{dir}-/ping"),
        Kind::Pypi if dir.ends_with("/simple/") => dir,
        Kind::Pypi => format!("{dir}simple/"),
        Kind::Maven | Kind::Go => dir,
        Kind::Http => base.to_string(),
    }
}

/// Parses a duration such as `5s`, `500ms`, `1m`, `1.5s` or a bare number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 5s, 500ms, 1m)"))?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{text:?}: the timeout must be above 0 and at most 1h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `ADDR` or `ADDR:PORT` (port 53 by default), IPv6 as `[::1]:53` or bare.
pub fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{text:?} is not an IP address with an optional port (127.0.0.1:53, [::1]:53)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_urls() {
        let t = parse_target("Registry.Corp.Example", None, None).unwrap();
        assert_eq!(t.host, Host::Name(Name::parse("registry.corp.example").unwrap()));
        assert_eq!(
            (t.port, t.tls, t.kind, t.path.as_str()),
            (443, true, Kind::Docker, "/v2/")
        );

        let t = parse_target("registry.corp.example:5000", None, Some(1)).unwrap();
        assert_eq!(t.port, 5000);
        assert_eq!(t.host_header(), "registry.corp.example:5000");

        let t = parse_target("https://npm.corp.example/api/npm/remote", Some(Kind::Npm), None).unwrap();
        assert_eq!(t.path, "/api/npm/remote/-/ping");
        assert_eq!(t.url(), "https://npm.corp.example/api/npm/remote/-/ping");

        let t = parse_target("http://pypi.corp.example:8080/simple", Some(Kind::Pypi), None).unwrap();
        assert_eq!((t.port, t.tls, t.path.as_str()), (8080, false, "/simple/"));

        let t = parse_target("https://x.example/health?full=1", None, None).unwrap();
        assert_eq!((t.kind, t.path.as_str()), (Kind::Http, "/health?full=1"));

        let t = parse_target("https://x.example/", None, Some(8443)).unwrap();
        assert_eq!((t.kind, t.port), (Kind::Docker, 8443));

        let t = parse_target("[::1]:8443", None, None).unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.host_header(), "[::1]:8443");

        assert!(parse_target("ftp://x.example", None, None).is_err());
        assert!(parse_target("https://u:p@x.example", None, None).is_err());
        assert!(parse_target("bad name.example", None, None).is_err());
        assert!(parse_target("x.example:99999", None, None).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn dns_servers() {
        assert_eq!(parse_dns_server("127.0.0.1").unwrap(), "127.0.0.1:53".parse().unwrap());
        assert_eq!(
            parse_dns_server("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_dns_server("::1").unwrap(), "[::1]:53".parse().unwrap());
        assert!(parse_dns_server("localhost").is_err());
    }
}
