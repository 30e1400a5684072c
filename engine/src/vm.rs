//! `usernet vm`: the whole usernet network (DHCP, DNS, NAT, port forwards) for a VM,
//! served on a socket its VMM connects to: QEMU's `-netdev stream` (unix or TCP),
//! `-netdev dgram` (unix), or a stream socket a parent passes (`--fd`).
//!
//! The guest's MAC is learned from its frames; the gateway's is fixed,
//! [`GATEWAY_MAC`](crate::config::GATEWAY_MAC) = 52:55:0a:00:02:02 (as libslirp). A VM that
//! disconnects and connects again keeps its lease (same MAC, same address); while no VM is
//! connected, frames toward it are dropped (counted as `port_write_failed`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgGroup, Parser};

use crate::app::{control_plane, exit_code, init_logging, log_summary, wrap_pcap, write_pid_file};
use crate::cli::NetArgs;
use crate::engine::{self, EngineError, LoopOptions};
use crate::port::Port;
use crate::port_dgram::{DgramAddr, DgramPort};
use crate::port_stream::{StreamAddr, StreamPort};
use crate::stats::Stats;

/// `usernet vm [OPTIONS] --stream ADDR | --dgram ADDR | --fd N`.
#[derive(Parser, Debug)]
#[command(
    name = "usernet vm",
    about = "Serve a VM's network on a socket: QEMU -netdev stream (unix or TCP, 4-byte \
             big-endian length before each frame), -netdev dgram (unix, one frame per \
             datagram), or an already connected stream socket. The guest gets DHCP \
             (10.0.2.15 first), gateway 10.0.2.2 (the host), DNS 10.0.2.3.",
    disable_version_flag = true,
    group(ArgGroup::new("socket").required(true).args(["stream", "dgram", "fd"])),
    after_help = "Example:\n  usernet vm --stream unix:/run/user/1000/vm1.sock -p 2222:22 &\n  \
                  qemu-system-x86_64 ... -device virtio-net-pci,netdev=n0 \\\n    \
                  -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/run/user/1000/vm1.sock"
)]
pub struct VmCli {
    /// Listen for QEMU -netdev stream: unix:PATH or tcp:ADDR:PORT (one VM at a time)
    #[arg(long, value_name = "ADDR", value_parser = StreamAddr::parse)]
    pub stream: Option<StreamAddr>,
    /// QEMU -netdev dgram: bind unix:LOCAL, send to REMOTE (default: the last sender)
    #[arg(long, value_name = "unix:LOCAL[,REMOTE]", value_parser = DgramAddr::parse)]
    pub dgram: Option<DgramAddr>,
    /// Serve this already connected stream socket (same framing as --stream); exit (0) when it closes
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,
    /// Exit when this file descriptor becomes readable or is closed
    #[arg(short = 'e', long = "exit-fd", value_name = "FD")]
    pub exit_fd: Option<i32>,
    /// Write "1" to this file descriptor and close it once ready
    #[arg(short = 'r', long = "ready-fd", value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// Join network NAME (usernet network; started on first use): each VM connection on
    /// --stream, or the --fd socket, becomes a port of that network's switch
    #[arg(long = "network", value_name = "NAME")]
    pub network: Option<String>,
    /// With --network: directory of the networks' sockets
    #[arg(long = "runtime-dir", value_name = "DIR", requires = "network")]
    pub runtime_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// `usernet vm --network NAME`: hand the VM's stream connections to the network.
fn vm_on_network(cli: &VmCli, name: &str) -> anyhow::Result<ExitCode> {
    use crate::network::client;
    use usernet_portfwd::api::AttachKind;
    let ignored = cli.net.network_settings();
    if !ignored.is_empty() {
        anyhow::bail!(
            "usernet vm --network {name}: {} set the network, not this VM; give them to \
             `usernet network {name}` (a running network's forwards and rules change through \
             its API socket)",
            ignored.join(", ")
        );
    }
    let base = crate::network::run::runtime_base(cli.runtime_dir.as_deref());
    let api_path = client::reach(&base, name, true)?;
    if let Some(n) = cli.fd {
        let fd = engine::owned_fd(n).map_err(|e| anyhow::anyhow!("--fd: {e}"))?;
        let port = client::attach_fd(
            &api_path,
            &fd,
            None,
            AttachKind::Stream,
            &format!("vm-fd-{n}"),
            (None, None),
        )?;
        eprintln!("usernet: the VM on fd {n} joined network {name} as port {port}");
        return Ok(ExitCode::SUCCESS);
    }
    let Some(StreamAddr::Unix(path)) = &cli.stream else {
        anyhow::bail!(
            "--network works with --stream unix:PATH or --fd (QEMU may also connect to the network's own stream socket directly: usernet network {name} prints it)"
        );
    };
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    if let Some(h) = qemu_hint(cli, None) {
        eprintln!("usernet: start QEMU with:\n    {h}");
    }
    if let Some(n) = cli.ready_fd {
        let fd = engine::owned_fd(n).map_err(|e| anyhow::anyhow!("--ready-fd: {e}"))?;
        use std::io::Write;
        let _ = std::fs::File::from(fd).write_all(b"1");
    }
    for (i, conn) in l.incoming().enumerate() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a VM connection");
                continue;
            }
        };
        let fd = std::os::fd::OwnedFd::from(conn);
        match client::attach_fd(
            &api_path,
            &fd,
            None,
            AttachKind::Stream,
            &format!("vm-{}", i + 1),
            (None, None),
        ) {
            Ok(port) => eprintln!("usernet: a VM joined network {name} as port {port}"),
            Err(e) => eprintln!("usernet: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The QEMU command-line arguments that attach a virtio-net NIC to this port.
pub fn qemu_hint(cli: &VmCli, bound_tcp: Option<std::net::SocketAddr>) -> Option<String> {
    let netdev = if let Some(s) = &cli.stream {
        match (s, bound_tcp) {
            (StreamAddr::Tcp(_), Some(a)) => StreamAddr::Tcp(a).qemu_netdev("n0"),
            _ => s.qemu_netdev("n0"),
        }
    } else if let Some(d) = &cli.dgram {
        d.qemu_netdev("n0")
    } else {
        return None;
    };
    Some(format!("-device virtio-net-pci,netdev=n0 -netdev {netdev}"))
}

/// Run `usernet vm`.
pub fn cmd_vm(cli: VmCli) -> anyhow::Result<ExitCode> {
    if let Some(name) = cli.network.clone() {
        init_logging(&cli.net, false)?;
        return vm_on_network(&cli, &name);
    }
    cli.net.single_guest()?;
    let cfg = cli.net.to_config()?;
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
    let stats = Arc::new(Stats::default());
    let mut bound_tcp = None;
    let port: Box<dyn Port> = if let Some(addr) = &cli.stream {
        let p = StreamPort::listen(addr, stats.clone())
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", describe_stream(addr)))?;
        bound_tcp = p.local_tcp_addr();
        Box::new(p)
    } else if let Some(addr) = &cli.dgram {
        Box::new(DgramPort::bind(addr).map_err(|e| {
            anyhow::anyhow!(
                "cannot bind the datagram socket {}: {e}",
                addr.local.display()
            )
        })?)
    } else if let Some(n) = cli.fd {
        let fd = engine::owned_fd(n).map_err(|e| anyhow::anyhow!("--fd: {e}"))?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| anyhow::anyhow!("--fd {n}: {e}"))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            anyhow::bail!("--fd {n} is not a socket (expected a connected stream socket)");
        }
        Box::new(
            StreamPort::connected(fd, stats.clone())
                .map_err(|e| anyhow::anyhow!("--fd {n}: {e}"))?,
        )
    } else {
        anyhow::bail!("one of --stream, --dgram or --fd is required");
    };
    let port = wrap_pcap(&cli.net, port)?;
    write_pid_file(&cli.net)?;
    let cp = control_plane(&cli.net, &cfg)?;
    if let Some(h) = qemu_hint(&cli, bound_tcp) {
        tracing::info!("QEMU arguments: {h}");
        eprintln!("usernet: start QEMU with:\n    {h}");
        if cli.stream.is_some() {
            eprintln!(
                "usernet: (QEMU 8.0 or later: add reconnect=1 to -netdev to redial if usernet restarts)"
            );
        }
    }
    tracing::info!(
        mtu = cfg.mtu,
        network = %format!("{}/{}", cfg.network, cfg.prefix_len),
        gateway = %cfg.gateway,
        "VM port open"
    );
    let exit = engine::run(
        cp.poll,
        cfg,
        port,
        None,
        stats.clone(),
        LoopOptions {
            exit_fd,
            ready_fd,
            child: None,
            commands: Some(cp.commands),
            forwards: cp.forwards,
            seccomp: cli.net.enable_seccomp,
            sockets: None,
        },
    );
    drop(cp.api);
    log_summary(&stats);
    match exit {
        Ok(exit) => Ok(exit_code(exit)),
        // --fd: the VM closing its end of the socket is the normal end of its life. A VM
        // that dies with frames still unread in its socket makes the kernel reset the
        // connection instead of closing it (ECONNRESET on our read, EPIPE on our write).
        Err(EngineError::PortGone(e))
            if cli.fd.is_some()
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                ) =>
        {
            tracing::info!("the VM closed its connection; exiting");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

fn describe_stream(a: &StreamAddr) -> String {
    match a {
        StreamAddr::Unix(p) => format!("unix socket {}", p.display()),
        StreamAddr::Tcp(a) => format!("TCP {a}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        VmCli::command().debug_assert();
    }

    #[test]
    fn exactly_one_socket() {
        assert!(VmCli::try_parse_from(["usernet vm"]).is_err());
        assert!(
            VmCli::try_parse_from(["usernet vm", "--stream", "unix:/a", "--dgram", "unix:/b"])
                .is_err()
        );
        let c = VmCli::try_parse_from([
            "usernet vm",
            "--stream",
            "unix:/tmp/v.sock",
            "-p",
            "2222:22",
            "--mtu",
            "9000",
            "-r",
            "5",
        ])
        .unwrap();
        assert_eq!(c.net.mtu, 9000);
        assert_eq!(c.ready_fd, Some(5));
        assert_eq!(
            qemu_hint(&c, None).unwrap(),
            "-device virtio-net-pci,netdev=n0 -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/v.sock"
        );
        let t = VmCli::try_parse_from(["usernet vm", "--stream", "tcp:127.0.0.1:0"]).unwrap();
        let bound = "127.0.0.1:4321".parse().ok();
        assert!(qemu_hint(&t, bound).unwrap().ends_with("addr.port=4321"));
        let f = VmCli::try_parse_from(["usernet vm", "--fd", "3"]).unwrap();
        assert!(qemu_hint(&f, None).is_none());
        let e = VmCli::try_parse_from(["usernet vm", "--stream", "/x"]).unwrap_err();
        assert!(e.to_string().contains("unix:PATH"));
    }
}
