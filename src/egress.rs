//! The egress set: the addresses `serve` resolved for routed names, kept in an
//! ipset that the firewall's `CNI-ADMIN` rule matches (`-m set --match-set`).
//!
//! The DNS hot path calls [`EgressSet::record`] for every address of a routed
//! answer. That call takes a short lock, decides whether the kernel needs to
//! hear about the address at all (not when its entry already outlives the new
//! answer; so at most one update per address per second unless its timeout
//! grows), and hands the update to a background task without waiting. The
//! task batches whatever is queued into one `ipset -exist restore`, run off
//! the async threads. An entry's timeout is the record's TTL plus the grace
//! period: an address is never closed before the answer that named it has
//! expired. Failures are logged and counted, never fatal.
//!
//! `serve` and `firewall --apply` both create the sets with [`ensure_sets`]:
//! identical parameters, and neither fails because the other came first.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::firewall::exec::{CommandOutput, Runner, SystemRunner, shell_line};

/// The default set name (`--set`, `--egress-set`). IPv6 goes to `NAME-v6`.
pub const DEFAULT_SET: &str = "dnsbridge-registry";
/// The default grace period added to every entry's TTL, in seconds.
pub const DEFAULT_GRACE_SECS: u64 = 10;
/// The default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(DEFAULT_GRACE_SECS);
/// The most entries a set holds.
pub const SET_MAXELEM: u32 = 65536;
/// The longest timeout ipset accepts, in seconds.
pub const MAX_TIMEOUT_SECS: u64 = 2_147_483;
/// ipset names are at most 31 bytes; `-v6` must still fit.
pub const MAX_SET_NAME_LEN: usize = 31 - 3;

/// Most updates applied by one `ipset restore`.
const MAX_BATCH: usize = 4096;
/// Attempts per batch (a failed line is skipped and the rest retried).
const MAX_ATTEMPTS: usize = 3;
/// Default capacity of the queue between the hot path and the task.
const DEFAULT_QUEUE: usize = 8192;

/// The IPv6 companion of a set name.
pub fn v6_set_name(set_v4: &str) -> String {
    format!("{set_v4}-v6")
}

/// Checks that a set name is usable by ipset, iptables and a shell line.
pub fn validate_set_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SET_NAME_LEN {
        return Err(format!(
            "set name {name:?} must be 1 to {MAX_SET_NAME_LEN} characters (ipset allows 31, and the IPv6 set adds \"-v6\")"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "set name {name:?} may only hold letters, digits, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// The two `ipset create` command lines (IPv4 set, IPv6 set), program
/// included. `timeout 0` makes entries carry their own timeouts (0 = forever);
/// `-exist` makes a second identical create a no-op.
pub fn create_set_commands(set_v4: &str) -> Vec<Vec<String>> {
    [(set_v4.to_string(), "inet"), (v6_set_name(set_v4), "inet6")]
        .into_iter()
        .map(|(name, family)| {
            let maxelem = SET_MAXELEM.to_string();
            [
                "ipset", "create", &name, "hash:ip", "family", family, "hashsize", "1024", "maxelem", &maxelem,
                "timeout", "0", "-exist",
            ]
            .map(String::from)
            .to_vec()
        })
        .collect()
}

#[derive(Debug, Error)]
pub enum EgressError {
    #[error("{0}")]
    InvalidSetName(String),
    #[error("{tool} is not installed (Debian: apt-get install ipset)")]
    MissingTool { tool: String },
    #[error("not permitted: `{command}`: {stderr} (run as root, or with CAP_NET_ADMIN)")]
    Permission { command: String, stderr: String },
    #[error(
        "set {set} exists with other parameters ({found}); it must be hash:ip, family {family}, with timeouts: destroy it or choose another set name"
    )]
    Incompatible { set: String, family: String, found: String },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("the egress set needs a running tokio runtime")]
    NoRuntime,
}

fn run_cmd(runner: &dyn Runner, argv: &[String], stdin: Option<&[u8]>) -> Result<CommandOutput, EgressError> {
    runner.run(argv, stdin).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EgressError::MissingTool { tool: argv[0].clone() }
        } else {
            EgressError::Command {
                command: shell_line(argv),
                stderr: e.to_string(),
            }
        }
    })
}

fn output_error(argv: &[String], out: &CommandOutput) -> EgressError {
    let command = shell_line(argv);
    let stderr = out.stderr.trim().to_string();
    if crate::firewall::is_permission_error(&stderr) {
        EgressError::Permission { command, stderr }
    } else if crate::firewall::is_missing_program(out) {
        EgressError::MissingTool { tool: "ipset".into() }
    } else {
        EgressError::Command { command, stderr }
    }
}

/// Creates both sets when missing. An existing set is accepted when it is a
/// `hash:ip` of the right family with timeout support, whatever its sizes.
pub fn ensure_sets(runner: &dyn Runner, set_v4: &str) -> Result<(), EgressError> {
    validate_set_name(set_v4).map_err(EgressError::InvalidSetName)?;
    for (argv, family) in create_set_commands(set_v4).iter().zip(["inet", "inet6"]) {
        let out = run_cmd(runner, argv, None)?;
        if out.success() {
            continue;
        }
        let name = &argv[2];
        let list_argv: Vec<String> = ["ipset", "list", "-t", name.as_str()].map(String::from).to_vec();
        let listing = run_cmd(runner, &list_argv, None)?;
        if !listing.success() {
            return Err(output_error(argv, &out));
        }
        let field = |key: &str| {
            listing
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let kind = field("Type:");
        let header = field("Header:");
        let words: Vec<&str> = header.split_whitespace().collect();
        let family_ok = words.windows(2).any(|w| w[0] == "family" && w[1] == family);
        if kind == "hash:ip" && family_ok && words.contains(&"timeout") {
            tracing::debug!(set = %name, %header, "ipset exists with other sizes; using it");
            continue;
        }
        return Err(EgressError::Incompatible {
            set: name.clone(),
            family: family.to_string(),
            found: format!("{kind} {header}"),
        });
    }
    Ok(())
}

/// Counters of the egress set, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressStats {
    /// Entries written to the kernel (new addresses and extended timeouts).
    pub added: u64,
    /// Entries that reached their timeout without being renewed.
    pub expired: u64,
    /// Failed updates (one per failed `ipset restore`).
    pub failures: u64,
    /// Entries that a failed update did not write.
    pub failed_entries: u64,
    /// Records dropped because the queue to the task was full.
    pub dropped: u64,
    /// Batches applied.
    pub batches: u64,
    /// Addresses currently believed to be in the sets.
    pub live: u64,
}

/// How to run the egress set; [`EgressOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct EgressOptions {
    pub set_v4: String,
    pub grace: Duration,
    /// Runs `ipset` (a plain [`SystemRunner`] by default; the lab uses one
    /// inside its host network namespace).
    pub runner: Arc<dyn Runner>,
    /// Capacity of the queue between the hot path and the task.
    pub queue: usize,
}

impl EgressOptions {
    pub fn new(set_v4: impl Into<String>, grace: Duration) -> Self {
        EgressOptions {
            set_v4: set_v4.into(),
            grace,
            runner: Arc::new(SystemRunner::new()),
            queue: DEFAULT_QUEUE,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Known {
    /// Lower bound of the kernel entry's expiry, in ms since `base`.
    until_ms: u64,
    /// The kernel has the entry (not only queued).
    confirmed: bool,
}

enum Msg {
    Add { ip: IpAddr, timeout: u64, until_ms: u64 },
    Flush(oneshot::Sender<()>),
}

struct Shared {
    set_v4: String,
    set_v6: String,
    grace_ms: u64,
    grace_secs: u64,
    base: Instant,
    known: Mutex<HashMap<IpAddr, Known>>,
    added: AtomicU64,
    expired: AtomicU64,
    failures: AtomicU64,
    failed_entries: AtomicU64,
    dropped: AtomicU64,
    batches: AtomicU64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Known>> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_for(&self, ip: &IpAddr) -> &str {
        match ip {
            IpAddr::V4(_) => &self.set_v4,
            IpAddr::V6(_) => &self.set_v6,
        }
    }

    fn sweep(&self) {
        let now = self.now_ms();
        let mut known = self.known();
        let before = known.len();
        known.retain(|_, k| k.until_ms > now);
        let gone = (before - known.len()) as u64;
        if gone > 0 {
            self.expired.fetch_add(gone, Ordering::Relaxed);
        }
    }
}

/// What `admit` decided for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    /// The entry already outlives this answer; `true` if the kernel has it.
    Covered(bool),
    Queued,
    Dropped,
    Ignored,
}

/// Handle to the egress set; cheap to clone. The background task ends when
/// the last handle is dropped.
#[derive(Clone)]
pub struct EgressSet {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
}

impl EgressSet {
    /// Creates the sets when missing and starts the background task on the
    /// current tokio runtime. Runs `ipset create` synchronously (a few ms, once).
    pub fn start(set_v4: String, grace: Duration) -> Result<EgressSet, EgressError> {
        EgressSet::start_with(EgressOptions::new(set_v4, grace))
    }

    pub fn start_with(opts: EgressOptions) -> Result<EgressSet, EgressError> {
        validate_set_name(&opts.set_v4).map_err(EgressError::InvalidSetName)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| EgressError::NoRuntime)?;
        ensure_sets(opts.runner.as_ref(), &opts.set_v4)?;
        // Whole seconds, rounded up: ipset timeouts are in seconds.
        let grace_secs = opts.grace.as_millis().div_ceil(1000) as u64;
        let shared = Arc::new(Shared {
            set_v6: v6_set_name(&opts.set_v4),
            set_v4: opts.set_v4,
            grace_ms: grace_secs * 1000,
            grace_secs,
            base: Instant::now(),
            known: Mutex::new(HashMap::new()),
            added: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failed_entries: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        handle.spawn(worker(shared.clone(), opts.runner, rx));
        Ok(EgressSet { shared, tx })
    }

    /// The IPv4 and IPv6 set names.
    pub fn set_names(&self) -> (&str, &str) {
        (&self.shared.set_v4, &self.shared.set_v6)
    }

    /// The grace period, in whole seconds.
    pub fn grace_secs(&self) -> u64 {
        self.shared.grace_secs
    }

    /// Notes that an answer named `ip` with this TTL. Never blocks, never
    /// fails: the update (if one is needed) is applied by the background task.
    pub fn record(&self, ip: IpAddr, ttl_secs: u32) {
        let _ = self.admit(ip, ttl_secs);
    }

    /// Like [`record`](Self::record) for several addresses, then waits (at
    /// most `max_wait`) until the kernel has all of them. Returns `true` when
    /// they are all in the set. Meant for answering only once the firewall is
    /// open (a microVM connects right after the answer; a dropped SYN costs
    /// it a one-second retransmit). Returns at once when nothing is pending.
    pub async fn record_and_wait(&self, addrs: &[(IpAddr, u32)], max_wait: Duration) -> bool {
        let mut pending = false;
        for (ip, ttl) in addrs {
            match self.admit(*ip, *ttl) {
                Admit::Covered(true) | Admit::Ignored => {}
                _ => pending = true,
            }
        }
        if !pending {
            return true;
        }
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send(Msg::Flush(tx)).is_err() {
            return false;
        }
        if !matches!(tokio::time::timeout(max_wait, rx).await, Ok(Ok(()))) {
            return false;
        }
        let known = self.shared.known();
        addrs.iter().all(|(ip, _)| {
            let ip = ip.to_canonical();
            !wanted(&ip) || known.get(&ip).is_some_and(|k| k.confirmed)
        })
    }

    /// Whether the set is believed to hold `ip` right now.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let now = self.shared.now_ms();
        self.shared
            .known()
            .get(&ip.to_canonical())
            .is_some_and(|k| k.confirmed && k.until_ms > now)
    }

    pub fn stats(&self) -> EgressStats {
        let s = &self.shared;
        EgressStats {
            added: s.added.load(Ordering::Relaxed),
            expired: s.expired.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            failed_entries: s.failed_entries.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            live: s.known().len() as u64,
        }
    }

    fn admit(&self, ip: IpAddr, ttl_secs: u32) -> Admit {
        let ip = ip.to_canonical();
        if !wanted(&ip) {
            return Admit::Ignored;
        }
        let s = &self.shared;
        // Never 0: in ipset, timeout 0 means "forever".
        let timeout = (u64::from(ttl_secs) + s.grace_secs).clamp(1, MAX_TIMEOUT_SECS);
        let now = s.now_ms();
        let until_ms = now + timeout * 1000;
        // An entry that expires less than a second (at most the grace) before
        // the new one still covers this answer's TTL: no update.
        let slack = s.grace_ms.min(1000);
        let mut known = s.known();
        let prev = known.get(&ip).copied();
        if let Some(k) = prev
            && k.until_ms + slack >= until_ms
        {
            return Admit::Covered(k.confirmed && k.until_ms > now);
        }
        // Sent under the lock: the queue's order is the order of `until_ms`
        // for each address, so the kernel only ever sees timeouts grow.
        match self.tx.try_send(Msg::Add { ip, timeout, until_ms }) {
            Ok(()) => {
                let confirmed = prev.is_some_and(|k| k.confirmed && k.until_ms > now);
                known.insert(ip, Known { until_ms, confirmed });
                Admit::Queued
            }
            Err(_) => {
                s.dropped.fetch_add(1, Ordering::Relaxed);
                Admit::Dropped
            }
        }
    }
}

/// Addresses worth opening: unicast addresses of other hosts.
fn wanted(ip: &IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()) && *ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

struct Update {
    ip: IpAddr,
    timeout: u64,
    until_ms: u64,
}

async fn worker(shared: Arc<Shared>, runner: Arc<dyn Runner>, mut rx: mpsc::Receiver<Msg>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(first) = msg else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                apply_batch(&shared, &runner, batch).await;
            }
            _ = tick.tick() => shared.sweep(),
        }
    }
}

async fn apply_batch(shared: &Arc<Shared>, runner: &Arc<dyn Runner>, batch: Vec<Msg>) {
    let mut updates = Vec::new();
    let mut flushes = Vec::new();
    for msg in batch {
        match msg {
            Msg::Add { ip, timeout, until_ms } => updates.push(Update { ip, timeout, until_ms }),
            Msg::Flush(tx) => flushes.push(tx),
        }
    }
    if !updates.is_empty() {
        let lines: Vec<String> = updates
            .iter()
            .map(|u| format!("add {} {} timeout {}", shared.set_for(&u.ip), u.ip, u.timeout))
            .collect();
        let set_v4 = shared.set_v4.clone();
        let runner = runner.clone();
        let outcome = tokio::task::spawn_blocking(move || restore(runner.as_ref(), &set_v4, &lines))
            .await
            .unwrap_or_else(|e| Outcome {
                written: Vec::new(),
                failed: Vec::new(),
                error: Some(format!("the ipset task panicked: {e}")),
            });
        let mut known = shared.known();
        for &i in &outcome.written {
            if let Some(k) = known.get_mut(&updates[i].ip) {
                k.confirmed = true;
            }
        }
        let mut failed = outcome.failed.clone();
        if outcome.error.is_some() {
            // Lines never attempted count as failed too.
            let done: std::collections::HashSet<usize> =
                outcome.written.iter().chain(&outcome.failed).copied().collect();
            failed.extend((0..updates.len()).filter(|i| !done.contains(i)));
        }
        for &i in &failed {
            let u = &updates[i];
            // Forget it unless a newer update is queued, so that the next
            // answer naming it tries again.
            if known.get(&u.ip).is_some_and(|k| k.until_ms == u.until_ms) {
                known.remove(&u.ip);
            }
        }
        drop(known);
        shared.added.fetch_add(outcome.written.len() as u64, Ordering::Relaxed);
        if let Some(err) = &outcome.error {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            shared.failed_entries.fetch_add(failed.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                set = %shared.set_v4,
                written = outcome.written.len(),
                failed = failed.len(),
                error = %err,
                "egress set update failed; DNS service continues"
            );
        }
        shared.batches.fetch_add(1, Ordering::Relaxed);
    }
    for tx in flushes {
        let _ = tx.send(());
    }
}

struct Outcome {
    /// Indexes of lines the kernel took.
    written: Vec<usize>,
    /// Indexes of lines it refused.
    failed: Vec<usize>,
    /// The last error, if anything failed.
    error: Option<String>,
}

/// Applies the lines with `ipset -exist restore`. ipset stops at the first bad
/// line (earlier lines are in); the bad line is skipped and the rest retried,
/// up to [`MAX_ATTEMPTS`] runs. A missing set is re-created once.
fn restore(runner: &dyn Runner, set_v4: &str, lines: &[String]) -> Outcome {
    let argv: Vec<String> = ["ipset", "-exist", "restore"].map(String::from).to_vec();
    let mut outcome = Outcome {
        written: Vec::new(),
        failed: Vec::new(),
        error: None,
    };
    let mut start = 0;
    let mut recreated = false;
    for _ in 0..MAX_ATTEMPTS {
        if start >= lines.len() {
            break;
        }
        let mut input = String::new();
        for l in &lines[start..] {
            let _ = writeln!(input, "{l}");
        }
        let out = match runner.run(&argv, Some(input.as_bytes())) {
            Ok(out) => out,
            Err(e) => {
                outcome.error = Some(format!("{}: {e}", shell_line(&argv)));
                return outcome;
            }
        };
        if out.success() {
            outcome.written.extend(start..lines.len());
            return outcome;
        }
        let stderr = out.stderr.trim().to_string();
        outcome.error = Some(stderr.clone());
        if stderr.contains("does not exist") && !recreated {
            recreated = true;
            // Someone destroyed a set: put it back and retry from the failing
            // line (earlier lines are in).
            let bad = error_line(&stderr).unwrap_or(1);
            outcome.written.extend(start..start + bad - 1);
            start += bad - 1;
            if let Err(e) = ensure_sets(runner, set_v4) {
                outcome.error = Some(e.to_string());
                return outcome;
            }
            continue;
        }
        match error_line(&stderr) {
            Some(bad) if start + bad - 1 < lines.len() => {
                outcome.written.extend(start..start + bad - 1);
                outcome.failed.push(start + bad - 1);
                start += bad;
            }
            _ => return outcome,
        }
    }
    if start < lines.len() && outcome.error.is_none() {
        outcome.error = Some("gave up after repeated failures".into());
    }
    outcome
}

/// The line number in "ipset v7.17: Error in line 3: ...".
fn error_line(stderr: &str) -> Option<usize> {
    let rest = &stderr[stderr.find("Error in line ")? + "Error in line ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|n: &usize| *n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_set_name("dnsbridge-registry").is_ok());
        assert!(validate_set_name("").is_err());
        assert!(validate_set_name("-x").is_err());
        assert!(validate_set_name("a b").is_err());
        assert!(validate_set_name(&"a".repeat(28)).is_ok());
        assert!(validate_set_name(&"a".repeat(29)).is_err());
        assert_eq!(v6_set_name("s"), "s-v6");
    }

    #[test]
    fn create_commands() {
        let c = create_set_commands("reg");
        assert_eq!(
            c[0].join(" "),
            "ipset create reg hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 -exist"
        );
        assert_eq!(
            c[1].join(" "),
            "ipset create reg-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 timeout 0 -exist"
        );
    }

    #[test]
    fn parses_error_line() {
        assert_eq!(
            error_line("ipset v7.17: Error in line 2: The set with the given name does not exist"),
            Some(2)
        );
        assert_eq!(error_line("something else"), None);
    }
}
