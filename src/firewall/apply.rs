//! Putting the plan's rules in place (`--apply`) and taking them out
//! (`--remove`), idempotently, through `iptables -S` / `-C` / `-I` / `-D`.

use std::net::IpAddr;

use crate::egress;
use crate::firewall::FirewallError;
use crate::firewall::exec::{CommandOutput, Runner, shell_line};
use crate::firewall::rules::{ADMIN_CHAIN, COMMENT, Family, INPUT_CHAIN, Plan, Rule};

/// What `apply` or `remove` did, one line per change, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Human-readable lines: `+ ...` added, `- ...` removed, `= ...` kept,
    /// `# ...` notes.
    pub lines: Vec<String>,
    pub added: usize,
    pub removed: usize,
    pub kept: usize,
    pub chain_created: bool,
    pub chain_deleted: bool,
}

impl Report {
    /// True when the system was already as wanted.
    pub fn unchanged(&self) -> bool {
        self.added == 0 && self.removed == 0 && !self.chain_created && !self.chain_deleted
    }
}

/// The filter table as `iptables -S` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Built-in (`-P`) and user (`-N`) chains.
    pub chains: Vec<String>,
    /// `(chain, spec)` for every `-A` line, in order.
    pub rules: Vec<(String, Vec<String>)>,
}

impl Table {
    /// Parses `iptables -S` output.
    pub fn parse(listing: &str) -> Table {
        let mut table = Table::default();
        for line in listing.lines() {
            let tokens = split_words(line);
            match tokens.first().map(String::as_str) {
                Some("-P") | Some("-N") if tokens.len() >= 2 => {
                    table.chains.push(tokens[1].clone());
                }
                Some("-A") if tokens.len() >= 2 => {
                    table.rules.push((tokens[1].clone(), tokens[2..].to_vec()));
                }
                _ => {}
            }
        }
        table
    }

    pub fn has_chain(&self, chain: &str) -> bool {
        self.chains.iter().any(|c| c == chain)
    }

    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        self.rules.iter().filter(move |(c, _)| c == chain).map(|(_, s)| s)
    }

    /// Whether any rule jumps (or goes) to `chain`.
    pub fn is_referenced(&self, chain: &str) -> bool {
        self.rules
            .iter()
            .any(|(_, spec)| spec.windows(2).any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain))
    }
}

/// Splits one `iptables -S` line into words: whitespace separates, double
/// quotes group (iptables quotes comments with spaces), backslash escapes
/// inside quotes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Whether a rule carries our tag.
pub fn is_ours(spec: &[String]) -> bool {
    spec.windows(2).any(|w| w[0] == "--comment" && w[1] == COMMENT)
}

fn is_drop(spec: &[String]) -> bool {
    spec.windows(2)
        .any(|w| w[0] == "-j" && (w[1] == "DROP" || w[1] == "REJECT"))
}

/// A comparable form of a rule: without the implicit `-m tcp`/`-m udp`, with
/// bare addresses given their host prefix.
fn normalize(spec: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(spec.len());
    let mut i = 0;
    while i < spec.len() {
        let w = &spec[i];
        if w == "-m" && matches!(spec.get(i + 1).map(String::as_str), Some("tcp") | Some("udp")) {
            i += 2;
            continue;
        }
        if (w == "-s" || w == "-d") && i + 1 < spec.len() {
            let a = &spec[i + 1];
            let a = if a.contains('/') {
                a.clone()
            } else if let Ok(ip) = a.parse::<IpAddr>() {
                match ip {
                    IpAddr::V4(_) => format!("{ip}/32"),
                    IpAddr::V6(_) => format!("{ip}/128"),
                }
            } else {
                a.clone()
            };
            out.push(w.clone());
            out.push(a);
            i += 2;
            continue;
        }
        out.push(w.clone());
        i += 1;
    }
    out
}

fn same_rule(a: &[String], b: &[String]) -> bool {
    a == b || normalize(a) == normalize(b)
}

fn exec(runner: &dyn Runner, argv: Vec<String>) -> Result<CommandOutput, FirewallError> {
    let line = shell_line(&argv);
    match runner.run(&argv, None) {
        Ok(out) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FirewallError::MissingTool { tool: argv[0].clone() }),
        Err(e) => Err(FirewallError::Io {
            command: line,
            source: e,
        }),
    }
}

fn exec_ok(runner: &dyn Runner, argv: Vec<String>) -> Result<CommandOutput, FirewallError> {
    let line = shell_line(&argv);
    let out = exec(runner, argv)?;
    if out.success() {
        Ok(out)
    } else {
        Err(FirewallError::from_output(line, &out))
    }
}

fn ipt_argv(family: Family, args: Vec<String>) -> Vec<String> {
    let mut argv = vec![family.iptables().to_string()];
    argv.extend(args);
    argv
}

/// Lists the filter table of one family.
pub fn list(runner: &dyn Runner, family: Family) -> Result<Table, FirewallError> {
    let out = exec_ok(runner, ipt_argv(family, vec!["-w".into(), "-S".into()]))?;
    Ok(Table::parse(&out.stdout))
}

/// Puts the plan in place: creates the sets (if missing), the `CNI-ADMIN`
/// chain (if missing), removes tagged rules that are no longer wanted or that
/// sit behind a drop, and inserts the missing ones at the top of their chain.
/// Running it twice changes nothing the second time.
pub fn apply(plan: &Plan, runner: &dyn Runner) -> Result<Report, FirewallError> {
    let mut report = Report::default();
    for (ip, why) in &plan.skipped {
        report.lines.push(format!("# skipped route destination {ip}: {why}"));
    }
    egress::ensure_sets(runner, &plan.set)?;

    let family = plan.family();
    let mut table = list(runner, family)?;
    if !table.has_chain(ADMIN_CHAIN) {
        let argv = ipt_argv(family, vec!["-w".into(), "-N".into(), ADMIN_CHAIN.into()]);
        let line = shell_line(&argv);
        let out = exec(runner, argv)?;
        if out.success() {
            report.chain_created = true;
            report.lines.push(format!("+ {line}"));
        } else {
            // CNI (or the executor) may have created it meanwhile.
            table = list(runner, family)?;
            if !table.has_chain(ADMIN_CHAIN) {
                return Err(FirewallError::from_output(line, &out));
            }
        }
    }

    let wanted = plan.rules();
    for chain in [INPUT_CHAIN, ADMIN_CHAIN] {
        let want: Vec<&Rule> = wanted.iter().filter(|r| r.chain == chain).collect();
        let have: Vec<&Vec<String>> = table.rules_in(chain).collect();
        let first_drop = have.iter().position(|spec| !is_ours(spec) && is_drop(spec));
        let mut matched = vec![false; want.len()];
        let mut stale: Vec<&Vec<String>> = Vec::new();
        for (i, spec) in have.iter().enumerate() {
            if !is_ours(spec) {
                continue;
            }
            let in_front = first_drop.is_none_or(|d| i < d);
            let slot = want
                .iter()
                .enumerate()
                .position(|(j, w)| !matched[j] && same_rule(&w.spec, spec));
            match slot {
                Some(j) if in_front => matched[j] = true,
                _ => stale.push(spec),
            }
        }
        for spec in stale {
            delete_rule(runner, family, chain, spec, &mut report)?;
        }
        for (j, rule) in want.iter().enumerate() {
            if matched[j] {
                report.kept += 1;
                report.lines.push(format!("= {}", rule.to_s_line()));
            }
        }
        // Insert the missing ones at the top, last first, so that they end up
        // in the plan's order ahead of every drop.
        for (j, rule) in want.iter().enumerate().rev() {
            if matched[j] {
                continue;
            }
            let check = exec(runner, ipt_argv(family, rule.argv("-C", None)))?;
            if check.success() {
                // Present in a form the listing did not let us recognise.
                report.kept += 1;
                report.lines.push(format!("= {}", rule.to_s_line()));
                continue;
            }
            exec_ok(runner, ipt_argv(family, rule.argv("-I", Some(1))))?;
            report.added += 1;
            report.lines.push(format!("+ {}", rule.command("-I", Some(1))));
        }
    }
    Ok(report)
}

/// Deletes one rule, given as `iptables -S` prints it, and reports it.
fn delete_rule(
    runner: &dyn Runner,
    family: Family,
    chain: &str,
    spec: &[String],
    report: &mut Report,
) -> Result<(), FirewallError> {
    let mut args = vec!["-w".to_string(), "-D".to_string(), chain.to_string()];
    args.extend(spec.iter().cloned());
    let argv = ipt_argv(family, args);
    let line = shell_line(&argv);
    exec_ok(runner, argv)?;
    report.removed += 1;
    report.lines.push(format!("- {line}"));
    Ok(())
}

/// Takes out every rule tagged `dnsbridge` in the filter table of `family`
/// and, when our rules were all that `CNI-ADMIN` held and nothing jumps to
/// it, the chain itself (it was ours). The sets stay: a running `serve`
/// still fills them.
pub fn remove(runner: &dyn Runner, family: Family) -> Result<Report, FirewallError> {
    let mut report = Report::default();
    let table = list(runner, family)?;
    let mut ours_in_admin = 0;
    for (chain, spec) in table.rules.iter().filter(|(_, s)| is_ours(s)) {
        delete_rule(runner, family, chain, spec, &mut report)?;
        if chain == ADMIN_CHAIN {
            ours_in_admin += 1;
        }
    }
    if ours_in_admin > 0 {
        let after = list(runner, family)?;
        if after.has_chain(ADMIN_CHAIN)
            && after.rules_in(ADMIN_CHAIN).next().is_none()
            && !after.is_referenced(ADMIN_CHAIN)
        {
            let argv = ipt_argv(family, vec!["-w".into(), "-X".into(), ADMIN_CHAIN.into()]);
            let line = shell_line(&argv);
            // A failure here (CNI referenced it meanwhile) leaves an empty
            // chain, which is harmless.
            if exec(runner, argv)?.success() {
                report.chain_deleted = true;
                report.lines.push(format!("- {line}"));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_quoted() {
        assert_eq!(
            split_words(r#"-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD"#),
            vec![
                "-A",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "CNI firewall plugin rules",
                "-j",
                "CNI-FORWARD"
            ]
        );
        assert_eq!(split_words(r#"a "b \"c\"" "" d"#), vec!["a", "b \"c\"", "", "d"]);
    }

    #[test]
    fn normalize_equivalents() {
        let a: Vec<String> = "-s 10.61.0.0/16 -d 10.0.0.5/32 -p tcp -m tcp --dport 443 -j ACCEPT"
            .split(' ')
            .map(String::from)
            .collect();
        let b: Vec<String> = "-s 10.61.0.0/16 -d 10.0.0.5 -p tcp --dport 443 -j ACCEPT"
            .split(' ')
            .map(String::from)
            .collect();
        assert!(same_rule(&a, &b));
        let c: Vec<String> = "-s 10.61.0.0/16 -d 10.0.0.6 -p tcp --dport 443 -j ACCEPT"
            .split(' ')
            .map(String::from)
            .collect();
        assert!(!same_rule(&a, &c));
    }

    #[test]
    fn table_parse() {
        let t = Table::parse(
            "-P INPUT ACCEPT\n-N CNI-ADMIN\n-A CNI-FORWARD -j CNI-ADMIN\n-A CNI-ADMIN -p udp -m udp --dport 53 -j ACCEPT\n",
        );
        assert!(t.has_chain("INPUT"));
        assert!(t.has_chain("CNI-ADMIN"));
        assert!(!t.has_chain("CNI-FORWARD"));
        assert!(t.is_referenced("CNI-ADMIN"));
        assert_eq!(t.rules_in("CNI-ADMIN").count(), 1);
    }
}
