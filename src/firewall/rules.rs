//! The rules `dnsbridge firewall` wants, computed from its arguments alone
//! (no system access), and their rendering as a shell script for `--print`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::egress;
use crate::firewall::exec::shell_line;

/// The comment every rule of ours carries (`-m comment --comment dnsbridge`):
/// `--remove` takes out exactly the rules with this tag.
pub const COMMENT: &str = "dnsbridge";
/// The chain the executor (and CNI's firewall plugin) keep their microVM
/// forwarding exceptions in. `FORWARD` -> `CNI-FORWARD` -> `CNI-ADMIN`.
pub const ADMIN_CHAIN: &str = "CNI-ADMIN";
/// Where the executor drops microVM traffic to the host itself.
pub const INPUT_CHAIN: &str = "INPUT";
/// Port of DNS, opened over UDP and TCP to the proxy's addresses.
pub const DNS_PORT: u16 = 53;

/// IPv4 or IPv6: which of `iptables`/`ip6tables` and which set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The iptables program for this family.
    pub fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// An address range such as `10.61.0.0/16`, kept in its network form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Builds a range; host bits are cleared (`10.61.0.1/16` is `10.61.0.0/16`).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = Family::of(&addr).host_prefix();
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than /{max}"));
        }
        let network = match addr {
            IpAddr::V4(a) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { network, prefix })
    }

    /// A single address as a `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            network: addr,
            prefix: Family::of(&addr).host_prefix(),
        }
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> Family {
        Family::of(&self.network)
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(*ip, self.prefix).map(|c| c.network) == Ok(self.network)
            }
            _ => false,
        }
    }

    /// The first host address of the range (`10.61.0.1` for `10.61.0.0/16`):
    /// the bridge address the microVMs' gateway and resolver live on.
    pub fn first_host(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err(format!(
                "{s:?} is not a range: expected ADDRESS/PREFIX such as 10.61.0.0/16"
            ));
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        Cidr::new(addr, prefix)
    }
}

/// One iptables rule: a chain and the rule specification, written exactly as
/// `iptables -S` prints it back (so that what we find can be compared with
/// what we want).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub chain: String,
    pub spec: Vec<String>,
}

impl Rule {
    /// The rule as an `iptables -S` line (`-A CHAIN spec...`).
    pub fn to_s_line(&self) -> String {
        let mut argv = vec!["-A".to_string(), self.chain.clone()];
        argv.extend(self.spec.iter().cloned());
        shell_line(&argv)
    }

    /// The argv (without the program) for `ACTION CHAIN [POS] spec...`.
    pub fn argv(&self, action: &str, position: Option<usize>) -> Vec<String> {
        let mut argv = vec!["-w".to_string(), action.to_string(), self.chain.clone()];
        if let Some(p) = position {
            argv.push(p.to_string());
        }
        argv.extend(self.spec.iter().cloned());
        argv
    }

    /// The full command line, program included, for messages and `--print`.
    pub fn command(&self, action: &str, position: Option<usize>) -> String {
        let mut argv = vec![self.family.iptables().to_string()];
        argv.extend(self.argv(action, position));
        shell_line(&argv)
    }
}

/// Everything `firewall` needs to know, validated. Built from the command
/// line and the routes' IP destinations by [`Plan::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The microVM subnet (`10.61.0.0/16`): the only source the rules open.
    pub vm_cidr: Cidr,
    /// The proxy's addresses that the microVMs query (DNS over UDP and TCP).
    pub dns_addresses: Vec<IpAddr>,
    /// The TCP ports opened to the registries' addresses.
    pub ports: Vec<u16>,
    /// The IPv4 set name; the IPv6 set is `NAME-v6`.
    pub set: String,
    /// IP destinations of routes, opened by a rule each (never expire).
    pub static_ips: Vec<IpAddr>,
    /// IP destinations left out, with the reason (other family, inside the
    /// microVM subnet, not a unicast address).
    pub skipped: Vec<(IpAddr, String)>,
    /// Seconds added to every set entry's TTL by `serve` (shown, not used by
    /// the rules themselves).
    pub grace_secs: u64,
}

impl Plan {
    /// Validates the inputs. `dns_addresses` empty means the first host of the
    /// subnet (the bridge address, `10.61.0.1`).
    pub fn build(
        vm_cidr: Cidr,
        dns_addresses: &[IpAddr],
        ports: &[u16],
        set: &str,
        static_ips: &[IpAddr],
        grace_secs: u64,
    ) -> Result<Plan, String> {
        let family = vm_cidr.family();
        if vm_cidr.prefix() == 0 {
            return Err(format!(
                "--vm-cidr {vm_cidr} covers every address: give the microVM subnet (such as 10.61.0.0/16)"
            ));
        }
        egress::validate_set_name(set)?;

        let mut dns: Vec<IpAddr> = if dns_addresses.is_empty() {
            vec![vm_cidr.first_host()]
        } else {
            dns_addresses.to_vec()
        };
        for ip in &dns {
            if Family::of(ip) != family {
                return Err(format!(
                    "--dns-address {ip} is not in the family of --vm-cidr {vm_cidr}"
                ));
            }
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(format!("--dns-address {ip} is not a unicast address"));
            }
        }
        dedup_in_order(&mut dns);

        if ports.is_empty() {
            return Err("--ports needs at least one port".into());
        }
        if ports.contains(&0) {
            return Err("--ports: 0 is not a port".into());
        }
        let mut ports = ports.to_vec();
        dedup_in_order(&mut ports);

        let mut statics = Vec::new();
        let mut skipped = Vec::new();
        for ip in static_ips {
            let reason = if Family::of(ip) != family {
                Some(format!(
                    "not reachable from the {} microVM subnet {vm_cidr}",
                    match family {
                        Family::V4 => "IPv4",
                        Family::V6 => "IPv6",
                    }
                ))
            } else if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                Some("not a unicast address of another host".to_string())
            } else if vm_cidr.contains(ip) {
                Some(format!(
                    "inside the microVM subnet {vm_cidr}, which the executor keeps isolated"
                ))
            } else {
                None
            };
            match reason {
                Some(r) => skipped.push((*ip, r)),
                None => statics.push(*ip),
            }
        }
        dedup_in_order(&mut statics);
        skipped.dedup();

        Ok(Plan {
            vm_cidr,
            dns_addresses: dns,
            ports,
            set: set.to_string(),
            static_ips: statics,
            skipped,
            grace_secs,
        })
    }

    pub fn family(&self) -> Family {
        self.vm_cidr.family()
    }

    /// The set matched by the rules (the IPv4 set, or `NAME-v6` for an IPv6
    /// microVM subnet).
    pub fn matched_set(&self) -> String {
        match self.family() {
            Family::V4 => self.set.clone(),
            Family::V6 => egress::v6_set_name(&self.set),
        }
    }

    /// The rules in the order they should appear at the top of each chain.
    /// INPUT rules first, then CNI-ADMIN rules.
    pub fn rules(&self) -> Vec<Rule> {
        let family = self.family();
        let src = self.vm_cidr.to_string();
        let mut rules = Vec::new();
        let mut push = |chain: &str, spec: Vec<String>| {
            let mut spec = spec;
            spec.extend(["-m", "comment", "--comment", COMMENT, "-j", "ACCEPT"].map(String::from));
            rules.push(Rule {
                family,
                chain: chain.to_string(),
                spec,
            });
        };
        let dport = DNS_PORT.to_string();
        for dns in &self.dns_addresses {
            let dst = Cidr::host(*dns).to_string();
            for proto in ["udp", "tcp"] {
                push(
                    INPUT_CHAIN,
                    strings(&["-s", &src, "-d", &dst, "-p", proto, "-m", proto, "--dport", &dport]),
                );
            }
        }
        // Packets of connections the microVM itself opened (original
        // direction), once established: a transfer outlives the set entry that
        // let it start. Never a new connection, and not the microVM's replies
        // to connections from elsewhere, which the executor did not allow.
        push(
            ADMIN_CHAIN,
            strings(&[
                "-s",
                &src,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED",
                "--ctdir",
                "ORIGINAL",
            ]),
        );
        let set = self.matched_set();
        for port in &self.ports {
            let port = port.to_string();
            push(
                ADMIN_CHAIN,
                strings(&[
                    "-s",
                    &src,
                    "-p",
                    "tcp",
                    "-m",
                    "tcp",
                    "--dport",
                    &port,
                    "-m",
                    "set",
                    "--match-set",
                    &set,
                    "dst",
                ]),
            );
        }
        for ip in &self.static_ips {
            let dst = Cidr::host(*ip).to_string();
            for port in &self.ports {
                let port = port.to_string();
                push(
                    ADMIN_CHAIN,
                    strings(&["-s", &src, "-d", &dst, "-p", "tcp", "-m", "tcp", "--dport", &port]),
                );
            }
        }
        rules
    }

    /// The `--print` output: a shell script that builds the same state from
    /// scratch. Nothing is read from or written to the system.
    pub fn script(&self) -> String {
        let mut out = String::new();
        let family = self.family();
        let ipt = family.iptables();
        out.push_str(
            "# dnsbridge firewall: the rules `--apply` puts in place (tagged with the comment \"dnsbridge\").\n",
        );
        out.push_str(&format!(
            "# microVM subnet {}; DNS to {}; TCP ports {}; set {} (IPv6: {}).\n",
            self.vm_cidr,
            join(&self.dns_addresses),
            join(&self.ports),
            self.set,
            egress::v6_set_name(&self.set),
        ));
        out.push_str(&format!(
            "# `dnsbridge serve --egress-set {}` adds every address of a routed answer with timeout = TTL + {} s.\n",
            self.set, self.grace_secs
        ));
        for (ip, why) in &self.skipped {
            out.push_str(&format!("# skipped route destination {ip}: {why}\n"));
        }
        for argv in egress::create_set_commands(&self.set) {
            out.push_str(&shell_line(&argv));
            out.push('\n');
        }
        out.push_str(&format!(
            "{ipt} -w -S {ADMIN_CHAIN} >/dev/null 2>&1 || {ipt} -w -N {ADMIN_CHAIN}\n"
        ));
        let mut position = std::collections::HashMap::<String, usize>::new();
        for rule in self.rules() {
            let p = position.entry(rule.chain.clone()).or_insert(0);
            *p += 1;
            out.push_str(&rule.command("-I", Some(*p)));
            out.push('\n');
        }
        out
    }
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

fn dedup_in_order<T: PartialEq + Clone>(v: &mut Vec<T>) {
    let mut seen: Vec<T> = Vec::with_capacity(v.len());
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(x.clone());
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.61.0.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.61.0.0/16");
        assert!(c.contains(&"10.61.255.1".parse().unwrap()));
        assert!(!c.contains(&"10.62.0.1".parse().unwrap()));
        assert!(!c.contains(&"::1".parse().unwrap()));
        assert_eq!(c.first_host().to_string(), "10.61.0.1");
        assert!("10.61.0.0".parse::<Cidr>().is_err());
        assert!("10.61.0.0/33".parse::<Cidr>().is_err());
        let v6: Cidr = "fd00:61::5/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00:61::/64");
        assert_eq!(v6.first_host().to_string(), "fd00:61::1");
    }
}
