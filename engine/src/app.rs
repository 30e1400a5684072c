//! What every mode of the `usernet` binary shares: logging, the PID file, the control
//! plane (event-loop poll, API socket, command-line forwards) and exit codes.

use std::process::ExitCode;
use std::sync::Arc;

use crate::cli::NetArgs;
use crate::control::{self, ApiSocket, Control, Rules};
use crate::engine::{self, Exit};
use crate::ns::IfConfig;
use crate::router::fwd::BoundListener;
use crate::stats::Stats;
use tracing_subscriber::EnvFilter;

/// Log to stderr or `--log-file`; `quiet` (for `usernet run`, whose terminal belongs to
/// the command) logs only warnings unless `--debug`.
pub fn init_logging(net: &NetArgs, quiet: bool) -> anyhow::Result<()> {
    let default = match (net.debug, quiet) {
        (true, _) => "debug",
        (false, true) => "warn",
        (false, false) => "info",
    };
    let filter = EnvFilter::try_from_env("USERNET_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &net.log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("cannot open the log file {}: {e}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

pub fn write_pid_file(net: &NetArgs) -> anyhow::Result<()> {
    if let Some(p) = &net.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write the PID file {}: {e}", p.display()))?;
    }
    Ok(())
}

pub fn if_config(cfg: &crate::config::Config, net: &NetArgs, configure: bool) -> IfConfig {
    IfConfig {
        configure,
        addr: cfg.guest,
        prefix_len: cfg.prefix_len,
        gateway: cfg.gateway,
        mtu: cfg.mtu,
        mac: net.macaddress.map(|m| m.0),
        vnet_hdr: !net.disable_tso,
    }
}

/// The event loop's poll, the control plane, the API socket and the command-line
/// forwards. Call after every fork: the API server is a thread.
pub struct ControlPlane {
    /// The event loop's poll (its waker is the control plane's).
    pub poll: mio::Poll,
    /// Commands from the API thread.
    pub commands: std::sync::mpsc::Receiver<control::Command>,
    /// Forwards from the command line, already bound.
    pub forwards: Vec<(u32, usernet_portfwd::RuleSpec, BoundListener)>,
    /// The API socket (its file is removed on drop).
    pub api: Option<ApiSocket>,
}

pub fn control_plane(net: &NetArgs, cfg: &crate::config::Config) -> anyhow::Result<ControlPlane> {
    let poll =
        mio::Poll::new().map_err(|e| anyhow::anyhow!("cannot create the event loop: {e}"))?;
    let waker = Arc::new(
        mio::Waker::new(poll.registry(), engine::WAKER)
            .map_err(|e| anyhow::anyhow!("cannot create the event loop: {e}"))?,
    );
    let (ctl, commands) = Control::new(waker);
    let mut rules = Rules::new(cfg.guest);
    if cfg.internal {
        rules.refuse = Some(
            "an internal network routes nothing, so it cannot forward host ports (use --mode nat or host-only)",
        );
    }
    let rules = Arc::new(rules);
    let mut forwards = Vec::new();
    for spec in net.forward_rules() {
        let (id, l) = rules.add(spec.clone())?;
        forwards.push((id, spec, l));
    }
    let api = match &net.api_socket {
        Some(path) => {
            let (listener, guard) = control::bind_api_socket(path).map_err(|e| {
                anyhow::anyhow!("cannot create the API socket {}: {e}", path.display())
            })?;
            tracing::info!(path = %path.display(), "API socket listening");
            Some((listener, guard))
        }
        None => None,
    };
    if net.enable_sandbox {
        confine(net, cfg)?;
    }
    let api = match api {
        Some((listener, guard)) => {
            control::spawn_api(listener, rules, ctl)
                .map_err(|e| anyhow::anyhow!("cannot start the API thread: {e}"))?;
            Some(guard)
        }
        None => None,
    };
    Ok(ControlPlane {
        poll,
        commands,
        forwards,
        api,
    })
}

/// `--enable-sandbox`: keep only the directories still needed (the API socket's and
/// the pcap file's, read-write; resolv.conf's, read-only), pre-open what needs
/// privileges, and enter the sandbox. Single-threaded callers only.
fn confine(net: &NetArgs, cfg: &crate::config::Config) -> anyhow::Result<()> {
    let parent = |p: &std::path::Path| -> Option<std::path::PathBuf> {
        let abs = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().ok()?.join(p)
        };
        abs.parent().map(|d| d.to_path_buf())
    };
    let mut keep = Vec::new();
    keep.extend(net.api_socket.as_deref().and_then(parent));
    keep.extend(net.pcap.as_deref().and_then(parent));
    let mut ro = Vec::new();
    if let crate::router::dns::Upstreams::ResolvConf(p) = &cfg.dns_options.upstreams {
        ro.extend(parent(p));
        if let Ok(c) = std::fs::canonicalize(p) {
            ro.extend(parent(&c));
        }
    }
    crate::host::preopen_raw_icmp(cfg);
    crate::sandbox::enter(&keep, &ro)?;
    Ok(())
}

/// Wrap `port` in a pcap recorder when `--pcap FILE` was given.
pub fn wrap_pcap(
    net: &NetArgs,
    port: Box<dyn crate::port::Port>,
) -> anyhow::Result<Box<dyn crate::port::Port>> {
    match &net.pcap {
        Some(path) => {
            let p = crate::pcap::PcapPort::create(port, path).map_err(|e| {
                anyhow::anyhow!("cannot create the pcap file {}: {e}", path.display())
            })?;
            tracing::info!(path = %path.display(), "capturing every frame to a pcap file");
            Ok(Box::new(p))
        }
        None => Ok(port),
    }
}

pub fn exit_code(exit: Exit) -> ExitCode {
    match exit {
        Exit::Signal(_) | Exit::ExitFd => ExitCode::SUCCESS,
        Exit::Child(c) => ExitCode::from(c.clamp(0, 255) as u8),
    }
}

pub fn log_summary(stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    tracing::debug!(
        rx_frames = stats.rx_frames.load(Relaxed),
        tx_frames = stats.tx_frames.load(Relaxed),
        drops = ?stats.drop_counts(),
        "exiting"
    );
}
