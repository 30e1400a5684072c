//! The event loop: one thread owns the port, the router, every host socket and timer.
//!
//! Each turn: wait for readiness (or the earliest deadline), note which sources are
//! ready, read a bounded batch of guest frames through the router, poll every touched
//! flow once, run due timers, and write queued frames to the port until it would block.
//! When the queue drains, flows and readers that waited for room resume.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::{Config, PORT_RX_BATCH};
use crate::control::Command;
use crate::port::Port;
use crate::router::fwd::BoundListener;
use crate::router::{Owner, Router};
use crate::stats::{DropReason, Stats};

const PORT: Token = Token(0);
const SIGNAL: Token = Token(1);
const EXIT_FD: Token = Token(2);
const CHILD: Token = Token(3);
/// The control plane's waker.
pub const WAKER: Token = Token(4);

/// Why the loop ended.
#[derive(Debug)]
pub enum Exit {
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// The exit fd became readable or was closed.
    ExitFd,
    /// The child of `usernet run` exited with this code.
    Child(i32),
}

/// Errors that end the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The port failed for good.
    #[error("the guest's interface went away ({0}); exiting")]
    PortGone(io::Error),
    /// Setup failed.
    #[error("{what}: {source}")]
    Setup {
        /// What was being set up.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
}

fn setup(what: &str) -> impl FnOnce(io::Error) -> EngineError + '_ {
    move |source| EngineError::Setup {
        what: what.to_string(),
        source,
    }
}

/// What else the loop watches besides the port.
#[derive(Default)]
pub struct LoopOptions {
    /// Exit when this fd becomes readable or its other end closes.
    pub exit_fd: Option<OwnedFd>,
    /// Write "1" to it and close it once the engine is ready.
    pub ready_fd: Option<OwnedFd>,
    /// `usernet run`: the child's pid and a pidfd that becomes readable when it exits.
    pub child: Option<(nix::unistd::Pid, OwnedFd)>,
    /// Commands from the control plane (woken through [`WAKER`]).
    pub commands: Option<std::sync::mpsc::Receiver<Command>>,
    /// Forwards from the command line, already bound.
    pub forwards: Vec<(u32, usernet_portfwd::RuleSpec, BoundListener)>,
    /// Install the seccomp filter once every setup step has run (`--enable-seccomp`).
    pub seccomp: bool,
    /// Sockets of the guest's namespace, for spliced forwards from the host's loopback
    /// (namespace modes with `--splice`).
    pub sockets: Option<crate::ns::SocketFactory>,
}

/// Run the engine until a signal, the exit fd, the child's exit, or a fatal port error.
pub fn run(
    mut poll: Poll,
    cfg: Config,
    mut port: Box<dyn Port>,
    guest_mac: Option<[u8; 6]>,
    stats: Arc<Stats>,
    mut opts: LoopOptions,
) -> Result<Exit, EngineError> {
    let registry = poll
        .registry()
        .try_clone()
        .map_err(setup("cannot create the event loop"))?;
    let now = Instant::now();
    let mut router = Router::new(cfg, stats.clone(), registry, guest_mac, now)
        .map_err(setup("cannot start the router"))?;
    if let Some(f) = opts.sockets.take() {
        let max = router.ctx.cfg.limits.max_tcp_flows;
        router.splice = Some(crate::router::splice::Splicer::new(f, max));
    }
    port.register(poll.registry(), PORT)
        .map_err(setup("cannot watch the guest interface"))?;
    for (id, spec, listener) in std::mem::take(&mut opts.forwards) {
        router
            .fwd
            .add(&mut router.ctx, id, spec, listener)
            .map_err(setup("cannot watch a port-forward socket"))?;
    }

    let mut sig_rx = signal_pipe(poll.registry(), SIGNAL, opts.child.is_some())?;
    if let Some(fd) = &opts.exit_fd {
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), EXIT_FD, Interest::READABLE)
            .map_err(setup("cannot watch the exit fd"))?;
    }
    if let Some((_, fd)) = &opts.child {
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), CHILD, Interest::READABLE)
            .map_err(setup("cannot watch the child process"))?;
    }
    if let Some(fd) = opts.ready_fd.take() {
        let mut f = std::fs::File::from(fd);
        if let Err(e) = f.write_all(b"1") {
            tracing::warn!(error = %e, "cannot write to the ready fd");
        }
    }
    if opts.seccomp {
        crate::sandbox::install_seccomp().map_err(|e| {
            setup("cannot confine the engine")(std::io::Error::other(e.to_string()))
        })?;
    }
    router.start(now);
    tracing::info!("ready");

    let mut events = Events::with_capacity(1024);
    let mut port_pending = true;
    let mut port_writable = true;
    let level = port.reads_level_triggered();
    loop {
        let now = Instant::now();
        let timeout = if port_pending {
            Some(Duration::ZERO)
        } else {
            router
                .next_deadline()
                .map(|d| d.saturating_duration_since(now))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(setup("event loop failed")(e));
        }
        let now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                PORT => {
                    if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                        port_pending = true;
                    }
                    if ev.is_writable() {
                        port_writable = true;
                    }
                }
                SIGNAL => {
                    let mut b = [0u8; 16];
                    while let Ok(n) = sig_rx.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                    }
                    // signal-hook's pipe carries no signal number; treat it as a stop request.
                    if let Some((pid, _)) = &opts.child {
                        // `usernet run`: SIGINT/SIGQUIT reach the child from the terminal;
                        // pass on a stop request and wait for the child to exit.
                        let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGTERM);
                    } else {
                        return Ok(Exit::Signal(libc::SIGTERM));
                    }
                }
                EXIT_FD => return Ok(Exit::ExitFd),
                WAKER => {
                    if let Some(rx) = &opts.commands {
                        while let Ok(c) = rx.try_recv() {
                            apply(&mut router, &stats, c);
                        }
                    }
                }
                CHILD => {
                    if let Some((pid, _)) = &opts.child {
                        let status = nix::sys::wait::waitpid(*pid, None);
                        let code = match status {
                            Ok(s) => crate::ns::wait_status_code(s),
                            Err(_) => 1,
                        };
                        return Ok(Exit::Child(code));
                    }
                }
                t => {
                    if let Some(owner) = Owner::from_token(t) {
                        router.host_event(now, owner, crate::router::Readiness::of(ev));
                    }
                }
            }
        }
        if port_pending {
            let st = &stats;
            let r = port.read_frames(PORT_RX_BATCH, &mut |f| {
                st.rx_frames.fetch_add(1, Ordering::Relaxed);
                st.rx_bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
                router.handle_frame(now, f);
            });
            match r {
                // A level-triggered port is reported again while frames wait.
                Ok(more) => port_pending = more && !level,
                Err(e) if port.is_fatal(&e) => return Err(EngineError::PortGone(e)),
                Err(e) => {
                    tracing::debug!(error = %e, "guest interface read error");
                    port_pending = false;
                }
            }
        }
        router.process(now);
        router.run_timers(now);
        // Write queued frames; resume flows that waited for room; repeat while that helps.
        for _ in 0..8 {
            if !port_writable {
                break;
            }
            let had = router.txq().len();
            while let Some(f) = router.txq().front() {
                match port.write_frame(f) {
                    Ok(true) => {
                        stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                        stats.tx_bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
                        router.txq().pop_front();
                    }
                    Ok(false) => {
                        port_writable = false;
                        break;
                    }
                    Err(e) if port.is_fatal(&e) => return Err(EngineError::PortGone(e)),
                    Err(e) => {
                        tracing::debug!(error = %e, "guest interface refused a frame");
                        stats.record(DropReason::PortWriteFailed);
                        router.txq().pop_front();
                    }
                }
            }
            if had == 0 || !router.has_blocked() {
                break;
            }
            router.tx_drained(now);
            if router.txq().is_empty() {
                break;
            }
        }
        match port.flush() {
            Ok(true) => {}
            Ok(false) => port_writable = false,
            Err(e) if port.is_fatal(&e) => return Err(EngineError::PortGone(e)),
            Err(e) => tracing::debug!(error = %e, "guest interface flush failed"),
        }
    }
}

fn apply(router: &mut Router, stats: &Stats, c: Command) {
    match c {
        Command::AddForward { id, spec, listener } => {
            if let Err(e) = router.fwd.add(&mut router.ctx, id, spec, listener) {
                tracing::warn!(id, error = %e, "cannot serve a port forward");
            }
        }
        Command::RemoveForward { id } => {
            router.fwd.remove(&mut router.ctx, id);
        }
        Command::Stats(tx) => {
            let _ = tx.try_send(stats_json(router, stats));
        }
        Command::Query(q, tx) => {
            let v = match q {
                crate::control::Query::Leases => {
                    serde_json::json!({ "leases": leases_json(router) })
                }
                crate::control::Query::Policy => {
                    serde_json::json!({ "filters": router.ctx.policy.to_json() })
                }
                crate::control::Query::Ports => {
                    use std::sync::atomic::Ordering::Relaxed;
                    serde_json::json!({ "ports": [{
                        "id": 1, "kind": "guest", "name": "", "mac": "",
                        "rx_frames": stats.rx_frames.load(Relaxed),
                        "rx_bytes": stats.rx_bytes.load(Relaxed),
                        "tx_frames": stats.tx_frames.load(Relaxed),
                        "tx_bytes": stats.tx_bytes.load(Relaxed),
                        "drops": stats.drop_counts().iter().map(|(_, n)| n).sum::<u64>(),
                    }]})
                }
            };
            let _ = tx.try_send(v);
        }
        Command::SetFilters {
            guest: None,
            rules,
            default,
            reply,
        } => {
            router.ctx.policy.set_network(rules, default);
            let _ = reply.try_send(Ok(router.ctx.policy.to_json()));
        }
        Command::SetFilters { reply, .. }
        | Command::SetPolicy { reply, .. }
        | Command::Detach { reply, .. } => {
            let _ = reply.try_send(Err(
                "per-guest settings and isolation work on networks (usernet network NAME)".into(),
            ));
        }
        Command::Attach { reply, .. } => {
            let _ = reply.try_send(Err(
                "this usernet serves a single guest; attach works on networks (usernet network NAME)"
                    .into(),
            ));
        }
        Command::RequestLease {
            mac,
            hostname,
            reply,
        } => {
            let _ = reply.try_send(lease_reply(
                router,
                Instant::now(),
                mac,
                hostname.as_deref(),
            ));
        }
    }
}

/// Lease an address to `mac` for `request_lease`: the address and what a guest
/// configured statically from it needs.
pub fn lease_reply(
    router: &mut Router,
    now: Instant,
    mac: [u8; 6],
    hostname: Option<&str>,
) -> Result<serde_json::Value, String> {
    let addr = router.dhcp_allocate(now, mac, hostname).ok_or_else(|| {
        "no address to lease (the DHCP server is off or its pool is exhausted)".to_string()
    })?;
    let cfg = router.config();
    Ok(serde_json::json!({
        "addr": addr.to_string(),
        "prefix_len": cfg.prefix_len,
        "gateway": (!cfg.internal).then(|| cfg.gateway.to_string()),
        "dns": (cfg.enable_dns && !cfg.internal).then(|| cfg.dns.to_string()),
        "mtu": cfg.mtu,
    }))
}

/// The DHCP leases as the API shows them.
pub fn leases_json(router: &Router) -> Vec<serde_json::Value> {
    router
        .leases()
        .into_iter()
        .map(|le| {
            serde_json::json!({
                "addr": le.addr.to_string(),
                "mac": usernet_dhcp::fmt_mac(le.mac),
                "hostname": le.hostname,
                "state": format!("{:?}", le.state).to_lowercase(),
                "expires_in_secs": le.expires.saturating_duration_since(Instant::now()).as_secs(),
            })
        })
        .collect()
}

/// The engine's counters, flows and leases as the `stats` API request answers them.
pub fn stats_json(router: &Router, stats: &Stats) -> serde_json::Value {
    use serde_json::json;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let drops: serde_json::Map<String, serde_json::Value> = stats
        .drop_counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let leases = leases_json(router);
    let (spare, reused) = router.tcp.spare_stats();
    let (spliced_now, spliced_total, splice_fallbacks) = match &router.splice {
        Some(sp) => {
            let (t, f) = sp.counts();
            (sp.len() as u64, t, f)
        }
        None => (0, 0, 0),
    };
    json!({
        "frames": { "from_guest": l(&stats.rx_frames), "to_guest": l(&stats.tx_frames) },
        "bytes": { "from_guest": l(&stats.rx_bytes), "to_guest": l(&stats.tx_bytes) },
        "flows": {
            "tcp": {
                "open": l(&stats.flows_open[0]),
                "total": l(&stats.flows_total[0]),
                "spare_sockets": spare,
                "reused_sockets": reused,
                "spliced": spliced_now,
                "spliced_total": spliced_total,
                "splice_fallbacks": splice_fallbacks,
                "splice": router.splice.as_ref().map(|s| s.working()),
            },
            "udp": { "open": l(&stats.flows_open[1]), "total": l(&stats.flows_total[1]) },
            "icmp": { "open": l(&stats.flows_open[2]), "total": l(&stats.flows_total[2]) },
        },
        "forwards": router.fwd.len(),
        "drops": drops,
        "dhcp_leases": leases,
    })
}

/// SIGTERM, SIGINT, SIGHUP and SIGQUIT through a self-pipe registered as `token`
/// (signal-hook's pipe carries no signal number: any byte is a stop request). With
/// `child_owns_terminal` (`usernet run`), SIGINT and SIGQUIT are ignored: the terminal's
/// ^C and ^\ are for the child, which shares our process group.
pub fn signal_pipe(
    registry: &mio::Registry,
    token: Token,
    child_owns_terminal: bool,
) -> Result<mio::net::UnixStream, EngineError> {
    let (sig_rx, sig_tx) =
        std::os::unix::net::UnixStream::pair().map_err(setup("cannot create the signal pipe"))?;
    sig_rx
        .set_nonblocking(true)
        .map_err(setup("cannot create the signal pipe"))?;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
        if child_owns_terminal && (sig == libc::SIGINT || sig == libc::SIGQUIT) {
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)))
                .map_err(setup("cannot install a signal handler"))?;
            continue;
        }
        let tx = sig_tx
            .try_clone()
            .map_err(setup("cannot create the signal pipe"))?;
        signal_hook::low_level::pipe::register(sig, tx)
            .map_err(setup("cannot install a signal handler"))?;
    }
    let mut sig_rx = mio::net::UnixStream::from_std(sig_rx);
    registry
        .register(&mut sig_rx, token, Interest::READABLE)
        .map_err(setup("cannot watch signals"))?;
    Ok(sig_rx)
}

/// Borrow a raw fd number the caller promises is open and ours to own.
pub fn owned_fd(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 || nix::fcntl::fcntl(borrow_for_probe(fd), nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("file descriptor {fd} is not open"),
        ));
    }
    // SAFETY: the fd was just checked to be open, and the command line hands its
    // ownership to this process (slirp4netns's -e/-r contract); nothing else closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn borrow_for_probe(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: only used for an F_GETFD probe of a descriptor number the user named;
    // fcntl on a closed number fails with EBADF and touches nothing.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
