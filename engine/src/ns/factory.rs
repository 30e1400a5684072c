//! The socket factory: a helper process that stays in the guest's network namespace and
//! hands the engine fresh TCP sockets created there, for spliced port forwards
//! ([`crate::router::splice`]).
//!
//! A socket belongs to the network namespace it was created in, whoever uses it later: the
//! engine binds, connects, reads and writes a factory socket from the host namespaces, and
//! its traffic runs inside the guest's. The engine cannot create such sockets itself (it
//! never joins the guest's namespaces: `setns(CLONE_NEWUSER)` needs a single-threaded
//! process, and the sandbox forbids `setns` later), so a forked child joins them once and
//! serves requests over a `SOCK_SEQPACKET` pair:
//!
//! * request: 2 bytes, `[family (4 or 6), count]`;
//! * reply: 2 bytes, `[sockets sent, errno of the first failure or 0]`, with the sockets
//!   (nonblocking, close-on-exec, `SOCK_STREAM`) attached as SCM_RIGHTS, at most [`FACTORY_BATCH`] per reply.
//!
//! The child can do nothing else: it makes raw system calls only (see [`super::sys`]),
//! keeps no descriptor but its end of the pair and `/dev/null`, and exits when the engine
//! closes the pair or dies (`PR_SET_PDEATHSIG`). What a compromised engine could get from
//! it is TCP sockets in the guest's own namespace, which the guest's TAP reaches anyway.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;

use super::{Namespaces, NetnsType, NsError, TapTarget, fork_with_socket, sys};

/// Most sockets the factory sends in one reply (one request per this many spliced
/// connections).
pub const FACTORY_BATCH: usize = 8;
const _: () = assert!(FACTORY_BATCH <= sys::MAX_FDS_PER_MESSAGE && FACTORY_BATCH < 256);

/// How long the engine waits for a reply before it stops using the factory.
const FACTORY_TIMEOUT: Duration = Duration::from_secs(1);

/// The engine's side of the factory: pools of ready sockets per family.
pub struct SocketFactory {
    sock: OwnedFd,
    pid: Pid,
    v4: Vec<OwnedFd>,
    v6: Vec<OwnedFd>,
    failed: bool,
}

impl std::fmt::Debug for SocketFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketFactory")
            .field("pid", &self.pid)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Start a factory in `target`'s network namespace (joining its user namespace first when
/// that is not ours). `None` for `--netns-type=tapfd`, which names no namespace.
pub fn spawn_socket_factory(target: &TapTarget) -> Result<Option<SocketFactory>, NsError> {
    if target.netns_type == NetnsType::TapFd {
        return Ok(None);
    }
    let ns = Namespaces::resolve(target)?;
    spawn_in(&ns).map(Some)
}

/// Start a factory in the namespaces of process `pid` (`usernet run`'s child).
pub fn spawn_socket_factory_for_pid(pid: Pid) -> Result<SocketFactory, NsError> {
    let target = TapTarget {
        netns_type: NetnsType::Pid,
        target: pid.to_string(),
        userns_path: None,
        tap_name: String::new(),
    };
    let ns = Namespaces::resolve(&target)?;
    spawn_in(&ns)
}

fn spawn_in(ns: &Namespaces) -> Result<SocketFactory, NsError> {
    let args = FactoryArgs {
        user: ns.user.as_ref().map(|f| f.as_fd()),
        net: ns.net.as_fd(),
    };
    let (pid, sock) = fork_with_socket(&args, factory_main)?;
    let timeout = nix::sys::time::TimeVal::new(FACTORY_TIMEOUT.as_secs() as i64, 0);
    let _ =
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &timeout);
    let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SendTimeout, &timeout);
    tracing::debug!(%pid, "socket factory started in the guest's namespace");
    Ok(SocketFactory {
        sock,
        pid,
        v4: Vec::new(),
        v6: Vec::new(),
        failed: false,
    })
}

impl SocketFactory {
    /// A fresh TCP socket of the guest's namespace, or `None` once the factory has failed
    /// (the caller then uses the ordinary path).
    pub fn take(&mut self, v6: bool) -> Option<OwnedFd> {
        let pooled = if v6 { self.v6.pop() } else { self.v4.pop() };
        if pooled.is_some() || self.failed {
            return pooled;
        }
        match self.request(v6) {
            Ok(mut fds) => {
                let fd = fds.pop();
                if v6 {
                    self.v6 = fds;
                } else {
                    self.v4 = fds;
                }
                fd
            }
            Err(e) => {
                tracing::warn!(
                    "the socket factory in the guest's namespace failed ({e}); forwards from the host's loopback take the ordinary path from now on"
                );
                self.failed = true;
                None
            }
        }
    }

    /// Whether the factory still serves.
    pub fn working(&self) -> bool {
        !self.failed
    }

    fn request(&mut self, v6: bool) -> Result<Vec<OwnedFd>, Errno> {
        let req = [if v6 { 6 } else { 4 }, FACTORY_BATCH as u8];
        let n = nix::unistd::write(&self.sock, &req)?;
        if n != req.len() {
            return Err(Errno::EIO);
        }
        let mut buf = [0u8; 2];
        let mut cmsg = nix::cmsg_space!([RawFd; FACTORY_BATCH]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = loop {
            match nix::sys::socket::recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut fds = Vec::with_capacity(FACTORY_BATCH);
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we
                    // are its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
        let bytes = msg.bytes;
        if bytes == 0 {
            return Err(Errno::EPIPE);
        }
        if fds.is_empty() {
            return Err(match buf[1] {
                0 => Errno::EIO,
                e => Errno::from_raw(i32::from(e)),
            });
        }
        Ok(fds)
    }
}

impl Drop for SocketFactory {
    fn drop(&mut self) {
        // Closing our end ends the child's loop; SIGKILL covers a child that is stuck.
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = super::reap(self.pid);
    }
}

/// What the factory child needs.
struct FactoryArgs<'a> {
    user: Option<BorrowedFd<'a>>,
    net: BorrowedFd<'a>,
}

/// Body of the factory child. Never returns.
fn factory_main(args: &FactoryArgs<'_>, sock: OwnedFd) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers only; PR_SET_NAME reads a
    // NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NAME, c"usernet-sockets".as_ptr());
    }
    if let Some(user) = args.user
        && nix::sched::setns(user, CloneFlags::CLONE_NEWUSER).is_err()
    {
        sys::exit_now(1);
    }
    if nix::sched::setns(args.net, CloneFlags::CLONE_NEWNET).is_err() {
        sys::exit_now(1);
    }
    // Keep nothing of the engine's: the pair on fd 3, /dev/null as stdio, all else closed.
    // SAFETY: dup2 and close_range act on this process's descriptor table only.
    unsafe {
        if libc::dup2(sock.as_raw_fd(), 3) < 0 {
            sys::exit_now(1);
        }
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    std::mem::forget(sock);
    if let Ok(null) = sys::open(c"/dev/null", libc::O_RDWR) {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process only.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: fd 3 is the pair's end, duplicated just above; nothing else owns it now.
    let sock = unsafe { BorrowedFd::borrow_raw(3) };
    loop {
        let mut req = [0u8; 2];
        match sys::read_retry(sock, &mut req) {
            Ok(2) => {}
            _ => sys::exit_now(0),
        }
        let domain = if req[0] == 6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let want = usize::from(req[1]).clamp(1, FACTORY_BATCH);
        let mut fds: [RawFd; FACTORY_BATCH] = [-1; FACTORY_BATCH];
        let mut made = 0;
        let mut err = 0u8;
        while made < want {
            // SAFETY: socket(2) takes integers only.
            let fd = unsafe {
                libc::socket(
                    domain,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            if fd < 0 {
                err = u8::try_from(Errno::last_raw()).unwrap_or(u8::MAX);
                break;
            }
            fds[made] = fd;
            made += 1;
        }
        let sent = sys::send_with_fds(sock, &[made as u8, err], &fds[..made]);
        for fd in &fds[..made] {
            // SAFETY: closing descriptors this loop created; the engine has its copies.
            unsafe { libc::close(*fd) };
        }
        if sent.is_err() {
            sys::exit_now(0);
        }
    }
}
