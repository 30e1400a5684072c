//! Host sockets: the only place usernet opens sockets toward the outside world.
//!
//! Every socket is nonblocking and close-on-exec. Outbound sockets are bound to
//! `--outbound-addr`/`--outbound-addr6` when given.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

fn bind_outbound(s: &Socket, cfg: &Config, target: &SocketAddr) -> io::Result<()> {
    match (target, cfg.outbound_addr, cfg.outbound_addr6) {
        (SocketAddr::V4(t), Some(a), _) if !t.ip().is_loopback() => {
            s.bind(&SocketAddr::new(IpAddr::V4(a), 0).into())
        }
        (SocketAddr::V6(t), _, Some(a)) if !t.ip().is_loopback() => {
            s.bind(&SocketAddr::new(a, 0).into())
        }
        _ => Ok(()),
    }
}

/// Whether `target` may be sent to: anything, except that with the fuzz harness's sink
/// set ([`Config::sink`]) nothing may leave the host's loopback. The sink is applied in
/// `nat::from_guest`; this is the net under it, at every host send and connect.
pub fn contained(cfg: &Config, target: SocketAddr) -> io::Result<()> {
    if cfg.sink.is_some() && !target.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{target} is beyond the host's loopback, and the fuzz sink is set"),
        ));
    }
    Ok(())
}

/// Whether `target` is the host itself: a loopback address, or one of the host's own
/// addresses (as the kernel's local routing table says: a UDP socket connected to a
/// local address takes that address as its own source, RFC 6724 rule 1). Asked once
/// per new flow of a guest that may not reach the host (`--block-host`), never on any
/// other path; it costs a socket, a connect (which sends nothing) and a getsockname,
/// all allowed by the seccomp filter. When the kernel cannot tell, the answer is yes:
/// a guest that may not reach the host is refused rather than let through.
pub fn is_host(target: IpAddr) -> bool {
    if target.is_loopback() || target.is_unspecified() {
        return true;
    }
    if target.is_multicast() || target == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return false;
    }
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let probe = || -> io::Result<bool> {
        let s = Socket::new(domain, Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        match s.connect(&SocketAddr::new(target, 9).into()) {
            Ok(()) => {}
            // No route at all: not a local address.
            Err(e) if e.raw_os_error() == Some(libc::ENETUNREACH) => return Ok(false),
            Err(e) => return Err(e),
        }
        let local = s.local_addr()?;
        Ok(local.as_socket().is_some_and(|a| a.ip() == target))
    };
    probe().unwrap_or(true)
}

/// Start a nonblocking TCP connect to `target`. `Ok` means in progress (or done).
pub fn tcp_connect(cfg: &Config, target: SocketAddr) -> io::Result<mio::net::TcpStream> {
    contained(cfg, target)?;
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_tcp_nodelay(true)?;
    bind_outbound(&s, cfg, &target)?;
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

/// An unconnected UDP socket for one guest mapping, with `IP_RECVERR` so that ICMP
/// errors from the outside can be relayed to the guest.
pub fn udp_socket(cfg: &Config, v6: bool) -> io::Result<mio::net::UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if v6 {
        s.set_only_v6(true)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvErr, &true)?;
        let a = match cfg.outbound_addr6 {
            Some(a) => a,
            None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        s.bind(&SocketAddr::new(a, 0).into())?;
    } else {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvErr, &true)?;
        let a = cfg.outbound_addr.unwrap_or(Ipv4Addr::UNSPECIFIED);
        s.bind(&SocketAddr::new(IpAddr::V4(a), 0).into())?;
    }
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

/// A socket for ICMP echo: an unprivileged ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP`
/// or `IPPROTO_ICMPV6`) bound to `ident` when that id is free, so the guest's echo id
/// survives.
pub fn ping_socket(cfg: &Config, ident: u16, v6: bool) -> io::Result<mio::net::UdpSocket> {
    let (domain, proto, a) = if v6 {
        let a = cfg
            .outbound_addr6
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        (Domain::IPV6, Protocol::ICMPV6, a)
    } else {
        let a = IpAddr::V4(cfg.outbound_addr.unwrap_or(Ipv4Addr::UNSPECIFIED));
        (Domain::IPV4, Protocol::ICMPV4, a)
    };
    let s = Socket::new(domain, Type::DGRAM.nonblocking().cloexec(), Some(proto))?;
    if s.bind(&SocketAddr::new(a, ident).into()).is_err() {
        s.bind(&SocketAddr::new(a, 0).into())?;
    }
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

/// Raw ICMP sockets opened before privileges were dropped (`--enable-sandbox` as root).
static PREOPENED_RAW: std::sync::Mutex<[Option<Socket>; 2]> = std::sync::Mutex::new([None, None]);

/// Open the raw ICMP sockets now, while `CAP_NET_RAW` may still be held; they are
/// used later when ping sockets are not allowed. Failure is silent (ping sockets or
/// nothing, as without a sandbox).
pub fn preopen_raw_icmp(cfg: &Config) {
    let mut slots = PREOPENED_RAW.lock().unwrap_or_else(|p| p.into_inner());
    for (i, v6) in [(0, false), (1, true)] {
        if v6 && cfg.ipv6.is_none() {
            continue;
        }
        if let Ok(s) = open_raw_icmp(cfg, v6) {
            slots[i] = Some(s);
        }
    }
}

/// A raw ICMP or ICMPv6 socket (needs `CAP_NET_RAW`), shared by all echo mappings of
/// its family. The kernel computes ICMPv6 checksums on raw ICMPv6 sockets.
pub fn raw_icmp_socket(cfg: &Config, v6: bool) -> io::Result<mio::net::UdpSocket> {
    let pre = PREOPENED_RAW.lock().unwrap_or_else(|p| p.into_inner())[usize::from(v6)].take();
    let s = match pre {
        Some(s) => s,
        None => open_raw_icmp(cfg, v6)?,
    };
    // A raw socket is datagram-like for our purposes: send_to/recv_from whole packets.
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

fn open_raw_icmp(cfg: &Config, v6: bool) -> io::Result<Socket> {
    let s = if v6 {
        let s = Socket::new(
            Domain::IPV6,
            Type::RAW.nonblocking().cloexec(),
            Some(Protocol::ICMPV6),
        )?;
        if let Some(a) = cfg.outbound_addr6 {
            s.bind(&SocketAddr::new(a, 0).into())?;
        }
        s
    } else {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW.nonblocking().cloexec(),
            Some(Protocol::ICMPV4),
        )?;
        if let Some(a) = cfg.outbound_addr {
            s.bind(&SocketAddr::new(IpAddr::V4(a), 0).into())?;
        }
        s
    };
    Ok(s)
}

/// A UDP socket for the DNS relay's upstream queries.
pub fn dns_socket(v6: bool) -> io::Result<mio::net::UdpSocket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    let a: SocketAddr = if v6 {
        s.set_only_v6(true)?;
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    s.bind(&a.into())?;
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_a_sink_nothing_leaves_the_loopback() {
        let beyond: SocketAddr = "198.51.100.1:80".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let lo6: SocketAddr = "[::1]:80".parse().unwrap();
        let open = Config::default();
        assert!(contained(&open, beyond).is_ok());
        let sunk = Config {
            sink: Some(9),
            ..Config::default()
        };
        let e = contained(&sunk, beyond).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("198.51.100.1:80"), "{e}");
        assert!(contained(&sunk, lo).is_ok());
        assert!(contained(&sunk, lo6).is_ok());
    }
}
