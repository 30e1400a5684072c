//! `usernet run`: a command in fresh user + network + mount namespaces, with the TAP inside.

use std::ffi::{CString, OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use libc::c_char;
use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::report::{ErrorContext, Failure, Report, Step, Warnings};
use super::tap::{self, TapPlan};
use super::{
    IfConfig, NsError, OpenedTap, Received, describe_status, display_os, fork_with_socket, reap,
    recv_report, set_fd_flags, sys,
};

/// The child of [`spawn_run_child`]: its namespaces and TAP are ready; it waits for
/// [`RunChild::start`] before it execs the command.
///
/// Dropping a `RunChild` that was never started kills and reaps the child. After `start`, the
/// caller owns the child's lifetime (wait for it with `waitpid` or through [`RunChild::pidfd`]).
#[derive(Debug)]
pub struct RunChild {
    pub pid: Pid,
    pub tap: OpenedTap,
    /// Our end of the sync socket; `None` once started.
    sock: Option<OwnedFd>,
    command: String,
}

impl RunChild {
    /// Let the child exec its command. Returns once the exec has happened (or failed: then the
    /// error names the command and the child exits with status 127).
    pub fn start(&mut self) -> Result<(), NsError> {
        let pid = self.pid;
        let sock = self.sock.take().ok_or(NsError::AlreadyStarted { pid })?;
        nix::sys::socket::send(
            sock.as_raw_fd(),
            b"1",
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        )
        .map_err(|source| NsError::Start { pid, source })?;
        // The child's end is close-on-exec: end-of-file means the exec succeeded.
        match recv_report(&sock) {
            Ok(Received::Eof) => Ok(()),
            Ok(Received::Report(Report::Failed(f), _)) if f.step == Step::Exec => {
                Err(NsError::Exec {
                    command: self.command.clone(),
                    source: f.errno,
                })
            }
            Ok(_) => Err(NsError::HelperFailed {
                pid,
                detail: "sent an unexpected message instead of executing the command".to_owned(),
            }),
            Err(source) => Err(NsError::Start { pid, source }),
        }
    }

    /// A pidfd (`pidfd_open(2)`) for the child, to watch its exit from an event loop.
    pub fn pidfd(&self) -> Result<OwnedFd, NsError> {
        let pid = self.pid;
        // SAFETY: pidfd_open takes two integers and touches no memory of ours.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
        let fd = Errno::result(r).map_err(|source| NsError::PidfdOpen { pid, source })?;
        // SAFETY: pidfd_open just returned this new descriptor (close-on-exec); we own it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if self.sock.take().is_some() {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
            let _ = reap(self.pid);
        }
    }
}

/// Kills and reaps the child unless disarmed (error paths of `spawn_run_child`).
struct KillGuard(Option<Pid>);

impl KillGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = reap(pid);
        }
    }
}

/// Everything the child needs, prepared before the fork.
struct RunPlan {
    tap: TapPlan,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    resolv_src: Option<CString>,
    program: CString,
    /// Owns the strings `argv_ptrs` points to.
    _argv: Vec<CString>,
    /// NULL-terminated.
    argv_ptrs: Vec<*const c_char>,
}

/// Start `usernet run`'s child: new user + network + mount namespaces (the caller's uid and
/// gid mapped to 0), `ping_group_range` widened, `resolv_conf` (file contents) bind-mounted on
/// `/etc/resolv.conf`, and the TAP `tap_name` opened and configured per `cfg`. The child then
/// waits for [`RunChild::start`] and execs `argv` (empty: `$SHELL`, else `/bin/sh`) with the
/// inherited stdin/stdout/stderr.
///
/// Call while single-threaded if possible (see [`super::open_tap`]).
pub fn spawn_run_child(
    argv: &[OsString],
    tap_name: &str,
    cfg: &IfConfig,
    resolv_conf: Option<&str>,
) -> Result<RunChild, NsError> {
    let tap = TapPlan::new(tap_name, cfg)?;
    let (program, args) = resolve_command(argv)?;
    let command = display_os(OsStr::from_bytes(program.as_bytes()));
    let uid_map = format!("0 {} 1\n", nix::unistd::getuid());
    let gid_map = format!("0 {} 1\n", nix::unistd::getgid());
    let resolv_file = match resolv_conf {
        Some(contents) => match TempFile::create(contents) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!("cannot write a private resolv.conf, keeping the host's: {e}");
                None
            }
        },
        None => None,
    };
    let resolv_src = match &resolv_file {
        Some(f) => CString::new(f.path.as_os_str().as_bytes()).ok(),
        None => None,
    };
    let mut argv_ptrs: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let plan = RunPlan {
        tap,
        uid_map: uid_map.clone().into_bytes(),
        gid_map: gid_map.clone().into_bytes(),
        resolv_src,
        program,
        _argv: args,
        argv_ptrs,
    };

    let (pid, sock) = fork_with_socket(&plan, child_main)?;
    let mut guard = KillGuard(Some(pid));
    let received = recv_report(&sock);
    // The bind mount (if any) is in place; the file itself is no longer needed.
    drop(resolv_file);

    let cx = ErrorContext {
        userns: "(new)",
        netns: "(new)",
        tap_name,
        addr: cfg.addr,
        prefix_len: cfg.prefix_len,
        gateway: cfg.gateway,
        mtu: cfg.mtu,
        mac: cfg.mac,
        uid_map: &uid_map,
        gid_map: &gid_map,
        command: &command,
    };
    match received {
        Ok(Received::Report(
            Report::Ready {
                mac,
                ifindex,
                warnings,
            },
            Some(fd),
        )) => {
            log_warnings(warnings, resolv_conf.is_some());
            set_fd_flags(&fd)?;
            guard.disarm();
            tracing::debug!(%pid, tap = tap_name, "run child ready");
            Ok(RunChild {
                pid,
                tap: OpenedTap {
                    fd,
                    mac,
                    ifindex: Some(ifindex),
                    vnet_hdr: cfg.vnet_hdr,
                },
                sock: Some(sock),
                command,
            })
        }
        Ok(Received::Report(Report::Ready { .. }, None)) => Err(NsError::HelperFailed {
            pid,
            detail: "reported success but sent no file descriptor".to_owned(),
        }),
        Ok(Received::Report(Report::Failed(f), _)) => Err(f.into_error(&cx)),
        Ok(Received::Eof) => {
            guard.disarm();
            let status = reap(pid);
            Err(NsError::HelperFailed {
                pid,
                detail: format!("{} without reporting a result", describe_status(status)),
            })
        }
        Ok(Received::Malformed(len)) => Err(NsError::HelperFailed {
            pid,
            detail: format!("sent a malformed {len}-byte report"),
        }),
        Err(source) => Err(NsError::RecvFd { source }),
    }
}

fn log_warnings(w: Warnings, resolv_requested: bool) {
    if w.ping_range != 0 {
        tracing::debug!(
            "cannot set net.ipv4.ping_group_range in the new network namespace: {}",
            Errno::from_raw(w.ping_range)
        );
    } else if w.ping_range_narrowed {
        tracing::debug!("net.ipv4.ping_group_range set to \"0 0\" (only group 0 is mapped)");
    }
    if w.mount_private != 0 {
        tracing::debug!(
            "cannot make the mount tree private in the new mount namespace: {}",
            Errno::from_raw(w.mount_private)
        );
    }
    if resolv_requested && w.resolv_conf != 0 {
        tracing::debug!(
            "cannot bind-mount the private resolv.conf over /etc/resolv.conf: {}",
            Errno::from_raw(w.resolv_conf)
        );
    }
}

/// Body of the run child. Never returns: it execs the command or `_exit`s.
fn child_main(plan: &RunPlan, sock: OwnedFd) -> ! {
    let sock = sock.as_fd();
    let mut warnings = Warnings::default();
    let result = (|| {
        nix::sched::unshare(
            CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS,
        )
        .map_err(|e| Failure::new(Step::Unshare, e))?;
        match sys::write_file(c"/proc/self/setgroups", b"deny") {
            // Kernels before 3.19 have no setgroups file.
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(Failure::new(Step::SetGroups, e)),
        }
        sys::write_file(c"/proc/self/uid_map", &plan.uid_map)
            .map_err(|e| Failure::new(Step::UidMap, e))?;
        sys::write_file(c"/proc/self/gid_map", &plan.gid_map)
            .map_err(|e| Failure::new(Step::GidMap, e))?;

        // Best effort: let unprivileged ICMP echo sockets work. The whole range needs every
        // gid mapped; with only gid 0 mapped, fall back to "0 0".
        let ping = c"/proc/sys/net/ipv4/ping_group_range";
        if let Err(e) = sys::write_file(ping, b"0 2147483647") {
            match sys::write_file(ping, b"0 0") {
                Ok(()) => warnings.ping_range_narrowed = true,
                Err(_) => warnings.ping_range = e as i32,
            }
        }

        if let Some(src) = &plan.resolv_src {
            if let Err(e) = nix::mount::mount(
                None::<&std::ffi::CStr>,
                c"/",
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            ) {
                warnings.mount_private = e as i32;
            }
            if let Err(e) = nix::mount::mount(
                Some(src.as_c_str()),
                c"/etc/resolv.conf",
                None::<&std::ffi::CStr>,
                MsFlags::MS_BIND,
                None::<&std::ffi::CStr>,
            ) {
                warnings.resolv_conf = e as i32;
            }
        }
        tap::open_and_configure(&plan.tap)
    })();

    let ready = match result {
        Ok(r) => r,
        Err(f) => {
            let _ = sys::send_with_fd(sock, &Report::Failed(f).encode(), None);
            sys::exit_now(1)
        }
    };
    let msg = Report::Ready {
        mac: ready.mac,
        ifindex: ready.ifindex,
        warnings,
    };
    if let Err(e) = sys::send_with_fd(sock, &msg.encode(), Some(ready.fd.as_raw_fd())) {
        let _ = sys::send_with_fd(
            sock,
            &Report::Failed(Failure::new(Step::SendFd, e)).encode(),
            None,
        );
        sys::exit_now(1)
    }
    drop(ready);

    // Wait for start(); end-of-file means the parent gave up on us.
    let mut byte = [0u8; 1];
    match sys::read_retry(sock, &mut byte) {
        Ok(1) => {}
        _ => sys::exit_now(1),
    }

    // Undo what the Rust runtime (SIGPIPE ignored) and the engine (blocked signals) may have
    // set up, so that the command starts with a normal signal state.
    // SAFETY: signal(2) with SIG_DFL, sigemptyset on a local set and sigprocmask(2) are all
    // async-signal-safe; they only read/write the local `set`.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
    // SAFETY: `program` is a NUL-terminated path and `argv_ptrs` a NULL-terminated array of
    // pointers to NUL-terminated strings owned by `plan._argv`; all outlive the call.
    unsafe { libc::execv(plan.program.as_ptr(), plan.argv_ptrs.as_ptr()) };
    let e = Errno::last();
    let _ = sys::send_with_fd(
        sock,
        &Report::Failed(Failure::new(Step::Exec, e)).encode(),
        None,
    );
    sys::exit_now(127)
}

/// The program to exec and its argv. Searches `PATH` here, in the parent, so that a missing
/// command is reported before anything is forked.
fn resolve_command(argv: &[OsString]) -> Result<(CString, Vec<CString>), NsError> {
    let argv: Vec<OsString> = if argv.is_empty() {
        let shell = std::env::var_os("SHELL")
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| OsString::from("/bin/sh"));
        vec![shell]
    } else {
        argv.to_vec()
    };
    let args = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| NsError::NulInArgument { arg: display_os(a) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(prog) = argv.first() else {
        return Err(NsError::CommandNotFound {
            command: String::new(),
        });
    };
    let path = if prog.as_bytes().contains(&b'/') {
        PathBuf::from(prog)
    } else {
        search_path(prog).ok_or_else(|| NsError::CommandNotFound {
            command: display_os(prog),
        })?
    };
    let program =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| NsError::NulInArgument {
            arg: path.display().to_string(),
        })?;
    Ok((program, args))
}

fn search_path(prog: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| {
        OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    });
    std::env::split_paths(&path)
        .map(|dir| {
            if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            }
        })
        .map(|dir| dir.join(prog))
        .find(|cand| is_executable(cand))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
        && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// A private temporary file, removed on drop.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn create(contents: &str) -> std::io::Result<TempFile> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir();
        let mut last_err = None;
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                "usernet-resolv-{}-{nanos:x}-{n}",
                std::process::id()
            ));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    let file = TempFile { path };
                    f.write_all(contents.as_bytes())?;
                    // World-readable: processes inside may run as other (unmapped) users.
                    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
                    return Ok(file);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no free temporary file name")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
