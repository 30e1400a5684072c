//! Basic end-to-end behaviour: `--configure`, gateway, downloads, outside TCP/UDP and
//! the options that shape the virtual network.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use usernet_tests::*;

fn gw(port: u16) -> SocketAddr {
    SocketAddr::from((GATEWAY, port))
}

fn outside(port: u16) -> SocketAddr {
    SocketAddr::from((HOST_ADDR, port))
}

/// Downloads `url` with curl in the guest; returns the body's sha256 and seconds taken.
fn curl_sha(g: &Guest, url: &str) -> (String, usize, f64) {
    require_tool("curl");
    let start = Instant::now();
    let mut c = g.command("curl");
    c.args(["-sS", "--fail", "--max-time", "120", "-o", "-", url]);
    let out = run_timeout(&mut c, Duration::from_secs(150));
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "curl {url} in the guest failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (sha256_hex(&out.stdout), out.stdout.len(), secs)
}

#[test]
fn configure_sets_address_route_mtu_lo() {
    let s = Setup::configured(&[]);
    let addr = s.guest.sh_ok("ip -o -4 addr show dev tap0");
    assert!(
        addr.contains("inet 10.0.2.100/24"),
        "tap0 should have 10.0.2.100/24, got: {addr}"
    );
    let route = s.guest.sh_ok("ip -4 route show default");
    assert!(
        route.contains("default via 10.0.2.2 dev tap0"),
        "default route via 10.0.2.2 expected, got: {route}"
    );
    let link = s.guest.sh_ok("ip -o link show dev tap0");
    assert!(link.contains("mtu 1500 "), "tap0 MTU 1500 expected: {link}");
    assert!(link.contains(",UP"), "tap0 should be up: {link}");
    let lo = s.guest.sh_ok("ip -o link show dev lo");
    assert!(lo.contains(",UP"), "lo should be up: {lo}");
    let lo4 = s.guest.sh_ok("ip -o -4 addr show dev lo");
    assert!(
        lo4.contains("127.0.0.1/8"),
        "lo should have 127.0.0.1: {lo4}"
    );
}

#[test]
fn ping_gateway() {
    require_tool("busybox");
    let s = Setup::configured(&[]);
    let out = s.guest.sh("busybox ping -c 3 -W 5 10.0.2.2");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 packets received"),
        "ping 10.0.2.2 from the guest: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn download_50mb_from_host_loopback() {
    const LEN: usize = 50 * 1024 * 1024;
    let s = Setup::configured(&[]);
    let srv = s.host.tcp_server("127.0.0.1:0", http_handler(50, LEN));
    let cpu0 = s.engine.cpu_seconds().unwrap_or(0.0);
    let url = format!("http://10.0.2.2:{}/blob", srv.port());
    let (sha, len, secs) = curl_sha(&s.guest, &url);
    let cpu1 = s.engine.cpu_seconds().unwrap_or(0.0);
    assert_eq!(len, LEN, "download length");
    assert_eq!(sha, sha256_hex(&pattern(50, LEN)), "download sha256");
    eprintln!(
        "50 MB download via 10.0.2.2 with {}: {secs:.2} s, engine CPU {:.2} s",
        engine_bin().display(),
        cpu1 - cpu0
    );
    drop(srv);
    drop(s);
    // figures for the reference engine in the same run (not asserted: a benchmark is not
    // a test); run with --nocapture to see them.
    let reference = std::path::Path::new("/usr/bin/slirp4netns");
    if !engine_is_slirp4netns() && reference.is_file() {
        let host = HostNs::new();
        let guest = Guest::new(Owner::Root);
        let e = Engine::start_with(reference, &host, &guest, &EngineOpts::configure(&[]));
        let srv = host.tcp_server("127.0.0.1:0", http_handler(50, LEN));
        let cpu0 = e.cpu_seconds().unwrap_or(0.0);
        let (sha, _, secs) = curl_sha(&guest, &format!("http://10.0.2.2:{}/b", srv.port()));
        let cpu1 = e.cpu_seconds().unwrap_or(0.0);
        assert_eq!(
            sha,
            sha256_hex(&pattern(50, LEN)),
            "reference download sha256"
        );
        eprintln!(
            "50 MB download via 10.0.2.2 with {}: {secs:.2} s, engine CPU {:.2} s",
            reference.display(),
            cpu1 - cpu0
        );
    }
}

#[test]
fn tcp_and_udp_to_outside() {
    let s = Setup::configured(&[]);
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(outside(srv.port()), 1, 1 << 20);
    let echo = s.host.udp_echo("198.51.100.1:0");
    let sock = s.guest.udp_socket();
    let port = echo.addr.port();
    s.guest
        .run(|| sock.connect(outside(port)))
        .expect("connect");
    for i in 0..20u64 {
        let data = pattern(100 + i, 1000);
        let got = udp_request(&sock, &data, 3, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("UDP echo {i} via 198.51.100.1: {e}"));
        assert_eq!(got, data, "UDP echo {i} content");
    }
    // every datagram reached the real server (no local fake answers).
    assert!(
        echo.count() >= 20,
        "UDP server got {} datagrams",
        echo.count()
    );
}

#[test]
fn disable_host_loopback() {
    let s = Setup::configured(&["--disable-host-loopback"]);
    let lo_srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    let lo_udp = s.host.udp_echo("127.0.0.1:0");
    let r = s.guest.tcp_connect(gw(lo_srv.port()));
    assert!(
        r.is_err(),
        "TCP to 10.0.2.2 must fail with --disable-host-loopback"
    );
    let sock = s.guest.udp_socket();
    let up = lo_udp.addr.port();
    s.guest.run(|| sock.connect(gw(up))).expect("connect");
    let r = udp_request(&sock, b"hello", 3, Duration::from_millis(700));
    assert!(r.is_err(), "UDP to 10.0.2.2 must get no reply: {r:?}");
    // nor through the DNS address (port other than 53) or the broadcast address.
    let r = s
        .guest
        .tcp_connect(SocketAddr::from(([10, 0, 2, 3], lo_srv.port())));
    assert!(r.is_err(), "TCP to 10.0.2.3:{} must fail", lo_srv.port());
    let r = s.guest.run(|| -> std::io::Result<()> {
        let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
        u.set_broadcast(true)?;
        u.send_to(b"bcast", SocketAddr::from(([255, 255, 255, 255], up)))?;
        u.send_to(b"dns-addr", SocketAddr::from(([10, 0, 2, 3], up)))?;
        Ok(())
    });
    r.expect("send UDP to 255.255.255.255 / 10.0.2.3");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lo_srv.accepted(), 0, "host loopback TCP server was reached");
    assert_eq!(lo_udp.count(), 0, "host loopback UDP server was reached");
    // the outside still works.
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(outside(srv.port()), 2, 100_000);
    let echo = s.host.udp_echo("198.51.100.1:0");
    let sock = s.guest.udp_socket();
    let ep = echo.addr.port();
    s.guest.run(|| sock.connect(outside(ep))).expect("connect");
    let got = udp_request(&sock, b"ping", 3, Duration::from_secs(2)).expect("UDP outside");
    assert_eq!(got, b"ping");
}

/// `--cidr` semantics (net+100 guest, net+2 gateway) as slirp4netns has them.
#[test]
fn cidr_option() {
    let s = Setup::configured(&["--cidr=10.0.3.0/24"]);
    let addr = s.guest.sh_ok("ip -o -4 addr show dev tap0");
    assert!(addr.contains("inet 10.0.3.100/24"), "tap0: {addr}");
    let route = s.guest.sh_ok("ip -4 route show default");
    assert!(route.contains("via 10.0.3.2"), "route: {route}");
    let srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    s.echo_roundtrip(SocketAddr::from(([10, 0, 3, 2], srv.port())), 3, 200_000);
}

#[test]
fn macaddress_option() {
    let s = Setup::configured(&["--macaddress=02:11:22:33:44:55"]);
    let link = s.guest.sh_ok("ip -o link show dev tap0");
    assert!(
        link.contains("link/ether 02:11:22:33:44:55"),
        "tap0 MAC: {link}"
    );
    let srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    s.echo_roundtrip(gw(srv.port()), 4, 10_000);
}

#[test]
fn mtu_65520() {
    const LEN: usize = 20 * 1024 * 1024;
    let s = Setup::configured(&["--mtu=65520"]);
    let link = s.guest.sh_ok("ip -o link show dev tap0");
    assert!(link.contains("mtu 65520 "), "tap0 MTU: {link}");
    let srv = s.host.tcp_server("127.0.0.1:0", http_handler(65, LEN));
    let (sha, len, _) = curl_sha(&s.guest, &format!("http://10.0.2.2:{}/", srv.port()));
    assert_eq!(len, LEN);
    assert_eq!(sha, sha256_hex(&pattern(65, LEN)));
    let out = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(outside(out.port()), 5, 4 << 20);
}

/// Guest namespace created by uid 65534, engine run as uid 65534 (with a private 0666
/// /dev/net/tun, as a rootless user has it).
#[test]
fn rootless_shape() {
    let opts = EngineOpts {
        as_nobody: true,
        ..EngineOpts::configure(&[])
    };
    let s = Setup::with(Owner::Nobody, &opts);
    let st = std::fs::read_to_string(format!("/proc/{}/status", s.engine.pid)).unwrap_or_default();
    let uid_line = st.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65534"),
        "engine should run as uid 65534: {uid_line}"
    );
    let addr = s.guest.sh_ok("ip -o -4 addr show dev tap0");
    assert!(addr.contains("inet 10.0.2.100/24"), "tap0: {addr}");
    let srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    s.echo_roundtrip(gw(srv.port()), 6, 1 << 20);
    let out = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(outside(out.port()), 7, 1 << 20);
}

/// `--outbound-addr` as an address and as an interface name: the outside server sees the
/// chosen source address (198.51.100.2, on ext0p inside the host namespace).
#[test]
fn outbound_addr_option() {
    let host = HostNs::new();
    host.exec_ok(&["ip", "addr", "add", "198.51.100.2/24", "dev", "ext0p"]);
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    let tx = std::sync::Mutex::new(tx);
    let srv = host.tcp_server("198.51.100.1:0", move |mut c: std::net::TcpStream| {
        if let (Ok(peer), Ok(t)) = (c.peer_addr(), tx.lock()) {
            let _ = t.send(peer);
        }
        let _ = std::io::Write::write_all(&mut c, b"hi");
    });
    for (opt, want) in [
        (None, [198, 51, 100, 1]),
        (Some("--outbound-addr=198.51.100.2"), [198, 51, 100, 2]),
        (Some("--outbound-addr=ext0p"), [198, 51, 100, 2]),
    ] {
        let guest = Guest::new(Owner::Root);
        let extra: Vec<&str> = opt.into_iter().collect();
        let engine = Engine::start(&host, &guest, &EngineOpts::configure(&extra));
        let mut c = guest
            .tcp_connect(outside(srv.port()))
            .unwrap_or_else(|e| panic!("connect with {opt:?}: {e}"));
        let (got, _) = read_to_end_result(&mut c);
        assert_eq!(got, b"hi", "reply with {opt:?}");
        let peer = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server saw no connection");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::from(want),
            "source address seen by the outside with {opt:?}"
        );
        drop(engine);
    }
}
