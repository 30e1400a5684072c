//! `usernet`: the command-line entry point. Parses, sets up the namespace and TAP while
//! still single-threaded, then runs the engine.

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use usernet_engine::app::{
    control_plane, exit_code, if_config, init_logging, log_summary, wrap_pcap, write_pid_file,
};
use usernet_engine::cli::{FwdCli, NetnsTypeArg, NsCli, RunCli, StatsCli};
use usernet_engine::engine::{self, LoopOptions};
use usernet_engine::ns::{self, NetnsType, TapTarget};
use usernet_engine::port::TapPort;
use usernet_engine::stats::Stats;

fn main() -> ExitCode {
    tune_process();
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = match args.get(1).and_then(|a| a.to_str()) {
        Some(sub @ ("run" | "fwd" | "stats" | "vm" | "network" | "attach")) => {
            let sub = sub.to_string();
            let mut rest = vec![OsString::from(format!("usernet {sub}"))];
            rest.extend(args.into_iter().skip(2));
            match sub.as_str() {
                "run" => cmd_run(RunCli::parse_from(rest)),
                "fwd" => usernet_engine::client::cmd_fwd(FwdCli::parse_from(rest)),
                "vm" => usernet_engine::vm::cmd_vm(usernet_engine::vm::VmCli::parse_from(rest)),
                "network" => usernet_engine::network::run::cmd_network(
                    usernet_engine::network::run::NetworkCli::parse_from(rest),
                ),
                "attach" => usernet_engine::network::client::cmd_attach(
                    usernet_engine::network::client::AttachCli::parse_from(rest),
                ),
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

fn cmd_ns(cli: NsCli) -> anyhow::Result<ExitCode> {
    cli.net.single_guest()?;
    let cfg = cli.net.to_config()?;
    if cli.target_type != "netns" {
        anyhow::bail!(
            "target type \"{}\" is not supported (expected \"netns\")",
            cli.target_type
        );
    }
    init_logging(&cli.net, false)?;
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
    // Still single-threaded here: the helpers can join user namespaces.
    let sockets = socket_factory(&cli.net, || ns::spawn_socket_factory(&target));
    let tap = ns::open_tap(&target, &if_config(&cfg, &cli.net, cli.configure))?;
    write_pid_file(&cli.net)?;
    let mut cfg = cfg;
    cfg.configured = cli.configure;
    set_offloads(&mut cfg, &cli.net, tap.vnet_hdr);
    let cp = control_plane(&cli.net, &cfg)?;
    tracing::info!(
        target = %cli.target, tap = %cli.tap_name, mtu = cfg.mtu,
        network = %format!("{}/{}", cfg.network, cfg.prefix_len), "TAP open"
    );
    let port = wrap_pcap(&cli.net, tap_port(tap.fd, tap.vnet_hdr, &cfg))?;
    let stats = Arc::new(Stats::default());
    let exit = engine::run(
        cp.poll,
        cfg,
        port,
        Some(tap.mac),
        stats.clone(),
        LoopOptions {
            exit_fd,
            ready_fd,
            child: None,
            commands: Some(cp.commands),
            forwards: cp.forwards,
            seccomp: cli.net.enable_seccomp,
            sockets,
        },
    )?;
    drop(cp.api);
    log_summary(&stats);
    Ok(exit_code(exit))
}

/// The socket factory for spliced forwards (`--splice`); a factory that cannot start only
/// costs the splicing (logged), never the run.
fn socket_factory(
    net: &usernet_engine::cli::NetArgs,
    spawn: impl FnOnce() -> Result<Option<ns::SocketFactory>, ns::NsError>,
) -> Option<ns::SocketFactory> {
    if !net.splice {
        return None;
    }
    match spawn() {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("forwards from the host's loopback will not be spliced: {e}");
            None
        }
    }
}

fn cmd_run(cli: RunCli) -> anyhow::Result<ExitCode> {
    if cli.network.is_some() {
        return cmd_run_network(cli);
    }
    cli.net.single_guest()?;
    let cfg = cli.net.to_config()?;
    init_logging(&cli.net, true)?;
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
    let sockets = socket_factory(&cli.net, || ns::spawn_socket_factory_for_pid(pid).map(Some));
    let fd = child
        .tap
        .fd
        .try_clone()
        .map_err(|e| anyhow::anyhow!("cannot duplicate the TAP descriptor: {e}"))?;
    let mac = child.tap.mac;
    let mut cfg = cfg;
    cfg.configured = true;
    set_offloads(&mut cfg, &cli.net, child.tap.vnet_hdr);
    let cp = control_plane(&cli.net, &cfg)?;
    let port = wrap_pcap(&cli.net, tap_port(fd, child.tap.vnet_hdr, &cfg))?;
    child.start()?;
    let stats = Arc::new(Stats::default());
    let exit = engine::run(
        cp.poll,
        cfg,
        port,
        Some(mac),
        stats.clone(),
        LoopOptions {
            exit_fd: None,
            ready_fd: None,
            child: Some((pid, pidfd)),
            commands: Some(cp.commands),
            forwards: cp.forwards,
            seccomp: cli.net.enable_seccomp,
            sockets,
        },
    )?;
    drop(cp.api);
    log_summary(&stats);
    Ok(exit_code(exit))
}

/// `usernet run --network NAME`: lease an address from the network, configure the
/// namespace's TAP with it, hand the TAP to the network, and wait for the command.
fn cmd_run_network(cli: RunCli) -> anyhow::Result<ExitCode> {
    use usernet_engine::network::client;
    let name = cli.network.clone().unwrap_or_default();
    let ignored = cli.net.network_settings();
    if !ignored.is_empty() {
        anyhow::bail!(
            "usernet run --network {name}: {} set the network, not this guest; give them to \
             `usernet network {name}` (a running network's forwards and rules change through \
             its API socket, `usernet network {name} --list` shows where)",
            ignored.join(", ")
        );
    }
    init_logging(&cli.net, true)?;
    let base = usernet_engine::network::run::runtime_base(cli.runtime_dir.as_deref());
    let api_path = client::reach(&base, &name, true)?;
    let mac = cli
        .net
        .macaddress
        .map(|m| m.0)
        .unwrap_or_else(client::random_mac);
    let host = format!("run-{}", std::process::id());
    let lease = client::request_lease(&api_path, mac, Some(&host))
        .map_err(|e| anyhow::anyhow!("network {name} has no address for this guest: {e}"))?;
    let resolv = lease.dns.map(|d| {
        let mut s = format!("# written by usernet run --network {name}\nnameserver {d}\n");
        if let Ok(host) = std::fs::read_to_string("/etc/resolv.conf") {
            let conf = usernet_dns::parse_resolv_conf(&host);
            if !conf.search.is_empty() {
                s.push_str(&format!("search {}\n", conf.search.join(" ")));
            }
        }
        s
    });
    let ifc = ns::IfConfig {
        configure: true,
        addr: lease.addr,
        prefix_len: lease.prefix_len,
        gateway: lease.gateway.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        mtu: lease.mtu,
        mac: Some(mac),
        vnet_hdr: false,
    };
    let mut child = ns::spawn_run_child(&cli.command, &cli.tap_name, &ifc, resolv.as_deref())?;
    write_pid_file(&cli.net)?;
    let watch = child.pidfd().ok();
    client::attach_fd(
        &api_path,
        &child.tap.fd,
        watch.as_ref(),
        usernet_portfwd::api::AttachKind::Tap,
        &format!("run-{}:{}", child.pid, cli.tap_name),
        (Some(mac), Some(lease.addr)),
    )?;
    // The network holds the TAP now; the child's namespace keeps it alive.
    let pid = child.pid;
    // The terminal's ^C and ^\ are for the command (it shares our process group).
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let _ =
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
    child.start()?;
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r,
        }
    };
    Ok(match status {
        Ok(s) => ExitCode::from(ns::wait_status_code(s).clamp(0, 255) as u8),
        Err(_) => ExitCode::FAILURE,
    })
}

/// Offloads toward a TAP opened with virtio-net headers: TSO for a guest MTU up to
/// `TSO_MAX_GUEST_MTU` (above it, segments are large already), and TCP checksum offload
/// unless a pcap recording wants the frames complete as they leave the engine.
fn set_offloads(
    cfg: &mut usernet_engine::config::Config,
    net: &usernet_engine::cli::NetArgs,
    vnet_hdr: bool,
) {
    cfg.tso = vnet_hdr && cfg.mtu <= usernet_engine::config::TSO_MAX_GUEST_MTU;
    cfg.csum_offload = vnet_hdr && net.pcap.is_none();
}

/// The TAP port, with virtio-net headers (TSO and checksum offload toward the guest, as
/// [`set_offloads`] chose) when the TAP has them.
fn tap_port(
    fd: std::os::fd::OwnedFd,
    vnet_hdr: bool,
    cfg: &usernet_engine::config::Config,
) -> Box<dyn usernet_engine::port::Port> {
    let port = if vnet_hdr {
        TapPort::with_vnet_hdr(fd, cfg.mtu as usize, cfg.csum_offload)
    } else {
        TapPort::new(fd)
    };
    Box::new(port.level_triggered())
}

/// Process-wide settings every mode wants, before anything allocates much:
/// - a fixed mmap threshold, so that the TCP rings (far above it) always come from
///   `mmap`: their pages are faulted in only as data is buffered, and go back to the
///   system when a flow ends (glibc's dynamic threshold would move them to the heap,
///   where calloc touches every page and freed memory stays resident);
/// - the soft open-file limit raised to the hard limit: one host fd per flow.
fn tune_process() {
    // SAFETY: mallopt only changes glibc's allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
