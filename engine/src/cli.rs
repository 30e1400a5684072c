//! The command line: slirp4netns's options with the same names and meaning, and
//! `usernet run`. Every bad value gets a sentence naming it and what is expected.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, ValueEnum};

use crate::config::{Config, MAX_MTU, MIN_MTU};
use crate::router::dns::Upstreams;

/// Options of the virtual network, shared by every mode.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// MTU of the guest interface (68-65521)
    #[arg(short = 'm', long, value_name = "MTU", default_value_t = 1500, value_parser = parse_mtu)]
    pub mtu: u32,
    /// Virtual network in CIDR notation; gateway is .2, DNS .3, DHCP from .15, configured guest .100
    #[arg(long, value_name = "CIDR", default_value = "10.0.2.0/24", value_parser = parse_cidr)]
    pub cidr: Cidr,
    /// Refuse guest connections to the host's loopback (through the gateway address)
    #[arg(long = "disable-host-loopback", visible_alias = "no-host-loopback")]
    pub disable_host_loopback: bool,
    /// Turn off the DNS address (network + 3)
    #[arg(long = "disable-dns")]
    pub disable_dns: bool,
    /// Upstream DNS server instead of /etc/resolv.conf's (repeatable; IP or IP:PORT)
    #[arg(long = "dns-upstream", value_name = "ADDR", value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
    /// Name the DNS relay answers with the gateway's address (repeatable; default host.usernet.internal)
    #[arg(long = "host-name", value_name = "NAME")]
    pub host_name: Vec<String>,
    /// Bind outbound IPv4 connections to this address or interface
    #[arg(long = "outbound-addr", value_name = "IPv4|IFACE")]
    pub outbound_addr: Option<String>,
    /// Bind outbound IPv6 connections to this address or interface
    #[arg(long = "outbound-addr6", value_name = "IPv6|IFACE")]
    pub outbound_addr6: Option<String>,
    /// MAC address of the guest interface (namespace modes, with --configure)
    #[arg(long = "macaddress", value_name = "MAC", value_parser = parse_mac)]
    pub macaddress: Option<Mac>,
    /// Write the PID to this file
    #[arg(long = "pid-file", value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Log to this file instead of standard error
    #[arg(long = "log-file", value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// DHCP address pool, FIRST-LAST (default: network+15 upward)
    #[arg(long = "dhcp-range", value_name = "FIRST-LAST", value_parser = parse_dhcp_range)]
    pub dhcp_range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// DHCP lease time: seconds, or with s/m/h/d (default 1d)
    #[arg(long = "dhcp-lease-time", value_name = "TIME", value_parser = parse_lease)]
    pub dhcp_lease_time: Option<std::time::Duration>,
    /// Static DHCP lease MAC,ADDR (repeatable)
    #[arg(long = "dhcp-host", value_name = "MAC,ADDR", value_parser = parse_dhcp_host)]
    pub dhcp_host: Vec<([u8; 6], Ipv4Addr)>,
    /// DNS search domain handed out by DHCP (repeatable)
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Domain name handed out by DHCP
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Turn off the DHCP server
    #[arg(long = "disable-dhcp")]
    pub disable_dhcp: bool,
    /// Write every frame to and from the guest to this file, in pcap format
    #[arg(long = "pcap", value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Do not use offloads toward a TAP guest (virtio-net headers): TCP checksum offload, and segmentation offload for a guest MTU up to 16384
    #[arg(long = "disable-tso")]
    pub disable_tso: bool,
    /// Splice TCP forwards from the host's loopback straight into the guest's namespace (namespace modes): faster bulk transfers, and the guest sees those clients as its own address instead of the gateway
    #[arg(long = "splice")]
    pub splice: bool,
    /// Log every flow and every dropped frame (debug level)
    #[arg(long)]
    pub debug: bool,

    // slirp4netns options that are not implemented yet: rejected with a clear error,
    // and hidden from --help (podman and rootlesskit probe --help for features).
    /// Enable IPv6: router advertisements, DHCPv6, NAT and forwards (prefix fd00::/64)
    #[arg(short = '6', long = "enable-ipv6")]
    pub enable_ipv6: bool,
    /// IPv6 prefix (a /64; default fd00::/64): gateway ::2, DNS ::3
    #[arg(long = "cidr6", value_name = "PREFIX/64", default_value = "fd00::/64", value_parser = parse_cidr6)]
    pub cidr6: (std::net::Ipv6Addr, u8),
    /// Turn off the DHCPv6 server (SLAAC and RDNSS in router advertisements remain)
    #[arg(long = "disable-dhcpv6")]
    pub disable_dhcpv6: bool,
    /// Serve the slirp4netns-compatible JSON API (port forwards, stats) on this UNIX socket
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Forward a host port to the guest: [HOSTADDR:]HOSTPORT[-END]:[GUESTADDR:]GUESTPORT[-END][/tcp|/udp] (repeatable)
    #[arg(short = 'p', long = "publish", value_name = "RULE", value_parser = parse_publish)]
    pub publish: Vec<Vec<usernet_portfwd::RuleSpec>>,
    /// Forward a host port, VirtualBox style: [NAME],tcp|udp,[HOSTIP],HOSTPORT,[GUESTIP],GUESTPORT (repeatable)
    #[arg(long = "natpf", value_name = "RULE", value_parser = parse_natpf)]
    pub natpf: Vec<usernet_portfwd::RuleSpec>,
    /// IP filter rule for guests' new flows (to the outside, the host and, on networks, other guests), first match wins: allow|deny:tcp|udp|icmp|any:CIDR[:PORTS]; on networks GUEST=RULE for one guest (MAC or IPv4) (repeatable)
    #[arg(long = "filter", value_name = "[GUEST=]RULE", value_parser = parse_filter_arg)]
    pub filter: Vec<(
        Option<usernet_portfwd::api::GuestRef>,
        usernet_portfwd::filter::FilterRule,
    )>,
    /// What happens to a new flow no --filter rule matches
    #[arg(long = "filter-default", value_name = "allow|deny", default_value = "allow", value_parser = parse_action)]
    pub filter_default: usernet_portfwd::filter::Action,
    /// After setup, confine usernet: a mount namespace whose root is an empty tmpfs, and as root every capability but CAP_NET_BIND_SERVICE dropped
    #[arg(long = "enable-sandbox", visible_alias = "create-sandbox")]
    pub enable_sandbox: bool,
    /// After setup, install a seccomp filter that kills usernet on any syscall outside what it needs
    #[arg(long = "enable-seccomp")]
    pub enable_seccomp: bool,
}

/// `usernet [OPTIONS] PID|PATH|FD [TAPNAME]`: slirp4netns's interface.
#[derive(Parser, Debug)]
#[command(
    name = "usernet",
    version,
    about = "User-mode networking for network namespaces and VMs (a drop-in for slirp4netns).",
    long_about = None,
    disable_version_flag = true,
    after_help = "Other commands:\n  usernet run [OPTIONS] [-- COMMAND [ARG...]]   run COMMAND in a new networked namespace\n  usernet vm [OPTIONS] --stream unix:PATH       serve a VM (QEMU -netdev stream/dgram)\n  usernet network NAME [--mode nat|internal|host-only]   run a network several guests join\n  usernet attach NAME PID [TAPNAME]             join a namespace to a network\n  usernet fwd add|list|remove -a SOCKET ...     manage port forwards of a running usernet\n  usernet stats -a SOCKET                       print a running usernet's counters\n\nExamples:\n  usernet --configure --mtu=65520 $(pidof my-container-init) tap0\n  usernet run -- curl http://10.0.2.2:8080/"
)]
pub struct NsCli {
    /// Bring up the TAP interface (address network+100, default route, MTU) and lo
    #[arg(short = 'c', long)]
    pub configure: bool,
    /// Exit when this file descriptor becomes readable or is closed
    #[arg(short = 'e', long = "exit-fd", value_name = "FD")]
    pub exit_fd: Option<i32>,
    /// Write "1" to this file descriptor and close it once ready
    #[arg(short = 'r', long = "ready-fd", value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// How the positional argument is interpreted
    #[arg(
        long = "netns-type",
        value_enum,
        default_value = "pid",
        value_name = "TYPE"
    )]
    pub netns_type: NetnsTypeArg,
    /// User namespace to join (for --netns-type=path)
    #[arg(long = "userns-path", value_name = "PATH")]
    pub userns_path: Option<PathBuf>,
    /// Only "netns" is supported
    #[arg(
        long = "target-type",
        value_name = "TYPE",
        default_value = "netns",
        hide = true
    )]
    pub target_type: String,
    #[command(flatten)]
    pub net: NetArgs,
    /// Print the version
    #[arg(short = 'v', long = "version", action = ArgAction::Version)]
    pub version: Option<bool>,
    /// PID, network namespace path, or TAP fd (per --netns-type)
    #[arg(value_name = "PID|PATH|FD")]
    pub target: String,
    /// Name of the TAP device
    #[arg(value_name = "TAPNAME", default_value = "tap0")]
    pub tap_name: String,
}

/// `usernet run [OPTIONS] [-- COMMAND [ARG...]]`.
#[derive(Parser, Debug)]
#[command(
    name = "usernet run",
    about = "Run COMMAND (default: your shell) in a new user and network namespace with a working network: \
             tap0 is 10.0.2.100/24, the gateway 10.0.2.2 stands for the host, DNS is 10.0.2.3.",
    disable_version_flag = true
)]
pub struct RunCli {
    /// Name of the TAP device in the new namespace
    #[arg(long = "tap-name", default_value = "tap0", value_name = "NAME")]
    pub tap_name: String,
    /// Join network NAME (usernet network; started on first use) instead of a network of one's own
    #[arg(long = "network", value_name = "NAME")]
    pub network: Option<String>,
    /// With --network: directory of the networks' sockets
    #[arg(long = "runtime-dir", value_name = "DIR", requires = "network")]
    pub runtime_dir: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    /// The command and its arguments
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `--netns-type` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NetnsTypeArg {
    /// The argument is a PID
    Pid,
    /// The argument is a path to a network namespace
    Path,
    /// The argument is an open TAP file descriptor
    Tapfd,
}

/// A parsed `--cidr`.
#[derive(Clone, Copy, Debug)]
pub struct Cidr {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// A parsed MAC address.
#[derive(Clone, Copy, Debug)]
pub struct Mac(pub [u8; 6]);

fn parse_mtu(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("MTU \"{s}\" is not a number (expected {MIN_MTU}-{MAX_MTU})"))?;
    if !(MIN_MTU..=MAX_MTU).contains(&v) {
        return Err(format!(
            "MTU {v} is out of range (expected {MIN_MTU}-{MAX_MTU})"
        ));
    }
    Ok(v)
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = s.split_once('/').ok_or_else(|| {
        format!("network \"{s}\" is not in CIDR notation (expected e.g. 10.0.2.0/24)")
    })?;
    let addr: Ipv4Addr = a.parse().map_err(|_| {
        format!("network \"{s}\": \"{a}\" is not an IPv4 address (expected e.g. 10.0.2.0/24)")
    })?;
    let prefix_len: u8 = p.parse().map_err(|_| {
        format!("network \"{s}\": prefix length \"{p}\" is not a number (expected 1-25)")
    })?;
    if !(1..=25).contains(&prefix_len) {
        return Err(format!(
            "network \"{s}\": prefix length {prefix_len} is out of range (expected 1-25: the guest address is network + 100)"
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix_len));
    let network = Ipv4Addr::from(u32::from(addr) & mask);
    if network != addr {
        return Err(format!(
            "network \"{s}\" has host bits set (did you mean {network}/{prefix_len}?)"
        ));
    }
    Ok(Cidr {
        network,
        prefix_len,
    })
}

fn parse_cidr6(s: &str) -> Result<(std::net::Ipv6Addr, u8), String> {
    let (a, p) = s.split_once('/').ok_or_else(|| {
        format!("IPv6 prefix \"{s}\" is not in CIDR notation (expected e.g. fd00::/64)")
    })?;
    let addr: std::net::Ipv6Addr = a.parse().map_err(|_| {
        format!("IPv6 prefix \"{s}\": \"{a}\" is not an IPv6 address (expected e.g. fd00::/64)")
    })?;
    if p != "64" {
        return Err(format!(
            "IPv6 prefix \"{s}\": prefix length {p} is not supported (expected 64: guests autoconfigure with SLAAC)"
        ));
    }
    if u128::from(addr) & ((1u128 << 64) - 1) != 0 {
        return Err(format!(
            "IPv6 prefix \"{s}\" has host bits set (expected e.g. fd00::/64)"
        ));
    }
    if addr.is_multicast()
        || addr.is_loopback()
        || addr.is_unspecified()
        || addr.is_unicast_link_local()
    {
        return Err(format!(
            "IPv6 prefix \"{s}\" is not a unicast global or unique-local prefix"
        ));
    }
    Ok((addr, 64))
}

/// Parse a `--macaddress` value.
pub fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || {
        format!("MAC address \"{s}\" is not valid (expected six hex bytes like 02:11:22:33:44:55)")
    };
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if m[0] & 1 == 1 {
        return Err(format!(
            "MAC address \"{s}\" is a multicast address (expected a unicast one, e.g. 02:11:22:33:44:55)"
        ));
    }
    if m == [0; 6] {
        return Err(format!(
            "MAC address \"{s}\" is all zeros (expected a unicast address)"
        ));
    }
    Ok(Mac(m))
}

fn parse_dhcp_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    usernet_dhcp::parse_range(s).map_err(|e| e.to_string())
}

fn parse_lease(s: &str) -> Result<std::time::Duration, String> {
    usernet_dhcp::parse_lease_time(s).map_err(|e| e.to_string())
}

fn parse_dhcp_host(s: &str) -> Result<([u8; 6], Ipv4Addr), String> {
    usernet_dhcp::parse_host(s).map_err(|e| e.to_string())
}

fn parse_publish(s: &str) -> Result<Vec<usernet_portfwd::RuleSpec>, String> {
    usernet_portfwd::parse_publish(s).map_err(|e| e.to_string())
}

fn parse_natpf(s: &str) -> Result<usernet_portfwd::RuleSpec, String> {
    usernet_portfwd::parse_natpf(s).map_err(|e| e.to_string())
}

fn parse_action(s: &str) -> Result<usernet_portfwd::filter::Action, String> {
    s.parse()
        .map_err(|_| format!("\"{s}\" is not a filter policy (expected allow or deny)"))
}

/// `[GUEST=]RULE` of `--filter`.
pub fn parse_filter_arg(
    s: &str,
) -> Result<
    (
        Option<usernet_portfwd::api::GuestRef>,
        usernet_portfwd::filter::FilterRule,
    ),
    String,
> {
    let (guest, rule) = match s.split_once('=') {
        Some((g, r)) => {
            let g = usernet_portfwd::api::GuestRef::parse(g).ok_or_else(|| {
                format!("\"{g}\" in --filter {s} is neither a MAC nor an IP address (expected GUEST=RULE)")
            })?;
            (Some(g), r)
        }
        None => (None, s),
    };
    let rule = usernet_portfwd::filter::parse_filter(rule).map_err(|e| e.to_string())?;
    Ok((guest, rule))
}

fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("DNS upstream \"{s}\" is not an IP address or IP:PORT"))
}

/// An error in an option's value that clap could not see on its own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

fn resolve_outbound(s: &str, v6: bool) -> Result<IpAddr, CliError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        if ip.is_ipv6() != v6 {
            let want = if v6 { "an IPv6" } else { "an IPv4" };
            let opt = if v6 {
                "--outbound-addr6"
            } else {
                "--outbound-addr"
            };
            return Err(CliError(format!("{opt} \"{s}\" is not {want} address")));
        }
        return Ok(ip);
    }
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| {
        CliError(format!(
            "cannot list network interfaces to resolve \"{s}\": {e}"
        ))
    })?;
    for a in addrs {
        if a.interface_name != s {
            continue;
        }
        let Some(addr) = a.address else { continue };
        if let (false, Some(sin)) = (v6, addr.as_sockaddr_in()) {
            return Ok(IpAddr::V4(sin.ip()));
        }
        if let (true, Some(sin6)) = (v6, addr.as_sockaddr_in6()) {
            return Ok(IpAddr::V6(sin6.ip()));
        }
    }
    let fam = if v6 { "IPv6" } else { "IPv4" };
    Err(CliError(format!(
        "outbound address \"{s}\" is neither an {fam} address nor the name of an interface with one"
    )))
}

impl NetArgs {
    /// The options given that belong to a network as a whole (a guest joining one cannot
    /// change them).
    pub fn network_settings(&self) -> Vec<&'static str> {
        let n = self;
        let mut v = Vec::new();
        let mut given = |on: bool, name: &'static str| {
            if on {
                v.push(name);
            }
        };
        given(n.mtu != crate::config::DEFAULT_MTU, "--mtu");
        given(
            (n.cidr.network, n.cidr.prefix_len) != (std::net::Ipv4Addr::new(10, 0, 2, 0), 24),
            "--cidr",
        );
        given(
            n.cidr6 != (std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 64),
            "--cidr6",
        );
        given(n.disable_host_loopback, "--disable-host-loopback");
        given(n.disable_dns, "--disable-dns");
        given(!n.dns_upstream.is_empty(), "--dns-upstream");
        given(n.outbound_addr.is_some(), "--outbound-addr");
        given(n.outbound_addr6.is_some(), "--outbound-addr6");
        given(n.dhcp_range.is_some(), "--dhcp-range");
        given(n.dhcp_lease_time.is_some(), "--dhcp-lease-time");
        given(!n.dhcp_host.is_empty(), "--dhcp-host");
        given(!n.dns_search.is_empty(), "--dns-search");
        given(n.domain.is_some(), "--domain");
        given(n.disable_dhcp, "--disable-dhcp");
        given(n.pcap.is_some(), "--pcap");
        given(n.enable_ipv6, "--enable-ipv6");
        given(n.api_socket.is_some(), "--api-socket");
        given(!n.publish.is_empty(), "-p/--publish");
        given(!n.natpf.is_empty(), "--natpf");
        given(!n.filter.is_empty(), "--filter");
        given(
            n.filter_default != usernet_portfwd::filter::Action::Allow,
            "--filter-default",
        );
        v
    }

    /// Every forward rule of `-p` and `--natpf`, in order.
    pub fn forward_rules(&self) -> Vec<usernet_portfwd::RuleSpec> {
        let mut v: Vec<_> = self.publish.iter().flatten().cloned().collect();
        v.extend(self.natpf.iter().cloned());
        v
    }

    /// Refuse what only networks of several guests understand.
    pub fn single_guest(&self) -> Result<(), CliError> {
        if let Some((Some(g), _)) = self.filter.iter().find(|(g, _)| g.is_some()) {
            return Err(CliError(format!(
                "--filter {g}=...: rules for one guest need a network of several (usernet network NAME); here every rule applies to the one guest, so drop \"{g}=\""
            )));
        }
        Ok(())
    }

    /// The engine configuration these options describe.
    pub fn to_config(&self) -> Result<Config, CliError> {
        let mut cfg = Config::new(self.cidr.network, self.cidr.prefix_len);
        cfg.mtu = self.mtu;
        cfg.disable_host_loopback = self.disable_host_loopback;
        cfg.enable_dns = !self.disable_dns;
        if let Some(s) = &self.outbound_addr {
            match resolve_outbound(s, false)? {
                IpAddr::V4(a) => cfg.outbound_addr = Some(a),
                IpAddr::V6(_) => {
                    return Err(CliError(format!(
                        "--outbound-addr \"{s}\" is not an IPv4 address"
                    )));
                }
            }
        }
        if let Some(s) = &self.outbound_addr6 {
            cfg.outbound_addr6 = Some(resolve_outbound(s, true)?);
        }
        if !self.dns_upstream.is_empty() {
            cfg.dns_options.upstreams = Upstreams::Fixed(self.dns_upstream.clone());
        }
        if !self.host_name.is_empty() {
            for n in &self.host_name {
                if n.is_empty()
                    || n.len() > 253
                    || n.split('.').any(|l| l.is_empty() || l.len() > 63)
                {
                    return Err(CliError(format!(
                        "host name \"{n}\" is not a valid DNS name (expected dot-separated labels of 1-63 characters)"
                    )));
                }
            }
            cfg.dns_options.local_names = self.host_name.clone();
        }
        if self.enable_ipv6 {
            let mut v6 = crate::config::Ipv6Config::new(self.cidr6.0, self.cidr6.1);
            v6.dhcpv6 = !self.disable_dhcpv6;
            cfg.ipv6 = Some(v6);
        }
        if self.disable_dhcp {
            cfg.dhcp = None;
        }
        cfg.filters = self
            .filter
            .iter()
            .filter(|(g, _)| g.is_none())
            .map(|(_, r)| r.clone())
            .collect();
        cfg.filter_default = self.filter_default;
        if let Some(d) = cfg.dhcp.as_mut() {
            d.mtu = Some(self.mtu as u16);
            if !cfg.enable_dns {
                d.dns_servers.clear();
            }
            if let Some((a, b)) = self.dhcp_range {
                d.pool_start = a;
                d.pool_end = b;
            }
            if let Some(t) = self.dhcp_lease_time {
                d.lease_time = t;
            }
            d.reservations = self.dhcp_host.clone();
            d.search = self.dns_search.clone();
            d.domain_name = self.domain.clone();
            // Validate now, so a bad range is reported as a command-line error.
            usernet_dhcp::Server::new(d.clone()).map_err(|e| CliError(e.to_string()))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_bounds() {
        assert!(parse_mtu("68").is_ok());
        assert!(parse_mtu("65521").is_ok());
        assert!(parse_mtu("67").unwrap_err().contains("67"));
        assert!(parse_mtu("70000").unwrap_err().contains("70000"));
        assert!(parse_mtu("x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn cidr() {
        let c = parse_cidr("10.0.3.0/24").unwrap();
        assert_eq!(c.network, Ipv4Addr::new(10, 0, 3, 0));
        assert!(parse_cidr("bogus").unwrap_err().contains("bogus"));
        assert!(parse_cidr("10.0.2.0/26").unwrap_err().contains("26"));
        assert!(parse_cidr("10.0.2.1/24").unwrap_err().contains("host bits"));
    }

    #[test]
    fn mac() {
        assert_eq!(
            parse_mac("02:11:22:33:44:55").unwrap().0,
            [2, 0x11, 0x22, 0x33, 0x44, 0x55]
        );
        assert!(parse_mac("01:11:22:33:44:55").is_err());
        assert!(parse_mac("02:11:22:33:44").is_err());
        assert!(parse_mac("zz:11:22:33:44:55").is_err());
    }

    #[test]
    fn slirp4netns_command_lines_parse() {
        // podman's and rootlesskit's exact shapes (reference/compat.md §2.6).
        let p = NsCli::try_parse_from([
            "usernet",
            "--disable-host-loopback",
            "--mtu=65520",
            "-c",
            "-e",
            "3",
            "-r",
            "4",
            "--netns-type=path",
            "/run/user/1000/netns/x",
            "tap0",
        ])
        .unwrap();
        assert!(p.configure && p.net.disable_host_loopback);
        assert_eq!(p.net.mtu, 65520);
        assert_eq!((p.exit_fd, p.ready_fd), (Some(3), Some(4)));
        let r = NsCli::try_parse_from(["usernet", "--mtu", "65520", "-r", "3", "1234", "tap0"])
            .unwrap();
        assert_eq!(r.target, "1234");
        assert!(NsCli::try_parse_from(["usernet", "--netns-type=foo", "1"]).is_err());
        let e =
            NsCli::try_parse_from(["usernet", "--enable-sandbox", "--enable-seccomp", "-6", "1"])
                .unwrap();
        assert!(
            e.net.enable_sandbox
                && e.net.enable_seccomp
                && e.net.to_config().unwrap().ipv6.is_some()
        );
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        NsCli::command().debug_assert();
        RunCli::command().debug_assert();
    }

    #[test]
    fn run_command_line() {
        let r = RunCli::try_parse_from(["usernet run", "--mtu=9000", "--", "sh", "-c", "exit 3"])
            .unwrap();
        assert_eq!(r.net.mtu, 9000);
        assert_eq!(r.command.len(), 3);
    }
}

/// `usernet fwd add|list|remove --api-socket PATH ...`: a client of the API socket.
#[derive(Parser, Debug)]
#[command(
    name = "usernet fwd",
    about = "Add, list and remove port forwards of a running usernet through its API socket."
)]
pub struct FwdCli {
    /// What to do
    #[command(subcommand)]
    pub action: FwdAction,
}

/// `usernet fwd` actions.
#[derive(clap::Subcommand, Debug)]
pub enum FwdAction {
    /// Add forwards (same syntax as -p: [HOSTADDR:]HOSTPORT[-END]:[GUESTADDR:]GUESTPORT[-END][/tcp|/udp])
    Add {
        /// The API socket of the running usernet
        #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
        api_socket: PathBuf,
        /// Rules to add
        #[arg(required = true, value_name = "RULE", value_parser = parse_publish)]
        rules: Vec<Vec<usernet_portfwd::RuleSpec>>,
    },
    /// List forwards
    List {
        /// The API socket of the running usernet
        #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
        api_socket: PathBuf,
        /// Print the raw JSON reply
        #[arg(long)]
        json: bool,
    },
    /// Remove forwards by id
    Remove {
        /// The API socket of the running usernet
        #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
        api_socket: PathBuf,
        /// Rule ids (as `list` shows them)
        #[arg(required = true, value_name = "ID")]
        ids: Vec<u32>,
    },
}

/// `usernet stats --api-socket PATH`: print a running usernet's counters.
#[derive(Parser, Debug)]
#[command(
    name = "usernet stats",
    about = "Print the counters of a running usernet (frames, flows, drops, DHCP leases)."
)]
pub struct StatsCli {
    /// The API socket of the running usernet
    #[arg(short = 'a', long = "api-socket", value_name = "PATH")]
    pub api_socket: PathBuf,
    /// Print the raw JSON
    #[arg(long)]
    pub json: bool,
}
