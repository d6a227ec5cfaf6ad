//! A minimal stub resolver for the DNS stage: one server, UDP first, TCP when
//! the answer is truncated. Never the system resolver.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use crate::name::Name;
use crate::wire::{self, MessageBuilder, Response, class, flags, rcode, rtype};

/// Bound on CNAME hops followed in one answer.
const MAX_CHAIN: usize = 16;
/// Bound on unrelated datagrams read while waiting for one answer.
const MAX_STRAY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("{0}: {1}")]
    Io(SocketAddr, io::Error),
    #[error("malformed answer from {0}: {1}")]
    Malformed(SocketAddr, wire::WireError),
}

impl DnsError {
    pub fn refused_or_unreachable(&self) -> bool {
        matches!(self, DnsError::Io(_, e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset))
    }
}

/// One answer, and whether it needed TCP.
pub struct Answer {
    pub response: Response,
    pub over_tcp: bool,
}

/// Sends one query for `name`/`qtype` to `server` (UDP, then TCP on TC).
pub async fn query(server: SocketAddr, name: &Name, qtype: u16, timeout: Duration) -> Result<Answer, DnsError> {
    let deadline = Instant::now() + timeout;
    let id: u16 = rand::random();
    let mut b = MessageBuilder::query(id, flags::RD, name, qtype);
    b.put_opt(wire::OUR_UDP_SIZE, 0, false, &[]);
    let msg = b.finish();
    let timed_out = || DnsError::Timeout(server, timeout);
    let udp = match timeout_at(deadline, udp_exchange(server, &msg, name, qtype, id, timeout)).await {
        Err(_) => return Err(timed_out()),
        Ok(r) => r?,
    };
    let resp = Response::parse(&udp).map_err(|e| DnsError::Malformed(server, e))?;
    if !resp.truncated() {
        return Ok(Answer {
            response: resp,
            over_tcp: false,
        });
    }
    let tcp = match timeout_at(deadline, tcp_exchange(server, &msg, name, qtype, id)).await {
        Err(_) => return Err(timed_out()),
        Ok(r) => r?,
    };
    let resp = Response::parse(&tcp).map_err(|e| DnsError::Malformed(server, e))?;
    Ok(Answer {
        response: resp,
        over_tcp: true,
    })
}

async fn udp_exchange(
    server: SocketAddr,
    msg: &[u8],
    name: &Name,
    qtype: u16,
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, DnsError> {
    let io = |e| DnsError::Io(server, e);
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    let mut buf = vec![0u8; 65535];
    // Two tries: the second after half the time budget, as stub resolvers do.
    for attempt in 0..2 {
        sock.send(msg).await.map_err(io)?;
        let wait = Instant::now() + if attempt == 0 { timeout / 2 } else { timeout };
        for _ in 0..MAX_STRAY {
            let n = match timeout_at(wait, sock.recv(&mut buf)).await {
                Err(_) => break,
                Ok(r) => r.map_err(io)?,
            };
            let got = &buf[..n];
            if wire::read_u16(got, 0) == Some(id) && wire::response_matches(got, name.wire(), qtype, class::IN) {
                return Ok(got.to_vec());
            }
        }
    }
    Err(DnsError::Timeout(server, timeout))
}

async fn tcp_exchange(server: SocketAddr, msg: &[u8], name: &Name, qtype: u16, id: u16) -> Result<Vec<u8>, DnsError> {
    let io = |e| DnsError::Io(server, e);
    let mut s = TcpStream::connect(server).await.map_err(io)?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    s.write_all(&out).await.map_err(io)?;
    let len = s.read_u16().await.map_err(io)? as usize;
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).await.map_err(io)?;
    if wire::read_u16(&buf, 0) != Some(id) || !wire::response_matches(&buf, name.wire(), qtype, class::IN) {
        return Err(DnsError::Io(
            server,
            io::Error::new(io::ErrorKind::InvalidData, "the TCP answer does not match the query"),
        ));
    }
    Ok(buf)
}

/// One CNAME hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub name: String,
    pub cname: String,
    pub ttl: u32,
}

/// One address with its TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Addr {
    pub address: IpAddr,
    pub ttl: u32,
}

/// A and AAAA for one name from one server, with the CNAME chain.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub server: SocketAddr,
    /// "NOERROR", "NXDOMAIN", ... (the worse of the A and AAAA answers).
    pub rcode: &'static str,
    pub chain: Vec<Link>,
    pub addresses: Vec<Addr>,
    /// The name the chain ends at.
    pub final_name: String,
    pub over_tcp: bool,
    /// Problems with one of the two queries when the other one answered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Resolution {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(|a| a.address).collect()
    }
    pub fn chain_has(&self, name: &str) -> bool {
        self.chain.iter().any(|l| l.cname == name)
    }
}

pub fn rcode_name(rc: u8) -> &'static str {
    match rc {
        rcode::NOERROR => "NOERROR",
        rcode::FORMERR => "FORMERR",
        rcode::SERVFAIL => "SERVFAIL",
        rcode::NXDOMAIN => "NXDOMAIN",
        rcode::NOTIMP => "NOTIMP",
        rcode::REFUSED => "REFUSED",
        _ => "OTHER",
    }
}

/// Resolves A and AAAA for `name` through `server`, concurrently.
pub async fn resolve(server: SocketAddr, name: &Name, timeout: Duration) -> Result<Resolution, DnsError> {
    let (a, aaaa) = tokio::join!(
        query(server, name, rtype::A, timeout),
        query(server, name, rtype::AAAA, timeout)
    );
    let mut notes = Vec::new();
    let (first, second) = match (a, aaaa) {
        (Err(e), Err(_)) => return Err(e),
        (Ok(a), Err(e)) => {
            notes.push(format!("AAAA query failed: {e}"));
            (a, None)
        }
        (Err(e), Ok(b)) => {
            notes.push(format!("A query failed: {e}"));
            (b, None)
        }
        (Ok(a), Ok(b)) => (a, Some(b)),
    };
    let over_tcp = first.over_tcp || second.as_ref().is_some_and(|s| s.over_tcp);
    let mut rc = first.response.rcode();
    if let Some(s) = &second {
        rc = worse_rcode(rc, s.response.rcode());
    }
    let (chain, final_name) = follow_chain(name, &first.response);
    let mut addresses = addresses_of(&final_name, &first.response);
    if let Some(s) = &second {
        let (chain2, final2) = follow_chain(name, &s.response);
        if chain2.len() > chain.len() && addresses.is_empty() {
            // The A answer was cut short; keep the longer chain.
            addresses = addresses_of(&final2, &s.response);
            return Ok(Resolution {
                server,
                rcode: rcode_name(rc),
                chain: chain2,
                final_name: final2.to_string(),
                addresses: merge(addresses, addresses_of(&final2, &first.response)),
                over_tcp,
                notes,
            });
        }
        addresses = merge(addresses, addresses_of(&final_name, &s.response));
    }
    Ok(Resolution {
        server,
        rcode: rcode_name(rc),
        chain,
        final_name: final_name.to_string(),
        addresses,
        over_tcp,
        notes,
    })
}

fn worse_rcode(a: u8, b: u8) -> u8 {
    let rank = |r: u8| match r {
        rcode::NOERROR => 0,
        rcode::NXDOMAIN => 1,
        _ => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

fn merge(mut a: Vec<Addr>, b: Vec<Addr>) -> Vec<Addr> {
    for x in b {
        if !a.iter().any(|y| y.address == x.address) {
            a.push(x);
        }
    }
    a
}

/// Follows the CNAME records of the answer section from `qname` (bounded).
fn follow_chain(qname: &Name, resp: &Response) -> (Vec<Link>, Name) {
    let mut cur = qname.clone();
    let mut chain = Vec::new();
    for _ in 0..MAX_CHAIN {
        let Some((target, ttl)) = resp
            .answers
            .iter()
            .find(|r| r.rtype == rtype::CNAME && r.owner == cur)
            .and_then(|r| Some((r.cname_target()?, r.ttl)))
        else {
            break;
        };
        chain.push(Link {
            name: cur.to_string(),
            cname: target.to_string(),
            ttl,
        });
        cur = target;
    }
    (chain, cur)
}

fn addresses_of(owner: &Name, resp: &Response) -> Vec<Addr> {
    resp.answers
        .iter()
        .filter(|r| &r.owner == owner)
        .filter_map(|r| {
            let ip = match (r.rtype, r.rdata.len()) {
                (rtype::A, 4) => IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).ok()?),
                (rtype::AAAA, 16) => IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).ok()?),
                _ => return None,
            };
            Some(Addr {
                address: ip,
                ttl: r.ttl,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(records: &[(&str, u16, Vec<u8>)]) -> Response {
        let q = Name::parse("registry.corp.example").unwrap();
        let mut b = MessageBuilder::query(7, flags::QR, &q, rtype::A);
        for (owner, t, rd) in records {
            let n = Name::parse(owner).unwrap();
            b.put_record(1, Some(&n), *t, class::IN, 60, rd);
        }
        Response::parse(&b.finish()).unwrap()
    }

    #[test]
    fn chain_and_addresses() {
        let lb = Name::parse("lb.public.example").unwrap();
        let edge = Name::parse("edge.cdn.example").unwrap();
        let r = response(&[
            ("registry.corp.example", rtype::CNAME, lb.wire().to_vec()),
            ("lb.public.example", rtype::CNAME, edge.wire().to_vec()),
            ("edge.cdn.example", rtype::A, vec![127, 0, 0, 9]),
            ("other.example", rtype::A, vec![127, 0, 0, 10]),
        ]);
        let (chain, fin) = follow_chain(&Name::parse("registry.corp.example").unwrap(), &r);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].cname, "edge.cdn.example");
        assert_eq!(fin, edge);
        let addrs = addresses_of(&fin, &r);
        assert_eq!(
            addrs,
            vec![Addr {
                address: "127.0.0.9".parse().unwrap(),
                ttl: 60
            }]
        );
    }

    #[test]
    fn chain_loop_is_bounded() {
        let a = Name::parse("registry.corp.example").unwrap();
        let b = Name::parse("b.example").unwrap();
        let r = response(&[
            ("registry.corp.example", rtype::CNAME, b.wire().to_vec()),
            ("b.example", rtype::CNAME, a.wire().to_vec()),
        ]);
        let (chain, _) = follow_chain(&a, &r);
        assert_eq!(chain.len(), MAX_CHAIN);
    }
}
