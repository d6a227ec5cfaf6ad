//! Dropping root after the listeners are bound.
//!
//! Port 53 needs root (or CAP_NET_BIND_SERVICE) only at bind time. After
//! that the proxy runs as an unprivileged user. When it also keeps the
//! microVM egress set filled it must keep CAP_NET_ADMIN, and hand it to the
//! `ipset` child processes as an ambient capability; every other capability
//! is gone.

use std::ffi::CString;
use std::io;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DropError {
    #[error("user {0:?} does not exist")]
    NoUser(String),
    #[error("{0} failed: {1}")]
    Sys(&'static str, io::Error),
}

const CAP_NET_ADMIN: u32 = 12;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), DropError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(DropError::Sys(what, io::Error::last_os_error()))
    }
}

/// Switches to `user` (and its primary group), keeping CAP_NET_ADMIN when
/// `keep_net_admin` is set. Must be called after every listener is bound.
pub fn drop_to(user: &str, keep_net_admin: bool) -> Result<(), DropError> {
    let cname = CString::new(user).map_err(|_| DropError::NoUser(user.to_string()))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other call that could overwrite it.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(cname.as_ptr());
        if pw.is_null() {
            return Err(DropError::NoUser(user.to_string()));
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    // SAFETY: plain system calls with valid arguments; glibc applies the
    // id changes to every thread of the process.
    unsafe {
        if keep_net_admin {
            check("prctl(PR_SET_KEEPCAPS)", libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        }
        check("setgroups", libc::setgroups(0, std::ptr::null()))?;
        check("setgid", libc::setgid(gid))?;
        check("setuid", libc::setuid(uid))?;
        if keep_net_admin {
            let mut hdr = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let bit = 1u32 << CAP_NET_ADMIN;
            let data = [
                CapData {
                    effective: bit,
                    permitted: bit,
                    inheritable: bit,
                },
                CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            check(
                "capset",
                libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) as libc::c_int,
            )?;
            check(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    CAP_NET_ADMIN as libc::c_ulong,
                    0,
                    0,
                ),
            )?;
        }
        check(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
    }
    tracing::info!(user, uid, gid, keep_net_admin, "dropped privileges");
    Ok(())
}
