//! Namespaces, the TAP device and interface configuration.
//!
//! This is how usernet gets hold of the guest's Ethernet device, the way slirp4netns does it
//! (`main.c`: `nsenter()`, `open_tap()`, `sendfd()`):
//!
//! * [`open_tap`] forks a short-lived helper child that joins the target's user and network
//!   namespaces, opens `/dev/net/tun` with `TUNSETIFF(IFF_TAP | IFF_NO_PI)`, optionally
//!   configures the interface with ioctls (`--configure`), and passes the TAP fd back over a
//!   `SOCK_SEQPACKET` socket pair with `SCM_RIGHTS`. With `--netns-type=tapfd` it adopts an
//!   inherited TAP fd instead.
//! * [`spawn_run_child`] (`usernet run`) forks a child that creates fresh user, network and mount
//!   namespaces, opens and configures the TAP there, hands it back, and then waits for
//!   [`RunChild::start`] before it `exec`s the command.
//!
//! Why a child process: `setns(CLONE_NEWUSER)` only works in a single-threaded process, and
//! the engine's own threads must stay in the host namespaces. A forked child of any process is
//! single-threaded. Between `fork` and `exit`/`exec` the children only make raw system calls
//! (no allocation, no locks; see [`sys`]): everything they need (names, addresses, paths, id
//! maps, argv) is prepared by the parent before the fork, and a failure is reported as a
//! fixed-size (step, errno) record ([`report`]) that the parent turns into a sentence.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid};

mod factory;
mod report;
mod run;
mod sys;
mod tap;

#[cfg(test)]
mod tests;

pub use factory::{SocketFactory, spawn_socket_factory, spawn_socket_factory_for_pid};
pub use run::{RunChild, spawn_run_child};

use report::{ErrorContext, Failure, REPORT_LEN, Report, Step};
use tap::TapPlan;

/// How the positional argument of slirp4netns is interpreted (`--netns-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsType {
    /// A PID: join `/proc/PID/ns/user` and `/proc/PID/ns/net` (the default).
    Pid,
    /// A path to a network namespace file (e.g. `/run/netns/NAME`).
    Path,
    /// The number of an already-open TAP file descriptor inherited from the caller.
    TapFd,
}

/// Where the TAP device lives.
#[derive(Clone, Debug)]
pub struct TapTarget {
    pub netns_type: NetnsType,
    /// PID, path or fd number, depending on `netns_type`.
    pub target: String,
    /// `--userns-path`: a user namespace to join (overrides `/proc/PID/ns/user` for pid targets).
    pub userns_path: Option<PathBuf>,
    /// TAP interface name (slirp4netns default `tap0`).
    pub tap_name: String,
}

/// Interface configuration applied inside the namespace when `configure` is set (`-c`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfConfig {
    pub configure: bool,
    /// The address to set; 0.0.0.0 brings the link up without one (DHCP guests).
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's gateway; 0.0.0.0 adds no default route.
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Open the TAP with a virtio-net header on every frame (`IFF_VNET_HDR`), so that
    /// the engine can write TCP segments larger than the MTU for the kernel to take as
    /// one GSO packet (TSO toward the guest).
    pub vnet_hdr: bool,
}

impl Default for IfConfig {
    /// slirp4netns defaults: 10.0.2.100/24 via 10.0.2.2, MTU 1500, kernel-chosen MAC,
    /// not configured.
    fn default() -> Self {
        IfConfig {
            configure: false,
            addr: Ipv4Addr::new(10, 0, 2, 100),
            prefix_len: 24,
            gateway: Ipv4Addr::new(10, 0, 2, 2),
            mtu: 1500,
            mac: None,
            vnet_hdr: false,
        }
    }
}

/// An open TAP device.
#[derive(Debug)]
pub struct OpenedTap {
    /// The TAP fd, with `O_NONBLOCK` and `FD_CLOEXEC` set. One `read`/`write` = one frame.
    pub fd: OwnedFd,
    /// The guest interface's MAC address (read back with `SIOCGIFHWADDR`).
    pub mac: [u8; 6],
    /// The interface index inside its namespace (`None` for `--netns-type=tapfd`).
    pub ifindex: Option<u32>,
    /// Every read and write carries a virtio-net header (`IfConfig::vnet_hdr`).
    pub vnet_hdr: bool,
}

/// Everything that can go wrong here; each message names the value involved.
#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("invalid PID {value:?}: expected a positive process ID")]
    InvalidPid { value: String },
    #[error("invalid TAP file descriptor {value:?}: expected a non-negative fd number")]
    InvalidFdNumber { value: String },
    #[error("TAP file descriptor {fd} is not open: {source}")]
    TapFdNotOpen { fd: RawFd, source: Errno },
    #[error("file descriptor {fd} is not a usable TAP device: {reason}")]
    NotATap { fd: RawFd, reason: String },
    #[error("cannot read the MAC address of the TAP device {name:?} (fd {fd}): {source}")]
    TapFdMac {
        fd: RawFd,
        name: String,
        source: Errno,
    },
    #[error("cannot set flags on file descriptor {fd}: {source}")]
    SetFdFlags { fd: RawFd, source: Errno },
    #[error(
        "invalid TAP device name {name:?}: it must be 1 to 15 bytes long, without '/', ':', whitespace or NUL"
    )]
    InvalidTapName { name: String },
    #[error("invalid prefix length /{prefix_len}: it must be between 0 and 32")]
    InvalidPrefixLen { prefix_len: u8 },
    #[error("invalid MTU {mtu}: it must be between 68 and 65535")]
    InvalidMtu { mtu: u32 },
    #[error("cannot open {path}: {reason}")]
    OpenNamespace { path: PathBuf, reason: String },
    #[error("cannot inspect the namespace file {path}: {source}")]
    StatNamespace { path: PathBuf, source: Errno },
    #[error("cannot create a socket pair to talk to the namespace helper: {source}")]
    SocketPair { source: Errno },
    #[error("cannot fork the namespace helper process: {source}")]
    Fork { source: Errno },
    #[error("cannot join the user namespace {what}: {source}{hint}")]
    JoinUserns {
        what: String,
        source: Errno,
        hint: &'static str,
    },
    #[error("cannot join the network namespace {what}: {source}{hint}")]
    JoinNetns {
        what: String,
        source: Errno,
        hint: &'static str,
    },
    #[error("cannot open /dev/net/tun in the target namespace: {source}{hint}")]
    OpenTun { source: Errno, hint: &'static str },
    #[error("cannot create TAP device {name:?} in the target namespace: {source}{hint}")]
    CreateTap {
        name: String,
        source: Errno,
        hint: &'static str,
    },
    #[error("cannot create a configuration socket in the target namespace: {source}")]
    ConfigSocket { source: Errno },
    #[error("cannot bring up the loopback interface \"lo\" in the target namespace: {source}")]
    LoopbackUp { source: Errno },
    #[error("cannot set the MTU of {name:?} to {mtu}: {source}")]
    SetMtu {
        name: String,
        mtu: u32,
        source: Errno,
    },
    #[error("cannot set the MAC address of {name:?} to {mac}: {source}")]
    SetMac {
        name: String,
        mac: String,
        source: Errno,
    },
    #[error("cannot set the IPv4 address of {name:?} to {addr}: {source}")]
    SetAddress {
        name: String,
        addr: Ipv4Addr,
        source: Errno,
    },
    #[error("cannot set the netmask of {name:?} to /{prefix_len}: {source}")]
    SetNetmask {
        name: String,
        prefix_len: u8,
        source: Errno,
    },
    #[error("cannot bring up {name:?}: {source}")]
    InterfaceUp { name: String, source: Errno },
    #[error("cannot add the default route via {gateway} on {name:?}: {source}{hint}")]
    AddRoute {
        name: String,
        gateway: Ipv4Addr,
        source: Errno,
        hint: &'static str,
    },
    #[error("cannot read the MAC address of {name:?}: {source}")]
    ReadMac { name: String, source: Errno },
    #[error("cannot read the interface index of {name:?}: {source}")]
    ReadIfindex { name: String, source: Errno },
    #[error("the namespace helper cannot send the TAP file descriptor back: {source}")]
    SendFd { source: Errno },
    #[error("cannot receive the TAP file descriptor from the namespace helper: {source}")]
    RecvFd { source: Errno },
    #[error("the namespace helper process (PID {pid}) {detail}")]
    HelperFailed { pid: Pid, detail: String },
    #[error("cannot wait for the namespace helper process (PID {pid}): {source}")]
    Wait { pid: Pid, source: Errno },
    #[error("cannot create new user, network and mount namespaces: {source}{hint}")]
    Unshare { source: Errno, hint: &'static str },
    #[error("cannot write {content:?} to {file}: {source}")]
    IdMap {
        file: &'static str,
        content: String,
        source: Errno,
    },
    #[error("command {command:?} not found in PATH")]
    CommandNotFound { command: String },
    #[error("command argument {arg:?} contains a NUL byte")]
    NulInArgument { arg: String },
    #[error("cannot execute {command:?}: {source}")]
    Exec { command: String, source: Errno },
    #[error("cannot tell the child process (PID {pid}) to start: {source}")]
    Start { pid: Pid, source: Errno },
    #[error("the child process (PID {pid}) was already started")]
    AlreadyStarted { pid: Pid },
    #[error("cannot open a pidfd for PID {pid}: {source}")]
    PidfdOpen { pid: Pid, source: Errno },
}

/// The exit code a shell would report for `status`: the exit code, or 128 + the signal number.
/// Statuses that are not terminations (stopped, continued, still alive) give 1.
pub fn wait_status_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 1,
    }
}

/// Open the TAP device described by `target`, configuring it with `cfg` if `cfg.configure`.
///
/// Call this while the process is single-threaded if possible (it forks; the forked helper is
/// single-threaded either way and only makes system calls, so calling it from a multithreaded
/// process is also sound).
pub fn open_tap(target: &TapTarget, cfg: &IfConfig) -> Result<OpenedTap, NsError> {
    if target.netns_type == NetnsType::TapFd {
        return adopt_tap_fd(target, cfg);
    }
    let plan = TapPlan::new(&target.tap_name, cfg)?;
    let ns = Namespaces::resolve(target)?;
    let args = HelperArgs {
        plan: &plan,
        user: ns.user.as_ref().map(|fd| fd.as_fd()),
        net: ns.net.as_fd(),
    };
    let (pid, sock) = fork_with_socket(&args, helper_main)?;
    drop(ns);
    let received = recv_report(&sock);
    drop(sock);
    let status = reap(pid);
    let desc = ns_desc(target);
    let cx = error_context(&desc, cfg, &target.tap_name);
    match received {
        Ok(Received::Report(Report::Ready { mac, ifindex, .. }, Some(fd))) => {
            set_fd_flags(&fd)?;
            tracing::debug!(
                tap = %target.tap_name,
                mac = %report::format_mac(mac),
                ifindex,
                "opened the TAP device in the target namespace"
            );
            Ok(OpenedTap {
                fd,
                mac,
                ifindex: Some(ifindex),
                vnet_hdr: cfg.vnet_hdr,
            })
        }
        Ok(Received::Report(Report::Ready { .. }, None)) => Err(NsError::HelperFailed {
            pid,
            detail: "reported success but sent no file descriptor".to_owned(),
        }),
        Ok(Received::Report(Report::Failed(f), _)) => Err(f.into_error(&cx)),
        Ok(Received::Eof) => Err(NsError::HelperFailed {
            pid,
            detail: format!("{} without reporting a result", describe_status(status)),
        }),
        Ok(Received::Malformed(len)) => Err(NsError::HelperFailed {
            pid,
            detail: format!("sent a malformed {len}-byte report"),
        }),
        Err(source) => Err(NsError::RecvFd { source }),
    }
}

/// Descriptions of the namespaces, for error messages.
struct NsDesc {
    user: String,
    net: String,
}

fn ns_desc(target: &TapTarget) -> NsDesc {
    let pid = target.target.trim();
    let user = match (&target.userns_path, target.netns_type) {
        (Some(p), _) => format!("at {}", p.display()),
        (None, NetnsType::Pid) => format!("of PID {pid} (/proc/{pid}/ns/user)"),
        (None, _) => "(none requested)".to_owned(),
    };
    let net = match target.netns_type {
        NetnsType::Pid => format!("of PID {pid} (/proc/{pid}/ns/net)"),
        _ => format!("at {}", target.target),
    };
    NsDesc { user, net }
}

fn error_context<'a>(d: &'a NsDesc, cfg: &IfConfig, tap_name: &'a str) -> ErrorContext<'a> {
    ErrorContext {
        userns: &d.user,
        netns: &d.net,
        tap_name,
        addr: cfg.addr,
        prefix_len: cfg.prefix_len,
        gateway: cfg.gateway,
        mtu: cfg.mtu,
        mac: cfg.mac,
        uid_map: "",
        gid_map: "",
        command: "",
    }
}

/// The namespace files the helper will `setns` into, opened by the parent (so that a missing
/// process or path is reported before anything is forked).
struct Namespaces {
    /// `None` when the target's user namespace is the one we are already in.
    user: Option<OwnedFd>,
    net: OwnedFd,
}

impl Namespaces {
    fn resolve(target: &TapTarget) -> Result<Namespaces, NsError> {
        let (net, user) = match target.netns_type {
            NetnsType::Pid => {
                let pid = parse_pid(&target.target)?;
                let net = open_ns(Path::new(&format!("/proc/{pid}/ns/net")), Some(pid))?;
                let user = match &target.userns_path {
                    Some(p) => open_ns(p, None)?,
                    None => open_ns(Path::new(&format!("/proc/{pid}/ns/user")), Some(pid))?,
                };
                (net, Some(user))
            }
            NetnsType::Path | NetnsType::TapFd => {
                let net = open_ns(Path::new(&target.target), None)?;
                let user = match &target.userns_path {
                    Some(p) => Some(open_ns(p, None)?),
                    None => None,
                };
                (net, user)
            }
        };
        let user = match user {
            Some(fd) if is_own_user_ns(&fd, target)? => {
                tracing::debug!("already in the target user namespace; not joining it");
                None
            }
            other => other,
        };
        Ok(Namespaces { user, net })
    }
}

fn parse_pid(s: &str) -> Result<i32, NsError> {
    match s.trim().parse::<i32>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(NsError::InvalidPid {
            value: s.to_owned(),
        }),
    }
}

fn open_ns(path: &Path, pid: Option<i32>) -> Result<OwnedFd, NsError> {
    use nix::fcntl::OFlag;
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| {
        let reason = match (e, pid) {
            (Errno::ENOENT | Errno::ESRCH, Some(p)) => {
                format!("no such process (is PID {p} running?)")
            }
            (Errno::EACCES | Errno::EPERM, Some(p)) => {
                format!("permission denied (PID {p} belongs to another user?)")
            }
            (Errno::ENOENT, None) => {
                "no such file or directory (does the namespace exist?)".to_owned()
            }
            (e, _) => e.desc().to_owned(),
        };
        NsError::OpenNamespace {
            path: path.to_owned(),
            reason,
        }
    })
}

/// Whether the namespace file `fd` is the user namespace this process is already in
/// (podman calls `--netns-type=path` from inside its own user namespace, and `setns` into the
/// current user namespace fails with EINVAL).
fn is_own_user_ns(fd: &OwnedFd, target: &TapTarget) -> Result<bool, NsError> {
    let self_path = Path::new("/proc/self/ns/user");
    let theirs = nix::sys::stat::fstat(fd).map_err(|source| NsError::StatNamespace {
        path: target
            .userns_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/ns/user", target.target.trim()))),
        source,
    })?;
    let ours = nix::sys::stat::stat(self_path).map_err(|source| NsError::StatNamespace {
        path: self_path.to_owned(),
        source,
    })?;
    Ok(theirs.st_dev == ours.st_dev && theirs.st_ino == ours.st_ino)
}

/// Set `O_NONBLOCK` and `FD_CLOEXEC` on a TAP fd.
fn set_fd_flags(fd: &OwnedFd) -> Result<(), NsError> {
    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    let raw = fd.as_raw_fd();
    let err = |source| NsError::SetFdFlags { fd: raw, source };
    let fl = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL).map_err(err)?);
    fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).map_err(err)?;
    let fdfl = FdFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFD).map_err(err)?);
    fcntl(fd, FcntlArg::F_SETFD(fdfl | FdFlag::FD_CLOEXEC)).map_err(err)?;
    Ok(())
}

/// `--netns-type=tapfd`: validate and adopt an inherited TAP fd.
fn adopt_tap_fd(target: &TapTarget, cfg: &IfConfig) -> Result<OpenedTap, NsError> {
    let fd: RawFd = match target.target.trim().parse::<RawFd>() {
        Ok(fd) if fd >= 0 => fd,
        _ => {
            return Err(NsError::InvalidFdNumber {
                value: target.target.clone(),
            });
        }
    };
    // SAFETY: fcntl(F_GETFD) on an arbitrary integer touches no memory; it fails with EBADF
    // if the descriptor is not open.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    Errno::result(r).map_err(|source| NsError::TapFdNotOpen { fd, source })?;
    // SAFETY: the descriptor is open (checked just above) and stays open for the lifetime of
    // this borrow: nothing closes it before we either return an error or take ownership.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };

    let mut ifr = sys::ifreq_named(&[0; libc::IFNAMSIZ]);
    // SAFETY: TUNGETIFF writes one `ifreq` (the name and the tun flags).
    if let Err(e) = unsafe { sys::ioctl_with(borrowed, libc::TUNGETIFF, &mut ifr) } {
        return Err(NsError::NotATap {
            fd,
            reason: format!(
                "TUNGETIFF failed ({e}); pass an fd of /dev/net/tun attached to a TAP device"
            ),
        });
    }
    // SAFETY: after a successful TUNGETIFF `ifru_flags` holds the device's tun flags.
    let flags = c_int_from_short(unsafe { ifr.ifr_ifru.ifru_flags });
    let name_bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8_lossy(&name_bytes).into_owned();
    if flags & libc::IFF_TAP == 0 {
        return Err(NsError::NotATap {
            fd,
            reason: format!("{name:?} is a TUN (layer 3) device, not a TAP (Ethernet) device"),
        });
    }
    if flags & libc::IFF_NO_PI == 0 {
        return Err(NsError::NotATap {
            fd,
            reason: format!(
                "{name:?} was created without IFF_NO_PI (its frames carry a packet-info header)"
            ),
        });
    }
    let mac = tap::read_mac(borrowed, &ifr.ifr_name).map_err(|source| NsError::TapFdMac {
        fd,
        name: name.clone(),
        source,
    })?;
    // SAFETY: the fd is open and refers to a TAP device (checked above). With
    // --netns-type=tapfd the caller passes its ownership to this process; nothing else in the
    // process uses the number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_fd_flags(&owned)?;
    if cfg.configure {
        tracing::warn!(
            "--configure is ignored with --netns-type=tapfd: the TAP device {name:?} is configured by whoever opened it"
        );
    }
    tracing::debug!(fd, tap = %name, mac = %report::format_mac(mac), "adopted an inherited TAP fd");
    Ok(OpenedTap {
        fd: owned,
        mac,
        ifindex: None,
        vnet_hdr: false,
    })
}

fn c_int_from_short(v: libc::c_short) -> libc::c_int {
    libc::c_int::from(v as u16)
}

/// What the `open_tap` helper child needs.
struct HelperArgs<'a> {
    plan: &'a TapPlan,
    user: Option<BorrowedFd<'a>>,
    net: BorrowedFd<'a>,
}

/// Body of the `open_tap` helper child. Never returns.
fn helper_main(args: &HelperArgs<'_>, sock: OwnedFd) -> ! {
    let HelperArgs { plan, user, net } = *args;
    let result = (|| {
        if let Some(user) = user {
            nix::sched::setns(user, CloneFlags::CLONE_NEWUSER)
                .map_err(|e| Failure::new(Step::JoinUserns, e))?;
        }
        nix::sched::setns(net, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Failure::new(Step::JoinNetns, e))?;
        tap::open_and_configure(plan)
    })();
    send_result_and_exit(sock.as_fd(), result, report::Warnings::default())
}

/// Child side: report `result` (with the TAP fd when it succeeded) and `_exit`.
fn send_result_and_exit(
    sock: BorrowedFd<'_>,
    result: Result<tap::TapReady, Failure>,
    warnings: report::Warnings,
) -> ! {
    match result {
        Ok(ready) => {
            let msg = Report::Ready {
                mac: ready.mac,
                ifindex: ready.ifindex,
                warnings,
            };
            match sys::send_with_fd(sock, &msg.encode(), Some(ready.fd.as_raw_fd())) {
                Ok(()) => sys::exit_now(0),
                Err(e) => {
                    let _ = sys::send_with_fd(
                        sock,
                        &Report::Failed(Failure::new(Step::SendFd, e)).encode(),
                        None,
                    );
                    sys::exit_now(1)
                }
            }
        }
        Err(f) => {
            let _ = sys::send_with_fd(sock, &Report::Failed(f).encode(), None);
            sys::exit_now(1)
        }
    }
}

/// Fork; the child runs `child` with its end of a fresh `SOCK_SEQPACKET` pair and never
/// returns; the parent gets the child's PID and its own end.
fn fork_with_socket<T>(data: &T, child: fn(&T, OwnedFd) -> !) -> Result<(Pid, OwnedFd), NsError> {
    let (parent_end, child_end) = nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|source| NsError::SocketPair { source })?;
    // SAFETY: the child branch only runs `child`, which by construction (helper_main,
    // run::child_main) makes raw system calls on memory prepared before the fork, never
    // allocates, locks, unwinds or returns, and ends in _exit(2) or execve(2). That is what
    // fork(2) requires of a child of a possibly multithreaded process.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            sys::reset_caught_signals();
            drop(parent_end);
            child(data, child_end)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(child_end);
            Ok((child, parent_end))
        }
        Err(source) => Err(NsError::Fork { source }),
    }
}

/// What came back from the child.
enum Received {
    Report(Report, Option<OwnedFd>),
    /// The child closed its end without a report.
    Eof,
    Malformed(usize),
}

/// Parent side: receive one report (and any fd) from the child. Blocks.
fn recv_report(sock: &OwnedFd) -> Result<Received, Errno> {
    let mut buf = [0u8; REPORT_LEN + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 2]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = match nix::sys::socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        let mut fd = None;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS just installed this descriptor in our table; we are
                    // its only owner.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Ok(Received::Eof);
        }
        return Ok(match buf.get(..n).and_then(Report::decode) {
            Some(r) => Received::Report(r, fd),
            None => Received::Malformed(n),
        });
    }
}

/// Wait for `pid` (retrying on EINTR).
fn reap(pid: Pid) -> Result<WaitStatus, Errno> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn describe_status(status: Result<WaitStatus, Errno>) -> String {
    match status {
        Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
        Ok(other) => format!("ended ({other:?})"),
        Err(e) => format!("ended (wait failed: {e})"),
    }
}

/// Render an OsString for messages.
fn display_os(s: &std::ffi::OsStr) -> String {
    String::from_utf8_lossy(s.as_bytes()).into_owned()
}
