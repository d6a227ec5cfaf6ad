//! Address helpers: CIDR blocks and `IP[:PORT]` parsing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AddrError {
    #[error("{0:?} is not an IP address")]
    NotIp(String),
    #[error("{0:?} is not an IP address with an optional port (IP, IP:PORT or [IPv6]:PORT)")]
    NotSocket(String),
    #[error("{0:?} is not a CIDR block (such as 10.61.0.0/16)")]
    NotCidr(String),
}

/// An address block such as `10.61.0.0/16`. A bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix as u32)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix as u32)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Cidr, AddrError> {
        let err = || AddrError::NotCidr(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| err())?,
            None => max,
        };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The blocks the executor's firewall drops microVM TCP traffic to
/// (DESIGN.md, "The executor network").
pub const FIREWALLED: [Cidr; 4] = [
    Cidr::v4(10, 0, 0, 0, 8),
    Cidr::v4(192, 168, 0, 0, 16),
    Cidr::v4(172, 16, 0, 0, 12),
    Cidr::v4(169, 254, 0, 0, 16),
];

/// Parses `IP`, `IP:PORT` or `[IPv6]:PORT`, with `default_port` when absent.
pub fn parse_socket(s: &str, default_port: u16) -> Result<SocketAddr, AddrError> {
    let t = s.trim();
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    if let Some(inner) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(v6) = inner.parse::<Ipv6Addr>()
    {
        return Ok(SocketAddr::new(IpAddr::V6(v6), default_port));
    }
    Err(AddrError::NotSocket(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let c: Cidr = "10.61.0.0/16".parse().unwrap();
        assert!(c.contains("10.61.3.4".parse().unwrap()));
        assert!(!c.contains("10.62.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.61.0.9".parse().unwrap()));
        let l: Cidr = "::1".parse().unwrap();
        assert!(l.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }

    #[test]
    fn socket_forms() {
        assert_eq!(parse_socket("10.0.0.2", 53).unwrap(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(
            parse_socket("10.0.0.2:5300", 53).unwrap(),
            "10.0.0.2:5300".parse().unwrap()
        );
        assert_eq!(parse_socket("[::1]:54", 53).unwrap(), "[::1]:54".parse().unwrap());
        assert_eq!(parse_socket("fd00::2", 53).unwrap(), "[fd00::2]:53".parse().unwrap());
        assert!(parse_socket("resolver.corp", 53).is_err());
    }
}
