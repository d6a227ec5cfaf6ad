//! End to end, in `scripts/lab.sh`'s copy of the executor network (network
//! namespaces only; every address exists only inside them): `dnsbridge
//! firewall` opens DNS to the proxy and HTTPS to the registry's current
//! addresses, and nothing else; entries expire; transfers survive expiry;
//! `iptables-save | iptables-restore` keeps the meaning; `--remove` restores
//! the ruleset exactly.
//!
//! Needs root and `ip netns`; skipped with a printed reason otherwise (or when
//! DNSBRIDGE_SKIP_LAB is set). The lab is always taken down (a Drop guard).
//!
//! The DNS proxy: when the `dnsbridge` binary's `serve` takes `--egress-set`,
//! lab.sh runs it in the host namespace and the scenario goes through it
//! (`curl https://registry.corp.example/v2/` resolving via the proxy, the set
//! filled by `serve`). Until then lab.sh runs a stand-in DNS (knot) on
//! 10.61.0.1:53 and this test fills the set itself with `EgressSet`, exactly
//! as `serve` is meant to: see `Proxy`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use dnsbridge::egress::{EgressOptions, EgressSet};
use dnsbridge::firewall::{self, Cidr, Plan, SystemRunner, apply};

const REG_IP: &str = "10.200.0.10";
const REG_IP2: &str = "10.200.0.11";
const OTHER_IP: &str = "10.200.0.20";
const UPSTREAM_IP: &str = "10.200.0.53";
const BRIDGE_IP: &str = "10.61.0.1";
const PRIVATE_NAME: &str = "registry.corp.example";
const PUBLIC_NAME: &str = "registry-lb.example.net";
const OTHER_NAME: &str = "other.corp.example";
const SET: &str = "dnsbridge-registry";
/// TTL of the registry's record in the lab's upstream zone.
const LAB_TTL: u32 = 2;
/// Grace period given to the egress set (ours, or the proxy's).
const GRACE: u64 = 1;
/// How the proxy is told the grace period (hook for the proxy's flag name).
const PROXY_SERVE_ARGS: &str = "--egress-grace 1";
const BLOB_KB: u64 = 512;

fn skip_reason() -> Option<String> {
    if std::env::var_os("DNSBRIDGE_SKIP_LAB").is_some() {
        return Some("DNSBRIDGE_SKIP_LAB is set".into());
    }
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (the lab needs network namespaces and iptables)".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` is not available".into()),
    }
}

macro_rules! skip_unless_lab {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `dnsbridge` binary when its `serve` can fill an egress set. This is
/// the hook for the proxy's part of the scenario.
fn proxy_binary() -> Option<PathBuf> {
    let bin = option_env!("CARGO_BIN_EXE_dnsbridge")?;
    let out = Command::new(bin).args(["serve", "--help"]).output().ok()?;
    let help = String::from_utf8_lossy(&out.stdout);
    help.contains("--egress-set").then(|| PathBuf::from(bin))
}

/// The lab, taken down when dropped (even when the test panics).
struct Lab {
    prefix: String,
    dir: PathBuf,
}

impl Lab {
    fn up(prefix: &str, proxy: Option<&Path>) -> Lab {
        let lab = Lab {
            prefix: prefix.to_string(),
            dir: std::env::temp_dir().join(format!("{prefix}-lab")),
        };
        let mut cmd = lab.script();
        cmd.arg("up");
        if let Some(bin) = proxy {
            cmd.env("DNSBRIDGE_BIN", bin)
                .env("DNSBRIDGE_SERVE_ARGS", PROXY_SERVE_ARGS);
        }
        let out = cmd.output().expect("run lab.sh");
        assert!(
            out.status.success(),
            "lab.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    fn script(&self) -> Command {
        let mut cmd = Command::new(repo().join("scripts/lab.sh"));
        cmd.env("LAB_PREFIX", &self.prefix)
            .env("LAB_DIR", &self.dir)
            .env("LAB_TTL", LAB_TTL.to_string())
            .env("LAB_BLOB_KB", BLOB_KB.to_string())
            .stdin(Stdio::null());
        cmd
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn exec(&self, role: &str, argv: &[&str]) -> Output {
        let mut cmd = self.script();
        cmd.arg("exec").arg(role).args(argv);
        cmd.output().expect("run lab.sh exec")
    }

    fn spawn(&self, role: &str, argv: &[&str]) -> Child {
        let mut cmd = self.script();
        cmd.arg("exec")
            .arg(role)
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn lab.sh exec")
    }

    fn host(&self, argv: &[&str]) -> Output {
        self.exec("host", argv)
    }

    fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    fn runner(&self) -> SystemRunner {
        SystemRunner::in_netns(&self.ns("host"))
    }

    /// HTTPS from the microVM to `ip` under `name` (TLS checked against the
    /// lab CA). The HTTP status, or None when the connection failed.
    fn https_from_vm(&self, name: &str, ip: &str) -> Option<u16> {
        let resolve = format!("{name}:443:{ip}");
        let url = format!("https://{name}/v2/");
        let out = self.exec(
            "vm",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--connect-timeout",
                "1.5",
                "--max-time",
                "5",
                "--cacert",
                &self.ca(),
                "--resolve",
                &resolve,
                &url,
            ],
        );
        let code = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        if out.status.success() { code } else { None }
    }

    /// HTTPS from the microVM by name, resolved through its resolver (the proxy).
    fn https_by_name_from_vm(&self) -> Option<u16> {
        let url = format!("https://{PRIVATE_NAME}/v2/");
        let out = self.exec(
            "vm",
            &[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--connect-timeout",
                "1.5",
                "--max-time",
                "5",
                "--cacert",
                &self.ca(),
                &url,
            ],
        );
        let code = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
        if out.status.success() { code } else { None }
    }

    /// A query from the microVM to `server` over UDP or TCP; the answer's
    /// addresses, or None when nothing came back.
    fn dig_from_vm(&self, server: &str, name: &str, tcp: bool) -> Option<String> {
        let at = format!("@{server}");
        let mut argv = vec!["kdig", "+time=1", "+retry=0", "+short", &at, name, "A"];
        if tcp {
            argv.push("+tcp");
        }
        let out = self.exec("vm", &argv);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("10.200.0.")).then_some(text)
    }

    fn in_set(&self, ip: &str) -> bool {
        self.host(&["ipset", "test", SET, ip]).status.success()
    }

    /// `iptables-save` of the host namespace without counters and comments.
    fn save(&self) -> String {
        let out = self.host(&["iptables-save"]);
        assert!(out.status.success());
        normalize_save(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the lab looked like when the test failed.
            if let Ok(out) = self.script().arg("status").output() {
                eprintln!("--- lab.sh status\n{}", String::from_utf8_lossy(&out.stdout));
            }
            if let Ok(dir) = std::fs::read_dir(&self.dir) {
                for entry in dir.flatten() {
                    let path = entry.path();
                    if path.extension().is_some_and(|e| e == "log") {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        eprintln!("--- {}", path.display());
                        for line in tail.iter().rev() {
                            eprintln!("{line}");
                        }
                    }
                }
            }
        }
        let out = self.script().arg("down").output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("lab.sh down failed: {out:?}");
        }
    }
}

fn normalize_save(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `f` every 100 ms until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(100));
    }
}

/// Who fills the set: the real proxy, or this test on its behalf.
enum Proxy {
    /// `dnsbridge serve` runs in the lab and fills the set from its answers.
    Real,
    /// The stand-in DNS runs in the lab; the test resolves the public name at
    /// the upstream and records the answer like `serve` would.
    Emulated {
        set: EgressSet,
        _rt: tokio::runtime::Runtime,
    },
}

impl Proxy {
    fn start(lab: &Lab, real: bool) -> Proxy {
        if real {
            return Proxy::Real;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut opts = EgressOptions::new(SET, Duration::from_secs(GRACE));
        opts.runner = Arc::new(lab.runner());
        let set = {
            let _guard = rt.enter();
            EgressSet::start_with(opts).expect("start the egress set")
        };
        Proxy::Emulated { set, _rt: rt }
    }

    /// What a microVM does: resolve the private name, then connect to the
    /// answer. Returns the HTTP status of `GET /v2/`.
    fn resolve_and_fetch(&self, lab: &Lab) -> Option<u16> {
        match self {
            Proxy::Real => lab.https_by_name_from_vm(),
            Proxy::Emulated { set, _rt } => {
                // serve resolves the route's destination at the upstream...
                let at = format!("@{UPSTREAM_IP}");
                let out = lab.host(&["kdig", "+time=1", "+retry=0", &at, PUBLIC_NAME, "A"]);
                let text = String::from_utf8_lossy(&out.stdout);
                let (ip, ttl) = text
                    .lines()
                    .filter(|l| !l.starts_with(';'))
                    .find_map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        (w.len() == 5 && w[3] == "A").then(|| (w[4].to_string(), w[1].parse::<u32>().unwrap()))
                    })
                    .expect("the upstream answers the public name");
                // ...records the addresses before answering...
                let addr: IpAddr = ip.parse().unwrap();
                let opened = _rt.block_on(set.record_and_wait(&[(addr, ttl)], Duration::from_secs(2)));
                assert!(opened, "the egress set took {addr}");
                // ...and the microVM connects to what it was told.
                lab.https_from_vm(PRIVATE_NAME, &ip)
            }
        }
    }

    /// Keeps `ip` in the set for `ttl` seconds (emulated proxy only).
    fn pin(&self, ip: &str, ttl: u32) -> bool {
        match self {
            Proxy::Real => false,
            Proxy::Emulated { set, _rt } => {
                _rt.block_on(set.record_and_wait(&[(ip.parse().unwrap(), ttl)], Duration::from_secs(2)))
            }
        }
    }

    fn stats(&self) -> Option<dnsbridge::egress::EgressStats> {
        match self {
            Proxy::Real => None,
            Proxy::Emulated { set, .. } => Some(set.stats()),
        }
    }
}

#[test]
fn lab_end_to_end() {
    skip_unless_lab!();
    let bin = proxy_binary();
    if bin.is_none() {
        eprintln!("note: dnsbridge has no `serve --egress-set` yet: stand-in DNS, set filled by the test");
    }
    let lab = Lab::up("dnsbt", bin.as_deref());
    let host = lab.runner();

    // The lab works, seen from the host itself (its own traffic is not
    // filtered): so every failure below is the firewall's doing.
    for (name, ip) in [(PRIVATE_NAME, REG_IP), (PRIVATE_NAME, REG_IP2), (OTHER_NAME, OTHER_IP)] {
        let resolve = format!("{name}:443:{ip}");
        let url = format!("https://{name}/v2/");
        let out = lab.host(&[
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--cacert",
            &lab.ca(),
            "--resolve",
            &resolve,
            &url,
        ]);
        assert!(
            out.status.success(),
            "{ip} serves HTTPS: {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Before: DNS to the proxy and HTTPS to the registry are dropped.
    let before = lab.save();
    assert_eq!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, false),
        None,
        "UDP DNS before apply"
    );
    assert_eq!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, true),
        None,
        "TCP DNS before apply"
    );
    assert_eq!(lab.https_from_vm(PRIVATE_NAME, REG_IP), None, "registry before apply");

    // Apply (through the same entry point as the CLI), twice.
    let plan = Plan::build(
        "10.61.0.0/16".parse::<Cidr>().unwrap(),
        &[BRIDGE_IP.parse().unwrap()],
        &[443],
        SET,
        &[],
        GRACE,
    )
    .unwrap();
    let first = apply::apply(&plan, &host).expect("apply");
    assert_eq!(first.added, 4, "{:#?}", first.lines);
    let applied = lab.save();
    let second = apply::apply(&plan, &host).expect("apply again");
    assert!(second.unchanged(), "{:#?}", second.lines);
    assert_eq!(lab.save(), applied, "a second apply changes nothing");

    // DNS to the proxy works over UDP and TCP.
    assert!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, false).is_some(),
        "UDP DNS after apply"
    );
    assert!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, true).is_some(),
        "TCP DNS after apply"
    );
    // TCP DNS straight to the private upstream stays dropped (private range).
    assert_eq!(
        lab.dig_from_vm(UPSTREAM_IP, PUBLIC_NAME, true),
        None,
        "TCP to the upstream"
    );

    let proxy = Proxy::start(&lab, bin.is_some());
    if matches!(proxy, Proxy::Emulated { .. }) {
        // Not in the set yet: still closed.
        assert!(!lab.in_set(REG_IP));
        assert_eq!(
            lab.https_from_vm(PRIVATE_NAME, REG_IP),
            None,
            "registry before any answer"
        );
    }

    // Resolve and fetch: the registry answers with its TLS for the private name.
    let opened_at = Instant::now();
    assert_eq!(proxy.resolve_and_fetch(&lab), Some(200), "registry after resolving");
    assert!(lab.in_set(REG_IP));

    // At once, a slow transfer that lasts well past the entry's expiry.
    let digest = std::fs::read_to_string(lab.dir.join("blob.digest")).unwrap();
    let blob_url = format!("https://{PRIVATE_NAME}/v2/lab/blob/blobs/{}", digest.trim());
    let resolve = format!("{PRIVATE_NAME}:443:{REG_IP}");
    let entry_life = Duration::from_secs(u64::from(LAB_TTL) + GRACE);
    // The registry's link is shaped (inside its namespace) for the transfer's
    // duration: curl's own --limit-rate lets small transfers burst through.
    let kbit = (BLOB_KB * 1024 * 8 / 1000) / (entry_life.as_secs() + 6);
    let rate = format!("{kbit}kbit");
    let shaped = lab.exec(
        "reg",
        &[
            "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "16kb", "latency", "1s",
        ],
    );
    assert!(
        shaped.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&shaped.stderr)
    );
    let mut transfer = lab.spawn(
        "vm",
        &[
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--connect-timeout",
            "2",
            "--max-time",
            "60",
            "--cacert",
            &lab.ca(),
            "--resolve",
            &resolve,
            &blob_url,
        ],
    );
    assert!(
        opened_at.elapsed() < entry_life,
        "the transfer started while the entry lived ({:?})",
        opened_at.elapsed()
    );

    // Nothing else opened: not the other host, not the registry's other address.
    assert_eq!(lab.https_from_vm(OTHER_NAME, OTHER_IP), None, "other host");
    assert_eq!(lab.https_from_vm(PRIVATE_NAME, REG_IP2), None, "address not in the set");

    // The entry expires while the transfer runs; the transfer completes.
    assert!(
        eventually(entry_life + Duration::from_secs(5), || !lab.in_set(REG_IP)),
        "the entry expires"
    );
    if transfer.try_wait().unwrap().is_some() {
        let out = transfer.wait_with_output().unwrap();
        panic!(
            "the transfer ended before its entry expired: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while transfer.try_wait().unwrap().is_none() && Instant::now() < deadline {
        sleep(Duration::from_millis(200));
    }
    if transfer.try_wait().unwrap().is_none() {
        let _ = transfer.kill();
    }
    let out = transfer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "transfer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (BLOB_KB * 1024).to_string()
    );
    // A new connection to the expired address is dropped.
    assert_eq!(lab.https_from_vm(PRIVATE_NAME, REG_IP), None, "expired address closed");
    if let Some(st) = proxy.stats() {
        assert!(st.expired >= 1 && st.added >= 1 && st.failures == 0, "{st:?}");
    }

    // The registry's address changes in the upstream zone: the new one opens
    // on the next answer, the old one stays closed.
    let out = lab.script().args(["zone-set", REG_IP2]).output().unwrap();
    assert!(
        out.status.success(),
        "zone-set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limit = Duration::from_secs(u64::from(LAB_TTL) + GRACE + 3);
    assert!(
        eventually(limit, || proxy.resolve_and_fetch(&lab) == Some(200)
            && lab.in_set(REG_IP2)),
        "the new address works within TTL + grace"
    );
    assert!(
        eventually(limit, || !lab.in_set(REG_IP)),
        "the old address's entry is gone"
    );
    assert_eq!(lab.https_from_vm(PRIVATE_NAME, REG_IP), None, "old address closed");

    // The executor's own save and restore keep the meaning.
    let saved_path = lab.dir.join("saved.rules");
    let save_cmd = format!("iptables-save > {0} && iptables-restore < {0}", saved_path.display());
    let out = lab.host(&["sh", "-c", &save_cmd]);
    assert!(
        out.status.success(),
        "save/restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.save(), applied, "the ruleset reads the same after save and restore");
    assert!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, false).is_some(),
        "DNS after restore"
    );
    assert!(
        eventually(limit, || proxy.resolve_and_fetch(&lab) == Some(200)),
        "registry after restore"
    );
    assert_eq!(
        lab.https_from_vm(OTHER_NAME, OTHER_IP),
        None,
        "other host after restore"
    );
    assert_eq!(
        lab.https_from_vm(PRIVATE_NAME, REG_IP),
        None,
        "old address after restore"
    );
    assert_eq!(
        lab.dig_from_vm(UPSTREAM_IP, PUBLIC_NAME, true),
        None,
        "TCP to the upstream after restore"
    );

    // Remove: exactly the ruleset from before; the sets stay (serve fills them).
    proxy.pin(REG_IP2, 60);
    let removed = firewall::remove_all(&plan, &host).expect("remove");
    assert_eq!(removed.removed, 4, "{:#?}", removed.lines);
    assert_eq!(lab.save(), before, "remove restores the ruleset");
    let sets = lab.host(&["ipset", "list", "-n"]);
    let sets = String::from_utf8_lossy(&sets.stdout);
    assert!(
        sets.lines().any(|l| l == SET) && sets.lines().any(|l| l == format!("{SET}-v6")),
        "{sets}"
    );
    assert_eq!(
        lab.dig_from_vm(BRIDGE_IP, PRIVATE_NAME, false),
        None,
        "DNS after remove"
    );
    if lab.in_set(REG_IP2) {
        assert_eq!(
            lab.https_from_vm(PRIVATE_NAME, REG_IP2),
            None,
            "an address in the set is closed once the rules are gone"
        );
    }
    let again = firewall::remove_all(&plan, &host).expect("remove again");
    assert_eq!(again.removed, 0);
}

/// A namespace of our own, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let out = Command::new("ip").args(["netns", "add", name]).output().unwrap();
        assert!(out.status.success(), "ip netns add {name}");
        Netns(name.to_string())
    }

    fn ipt(&self, args: &str) {
        let mut argv = vec!["netns", "exec", &self.0, "iptables", "-w"];
        argv.extend(args.split(' '));
        let out = Command::new("ip").args(&argv).output().unwrap();
        assert!(
            out.status.success(),
            "iptables {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn save(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables-save"])
            .output()
            .unwrap();
        normalize_save(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn apply_before_cni_admin_exists() {
    skip_unless_lab!();
    let ns = Netns::new("dnsbt-bare");
    let runner = SystemRunner::in_netns(&ns.0);
    let plan = Plan::build(
        "10.61.0.0/16".parse::<Cidr>().unwrap(),
        &[],
        &[443, 5000],
        SET,
        &["10.0.0.9".parse().unwrap()],
        GRACE,
    )
    .unwrap();
    // Make the (empty) filter table exist, as on any host: iptables-save then
    // prints it the same before and after.
    ns.ipt("-P FORWARD ACCEPT");
    let empty = ns.save();

    let r = apply::apply(&plan, &runner).expect("apply on a bare host");
    assert!(r.chain_created);
    assert_eq!(r.added, 2 + 1 + 2 + 2, "{:#?}", r.lines);
    assert!(apply::apply(&plan, &runner).unwrap().unchanged());
    let r = firewall::remove_all(&plan, &runner).unwrap();
    assert!(r.chain_deleted);
    assert_eq!(ns.save(), empty, "apply + remove on a bare host leaves nothing");

    // Apply first, then CNI and the executor arrive: CNI tolerates the chain
    // and links it, the executor appends its drops behind our accepts.
    apply::apply(&plan, &runner).unwrap();
    ns.ipt("-N CNI-FORWARD");
    ns.ipt("-I FORWARD 1 -j CNI-FORWARD");
    ns.ipt("-I CNI-FORWARD 1 -j CNI-ADMIN");
    ns.ipt("-A CNI-ADMIN -s 10.61.0.0/16 -d 10.0.0.0/8 -p tcp -j DROP");
    ns.ipt("-A INPUT -s 10.61.0.0/16 -j DROP");
    assert!(apply::apply(&plan, &runner).unwrap().unchanged());
    let r = firewall::remove_all(&plan, &runner).unwrap();
    assert!(!r.chain_deleted, "CNI's chain stays");
    let left = ns.save();
    assert!(!left.contains("dnsbridge"), "{left}");
    assert!(
        left.contains("-A CNI-ADMIN -s 10.61.0.0/16 -d 10.0.0.0/8 -p tcp -j DROP"),
        "{left}"
    );
}
