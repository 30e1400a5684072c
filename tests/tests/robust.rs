//! Robustness and lifecycle: garbage frames, lone fragments, TAP removal, signals, the
//! ready and exit fds.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use usernet_tests::*;

fn outside(port: u16) -> SocketAddr {
    SocketAddr::from((HOST_ADDR, port))
}

/// Against slirp4netns 1.2.0 / libslirp 4.7.0 this fails: the lone *last* fragment
/// (MF=0, offset 2000, id 0x4444) alone kills it with SIGBUS.
#[test]
fn garbage_frames_and_lone_fragment() {
    let mut s = Setup::configured(&[]);
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    let udp = s.host.udp_echo("198.51.100.1:0");
    s.echo_roundtrip(outside(srv.port()), 40, 10_000);
    let neigh = s.guest.sh_ok("ip neigh show 10.0.2.2 dev tap0");
    let gw_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no neighbour entry for 10.0.2.2: {neigh}"));
    let link = s.guest.sh_ok("ip -o link show dev tap0");
    let my_mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no MAC on tap0: {link}"));
    let udp_port = udp.addr.port();
    let sent = s.guest.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on tap0");
        let mut frames: Vec<Vec<u8>> = Vec::new();
        let g = Ipv4Addr::new(10, 0, 2, 100);
        // lone first fragment of a UDP datagram to the echo server (never completed).
        let mut udp_hdr = Vec::new();
        udp_hdr.extend_from_slice(&40000u16.to_be_bytes());
        udp_hdr.extend_from_slice(&udp_port.to_be_bytes());
        udp_hdr.extend_from_slice(&3000u16.to_be_bytes());
        udp_hdr.extend_from_slice(&[0, 0]);
        udp_hdr.extend_from_slice(&pattern(41, 1000));
        frames.push(ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            17,
            0x4242,
            (true, 0),
            &udp_hdr,
        ));
        // a lone middle and a lone last fragment with other ids.
        frames.push(ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            17,
            0x4343,
            (true, 125),
            &pattern(42, 1000),
        ));
        frames.push(ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            17,
            0x4444,
            (false, 250),
            &pattern(43, 500),
        ));
        // overlapping fragments.
        frames.push(ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            17,
            0x4545,
            (true, 0),
            &pattern(44, 800),
        ));
        frames.push(ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            17,
            0x4545,
            (true, 50),
            &pattern(45, 800),
        ));
        // truncated and malformed headers.
        let mut base = ipv4_frame(
            gw_mac,
            my_mac,
            g,
            HOST_ADDR,
            6,
            1,
            (false, 0),
            &pattern(46, 40),
        );
        frames.push(base[..14].to_vec()); // ethernet header only, IPv4 type
        frames.push(base[..20].to_vec()); // 6 bytes of IPv4 header
        let mut bad_len = base.clone();
        bad_len[16..18].copy_from_slice(&60000u16.to_be_bytes()); // total length too big
        frames.push(bad_len);
        let mut bad_ihl = base.clone();
        bad_ihl[14] = 0x4f; // IHL 60 bytes > frame
        frames.push(bad_ihl);
        let mut bad_ihl2 = base.clone();
        bad_ihl2[14] = 0x41; // IHL 4 bytes < 20
        frames.push(bad_ihl2);
        let mut bad_ck = base.clone();
        bad_ck[24] ^= 0xff;
        frames.push(bad_ck);
        base[14 + 20 + 12] = 0x20; // TCP data offset 2 (< 5)
        frames.push(base.clone());
        base[14 + 20 + 12] = 0xf0; // TCP data offset 15 > segment
        frames.push(base);
        let mut v6 = Vec::new();
        v6.extend_from_slice(&gw_mac);
        v6.extend_from_slice(&my_mac);
        v6.extend_from_slice(&[0x86, 0xdd]);
        v6.extend_from_slice(&pattern(47, 30));
        frames.push(v6);
        let mut arp = Vec::new();
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&my_mac);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&pattern(48, 10));
        frames.push(arp);
        // random frames with random and fixed ethertypes.
        for i in 0..300u64 {
            let mut f = pattern(500 + i, 14 + (i as usize * 53) % 1400);
            match i % 4 {
                0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                1 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                2 => f[12..14].copy_from_slice(&[0x86, 0xdd]),
                _ => {}
            }
            if i % 2 == 0 {
                f[..6].copy_from_slice(&gw_mac);
            }
            frames.push(f);
        }
        let mut sent = 0;
        for f in &frames {
            if ps.send(f).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    assert!(
        sent > 300,
        "only {sent} garbage frames could be sent into tap0"
    );
    std::thread::sleep(Duration::from_millis(500));
    s.engine
        .assert_alive("after garbage frames and lone fragments were sent into tap0");
    // the engine still serves.
    s.echo_roundtrip(outside(srv.port()), 49, 200_000);
    let sizes = udp.sizes.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        sizes.is_empty(),
        "incomplete fragments must not be delivered as datagrams: {sizes:?}"
    );
}

#[test]
fn engine_survives_garbage_and_is_alive() {
    // same as above but checks liveness explicitly after a burst of plain junk.
    let mut s = Setup::configured(&[]);
    s.guest.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on tap0");
        for i in 0..1000u64 {
            let _ = ps.send(&pattern(9000 + i, 14 + (i as usize * 7) % 1500));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    s.engine.assert_alive("after 1000 junk frames");
    let srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    s.echo_roundtrip(SocketAddr::from((GATEWAY, srv.port())), 50, 50_000);
}

/// tap0 removed inside the guest: the engine exits non-zero within a few seconds and does
/// not spin meanwhile. Fails against slirp4netns 1.2.0, which keeps running at 100% CPU.
#[test]
fn tap_deleted_engine_exits_without_spinning() {
    let mut s = Setup::configured(&[]);
    let said_before = s.engine.stderr().len();
    let cpu0 = s.engine.cpu_seconds().unwrap_or(0.0);
    s.guest.sh_ok("ip link del tap0");
    let start = Instant::now();
    let mut cpu = cpu0;
    let status = loop {
        if let Some(st) = s.engine.try_wait() {
            break Some(st);
        }
        if let Some(c) = s.engine.cpu_seconds() {
            cpu = c;
        }
        if start.elapsed() > Duration::from_secs(5) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let used = cpu - cpu0;
    let st = status.unwrap_or_else(|| {
        panic!("engine still running 5 s after tap0 was deleted (CPU used meanwhile: {used:.2} s)")
    });
    assert!(!st.success(), "engine exit status should be non-zero: {st}");
    assert!(
        used < 1.0,
        "engine used {used:.2} s CPU after tap0 was deleted"
    );
    let said = s.engine.stderr();
    assert!(
        said.get(said_before..)
            .is_some_and(|t| !t.trim().is_empty()),
        "engine should say why it exited; its output: {said}"
    );
}

/// usernet-only: slirp4netns dies by the signal (no handler), so this fails against it.
#[test]
fn sigterm_clean_exit() {
    let mut s = Setup::configured(&[]);
    s.engine.signal(libc::SIGTERM);
    let st = s
        .engine
        .wait_timeout(Duration::from_secs(5))
        .expect("engine did not exit within 5 s of SIGTERM");
    assert_eq!(
        st.code(),
        Some(0),
        "SIGTERM should end the engine with status 0: {st}"
    );
}

#[test]
fn ready_fd_gets_1() {
    let s = Setup::configured(&[]);
    assert_eq!(
        s.engine.ready_bytes,
        b"1",
        "ready fd content: {:?}",
        String::from_utf8_lossy(&s.engine.ready_bytes)
    );
    // readiness means tap0 is configured already.
    let addr = s.guest.sh_ok("ip -o -4 addr show dev tap0");
    assert!(addr.contains("10.0.2.100/24"), "tap0 at ready time: {addr}");
}

#[test]
fn exit_fd_closed_makes_engine_exit() {
    let opts = EngineOpts {
        exit_fd: true,
        ..EngineOpts::configure(&[])
    };
    let mut s = Setup::with(Owner::Root, &opts);
    std::thread::sleep(Duration::from_millis(500));
    s.engine.assert_alive("while its exit fd is still open");
    drop(s.engine.exit_w.take());
    let st = s
        .engine
        .wait_timeout(Duration::from_secs(5))
        .expect("engine still running 5 s after its exit fd was closed");
    assert!(
        st.success(),
        "exit through the exit fd should be clean: {st}"
    );
}

/// usernet-only (issue 3: "exit cleanly when it becomes readable or its other end is
/// closed"): slirp4netns 1.2.0 ignores a readable exit fd and only reacts to the hang-up.
#[test]
fn exit_fd_readable_makes_engine_exit() {
    let opts = EngineOpts {
        exit_fd: true,
        ..EngineOpts::configure(&[])
    };
    let mut s = Setup::with(Owner::Root, &opts);
    let w = s.engine.exit_w.take().expect("exit fd");
    let mut f = std::fs::File::from(w);
    std::io::Write::write_all(&mut f, b"x").expect("write exit fd");
    let st = s
        .engine
        .wait_timeout(Duration::from_secs(5))
        .expect("engine still running 5 s after its exit fd became readable");
    assert!(
        st.success(),
        "exit through the exit fd should be clean: {st}"
    );
    drop(f);
}

/// The guest takes tap0 down and up again: the engine carries on.
#[test]
fn interface_down_up_engine_carries_on() {
    let mut s = Setup::configured(&[]);
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(outside(srv.port()), 60, 10_000);
    s.guest.sh_ok("ip link set tap0 down");
    // frames sent while down fail in the engine; it must keep going.
    std::thread::sleep(Duration::from_millis(1500));
    s.engine.assert_alive("while tap0 was down");
    s.guest
        .sh_ok("ip link set tap0 up && ip route replace default via 10.0.2.2 dev tap0");
    std::thread::sleep(Duration::from_millis(300));
    s.engine.assert_alive("after tap0 came back up");
    s.echo_roundtrip(outside(srv.port()), 61, 100_000);
}

/// podman's shape: `--netns-type=path` with the namespace's path and `--userns-path`.
#[test]
fn netns_type_path() {
    let host = HostNs::new();
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts {
        target: Some(format!("/proc/{}/ns/net", guest.pid)),
        ..EngineOpts::configure(&[
            "--netns-type=path",
            &format!("--userns-path=/proc/{}/ns/user", guest.pid),
        ])
    };
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let addr = s.guest.sh_ok("ip -o -4 addr show dev tap0");
    assert!(addr.contains("inet 10.0.2.100/24"), "tap0: {addr}");
    let srv = s.host.tcp_server("127.0.0.1:0", echo_handler);
    s.echo_roundtrip(SocketAddr::from((GATEWAY, srv.port())), 62, 100_000);
}
