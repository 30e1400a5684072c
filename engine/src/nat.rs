//! NAT policy: where a guest flow goes, and how a host address looks from the guest.
//!
//! Pure functions of the configuration and a tuple (passt's `fwd_nat_from_tap()` is the
//! model): protocol handlers ask, they do not decide. Table-tested below, no sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::config::Config;

/// Transport protocol of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Where a guest flow is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A host socket toward this address.
    Host(SocketAddr),
    /// The DNS relay (UDP or TCP to the DNS address, port 53).
    Dns,
}

/// Why a guest flow is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It would reach the host's loopback and `--disable-host-loopback` is set (answer: RST / port unreachable).
    HostLoopbackDisabled,
    /// The DNS address while DNS is disabled (answer: RST / port unreachable).
    DnsDisabled,
    /// Not routable at all: multicast, loopback, unspecified, other addresses of the virtual network (drop).
    Unroutable,
    /// Outbound flows are off (`Config::outbound`): answer RST / port unreachable.
    NoOutbound,
    /// A host-only network's flow to somewhere beyond the host (answer: RST / port
    /// unreachable).
    HostOnly,
}

/// Decide where a guest flow to `dst` goes.
pub fn from_guest(cfg: &Config, proto: Proto, dst: SocketAddr) -> Result<Target, Refusal> {
    let r = match dst {
        SocketAddr::V4(d) => from_guest4(cfg, proto, d),
        SocketAddr::V6(d) => from_guest6(cfg, d),
    };
    match r {
        Ok(Target::Host(_)) if !cfg.outbound => Err(Refusal::NoOutbound),
        Ok(Target::Host(a)) if cfg.host_only && !a.ip().is_loopback() => Err(Refusal::HostOnly),
        Ok(Target::Host(a)) => Ok(Target::Host(sunk(cfg, a))),
        r => r,
    }
}

/// `a`, or the fuzz harness's sink on the loopback of `a`'s family ([`Config::sink`]).
fn sunk(cfg: &Config, a: SocketAddr) -> SocketAddr {
    match (cfg.sink, a) {
        (None, a) => a,
        (Some(p), SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p),
        (Some(p), SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), p),
    }
}

fn from_guest6(cfg: &Config, dst: SocketAddrV6) -> Result<Target, Refusal> {
    let Some(v6) = &cfg.ipv6 else {
        return Err(Refusal::Unroutable);
    };
    let ip = *dst.ip();
    if ip == v6.dns || ip == v6.gateway || ip == crate::config::GATEWAY_LINK_LOCAL {
        return ours(
            cfg,
            ip == v6.dns,
            dst.port(),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        );
    }
    if v6.in_prefix(ip)
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_unicast_link_local()
        || ip.to_ipv4_mapped().is_some()
        || dst.port() == 0
    {
        return Err(Refusal::Unroutable);
    }
    Ok(Target::Host(SocketAddr::V6(SocketAddrV6::new(
        ip,
        dst.port(),
        0,
        0,
    ))))
}

/// A flow to one of our own addresses: DNS port 53 is the relay; anything else stands
/// for the host's loopback (`loopback` of the flow's family) unless that is disabled.
fn ours(cfg: &Config, is_dns: bool, port: u16, loopback: IpAddr) -> Result<Target, Refusal> {
    if is_dns && port == 53 {
        return if cfg.enable_dns {
            Ok(Target::Dns)
        } else {
            Err(Refusal::DnsDisabled)
        };
    }
    if cfg.disable_host_loopback {
        Err(Refusal::HostLoopbackDisabled)
    } else {
        Ok(Target::Host(SocketAddr::new(loopback, port)))
    }
}

fn from_guest4(cfg: &Config, proto: Proto, dst: SocketAddrV4) -> Result<Target, Refusal> {
    let ip = *dst.ip();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if ip == cfg.dns || ip == cfg.gateway {
        return ours(cfg, ip == cfg.dns, dst.port(), lo);
    }
    if ip == Ipv4Addr::BROADCAST {
        // libslirp sends limited broadcasts to the host's loopback.
        return match proto {
            Proto::Udp => ours(cfg, false, dst.port(), lo),
            Proto::Tcp => Err(Refusal::Unroutable),
        };
    }
    if cfg.in_subnet(ip)
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unspecified()
        || dst.port() == 0
    {
        return Err(Refusal::Unroutable);
    }
    Ok(Target::Host(SocketAddr::V4(dst)))
}

/// How the source of a host-side packet looks from the guest: the host's loopback
/// appears as the gateway. `None`: the guest must not see it (loopback while host
/// loopback is disabled, other loopback addresses, IPv6 for an IPv4 flow).
pub fn to_guest_source(cfg: &Config, from: SocketAddr) -> Option<SocketAddrV4> {
    let from = match from {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => SocketAddrV4::new(a.ip().to_ipv4_mapped()?, a.port()),
    };
    if from.ip().is_loopback() {
        if cfg.disable_host_loopback || *from.ip() != Ipv4Addr::LOCALHOST {
            return None;
        }
        return Some(SocketAddrV4::new(cfg.gateway, from.port()));
    }
    Some(from)
}

/// How the source of a host-side IPv6 packet looks from the guest: the host's ::1
/// appears as the IPv6 gateway. `None`: the guest must not see it.
pub fn to_guest_source6(cfg: &Config, from: SocketAddr) -> Option<SocketAddr> {
    let v6 = cfg.ipv6.as_ref()?;
    let SocketAddr::V6(from) = from else {
        return None;
    };
    let ip = *from.ip();
    if ip.is_loopback() {
        if cfg.disable_host_loopback {
            return None;
        }
        return Some(SocketAddr::V6(SocketAddrV6::new(
            v6.gateway,
            from.port(),
            0,
            0,
        )));
    }
    if ip.to_ipv4_mapped().is_some() || ip.is_unspecified() {
        return None;
    }
    Some(SocketAddr::V6(SocketAddrV6::new(ip, from.port(), 0, 0)))
}

/// [`to_guest_source`] or [`to_guest_source6`], by the guest flow's family.
pub fn to_guest(cfg: &Config, v6_flow: bool, from: SocketAddr) -> Option<SocketAddr> {
    if v6_flow {
        to_guest_source6(cfg, from)
    } else {
        to_guest_source(cfg, from).map(SocketAddr::V4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn table() {
        let cfg = Config::default();
        let off = Config {
            disable_host_loopback: true,
            ..Config::default()
        };
        let closed = Config {
            outbound: false,
            ..Config::default()
        };
        let nodns = Config {
            enable_dns: false,
            ..Config::default()
        };
        let hostonly = Config {
            host_only: true,
            ..Config::default()
        };
        let host = |s: &str| Ok(Target::Host(SocketAddr::V4(sa(s))));
        let cases: &[(&Config, Proto, &str, Result<Target, Refusal>)] = &[
            (&hostonly, Proto::Tcp, "10.0.2.2:80", host("127.0.0.1:80")),
            (&hostonly, Proto::Udp, "10.0.2.3:53", Ok(Target::Dns)),
            (
                &hostonly,
                Proto::Tcp,
                "198.51.100.1:443",
                Err(Refusal::HostOnly),
            ),
            (
                &hostonly,
                Proto::Udp,
                "198.51.100.1:53",
                Err(Refusal::HostOnly),
            ),
            (&cfg, Proto::Tcp, "10.0.2.2:80", host("127.0.0.1:80")),
            (&cfg, Proto::Udp, "10.0.2.2:53", host("127.0.0.1:53")),
            (&cfg, Proto::Udp, "10.0.2.3:53", Ok(Target::Dns)),
            (&cfg, Proto::Tcp, "10.0.2.3:53", Ok(Target::Dns)),
            (&cfg, Proto::Tcp, "10.0.2.3:80", host("127.0.0.1:80")),
            (&cfg, Proto::Udp, "255.255.255.255:9", host("127.0.0.1:9")),
            (
                &cfg,
                Proto::Tcp,
                "198.51.100.1:443",
                host("198.51.100.1:443"),
            ),
            (&cfg, Proto::Tcp, "10.0.2.50:80", Err(Refusal::Unroutable)),
            (&cfg, Proto::Tcp, "127.0.0.1:80", Err(Refusal::Unroutable)),
            (
                &cfg,
                Proto::Udp,
                "224.0.0.251:5353",
                Err(Refusal::Unroutable),
            ),
            (&cfg, Proto::Tcp, "198.51.100.1:0", Err(Refusal::Unroutable)),
            (
                &off,
                Proto::Tcp,
                "10.0.2.2:80",
                Err(Refusal::HostLoopbackDisabled),
            ),
            (
                &off,
                Proto::Udp,
                "255.255.255.255:9",
                Err(Refusal::HostLoopbackDisabled),
            ),
            (
                &off,
                Proto::Tcp,
                "10.0.2.3:80",
                Err(Refusal::HostLoopbackDisabled),
            ),
            (&off, Proto::Udp, "10.0.2.3:53", Ok(Target::Dns)),
            (&off, Proto::Tcp, "198.51.100.1:80", host("198.51.100.1:80")),
            (&nodns, Proto::Udp, "10.0.2.3:53", Err(Refusal::DnsDisabled)),
            (
                &closed,
                Proto::Tcp,
                "198.51.100.1:80",
                Err(Refusal::NoOutbound),
            ),
            (&closed, Proto::Udp, "10.0.2.2:53", Err(Refusal::NoOutbound)),
            (&closed, Proto::Udp, "10.0.2.3:53", Ok(Target::Dns)),
        ];
        for (c, p, dst, want) in cases {
            assert_eq!(
                from_guest(c, *p, SocketAddr::V4(sa(dst))),
                *want,
                "{p:?} {dst}"
            );
        }
    }

    #[test]
    fn table6() {
        let cfg = Config {
            ipv6: Some(crate::config::Ipv6Config::new(
                "fd00::".parse().unwrap(),
                64,
            )),
            ..Config::default()
        };
        let off = Config {
            disable_host_loopback: true,
            ..cfg.clone()
        };
        let s = |x: &str| -> SocketAddr { x.parse().unwrap() };
        let host = |x: &str| Ok(Target::Host(s(x)));
        let cases: &[(&Config, &str, Result<Target, Refusal>)] = &[
            (&cfg, "[fd00::2]:80", host("[::1]:80")),
            (&cfg, "[fe80::5055:aff:fe00:202]:80", host("[::1]:80")),
            (&cfg, "[fd00::3]:53", Ok(Target::Dns)),
            (&cfg, "[2001:db8:1::1]:443", host("[2001:db8:1::1]:443")),
            (&cfg, "[fd00::50]:80", Err(Refusal::Unroutable)),
            (&cfg, "[::1]:80", Err(Refusal::Unroutable)),
            (&cfg, "[ff02::1]:80", Err(Refusal::Unroutable)),
            (&cfg, "[::ffff:127.0.0.1]:80", Err(Refusal::Unroutable)),
            (&off, "[fd00::2]:80", Err(Refusal::HostLoopbackDisabled)),
            (&off, "[2001:db8:1::1]:443", host("[2001:db8:1::1]:443")),
            (
                &Config::default(),
                "[2001:db8:1::1]:443",
                Err(Refusal::Unroutable),
            ),
        ];
        for (c, dst, want) in cases {
            assert_eq!(from_guest(c, Proto::Tcp, s(dst)), *want, "{dst}");
        }
        assert_eq!(
            to_guest_source6(&cfg, s("[::1]:80")),
            Some(s("[fd00::2]:80"))
        );
        assert_eq!(to_guest_source6(&off, s("[::1]:80")), None);
        assert_eq!(
            to_guest_source6(&cfg, s("[2001:db8:1::1]:7")),
            Some(s("[2001:db8:1::1]:7"))
        );
    }

    #[test]
    fn sources() {
        let cfg = Config::default();
        let off = Config {
            disable_host_loopback: true,
            ..Config::default()
        };
        let s = |x: &str| -> SocketAddr { x.parse().unwrap() };
        assert_eq!(
            to_guest_source(&cfg, s("127.0.0.1:80")),
            Some(sa("10.0.2.2:80"))
        );
        assert_eq!(to_guest_source(&cfg, s("127.0.0.53:53")), None);
        assert_eq!(to_guest_source(&off, s("127.0.0.1:80")), None);
        assert_eq!(
            to_guest_source(&off, s("198.51.100.1:7")),
            Some(sa("198.51.100.1:7"))
        );
        assert_eq!(to_guest_source(&cfg, s("[::1]:80")), None);
    }
}
