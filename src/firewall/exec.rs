//! Running the system tools (`iptables`, `ip6tables`, `ipset`) as subprocesses.
//!
//! Everything that touches the kernel goes through the [`Runner`] trait, so that
//! the rule logic can be tested against a fake, and the lab tests can run the
//! same code inside a network namespace (`ip netns exec NAME ...` as a prefix).

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// What a finished command left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when the process was killed by a signal (or by our
    /// own timeout).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// A successful output with the given stdout (for fakes in tests).
    pub fn ok(stdout: impl Into<String>) -> Self {
        CommandOutput {
            status: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    /// A failed output with the given exit code and stderr (for fakes in tests).
    pub fn failed(code: i32, stderr: impl Into<String>) -> Self {
        CommandOutput {
            status: Some(code),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// Runs one command line. `argv[0]` is the program.
pub trait Runner: Send + Sync {
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> io::Result<CommandOutput>;
}

/// Runs commands on this machine, optionally behind a prefix such as
/// `ip netns exec NAME`. Every command is bounded by a timeout and killed when
/// it runs over (a stuck `iptables -w` must not hang the caller forever).
#[derive(Debug, Clone)]
pub struct SystemRunner {
    prefix: Vec<String>,
    timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        SystemRunner {
            prefix: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl SystemRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs every command inside the named network namespace
    /// (`ip netns exec NAME ...`).
    pub fn in_netns(name: &str) -> Self {
        SystemRunner {
            prefix: vec!["ip".into(), "netns".into(), "exec".into(), name.into()],
            ..Self::default()
        }
    }

    /// Runs every command behind an arbitrary prefix.
    pub fn with_prefix(prefix: Vec<String>) -> Self {
        SystemRunner {
            prefix,
            ..Self::default()
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }
}

impl Runner for SystemRunner {
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> io::Result<CommandOutput> {
        let full: Vec<&String> = self.prefix.iter().chain(argv.iter()).collect();
        let Some((program, args)) = full.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LC_ALL", "C")
            .spawn()?;

        // Drain both pipes on their own threads so that a large listing
        // (iptables -S on a busy host) cannot fill a pipe and stall the child.
        let out_reader = child.stdout.take().map(spawn_reader);
        let err_reader = child.stderr.take().map(spawn_reader);
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A child that exits early closes its end; the error is reported
            // through its exit status and stderr instead.
            let _ = pipe.write_all(data);
        }

        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_micros(200);
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        let stdout = out_reader.map(join_reader).unwrap_or_default();
        let mut stderr = err_reader.map(join_reader).unwrap_or_default();
        if timed_out {
            stderr.push_str(&format!(
                "\n(killed after {} s without finishing)",
                self.timeout.as_secs()
            ));
        }
        Ok(CommandOutput {
            status: if timed_out { None } else { status.code() },
            stdout,
            stderr,
        })
    }
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(handle: thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}

/// Renders an argv as one shell line (for messages and `--print`). Arguments
/// with characters outside a safe set are single-quoted.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:,=@+%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("10.61.0.0/16"), "10.61.0.0/16");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn runs_and_captures() {
        let r = SystemRunner::new();
        let out = r
            .run(
                &["sh".into(), "-c".into(), "cat; echo err >&2; exit 3".into()],
                Some(b"in"),
            )
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, "in");
        assert_eq!(out.stderr.trim(), "err");
    }

    #[test]
    fn timeout_kills() {
        let r = SystemRunner::new().with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let out = r.run(&["sleep".into(), "5".into()], None).unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(out.status, None);
        assert!(!out.success());
    }
}
