//! Test world for `dnsbridge check`: a test CA and certificates made with
//! openssl, a knot authoritative server, the dnsbridge proxy in front of it,
//! and docker-registry serving TLS, all on loopback, all torn down on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use dnsbridge::name::Name;

pub const LOOP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "dnsbridge-check-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("CHECK_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free on `ip` for both TCP and UDP at the time of the call.
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind((ip, 0)).unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// Waits until something accepts TCP on `addr` (bounded).
pub fn wait_tcp(addr: SocketAddr, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} does not accept TCP on {addr}");
}

/// Waits until `server` answers a DNS query for `name` (bounded).
pub fn wait_dns(server: SocketAddr, name: &str, what: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let n = Name::parse(name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let r = rt.block_on(dnsbridge::check::dns::query(
            server,
            &n,
            dnsbridge::wire::rtype::SOA,
            Duration::from_millis(300),
        ));
        if r.is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} does not answer DNS on {server}");
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A test CA and leaf certificates signed by it.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    ca_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                ])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca)
                .args([
                    "-days",
                    "30",
                    "-subj",
                    "/CN=dnsbridge check test CA",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ]),
        );
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
        }
    }

    /// A server certificate for `names` (the first is the CN); returns (cert, key).
    pub fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = self.dir.join(format!("{stem}.key"));
        let csr = self.dir.join(format!("{stem}.csr"));
        let cert = self.dir.join(format!("{stem}.pem"));
        let ext = self.dir.join(format!("{stem}.ext"));
        let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .unwrap();
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .arg("-subj")
                .arg(format!("/CN={}", names[0])),
        );
        run_ok(
            Command::new("openssl")
                .args([
                    "x509",
                    "-req",
                    "-days",
                    "30",
                    "-set_serial",
                    &format!("{}", std::process::id() as u64 * 1000 + stem.len() as u64),
                ])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&self.ca)
                .arg("-CAkey")
                .arg(&self.ca_key)
                .arg("-out")
                .arg(&cert)
                .arg("-extfile")
                .arg(&ext),
        );
        (cert, key)
    }
}

/// knot serving zones on `addr`.
pub struct Knot {
    pub addr: SocketAddr,
    _proc: Proc,
}

impl Knot {
    /// `zones`: (origin, records after the SOA and NS, in zone-file syntax).
    pub fn start(dir: &Path, addr: SocketAddr, zones: &[(&str, String)]) -> Knot {
        let kdir = dir.join("knot");
        std::fs::create_dir_all(&kdir).unwrap();
        let mut conf = format!(
            "server:\n    rundir: \"{d}\"\n    listen: {ip}@{port}\n\ndatabase:\n    storage: \"{d}\"\n\nlog:\n  - target: stderr\n    any: warning\n\ntemplate:\n  - id: default\n    storage: \"{d}\"\n    semantic-checks: off\n    zonefile-sync: -1\n    journal-content: none\n\nzone:\n",
            d = kdir.display(),
            ip = addr.ip(),
            port = addr.port()
        );
        for (origin, records) in zones {
            let file = kdir.join(format!("{origin}.zone"));
            std::fs::write(
                &file,
                format!(
                    "$ORIGIN {origin}.\n$TTL 300\n@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n@ NS ns.{origin}.\nns A 127.0.0.1\n{records}\n"
                ),
            )
            .unwrap();
            conf.push_str(&format!("  - domain: {origin}\n    file: \"{}\"\n", file.display()));
        }
        let conf_path = kdir.join("knot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("knotd")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("knotd (Debian package knot) must be installed");
        let k = Knot {
            addr,
            _proc: Proc { child, name: "knotd" },
        };
        wait_dns(addr, zones[0].0, "knotd");
        k
    }
}

/// `dnsbridge serve` in front of knot.
pub struct Proxy {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _proc: Proc,
}

pub fn dnsbridge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dnsbridge"))
}

impl Proxy {
    pub fn start(config: &Path, listen: SocketAddr, upstream: SocketAddr) -> Proxy {
        let mut child = Command::new(dnsbridge_bin())
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--upstream")
            .arg(upstream.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("bound udp ") {
                        let rest = &line[i + "bound udp ".len()..];
                        let addr: String = rest
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != ',')
                            .collect();
                        if let Ok(a) = addr.parse::<SocketAddr>() {
                            let _ = tx.send(a);
                        }
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let proc = Proc {
            child,
            name: "dnsbridge serve",
        };
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => panic!(
                "dnsbridge serve did not log `bound udp ADDR`; its stderr:\n{}",
                log.lock().unwrap().join("\n")
            ),
        };
        Proxy { addr, log, _proc: proc }
    }
}

/// docker-registry serving TLS on `addr` with the given certificate.
pub struct Registry {
    pub addr: SocketAddr,
    _proc: Proc,
}

impl Registry {
    pub fn start(dir: &Path, addr: SocketAddr, cert: &Path, key: &Path) -> Registry {
        Registry::start_with(dir, addr, cert, key, "")
    }

    /// Plain HTTP, no TLS.
    pub fn start_plain(dir: &Path, addr: SocketAddr) -> Registry {
        Registry::spawn(dir, addr, String::new())
    }

    /// `extra`: more top-level YAML for the registry's config (such as `auth:`).
    pub fn start_with(dir: &Path, addr: SocketAddr, cert: &Path, key: &Path, extra: &str) -> Registry {
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n{extra}",
            cert.display(),
            key.display()
        );
        Registry::spawn(dir, addr, tls)
    }

    fn spawn(dir: &Path, addr: SocketAddr, tail: String) -> Registry {
        let rdir = dir.join(format!("registry-{}", addr.port()));
        std::fs::create_dir_all(rdir.join("data")).unwrap();
        let conf = rdir.join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{tail}",
                rdir.join("data").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        wait_tcp(addr, "docker-registry", &mut child);
        Registry {
            addr,
            _proc: Proc {
                child,
                name: "docker-registry",
            },
        }
    }
}

/// `openssl s_server -www`: TLS, answers every GET with a 200 status page, no registry.
pub struct NotARegistry {
    pub addr: SocketAddr,
    _proc: Proc,
}

impl NotARegistry {
    pub fn start(addr: SocketAddr, cert: &Path, key: &Path) -> NotARegistry {
        let mut child = Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-naccept", "50"])
            .arg("-accept")
            .arg(addr.to_string())
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_tcp(addr, "openssl s_server", &mut child);
        NotARegistry {
            addr,
            _proc: Proc {
                child,
                name: "openssl s_server",
            },
        }
    }
}

/// A route for the test config.
pub struct Route<'a> {
    pub source: &'a str,
    pub destination: &'a str,
}

/// knot upstream + dnsbridge proxy + config.
pub struct World {
    pub dir: TempDir,
    pub pki: Pki,
    pub knot: Knot,
    pub proxy: Proxy,
    /// What `check --server` gets: the proxy.
    pub server: SocketAddr,
    pub config: PathBuf,
}

impl World {
    /// `public`: zone-file records with absolute owner names under
    /// public.test (the load balancers' names). Upstream, the private names
    /// under corp.test do not exist: NXDOMAIN unless a route catches them. `listen` is the proxy's
    /// address (None: 127.0.0.1:0).
    pub fn new(tag: &str, routes: &[Route], public: &str, listen: Option<SocketAddr>) -> World {
        let dir = TempDir::new(tag);
        let pki = Pki::new(dir.path());
        let knot_addr = SocketAddr::new(LOOP, free_port(LOOP));
        // One zone, `test.`, holds the public names; the private names under
        // corp.test do not exist upstream.
        let knot = Knot::start(dir.path(), knot_addr, &[("test", public.to_string())]);
        let mut yaml = String::from(
            "spec:\n  infrastructure:\n    executorPrivateDNS:\n      proxyTag: 202311201628\n      routes:\n",
        );
        for r in routes {
            yaml.push_str(&format!(
                "        - source: \"{}\"\n          destination: \"{}\"\n",
                r.source, r.destination
            ));
        }
        yaml.push_str(&format!("dnsbridge:\n  upstreams: [\"{}\"]\n", knot.addr));
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).unwrap();
        let proxy = Proxy::start(&config, listen.unwrap_or(SocketAddr::new(LOOP, 0)), knot.addr);
        let server = proxy.addr;
        wait_dns(server, "test", "dnsbridge serve");
        World {
            dir,
            pki,
            knot,
            proxy,
            server,
            config,
        }
    }
}

/// The binary that runs `check`.
pub fn check_bin() -> PathBuf {
    dnsbridge_bin()
}

pub struct CheckRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CheckRun {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

impl std::fmt::Display for CheckRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `dnsbridge check ARGS`.
pub fn check<I, S>(args: I) -> CheckRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    check_env(args, &[])
}

/// Runs `dnsbridge check ARGS` with extra environment variables.
pub fn check_env<I, S>(args: I, env: &[(&str, &std::ffi::OsStr)]) -> CheckRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(check_bin())
        .arg("check")
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    CheckRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
