//! Rule generation (`--print`), argument parsing, and the apply/remove logic
//! against an in-memory stand-in for iptables and ipset. No root needed.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use dnsbridge::egress::{EgressOptions, EgressSet};
use dnsbridge::firewall::{self, CommandOutput, FirewallArgs, Mode, Plan, Runner, apply, rules::Family};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fw: FirewallArgs,
}

fn args(line: &str) -> FirewallArgs {
    let mut argv = vec!["firewall"];
    argv.extend(line.split_whitespace());
    Cli::try_parse_from(argv).expect("valid flags").fw
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[test]
fn print_default_plan() {
    let a = args("--print");
    assert_eq!(a.mode.mode(), Mode::Print);
    let mut out = Vec::new();
    let code = firewall::run_with(&a, &[], &Unreachable, &mut out).unwrap();
    assert_eq!(code, std::process::ExitCode::SUCCESS);
    let text = String::from_utf8(out).unwrap();
    let commands: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        commands,
        vec![
            "ipset create dnsbridge-registry hash:ip family inet hashsize 1024 maxelem 65536 timeout 0 -exist",
            "ipset create dnsbridge-registry-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 timeout 0 -exist",
            "iptables -w -S CNI-ADMIN >/dev/null 2>&1 || iptables -w -N CNI-ADMIN",
            "iptables -w -I INPUT 1 -s 10.61.0.0/16 -d 10.61.0.1/32 -p udp -m udp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "iptables -w -I INPUT 2 -s 10.61.0.0/16 -d 10.61.0.1/32 -p tcp -m tcp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "iptables -w -I CNI-ADMIN 1 -s 10.61.0.0/16 -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL -m comment --comment dnsbridge -j ACCEPT",
            "iptables -w -I CNI-ADMIN 2 -s 10.61.0.0/16 -p tcp -m tcp --dport 443 -m set --match-set dnsbridge-registry dst -m comment --comment dnsbridge -j ACCEPT",
        ]
    );
    assert!(text.contains("timeout = TTL + 10 s"));
}

#[test]
fn print_with_static_destinations_ports_and_dns_addresses() {
    let a = args(
        "--print --vm-cidr 10.61.0.0/16 --dns-address 10.61.0.1 --dns-address 10.128.0.5 --ports 443,5000 --set reg --grace 3",
    );
    let plan = Plan::new(
        &a,
        &ips(&["10.0.0.9", "2001:db8::1", "10.61.3.3", "10.0.0.9", "127.0.0.1"]),
    )
    .unwrap();
    assert_eq!(plan.static_ips, ips(&["10.0.0.9"]));
    assert_eq!(plan.skipped.len(), 3);
    let script = plan.script();
    assert!(script.contains("# skipped route destination 2001:db8::1: not reachable"));
    assert!(script.contains("# skipped route destination 10.61.3.3: inside the microVM subnet"));
    assert!(script.contains("timeout = TTL + 3 s"));
    let rules: Vec<String> = plan.rules().iter().map(|r| r.to_s_line()).collect();
    assert_eq!(
        rules,
        vec![
            "-A INPUT -s 10.61.0.0/16 -d 10.61.0.1/32 -p udp -m udp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "-A INPUT -s 10.61.0.0/16 -d 10.61.0.1/32 -p tcp -m tcp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "-A INPUT -s 10.61.0.0/16 -d 10.128.0.5/32 -p udp -m udp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "-A INPUT -s 10.61.0.0/16 -d 10.128.0.5/32 -p tcp -m tcp --dport 53 -m comment --comment dnsbridge -j ACCEPT",
            "-A CNI-ADMIN -s 10.61.0.0/16 -m conntrack --ctstate ESTABLISHED --ctdir ORIGINAL -m comment --comment dnsbridge -j ACCEPT",
            "-A CNI-ADMIN -s 10.61.0.0/16 -p tcp -m tcp --dport 443 -m set --match-set reg dst -m comment --comment dnsbridge -j ACCEPT",
            "-A CNI-ADMIN -s 10.61.0.0/16 -p tcp -m tcp --dport 5000 -m set --match-set reg dst -m comment --comment dnsbridge -j ACCEPT",
            "-A CNI-ADMIN -s 10.61.0.0/16 -d 10.0.0.9/32 -p tcp -m tcp --dport 443 -m comment --comment dnsbridge -j ACCEPT",
            "-A CNI-ADMIN -s 10.61.0.0/16 -d 10.0.0.9/32 -p tcp -m tcp --dport 5000 -m comment --comment dnsbridge -j ACCEPT",
        ]
    );
    // The script inserts each chain's rules at positions 1, 2, ... in order.
    assert!(script.contains("iptables -w -I CNI-ADMIN 5 -s 10.61.0.0/16 -d 10.0.0.9/32 -p tcp -m tcp --dport 5000"));
}

#[test]
fn ipv6_subnet_uses_ip6tables_and_the_v6_set() {
    let plan = Plan::new(
        &args("--print --vm-cidr fd00:61::/64"),
        &ips(&["fd00:1::5", "10.0.0.1"]),
    )
    .unwrap();
    assert_eq!(plan.family(), Family::V6);
    assert_eq!(plan.dns_addresses, ips(&["fd00:61::1"]));
    let script = plan.script();
    assert!(script.contains("ip6tables -w -I INPUT 1 -s fd00:61::/64 -d fd00:61::1/128 -p udp"));
    assert!(script.contains("--match-set dnsbridge-registry-v6 dst"));
    assert!(script.contains("-d fd00:1::5/128"));
}

#[test]
fn flag_errors() {
    let parse = |line: &str| {
        let mut argv = vec!["firewall"];
        argv.extend(line.split_whitespace());
        Cli::try_parse_from(argv).map(|c| c.fw)
    };
    assert!(parse("").is_err(), "a mode is required");
    assert!(parse("--print --apply").is_err(), "modes exclude each other");
    assert!(parse("--apply --ports 0").is_err());
    assert!(parse("--apply --ports 443,x").is_err());
    assert!(parse("--apply --vm-cidr 10.61.0.0").is_err());
    assert_eq!(
        parse("--remove --ports 443,5000,443").unwrap().ports,
        vec![443, 5000, 443]
    );

    let usage = |line: &str| {
        let e = Plan::new(&parse(line).unwrap(), &[]).unwrap_err();
        assert_eq!(e.exit_code(), firewall::EXIT_USAGE, "{line}: {e}");
        e.to_string()
    };
    assert!(usage("--apply --vm-cidr 0.0.0.0/0").contains("covers every address"));
    assert!(usage("--apply --dns-address ::1").contains("family"));
    assert!(usage("--apply --set bad/name").contains("set name"));
    assert!(usage(&format!("--apply --set {}", "x".repeat(29))).contains("set name"));
}

/// A runner that must not be called (`--print` touches nothing).
struct Unreachable;
impl Runner for Unreachable {
    fn run(&self, argv: &[String], _: Option<&[u8]>) -> io::Result<CommandOutput> {
        panic!("--print ran {argv:?}");
    }
}

/// Enough of iptables (one family, filter table) and ipset to exercise the
/// apply/remove logic: rules are kept as the exact words they were given.
#[derive(Default)]
struct FakeNet {
    state: Mutex<FakeState>,
}

#[derive(Default, Clone, PartialEq, Eq, Debug)]
struct FakeState {
    chains: Vec<String>,
    rules: Vec<(String, Vec<String>)>,
    sets: HashMap<String, String>,
    log: Vec<String>,
}

impl FakeNet {
    fn executor() -> FakeNet {
        let net = FakeNet::default();
        {
            let mut s = net.state.lock().unwrap();
            s.chains = ["INPUT", "FORWARD", "OUTPUT", "CNI-FORWARD", "CNI-ADMIN"]
                .map(String::from)
                .to_vec();
            for line in [
                "FORWARD -m comment --comment \"CNI firewall plugin rules\" -j CNI-FORWARD",
                "CNI-FORWARD -j CNI-ADMIN",
                "CNI-ADMIN -p udp -m udp --dport 53 -j ACCEPT",
                "INPUT -d 10.61.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "INPUT -s 10.61.0.0/16 -j DROP",
                "CNI-ADMIN -s 10.61.0.1/32 -d 10.61.0.0/16 -j ACCEPT",
                "CNI-ADMIN -d 10.61.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "CNI-ADMIN -s 10.61.0.0/16 -d 10.61.0.0/16 -j DROP",
                "CNI-ADMIN -s 10.61.0.0/16 -d 10.0.0.0/8 -p tcp -j DROP",
            ] {
                let words = firewall::apply::split_words(line);
                s.rules.push((words[0].clone(), words[1..].to_vec()));
            }
        }
        net
    }

    fn bare() -> FakeNet {
        let net = FakeNet::default();
        net.state.lock().unwrap().chains = ["INPUT", "FORWARD", "OUTPUT"].map(String::from).to_vec();
        net
    }

    fn snapshot(&self) -> (Vec<String>, Vec<(String, Vec<String>)>) {
        let s = self.state.lock().unwrap();
        (s.chains.clone(), s.rules.clone())
    }

    fn chain_rules(&self, chain: &str) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.rules
            .iter()
            .filter(|(c, _)| c == chain)
            .map(|(_, r)| r.join(" "))
            .collect()
    }

    fn push_rule(&self, chain: &str, spec: &str, front: bool) {
        let mut s = self.state.lock().unwrap();
        let rule = (chain.to_string(), spec.split(' ').map(String::from).collect());
        if front {
            s.rules.insert(0, rule);
        } else {
            s.rules.push(rule);
        }
    }
}

impl Runner for FakeNet {
    fn run(&self, argv: &[String], _stdin: Option<&[u8]>) -> io::Result<CommandOutput> {
        let mut s = self.state.lock().unwrap();
        s.log.push(argv.join(" "));
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        let fail = |m: &str| Ok(CommandOutput::failed(1, m));
        match a.as_slice() {
            ["ipset", "create", name, rest @ ..] => {
                let params = rest
                    .iter()
                    .filter(|w| **w != "-exist")
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                match s.sets.get(*name) {
                    Some(p) if *p != params => fail("Set cannot be created: set with the same name already exists"),
                    _ => {
                        s.sets.insert(name.to_string(), params);
                        Ok(CommandOutput::ok(""))
                    }
                }
            }
            ["iptables", "-w", "-S"] => {
                let mut out = String::new();
                for c in &s.chains {
                    if ["INPUT", "FORWARD", "OUTPUT"].contains(&c.as_str()) {
                        out.push_str(&format!("-P {c} ACCEPT\n"));
                    } else {
                        out.push_str(&format!("-N {c}\n"));
                    }
                }
                for (c, r) in &s.rules {
                    let words: Vec<String> = r
                        .iter()
                        .map(|w| if w.contains(' ') { format!("\"{w}\"") } else { w.clone() })
                        .collect();
                    out.push_str(&format!("-A {c} {}\n", words.join(" ")));
                }
                Ok(CommandOutput::ok(out))
            }
            ["iptables", "-w", "-N", chain] => {
                if s.chains.iter().any(|c| c == chain) {
                    return fail("iptables: Chain already exists.");
                }
                s.chains.push(chain.to_string());
                Ok(CommandOutput::ok(""))
            }
            ["iptables", "-w", "-X", chain] => {
                if s.rules.iter().any(|(c, r)| c == chain || r.iter().any(|w| w == chain)) {
                    return fail("iptables: Directory not empty.");
                }
                s.chains.retain(|c| c != chain);
                Ok(CommandOutput::ok(""))
            }
            ["iptables", "-w", action @ ("-C" | "-D" | "-I"), chain, rest @ ..] => {
                if !s.chains.iter().any(|c| c == chain) {
                    return fail("iptables: No chain/target/match by that name.");
                }
                let (pos, spec) = match (*action, rest.first().and_then(|w| w.parse::<usize>().ok())) {
                    ("-I", Some(p)) => (p, &rest[1..]),
                    ("-I", None) => (1, rest),
                    _ => (0, rest),
                };
                let spec: Vec<String> = spec.iter().map(|w| w.to_string()).collect();
                let found = s.rules.iter().position(|(c, r)| c == chain && *r == spec);
                match *action {
                    "-C" => match found {
                        Some(_) => Ok(CommandOutput::ok("")),
                        None => fail("iptables: Bad rule (does a matching rule exist in that chain?)."),
                    },
                    "-D" => match found {
                        Some(i) => {
                            s.rules.remove(i);
                            Ok(CommandOutput::ok(""))
                        }
                        None => fail("iptables: Bad rule (does a matching rule exist in that chain?)."),
                    },
                    _ => {
                        // Position `pos` within the chain -> index in the table.
                        let idx: Vec<usize> = s
                            .rules
                            .iter()
                            .enumerate()
                            .filter(|(_, (c, _))| c == chain)
                            .map(|(i, _)| i)
                            .collect();
                        let at = idx
                            .get(pos - 1)
                            .copied()
                            .unwrap_or_else(|| idx.last().map_or(s.rules.len(), |i| i + 1));
                        s.rules.insert(at, (chain.to_string(), spec));
                        Ok(CommandOutput::ok(""))
                    }
                }
            }
            ["ipset", "list", "-t", name] => match s.sets.get(*name) {
                Some(p) => {
                    let (kind, header) = p.split_once(' ').unwrap_or((p, ""));
                    Ok(CommandOutput::ok(format!(
                        "Name: {name}\nType: {kind}\nHeader: {header}\n"
                    )))
                }
                None => fail("ipset v7.17: The set with the given name does not exist"),
            },
            ["ip6tables", ..] => fail("ip6tables: not in this fake"),
            _ => panic!("unexpected command {argv:?}"),
        }
    }
}

fn plan(line: &str, statics: &[&str]) -> Plan {
    Plan::new(&args(line), &ips(statics)).unwrap()
}

#[test]
fn apply_is_idempotent_and_remove_restores() {
    let net = FakeNet::executor();
    let before = net.snapshot();
    let p = plan("--apply", &["10.0.0.9"]);

    let first = apply::apply(&p, &net).unwrap();
    assert_eq!(first.added, 5, "{:#?}", first.lines);
    assert!(!first.chain_created);
    // Ours come first in both chains, in the plan's order.
    let input = net.chain_rules("INPUT");
    assert!(input[0].contains("-p udp -m udp --dport 53"), "{input:#?}");
    assert!(input[1].contains("-p tcp -m tcp --dport 53"));
    assert!(input[3].ends_with("-j DROP"));
    let admin = net.chain_rules("CNI-ADMIN");
    assert!(
        admin[0].contains("--ctstate ESTABLISHED --ctdir ORIGINAL -m comment"),
        "{admin:#?}"
    );
    assert!(admin[1].contains("--match-set dnsbridge-registry dst"));
    assert!(admin[2].contains("-d 10.0.0.9/32"));
    assert_eq!(admin[3], "-p udp -m udp --dport 53 -j ACCEPT");

    let after_first = net.snapshot();
    let second = apply::apply(&p, &net).unwrap();
    assert!(second.unchanged(), "{:#?}", second.lines);
    assert_eq!(second.kept, 5);
    assert_eq!(net.snapshot(), after_first);

    let removed = firewall::remove_all(&p, &net).unwrap();
    assert_eq!(removed.removed, 5);
    assert!(!removed.chain_deleted, "the executor's CNI-ADMIN stays");
    assert_eq!(net.snapshot(), before);
    // The sets stay.
    assert_eq!(net.state.lock().unwrap().sets.len(), 2);
}

#[test]
fn apply_converges_after_a_change_of_plan() {
    let net = FakeNet::executor();
    apply::apply(&plan("--apply", &["10.0.0.9", "10.0.0.10"]), &net).unwrap();
    let r = apply::apply(&plan("--apply --ports 443,5000", &["10.0.0.10"]), &net).unwrap();
    // 10.0.0.9:443 goes; set:5000 and 10.0.0.10:5000 come.
    assert_eq!((r.removed, r.added), (1, 2), "{:#?}", r.lines);
    let admin = net.chain_rules("CNI-ADMIN").join("\n");
    assert!(!admin.contains("10.0.0.9/32"));
    assert!(admin.contains("-d 10.0.0.10/32 -p tcp -m tcp --dport 5000"));
}

#[test]
fn a_rule_behind_a_drop_is_moved_in_front() {
    let net = FakeNet::executor();
    let p = plan("--apply", &[]);
    apply::apply(&p, &net).unwrap();
    // Someone (the executor re-running its setup with -I) puts a drop first.
    net.push_rule("INPUT", "-s 10.61.0.0/16 -j DROP", true);
    let r = apply::apply(&p, &net).unwrap();
    assert_eq!((r.removed, r.added), (2, 2), "{:#?}", r.lines);
    let input = net.chain_rules("INPUT");
    assert!(
        input[0].contains("--dport 53") && input[1].contains("--dport 53"),
        "{input:#?}"
    );
}

#[test]
fn works_without_cni_admin_and_remove_takes_the_chain_back() {
    let net = FakeNet::bare();
    let before = net.snapshot();
    let p = plan("--apply", &[]);
    let r = apply::apply(&p, &net).unwrap();
    assert!(r.chain_created);
    // CNI comes later: it tolerates the chain and links it; the executor appends.
    {
        let mut s = net.state.lock().unwrap();
        s.chains.push("CNI-FORWARD".into());
    }
    net.push_rule("FORWARD", "-j CNI-FORWARD", false);
    net.push_rule("CNI-FORWARD", "-j CNI-ADMIN", false);
    net.push_rule("CNI-ADMIN", "-s 10.61.0.0/16 -d 10.0.0.0/8 -p tcp -j DROP", false);
    assert!(apply::apply(&p, &net).unwrap().unchanged());
    let r = firewall::remove_all(&p, &net).unwrap();
    assert!(!r.chain_deleted, "CNI uses the chain now");
    assert_eq!(
        net.chain_rules("CNI-ADMIN"),
        vec!["-s 10.61.0.0/16 -d 10.0.0.0/8 -p tcp -j DROP"]
    );

    // Alone: apply then remove leaves the table as it was.
    let net = FakeNet::bare();
    apply::apply(&p, &net).unwrap();
    let r = firewall::remove_all(&p, &net).unwrap();
    assert!(r.chain_deleted);
    assert_eq!(net.snapshot(), before);
}

#[test]
fn an_incompatible_existing_set_is_an_error() {
    let net = FakeNet::executor();
    net.state
        .lock()
        .unwrap()
        .sets
        .insert("dnsbridge-registry".into(), "hash:net family inet".into());
    let err = apply::apply(&plan("--apply", &[]), &net).unwrap_err();
    assert!(err.to_string().contains("exists with other parameters"), "{err}");
    assert_eq!(err.exit_code(), firewall::EXIT_FAILED);
    assert!(net.chain_rules("INPUT").iter().all(|r| !r.contains("dnsbridge")));

    // Other sizes are fine: same type, family and timeouts.
    let net = FakeNet::executor();
    net.state.lock().unwrap().sets.insert(
        "dnsbridge-registry".into(),
        "hash:ip family inet hashsize 4096 maxelem 1000 timeout 0".into(),
    );
    assert_eq!(apply::apply(&plan("--apply", &[]), &net).unwrap().added, 4);
}

/// Records `ipset restore` input; fails on demand.
#[derive(Default)]
struct FakeIpset {
    restores: Mutex<Vec<String>>,
    fail_next: Mutex<usize>,
}

impl Runner for FakeIpset {
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> io::Result<CommandOutput> {
        match argv.get(1).map(String::as_str) {
            Some("create") => Ok(CommandOutput::ok("")),
            Some("-exist") => {
                let mut fail = self.fail_next.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Ok(CommandOutput::failed(
                        1,
                        "ipset v7.17: Error in line 1: Hash is full, cannot add more elements",
                    ));
                }
                self.restores
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(stdin.unwrap_or_default()).into_owned());
                Ok(CommandOutput::ok(""))
            }
            _ => panic!("unexpected {argv:?}"),
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn egress_dedupes_and_only_grows_timeouts() {
    let rt = runtime();
    let fake = Arc::new(FakeIpset::default());
    rt.block_on(async {
        let mut opts = EgressOptions::new("reg", Duration::from_secs(10));
        opts.runner = fake.clone();
        let set = EgressSet::start_with(opts).unwrap();
        let a: IpAddr = "10.200.0.10".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        assert!(set.record_and_wait(&[(a, 30), (b, 5)], Duration::from_secs(5)).await);
        assert!(set.contains(a) && set.contains(b));
        // The same answer again, and a shorter TTL: nothing to do.
        set.record(a, 30);
        set.record(a, 3);
        // Loopback and unspecified addresses are never opened.
        set.record("127.0.0.1".parse().unwrap(), 30);
        set.record("0.0.0.0".parse().unwrap(), 30);
        // A longer TTL grows the timeout.
        assert!(set.record_and_wait(&[(a, 300)], Duration::from_secs(5)).await);
        // A v4-mapped address counts as the IPv4 one.
        assert!(
            set.record_and_wait(&[("::ffff:10.200.0.10".parse().unwrap(), 30)], Duration::from_secs(5))
                .await
        );
        let all = fake.restores.lock().unwrap().concat();
        assert_eq!(
            all,
            "add reg 10.200.0.10 timeout 40\nadd reg-v6 2001:db8::7 timeout 15\nadd reg 10.200.0.10 timeout 310\n"
        );
        let st = set.stats();
        assert_eq!((st.added, st.failures, st.dropped, st.live), (3, 0, 0, 2));
    });
}

#[test]
fn egress_timeout_is_never_zero_and_failures_are_counted() {
    let rt = runtime();
    let fake = Arc::new(FakeIpset::default());
    rt.block_on(async {
        let mut opts = EgressOptions::new("reg", Duration::ZERO);
        opts.runner = fake.clone();
        let set = EgressSet::start_with(opts).unwrap();
        let a: IpAddr = "10.200.0.10".parse().unwrap();
        *fake.fail_next.lock().unwrap() = 1;
        assert!(!set.record_and_wait(&[(a, 0)], Duration::from_secs(5)).await);
        let st = set.stats();
        assert_eq!((st.failures, st.failed_entries, st.added, st.live), (1, 1, 0, 0));
        // Forgotten after the failure, so the next answer tries again.
        assert!(set.record_and_wait(&[(a, 0)], Duration::from_secs(5)).await);
        assert_eq!(
            fake.restores.lock().unwrap().concat(),
            "add reg 10.200.0.10 timeout 1\n"
        );
        // It expires from the model after its 1 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while set.stats().expired == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(set.stats().expired, 1);
        assert!(!set.contains(a));
    });
}

#[test]
fn egress_needs_a_runtime() {
    let err = EgressSet::start("reg".into(), Duration::from_secs(1)).err().unwrap();
    assert!(matches!(err, dnsbridge::egress::EgressError::NoRuntime), "{err}");
}
