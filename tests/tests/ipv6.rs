//! IPv6 (`-6/--enable-ipv6`) against real peers: the guest's own Linux kernel (SLAAC from
//! the router advertisement, neighbour discovery, duplicate address detection), its
//! sockets, `ping`, `dig` and ISC `dhclient -6` in the guest; servers and a dnsmasq on
//! 2001:db8:1::1 and ::1 inside the test's host namespace.
//!
//! The RA itself is read back twice in the guest: from a raw ICMPv6 socket (every
//! option, byte for byte) and from the kernel's RTM_NEWNDUSEROPT netlink messages (the
//! RDNSS/DNSSL options the kernel accepted and hands to a resolver daemon: Linux keeps no
//! DNS configuration itself).
//!
//! `dhclient -6` never runs its distribution script (the guest shares the machine's mount
//! namespace): it gets `-sf` with a script written here that only records what it saw, a
//! private lease file, pid file and configuration.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};
use usernet_tests::*;

/// The default prefix.
const PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
/// The gateway: stands for the host's ::1.
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// The DNS relay.
const DNS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
/// The engine's link-local router address.
const ROUTER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5055, 0x0aff, 0xfe00, 0x0202);
/// The engine's MAC.
const ROUTER_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];
/// The "outside world" in the host namespace.
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// How long SLAAC may take in the autoconfiguration test.
const SLAAC_LIMIT: Duration = Duration::from_secs(5);
/// How long other tests wait for SLAAC before they start (more lenient).
const SLAAC_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// Host ns + root guest + engine with `--configure -6` and `extra`.
fn setup6(extra: &[&str]) -> Setup {
    let mut a = vec!["-6"];
    a.extend_from_slice(extra);
    Setup::configured(&a)
}

fn in_prefix(a: Ipv6Addr, prefix: Ipv6Addr) -> bool {
    a.octets()[..8] == prefix.octets()[..8]
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What `ip -6` in the guest says about tap0's addresses and the default route.
struct Slaac6 {
    /// A global address in `prefix` that is no longer tentative.
    addr: Option<Ipv6Addr>,
    addrs: String,
    routes: String,
}

fn slaac_state(s: &Setup, prefix: Ipv6Addr) -> Slaac6 {
    let addrs = text(&s.guest.sh("ip -6 -o addr show dev tap0").stdout);
    let routes = text(&s.guest.sh("ip -6 route show default").stdout);
    let addr = addrs
        .lines()
        .filter(|l| l.contains("scope global") && !l.contains("tentative"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet6")?;
            w.next()?.split('/').next()?.parse::<Ipv6Addr>().ok()
        })
        .find(|a| in_prefix(*a, prefix));
    Slaac6 {
        addr,
        addrs,
        routes,
    }
}

fn default_route_via_router(routes: &str) -> bool {
    routes.lines().any(|l| {
        l.starts_with("default")
            && l.contains(&format!("via {ROUTER_LL} "))
            && l.contains("dev tap0")
    })
}

/// Polls (≤ `limit`) until the guest kernel has a usable SLAAC address in `prefix` and a
/// default route via the router's link-local address; returns the address.
fn wait_slaac(s: &Setup, prefix: Ipv6Addr, limit: Duration) -> Ipv6Addr {
    let start = Instant::now();
    loop {
        let st = slaac_state(s, prefix);
        // the link-local address must be usable too (DHCPv6 clients bind to it); the
        // first RA can complete the global address's DAD before the link-local's.
        let ll_ready = st
            .addrs
            .lines()
            .any(|l| l.contains("inet6 fe80::") && !l.contains("tentative"));
        if let Some(a) = st.addr
            && ll_ready
            && default_route_via_router(&st.routes)
        {
            return a;
        }
        assert!(
            start.elapsed() < limit,
            "the guest kernel did not autoconfigure from the RA within {limit:?} \
             (non-tentative link-local and global addresses, the latter in {prefix}/64, and a default \
             route via {ROUTER_LL}); \
             addresses:\n{}\nroutes:\n{}\nengine: {}",
            st.addrs,
            st.routes,
            s.engine.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Plain HTTP/1.0 GET from the guest; returns the body.
fn guest_http_get(s: &Setup, addr: SocketAddr) -> io::Result<Vec<u8>> {
    s.guest.run(|| {
        let mut c = connect_tcp(addr, Duration::from_secs(10))?;
        c.write_all(b"GET /blob HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let (got, err) = read_to_end_result(&mut c);
        if let Some(e) = err {
            return Err(e);
        }
        let pos = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| io::Error::other(format!("no HTTP header in {} bytes", got.len())))?;
        Ok(got[pos + 4..].to_vec())
    })
}

/// Downloads `len` bytes from an `http_handler(seed, len)` server at `addr` in the guest
/// and compares the sha256.
fn download_check(s: &Setup, addr: SocketAddr, seed: u64, len: usize) {
    let want = sha256_hex(&pattern(seed, len));
    let body = guest_http_get(s, addr).unwrap_or_else(|e| {
        panic!(
            "download from {addr} in the guest failed: {e}; engine: {}",
            s.engine.stderr()
        )
    });
    assert_eq!(body.len(), len, "download from {addr}: length");
    assert_eq!(
        sha256_hex(&body),
        want,
        "download from {addr}: content differs"
    );
}

/// `ping -6 -c COUNT` in the guest; returns (transmitted, received, full output).
fn ping6(s: &Setup, dst: Ipv6Addr, count: u32) -> (u32, u32, String) {
    let script = format!("ping -6 -n -c {count} -i 0.2 -W 2 {dst}");
    // A guest made by uid 65534 does not map the test's real uid 0, so ping (which
    // calls setuid) runs as the namespace's own root there, as a rootless user would.
    let mut c = if s.guest.owner == Owner::Nobody {
        let mut c = std::process::Command::new("nsenter");
        c.args([
            "-t",
            &s.guest.pid.to_string(),
            "-U",
            "-n",
            "sh",
            "-c",
            &script,
        ]);
        c
    } else {
        let mut c = s.guest.command("sh");
        c.args(["-c", &script]);
        c
    };
    let out = run_timeout(&mut c, Duration::from_secs(30));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let line = all
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("");
    let num = |key: &str| -> u32 {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"), all)
}

/// A UDP socket in the guest connected to `dst`.
fn guest_udp6(s: &Setup, dst: SocketAddr) -> UdpSocket {
    s.guest.run(|| {
        let u = UdpSocket::bind("[::]:0").expect("bind [::]:0 in the guest");
        u.connect(dst).expect("connect udp");
        u
    })
}

/// A TCP server (in the guest) on [::]:`port` that writes "PEER LOCAL\n" and closes.
fn guest_peer_reporter6(s: &Setup, port: u16) -> TcpServer {
    let l: TcpListener = s.guest.run(|| {
        TcpListener::bind(("::", port)).unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"))
    });
    TcpServer::start(l, |mut c: TcpStream| {
        let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let local = c.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = c.write_all(format!("{peer} {local}\n").as_bytes());
        let _ = c.shutdown(std::net::Shutdown::Write);
    })
}

/// Connects from the host namespace to `addr` and reads what a [`guest_peer_reporter6`]
/// says; returns (client's own address, peer seen by the guest, local address there).
fn peer_seen6(s: &Setup, addr: SocketAddr) -> (SocketAddr, String, String) {
    let mut c = s
        .host
        .run(|| connect_tcp(addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| {
            panic!(
                "connect to the forward {addr} from the host namespace: {e}; engine: {}",
                s.engine.stderr()
            )
        });
    let me = c.local_addr().expect("local_addr");
    let mut got = String::new();
    let _ = c.read_to_string(&mut got);
    let mut w = got.split_whitespace();
    let peer = w.next().unwrap_or_default().to_string();
    let local = w.next().unwrap_or_default().to_string();
    assert!(
        !peer.is_empty(),
        "the forward {addr} delivered nothing from the guest's server; engine: {}",
        s.engine.stderr()
    );
    (me, peer, local)
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A dnsmasq on 127.0.0.1:53 and [::1]:53 in the host namespace with fixed records;
/// returns it and its query log path.
fn dnsmasq_loopback(host: &HostNs) -> (BgChild, PathBuf) {
    require_tool("dnsmasq");
    let id = unique_id();
    let log = host.dir.join(format!("dnsmasq6-{id}.log"));
    let out = host.dir.join(format!("dnsmasq6-{id}.out"));
    let pidf = host.dir.join(format!("dnsmasq6-{id}.pid"));
    let mut c = host.command("dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--listen-address=::1",
        "--port=53",
        "--user=root",
        "--group=root",
        "--log-queries",
        "--host-record=www.test.example,192.0.2.10,2001:db8::10",
        "--host-record=six.test.example,2001:db8:5::6",
    ]);
    c.arg(format!("--pid-file={}", pidf.display()));
    c.arg(format!("--log-facility={}", log.display()));
    let mut p = BgChild::start(&mut c, &out);
    let start = Instant::now();
    for sa in [
        SocketAddr::from(([127, 0, 0, 1], 53)),
        v6(Ipv6Addr::LOCALHOST, 53),
    ] {
        host.wait_tcp_listening(sa, &mut p, &out, start);
    }
    (p, log)
}

/// `dig @SERVER +short ARGS` in the guest (bounded); must succeed; returns the output.
fn dig_short(s: &Setup, server: Ipv6Addr, args: &str) -> String {
    require_tool("dig");
    let out = s
        .guest
        .sh(&format!("dig @{server} +time=3 +tries=2 +short {args}"));
    assert!(
        out.status.success(),
        "dig @{server} {args} in the guest failed ({}): {}{}\nengine: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        s.engine.stderr()
    );
    text(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------
// raw sockets in the guest: the RA read back
// ---------------------------------------------------------------------------------------

/// A router advertisement, parsed.
#[derive(Debug, Default, Clone)]
struct Ra {
    src: Option<Ipv6Addr>,
    flags: u8,
    router_lifetime: u16,
    slla: Option<[u8; 6]>,
    mtu: Option<u32>,
    /// (prefix, length, flags, valid, preferred)
    prefixes: Vec<(Ipv6Addr, u8, u8, u32, u32)>,
    rdnss: Vec<Ipv6Addr>,
    rdnss_lifetime: Option<u32>,
    dnssl: Vec<String>,
    option_types: Vec<u8>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn addr16(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

/// Parses the options area of an RA (or one useropt) into `ra`; `None` on a malformed
/// option.
fn parse_options(ra: &mut Ra, mut opts: &[u8]) -> Option<()> {
    while !opts.is_empty() {
        if opts.len() < 8 {
            return None;
        }
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return None;
        }
        let o = &opts[..len];
        ra.option_types.push(o[0]);
        match o[0] {
            1 => ra.slla = Some(o[2..8].try_into().ok()?),
            5 => ra.mtu = Some(be32(&o[4..8])),
            3 if len == 32 => ra.prefixes.push((
                addr16(&o[16..32]),
                o[2],
                o[3],
                be32(&o[4..8]),
                be32(&o[8..12]),
            )),
            25 => {
                ra.rdnss_lifetime = Some(be32(&o[4..8]));
                for c in o[8..].chunks(16) {
                    if c.len() == 16 {
                        ra.rdnss.push(addr16(c));
                    }
                }
            }
            31 => {
                let mut p = &o[8..];
                let mut labels: Vec<String> = Vec::new();
                while let Some((&l, rest)) = p.split_first() {
                    let l = usize::from(l);
                    if l == 0 {
                        if !labels.is_empty() {
                            ra.dnssl.push(labels.join("."));
                            labels.clear();
                        }
                        p = rest;
                        continue;
                    }
                    if l > rest.len() {
                        return None;
                    }
                    labels.push(String::from_utf8_lossy(&rest[..l]).into_owned());
                    p = &rest[l..];
                }
            }
            _ => {}
        }
        opts = &opts[len..];
    }
    Some(())
}

fn parse_ra(msg: &[u8], src: Ipv6Addr) -> Option<Ra> {
    if msg.len() < 16 || msg[0] != 134 || msg[1] != 0 {
        return None;
    }
    let mut ra = Ra {
        src: Some(src),
        flags: msg[5],
        router_lifetime: u16::from_be_bytes([msg[6], msg[7]]),
        ..Ra::default()
    };
    parse_options(&mut ra, &msg[16..])?;
    Some(ra)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: v lives for the call; the length matches.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// What the guest saw of the engine's RAs: parsed RAs from a raw ICMPv6 socket and the
/// options its kernel passed up in RTM_NEWNDUSEROPT messages.
struct RaCapture {
    ras: Vec<Ra>,
    useropts: Ra,
}

/// In the guest: opens a raw ICMPv6 socket and a netlink socket on RTNLGRP_ND_USEROPT,
/// sends router solicitations (one a second) and collects for `dur` (bounded).
fn capture_ras(s: &Setup, dur: Duration) -> io::Result<RaCapture> {
    s.guest.run(move || -> io::Result<RaCapture> {
        let ifname = std::ffi::CString::new("tap0").expect("cstring");
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2) calls; the fds are owned right away.
        let icmp = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMPV6,
            ))?)
        };
        // SAFETY: as above.
        let nl = unsafe {
            OwnedFd::from_raw_fd(cvt(libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            ))?)
        };
        // SAFETY: sockaddr_nl is plain old data.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = 1 << (libc::RTNLGRP_ND_USEROPT - 1);
        // SAFETY: sa is a valid sockaddr_nl for the length given.
        cvt(unsafe {
            libc::bind(
                nl.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        let ifindex_c = libc::c_int::try_from(ifindex).map_err(io::Error::other)?;
        setsockopt_int(
            icmp.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_HOPS,
            255,
        )?;
        setsockopt_int(
            icmp.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            ifindex_c,
        )?;
        let mut cap = RaCapture {
            ras: Vec::new(),
            useropts: Ra::default(),
        };
        let start = Instant::now();
        let mut last_rs: Option<Instant> = None;
        let mut buf = vec![0u8; 65536];
        while start.elapsed() < dur {
            if last_rs.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_rs = Some(Instant::now());
                // SAFETY: sockaddr_in6 is plain old data.
                let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                dst.sin6_family = libc::AF_INET6 as u16;
                dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2).octets();
                dst.sin6_scope_id = ifindex;
                let rs = [133u8, 0, 0, 0, 0, 0, 0, 0];
                // SAFETY: rs and dst are valid for the lengths given. A failure (the
                // link-local address still tentative) is retried a second later.
                unsafe {
                    libc::sendto(
                        icmp.as_raw_fd(),
                        rs.as_ptr().cast(),
                        rs.len(),
                        0,
                        (&dst as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                    )
                };
            }
            let mut fds = [
                libc::pollfd {
                    fd: icmp.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: nl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 200) };
            if n <= 0 {
                continue;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                // SAFETY: sockaddr_in6 is plain old data.
                let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                let mut fl = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
                // SAFETY: buf, from and fl are valid for the call.
                let r = unsafe {
                    libc::recvfrom(
                        icmp.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&mut from as *mut libc::sockaddr_in6).cast(),
                        &mut fl,
                    )
                };
                if r > 0 {
                    let msg = &buf[..r as usize];
                    if let Some(ra) = parse_ra(msg, Ipv6Addr::from(from.sin6_addr.s6_addr)) {
                        cap.ras.push(ra);
                    }
                }
            }
            if fds[1].revents & libc::POLLIN != 0 {
                // SAFETY: buf is valid for its length.
                let r = unsafe {
                    libc::recv(
                        nl.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if r > 0 {
                    let mut m = &buf[..r as usize];
                    // netlink messages: nlmsghdr (16) + nduseroptmsg (16) + options.
                    while m.len() >= 16 {
                        let len = be_ne32(&m[0..4]) as usize;
                        let ty = u16::from_ne_bytes([m[4], m[5]]);
                        if len < 16 || len > m.len() {
                            break;
                        }
                        let body = &m[16..len];
                        if ty == libc::RTM_NEWNDUSEROPT && body.len() >= 16 {
                            let opts_len = usize::from(u16::from_ne_bytes([body[2], body[3]]));
                            let idx = i32::from_ne_bytes([body[4], body[5], body[6], body[7]]);
                            if idx == ifindex_c && body[8] == 134 && 16 + opts_len <= body.len() {
                                let _ = parse_options(&mut cap.useropts, &body[16..16 + opts_len]);
                            }
                        }
                        m = &m[(len + 3) & !3..];
                    }
                }
            }
        }
        Ok(cap)
    })
}

/// Native-endian u32 (netlink headers are host order).
fn be_ne32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Captures RAs in the guest for 4 s (soliciting once a second); fails without any.
fn capture(s: &Setup) -> RaCapture {
    let cap = capture_ras(s, Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("raw ICMPv6 / netlink sockets in the guest: {e}"));
    assert!(
        !cap.ras.is_empty(),
        "no router advertisement reached the guest's raw ICMPv6 socket within 4 s of \
         soliciting; engine: {}",
        s.engine.stderr()
    );
    cap
}

// ---------------------------------------------------------------------------------------
// dhclient -6
// ---------------------------------------------------------------------------------------

/// Runs `dhclient -6 -1 MODE` in the guest (MODE "-N" stateful, "-S" stateless) with a
/// recording script; returns what the script saw for `want_reason`, plus dhclient's
/// output for messages.
fn dhclient6(
    s: &Setup,
    tag: &str,
    mode: &str,
    want_reasons: &[&str],
) -> (HashMap<String, String>, String) {
    require_tool("dhclient");
    let dir = &s.host.dir;
    let out = dir.join(format!("dhclient6-{tag}.env"));
    let script = dir.join(format!("dhclient6-{tag}.sh"));
    let conf = dir.join(format!("dhclient6-{tag}.conf"));
    let lease = dir.join(format!("dhclient6-{tag}.leases"));
    let pidfile = dir.join(format!("dhclient6-{tag}.pid"));
    let _ = std::fs::remove_file(&out);
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             {{ echo \"reason=$reason\"; echo \"ip6=$new_ip6_address\";\n\
             echo \"prefixlen=$new_ip6_prefixlen\"; echo \"dns=$new_dhcp6_name_servers\";\n\
             echo \"search=$new_dhcp6_domain_search\"; echo \"server_id=$new_dhcp6_server_id\";\n\
             echo \"max_life=$new_max_life\"; echo \"preferred_life=$new_preferred_life\";\n\
             echo \"--\"; }} >> '{}'\n\
             exit 0\n",
            out.display()
        ),
    );
    std::fs::write(
        &conf,
        "timeout 20;\nretry 1;\ninitial-interval 1;\n\
         request dhcp6.name-servers, dhcp6.domain-search;\n",
    )
    .expect("write dhclient6.conf");
    let _guard = DhclientGuard {
        pidfile: pidfile.clone(),
    };
    let files = format!(
        "-sf '{}' -cf '{}' -lf '{}' -pf '{}'",
        script.display(),
        conf.display(),
        lease.display(),
        pidfile.display()
    );
    let mut c = s.guest.command("sh");
    c.args(["-c", &format!("exec dhclient -6 -1 -v {mode} {files} tap0")]);
    let res = try_run_timeout(&mut c, Duration::from_secs(40));
    let _ = s.guest.sh(&format!("dhclient -6 -x {files} tap0"));
    let msgs = match res {
        Ok(o) => format!("exit {}: {}{}", o.status, text(&o.stdout), text(&o.stderr)),
        Err((st, o, e)) => format!("killed after 40 s ({st}): {}{}", text(&o), text(&e)),
    };
    let all = std::fs::read_to_string(&out).unwrap_or_default();
    let block = all
        .split("--\n")
        .map(|b| {
            b.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
                .collect::<HashMap<_, _>>()
        })
        .find(|m| {
            m.get("reason")
                .is_some_and(|r| want_reasons.contains(&r.as_str()))
        });
    let block = block.unwrap_or_else(|| {
        panic!(
            "dhclient -6 {mode} ({tag}) never reported {want_reasons:?}; its script saw:\n{all}\n\
             dhclient: {msgs}\nengine: {}",
            s.engine.stderr()
        )
    });
    (block, msgs)
}

// ---------------------------------------------------------------------------------------
// tests: router advertisements and the guest kernel
// ---------------------------------------------------------------------------------------

/// With `--configure -6` the guest kernel autoconfigures from the RA on its own (nobody
/// solicits for it): a non-tentative address in fd00::/64 on tap0 and a default route
/// via fe80::5055:aff:fe00:202, within 5 s.
#[test]
fn guest_kernel_autoconfigures_from_ra() {
    let s = setup6(&[]);
    let t0 = Instant::now();
    let a = wait_slaac(&s, PREFIX, SLAAC_LIMIT);
    eprintln!("SLAAC address {a} after {:?}", t0.elapsed());
    assert!(
        a != GW6 && a != DNS6,
        "the guest's SLAAC address {a} is the gateway's or the DNS's"
    );
    let st = slaac_state(&s, PREFIX);
    let line = st
        .addrs
        .lines()
        .find(|l| l.contains(&format!("inet6 {a}/64")))
        .unwrap_or_else(|| panic!("{a}/64 not on tap0: {}", st.addrs));
    assert!(
        line.contains("dynamic"),
        "{a} should be a dynamic (RA-learned) address: {line}"
    );
    let route = st
        .routes
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_default();
    assert!(
        route.contains("proto ra"),
        "the default route should come from the RA: {route}"
    );
    // the on-link prefix route as well.
    let r = text(&s.guest.sh("ip -6 route show fd00::/64").stdout);
    assert!(
        r.contains("dev tap0"),
        "no on-link route for fd00::/64 via tap0: {r:?}"
    );
}

/// The RA, read back from a raw ICMPv6 socket in the guest after a router solicitation:
/// from fe80::5055:aff:fe00:202, M and O set (DHCPv6 on), router lifetime, source
/// link-layer address 52:55:0a:00:02:02, MTU = --mtu, prefix fd00::/64 on-link and
/// autonomous, RDNSS fd00::3, DNSSL with both --dns-search domains. The guest kernel
/// accepted it and handed RDNSS and DNSSL to userspace (RTM_NEWNDUSEROPT: what
/// rdnssd/systemd-networkd read; Linux keeps no resolver configuration itself).
#[test]
fn ra_options_and_rdnss_reach_guest() {
    let s = setup6(&[
        "--mtu=1400",
        "--dns-search=test.example",
        "--dns-search=corp.example",
    ]);
    let cap = capture(&s);
    let ra = &cap.ras[0];
    assert_eq!(ra.src, Some(ROUTER_LL), "RA source address: {ra:?}");
    assert_eq!(
        ra.flags & 0xc0,
        0xc0,
        "M and O flags with DHCPv6 on: {ra:?}"
    );
    assert!(ra.router_lifetime > 0, "router lifetime 0: {ra:?}");
    assert_eq!(
        ra.slla,
        Some(ROUTER_MAC),
        "source link-layer address: {ra:?}"
    );
    assert_eq!(ra.mtu, Some(1400), "MTU option: {ra:?}");
    let p = ra
        .prefixes
        .iter()
        .find(|p| p.0 == PREFIX)
        .unwrap_or_else(|| panic!("no prefix information for fd00:: in {ra:?}"));
    assert_eq!(p.1, 64, "prefix length: {ra:?}");
    assert_eq!(
        p.2 & 0xc0,
        0xc0,
        "prefix must be on-link and autonomous: {ra:?}"
    );
    assert!(
        p.3 > 0 && p.4 > 0 && p.4 <= p.3,
        "prefix lifetimes (valid {}, preferred {})",
        p.3,
        p.4
    );
    assert_eq!(ra.rdnss, vec![DNS6], "RDNSS: {ra:?}");
    assert!(
        ra.rdnss_lifetime.unwrap_or(0) > 0,
        "RDNSS lifetime 0: {ra:?}"
    );
    assert_eq!(
        ra.dnssl,
        vec!["test.example".to_string(), "corp.example".to_string()],
        "DNSSL: {ra:?}"
    );
    // every RA seen (solicited or periodic) says the same.
    for r in &cap.ras {
        assert_eq!(r.rdnss, ra.rdnss, "RAs differ: {r:?} vs {ra:?}");
        assert_eq!(r.src, ra.src, "RAs differ: {r:?} vs {ra:?}");
    }
    // what the guest kernel passed up (it validates hop limit 255, the link-local
    // source and the checksum before it does).
    assert!(
        !cap.useropts.rdnss.is_empty() && cap.useropts.rdnss.iter().all(|a| *a == DNS6),
        "the guest kernel did not hand RDNSS fd00::3 (alone) to userspace \
         (RTM_NEWNDUSEROPT); it passed up {:?}",
        cap.useropts
    );
    assert!(
        cap.useropts.dnssl.contains(&"test.example".to_string()),
        "the guest kernel did not hand DNSSL to userspace: {:?}",
        cap.useropts
    );
}

/// `--disable-dhcpv6 --disable-dns`: the RA has neither M nor O, no RDNSS and no DNSSL;
/// SLAAC still works.
#[test]
fn ra_without_dhcpv6_and_dns() {
    let s = setup6(&["--disable-dhcpv6", "--disable-dns"]);
    let cap = capture(&s);
    for ra in &cap.ras {
        assert_eq!(ra.flags & 0xc0, 0, "M/O set with --disable-dhcpv6: {ra:?}");
        assert!(
            !ra.option_types.contains(&25) && !ra.option_types.contains(&31),
            "RDNSS/DNSSL sent with --disable-dns and no search list: {ra:?}"
        );
        assert!(
            ra.prefixes.iter().any(|p| p.0 == PREFIX),
            "no prefix: {ra:?}"
        );
    }
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
}

/// `--cidr6 fd42:1:2:3::/64`: the RA carries that prefix and RDNSS fd42:1:2:3::3; the
/// guest autoconfigures in it; fd42:1:2:3::2 reaches the host's ::1.
#[test]
fn cidr6_moves_prefix_gateway_and_dns() {
    let pfx = Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 0);
    let s = setup6(&["--cidr6=fd42:1:2:3::/64"]);
    let cap = capture(&s);
    let ra = &cap.ras[0];
    assert!(
        ra.prefixes.iter().any(|p| p.0 == pfx && p.1 == 64),
        "prefix fd42:1:2:3::/64 not advertised: {ra:?}"
    );
    assert!(
        !ra.prefixes.iter().any(|p| p.0 == PREFIX),
        "fd00::/64 still advertised: {ra:?}"
    );
    assert_eq!(
        ra.rdnss,
        vec![Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 3)],
        "RDNSS: {ra:?}"
    );
    let a = wait_slaac(&s, pfx, SLAAC_WAIT);
    assert!(in_prefix(a, pfx));
    let srv = s.host.tcp_server("[::1]:0", echo_handler);
    s.echo_roundtrip(
        v6(Ipv6Addr::new(0xfd42, 1, 2, 3, 0, 0, 0, 2), srv.port()),
        61,
        200_000,
    );
}

/// Neighbour discovery: the guest resolves fd00::2 and fd00::3 to 52:55:0a:00:02:02
/// (REACHABLE/STALE/DELAY/PROBE after traffic), the router's link-local address too;
/// a solicitation for another address in the prefix is not answered; the guest's own
/// addresses pass duplicate address detection (the engine never answers DAD), also one
/// added by hand.
#[test]
fn ndp_answers_gateway_and_dns_never_dad() {
    let s = setup6(&[]);
    let a = wait_slaac(&s, PREFIX, SLAAC_WAIT);
    s.guest.sh_ok("ip -6 addr add fd00::abcd/64 dev tap0");
    let nobody = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x99);
    // traffic that needs neighbour resolution (discard port: nothing is expected back).
    for dst in [GW6, DNS6, nobody] {
        let u = guest_udp6(&s, v6(dst, 9));
        let _ = u.send(b"x");
    }
    let want_mac = "52:55:0a:00:02:02";
    let start = Instant::now();
    let neigh = loop {
        let n = text(&s.guest.sh("ip -6 neigh show dev tap0").stdout);
        let ok = |ip: Ipv6Addr| {
            n.lines().any(|l| {
                l.split_whitespace().next() == Some(&ip.to_string())
                    && l.contains(&format!("lladdr {want_mac}"))
                    && ["REACHABLE", "STALE", "DELAY", "PROBE"]
                        .iter()
                        .any(|st| l.contains(st))
            })
        };
        if ok(GW6) && ok(DNS6) && ok(ROUTER_LL) {
            break n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the guest did not resolve fd00::2, fd00::3 and {ROUTER_LL} to {want_mac} \
             within 5 s:\n{n}\nengine: {}",
            s.engine.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    };
    // fd00::99: nobody is there, so the engine must not answer (the kernel gives up
    // after 3 solicitations, one a second).
    thread::sleep(Duration::from_millis(3500));
    let n = text(&s.guest.sh("ip -6 neigh show dev tap0").stdout);
    let l99 = n
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&nobody.to_string()))
        .unwrap_or("");
    assert!(
        !l99.contains("lladdr"),
        "a neighbour solicitation for {nobody} (nobody) was answered: {l99:?}\nall:\n{n}\n\
         (earlier: {neigh})"
    );
    // DAD: at least 3 s since the hand-added address appeared (1 probe, 1 s).
    let addrs = text(&s.guest.sh("ip -6 addr show dev tap0").stdout);
    assert!(
        !addrs.contains("dadfailed") && !addrs.contains("tentative"),
        "an address of the guest failed or did not finish duplicate address detection \
         (the engine must not answer DAD):\n{addrs}"
    );
    for want in [
        a.to_string(),
        "fd00::abcd".to_string(),
        "fe80::".to_string(),
    ] {
        assert!(
            addrs.contains(&format!("inet6 {want}")),
            "{want} missing on tap0:\n{addrs}"
        );
    }
    // and the hand-added address is usable: a ping sourced from it gets an answer.
    let out = s
        .guest
        .sh("ping -6 -n -c 2 -i 0.2 -W 2 -I fd00::abcd fd00::2");
    assert!(
        out.status.success(),
        "ping from fd00::abcd to fd00::2: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// tests: DNS
// ---------------------------------------------------------------------------------------

/// `dig AAAA` (and A) through fd00::3 over UDP and over TCP, answered by a dnsmasq on
/// 127.0.0.1 in the host namespace (`--dns-upstream 127.0.0.1`); it logged the queries.
#[test]
fn dns_aaaa_over_udp_and_tcp_through_fd00_3() {
    let s = setup6(&["--dns-upstream=127.0.0.1"]);
    let (_dm, log) = dnsmasq_loopback(&s.host);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    for tcp in ["", "+tcp"] {
        let got = dig_short(&s, DNS6, &format!("{tcp} AAAA www.test.example"));
        assert_eq!(got, "2001:db8::10", "AAAA over {tcp:?} through fd00::3");
        let got = dig_short(&s, DNS6, &format!("{tcp} A www.test.example"));
        assert_eq!(got, "192.0.2.10", "A over {tcp:?} through fd00::3");
        let got = dig_short(&s, DNS6, &format!("{tcp} AAAA six.test.example"));
        assert_eq!(got, "2001:db8:5::6", "AAAA over {tcp:?} through fd00::3");
    }
    let l = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        l.matches("query[AAAA] www.test.example").count() >= 2,
        "dnsmasq did not log both AAAA queries:\n{l}"
    );
}

/// An IPv6 upstream: `--dns-upstream [::1]:53`; the dnsmasq logs the queries from ::1.
#[test]
fn dns_through_fd00_3_to_ipv6_upstream() {
    let s = setup6(&["--dns-upstream=[::1]:53"]);
    let (_dm, log) = dnsmasq_loopback(&s.host);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    for tcp in ["", "+tcp"] {
        let got = dig_short(&s, DNS6, &format!("{tcp} AAAA six.test.example"));
        assert_eq!(
            got, "2001:db8:5::6",
            "AAAA over {tcp:?} via the [::1] upstream"
        );
    }
    let l = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        l.lines()
            .any(|x| x.contains("query[AAAA] six.test.example from ::1")),
        "dnsmasq did not see the query from ::1:\n{l}"
    );
}

// ---------------------------------------------------------------------------------------
// tests: NAT
// ---------------------------------------------------------------------------------------

/// TCP downloads (4 MB, sha256) from a server on [2001:db8:1::1] and from one on the
/// host namespace's [::1] through [fd00::2]; an echo round trip both ways too.
#[test]
fn tcp_download_from_ipv6_host_and_host_loopback() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let len = 4 * 1024 * 1024 + 77;
    let outside = s
        .host
        .tcp_server("[2001:db8:1::1]:0", http_handler(71, len));
    let lo = s.host.tcp_server("[::1]:0", http_handler(72, len));
    download_check(&s, v6(HOST6, outside.port()), 71, len);
    download_check(&s, v6(GW6, lo.port()), 72, len);
    assert_eq!(outside.accepted(), 1, "connections to [2001:db8:1::1]");
    assert_eq!(lo.accepted(), 1, "connections to [::1]");
    let e1 = s.host.tcp_server("[2001:db8:1::1]:0", echo_handler);
    let e2 = s.host.tcp_server("[::1]:0", echo_handler);
    s.echo_roundtrip(v6(HOST6, e1.port()), 73, 1_000_000);
    s.echo_roundtrip(v6(GW6, e2.port()), 74, 1_000_000);
}

/// A closed port on 2001:db8:1::1 is refused (the host's RST, no fake accept).
#[test]
fn tcp_closed_port_refused() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let port = s.host.free_port("[2001:db8:1::1]");
    let r = s.guest.tcp_connect(v6(HOST6, port));
    match r {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!("connect to closed [2001:db8:1::1]:{port} should be refused: {other:?}"),
    }
}

/// UDP echo to [2001:db8:1::1] and to [fd00::2] (the host's ::1): 20 datagrams of
/// different sizes each, every reply equal to what was sent.
#[test]
fn udp_echo_to_ipv6_host_and_host_loopback() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let outside = s.host.udp_echo("[2001:db8:1::1]:0");
    let lo = s.host.udp_echo("[::1]:0");
    for (echo, dst) in [
        (&outside, v6(HOST6, outside.addr.port())),
        (&lo, v6(GW6, lo.addr.port())),
    ] {
        let u = guest_udp6(&s, dst);
        for i in 0..20u64 {
            let len = 1 + (i as usize * 71) % 1400;
            let data = pattern(800 + i, len);
            let got = udp_request(&u, &data, 3, Duration::from_secs(2)).unwrap_or_else(|e| {
                panic!(
                    "UDP echo #{i} via {dst}: {e}; engine: {}",
                    s.engine.stderr()
                )
            });
            assert_eq!(got, data, "UDP echo #{i} via {dst}: content");
        }
        assert!(
            echo.count() >= 20,
            "the server behind {dst} counted {} datagrams",
            echo.count()
        );
    }
}

/// A UDP server in the host namespace on `addr`: a request "N" (decimal) is answered
/// with `pattern(N, N)`.
fn udp_sized_replier(host: &HostNs, addr: &str) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = host.udp_socket(addr);
    let a = sock.local_addr().expect("local_addr");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let h = thread::spawn(move || {
        let start = Instant::now();
        let mut buf = [0u8; 64];
        let mut answered = 0;
        while answered < 8 && start.elapsed() < Duration::from_secs(30) {
            if let Ok((n, from)) = sock.recv_from(&mut buf)
                && let Some(len) = std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|t| t.trim().parse::<usize>().ok())
            {
                let _ = sock.send_to(&pattern(len as u64, len), from);
                answered += 1;
            }
        }
    });
    (a, h)
}

/// UDP replies larger than the MTU from 2001:db8:1::1 reach the guest intact (the
/// engine fragments IPv6 toward the guest).
#[test]
fn udp_large_replies_fragmented_to_guest() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let (addr, _h) = udp_sized_replier(&s.host, "[2001:db8:1::1]:0");
    let u = guest_udp6(&s, addr);
    for len in [1600usize, 8000, 30000, 65000] {
        let got = udp_request(&u, len.to_string().as_bytes(), 3, Duration::from_secs(3))
            .unwrap_or_else(|e| {
                panic!(
                    "a {len}-byte UDP reply from {addr} never reached the guest: {e}; engine: {}",
                    s.engine.stderr()
                )
            });
        assert_eq!(got.len(), len, "{len}-byte UDP reply: length");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&pattern(len as u64, len)),
            "{len}-byte UDP reply: content"
        );
    }
}

/// UDP datagrams larger than the MTU sent by the guest (IPv6 fragments) reach the server
/// whole, and the echo comes back intact.
#[test]
fn udp_fragmented_from_guest() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let echo = s.host.udp_echo("[2001:db8:1::1]:0");
    let dst = v6(HOST6, echo.addr.port());
    let u = guest_udp6(&s, dst);
    for (i, len) in [8000usize, 30000].into_iter().enumerate() {
        let data = pattern(900 + i as u64, len);
        let got = udp_request(&u, &data, 3, Duration::from_secs(3)).unwrap_or_else(|e| {
            panic!(
                "{len}-byte UDP echo via {dst}: {e}; the server got sizes {:?}; engine: {}",
                echo.sizes.lock().map(|v| v.clone()).unwrap_or_default(),
                s.engine.stderr()
            )
        });
        assert_eq!(got.len(), len, "{len}-byte UDP echo: reply length");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&data),
            "{len}-byte UDP echo content"
        );
    }
}

/// ping6 from the guest to 2001:db8:1::1 and to fd00::2: every echo answered; to
/// 2001:db8:1::99 (an on-link address nobody holds): none (no fake replies).
#[test]
fn ping6_to_ipv6_host_and_gateway() {
    let s = setup6(&[]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    for dst in [HOST6, GW6] {
        let (tx, rx, out) = ping6(&s, dst, 4);
        assert!(
            tx == 4 && rx == 4,
            "ping6 {dst}: {rx}/{tx} answered:\n{out}\nengine: {}",
            s.engine.stderr()
        );
    }
    let (tx, rx, out) = ping6(&s, Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x99), 2);
    assert!(
        tx == 2 && rx == 0,
        "ping6 to 2001:db8:1::99 (nobody) must not be answered: {rx}/{tx}:\n{out}"
    );
}

/// `--disable-host-loopback`: [fd00::2] refuses TCP and UDP to servers that listen on
/// the host's [::1] (they never see anything), while 2001:db8:1::1 still works.
#[test]
fn disable_host_loopback_blocks_fd00_2() {
    let s = setup6(&["--disable-host-loopback"]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let tcp_lo = s.host.tcp_server("[::1]:0", echo_handler);
    let udp_lo = s.host.udp_echo("[::1]:0");
    match s.guest.tcp_connect(v6(GW6, tcp_lo.port())) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => panic!(
            "TCP to [fd00::2]:{} with --disable-host-loopback should be refused, got {other:?}",
            tcp_lo.port()
        ),
    }
    let u = guest_udp6(&s, v6(GW6, udp_lo.addr.port()));
    match udp_request(&u, b"hello", 2, Duration::from_secs(2)) {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::PermissionDenied
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            ) => {}
        other => panic!(
            "UDP to [fd00::2] with --disable-host-loopback should get an ICMPv6 \
             unreachable (an error on the socket), got {other:?}"
        ),
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(tcp_lo.accepted(), 0, "the [::1] TCP server was reached");
    assert_eq!(udp_lo.count(), 0, "the [::1] UDP server was reached");
    // the outside still works.
    let e = s.host.tcp_server("[2001:db8:1::1]:0", echo_handler);
    s.echo_roundtrip(v6(HOST6, e.port()), 75, 100_000);
    let outside = s.host.udp_echo("[2001:db8:1::1]:0");
    let u2 = guest_udp6(&s, v6(HOST6, outside.addr.port()));
    let got =
        udp_request(&u2, b"still there", 3, Duration::from_secs(2)).expect("UDP echo outside");
    assert_eq!(got, b"still there");
}

/// The rootless shape (engine as uid 65534, guest made by uid 65534): SLAAC, TCP to
/// 2001:db8:1::1 and ping6 work.
#[test]
fn rootless_shape_ipv6() {
    let opts = EngineOpts {
        args: vec!["--configure".into(), "-6".into()],
        as_nobody: true,
        ..Default::default()
    };
    let s = Setup::with(Owner::Nobody, &opts);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let e = s.host.tcp_server("[2001:db8:1::1]:0", echo_handler);
    s.echo_roundtrip(v6(HOST6, e.port()), 76, 500_000);
    let (tx, rx, out) = ping6(&s, HOST6, 2);
    assert!(tx == 2 && rx == 2, "ping6 as nobody: {rx}/{tx}:\n{out}");
}

// ---------------------------------------------------------------------------------------
// tests: port forwards
// ---------------------------------------------------------------------------------------

/// `-p [::1]:P1:9000` and `-p [::]:P2:9000` reach the guest's IPv6 address (its server
/// on [::]:9000 sees its own fd00:: address as the local end); a ::1 client is seen as
/// the guest's own address (`--splice`; fd00::2 under slirp4netns), a client from 2001:db8:1::1 as itself (address and port); data goes both
/// ways intact.
#[test]
fn ipv6_port_forward_with_client_address() {
    let host = HostNs::new();
    let p1 = host.free_port("[::1]");
    let p2 = host.free_port("[::]");
    let p3 = host.free_port("[::]");
    let guest = Guest::new(Owner::Root);
    let (r1, r2, r3) = (
        format!("[::1]:{p1}:9000"),
        format!("[::]:{p2}:9000"),
        format!("[::]:{p3}:9001"),
    );
    let mut args = vec!["-6", "-p", &r1, "-p", &r2, "-p", &r3];
    if !engine_is_slirp4netns() {
        args.push("--splice"); // the ::1 clients take the spliced path
    }
    let opts = EngineOpts::configure(&args);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let a = wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let _srv = guest_peer_reporter6(&s, 9000);
    let _echo = {
        let l: TcpListener = s
            .guest
            .run(|| TcpListener::bind("[::]:9001").expect("bind 9001"));
        TcpServer::start(l, echo_handler)
    };
    let me_local = format!("[{a}]:9000");

    // With --splice, usernet joins loopback clients through the guest's own loopback: the
    // guest sees them as its own address (slirp4netns: as the gateway).
    let lo_seen = if engine_is_slirp4netns() {
        format!("[{GW6}]:")
    } else {
        format!("[{a}]:")
    };
    let (_, peer, local) = peer_seen6(&s, v6(Ipv6Addr::LOCALHOST, p1));
    assert!(
        peer.starts_with(&lo_seen),
        "a ::1 client of [::1]:{p1} should be seen as {lo_seen}, the guest saw {peer:?}"
    );
    assert_eq!(
        local, me_local,
        "the forward should reach the guest's IPv6 address {a}"
    );

    let (me, peer, local) = peer_seen6(&s, v6(HOST6, p2));
    assert_eq!(
        me.ip(),
        std::net::IpAddr::V6(HOST6),
        "the test client should have used 2001:db8:1::1 as its source"
    );
    assert_eq!(
        peer,
        me.to_string(),
        "a client from 2001:db8:1::1 should be seen with its own address and port"
    );
    assert_eq!(local, me_local, "forward [::]:{p2} lands on {a}");

    let (_, peer, _) = peer_seen6(&s, v6(Ipv6Addr::LOCALHOST, p2));
    assert!(
        peer.starts_with(&lo_seen),
        "a ::1 client of [::]:{p2} should be seen as {lo_seen}, the guest saw {peer:?}"
    );

    // 1 MB both ways through the forward.
    let data = pattern(77, 1_000_000);
    let got = s.host.run(|| -> io::Result<Vec<u8>> {
        let mut c = connect_tcp(v6(HOST6, p3), Duration::from_secs(5))?;
        let mut w = c.try_clone()?;
        let d = data.clone();
        let wr = thread::spawn(move || -> io::Result<()> {
            w.write_all(&d)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let (got, err) = read_to_end_result(&mut c);
        wr.join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        err.map_or(Ok(got), Err)
    });
    let got = got.unwrap_or_else(|e| panic!("echo through [::]:{p3}: {e}"));
    assert_eq!(got.len(), data.len(), "echo through the forward: length");
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&data),
        "echo through the forward"
    );
}

// ---------------------------------------------------------------------------------------
// tests: DHCPv6
// ---------------------------------------------------------------------------------------

/// ISC `dhclient -6` (stateful, IA_NA) gets an address in fd00::/64 (neither the
/// gateway's nor the DNS's, with lifetimes), the DNS server fd00::3 and the search
/// list; the address is usable.
#[test]
fn dhclient6_stateful_address() {
    let s = setup6(&["--dns-search=test.example"]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let (env, msgs) = dhclient6(&s, "n", "-N", &["BOUND6"]);
    let who = format!("dhclient -6 -N saw {env:?} ({msgs})");
    eprintln!("dhclient -6 -N: {env:?}");
    let ip: Ipv6Addr = env
        .get("ip6")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 address: {who}"));
    assert!(in_prefix(ip, PREFIX), "{ip} not in fd00::/64: {who}");
    assert!(
        ip != GW6 && ip != DNS6 && ip != PREFIX,
        "{ip} is reserved: {who}"
    );
    assert_eq!(env.get("dns").map(String::as_str), Some("fd00::3"), "{who}");
    assert!(
        env.get("search")
            .is_some_and(|v| v.contains("test.example")),
        "search list: {who}"
    );
    assert!(
        env.get("max_life")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "valid lifetime: {who}"
    );
    assert!(
        env.get("server_id").is_some_and(|v| !v.is_empty()),
        "server id: {who}"
    );
    // the leased address works: configured by hand (the script only records), a ping
    // sourced from it reaches the gateway and TCP from it reaches 2001:db8:1::1.
    s.guest
        .sh_ok(&format!("ip -6 addr add {ip}/128 dev tap0 nodad"));
    let out = s
        .guest
        .sh(&format!("ping -6 -n -c 2 -i 0.2 -W 2 -I {ip} {GW6}"));
    assert!(
        out.status.success(),
        "ping from the leased {ip} to {GW6}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `dhclient -6 -S` (stateless, Information-request) gets the DNS server fd00::3 and
/// the search list.
#[test]
fn dhclient6_stateless_information() {
    let s = setup6(&["--dns-search=test.example"]);
    wait_slaac(&s, PREFIX, SLAAC_WAIT);
    let (env, msgs) = dhclient6(&s, "s", "-S", &["BOUND6", "RENEW6", "INFORM6"]);
    let who = format!("dhclient -6 -S saw {env:?} ({msgs})");
    eprintln!("dhclient -6 -S: {env:?}");
    assert_eq!(env.get("dns").map(String::as_str), Some("fd00::3"), "{who}");
    assert!(
        env.get("search")
            .is_some_and(|v| v.contains("test.example")),
        "search list: {who}"
    );
    assert!(
        env.get("ip6").is_none_or(|v| v.is_empty()),
        "an Information-request must not lease an address: {who}"
    );
}
