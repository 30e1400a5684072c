//! UDP fragments, ICMP echo and ICMP errors through the NAT.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use usernet_tests::*;

fn outside(port: u16) -> SocketAddr {
    SocketAddr::from((HOST_ADDR, port))
}

/// A 30000-byte datagram at MTU 1500: fragmented by the guest's kernel on the way out
/// (reassembled by the engine), and fragmented by the engine on the way back.
#[test]
fn fragmented_udp_both_directions() {
    let s = Setup::configured(&[]);
    let echo = s.host.udp_echo("198.51.100.1:0");
    let sock = s.guest.udp_socket();
    let port = echo.addr.port();
    s.guest
        .run(|| sock.connect(outside(port)))
        .expect("connect");
    for (i, len) in [30000usize, 8000, 65000 - 28].into_iter().enumerate() {
        let data = pattern(300 + i as u64, len);
        let got = udp_request(&sock, &data, 3, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{len}-byte UDP echo: {e}"));
        assert_eq!(got.len(), len, "{len}-byte UDP echo: reply length");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&data),
            "{len}-byte echo content"
        );
    }
    let sizes = echo.sizes.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(
        sizes.contains(&30000),
        "the host server never got the whole 30000-byte datagram: {sizes:?}"
    );
}

#[test]
fn icmp_echo_to_outside() {
    require_tool("busybox");
    let s = Setup::configured(&[]);
    let out = s.guest.sh("busybox ping -c 3 -W 5 198.51.100.1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 packets received"),
        "ping 198.51.100.1 from the guest: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a larger echo (fragmented both ways).
    let out = s.guest.sh("busybox ping -c 2 -W 5 -s 4000 198.51.100.1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("2 packets received"),
        "4000-byte ping 198.51.100.1 from the guest: {text}"
    );
}

/// The host answers a UDP datagram to a closed port with ICMP port unreachable; the guest's
/// connected UDP socket must report ECONNREFUSED.
#[test]
fn udp_port_unreachable_reaches_guest() {
    let s = Setup::configured(&[]);
    let closed = s.host.free_port("198.51.100.1");
    let sock = s.guest.udp_socket();
    s.guest
        .run(|| sock.connect(outside(closed)))
        .expect("connect");
    let r = udp_request(&sock, b"anyone?", 5, Duration::from_secs(1));
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            io::ErrorKind::ConnectionRefused,
            "expected ECONNREFUSED from the port unreachable, got {e}"
        ),
        Ok(v) => panic!("got a reply from a closed port: {v:?}"),
    }
    // and the path still works afterwards.
    let echo = s.host.udp_echo("198.51.100.1:0");
    let sock = s.guest.udp_socket();
    let p = echo.addr.port();
    s.guest.run(|| sock.connect(outside(p))).expect("connect");
    assert_eq!(
        udp_request(&sock, b"x", 3, Duration::from_secs(2)).expect("echo"),
        b"x"
    );
}

/// Endpoint-independent mapping: a reply from another host port (and from 127.0.0.1 via
/// the gateway mapping's flow to 198.51.100.1) reaches the guest's socket.
#[test]
fn udp_replies_from_any_source_reach_guest() {
    let s = Setup::configured(&[]);
    let server = s.host.udp_socket("198.51.100.1:0");
    let other = s.host.udp_socket("198.51.100.1:0");
    let sport = server.local_addr().expect("addr").port();
    let oport = other.local_addr().expect("addr").port();
    let guest = s.guest.udp_socket();
    guest
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; 2048];
    let mut mapped = None;
    for _ in 0..3 {
        guest.send_to(b"hello", outside(sport)).expect("send");
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            assert_eq!(&buf[..n], b"hello");
            mapped = Some(from);
            break;
        }
    }
    let mapped = mapped.expect("the host server never got the guest's datagram");
    // reply from a different port of the host.
    other
        .send_to(b"from-other", mapped)
        .expect("send from other");
    let (n, from) = guest
        .recv_from(&mut buf)
        .expect("the reply from another source port never reached the guest");
    assert_eq!(&buf[..n], b"from-other");
    assert_eq!(from, outside(oport), "reply source as seen by the guest");
}
