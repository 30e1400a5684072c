//! `usernet network NAME`: a network's command line, its directory, and its event loop.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Fabric, NET_RX_BATCH, PortKind, ROUTER};
use crate::app::{control_plane, init_logging, write_pid_file};
use crate::cli::NetArgs;
use crate::control::{Command, Query};
use crate::engine::{self, WAKER};
use crate::port::{Port, TapPort};
use crate::port_stream::StreamPort;
use crate::router::{Owner, Router};
use crate::stats::{DropReason, Stats};
use usernet_portfwd::api::AttachKind;

const SIGNAL: Token = Token(1);
const EXIT_FD: Token = Token(2);
const LISTENER: Token = Token(5);
const PORT_BASE: usize = 16;
/// Tokens of the pidfds that tell a port's guest process exited.
const WATCH_BASE: usize = 1 << 24;

/// How long a network created on first use lives without any port.
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// A network's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Guests reach each other, the host (through the gateway) and the outside (NAT)
    Nat,
    /// Guests reach only each other: no gateway, no DNS, DHCP only with --dhcp
    Internal,
    /// Guests reach each other and the host's loopback (through the gateway), nothing beyond
    HostOnly,
}

impl Mode {
    /// The name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Internal => "internal",
            Mode::HostOnly => "host-only",
        }
    }
}

/// `usernet network NAME [OPTIONS]`.
#[derive(Parser, Debug)]
#[command(
    name = "usernet network",
    about = "Run network NAME in the foreground: a learning switch that VMs (QEMU -netdev \
             stream) and namespaces (usernet attach, usernet run --network) join, with a \
             gateway, DHCP, DNS, NAT and port forwards in nat mode (10.0.2.0/24 by default).",
    disable_version_flag = true,
    after_help = "Examples:\n  usernet network lab -p 127.0.0.1:2222:10.0.2.15:22 -p 127.0.0.1:2223:10.0.2.16:22\n  \
                  usernet attach lab $(pidof my-container-init) --configure\n  \
                  usernet run --network lab -- ping 10.0.2.15\n  \
                  usernet network lab --list\n  \
                  usernet network isolated --mode internal --dhcp"
)]
pub struct NetworkCli {
    /// The network's name (letters, digits, '.', '_', '-'; at most 64)
    #[arg(value_name = "NAME")]
    pub name: String,
    /// nat: reach the outside; internal: only each other; host-only: each other and the host
    #[arg(long, value_enum, default_value_t = Mode::Nat)]
    pub mode: Mode,
    /// Serve DHCP on an internal network (nat and host-only networks always do, unless --disable-dhcp)
    #[arg(long)]
    pub dhcp: bool,
    /// Keep guests apart: no traffic between guests (DHCP and the gateway still work)
    #[arg(long)]
    pub isolate: bool,
    /// Guests may not reach the host (the gateway does not stand for the host's loopback; forwards still come in)
    #[arg(long = "block-host")]
    pub block_host: bool,
    /// Guests may reach nothing but what is forwarded to them (QEMU's restrict=on)
    #[arg(long)]
    pub restrict: bool,
    /// Turn off the anti-spoofing checks (source MAC, addresses, ARP, NDP, rogue DHCP/RA)
    #[arg(long = "allow-spoofing")]
    pub allow_spoofing: bool,
    /// Settings for one guest: GUEST=FLAG[,FLAG...] with GUEST a MAC or IPv4 address and FLAG one of isolate, no-isolate, block-host, no-block-host, restrict, no-restrict, allow-spoofing, no-allow-spoofing (repeatable)
    #[arg(long = "guest-policy", value_name = "GUEST=FLAGS", value_parser = parse_guest_policy)]
    pub guest_policy: Vec<(super::GuestKey, super::guard::Overrides)>,
    /// Remove port ID from a running network (its TAP or connection closes), then exit
    #[arg(long, value_name = "ID")]
    pub detach: Option<u32>,
    /// Print a running network's ports, leases and forwards, then exit
    #[arg(long)]
    pub list: bool,
    /// With --list: print JSON
    #[arg(long, requires = "list")]
    pub json: bool,
    /// Directory of the networks' sockets (default: /run/usernet for root, else $XDG_RUNTIME_DIR/usernet)
    #[arg(long = "runtime-dir", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Exit once no port has been attached for a few seconds (networks created on first use)
    #[arg(long = "exit-when-idle", hide = true)]
    pub exit_when_idle: bool,
    /// Exit when this file descriptor becomes readable or is closed
    #[arg(short = 'e', long = "exit-fd", value_name = "FD")]
    pub exit_fd: Option<i32>,
    /// Write "1" to this file descriptor and close it once ready
    #[arg(short = 'r', long = "ready-fd", value_name = "FD")]
    pub ready_fd: Option<i32>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// `GUEST=FLAG[,FLAG...]` of `--guest-policy`.
pub fn parse_guest_policy(s: &str) -> Result<(super::GuestKey, super::guard::Overrides), String> {
    let (g, flags) = s
        .split_once('=')
        .ok_or_else(|| format!("--guest-policy \"{s}\" has no '=' (expected GUEST=FLAG[,FLAG...], e.g. 52:54:00:12:34:56=isolate)"))?;
    let key = match usernet_portfwd::api::GuestRef::parse(g) {
        Some(usernet_portfwd::api::GuestRef::Mac(m)) => super::GuestKey::Mac(m),
        Some(usernet_portfwd::api::GuestRef::Addr(std::net::IpAddr::V4(a))) => {
            super::GuestKey::Addr(a)
        }
        _ => {
            return Err(format!(
                "\"{g}\" in --guest-policy is neither a MAC nor an IPv4 address"
            ));
        }
    };
    let mut o = super::guard::Overrides::default();
    for f in flags.split(',') {
        let (name, on) = match f.strip_prefix("no-") {
            Some(n) => (n, false),
            None => (f, true),
        };
        match name {
            "isolate" => o.isolate = Some(on),
            "block-host" => o.block_host = Some(on),
            "restrict" => o.restrict = Some(on),
            "allow-spoofing" => o.allow_spoofing = Some(on),
            _ => {
                return Err(format!(
                    "\"{f}\" in --guest-policy is not a setting (expected isolate, block-host, restrict or allow-spoofing, each optionally prefixed with no-)"
                ));
            }
        }
    }
    Ok((key, o))
}

/// Where networks keep their sockets: `--runtime-dir`, else `/run/usernet` for root,
/// else `$XDG_RUNTIME_DIR/usernet`, else `/tmp/usernet-UID`.
pub fn runtime_base(opt: Option<&Path>) -> PathBuf {
    if let Some(p) = opt {
        return p.to_path_buf();
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/usernet");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("usernet"),
        _ => PathBuf::from(format!("/tmp/usernet-{uid}")),
    }
}

/// Check a network name: it becomes a directory name.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !ok {
        anyhow::bail!(
            "network name \"{name}\" is not usable (expected 1-64 letters, digits, '.', '_' or '-', not starting with '.')"
        );
    }
    Ok(())
}

/// The directory of network `name`.
pub fn network_dir(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    Ok(base.join(name))
}

/// Create `dir` (and its parent) private to this user: mode 0700, owned by us.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    for d in [dir.parent(), Some(dir)].into_iter().flatten() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", d.display()))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => anyhow::bail!("cannot create the directory {}: {e}", d.display()),
        }
    }
    let m = std::fs::metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    if m.uid() != nix::unistd::geteuid().as_raw() {
        anyhow::bail!(
            "the network directory {} belongs to another user (uid {}); only its owner may run or join that network",
            dir.display(),
            m.uid()
        );
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("cannot make {} private: {e}", dir.display()))?;
    }
    Ok(())
}

/// Run `usernet network`.
pub fn cmd_network(cli: NetworkCli) -> anyhow::Result<ExitCode> {
    let base = runtime_base(cli.runtime_dir.as_deref());
    let dir = network_dir(&base, &cli.name)?;
    if cli.list {
        return super::client::list(&dir, &cli.name, cli.json);
    }
    if let Some(port) = cli.detach {
        return super::client::detach(&dir, &cli.name, port);
    }
    if cli.net.api_socket.is_some() {
        anyhow::bail!(
            "--api-socket is not used by networks: the API socket of network {} is {}",
            cli.name,
            dir.join("api.sock").display()
        );
    }
    if cli.net.pcap.is_some() {
        anyhow::bail!("--pcap is not supported on networks yet (capture on a guest's interface)");
    }
    let internal = cli.mode == Mode::Internal;
    if internal && !cli.net.forward_rules().is_empty() {
        anyhow::bail!(
            "an internal network routes nothing, so it cannot forward host ports (use --mode nat or host-only)"
        );
    }
    let mut cfg = cli.net.to_config()?;
    cfg.host_only = cli.mode == Mode::HostOnly;
    if internal {
        cfg.internal = true;
        cfg.outbound = false;
        cfg.enable_dns = false;
        cfg.disable_host_loopback = true;
        cfg.ipv6 = None;
        if cli.dhcp {
            if let Some(d) = cfg.dhcp.as_mut() {
                d.advertise_router = false;
                d.dns_servers.clear();
            }
        } else {
            cfg.dhcp = None;
        }
    }
    init_logging(&cli.net, false)?;
    let exit_fd = cli
        .exit_fd
        .map(engine::owned_fd)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--exit-fd: {e}"))?;
    let ready_fd = cli
        .ready_fd
        .map(engine::owned_fd)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--ready-fd: {e}"))?;
    make_private_dir(&dir)?;
    // One process per network: a lock held for the process's life.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.join("lock").display()))?;
    let lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, e)) => anyhow::bail!(
            "network {} is already running (its lock {} is held: {e})",
            cli.name,
            dir.join("lock").display()
        ),
    };
    let stream_path = dir.join("stream.sock");
    let _ = std::fs::remove_file(&stream_path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = mio::net::UnixListener::bind(&stream_path);
    nix::sys::stat::umask(old);
    let listener =
        listener.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", stream_path.display()))?;
    let _unlink = Unlink(stream_path.clone());
    write_pid_file(&cli.net)?;
    let mut net = cli.net.clone();
    net.api_socket = Some(dir.join("api.sock"));
    let cp = control_plane(&net, &cfg)?;

    let stats = Arc::new(Stats::default());
    let now = Instant::now();
    let registry = cp
        .poll
        .registry()
        .try_clone()
        .map_err(|e| anyhow::anyhow!("cannot create the event loop: {e}"))?;
    let router = if internal && cfg.dhcp.is_none() {
        None
    } else {
        let mut r = Router::new(cfg.clone(), stats.clone(), registry, None, now)
            .map_err(|e| anyhow::anyhow!("cannot start the router: {e}"))?;
        for (id, spec, l) in cp.forwards {
            r.fwd
                .add(&mut r.ctx, id, spec, l)
                .map_err(|e| anyhow::anyhow!("cannot watch a port-forward socket: {e}"))?;
        }
        Some(r)
    };
    let mut fabric = Fabric::new(
        now,
        cfg.mtu,
        (cfg.network, cfg.prefix_len),
        cfg.gateway,
        router,
        stats.clone(),
    );
    fabric.set_policy(
        None,
        super::guard::Overrides {
            isolate: Some(cli.isolate),
            block_host: Some(cli.block_host),
            restrict: Some(cli.restrict),
            allow_spoofing: Some(cli.allow_spoofing),
        },
    );
    for (k, o) in &cli.guest_policy {
        fabric.set_policy(Some(*k), *o);
    }
    for (g, rule) in &cli.net.filter {
        if let Some(g) = g {
            let k = guest_key(*g).map_err(|e| anyhow::anyhow!("--filter: {e}"))?;
            let mut rules: Vec<_> = fabric
                .guest_filters
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            rules.push(rule.clone());
            if !fabric.set_guest_filters(k, rules) {
                anyhow::bail!(
                    "--filter: rules for more than {} guests (at most that many guests may have rules of their own)",
                    super::MAX_GUEST_POLICIES
                );
            }
        }
    }
    if fabric.router.is_none() {
        // An internal network without DHCP has no router: the switch applies the
        // network's rules to guest-to-guest flows itself.
        fabric
            .policy_mut()
            .set_network(cfg.filters.clone(), Some(cfg.filter_default));
    }
    let hint = format!(
        "-device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56 -netdev stream,id=n0,server=off,addr.type=unix,addr.path={}",
        stream_path.display()
    );
    eprintln!(
        "usernet: network {} ({}, {}/{}) ready\n  stream socket (QEMU): {}\n  API socket:           {}\n  QEMU arguments (give every VM its own mac=): {}\n  attach a namespace:   usernet attach {} PID",
        cli.name,
        cli.mode.as_str(),
        cfg.network,
        cfg.prefix_len,
        stream_path.display(),
        dir.join("api.sock").display(),
        hint,
        cli.name,
    );
    tracing::info!(name = %cli.name, mode = cli.mode.as_str(), dir = %dir.display(), "network ready");
    let r = event_loop(
        cp.poll,
        fabric,
        listener,
        cp.commands,
        LoopOpts {
            exit_fd,
            ready_fd,
            exit_when_idle: cli.exit_when_idle,
            seccomp: cli.net.enable_seccomp,
        },
    );
    drop(cp.api);
    drop(lock);
    r.map(|()| ExitCode::SUCCESS)
}

struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct LoopOpts {
    exit_fd: Option<OwnedFd>,
    ready_fd: Option<OwnedFd>,
    exit_when_idle: bool,
    seccomp: bool,
}

fn token_of(id: usize) -> Token {
    Token(PORT_BASE + id)
}

fn port_of(t: Token) -> Option<usize> {
    (t.0 >= PORT_BASE && t.0 < WATCH_BASE).then(|| t.0 - PORT_BASE)
}

fn watched_port(t: Token) -> Option<usize> {
    (t.0 >= WATCH_BASE && t.0 < crate::router::ROUTER_TOKEN_BASE).then(|| t.0 - WATCH_BASE)
}

fn event_loop(
    mut poll: Poll,
    mut fabric: Fabric,
    mut listener: mio::net::UnixListener,
    commands: std::sync::mpsc::Receiver<Command>,
    mut opts: LoopOpts,
) -> anyhow::Result<()> {
    let setup = |what: &'static str| move |e: io::Error| anyhow::anyhow!("{what}: {e}");
    let mut sig_rx = engine::signal_pipe(poll.registry(), SIGNAL, false)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(setup("cannot watch the stream socket"))?;
    if let Some(fd) = &opts.exit_fd {
        poll.registry()
            .register(&mut SourceFd(&fd.as_raw_fd()), EXIT_FD, Interest::READABLE)
            .map_err(setup("cannot watch the exit fd"))?;
    }
    if let Some(fd) = opts.ready_fd.take() {
        let mut f = std::fs::File::from(fd);
        if let Err(e) = f.write_all(b"1") {
            tracing::warn!(error = %e, "cannot write to the ready fd");
        }
    }
    if opts.seccomp {
        crate::sandbox::install_seccomp()
            .map_err(|e| anyhow::anyhow!("cannot confine the network: {e}"))?;
    }
    if let Some(r) = fabric.router.as_mut() {
        r.start(Instant::now());
    }
    let mut events = Events::with_capacity(1024);
    let mut order: Vec<usize> = Vec::new();
    let mut rotate = 0usize;
    let mut idle_since = Some(Instant::now());
    let mut next_ageing = Instant::now() + super::switch::MAC_AGEING;
    loop {
        let now = Instant::now();
        let any_pending = fabric.ports.iter().any(|(_, p)| p.pending);
        let mut deadline = fabric.router.as_ref().and_then(|r| r.next_deadline());
        let mut consider = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        };
        consider(next_ageing);
        if opts.exit_when_idle
            && let Some(t) = idle_since
        {
            consider(t + IDLE_EXIT);
        }
        // A stalled port's queue is re-examined when it would count as stalled.
        if fabric.router.as_mut().is_some_and(|r| !r.txq().is_empty()) {
            consider(now + super::PORT_STALL);
        }
        let timeout = if any_pending {
            Some(Duration::ZERO)
        } else {
            deadline.map(|d| d.saturating_duration_since(now))
        };
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            anyhow::bail!("event loop failed: {e}");
        }
        let now = Instant::now();
        for ev in events.iter() {
            match ev.token() {
                SIGNAL => {
                    let mut b = [0u8; 16];
                    while let Ok(n) = sig_rx.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                    }
                    tracing::info!("stopping");
                    return Ok(());
                }
                EXIT_FD => return Ok(()),
                LISTENER => accept_streams(&mut fabric, &listener, poll.registry(), now),
                WAKER => {
                    while let Ok(c) = commands.try_recv() {
                        apply(&mut fabric, poll.registry(), now, c);
                    }
                }
                t => {
                    if let Some(owner) = Owner::from_token(t) {
                        if let Some(r) = fabric.router.as_mut() {
                            r.host_event(now, owner, crate::router::Readiness::of(ev));
                        }
                    } else if let Some(id) = watched_port(t) {
                        remove_device(&mut fabric, poll.registry(), id, "its guest process exited");
                    } else if let Some(id) = port_of(t)
                        && let Some(p) = fabric.port_mut(id)
                    {
                        if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                            p.pending = true;
                        }
                        if ev.is_writable() {
                            p.writable = true;
                        }
                    }
                }
            }
        }
        // Fair service: every pending port reads at most NET_RX_BATCH frames per turn,
        // starting from a different port each turn.
        order.clear();
        order.extend(
            fabric
                .ports
                .iter()
                .filter(|(_, p)| p.pending)
                .map(|(k, _)| k + 1),
        );
        if !order.is_empty() {
            let n = order.len();
            rotate = rotate.wrapping_add(1);
            for i in 0..n {
                let id = order[(i + rotate) % n];
                read_port(&mut fabric, poll.registry(), now, id);
            }
        }
        if let Some(r) = fabric.router.as_mut() {
            r.process(now);
            r.run_timers(now);
        }
        for _ in 0..8 {
            fabric.drain_router(now);
            write_ports(&mut fabric, poll.registry(), now);
            let Some(r) = fabric.router.as_mut() else {
                break;
            };
            if !r.has_blocked() || !r.txq().has_room() {
                break;
            }
            r.tx_drained(now);
            if r.txq().is_empty() {
                break;
            }
        }
        if now >= next_ageing {
            fabric.switch.expire(now);
            next_ageing = now + super::switch::MAC_AGEING;
        }
        if fabric.ports.is_empty() {
            let since = *idle_since.get_or_insert(now);
            if opts.exit_when_idle && now.saturating_duration_since(since) >= IDLE_EXIT {
                tracing::info!("no port left; exiting (created on first use)");
                return Ok(());
            }
        } else {
            idle_since = None;
        }
    }
}

fn add_device(
    fabric: &mut Fabric,
    registry: &mio::Registry,
    now: Instant,
    mut io: Box<dyn Port>,
    kind: PortKind,
    name: String,
) -> Result<usize, String> {
    let Some(id) = fabric.add_port(now, None, kind, name.clone()) else {
        return Err(format!(
            "the network has its maximum of {} ports",
            super::MAX_PORTS
        ));
    };
    if let Err(e) = io.register(registry, token_of(id)) {
        fabric.remove_port(id);
        return Err(format!("cannot watch the new port: {e}"));
    }
    if let Some(p) = fabric.port_mut(id) {
        p.io = Some(io);
    }
    tracing::info!(port = id, kind = kind.as_str(), %name, "port attached");
    Ok(id)
}

fn remove_device(fabric: &mut Fabric, registry: &mio::Registry, id: usize, why: &str) {
    let _ = registry;
    // Dropping the port closes its descriptor, which also leaves the epoll set.
    if let Some(p) = fabric.remove_port(id) {
        tracing::info!(port = id, name = %p.name, reason = why, "port left");
    }
}

fn accept_streams(
    fabric: &mut Fabric,
    l: &mio::net::UnixListener,
    reg: &mio::Registry,
    now: Instant,
) {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                let fd = OwnedFd::from(std::os::unix::net::UnixStream::from(OwnedFd::from(s)));
                let stats = fabric.stats.clone();
                match StreamPort::connected(fd, stats) {
                    Ok(p) => {
                        let n = fabric.ports.len() + 1;
                        if let Err(e) = add_device(
                            fabric,
                            reg,
                            now,
                            Box::new(p),
                            PortKind::Stream,
                            format!("qemu-{n}"),
                        ) {
                            tracing::warn!("refused a QEMU connection: {e}");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot serve a QEMU connection"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a QEMU connection");
                return;
            }
        }
    }
}

fn read_port(fabric: &mut Fabric, reg: &mio::Registry, now: Instant, id: usize) {
    let Some(mut io) = fabric.port_mut(id).and_then(|p| p.io.take()) else {
        if let Some(p) = fabric.port_mut(id) {
            p.pending = false;
        }
        return;
    };
    let r = io.read_frames(NET_RX_BATCH, &mut |f| fabric.from_port(now, id, f));
    let fatal = match &r {
        Err(e) => io.is_fatal(e),
        Ok(_) => false,
    };
    if let Some(p) = fabric.port_mut(id) {
        p.io = Some(io);
        p.pending = matches!(r, Ok(true));
    }
    if fatal {
        let why = r.err().map(|e| e.to_string()).unwrap_or_default();
        remove_device(fabric, reg, id, &why);
    }
}

fn write_ports(fabric: &mut Fabric, reg: &mio::Registry, now: Instant) {
    let stats = fabric.stats.clone();
    let mut i = 0;
    while i < fabric.to_write.len() {
        let id = fabric.to_write[i];
        let mut gone = None;
        let mut done = false;
        if let Some(p) = fabric.port_mut(id) {
            if let Some(io) = p.io.as_mut() {
                while p.writable {
                    let Some(f) = p.q.front() else { break };
                    match io.write_frame(f) {
                        Ok(true) => {
                            p.tx_frames += 1;
                            p.tx_bytes += f.len() as u64;
                            p.last_progress = now;
                            p.q.pop_front();
                        }
                        Ok(false) => p.writable = false,
                        Err(e) if io.is_fatal(&e) => {
                            gone = Some(e.to_string());
                            break;
                        }
                        Err(e) => {
                            // The guest's interface is down: drop, keep the port.
                            tracing::debug!(port = id, error = %e, "port refused a frame");
                            stats.record(DropReason::PortWriteFailed);
                            p.drops += 1;
                            p.q.pop_front();
                        }
                    }
                }
                match io.flush() {
                    Ok(true) => {}
                    Ok(false) => p.writable = false,
                    Err(e) if io.is_fatal(&e) => gone = Some(e.to_string()),
                    Err(_) => {}
                }
            } else {
                // No device (harness port): nothing takes the frames.
                while p.q.front().is_some() {
                    p.q.pop_front();
                }
            }
            if p.q.is_empty() {
                p.last_progress = now;
                done = true;
            }
        } else {
            done = true;
        }
        if let Some(why) = gone {
            remove_device(fabric, reg, id, &why);
            continue;
        }
        if done {
            fabric.to_write.swap_remove(i);
        } else {
            i += 1;
        }
    }
}

fn apply(fabric: &mut Fabric, reg: &mio::Registry, now: Instant, c: Command) {
    match c {
        Command::AddForward { id, spec, listener } => match fabric.router.as_mut() {
            Some(r) => {
                if let Err(e) = r.fwd.add(&mut r.ctx, id, spec, listener) {
                    tracing::warn!(id, error = %e, "cannot serve a port forward");
                }
            }
            None => tracing::warn!(id, "an internal network cannot serve port forwards"),
        },
        Command::RemoveForward { id } => {
            if let Some(r) = fabric.router.as_mut() {
                r.fwd.remove(&mut r.ctx, id);
            }
        }
        Command::Stats(tx) => {
            let mut v = match fabric.router.as_ref() {
                Some(r) => engine::stats_json(r, &fabric.stats),
                None => serde_json::json!({}),
            };
            v["ports"] = ports_json(fabric);
            v["neighbors"] = fabric.neighbors().into();
            let _ = tx.try_send(v);
        }
        Command::Query(q, tx) => {
            let v = match q {
                Query::Ports => {
                    let mode = match fabric.router.as_ref().map(|r| r.config()) {
                        None => Mode::Internal,
                        Some(c) if c.internal => Mode::Internal,
                        Some(c) if c.host_only => Mode::HostOnly,
                        Some(_) => Mode::Nat,
                    };
                    serde_json::json!({ "ports": ports_json(fabric), "mode": mode.as_str() })
                }
                Query::Policy => policy_json(fabric),
                Query::Leases => serde_json::json!({
                    "leases": fabric.router.as_ref().map(engine::leases_json).unwrap_or_default()
                }),
            };
            let _ = tx.try_send(v);
        }
        Command::Attach {
            fd,
            watch,
            kind,
            name,
            mac,
            addr,
            reply,
        } => {
            let io: Result<Box<dyn Port>, String> = match kind {
                AttachKind::Tap => nix::fcntl::fcntl(
                    &fd,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map(|_| Box::new(TapPort::new(fd)) as Box<dyn Port>)
                .map_err(|e| format!("the descriptor is not usable: {e}")),
                AttachKind::Stream => StreamPort::connected(fd, fabric.stats.clone())
                    .map(|p| Box::new(p) as Box<dyn Port>)
                    .map_err(|e| format!("the descriptor is not a stream socket: {e}")),
            };
            let kind = match kind {
                AttachKind::Tap => PortKind::Tap,
                AttachKind::Stream => PortKind::Stream,
            };
            let r = io
                .and_then(|io| add_device(fabric, reg, now, io, kind, name))
                .map(|id| {
                    if mac.is_some() || addr.is_some() {
                        fabric.configure_identity(id, mac, addr);
                    }
                    if let Some(w) = watch {
                        let src = &mut SourceFd(&w.as_raw_fd());
                        match reg.register(src, Token(WATCH_BASE + id), Interest::READABLE) {
                            Ok(()) => {
                                if let Some(p) = fabric.port_mut(id) {
                                    p.watch = Some(w);
                                }
                            }
                            Err(e) => tracing::warn!(port = id, error = %e, "cannot watch the guest's process"),
                        }
                    }
                    serde_json::json!({ "port": id })
                });
            let _ = reply.try_send(r);
        }
        Command::Detach { port, reply } => {
            let id = port as usize;
            let r = if fabric.port(id).is_some() {
                remove_device(fabric, reg, id, "detached through the API");
                Ok(serde_json::json!({}))
            } else {
                Err(format!("no port {port} on this network (see list_ports)"))
            };
            let _ = reply.try_send(r);
        }
        Command::SetPolicy {
            guest,
            change,
            reply,
        } => {
            let o = super::guard::Overrides {
                isolate: change.isolate,
                block_host: change.block_host,
                restrict: change.restrict,
                allow_spoofing: change.allow_spoofing,
            };
            let r = match guest.map(guest_key).transpose() {
                Err(e) => Err(e),
                Ok(key) if fabric.set_policy(key, o) => Ok(policy_json(fabric)),
                Ok(_) => Err(format!(
                    "the network holds settings for {} guests already",
                    super::MAX_GUEST_POLICIES
                )),
            };
            let _ = reply.try_send(r);
        }
        Command::SetFilters {
            guest,
            rules,
            default,
            reply,
        } => {
            let r = match guest.map(guest_key).transpose() {
                Err(e) => Err(e),
                Ok(None) => {
                    fabric.policy_mut().set_network(rules, default);
                    Ok(policy_json(fabric))
                }
                Ok(Some(k)) if fabric.set_guest_filters(k, rules) => Ok(policy_json(fabric)),
                Ok(Some(_)) => Err(format!(
                    "the network holds rules for {} guests already (remove some with set_filters and no rules)",
                    super::MAX_GUEST_POLICIES
                )),
            };
            let _ = reply.try_send(r);
        }
        Command::RequestLease {
            mac,
            hostname,
            reply,
        } => {
            let r = match fabric.router.as_mut() {
                Some(r) => engine::lease_reply(r, now, mac, hostname.as_deref()),
                None => {
                    Err("this internal network has no DHCP server (start it with --dhcp)".into())
                }
            };
            let _ = reply.try_send(r);
        }
    }
}

fn guest_key(g: usernet_portfwd::api::GuestRef) -> Result<super::GuestKey, String> {
    match g {
        usernet_portfwd::api::GuestRef::Mac(m) => Ok(super::GuestKey::Mac(m)),
        usernet_portfwd::api::GuestRef::Addr(std::net::IpAddr::V4(a)) => {
            Ok(super::GuestKey::Addr(a))
        }
        usernet_portfwd::api::GuestRef::Addr(a) => Err(format!(
            "guest {a}: name a guest by its MAC or IPv4 address"
        )),
    }
}

/// The isolation flags, per-port state and filter rules as `list_policy` shows them.
pub fn policy_json(fabric: &Fabric) -> serde_json::Value {
    let flags = |f: &super::guard::Flags| {
        serde_json::json!({
            "isolate": f.isolate, "block_host": f.block_host,
            "restrict": f.restrict, "allow_spoofing": !f.spoof_check,
        })
    };
    let ports: Vec<serde_json::Value> = fabric
        .ports
        .iter()
        .map(|(k, p)| {
            let spoofed: serde_json::Map<String, serde_json::Value> = super::guard::Spoof::ALL
                .iter()
                .zip(p.spoofed)
                .map(|(r, n)| (r.as_str().to_string(), n.into()))
                .collect();
            serde_json::json!({
                "id": k + 1,
                "mac": p.ident.mac.map(usernet_dhcp::fmt_mac),
                "addr": p
                    .ident
                    .addr4
                    .or_else(|| {
                        let mac = p.ident.mac?;
                        fabric.router.as_ref()?.leases().into_iter().find(|l| l.mac == mac).map(|l| l.addr)
                    })
                    .or(p.ident.pinned4)
                    .map(|a| a.to_string()),
                "flags": flags(&p.flags),
                "spoofed": spoofed,
                "isolated": p.isolated,
            })
        })
        .collect();
    let guests: Vec<serde_json::Value> = fabric
        .overrides
        .iter()
        .map(|(k, o)| {
            serde_json::json!({
                "guest": match k {
                    super::GuestKey::Mac(m) => usernet_dhcp::fmt_mac(*m),
                    super::GuestKey::Addr(a) => a.to_string(),
                },
                "isolate": o.isolate, "block_host": o.block_host,
                "restrict": o.restrict, "allow_spoofing": o.allow_spoofing,
            })
        })
        .collect();
    serde_json::json!({
        "network": flags(&fabric.base),
        "guests": guests,
        "ports": ports,
        "filters": fabric.policy().to_json(),
    })
}

/// The ports as `list_ports` shows them (the router first, when there is one).
pub fn ports_json(fabric: &Fabric) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mut v = Vec::new();
    if fabric.router.is_some() {
        let st = &fabric.stats;
        v.push(serde_json::json!({
            "id": ROUTER, "kind": "router", "name": "gateway",
            "mac": usernet_dhcp::fmt_mac(crate::config::GATEWAY_MAC),
            "rx_frames": st.rx_frames.load(Relaxed), "rx_bytes": st.rx_bytes.load(Relaxed),
            "tx_frames": st.tx_frames.load(Relaxed), "tx_bytes": st.tx_bytes.load(Relaxed),
            "drops": 0,
        }));
    }
    for (k, p) in fabric.ports.iter() {
        v.push(serde_json::json!({
            "id": k + 1, "kind": p.kind.as_str(), "name": p.name,
            "mac": p.mac.map(usernet_dhcp::fmt_mac).unwrap_or_default(),
            "rx_frames": p.rx_frames, "rx_bytes": p.rx_bytes,
            "tx_frames": p.tx_frames, "tx_bytes": p.tx_bytes,
            "drops": p.drops,
        }));
    }
    serde_json::Value::Array(v)
}
