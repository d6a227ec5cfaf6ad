//! Batched UDP I/O: `recvmmsg` and `sendmmsg`.
//!
//! Under load most of a DNS proxy's time goes to system calls; reading every
//! datagram that is waiting in one call, and sending the answers that are
//! ready in one call, is how the null responder of the benchmarks reaches the
//! machine's ceiling. The buffers are allocated once per listener.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams read or written per system call.
pub const BATCH: usize = 32;
/// Largest query read over UDP: bigger ones are cut and then fail to parse.
pub const MAX_QUERY: usize = 4096;

pub struct RecvBatch {
    bufs: Vec<[u8; MAX_QUERY]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    namelens: Vec<libc::socklen_t>,
    truncated: Vec<bool>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; MAX_QUERY]; BATCH],
            // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() }; BATCH],
            lens: vec![0; BATCH],
            namelens: vec![0; BATCH],
            truncated: vec![false; BATCH],
            count: 0,
        }
    }

    /// Waits until the socket is readable, then reads every waiting datagram
    /// (up to [`BATCH`]) in one call. Returns how many were read.
    pub async fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        loop {
            sock.readable().await?;
            match sock.try_io(Interest::READABLE, || self.recv_now(sock.as_raw_fd())) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    #[allow(clippy::needless_range_loop)] // three arrays are set up in step
    fn recv_now(&mut self, fd: i32) -> io::Result<usize> {
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; every pointer in it is set below to
        // a buffer that outlives the call.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for i in 0..BATCH {
            iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovs[i].iov_len = MAX_QUERY;
            hdrs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: hdrs holds BATCH valid headers pointing at live buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs.iter().take(n).enumerate() {
            self.lens[i] = (h.msg_len as usize).min(MAX_QUERY);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.namelens[i] = h.msg_hdr.msg_namelen;
        }
        self.count = n;
        Ok(n)
    }

    /// The i-th datagram of the last batch and its sender; None for a
    /// datagram cut to fit the buffer, or from an address family we do not
    /// serve.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count || self.truncated[i] {
            return None;
        }
        let addr = to_socket_addr(&self.addrs[i], self.namelens[i])?;
        Some((&self.bufs[i][..self.lens[i]], addr))
    }
}

/// Reads the sender's address the kernel wrote.
fn to_socket_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Answers waiting to be sent, flushed with one `sendmmsg`.
#[derive(Default)]
pub struct SendBatch {
    items: Vec<(Vec<u8>, SocketAddr)>,
}

impl SendBatch {
    pub fn push(&mut self, msg: Vec<u8>, to: SocketAddr) {
        self.items.push((msg, to));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything queued; what the kernel does not take at once is
    /// sent one by one.
    pub async fn flush(&mut self, sock: &UdpSocket) {
        let mut sent = 0;
        while sent < self.items.len() {
            let rest = &self.items[sent..];
            match sock.try_io(Interest::WRITABLE, || send_now(sock.as_raw_fd(), rest)) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        for (msg, to) in &self.items[sent..] {
            let _ = sock.send_to(msg, *to).await;
        }
        self.items.clear();
    }
}

#[allow(clippy::needless_range_loop)] // three arrays are set up in step
fn send_now(fd: i32, items: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let n = items.len().min(BATCH);
    let addrs: Vec<SockAddr> = items[..n].iter().map(|(_, a)| SockAddr::from(*a)).collect();
    let mut iovs: Vec<libc::iovec> = items[..n]
        .iter()
        .map(|(m, _)| libc::iovec {
            iov_base: m.as_ptr() as *mut libc::c_void,
            iov_len: m.len(),
        })
        .collect();
    // SAFETY: plain data, every pointer set below to live buffers.
    let mut hdrs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { MaybeUninit::zeroed().assume_init() }).collect();
    for i in 0..n {
        hdrs[i].msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = addrs[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: hdrs holds n valid headers pointing at live buffers.
    let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}
