//! End to end: `dnsbridge check` against a real docker-registry serving TLS on
//! loopback with certificates made at test time, reached through
//! `dnsbridge serve` in front of a knot upstream. Needs root (the pull test
//! uses a private mount namespace) and the Debian packages knot,
//! docker-registry, openssl and skopeo.

mod check_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use check_support::*;
use serde_json::Value;

fn stage<'a>(target: &'a Value, name: &str) -> &'a Value {
    target["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {target:#}"))
}

fn verdicts(target: &Value) -> Vec<String> {
    target["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}={}", s["stage"].as_str().unwrap(), s["verdict"].as_str().unwrap()))
        .collect()
}

fn common_args(w: &World, port: u16) -> Vec<String> {
    vec![
        "--config".into(),
        w.config.display().to_string(),
        "--server".into(),
        w.server.to_string(),
        "--port".into(),
        port.to_string(),
        "--ca-file".into(),
        w.pki.ca.display().to_string(),
        "--timeout".into(),
        "10s".into(),
    ]
}

fn with(mut v: Vec<String>, extra: &[&str]) -> Vec<String> {
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn full_pass_through_the_proxy() {
    let w = World::new(
        "pass",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    let (cert, key) = w.pki.leaf("registry", &["registry.corp.test"]);
    let reg = Registry::start(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key);

    let r = check(with(
        common_args(&w, reg.addr.port()),
        &["registry.corp.test", "--json"],
    ));
    assert_eq!(r.code, 0, "{r}");
    let j = r.json();
    assert_eq!(j["ok"], true);
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["server"], w.server.to_string());
    let t = &j["targets"][0];
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=pass", "tcp=pass", "tls=pass", "api=pass"],
        "{t:#}"
    );
    assert_eq!(t["failed_stage"], Value::Null);
    assert_eq!(t["kind"], "docker");
    assert_eq!(t["needs_credentials"], false);

    let route = stage(t, "route");
    assert_eq!(route["details"]["match"], "exact");
    assert_eq!(route["details"]["destination"], "lb.public.test");

    let dns = stage(t, "dns");
    assert_eq!(dns["details"]["rcode"], "NOERROR");
    assert_eq!(dns["details"]["chain"][0]["name"], "registry.corp.test");
    assert_eq!(dns["details"]["chain"][0]["cname"], "lb.public.test");
    assert_eq!(dns["details"]["addresses"][0]["address"], "127.0.0.1");
    let ttl = dns["details"]["addresses"][0]["ttl"].as_u64().unwrap();
    assert!(ttl > 0 && ttl <= 120, "ttl {ttl}");
    // Compared with the destination resolved directly from knot.
    assert_eq!(dns["details"]["upstream"]["server"], w.knot.addr.to_string());
    assert_eq!(dns["details"]["upstream"]["addresses"][0]["address"], "127.0.0.1");
    assert!(dns["summary"].as_str().unwrap().contains("agrees"), "{dns:#}");

    let tcp = stage(t, "tcp");
    assert_eq!(tcp["details"]["addresses"][0]["address"], reg.addr.to_string());
    assert_eq!(tcp["details"]["addresses"][0]["ok"], true);

    let tls = stage(t, "tls");
    assert_eq!(tls["details"]["sni"], "registry.corp.test");
    assert_eq!(
        tls["details"]["presented_names"],
        serde_json::json!(["registry.corp.test"])
    );
    assert_eq!(tls["details"]["addresses"][0]["valid_for_private_name"], true);

    let api = stage(t, "api");
    assert_eq!(api["details"]["status"], 200);
    assert_eq!(api["details"]["docker_distribution_api_version"], "registry/2.0");

    for s in t["stages"].as_array().unwrap() {
        assert!(s["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(s["fix"], Value::Null);
    }

    // Without the test CA, the chain is not trusted.
    let mut args = common_args(&w, reg.addr.port());
    args.drain(6..8);
    assert!(!args.iter().any(|a| a == "--ca-file"));
    let u = check(with(args, &["registry.corp.test", "--json"]));
    assert_eq!(u.code, 13, "{u}");
    let tls = stage(&u.json()["targets"][0], "tls").clone();
    assert!(tls["summary"].as_str().unwrap().contains("untrusted CA"), "{tls:#}");
    assert!(tls["fix"].as_str().unwrap().contains("--ca-file"), "{tls:#}");
    // A host with no CA certificates at all still gets the names and a fix.
    let empty = w.dir.join("no-roots");
    std::fs::create_dir_all(&empty).unwrap();
    let mut args = common_args(&w, reg.addr.port());
    args.drain(6..8);
    let e = check_env(
        with(args, &["registry.corp.test", "--json"]),
        &[
            ("SSL_CERT_FILE", empty.join("none.pem").as_os_str()),
            ("SSL_CERT_DIR", empty.as_os_str()),
        ],
    );
    assert_eq!(e.code, 13, "{e}");
    let tls = stage(&e.json()["targets"][0], "tls").clone();
    assert_eq!(
        tls["details"]["presented_names"],
        serde_json::json!(["registry.corp.test"])
    );
    assert!(tls["fix"].as_str().unwrap().contains("ca-certificates"), "{tls:#}");

    // The same check as a human reads it.
    let h = check(with(common_args(&w, reg.addr.port()), &["registry.corp.test"]));
    eprintln!("{h}");
    assert_eq!(h.code, 0, "{h}");
    assert!(h.stdout.contains("registry.corp.test"), "{h}");
    assert!(
        h.stdout.lines().any(|l| l.trim_start().starts_with("tls   pass")),
        "{h}"
    );
    assert!(h.stdout.contains("CNAME lb.public.test"), "{h}");
    assert!(
        !h.stdout.contains('\x1b'),
        "no colours when stdout is not a terminal: {h}"
    );
    assert!(h.stdout.contains("1 of 1 reachable"), "{h}");
}

#[test]
fn public_certificate_only_fails_at_tls_with_both_names() {
    let w = World::new(
        "tls",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    // The load balancer holds only its public certificate.
    let (cert, key) = w.pki.leaf("lb", &["lb.public.test"]);
    let reg = Registry::start(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key);

    let r = check(with(
        common_args(&w, reg.addr.port()),
        &["registry.corp.test", "--json"],
    ));
    assert_eq!(r.code, 13, "{r}");
    let j = r.json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["exit_code"], 13);
    let t = &j["targets"][0];
    assert_eq!(t["failed_stage"], "tls");
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=pass", "tcp=pass", "tls=fail", "api=skip"]
    );
    let tls = stage(t, "tls");
    let summary = tls["summary"].as_str().unwrap();
    assert!(
        summary.contains("registry.corp.test") && summary.contains("lb.public.test"),
        "{summary}"
    );
    assert_eq!(tls["details"]["expected_name"], "registry.corp.test");
    assert_eq!(tls["details"]["destination_name"], "lb.public.test");
    assert_eq!(tls["details"]["presented_names"], serde_json::json!(["lb.public.test"]));
    assert_eq!(tls["details"]["addresses"][0]["valid_for_private_name"], false);
    assert_eq!(tls["details"]["addresses"][0]["valid_for_destination"], true);
    let fix = tls["fix"].as_str().unwrap();
    assert!(
        fix.contains("passthrough") && fix.contains("registry.corp.test"),
        "{fix}"
    );

    let h = check(with(common_args(&w, reg.addr.port()), &["registry.corp.test"]));
    eprintln!("{h}");
    assert_eq!(h.code, 13, "{h}");
    assert!(h.stdout.contains("FAIL at tls (exit 13)"), "{h}");
    assert!(h.stdout.contains("lb.public.test") && h.stdout.contains("fix:"), "{h}");
}

#[test]
fn closed_port_fails_at_tcp() {
    let w = World::new(
        "tcp",
        &[Route {
            source: "closed.corp.test",
            destination: "closed.public.test",
        }],
        "closed.public.test. 120 A 127.0.0.1",
        None,
    );
    let port = free_port(LOOP);
    let r = check(with(common_args(&w, port), &["closed.corp.test", "--json"]));
    assert_eq!(r.code, 12, "{r}");
    let j = r.json();
    let t = &j["targets"][0];
    assert_eq!(t["failed_stage"], "tcp");
    assert_eq!(t["exit_code"], 12);
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=pass", "tcp=fail", "tls=skip", "api=skip"]
    );
    let tcp = stage(t, "tcp");
    assert_eq!(tcp["details"]["addresses"][0]["address"], format!("127.0.0.1:{port}"));
    assert_eq!(tcp["details"]["addresses"][0]["ok"], false);
    assert!(tcp["fix"].as_str().unwrap().contains("nothing listens"), "{tcp:#}");
    assert_eq!(stage(t, "tls")["summary"], "not run: tcp failed");
}

#[test]
fn unrouted_nxdomain_name_fails_at_dns() {
    let w = World::new(
        "dns",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    let r = check(with(common_args(&w, 443), &["nothing.corp.test", "--json"]));
    assert_eq!(r.code, 11, "{r}");
    let j = r.json();
    let t = &j["targets"][0];
    assert_eq!(t["failed_stage"], "dns");
    assert_eq!(
        verdicts(t),
        ["route=skip", "dns=fail", "tcp=skip", "tls=skip", "api=skip"]
    );
    assert_eq!(stage(t, "route")["details"]["routed"], false);
    let dns = stage(t, "dns");
    assert_eq!(dns["details"]["rcode"], "NXDOMAIN");
    assert!(dns["fix"].as_str().unwrap().contains("add a route"), "{dns:#}");
}

#[test]
fn https_server_that_is_not_a_registry_fails_at_api() {
    let w = World::new(
        "api",
        &[Route {
            source: "web.corp.test",
            destination: "web.public.test",
        }],
        "web.public.test. 120 A 127.0.0.1",
        None,
    );
    let (cert, key) = w.pki.leaf("web", &["web.corp.test"]);
    let web = NotARegistry::start(SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key);
    let r = check(with(common_args(&w, web.addr.port()), &["web.corp.test", "--json"]));
    assert_eq!(r.code, 14, "{r}");
    let j = r.json();
    let t = &j["targets"][0];
    assert_eq!(t["failed_stage"], "api");
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=pass", "tcp=pass", "tls=pass", "api=fail"]
    );
    let api = stage(t, "api");
    assert_eq!(api["details"]["status"], 200);
    assert_eq!(api["details"]["docker_distribution_api_version"], Value::Null);
    assert!(
        api["summary"].as_str().unwrap().contains("not a container registry"),
        "{api:#}"
    );

    // As a plain URL the same server passes the API stage.
    let url = format!("https://web.corp.test:{}/", web.addr.port());
    let r = check(with(common_args(&w, 443), &[url.as_str(), "--kind", "http", "--json"]));
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn every_route_of_the_config_concurrently() {
    let routes = [
        Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        },
        Route {
            source: "closed.corp.test",
            destination: "closed.public.test",
        },
        Route {
            source: "*.wild.corp.test",
            destination: "lb.public.test",
        },
    ];
    // Same port on two addresses: the registry on .1, nothing on .2.
    let w = World::new(
        "all",
        &routes,
        "lb.public.test. 120 A 127.0.0.1\nclosed.public.test. 120 A 127.0.0.2",
        None,
    );
    let (cert, key) = w.pki.leaf("registry", &["registry.corp.test", "*.wild.corp.test"]);
    let reg = Registry::start(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key);

    let r = check(with(common_args(&w, reg.addr.port()), &["--json"]));
    eprintln!("{}", check(with(common_args(&w, reg.addr.port()), &[])));
    assert_eq!(r.code, 12, "the closed route fails at TCP: {r}");
    let j = r.json();
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 3);
    assert_eq!(targets[0]["target"], "registry.corp.test");
    assert_eq!(targets[0]["ok"], true);
    assert_eq!(targets[1]["target"], "closed.corp.test");
    assert_eq!(targets[1]["failed_stage"], "tcp");
    assert_eq!(targets[2]["target"], "*.wild.corp.test");
    assert_eq!(stage(&targets[2], "route")["verdict"], "skip");
    // One progress line per target on stderr.
    for t in [
        "registry.corp.test: ok",
        "closed.corp.test: FAIL at tcp",
        "*.wild.corp.test: skipped",
    ] {
        assert!(
            r.stderr.lines().any(|l| l.starts_with('[') && l.contains(t)),
            "{t}: {r}"
        );
    }

    // A name under the wildcard, given explicitly.
    let r = check(with(common_args(&w, reg.addr.port()), &["a.wild.corp.test", "--json"]));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(stage(&r.json()["targets"][0], "route")["details"]["match"], "wildcard");
}

#[test]
fn proxy_without_the_route_fails_at_dns() {
    let w = World::new(
        "stale",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    // The config under review adds a route the running proxy does not have.
    let newer = w.dir.join("newer.yaml");
    std::fs::write(
        &newer,
        format!(
            "spec:\n  infrastructure:\n    executorPrivateDNS:\n      routes:\n        - source: new.corp.test\n          destination: lb.public.test\ndnsbridge:\n  upstreams: [\"{}\"]\n",
            w.knot.addr
        ),
    )
    .unwrap();
    let mut args = common_args(&w, 443);
    args[1] = newer.display().to_string();
    let r = check(with(args, &["new.corp.test", "--json"]));
    assert_eq!(r.code, 11, "{r}");
    let t = &r.json()["targets"][0];
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=fail", "tcp=skip", "tls=skip", "api=skip"]
    );
    let dns = stage(t, "dns");
    assert_eq!(dns["details"]["rcode"], "NXDOMAIN");
    assert_eq!(dns["details"]["upstream"]["addresses"][0]["address"], "127.0.0.1");
    assert!(
        dns["fix"].as_str().unwrap().contains("does not apply this route"),
        "{dns:#}"
    );
}

#[test]
fn no_proxy_listening_fails_at_dns() {
    let dir = TempDir::new("noproxy");
    let port = free_port(LOOP);
    let r = check([
        "registry.corp.test",
        "--server",
        &format!("127.0.0.1:{port}"),
        "--timeout",
        "2s",
        "--json",
    ]);
    drop(dir);
    assert_eq!(r.code, 11, "{r}");
    let t = &r.json()["targets"][0];
    assert_eq!(t["failed_stage"], "dns");
    assert_eq!(stage(t, "route")["verdict"], "skip");
    assert!(
        stage(t, "dns")["fix"].as_str().unwrap().contains("dnsbridge serve"),
        "{r}"
    );
}

#[test]
fn credentials_needed_is_a_pass_that_names_the_variables() {
    // An IP destination: the proxy answers the address itself.
    let w = World::new(
        "auth",
        &[Route {
            source: "registry.corp.test",
            destination: "127.0.0.1",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    let (cert, key) = w.pki.leaf("registry", &["registry.corp.test"]);
    let auth = format!(
        "auth:\n  token:\n    realm: https://auth.corp.test/token\n    service: registry.corp.test\n    issuer: dnsbridge-test\n    rootcertbundle: {}\n",
        w.pki.ca.display()
    );
    let reg = Registry::start_with(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key, &auth);
    let r = check(with(
        common_args(&w, reg.addr.port()),
        &["registry.corp.test", "--json"],
    ));
    assert_eq!(r.code, 0, "{r}");
    let j = r.json();
    let t = &j["targets"][0];
    assert_eq!(t["ok"], true);
    assert_eq!(t["needs_credentials"], true);
    let dns = stage(t, "dns");
    assert_eq!(dns["details"]["chain"], serde_json::json!([]));
    assert_eq!(dns["details"]["addresses"][0]["address"], "127.0.0.1");
    let api = stage(t, "api");
    assert_eq!(api["verdict"], "pass");
    assert_eq!(api["details"]["status"], 401);
    assert_eq!(api["details"]["docker_distribution_api_version"], "registry/2.0");
    let summary = api["summary"].as_str().unwrap();
    assert!(summary.contains("DOCKER_AUTH_CONFIG"), "{summary}");
    assert!(summary.contains("https://auth.corp.test/token"), "{summary}");
    let h = check(with(common_args(&w, reg.addr.port()), &["registry.corp.test"]));
    eprintln!("{h}");
    assert!(h.stdout.contains("OK (credentials needed)"), "{h}");
}

#[test]
fn plain_http_url_skips_tls() {
    let w = World::new(
        "http",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        None,
    );
    let reg = Registry::start_plain(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)));
    let url = format!("http://registry.corp.test:{}/", reg.addr.port());
    let r = check(with(
        common_args(&w, 443),
        &[url.as_str(), "--kind", "docker", "--json"],
    ));
    assert_eq!(r.code, 0, "{r}");
    let t = &r.json()["targets"][0];
    assert_eq!(
        verdicts(t),
        ["route=pass", "dns=pass", "tcp=pass", "tls=skip", "api=pass"]
    );
    assert_eq!(t["url"], format!("http://registry.corp.test:{}/v2/", reg.addr.port()));
}

#[test]
fn large_answer_is_fetched_over_tcp() {
    // 100 addresses do not fit a 1232-byte UDP answer: TC, then TCP.
    let records: Vec<String> = (1..=100)
        .map(|i| format!("big.public.test. 120 A 127.0.1.{i}"))
        .collect();
    let w = World::new(
        "big",
        &[Route {
            source: "big.corp.test",
            destination: "big.public.test",
        }],
        &records.join("\n"),
        None,
    );
    let r = check(with(common_args(&w, free_port(LOOP)), &["big.corp.test", "--json"]));
    let t = &r.json()["targets"][0];
    let dns = stage(t, "dns");
    assert_eq!(dns["verdict"], "pass", "{r}");
    assert_eq!(dns["details"]["over_tcp"], true, "{dns:#}");
    assert_eq!(dns["details"]["addresses"].as_array().unwrap().len(), 100);
    assert!(dns["summary"].as_str().unwrap().contains("(+92 more)"), "{dns:#}");
    // Nothing listens on those addresses: TCP fails, over at most 16 of them.
    assert_eq!(r.code, 12, "{r}");
    assert_eq!(stage(t, "tcp")["details"]["addresses"].as_array().unwrap().len(), 16);
}

#[test]
fn usage_errors_exit_2() {
    let r = check(["--json"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("--config"), "{r}");
    let r = check(["registry.corp.test", "--config", "/nonexistent/config.yaml"]);
    assert_eq!(r.code, 2, "{r}");
    let r = check([
        "registry.corp.test",
        "--ca-file",
        "/nonexistent/ca.pem",
        "--server",
        "127.0.0.1:9",
    ]);
    assert_eq!(r.code, 2, "{r}");
    let r = check(["registry.corp.test", "--kind", "rubygems"]);
    assert_eq!(r.code, 2, "{r}");
    let r = check(["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("Exit codes") && r.stdout.contains("13  tls"), "{r}");
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Writes an OCI image layout with one layer holding `hello.txt` and a
/// config carrying `token`; returns the manifest digest.
fn make_oci_layout(dir: &Path, token: &str) -> String {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), format!("hello from {token}\n")).unwrap();
    let blobs = dir.join("image/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tar = dir.join("layer.tar");
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg("hello.txt"),
    );
    let diff_id = sha256(&tar);
    run_ok(Command::new("gzip").arg("-n").arg("-k").arg(&tar));
    let gz = dir.join("layer.tar.gz");
    let layer_digest = sha256(&gz);
    let layer_size = std::fs::metadata(&gz).unwrap().len();
    std::fs::copy(&gz, blobs.join(&layer_digest)).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let tmp = dir.join("blob.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        let d = sha256(&tmp);
        std::fs::rename(&tmp, blobs.join(&d)).unwrap();
        (d, bytes.len())
    };
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Labels": { "dnsbridge.test.token": token } },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let (cfg_digest, cfg_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cfg_digest}"), "size": cfg_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
    });
    let (man_digest, man_size) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{man_digest}"), "size": man_size,
            "annotations": { "org.opencontainers.image.ref.name": "v1" },
        }],
    });
    std::fs::write(dir.join("image/index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("image/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    format!("sha256:{man_digest}")
}

/// Runs `script` with /etc/resolv.conf replaced by `resolv` in a private
/// mount namespace, so that names resolve through the proxy only.
fn in_namespace(resolv: &Path, script: &str) -> std::process::Output {
    Command::new("unshare")
        .arg("-m")
        .arg("sh")
        .arg("-ec")
        .arg(format!("mount --bind {} /etc/resolv.conf\n{script}", resolv.display()))
        .output()
        .unwrap()
}

#[test]
fn image_pushed_and_pulled_through_the_private_name() {
    // The proxy must listen on port 53: /etc/resolv.conf has no port.
    let ip = IpAddr::V4(Ipv4Addr::new(127, 77, 53, (std::process::id() % 200) as u8 + 1));
    let listen = SocketAddr::new(ip, 53);
    let w = World::new(
        "pull",
        &[Route {
            source: "registry.corp.test",
            destination: "lb.public.test",
        }],
        "lb.public.test. 120 A 127.0.0.1",
        Some(listen),
    );
    assert_eq!(w.server, listen);
    let (cert, key) = w.pki.leaf("registry", &["registry.corp.test"]);
    let reg = Registry::start(w.dir.path(), SocketAddr::new(LOOP, free_port(LOOP)), &cert, &key);
    let port = reg.addr.port();

    // The check agrees first.
    let r = check(with(common_args(&w, port), &["registry.corp.test", "--json"]));
    assert_eq!(r.code, 0, "{r}");

    let token = format!("token-{}-{port}", std::process::id());
    let digest = make_oci_layout(w.dir.path(), &token);
    let certs = w.dir.join("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&w.pki.ca, certs.join("ca.crt")).unwrap();
    let resolv = w.dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {ip}\noptions timeout:2 attempts:2\n")).unwrap();
    let image = format!("docker://registry.corp.test:{port}/demo/hello:v1");
    let out_dir = w.dir.join("pulled");
    let script = format!(
        "getent hosts registry.corp.test\n\
         skopeo --insecure-policy copy --dest-cert-dir {certs} oci:{layout}:v1 {image}\n\
         skopeo inspect --cert-dir {certs} --raw {image} > {dir}/manifest.json\n\
         skopeo inspect --cert-dir {certs} --config {image} > {dir}/config.json\n\
         skopeo --insecure-policy copy --src-cert-dir {certs} {image} oci:{out}:v1\n",
        certs = certs.display(),
        layout = w.dir.join("image").display(),
        dir = w.dir.path().display(),
        out = out_dir.display(),
    );
    let o = in_namespace(&resolv, &script);
    assert!(
        o.status.success(),
        "push/pull failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // getent resolved the private name to the registry's address through the proxy.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("127.0.0.1"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let manifest = std::fs::read(w.dir.join("manifest.json")).unwrap();
    let m: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(m["schemaVersion"], 2);
    let config = std::fs::read_to_string(w.dir.join("config.json")).unwrap();
    assert!(config.contains(&token), "pulled config: {config}");
    // The pulled layout holds the manifest that was pushed.
    let pulled_index = std::fs::read_to_string(out_dir.join("index.json")).unwrap();
    assert!(
        pulled_index.contains(&digest),
        "pushed {digest}, pulled index {pulled_index}"
    );
}
