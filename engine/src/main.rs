//! `usernet`: the command-line entry point. Parses, sets up the namespace and TAP while
//! still single-threaded, then runs the engine.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use usernet_engine::cli::{FwdCli, NetArgs, NetnsTypeArg, NsCli, RunCli, StatsCli};
use usernet_engine::control::{self, ApiSocket, Control, Rules};
use usernet_engine::engine::{self, Exit, LoopOptions};
use usernet_engine::ns::{self, IfConfig, NetnsType, TapTarget};
use usernet_engine::port::TapPort;
use usernet_engine::stats::Stats;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = match args.get(1).and_then(|a| a.to_str()) {
        Some(sub @ ("run" | "fwd" | "stats")) => {
            let sub = sub.to_string();
            let mut rest = vec![OsString::from(format!("usernet {sub}"))];
            rest.extend(args.into_iter().skip(2));
            match sub.as_str() {
                "run" => cmd_run(RunCli::parse_from(rest)),
                "fwd" => usernet_engine::client::cmd_fwd(FwdCli::parse_from(rest)),
                _ => usernet_engine::client::cmd_stats(StatsCli::parse_from(rest)),
            }
        }
        _ => cmd_ns(NsCli::parse_from(args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = writeln!(std::io::stderr(), "usernet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(net: &NetArgs) -> anyhow::Result<()> {
    let default = if net.debug { "debug" } else { "info" };
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

fn write_pid_file(net: &NetArgs) -> anyhow::Result<()> {
    if let Some(p) = &net.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("cannot write the PID file {}: {e}", p.display()))?;
    }
    Ok(())
}

fn if_config(cfg: &usernet_engine::config::Config, net: &NetArgs, configure: bool) -> IfConfig {
    IfConfig {
        configure,
        addr: cfg.guest,
        prefix_len: cfg.prefix_len,
        gateway: cfg.gateway,
        mtu: cfg.mtu,
        mac: net.macaddress.map(|m| m.0),
    }
}

/// The event loop's poll, the control plane, the API socket and the command-line
/// forwards. Call after every fork: the API server is a thread.
struct ControlPlane {
    poll: mio::Poll,
    commands: std::sync::mpsc::Receiver<control::Command>,
    forwards: Vec<(
        u32,
        usernet_portfwd::RuleSpec,
        usernet_engine::router::fwd::BoundListener,
    )>,
    _api: Option<ApiSocket>,
}

fn control_plane(
    net: &NetArgs,
    cfg: &usernet_engine::config::Config,
) -> anyhow::Result<ControlPlane> {
    let poll =
        mio::Poll::new().map_err(|e| anyhow::anyhow!("cannot create the event loop: {e}"))?;
    let waker = Arc::new(
        mio::Waker::new(poll.registry(), engine::WAKER)
            .map_err(|e| anyhow::anyhow!("cannot create the event loop: {e}"))?,
    );
    let (ctl, commands) = Control::new(waker);
    let rules = Arc::new(Rules::new(cfg.guest));
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
            control::spawn_api(listener, rules, ctl)
                .map_err(|e| anyhow::anyhow!("cannot start the API thread: {e}"))?;
            tracing::info!(path = %path.display(), "API socket listening");
            Some(guard)
        }
        None => None,
    };
    Ok(ControlPlane {
        poll,
        commands,
        forwards,
        _api: api,
    })
}

fn exit_code(exit: Exit) -> ExitCode {
    match exit {
        Exit::Signal(_) | Exit::ExitFd => ExitCode::SUCCESS,
        Exit::Child(c) => ExitCode::from(c.clamp(0, 255) as u8),
    }
}

fn cmd_ns(cli: NsCli) -> anyhow::Result<ExitCode> {
    let cfg = cli.net.to_config()?;
    if cli.target_type != "netns" {
        anyhow::bail!(
            "target type \"{}\" is not supported (expected \"netns\")",
            cli.target_type
        );
    }
    init_logging(&cli.net)?;
    // Take ownership of the fds first, so that a bad number is reported before any work.
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
    let target = TapTarget {
        netns_type: match cli.netns_type {
            NetnsTypeArg::Pid => NetnsType::Pid,
            NetnsTypeArg::Path => NetnsType::Path,
            NetnsTypeArg::Tapfd => NetnsType::TapFd,
        },
        target: cli.target.clone(),
        userns_path: cli.userns_path.clone(),
        tap_name: cli.tap_name.clone(),
    };
    // Still single-threaded here: the helper can join user namespaces.
    let tap = ns::open_tap(&target, &if_config(&cfg, &cli.net, cli.configure))?;
    write_pid_file(&cli.net)?;
    let mut cfg = cfg;
    cfg.configured = cli.configure;
    let cp = control_plane(&cli.net, &cfg)?;
    tracing::info!(
        target = %cli.target, tap = %cli.tap_name, mtu = cfg.mtu,
        network = %format!("{}/{}", cfg.network, cfg.prefix_len), "TAP open"
    );
    let stats = Arc::new(Stats::default());
    let exit = engine::run(
        cp.poll,
        cfg,
        Box::new(TapPort::new(tap.fd)),
        Some(tap.mac),
        stats.clone(),
        LoopOptions {
            exit_fd,
            ready_fd,
            child: None,
            commands: Some(cp.commands),
            forwards: cp.forwards,
        },
    )?;
    drop(cp._api);
    log_summary(&stats);
    Ok(exit_code(exit))
}

fn cmd_run(cli: RunCli) -> anyhow::Result<ExitCode> {
    let cfg = cli.net.to_config()?;
    init_logging(&cli.net)?;
    let resolv = if cfg.enable_dns {
        let mut s = format!("# written by usernet run\nnameserver {}\n", cfg.dns);
        if let Ok(host) = std::fs::read_to_string("/etc/resolv.conf") {
            let conf = usernet_dns::parse_resolv_conf(&host);
            if !conf.search.is_empty() {
                s.push_str(&format!("search {}\n", conf.search.join(" ")));
            }
        }
        Some(s)
    } else {
        None
    };
    let mut child = ns::spawn_run_child(
        &cli.command,
        &cli.tap_name,
        &if_config(&cfg, &cli.net, true),
        resolv.as_deref(),
    )?;
    write_pid_file(&cli.net)?;
    let pidfd = child.pidfd()?;
    let pid = child.pid;
    let fd = child
        .tap
        .fd
        .try_clone()
        .map_err(|e| anyhow::anyhow!("cannot duplicate the TAP descriptor: {e}"))?;
    let mac = child.tap.mac;
    let mut cfg = cfg;
    cfg.configured = true;
    let cp = control_plane(&cli.net, &cfg)?;
    child.start()?;
    let stats = Arc::new(Stats::default());
    let exit = engine::run(
        cp.poll,
        cfg,
        Box::new(TapPort::new(fd)),
        Some(mac),
        stats.clone(),
        LoopOptions {
            exit_fd: None,
            ready_fd: None,
            child: Some((pid, pidfd)),
            commands: Some(cp.commands),
            forwards: cp.forwards,
        },
    )?;
    drop(cp._api);
    log_summary(&stats);
    Ok(exit_code(exit))
}

fn log_summary(stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    tracing::debug!(
        rx_frames = stats.rx_frames.load(Relaxed),
        tx_frames = stats.tx_frames.load(Relaxed),
        drops = ?stats.drop_counts(),
        "exiting"
    );
}
