//! Joining a network from outside: `usernet attach`, `usernet run --network`,
//! `usernet vm --network`, and `usernet network NAME --list`.
//!
//! Each talks to the network over its API socket: the TAP or socket travels beside an
//! `attach` request (`SCM_RIGHTS`). A network nobody runs yet is started on first use
//! (`usernet network NAME --exit-when-idle`, detached), and exits once its last port
//! is gone.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use usernet_portfwd::api::{self, AttachKind, Reply};
use usernet_portfwd::serde_json::{self, Value};

use super::run::{network_dir, runtime_base};
use crate::cli::{Mac, NetnsTypeArg};
use crate::control::{call, call_with_fd};
use crate::ns::{self, IfConfig, NetnsType, TapTarget};

/// How long `attach` waits for a network it started to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// `usernet attach NAME PID|PATH [TAPNAME]`.
#[derive(Parser, Debug)]
#[command(
    name = "usernet attach",
    about = "Open a TAP device in a network namespace and join it to network NAME (started on \
             first use). The port lives as long as the TAP device.",
    disable_version_flag = true,
    after_help = "Examples:\n  usernet attach lab $(pidof my-init) --configure            # the guest runs its own DHCP client\n  \
                  usernet attach lab /run/netns/box --netns-type path --configure --address 10.0.2.20/24"
)]
pub struct AttachCli {
    /// The network's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// PID of a process in the namespace, or the path of a namespace (--netns-type path)
    #[arg(value_name = "PID|PATH")]
    pub target: String,
    /// Name of the TAP device to create in the namespace
    #[arg(value_name = "TAPNAME", default_value = "tap0")]
    pub tap_name: String,
    /// What PID|PATH is
    #[arg(long = "netns-type", value_enum, default_value = "pid")]
    pub netns_type: NetnsTypeArg,
    /// User namespace to join before opening the TAP (default: the target's)
    #[arg(long = "userns-path", value_name = "PATH")]
    pub userns_path: Option<PathBuf>,
    /// Bring lo and the TAP up; with --address also set that address (and a default route via the gateway)
    #[arg(short = 'c', long)]
    pub configure: bool,
    /// Static address for --configure, ADDR/LEN (default: none; the guest runs a DHCP client)
    #[arg(long, value_name = "ADDR/LEN", value_parser = parse_addr_len)]
    pub address: Option<(Ipv4Addr, u8)>,
    /// Gateway for --address (default: network + 2; 0.0.0.0 for none)
    #[arg(long, value_name = "ADDR")]
    pub gateway: Option<Ipv4Addr>,
    /// MAC address of the TAP device
    #[arg(long = "macaddress", value_name = "MAC", value_parser = crate::cli::parse_mac)]
    pub macaddress: Option<Mac>,
    /// MTU of the TAP device
    #[arg(short = 'm', long, default_value_t = 1500)]
    pub mtu: u32,
    /// Directory of the networks' sockets (default: /run/usernet for root, else $XDG_RUNTIME_DIR/usernet)
    #[arg(long = "runtime-dir", value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

fn parse_addr_len(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || {
        format!("\"{s}\" is not an IPv4 address with a prefix length (expected e.g. 10.0.2.20/24)")
    };
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let l: u8 = l.parse().map_err(|_| bad())?;
    if l > 32 {
        return Err(bad());
    }
    Ok((a, l))
}

/// The API socket of a running network, started on first use when `start` is set.
pub fn reach(base: &Path, name: &str, start: bool) -> anyhow::Result<PathBuf> {
    let dir = network_dir(base, name)?;
    let api_path = dir.join("api.sock");
    match probe(&api_path) {
        Ok(()) => return Ok(api_path),
        Err(e) if denied(&e) => return Err(not_yours(name, &dir, &e)),
        Err(_) if !start => {
            anyhow::bail!(
                "network {name} is not running (no server on {})",
                api_path.display()
            )
        }
        Err(_) => {}
    }
    // Not running: start it, detached, and wait for its API socket.
    let exe = std::env::current_exe().map_err(|e| {
        anyhow::anyhow!("cannot find the usernet executable to start network {name}: {e}")
    })?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("network")
        .arg(name)
        .arg("--exit-when-idle")
        .arg("--runtime-dir")
        .arg(base)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe; the child only calls it before exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start network {name}: {e}"))?;
    let t0 = Instant::now();
    loop {
        match probe(&api_path) {
            Ok(()) => {
                tracing::info!(network = name, "started network on first use");
                eprintln!(
                    "usernet: started network {name} (nat mode; it exits once its last port is gone)"
                );
                return Ok(api_path);
            }
            Err(e) if denied(&e) => return Err(not_yours(name, &dir, &e)),
            Err(_) => {}
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Another attach may have started it at the same moment.
            if probe(&api_path).is_ok() {
                return Ok(api_path);
            }
            anyhow::bail!(
                "network {name} could not be started ({st}); run `usernet network {name}` to see why"
            );
        }
        if t0.elapsed() > START_TIMEOUT {
            anyhow::bail!("network {name} did not come up within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn probe(path: &Path) -> std::io::Result<()> {
    std::os::unix::net::UnixStream::connect(path).map(drop)
}

fn denied(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

fn not_yours(name: &str, dir: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot join network {name}: permission denied on {} ({e}); the network belongs to another user, and only the user who runs a network may attach to it",
        dir.display()
    )
}

/// Send `request` (with `fd`), and read a `{"return":...}` reply.
fn ask(
    api_path: &Path,
    request: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> anyhow::Result<Value> {
    let reply = call_with_fd(api_path, request, fds)
        .map_err(|e| anyhow::anyhow!("cannot talk to {}: {e}", api_path.display()))?;
    match api::parse_reply(&reply) {
        Ok(Reply::Stats(v)) => Ok(v),
        Ok(Reply::Error(desc)) => Err(anyhow::anyhow!("{desc}")),
        Ok(Reply::Removed) => Ok(Value::Object(Default::default())),
        Ok(other) => Err(anyhow::anyhow!("unexpected reply {other:?}")),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// A pidfd for `pid` (the port leaves the network when that process exits).
pub fn pidfd(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: pidfd_open just returned this new descriptor (close-on-exec); we own it.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) })
}

/// Hand `fd` to the network as a new port (leaving when `watch`, a pidfd, says its
/// process exited); returns its id.
pub fn attach_fd(
    api_path: &Path,
    fd: &OwnedFd,
    watch: Option<&OwnedFd>,
    kind: AttachKind,
    label: &str,
    identity: (Option<[u8; 6]>, Option<Ipv4Addr>),
) -> anyhow::Result<u64> {
    let mut fds = vec![fd.as_fd()];
    fds.extend(watch.map(|w| w.as_fd()));
    let v = ask(
        api_path,
        &api::request_attach(kind, label, identity.0, identity.1),
        &fds,
    )
    .map_err(|e| anyhow::anyhow!("the network refused the port: {e}"))?;
    v.get("port")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("the network's reply names no port: {v}"))
}

/// A lease for `mac` from the network's DHCP server.
pub struct Lease {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The gateway, when the network routes.
    pub gateway: Option<Ipv4Addr>,
    /// The DNS address, when the network has one.
    pub dns: Option<Ipv4Addr>,
    /// The network's MTU.
    pub mtu: u32,
}

/// Lease an address for `mac` without a DHCP exchange.
pub fn request_lease(
    api_path: &Path,
    mac: [u8; 6],
    hostname: Option<&str>,
) -> anyhow::Result<Lease> {
    let v = ask(api_path, &api::request_lease(mac, hostname), &[])?;
    let ip = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
    };
    Ok(Lease {
        addr: ip("addr").ok_or_else(|| anyhow::anyhow!("the lease names no address: {v}"))?,
        prefix_len: v.get("prefix_len").and_then(Value::as_u64).unwrap_or(24) as u8,
        gateway: ip("gateway"),
        dns: ip("dns"),
        mtu: v.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32,
    })
}

/// A random locally administered unicast MAC (52:55:xx: as QEMU's 52:54 range, one up).
pub fn random_mac() -> [u8; 6] {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        .to_le_bytes();
    let pid = std::process::id().to_le_bytes();
    [
        0x52,
        0x55,
        b[0] ^ t[0],
        b[1] ^ pid[0],
        b[2] ^ t[1] ^ pid[1],
        b[3] ^ t[2],
    ]
}

/// Run `usernet attach`.
pub fn cmd_attach(cli: AttachCli) -> anyhow::Result<ExitCode> {
    let base = runtime_base(cli.runtime_dir.as_deref());
    // Reach (or start) the network first: a user who may not join learns it before
    // anything is created in the namespace.
    let api_path = reach(&base, &cli.name, true)?;
    let (addr, prefix_len) = cli.address.unwrap_or((Ipv4Addr::UNSPECIFIED, 24));
    // An internal network has no gateway: no default route unless one is asked for.
    let internal = ask(&api_path, &api::request_plain("list_ports"), &[])
        .ok()
        .and_then(|v| {
            v.get("mode")
                .and_then(Value::as_str)
                .map(|m| m == "internal")
        })
        .unwrap_or(false);
    let gateway = cli.gateway.unwrap_or_else(|| {
        if addr.is_unspecified() || internal {
            Ipv4Addr::UNSPECIFIED
        } else {
            let mask = if prefix_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix_len))
            };
            Ipv4Addr::from((u32::from(addr) & mask) + 2)
        }
    });
    let ifc = IfConfig {
        configure: cli.configure,
        addr,
        prefix_len,
        gateway,
        mtu: cli.mtu,
        mac: cli.macaddress.map(|m| m.0),
        vnet_hdr: false,
    };
    if cli.address.is_some() && !cli.configure {
        anyhow::bail!("--address is applied by --configure; add --configure");
    }
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
    let tap = ns::open_tap(&target, &ifc)?;
    let label = format!("{}:{}", cli.target, cli.tap_name);
    // The TAP the network holds keeps the namespace alive: the port leaves when the
    // target process exits instead (a namespace named by path lives until removed
    // through the API or the network stops).
    let watch = match cli.netns_type {
        NetnsTypeArg::Pid => cli.target.parse().ok().and_then(pidfd),
        _ => None,
    };
    let identity = (Some(tap.mac), cli.address.map(|(a, _)| a));
    let port = attach_fd(
        &api_path,
        &tap.fd,
        watch.as_ref(),
        AttachKind::Tap,
        &label,
        identity,
    )?;
    println!("port {port}");
    eprintln!(
        "usernet: {} of {} joined network {} as port {port} (MAC {})",
        cli.tap_name,
        cli.target,
        cli.name,
        usernet_dhcp::fmt_mac(tap.mac)
    );
    Ok(ExitCode::SUCCESS)
}

/// `usernet network NAME --detach PORT`.
pub fn detach(dir: &Path, name: &str, port: u32) -> anyhow::Result<ExitCode> {
    let api_path = dir.join("api.sock");
    if let Err(e) = probe(&api_path) {
        if denied(&e) {
            return Err(not_yours(name, dir, &e));
        }
        anyhow::bail!(
            "network {name} is not running (no server on {}: {e})",
            api_path.display()
        );
    }
    let req = serde_json::json!({"execute": "detach", "arguments": {"port": port}}).to_string();
    ask(&api_path, req.as_bytes(), &[])?;
    eprintln!("usernet: port {port} left network {name}");
    Ok(ExitCode::SUCCESS)
}

/// `usernet network NAME --list`.
pub fn list(dir: &Path, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let api_path = dir.join("api.sock");
    if let Err(e) = probe(&api_path) {
        if denied(&e) {
            return Err(not_yours(name, dir, &e));
        }
        anyhow::bail!(
            "network {name} is not running (no server on {}: {e})",
            api_path.display()
        );
    }
    let ports = ask(&api_path, &api::request_plain("list_ports"), &[])?;
    let leases = ask(&api_path, &api::request_plain("list_leases"), &[])?;
    let fwd_reply = call(&api_path, &api::request_list())
        .map_err(|e| anyhow::anyhow!("cannot talk to {}: {e}", api_path.display()))?;
    let fwd_json: Value = serde_json::from_slice(&fwd_reply).unwrap_or(Value::Null);
    let forwards = fwd_json
        .get("entries")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let policy = ask(&api_path, &api::request_plain("list_policy"), &[]).unwrap_or(Value::Null);
    let ports = ports
        .get("ports")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let leases = leases
        .get("leases")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    if json {
        println!(
            "{}",
            serde_json::json!({ "ports": ports, "leases": leases, "forwards": forwards, "policy": policy })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    };
    let empty = Vec::new();
    println!("ports of network {name}:");
    println!(
        "  {:>4} {:<8} {:<24} {:<17} {:>10} {:>12} {:>10} {:>12} {:>7}",
        "ID", "KIND", "NAME", "MAC", "RX_FRAMES", "RX_BYTES", "TX_FRAMES", "TX_BYTES", "DROPS"
    );
    for p in ports.as_array().unwrap_or(&empty) {
        println!(
            "  {:>4} {:<8} {:<24} {:<17} {:>10} {:>12} {:>10} {:>12} {:>7}",
            s(p, "id"),
            s(p, "kind"),
            s(p, "name"),
            s(p, "mac"),
            s(p, "rx_frames"),
            s(p, "rx_bytes"),
            s(p, "tx_frames"),
            s(p, "tx_bytes"),
            s(p, "drops")
        );
    }
    println!("leases:");
    println!(
        "  {:<15} {:<17} {:<10} {:<20} {:>8}",
        "ADDRESS", "MAC", "STATE", "HOSTNAME", "EXPIRES"
    );
    for l in leases.as_array().unwrap_or(&empty) {
        println!(
            "  {:<15} {:<17} {:<10} {:<20} {:>7}s",
            s(l, "addr"),
            s(l, "mac"),
            s(l, "state"),
            s(l, "hostname"),
            s(l, "expires_in_secs")
        );
    }
    println!("forwards:");
    for f in forwards.as_array().unwrap_or(&empty) {
        let guest = match f.get("guest_mac").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => s(f, "guest_addr"),
        };
        println!(
            "  {:>4} {}/{}:{} -> {}:{}",
            s(f, "id"),
            s(f, "proto"),
            s(f, "host_addr"),
            s(f, "host_port"),
            guest,
            s(f, "guest_port")
        );
    }
    if let Some(net) = policy.get("network") {
        let on = |v: &Value, k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let names = |v: &Value| {
            let mut f: Vec<&str> = Vec::new();
            for (k, n) in [
                ("isolate", "isolate"),
                ("block_host", "block-host"),
                ("restrict", "restrict"),
                ("allow_spoofing", "allow-spoofing"),
            ] {
                if on(v, k) {
                    f.push(n);
                }
            }
            if f.is_empty() {
                "-".to_string()
            } else {
                f.join(",")
            }
        };
        println!("policy: network {}", names(net));
        for p in policy
            .get("ports")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            let spoofed: u64 = p
                .get("spoofed")
                .and_then(Value::as_object)
                .map(|m| m.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            println!(
                "  port {:>4}: {}, spoofed frames {}, isolation drops {}",
                s(p, "id"),
                names(p.get("flags").unwrap_or(&Value::Null)),
                spoofed,
                s(p, "isolated")
            );
        }
        if let Some(f) = policy.get("filters").filter(|f| !f.is_null()) {
            println!(
                "filters (default {}, {} flows decided by it):",
                s(f, "default"),
                s(f, "default_hits")
            );
            for r in f.get("network").and_then(Value::as_array).unwrap_or(&empty) {
                println!("  {:<40} hits {}", s(r, "rule"), s(r, "hits"));
            }
            for g in f.get("guests").and_then(Value::as_array).unwrap_or(&empty) {
                for r in g.get("rules").and_then(Value::as_array).unwrap_or(&empty) {
                    println!(
                        "  port {} {:<33} hits {}",
                        s(g, "port"),
                        s(r, "rule"),
                        s(r, "hits")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keep the lease and attach helpers reachable from other modules' tests.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_lengths() {
        assert_eq!(
            parse_addr_len("10.0.2.20/24"),
            Ok((Ipv4Addr::new(10, 0, 2, 20), 24))
        );
        assert!(
            parse_addr_len("10.0.2.20")
                .unwrap_err()
                .contains("10.0.2.20/24")
        );
        assert!(parse_addr_len("10.0.2.20/33").is_err());
    }

    #[test]
    fn random_macs_are_local_unicast() {
        let m = random_mac();
        assert_eq!(m[0] & 1, 0);
        assert_eq!(&m[..2], &[0x52, 0x55]);
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        AttachCli::command().debug_assert();
    }
}
