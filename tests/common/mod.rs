//! Test harness shared by the integration tests.
//!
//! - [`Knot`]: a real authoritative server (`knotd` from Debian) on a loopback
//!   address, serving zones given as text, in a temporary directory.
//! - [`Proxy`]: the built `dnsbridge` binary, with its log captured and the
//!   addresses it bound read from that log.
//! - [`FakeUpstream`]: a scripted DNS server in this process, for upstream
//!   behaviour knot does not have (AD set, odd OPT records, truncation over UDP).
//! - Clients: [`dig`] (the real `dig`), raw UDP/TCP exchanges, a query builder on
//!   hickory-proto and a small wire reader ([`Wire`]) for the details that clients
//!   hide (exact question bytes, TTLs, flags, OPT records).
//!
//! Network rule: everything here talks only to loopback addresses.
#![allow(dead_code, unused_imports)]

use std::collections::HashSet;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
pub use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use tempfile::TempDir;

/// Upper bound for any "wait until ready" loop in the harness.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of a single raw exchange.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const LOCALHOST2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

fn handed_out() -> &'static Mutex<HashSet<(IpAddr, u16)>> {
    static PORTS: OnceLock<Mutex<HashSet<(IpAddr, u16)>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A port on `ip` that is free for both UDP and TCP right now (bind port 0, then
/// release). A port is never handed out twice by one test process, so parallel
/// tests of one binary do not collide.
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..200 {
        let udp = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind udp {ip}:0: {e}"));
        let port = udp.local_addr().unwrap().port();
        let Ok(tcp) = TcpListener::bind((ip, port)) else {
            continue;
        };
        drop(tcp);
        drop(udp);
        if handed_out().lock().unwrap().insert((ip, port)) {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A free `ip:port` socket address (see [`free_port`]).
pub fn free_addr(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, free_port(ip))
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Finds a program on PATH or in the sbin directories (knotd lives in /usr/sbin,
/// which is not on a normal user's PATH).
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .into_iter()
            .map(PathBuf::from),
    );
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` not found: run scripts/install-deps.sh (as root) first");
}

/// Runs a command to completion, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().unwrap();
            eprintln!("killed after {timeout:?}: {desc}");
            break status;
        }
        thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// True when the tests run as root (needed for port 53 and mount namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: returns false (after saying so) when they must be
/// skipped. Under CI (`CI` set) a missing privilege is a failure, not a skip.
pub fn require_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} needs root, and CI is set: run the suite as root");
    }
    eprintln!("SKIPPED: {what} needs root");
    false
}

// ---------------------------------------------------------------------------
// Knot: an authoritative server
// ---------------------------------------------------------------------------

/// A zone for [`Knot`]: its origin and the zone file text. The text is
/// preceded by `$ORIGIN <origin>` and `$TTL 3600`, so relative names work.
#[derive(Clone, Debug)]
pub struct Zone {
    pub origin: String,
    pub text: String,
}

pub fn zone(origin: &str, text: &str) -> Zone {
    let mut origin = origin.to_string();
    if !origin.ends_with('.') {
        origin.push('.');
    }
    Zone {
        origin,
        text: text.to_string(),
    }
}

/// `knotd` running in the foreground as an authoritative server on one
/// loopback address and port, with everything it writes in a temp dir.
/// Killed on drop.
pub struct Knot {
    addr: SocketAddr,
    dir: TempDir,
    conf: PathBuf,
    log_path: PathBuf,
    zones: Vec<Zone>,
    child: Option<Child>,
}

impl Knot {
    /// Serves `zones` on 127.0.0.1 at a free port.
    pub fn serve(zones: &[Zone]) -> Knot {
        Knot::serve_at(LOCALHOST, zones)
    }

    /// Serves `zones` on `ip` at a free port.
    pub fn serve_at(ip: IpAddr, zones: &[Zone]) -> Knot {
        Knot::serve_on(free_addr(ip), zones)
    }

    /// Serves `zones` on exactly `addr`.
    pub fn serve_on(addr: SocketAddr, zones: &[Zone]) -> Knot {
        let dir = tempfile::Builder::new()
            .prefix("knot")
            .tempdir()
            .expect("temp dir for knot");
        let root = dir.path();
        for sub in ["run", "db", "zones"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let listen = match addr {
            SocketAddr::V4(a) => format!("{}@{}", a.ip(), a.port()),
            SocketAddr::V6(a) => format!("{}@{}", a.ip(), a.port()),
        };
        let mut conf = format!(
            "server:\n\
             \x20   rundir: \"{root}/run\"\n\
             \x20   listen: [ \"{listen}\" ]\n\
             \x20   udp-workers: 1\n\
             \x20   tcp-workers: 1\n\
             \x20   background-workers: 1\n\
             log:\n\
             \x20 - target: stderr\n\
             \x20   any: info\n\
             database:\n\
             \x20   storage: \"{root}/db\"\n\
             template:\n\
             \x20 - id: default\n\
             \x20   storage: \"{root}/zones\"\n\
             \x20   journal-content: none\n\
             \x20   zonefile-sync: -1\n\
             \x20   zonefile-load: whole\n\
             \x20   semantic-checks: off\n\
             zone:\n",
            root = root.display(),
        );
        for (i, z) in zones.iter().enumerate() {
            let file = root.join("zones").join(format!("{i}.zone"));
            std::fs::write(&file, format!("$ORIGIN {}\n$TTL 3600\n{}\n", z.origin, z.text)).unwrap();
            conf.push_str(&format!(
                "  - domain: \"{}\"\n    file: \"{}\"\n",
                z.origin,
                file.display()
            ));
        }
        let conf_path = root.join("knot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut knot = Knot {
            addr,
            log_path: root.join("knot.log"),
            conf: conf_path,
            dir,
            zones: zones.to_vec(),
            child: None,
        };
        knot.start();
        knot
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port`, as a `--upstream` or `resolverIP` value.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// (Re)starts knotd on the same address, port and zones, and waits until
    /// every zone answers an SOA query.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "knot already running on {}", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let child = Command::new(find_program("knotd"))
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn knotd");
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<Zone> = self.zones.clone();
        while !pending.is_empty() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "knotd on {} exited ({status}) while starting:\n{}",
                    self.addr,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "knotd on {} did not answer SOA queries within {:?}:\n{}",
                    self.addr,
                    READY_TIMEOUT,
                    self.log()
                );
            }
            pending.retain(|z| !self.zone_answers(&z.origin));
            if !pending.is_empty() {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn zone_answers(&self, origin: &str) -> bool {
        let q = QueryBuilder::new(origin, RecordType::SOA).rd(false).build();
        match udp_exchange(self.addr, &q, Duration::from_millis(200)) {
            Ok(reply) => {
                let w = Wire::parse(&reply);
                w.rcode() == 0 && w.aa() && w.answers().iter().any(|r| r.rtype == u16::from(RecordType::SOA))
            }
            Err(_) => false,
        }
    }

    /// Kills knotd (SIGKILL) and waits for it; the address stays reserved for
    /// [`Knot::start`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Everything knotd logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "---- knotd log ({}) ----\n{}---- end of knotd log ----",
                self.addr,
                self.log()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Proxy: the dnsbridge binary
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Captured {
    lines: Vec<(Stream, String)>,
    open_streams: usize,
}

#[derive(Default)]
struct LogBuf {
    inner: Mutex<Captured>,
    cond: Condvar,
}

impl LogBuf {
    fn text(&self) -> String {
        let inner = self.inner.lock().unwrap();
        let mut s = String::new();
        for (stream, line) in &inner.lines {
            if *stream == Stream::Stdout {
                s.push_str("[stdout] ");
            }
            s.push_str(line);
            s.push('\n');
        }
        s
    }
}

fn capture(log: Arc<LogBuf>, stream: Stream, pipe: impl Read + Send + 'static) -> JoinHandle<()> {
    log.inner.lock().unwrap().open_streams += 1;
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                    log.inner.lock().unwrap().lines.push((stream, line));
                    log.cond.notify_all();
                }
            }
        }
        log.inner.lock().unwrap().open_streams -= 1;
        log.cond.notify_all();
    })
}

/// Removes ANSI colour escapes (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Reads a `bound udp ADDR` / `bound tcp ADDR` log line (the contract between
/// the binary and this harness): the address token follows right after.
pub fn parse_bound_line(line: &str) -> Option<(Transport, SocketAddr)> {
    let line = strip_ansi(line);
    for (marker, transport) in [("bound udp ", Transport::Udp), ("bound tcp ", Transport::Tcp)] {
        if let Some(pos) = line.find(marker) {
            let rest = &line[pos + marker.len()..];
            let token = rest.split_whitespace().next()?;
            let token = token.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ';' | ')' | '('));
            return token.parse().ok().map(|a| (transport, a));
        }
    }
    None
}

/// The `dnsbridge` binary built by cargo for these tests.
pub fn dnsbridge_bin() -> &'static str {
    env!("CARGO_BIN_EXE_dnsbridge")
}

/// A running `dnsbridge` (or any program following the same log contract),
/// with stdout and stderr captured. Killed on drop; its log is printed when the
/// test is failing.
pub struct Proxy {
    child: Child,
    desc: String,
    log: Arc<LogBuf>,
    readers: Vec<JoinHandle<()>>,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
}

impl Proxy {
    /// Starts `dnsbridge ARGS...` and waits (up to 10 s) until it has logged
    /// one `bound udp` and one `bound tcp` line per `--listen` argument (one
    /// each without `--listen`). Panics, with the log, if it does not.
    pub fn start(args: &[&str]) -> Proxy {
        Proxy::spawn(dnsbridge_bin(), args, READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Proxy::start`] for any program.
    pub fn spawn(program: &str, args: &[&str], timeout: Duration) -> Result<Proxy, String> {
        let listens = args
            .iter()
            .filter(|a| **a == "--listen" || a.starts_with("--listen="))
            .count();
        let expected = listens.max(1);
        let mut proxy = Proxy::launch(program, args)?;
        let deadline = Instant::now() + timeout;
        let mut inner = proxy.log.inner.lock().unwrap();
        loop {
            let mut udp = Vec::new();
            let mut tcp = Vec::new();
            for (stream, line) in &inner.lines {
                if *stream != Stream::Stderr {
                    continue;
                }
                match parse_bound_line(line) {
                    Some((Transport::Udp, a)) => udp.push(a),
                    Some((Transport::Tcp, a)) => tcp.push(a),
                    None => {}
                }
            }
            if udp.len() >= expected && tcp.len() >= expected {
                drop(inner);
                proxy.udp = udp;
                proxy.tcp = tcp;
                return Ok(proxy);
            }
            let exited = proxy.child.try_wait().ok().flatten();
            if let Some(status) = exited.filter(|_| inner.open_streams == 0) {
                drop(inner);
                return Err(format!(
                    "{} exited ({}) before logging its bound addresses \
                     (expected {expected} `bound udp ADDR` and `bound tcp ADDR` lines on stderr):\n{}",
                    proxy.desc,
                    status,
                    proxy.log.text()
                ));
            }
            let now = Instant::now();
            if now > deadline {
                drop(inner);
                return Err(format!(
                    "{} did not log {expected} `bound udp ADDR` and `bound tcp ADDR` line(s) \
                     on stderr within {timeout:?}:\n{}",
                    proxy.desc,
                    proxy.log.text()
                ));
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            inner = proxy.log.cond.wait_timeout(inner, wait).unwrap().0;
        }
    }

    fn launch(program: &str, args: &[&str]) -> Result<Proxy, String> {
        let desc = format!("`{} {}`", program, args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {desc}: {e}"))?;
        let log = Arc::new(LogBuf::default());
        let readers = vec![
            capture(log.clone(), Stream::Stdout, child.stdout.take().unwrap()),
            capture(log.clone(), Stream::Stderr, child.stderr.take().unwrap()),
        ];
        Ok(Proxy {
            child,
            desc,
            log,
            readers,
            udp: Vec::new(),
            tcp: Vec::new(),
        })
    }

    /// Runs `dnsbridge ARGS...` expecting it to exit by itself within
    /// `timeout`. Returns its exit status (None if it had to be killed) and log.
    pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
        let mut p = Proxy::launch(dnsbridge_bin(), args).unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            thread::sleep(Duration::from_millis(10));
        };
        if status.is_none() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for r in p.readers.drain(..) {
            let _ = r.join();
        }
        (status, p.log.text())
    }

    /// First UDP listener.
    pub fn udp(&self) -> SocketAddr {
        self.udp[0]
    }

    /// First TCP listener.
    pub fn tcp(&self) -> SocketAddr {
        self.tcp[0]
    }

    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// The captured output so far (stdout lines prefixed with `[stdout] `).
    pub fn log(&self) -> String {
        self.log.text()
    }

    /// Waits until a captured line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(needle, 0, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "---- log of {} ----\n{}---- end of log ----",
                self.desc,
                self.log.text()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------

/// A config file in its own temp dir, removed on drop.
pub struct ConfigFile {
    _dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path as a string, for `--config`.
    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

/// Writes `yaml` to a fresh `config.yaml`.
pub fn write_config(yaml: &str) -> ConfigFile {
    let dir = tempfile::Builder::new().prefix("dnsbridge-config").tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    ConfigFile { _dir: dir, path }
}

// ---------------------------------------------------------------------------
// dig
// ---------------------------------------------------------------------------

/// Runs the real `dig @server -p PORT +tries=1 +time=2 ARGS...` and returns its
/// standard output (standard error appended when not empty).
pub fn dig(server: SocketAddr, args: &[&str]) -> String {
    let mut cmd = Command::new(find_program("dig"));
    cmd.arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+tries=1", "+time=2"])
        .args(args);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.stderr.is_empty() {
        s.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    s
}

/// [`dig`], parsed. Panics (with the output) if dig got no answer.
pub fn dig_parsed(server: SocketAddr, args: &[&str]) -> DigReply {
    let out = dig(server, args);
    DigReply::parse(&out).unwrap_or_else(|e| panic!("dig {args:?} @{server}: {e}:\n{out}"))
}

/// One resource record line of dig output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigRecord {
    /// Owner name as printed (fully qualified, letter case as received).
    pub name: String,
    pub ttl: u32,
    pub class: String,
    pub rtype: String,
    /// Everything after the type, fields separated by one space.
    pub rdata: String,
}

impl DigRecord {
    /// (lower-case owner, type, lower-case rdata): for order-sensitive
    /// comparisons that ignore TTL and letter case.
    pub fn key(&self) -> (String, String, String) {
        (
            self.name.to_ascii_lowercase(),
            self.rtype.clone(),
            self.rdata.to_ascii_lowercase(),
        )
    }
}

impl fmt::Display for DigRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {}",
            self.name, self.ttl, self.class, self.rtype, self.rdata
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigOpt {
    pub version: u8,
    pub flags: Vec<String>,
    pub udp: u16,
}

/// What dig printed about one reply.
#[derive(Clone, Debug, Default)]
pub struct DigReply {
    pub raw: String,
    pub opcode: String,
    pub status: String,
    pub id: u16,
    pub flags: Vec<String>,
    pub opt: Option<DigOpt>,
    pub question: Vec<String>,
    pub answer: Vec<DigRecord>,
    pub authority: Vec<DigRecord>,
    pub additional: Vec<DigRecord>,
}

impl DigReply {
    pub fn parse(out: &str) -> Result<DigReply, String> {
        let mut r = DigReply {
            raw: out.to_string(),
            ..Default::default()
        };
        let mut header_seen = false;
        #[derive(PartialEq)]
        enum Sec {
            None,
            Question,
            Answer,
            Authority,
            Additional,
        }
        let mut sec = Sec::None;
        for line in out.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix(";; ->>HEADER<<- ") {
                // A later header (dig retried, e.g. over TCP) replaces the earlier one.
                r = DigReply {
                    raw: out.to_string(),
                    ..Default::default()
                };
                header_seen = true;
                sec = Sec::None;
                for part in rest.split(", ") {
                    if let Some(v) = part.strip_prefix("opcode: ") {
                        r.opcode = v.to_string();
                    } else if let Some(v) = part.strip_prefix("status: ") {
                        r.status = v.to_string();
                    } else if let Some(v) = part.strip_prefix("id: ") {
                        r.id = v.trim().parse().unwrap_or(0);
                    }
                }
                continue;
            }
            if let Some(rest) = t.strip_prefix(";; flags:") {
                let flags = rest.split(';').next().unwrap_or("");
                r.flags = flags.split_whitespace().map(str::to_string).collect();
                continue;
            }
            if let Some(rest) = t.strip_prefix("; EDNS: ") {
                let mut opt = DigOpt {
                    version: 0,
                    flags: Vec::new(),
                    udp: 0,
                };
                for part in rest.split(';') {
                    let part = part.trim();
                    if let Some(v) = part.strip_prefix("udp: ") {
                        opt.udp = v.trim().parse().unwrap_or(0);
                    } else {
                        for sub in part.split(", ") {
                            if let Some(v) = sub.strip_prefix("version: ") {
                                opt.version = v.trim().parse().unwrap_or(0);
                            } else if let Some(v) = sub.strip_prefix("flags:") {
                                opt.flags = v.split_whitespace().map(str::to_string).collect();
                            }
                        }
                    }
                }
                r.opt = Some(opt);
                continue;
            }
            match t {
                ";; QUESTION SECTION:" => {
                    sec = Sec::Question;
                    continue;
                }
                ";; ANSWER SECTION:" => {
                    sec = Sec::Answer;
                    continue;
                }
                ";; AUTHORITY SECTION:" => {
                    sec = Sec::Authority;
                    continue;
                }
                ";; ADDITIONAL SECTION:" => {
                    sec = Sec::Additional;
                    continue;
                }
                _ => {}
            }
            if t.is_empty() || (t.starts_with(";;") && sec != Sec::None) {
                sec = Sec::None;
                continue;
            }
            match sec {
                Sec::Question => {
                    r.question.push(t.trim_start_matches(';').to_string());
                }
                Sec::Answer | Sec::Authority | Sec::Additional => {
                    if t.starts_with(';') {
                        continue;
                    }
                    let rec = parse_dig_record(t).ok_or_else(|| format!("bad record line `{t}`"))?;
                    match sec {
                        Sec::Answer => r.answer.push(rec),
                        Sec::Authority => r.authority.push(rec),
                        _ => r.additional.push(rec),
                    }
                }
                Sec::None => {}
            }
        }
        if !header_seen {
            return Err("no reply".to_string());
        }
        Ok(r)
    }

    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// rdata of the answer records of type `rtype`, in order.
    pub fn answer_rdata(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.rdata.clone())
            .collect()
    }

    /// [`DigRecord::key`] of every answer record, in order.
    pub fn answer_keys(&self) -> Vec<(String, String, String)> {
        self.answer.iter().map(DigRecord::key).collect()
    }

    /// The SOA records of the authority section.
    pub fn authority_soa(&self) -> Vec<&DigRecord> {
        self.authority.iter().filter(|r| r.rtype == "SOA").collect()
    }
}

fn parse_dig_record(line: &str) -> Option<DigRecord> {
    let mut it = line.split_whitespace();
    let name = it.next()?.to_string();
    let ttl = it.next()?.parse().ok()?;
    let class = it.next()?.to_string();
    let rtype = it.next()?.to_string();
    let rdata = it.collect::<Vec<_>>().join(" ");
    Some(DigRecord {
        name,
        ttl,
        class,
        rtype,
        rdata,
    })
}

// ---------------------------------------------------------------------------
// Raw exchanges
// ---------------------------------------------------------------------------

fn unspecified_like(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => LOCALHOST,
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn assert_local(addr: &SocketAddr) {
    assert!(
        addr.ip().is_loopback(),
        "network rule: tests only send to loopback, not to {addr}"
    );
}

/// A UDP socket bound to `local:0`.
pub fn udp_socket(local: IpAddr) -> UdpSocket {
    UdpSocket::bind((local, 0)).unwrap_or_else(|e| panic!("bind udp {local}:0: {e}"))
}

/// Sends `query` over UDP from 127.0.0.1 (or ::1) and returns the first reply
/// whose ID matches the query's (any reply if the query is shorter than 2 bytes).
pub fn udp_exchange(server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    udp_exchange_from(unspecified_like(&server), server, query, timeout)
}

/// [`udp_exchange`] from a socket bound to `local` (e.g. 127.0.0.2).
pub fn udp_exchange_from(local: IpAddr, server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    assert_local(&server);
    let sock = UdpSocket::bind((local, 0))?;
    sock.send_to(query, server)?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65535];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no UDP reply"));
        }
        sock.set_read_timeout(Some(deadline - now))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no UDP reply"));
            }
            Err(e) => return Err(e),
        };
        if from != server {
            continue;
        }
        if query.len() < 2 || (n >= 2 && buf[..2] == query[..2]) {
            return Ok(buf[..n].to_vec());
        }
    }
}

/// Sends one datagram and does not wait for anything.
pub fn udp_send(sock: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> io::Result<usize> {
    assert_local(&server);
    sock.send_to(bytes, server)
}

fn tcp_connect(local: Option<IpAddr>, server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    assert_local(&server);
    let stream = match local {
        None => TcpStream::connect_timeout(&server, timeout)?,
        Some(ip) => {
            let domain = socket2::Domain::for_address(server);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            s.bind(&SocketAddr::new(ip, 0).into())?;
            s.connect_timeout(&server.into(), timeout)?;
            s.into()
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends `query` over a new TCP connection (2-byte length prefix) and returns
/// the reply message.
pub fn tcp_exchange(server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut s = tcp_connect(None, server, timeout)?;
    tcp_send_msg(&mut s, query)?;
    tcp_read_msg(&mut s)
}

/// [`tcp_exchange`] from a socket bound to `local`.
pub fn tcp_exchange_from(local: IpAddr, server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let mut s = tcp_connect(Some(local), server, timeout)?;
    tcp_send_msg(&mut s, query)?;
    tcp_read_msg(&mut s)
}

/// A connected TCP stream to `server` with read/write timeouts set.
pub fn tcp_stream(server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    tcp_connect(None, server, timeout)
}

/// Writes one length-prefixed message.
pub fn tcp_send_msg(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    framed.extend_from_slice(msg);
    s.write_all(&framed)
}

/// Reads one length-prefixed message.
pub fn tcp_read_msg(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg)?;
    Ok(msg)
}

// ---------------------------------------------------------------------------
// Building queries (hickory-proto)
// ---------------------------------------------------------------------------

/// Builds a query message with exact control of the name's letter case, the
/// ID, the header flags and the OPT record.
#[derive(Clone, Debug)]
pub struct QueryBuilder {
    name: String,
    qtype: RecordType,
    id: u16,
    rd: bool,
    cd: bool,
    ad: bool,
    opcode: OpCode,
    edns: Option<(u16, bool)>,
}

impl QueryBuilder {
    /// A standard query, RD set, no EDNS, ID 0x2b2b.
    pub fn new(name: &str, qtype: RecordType) -> QueryBuilder {
        QueryBuilder {
            name: name.to_string(),
            qtype,
            id: 0x2b2b,
            rd: true,
            cd: false,
            ad: false,
            opcode: OpCode::Query,
            edns: None,
        }
    }
    pub fn id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }
    pub fn rd(mut self, on: bool) -> Self {
        self.rd = on;
        self
    }
    pub fn cd(mut self, on: bool) -> Self {
        self.cd = on;
        self
    }
    pub fn ad(mut self, on: bool) -> Self {
        self.ad = on;
        self
    }
    pub fn opcode(mut self, op: OpCode) -> Self {
        self.opcode = op;
        self
    }
    /// Adds an OPT record with this UDP payload size and DO bit.
    pub fn edns(mut self, payload: u16, dnssec_ok: bool) -> Self {
        self.edns = Some((payload, dnssec_ok));
        self
    }
    pub fn message(&self) -> Message {
        let mut name = Name::from_ascii(&self.name).unwrap_or_else(|e| panic!("name {}: {e}", self.name));
        name.set_fqdn(true);
        let mut m = Message::new(self.id, MessageType::Query, self.opcode);
        m.metadata.recursion_desired = self.rd;
        m.metadata.checking_disabled = self.cd;
        m.metadata.authentic_data = self.ad;
        m.add_query(Query::query(name, self.qtype));
        if let Some((payload, dnssec_ok)) = self.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            edns.set_dnssec_ok(dnssec_ok);
            m.set_edns(edns);
        }
        m
    }
    pub fn build(&self) -> Vec<u8> {
        let bytes = self.message().to_vec().expect("encode query");
        // The wire must carry the name exactly as written (letter case included).
        let w = Wire::parse(&bytes);
        assert_eq!(
            w.question_name().unwrap(),
            fqdn(&self.name),
            "query builder changed the name"
        );
        bytes
    }
}

/// `name` with exactly one trailing dot.
pub fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Parses a message with hickory-proto (panics with a hex dump if it cannot).
pub fn parse_message(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap_or_else(|e| panic!("cannot parse reply ({e}): {}", hex(bytes)))
}

/// Builds the skeleton of a reply to `query` (same ID, opcode, question, RD
/// and CD copied, QR set), for [`FakeUpstream`] handlers.
pub fn reply_to(query: &[u8]) -> Message {
    let q = parse_message(query);
    let mut m = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.checking_disabled = q.metadata.checking_disabled;
    m.metadata.recursion_available = true;
    for query in q.queries {
        m.add_query(query);
    }
    m
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// Reading messages byte by byte
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// One resource record as it is on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRecord {
    pub section: Section,
    /// Owner name, decompressed, letter case kept, with a trailing dot.
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: Vec<u8>,
    /// Offset of the rdata in the message (to decompress names inside it).
    pub rdata_offset: usize,
}

/// A lenient reader over a DNS message: the header always, the question and
/// records as far as they parse.
#[derive(Clone, Debug)]
pub struct Wire {
    pub bytes: Vec<u8>,
    records: Vec<WireRecord>,
    question_end: Option<usize>,
    pub error: Option<String>,
}

fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or("name runs past the end")? as usize;
        match len & 0xC0 {
            0x00 => {
                if len == 0 {
                    if name.is_empty() {
                        name.push('.');
                    }
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                let label = msg.get(pos + 1..pos + 1 + len).ok_or("label runs past the end")?;
                for &b in label {
                    if b == b'.' || b == b'\\' || !b.is_ascii_graphic() {
                        name.push_str(&format!("\\{b:03}"));
                    } else {
                        name.push(b as char);
                    }
                }
                name.push('.');
                if name.len() > 1100 {
                    return Err("name too long".into());
                }
                pos += 1 + len;
            }
            0xC0 => {
                let lo = *msg.get(pos + 1).ok_or("pointer runs past the end")? as usize;
                if end.is_none() {
                    end = Some(pos + 2);
                }
                jumps += 1;
                if jumps > 64 {
                    return Err("compression loop".into());
                }
                pos = ((len & 0x3F) << 8) | lo;
            }
            _ => return Err(format!("bad label type {len:#x}")),
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

impl Wire {
    pub fn parse(bytes: &[u8]) -> Wire {
        let mut w = Wire {
            bytes: bytes.to_vec(),
            records: Vec::new(),
            question_end: None,
            error: None,
        };
        if bytes.len() < 12 {
            w.error = Some(format!("short message ({} bytes)", bytes.len()));
            return w;
        }
        if let Err(e) = w.walk() {
            w.error = Some(e);
        }
        w
    }

    fn walk(&mut self) -> Result<(), String> {
        let b = &self.bytes;
        let mut pos = 12;
        for _ in 0..self.qdcount() {
            let (_, p) = read_name(b, pos)?;
            pos = p + 4;
            if pos > b.len() {
                return Err("question runs past the end".into());
            }
        }
        self.question_end = Some(pos);
        let counts = [
            (Section::Answer, self.ancount()),
            (Section::Authority, self.nscount()),
            (Section::Additional, self.arcount()),
        ];
        for (section, n) in counts {
            for _ in 0..n {
                let (name, p) = read_name(b, pos)?;
                let rtype = be16(b, p).ok_or("record runs past the end")?;
                let class = be16(b, p + 2).ok_or("record runs past the end")?;
                let ttl = u32::from_be_bytes(
                    b.get(p + 4..p + 8)
                        .ok_or("record runs past the end")?
                        .try_into()
                        .unwrap(),
                );
                let rdlen = be16(b, p + 8).ok_or("record runs past the end")? as usize;
                let rdata = b.get(p + 10..p + 10 + rdlen).ok_or("rdata runs past the end")?;
                self.records.push(WireRecord {
                    section,
                    name,
                    rtype,
                    class,
                    ttl,
                    rdata: rdata.to_vec(),
                    rdata_offset: p + 10,
                });
                pos = p + 10 + rdlen;
            }
        }
        if pos != b.len() {
            return Err(format!("{} trailing bytes", b.len() - pos));
        }
        Ok(())
    }

    pub fn id(&self) -> u16 {
        be16(&self.bytes, 0).unwrap_or(0)
    }
    fn flags(&self) -> u16 {
        be16(&self.bytes, 2).unwrap_or(0)
    }
    pub fn qr(&self) -> bool {
        self.flags() & 0x8000 != 0
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags() >> 11) & 0xF) as u8
    }
    pub fn aa(&self) -> bool {
        self.flags() & 0x0400 != 0
    }
    pub fn tc(&self) -> bool {
        self.flags() & 0x0200 != 0
    }
    pub fn rd(&self) -> bool {
        self.flags() & 0x0100 != 0
    }
    pub fn ra(&self) -> bool {
        self.flags() & 0x0080 != 0
    }
    pub fn ad(&self) -> bool {
        self.flags() & 0x0020 != 0
    }
    pub fn cd(&self) -> bool {
        self.flags() & 0x0010 != 0
    }
    /// The 4-bit RCODE of the header (0 NOERROR, 1 FORMERR, 2 SERVFAIL,
    /// 3 NXDOMAIN, 4 NOTIMP, 5 REFUSED).
    pub fn rcode(&self) -> u8 {
        (self.flags() & 0xF) as u8
    }
    pub fn qdcount(&self) -> u16 {
        be16(&self.bytes, 4).unwrap_or(0)
    }
    pub fn ancount(&self) -> u16 {
        be16(&self.bytes, 6).unwrap_or(0)
    }
    pub fn nscount(&self) -> u16 {
        be16(&self.bytes, 8).unwrap_or(0)
    }
    pub fn arcount(&self) -> u16 {
        be16(&self.bytes, 10).unwrap_or(0)
    }

    /// The raw bytes of the question section.
    pub fn question_bytes(&self) -> Option<&[u8]> {
        self.question_end.map(|end| &self.bytes[12..end])
    }

    /// The first question's name, letter case kept, with a trailing dot.
    pub fn question_name(&self) -> Option<String> {
        if self.qdcount() == 0 {
            return None;
        }
        read_name(&self.bytes, 12).ok().map(|(n, _)| n)
    }

    pub fn records(&self) -> &[WireRecord] {
        &self.records
    }
    pub fn section(&self, s: Section) -> Vec<&WireRecord> {
        self.records.iter().filter(|r| r.section == s).collect()
    }
    pub fn answers(&self) -> Vec<&WireRecord> {
        self.section(Section::Answer)
    }
    pub fn authority(&self) -> Vec<&WireRecord> {
        self.section(Section::Authority)
    }
    pub fn additional(&self) -> Vec<&WireRecord> {
        self.section(Section::Additional)
    }

    /// Every OPT record (type 41), in any section.
    pub fn opts(&self) -> Vec<&WireRecord> {
        self.records.iter().filter(|r| r.rtype == 41).collect()
    }

    /// A name inside the rdata of `rec` at byte `at` of the rdata (e.g. 0 for a
    /// CNAME target), decompressed.
    pub fn rdata_name(&self, rec: &WireRecord, at: usize) -> String {
        read_name(&self.bytes, rec.rdata_offset + at)
            .map(|(n, _)| n)
            .unwrap_or_else(|e| format!("<{e}>"))
    }

    /// Addresses of the A/AAAA records of a section.
    pub fn addresses(&self, s: Section) -> Vec<IpAddr> {
        self.section(s)
            .iter()
            .filter_map(|r| match (r.rtype, r.rdata.len()) {
                (1, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).unwrap())),
                (28, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).unwrap())),
                _ => None,
            })
            .collect()
    }

    /// One line per record, for assertion messages.
    pub fn dump(&self) -> String {
        let mut s = format!(
            "id={:#06x} qr={} opcode={} aa={} tc={} rd={} ra={} ad={} cd={} rcode={} \
             qd={} an={} ns={} ar={} len={}\n",
            self.id(),
            self.qr() as u8,
            self.opcode(),
            self.aa() as u8,
            self.tc() as u8,
            self.rd() as u8,
            self.ra() as u8,
            self.ad() as u8,
            self.cd() as u8,
            self.rcode(),
            self.qdcount(),
            self.ancount(),
            self.nscount(),
            self.arcount(),
            self.bytes.len()
        );
        if let Some(q) = self.question_name() {
            s.push_str(&format!("question: {q}\n"));
        }
        for r in &self.records {
            let data = match r.rtype {
                1 | 28 => self
                    .addresses(r.section)
                    .first()
                    .map(|_| match r.rdata.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).unwrap()).to_string(),
                        16 => IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).unwrap()).to_string(),
                        _ => hex(&r.rdata),
                    })
                    .unwrap_or_default(),
                5 | 2 | 12 | 6 => self.rdata_name(r, 0),
                _ => hex(&r.rdata),
            };
            s.push_str(&format!(
                "{:?} {} type={} class={} ttl={} {}\n",
                r.section, r.name, r.rtype, r.class, r.ttl, data
            ));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("parse error: {e}\n"));
        }
        s
    }
}

/// Record type number.
pub fn rtype(t: RecordType) -> u16 {
    u16::from(t)
}

// ---------------------------------------------------------------------------
// FakeUpstream: a scripted DNS server
// ---------------------------------------------------------------------------

/// One query received by a [`FakeUpstream`].
#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub bytes: Vec<u8>,
}

impl FakeRequest {
    pub fn wire(&self) -> Wire {
        Wire::parse(&self.bytes)
    }
    /// The question name, lower-cased, with a trailing dot.
    pub fn qname_lower(&self) -> String {
        self.wire().question_name().unwrap_or_default().to_ascii_lowercase()
    }
}

pub type Handler = dyn Fn(&FakeRequest) -> Option<Vec<u8>> + Send + Sync;

/// A DNS server in this process, on UDP and TCP of one loopback port, that
/// answers each query with what `handler` returns (or nothing for `None`) and
/// records every query it got. Stops on drop.
pub struct FakeUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    threads: Vec<JoinHandle<()>>,
}

/// At most this many queries are answered by one fake upstream (a bound on any
/// accidental loop).
pub const FAKE_UPSTREAM_MAX_QUERIES: usize = 20_000;

impl FakeUpstream {
    pub fn start(handler: impl Fn(&FakeRequest) -> Option<Vec<u8>> + Send + Sync + 'static) -> FakeUpstream {
        FakeUpstream::start_at(LOCALHOST, handler)
    }

    pub fn start_at(
        ip: IpAddr,
        handler: impl Fn(&FakeRequest) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> FakeUpstream {
        let handler: Arc<Handler> = Arc::new(handler);
        let (udp, tcp) = loop {
            let port = free_port(ip);
            let Ok(udp) = UdpSocket::bind((ip, port)) else {
                continue;
            };
            let Ok(tcp) = TcpListener::bind((ip, port)) else {
                continue;
            };
            break (udp, tcp);
        };
        let addr = udp.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();

        udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        {
            let (stop, requests, handler, count) = (stop.clone(), requests.clone(), handler.clone(), count.clone());
            threads.push(thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    if count.fetch_add(1, Ordering::Relaxed) >= FAKE_UPSTREAM_MAX_QUERIES {
                        continue;
                    }
                    let req = FakeRequest {
                        transport: Transport::Udp,
                        peer,
                        bytes: buf[..n].to_vec(),
                    };
                    requests.lock().unwrap().push(req.clone());
                    if let Some(reply) = handler(&req) {
                        let _ = udp.send_to(&reply, peer);
                    }
                }
            }));
        }
        tcp.set_nonblocking(true).unwrap();
        {
            let (stop, requests, handler, count) = (stop.clone(), requests.clone(), handler.clone(), count.clone());
            threads.push(thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match tcp.accept() {
                        Ok((stream, peer)) => {
                            let (stop, requests, handler, count) =
                                (stop.clone(), requests.clone(), handler.clone(), count.clone());
                            conns.push(thread::spawn(move || {
                                serve_tcp_conn(stream, peer, &stop, &requests, &*handler, &count)
                            }));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        FakeUpstream {
            addr,
            stop,
            requests,
            threads,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every query received so far.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The queries received so far whose question name is `name` (any case).
    pub fn requests_for(&self, name: &str) -> Vec<FakeRequest> {
        let name = fqdn(name).to_ascii_lowercase();
        self.requests()
            .into_iter()
            .filter(|r| r.qname_lower() == name)
            .collect()
    }
}

fn serve_tcp_conn(
    mut stream: TcpStream,
    peer: SocketAddr,
    stop: &AtomicBool,
    requests: &Mutex<Vec<FakeRequest>>,
    handler: &Handler,
    count: &AtomicUsize,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let idle_limit = Duration::from_secs(3);
    let mut last = Instant::now();
    for _ in 0..1000 {
        if stop.load(Ordering::Relaxed) || last.elapsed() > idle_limit {
            return;
        }
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => return,
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut msg).is_err() {
            return;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        last = Instant::now();
        if count.fetch_add(1, Ordering::Relaxed) >= FAKE_UPSTREAM_MAX_QUERIES {
            return;
        }
        let req = FakeRequest {
            transport: Transport::Tcp,
            peer,
            bytes: msg,
        };
        requests.lock().unwrap().push(req.clone());
        if let Some(reply) = handler(&req) {
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// A small deterministic RNG (xorshift64*), for reproducible garbage
// ---------------------------------------------------------------------------

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

impl From<(&str, &str)> for Zone {
    /// `(origin, zone file text)`.
    fn from((origin, text): (&str, &str)) -> Zone {
        zone(origin, text)
    }
}

// ---------------------------------------------------------------------------
// Signals and exit status of a running Proxy (added for serve_production)
// ---------------------------------------------------------------------------

impl Proxy {
    /// Sends signal `sig` (such as `libc::SIGTERM` or `libc::SIGHUP`) to the
    /// process. Returns false if it could not be delivered (already exited).
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        if !self.is_alive() {
            return false;
        }
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) == 0 }
    }

    /// Waits up to `timeout` for the process to exit by itself and returns
    /// its exit status, or None if it is still running then (it is left
    /// running: drop or [`Proxy::kill`] ends it).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many captured lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        let inner = self.log.inner.lock().unwrap();
        inner.lines.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Waits until more than `before` captured lines contain `needle`.
    pub fn wait_for_log_count(&self, needle: &str, before: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut inner = self.log.inner.lock().unwrap();
        loop {
            if inner.lines.iter().filter(|(_, l)| l.contains(needle)).count() > before {
                return true;
            }
            let now = Instant::now();
            if now > deadline {
                return false;
            }
            inner = self
                .log
                .cond
                .wait_timeout(inner, (deadline - now).min(Duration::from_millis(50)))
                .unwrap()
                .0;
        }
    }
}
