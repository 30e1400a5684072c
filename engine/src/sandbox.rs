//! Confinement after setup: `--enable-sandbox` (a mount namespace whose root is an
//! empty tmpfs, capabilities dropped) and `--enable-seccomp` (a syscall allowlist).
//!
//! # Theory of operation
//! Everything that needs the host's filesystem or privileges happens first: the TAP
//! is opened by the namespace helper, forward listeners and the API socket are bound,
//! logs and captures are opened, raw ICMP sockets are pre-opened while we may still
//! have `CAP_NET_RAW`. Then, still single-threaded:
//!
//! 1. Unprivileged (rootlesskit runs usernet as the user, in the initial user
//!    namespace), usernet first enters a user namespace of its own that maps its uid
//!    and gid to themselves, which gives it `CAP_SYS_ADMIN` over a mount namespace.
//! 2. `unshare(CLONE_NEWNS)`, make every mount private, mount a tmpfs, bind into it only
//!    the directories usernet still reads or writes (the directory holding the
//!    resolv.conf it watches, read-only; the API socket's directory, so the socket can
//!    be removed at exit), `pivot_root` into it and detach the old root. The rest of
//!    the host's filesystem is gone for this process.
//! 3. As root, drop every capability but `CAP_NET_BIND_SERVICE` (forwards added later
//!    through the API may bind low ports), from every set and from the bounding set.
//!
//! `--enable-seccomp` then installs, on every thread, a filter that kills the process
//! on any syscall outside [`ALLOWED`]: the list is what the engine really calls in its
//! event loop and API threads (measured with strace over the end-to-end tests, see
//! ARCHITECTURE.md). `clone3` answers `ENOSYS` (so thread creation falls back to
//! `clone`, whose flags a filter can check) and `clone` is allowed only for threads;
//! `socket` only for IPv4 and IPv6; `ioctl` only for a few harmless requests. Anything
//! that could leave the sandbox (`execve`, `mount`, `setns`, `unshare`, `ptrace`,
//! `open_by_handle_at`, ...) is absent.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why confinement failed: a sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A setup step failed.
    #[error("--enable-sandbox: cannot {what}: {source}")]
    Step {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Building or installing the seccomp filter failed.
    #[error("--enable-seccomp: cannot install the syscall filter: {0}")]
    Seccomp(String),
}

fn step<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Step {
        what,
        source: e.into(),
    }
}

/// Where the new root is built (a tmpfs mounted over it, in our mount namespace only).
const NEW_ROOT: &str = "/tmp";
/// Where the old root is parked during `pivot_root`.
const OLD_ROOT: &str = ".old-root";

/// Enter the sandbox, keeping the directories in `keep` (bind-mounted at the same
/// paths) and `ro_keep` (the same, read-only). Must run single-threaded.
pub fn enter(keep: &[PathBuf], ro_keep: &[PathBuf]) -> Result<(), SandboxError> {
    let root = nix::unistd::geteuid().is_root()
        && caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_ADMIN,
        )
        .unwrap_or(false);
    if !root {
        enter_own_userns()?;
    }
    unshare(CloneFlags::CLONE_NEWNS).map_err(step("create a mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step("make the mounts private"))?;
    // Resolve what to keep before the tmpfs hides /tmp.
    let resolve = |list: &[PathBuf]| -> Vec<PathBuf> {
        list.iter()
            .filter_map(|p| std::fs::canonicalize(p).ok())
            .filter(|p| p.is_dir())
            .collect()
    };
    let (keep, ro_keep) = (resolve(keep), resolve(ro_keep));
    // Hold each kept directory open (O_PATH) before the tmpfs may hide it (it may live
    // under the new root's mount point), and bind it from /proc/self/fd.
    let mut held = Vec::new();
    for (dir, ro) in keep
        .iter()
        .map(|d| (d, false))
        .chain(ro_keep.iter().map(|d| (d, true)))
    {
        let fd = nix::fcntl::open(
            dir.as_path(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(step(format!("open {}", dir.display())))?;
        held.push((dir.clone(), ro, fd));
    }
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(step(format!("mount a tmpfs on {NEW_ROOT}")))?;
    for (dir, ro, fd) in &held {
        use std::os::fd::AsRawFd;
        let target = Path::new(NEW_ROOT).join(dir.strip_prefix("/").unwrap_or(dir));
        std::fs::create_dir_all(&target).map_err(step(format!("create {}", target.display())))?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(step(format!("bind {} into the sandbox", dir.display())))?;
        if *ro {
            let flags = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV;
            // Read-only is best effort: a locked mount (user namespace) may refuse it.
            if let Err(e) = mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot make a sandbox bind read-only");
            }
        }
    }
    drop(held);
    // Keep /etc/resolv.conf resolvable if it is a symlink into a kept directory.
    if let Ok(link) = std::fs::read_link("/etc/resolv.conf") {
        let etc = Path::new(NEW_ROOT).join("etc");
        let _ = std::fs::create_dir_all(&etc);
        let _ = std::os::unix::fs::symlink(link, etc.join("resolv.conf"));
    }
    let old = Path::new(NEW_ROOT).join(OLD_ROOT);
    std::fs::create_dir_all(&old).map_err(step("create the old-root mount point"))?;
    nix::unistd::pivot_root(NEW_ROOT, &old).map_err(step("pivot_root into the sandbox"))?;
    nix::unistd::chdir("/").map_err(step("enter the sandbox root"))?;
    umount2(format!("/{OLD_ROOT}").as_str(), MntFlags::MNT_DETACH)
        .map_err(step("detach the host's filesystem"))?;
    let _ = std::fs::remove_dir(format!("/{OLD_ROOT}"));
    // The new root itself read-only: nothing new can be created outside the kept binds.
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let _ = mount(None::<&str>, "/", None::<&str>, flags, None::<&str>);
    if root {
        drop_capabilities()?;
    }
    tracing::info!("sandbox entered");
    Ok(())
}

fn enter_own_userns() -> Result<(), SandboxError> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    unshare(CloneFlags::CLONE_NEWUSER).map_err(step("create a user namespace"))?;
    std::fs::write("/proc/self/setgroups", "deny").map_err(step("write /proc/self/setgroups"))?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))
        .map_err(step("write /proc/self/uid_map"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
        .map_err(step("write /proc/self/gid_map"))?;
    Ok(())
}

fn drop_capabilities() -> Result<(), SandboxError> {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet = [Capability::CAP_NET_BIND_SERVICE].into_iter().collect();
    let err = |what: &'static str| {
        move |e: caps::errors::CapsError| SandboxError::Step {
            what: what.into(),
            source: io::Error::other(e.to_string()),
        }
    };
    for cap in caps::all() {
        if cap != Capability::CAP_NET_BIND_SERVICE {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(err("drop a capability from the bounding set"))?;
        }
    }
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())
        .map_err(err("clear the inheritable capabilities"))?;
    caps::set(None, CapSet::Effective, &keep).map_err(err("drop the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(err("drop the permitted capabilities"))?;
    Ok(())
}

/// Syscalls the engine may make once confined (x86_64 and aarch64 numbers via libc).
pub const ALLOWED: &[i64] = &[
    // I/O on fds the engine owns
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    // sockets (creation is filtered below)
    libc::SYS_socketpair,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_splice,
    libc::SYS_pipe2,
    // the event loop
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_epoll_ctl,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // time, memory, threads
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prlimit64,
    libc::SYS_clone3,
    libc::SYS_clone,
    // signals and exit
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_kill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_wait4,
    libc::SYS_waitid,
    // resolv.conf re-reads, API socket removal
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fstat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_ioctl,
];

/// `ioctl` requests allowed: FIONBIO, FIONREAD, FIOCLEX, TCGETS (isatty).
#[allow(clippy::unnecessary_cast)] // the constants are c_ulong on some targets
const IOCTLS: &[u64] = &[
    libc::FIONBIO as u64,
    libc::FIONREAD as u64,
    libc::FIOCLEX as u64,
    libc::TCGETS as u64,
];

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// A condition on a 32-bit (`int`) argument: only its low half is compared, since the
/// kernel does not promise the high half of an `int` register is zero.
fn cond(arg: u8, op: SeccompCmpOp, v: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v)
        .map_err(|e| SandboxError::Seccomp(e.to_string()))
}

fn rule(c: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(c).map_err(|e| SandboxError::Seccomp(e.to_string()))
}

/// The two stacked filters: the allowlist (anything else kills the process), and
/// `clone3` → `ENOSYS`.
pub fn filters() -> Result<Vec<BpfProgram>, SandboxError> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in ALLOWED {
        rules.insert(nr, Vec::new());
    }
    let dword = |v: i32| v as u32 as u64;
    rules.insert(
        libc::SYS_socket,
        vec![
            rule(vec![cond(0, SeccompCmpOp::Eq, dword(libc::AF_INET))?])?,
            rule(vec![cond(0, SeccompCmpOp::Eq, dword(libc::AF_INET6))?])?,
        ],
    );
    // Thread names (std's Builder::name) only.
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::Eq,
            libc::PR_SET_NAME as u64,
        )?])?],
    );
    let thread = libc::CLONE_THREAD as u64;
    let clone_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )
    .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    rules.insert(libc::SYS_clone, vec![rule(vec![clone_thread])?]);
    rules.insert(
        libc::SYS_ioctl,
        IOCTLS
            .iter()
            .map(|&r| rule(vec![cond(1, SeccompCmpOp::Eq, r)?]))
            .collect::<Result<_, _>>()?,
    );
    let allow: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, Vec::new());
    let no_clone3: BpfProgram = SeccompFilter::new(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e: seccompiler::BackendError| SandboxError::Seccomp(e.to_string()))?;
    // Installing a filter takes prctl and seccomp, which the allowlist forbids: it goes last.
    Ok(vec![no_clone3, allow])
}

/// Install the filters on every thread of the process.
pub fn install_seccomp() -> Result<(), SandboxError> {
    for f in filters()? {
        seccompiler::apply_filter_all_threads(&f)
            .map_err(|e| SandboxError::Seccomp(e.to_string()))?;
    }
    tracing::info!("seccomp filter installed");
    // A hook for the test that proves the filter kills: make a forbidden syscall.
    if std::env::var_os("USERNET_SECCOMP_SELFTEST").is_some() {
        // SAFETY: `unshare(0)` changes nothing; it is only here to be refused by the filter.
        unsafe { libc::syscall(libc::SYS_unshare, 0) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        let f = filters().unwrap();
        assert_eq!(f.len(), 2);
        assert!(!ALLOWED.contains(&libc::SYS_execve));
        assert!(!ALLOWED.contains(&libc::SYS_mount));
        assert!(!ALLOWED.contains(&libc::SYS_setns));
        assert!(!ALLOWED.contains(&libc::SYS_unshare));
        assert!(!ALLOWED.contains(&libc::SYS_ptrace));
    }
}
