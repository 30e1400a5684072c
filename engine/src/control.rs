//! The control plane: the slirp4netns-compatible API socket, the port-forward rule
//! registry, and the commands it sends to the engine thread.
//!
//! # Theory of operation
//! The API socket is served by its own thread so that a slow or hostile client never
//! stops the data path; each client gets a short-lived thread, at most
//! [`MAX_API_CLIENTS`] at once, and [`API_READ_TIMEOUT`] to send its request. A request
//! is read until the client's EOF (or until it is a complete JSON object), so one split
//! across several writes works; requests are parsed and validated by the sans-IO
//! `usernet_portfwd::api`. The rule table lives here behind a mutex (the engine never
//! reads it): an `add_hostfwd` checks the table, binds the host socket (so "address in
//! use" is answered at once), inserts the rule and sends the bound socket to the engine
//! over a bounded channel, waking its loop. The engine owns every fd from then on.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use usernet_portfwd::api::{
    self, ApiError, AttachKind, GuestRef, PolicyChange, Request, RequestReader,
};
use usernet_portfwd::serde_json::Value;
use usernet_portfwd::{Rule, RuleSpec, Table};

use crate::router::fwd::{self, BoundListener};

/// API clients served at once; more are answered with an error and closed.
pub const MAX_API_CLIENTS: usize = 16;
/// Descriptors kept from one request (`attach`: the port, and a pidfd to watch).
pub const MAX_PASSED_FDS: usize = 2;
/// Time a client has to send its whole request.
pub const API_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands waiting for the engine.
pub const COMMAND_QUEUE: usize = 64;
/// Time the API waits for the engine to answer a stats request.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// A request from the control plane to the engine thread.
#[derive(Debug)]
pub enum Command {
    /// Serve a new forward on this bound socket.
    AddForward {
        /// Rule id.
        id: u32,
        /// The rule.
        spec: RuleSpec,
        /// Its host socket.
        listener: BoundListener,
    },
    /// Stop serving a forward.
    RemoveForward {
        /// Rule id.
        id: u32,
    },
    /// Send the counters, flows and leases as JSON.
    Stats(SyncSender<Value>),
    /// Answer a listing (`list_ports`, `list_leases`) as JSON.
    Query(Query, SyncSender<Value>),
    /// Make `fd` a new port of the network (`attach`).
    Attach {
        /// The TAP device or connected stream socket.
        fd: std::os::fd::OwnedFd,
        /// A pidfd of the guest's process: the port leaves when it exits (a TAP
        /// held open keeps its namespace alive, so its end cannot be seen otherwise).
        watch: Option<std::os::fd::OwnedFd>,
        /// Which of the two it is.
        kind: AttachKind,
        /// A label for listings.
        name: String,
        /// The guest's MAC, when known.
        mac: Option<[u8; 6]>,
        /// The guest's configured IPv4 address.
        addr: Option<std::net::Ipv4Addr>,
        /// The new port's id, or why not.
        reply: SyncSender<Result<Value, String>>,
    },
    /// Change isolation flags (`set_policy`).
    SetPolicy {
        /// The guest, or the whole network.
        guest: Option<GuestRef>,
        /// The changes.
        change: PolicyChange,
        /// Done, or why not.
        reply: SyncSender<Result<Value, String>>,
    },
    /// Remove a port of a network (`detach`).
    Detach {
        /// The port's id.
        port: u32,
        /// Done, or why not.
        reply: SyncSender<Result<Value, String>>,
    },
    /// Replace filter rules (`set_filters`).
    SetFilters {
        /// The guest, or the whole network.
        guest: Option<GuestRef>,
        /// The rules.
        rules: Vec<usernet_portfwd::filter::FilterRule>,
        /// The new default.
        default: Option<usernet_portfwd::filter::Action>,
        /// Done, or why not.
        reply: SyncSender<Result<Value, String>>,
    },
    /// Lease an address without a DHCP exchange (`request_lease`).
    RequestLease {
        /// The guest's MAC.
        mac: [u8; 6],
        /// Its host name.
        hostname: Option<String>,
        /// The lease (address, prefix, gateway, DNS), or why not.
        reply: SyncSender<Result<Value, String>>,
    },
}

/// A listing the engine answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The switch's ports (one port outside networks).
    Ports,
    /// The DHCP leases.
    Leases,
    /// Isolation flags, filter rules and their counters.
    Policy,
}

/// The sending side: a bounded channel plus the engine's waker.
#[derive(Clone)]
pub struct Control {
    tx: SyncSender<Command>,
    waker: Arc<mio::Waker>,
}

impl Control {
    /// A channel to the engine whose loop `waker` wakes.
    pub fn new(waker: Arc<mio::Waker>) -> (Control, Receiver<Command>) {
        let (tx, rx) = sync_channel(COMMAND_QUEUE);
        (Control { tx, waker }, rx)
    }

    /// Send a command (blocks while the queue is full) and wake the engine.
    pub fn send(&self, c: Command) -> bool {
        let ok = self.tx.send(c).is_ok();
        let _ = self.waker.wake();
        ok
    }
}

/// The port-forward rules, shared by the CLI setup and the API thread.
pub struct Rules {
    table: Mutex<Table>,
    /// Shown as the guest address of rules that name none.
    pub default_guest: Ipv4Addr,
    /// Why no rule may be added at all (an internal network routes nothing).
    pub refuse: Option<&'static str>,
}

/// Why a rule could not be added: a sentence for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AddError(pub String);

impl Rules {
    /// An empty registry.
    pub fn new(default_guest: Ipv4Addr) -> Rules {
        Rules {
            table: Mutex::new(Table::new()),
            default_guest,
            refuse: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check, bind and record a rule; returns its id and bound socket.
    pub fn add(&self, spec: RuleSpec) -> Result<(u32, BoundListener), AddError> {
        if let Some(why) = self.refuse {
            return Err(AddError(format!("cannot add port forward {spec}: {why}")));
        }
        let mut t = self.lock();
        t.check(&spec).map_err(|e| AddError(e.to_string()))?;
        let listener = fwd::bind(&spec).map_err(|e| {
            AddError(format!(
                "cannot listen on {} port {} for port forward {spec}: {e}",
                spec.proto, spec.host_port
            ))
        })?;
        let id = t.insert(spec).map_err(|e| AddError(e.to_string()))?;
        Ok((id, listener))
    }

    /// Forget a rule.
    pub fn remove(&self, id: u32) -> bool {
        self.lock().remove(id).is_some()
    }

    /// All rules, by id.
    pub fn list(&self) -> Vec<Rule> {
        self.lock().list().cloned().collect()
    }
}

/// The API socket; its file is removed when this is dropped.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Create the API socket at `path` (an existing socket file is replaced), readable and
/// writable by its owner only.
pub fn bind_api_socket(path: &Path) -> io::Result<(UnixListener, ApiSocket)> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    // Bind with a restrictive umask so the socket never exists with wider permissions.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let r = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = r?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((
        l,
        ApiSocket {
            path: path.to_path_buf(),
        },
    ))
}

/// Serve the API on `listener` in a thread of its own.
pub fn spawn_api(
    listener: UnixListener,
    rules: Arc<Rules>,
    ctl: Control,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("usernet-api".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if active.load(Ordering::Acquire) >= MAX_API_CLIENTS {
                    let _ = conn
                        .write_all(&api::reply_error("too many API clients at once; try again"));
                    continue;
                }
                active.fetch_add(1, Ordering::AcqRel);
                let (rules, ctl, active) = (rules.clone(), ctl.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("usernet-api-client".into())
                    .spawn(move || {
                        serve_client(&mut conn, &rules, &ctl);
                        active.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    tracing::warn!("cannot start a thread for an API client");
                }
            }
        })
}

fn serve_client(conn: &mut UnixStream, rules: &Rules, ctl: &Control) {
    let _ = conn.set_read_timeout(Some(API_READ_TIMEOUT));
    let _ = conn.set_write_timeout(Some(API_READ_TIMEOUT));
    let mut fds = Vec::new();
    let reply = match read_request(conn, &mut fds) {
        Ok(req) => handle(req, fds, rules, ctl),
        Err(e) => {
            tracing::debug!(error = %e.desc(), "bad API request");
            e.reply()
        }
    };
    let _ = conn.write_all(&reply);
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Read one request; descriptors passed with it (`SCM_RIGHTS`, for `attach`) are kept
/// in `fds` (at most [`MAX_PASSED_FDS`]; any others are closed).
fn read_request(
    conn: &mut UnixStream,
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> Result<Request, ApiError> {
    let mut reader = RequestReader::new();
    let mut buf = [0u8; 4096];
    loop {
        match recv_with_fd(conn, &mut buf, fds) {
            Ok(0) => break,
            Ok(n) => {
                reader.push(&buf[..n])?;
                if reader.is_complete() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A timeout: parse what arrived (an incomplete request gets a parse error).
            Err(_) => break,
        }
    }
    reader.finish()
}

/// `read` that also takes descriptors passed with the bytes (close-on-exec).
fn recv_with_fd(
    conn: &mut UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raws) = c {
            for raw in raws {
                // SAFETY: the kernel just installed `raw` in this process for us
                // (SCM_RIGHTS); nothing else owns it.
                let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
                if fds.len() < MAX_PASSED_FDS {
                    fds.push(owned);
                }
            }
        }
    }
    Ok(n)
}

/// Send a command that answers through a channel and wait for the answer.
fn ask<T>(ctl: &Control, make: impl FnOnce(SyncSender<T>) -> Command) -> Option<T> {
    let (tx, rx) = sync_channel(1);
    ctl.send(make(tx));
    rx.recv_timeout(STATS_TIMEOUT).ok()
}

fn handle(req: Request, fds: Vec<std::os::fd::OwnedFd>, rules: &Rules, ctl: &Control) -> Vec<u8> {
    let mut fds = fds.into_iter();
    let fd = fds.next();
    let watch = fds.next();
    let late = || api::reply_error("the engine did not answer in time");
    match req {
        Request::ListPorts | Request::ListLeases | Request::ListPolicy => {
            let q = match req {
                Request::ListPorts => Query::Ports,
                Request::ListLeases => Query::Leases,
                _ => Query::Policy,
            };
            match ask(ctl, |tx| Command::Query(q, tx)) {
                Some(v) => api::reply_stats(&v),
                None => late(),
            }
        }
        Request::Attach {
            kind,
            name,
            mac,
            addr,
        } => {
            let Some(fd) = fd else {
                return api::reply_error(
                    "attach: no file descriptor came with the request (pass the TAP or socket with SCM_RIGHTS)",
                );
            };
            match ask(ctl, |reply| Command::Attach {
                fd,
                watch,
                kind,
                name,
                mac,
                addr,
                reply,
            }) {
                Some(Ok(v)) => api::reply_stats(&v),
                Some(Err(e)) => api::reply_error(&format!("attach: {e}")),
                None => late(),
            }
        }
        Request::Detach { port } => match ask(ctl, |reply| Command::Detach { port, reply }) {
            Some(Ok(v)) => api::reply_stats(&v),
            Some(Err(e)) => api::reply_error(&format!("detach: {e}")),
            None => late(),
        },
        Request::SetPolicy { guest, change } => {
            match ask(ctl, |reply| Command::SetPolicy {
                guest,
                change,
                reply,
            }) {
                Some(Ok(v)) => api::reply_stats(&v),
                Some(Err(e)) => api::reply_error(&format!("set_policy: {e}")),
                None => late(),
            }
        }
        Request::SetFilters {
            guest,
            rules,
            default,
        } => {
            match ask(ctl, |reply| Command::SetFilters {
                guest,
                rules,
                default,
                reply,
            }) {
                Some(Ok(v)) => api::reply_stats(&v),
                Some(Err(e)) => api::reply_error(&format!("set_filters: {e}")),
                None => late(),
            }
        }
        Request::RequestLease { mac, hostname } => {
            match ask(ctl, |reply| Command::RequestLease {
                mac,
                hostname,
                reply,
            }) {
                Some(Ok(v)) => api::reply_stats(&v),
                Some(Err(e)) => api::reply_error(&format!("request_lease: {e}")),
                None => late(),
            }
        }
        Request::AddHostfwd(spec) => match rules.add(spec.clone()) {
            Ok((id, listener)) => {
                ctl.send(Command::AddForward { id, spec, listener });
                api::reply_add(id)
            }
            Err(e) => {
                tracing::warn!("add_hostfwd: {e}");
                ApiError::AddFailed.reply()
            }
        },
        Request::ListHostfwd => api::reply_list(&rules.list(), Some(rules.default_guest.into())),
        Request::RemoveHostfwd { id } => {
            if rules.remove(id) {
                ctl.send(Command::RemoveForward { id });
                api::reply_remove()
            } else {
                ApiError::RemoveBadId.reply()
            }
        }
        Request::Stats => match ask(ctl, Command::Stats) {
            Some(v) => api::reply_stats(&v),
            None => late(),
        },
    }
}

/// The client side of the API: send one request, read the whole reply.
pub fn call(path: &Path, request: &[u8]) -> io::Result<Vec<u8>> {
    call_with_fd(path, request, &[])
}

/// [`call`], passing `fds` with the request (`SCM_RIGHTS`), as `attach` needs.
pub fn call_with_fd(
    path: &Path,
    request: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<Vec<u8>> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    if !fds.is_empty() {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let iov = [io::IoSlice::new(request)];
        let n = sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(io::Error::from)?;
        s.write_all(&request[n..])?;
    } else {
        s.write_all(request)?;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}
