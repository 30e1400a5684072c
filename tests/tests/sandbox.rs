//! `--enable-sandbox` and `--enable-seccomp` end to end: with both on (and `-6` where
//! said), DHCP (udhcpc), DNS (dig through 10.0.2.3 to a dnsmasq on the host namespace's
//! loopback, UDP and TCP, and a resolv.conf rewritten while sandboxed), TCP (checksummed
//! echoes via 10.0.2.2, to 198.51.100.1 and to 2001:db8:1::1), UDP, ICMP and port
//! forwards (`-p`, `add_hostfwd`, `usernet fwd`, a low port added after the capabilities
//! were dropped) all work; the engine's root is an empty tmpfs with only the kept
//! directories; as root its capability sets hold only CAP_NET_BIND_SERVICE; a forbidden
//! syscall (`USERNET_SECCOMP_SELFTEST=1`) kills it with SIGSYS; and the rootless shape
//! (engine as uid 65534, its own user namespace) is sandboxed too and serves TCP.
//!
//! udhcpc never runs its distribution script (the guest shares the machine's mount
//! namespace): it gets `-s` with a script written here that only records its environment.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};
use usernet_tests::*;

const SANDBOX: &str = "--enable-sandbox";
const SECCOMP: &str = "--enable-seccomp";
/// The guest's default IPv6 prefix with `-6`.
const PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0);
/// The outside world's IPv6 address in the host namespace.
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// CAP_NET_BIND_SERVICE as a capability mask.
const NET_BIND_SERVICE: u64 = 1 << 10;
/// SIGSYS.
const SIGSYS: i32 = 31;

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_script(path: &Path, body: &str) {
    std::fs::write(path, body).expect("write script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The engine's `/proc/PID/root` entries (names), read by root from outside.
fn root_entries(pid: u32) -> BTreeSet<String> {
    let dir = format!("/proc/{pid}/root");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A directory for the API socket OUTSIDE /tmp (`/var/tmp/usernet-sbx-<id>`), removed on
/// drop. (The engine builds its sandbox root on /tmp; a kept directory under /tmp is
/// tested on its own in [`sandbox_keeps_api_socket_directory_under_tmp`].)
struct ApiDir {
    dir: PathBuf,
}

impl ApiDir {
    fn new(owner: Option<u32>) -> ApiDir {
        let dir = PathBuf::from(format!("/var/tmp/usernet-sbx-{}", unique_id()));
        std::fs::create_dir_all(&dir).expect("create the API socket's directory");
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown api dir");
        }
        ApiDir { dir }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
}

impl Drop for ApiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that the engine's root holds only the first component of `api_dir` (the API
/// socket's directory lives under it) and `etc/` (resolv.conf's directory), that on the
/// way to `api_dir` nothing else is visible, that the API socket is there, and that none
/// of the host's usual top-level directories can be seen.
fn assert_sandboxed_root(pid: u32, api_dir: &Path) {
    let comps: Vec<String> = api_dir
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let got = root_entries(pid);
    let allowed: BTreeSet<String> = [comps[0].clone(), "etc".to_string()].into();
    assert!(
        got.is_subset(&allowed),
        "the sandboxed engine's root should hold only the kept directories ({allowed:?}: \
         the API socket's directory and resolv.conf's), it holds {got:?}"
    );
    for hidden in [
        "usr", "home", "bin", "lib", "proc", "dev", "root", "sys", "tmp",
    ] {
        if comps[0] == hidden {
            continue;
        }
        assert!(
            !Path::new(&format!("/proc/{pid}/root/{hidden}")).exists(),
            "/{hidden} is visible inside the sandbox"
        );
    }
    // on the way down to the kept directory, nothing but the path itself.
    let mut at = PathBuf::from(format!("/proc/{pid}/root"));
    for (i, c) in comps.iter().enumerate().take(comps.len() - 1) {
        at.push(c);
        let names: BTreeSet<String> = std::fs::read_dir(&at)
            .unwrap_or_else(|e| panic!("read {}: {e}", at.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([comps[i + 1].clone()]),
            "{} inside the sandbox should hold only the way to the kept directory",
            at.display()
        );
    }
    let inside = PathBuf::from(format!("/proc/{pid}/root{}/api.sock", api_dir.display()));
    assert!(
        inside.exists(),
        "the API socket is not visible inside the sandbox at {}",
        inside.display()
    );
    // resolv.conf is readable where the engine expects it.
    let rc = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))
        .expect("resolv.conf inside the sandbox");
    assert!(rc.contains("nameserver"), "resolv.conf inside: {rc:?}");
    // a mount namespace of its own.
    let mine = std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
    let its = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("engine mnt ns");
    assert_ne!(mine, its, "the sandboxed engine shares our mount namespace");
}

/// The Cap* lines of `/proc/PID/status`.
fn cap_lines(pid: u32) -> HashMap<String, u64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    st.lines()
        .filter(|l| l.starts_with("Cap"))
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?))
        })
        .collect()
}

fn engine_cmd(host: &HostNs, sub: &str, args: &[&str]) -> Output {
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.arg(sub).args(args);
    run_timeout(&mut c, Duration::from_secs(20))
}

/// A checksummed TCP echo from the host namespace to `addr` (a forward).
fn host_echo(host: &HostNs, addr: SocketAddr, seed: u64, len: usize) {
    let data = pattern(seed, len);
    let got = host.run(|| -> std::io::Result<Vec<u8>> {
        let mut s = connect_tcp(addr, Duration::from_secs(10))?;
        let mut w = s.try_clone()?;
        let d2 = data.clone();
        let writer = thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&d2)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let (got, err) = read_to_end_result(&mut s);
        writer
            .join()
            .map_err(|_| std::io::Error::other("writer panicked"))??;
        match err {
            Some(e) => Err(e),
            None => Ok(got),
        }
    });
    let got = got.unwrap_or_else(|e| panic!("echo through the forward {addr}: {e}"));
    assert_eq!(got.len(), data.len(), "echo through {addr}: length");
    assert_eq!(
        sha256_hex(&got),
        sha256_hex(&data),
        "echo through {addr}: content"
    );
}

/// A TCP echo server in the guest on `port` (all addresses).
fn guest_echo(s: &Setup, port: u16) -> TcpServer {
    let l: TcpListener = s.guest.run(|| {
        TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
    });
    TcpServer::start(l, echo_handler)
}

/// Polls (≤ 10 s) until the guest kernel has a non-tentative global address in fd00::/64
/// and a default route.
fn wait_slaac(s: &Setup) -> Ipv6Addr {
    let start = Instant::now();
    loop {
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
            .find(|a| a.octets()[..8] == PREFIX6.octets()[..8]);
        if let Some(a) = addr
            && routes.lines().any(|l| l.starts_with("default"))
        {
            return a;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sandboxed engine with -6: the guest did not autoconfigure an fd00::/64 address \
             and a default route within 10 s; addresses:\n{addrs}\nroutes:\n{routes}\n\
             engine: {}",
            s.engine.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Both flags, plus `extra`, plus `--configure`.
fn confined(extra: &[&str]) -> EngineOpts {
    let mut a = vec![SANDBOX, SECCOMP];
    a.extend_from_slice(extra);
    EngineOpts::configure(&a)
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

/// `usernet --help` lists both flags as plain text (podman and rootlesskit look for them
/// there and do not pass them otherwise).
#[test]
fn help_lists_sandbox_and_seccomp() {
    let out = run_ok(std::process::Command::new(engine_bin()).arg("--help"));
    for flag in [SANDBOX, SECCOMP, "--enable-ipv6", "--disable-host-loopback"] {
        assert!(out.contains(flag), "`usernet --help` does not list {flag}");
    }
}

/// DHCP (udhcpc with a recording script) and DNS (dig through 10.0.2.3, UDP and TCP) with
/// both flags and `-6`; then resolv.conf is rewritten in place and the sandboxed relay
/// follows it to a second dnsmasq (the reason resolv.conf's directory is kept).
#[test]
fn sandboxed_dhcp_and_dns_follow_resolv_conf() {
    require_tool("udhcpc");
    require_tool("dig");
    let host = HostNs::with_resolv_conf("nameserver 127.0.0.53\n");
    host.add_lo_addr("127.0.0.53/8");
    host.add_lo_addr("127.0.0.54/8");
    let dm1 = Dnsmasq::start(
        &host,
        Ipv4Addr::new(127, 0, 0, 53),
        &[
            "--host-record=www.test.example,192.0.2.1,2001:db8::1".into(),
            "--txt-record=txt.test.example,sandboxed relay".into(),
        ],
    );
    let dm2 = Dnsmasq::start(
        &host,
        Ipv4Addr::new(127, 0, 0, 54),
        &["--host-record=www.test.example,192.0.2.2".into()],
    );
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts {
        args: vec![SANDBOX.into(), SECCOMP.into(), "-6".into()],
        ..Default::default()
    };
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    s.guest.sh_ok("ip link set lo up && ip link set tap0 up");

    // DHCP.
    let env_file = s.host.dir.join("udhcpc.env");
    let script = s.host.dir.join("udhcpc.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n\
             case \"$1\" in bound|renew)\n\
             {{ echo \"ip=$ip\"; echo \"mask=$mask\"; echo \"router=$router\";\n\
             echo \"dns=$dns\"; echo \"serverid=$serverid\"; echo \"mtu=$mtu\"; }} > '{}' ;;\n\
             esac\nexit 0\n",
            env_file.display()
        ),
    );
    let out = s.guest.sh(&format!(
        "udhcpc -i tap0 -f -q -n -t 5 -T 2 -O mtu -s '{}'",
        script.display()
    ));
    let env: HashMap<String, String> = std::fs::read_to_string(&env_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    assert!(
        out.status.success() && !env.is_empty(),
        "udhcpc got no lease from the sandboxed engine ({}): {}{}\nengine: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        s.engine.stderr()
    );
    for (k, want) in [
        ("ip", "10.0.2.15"),
        ("mask", "24"),
        ("router", "10.0.2.2"),
        ("dns", "10.0.2.3"),
        ("serverid", "10.0.2.2"),
    ] {
        assert_eq!(
            env.get(k).map(String::as_str),
            Some(want),
            "udhcpc option {k} from the sandboxed engine (all: {env:?})"
        );
    }
    // configure what the lease says (the recording script did not).
    s.guest.sh_ok(&format!(
        "ip addr add {}/{} dev tap0 && ip route add default via {}",
        env["ip"], env["mask"], env["router"]
    ));

    // DNS over UDP and TCP.
    let dig = |args: &str| -> String {
        let out = s
            .guest
            .sh(&format!("dig @10.0.2.3 +time=3 +tries=2 +short {args}"));
        assert!(
            out.status.success(),
            "dig {args} through the sandboxed relay failed: {}{}\nengine: {}",
            text(&out.stdout),
            text(&out.stderr),
            s.engine.stderr()
        );
        text(&out.stdout).trim().to_string()
    };
    for tcp in ["", "+tcp"] {
        assert_eq!(dig(&format!("{tcp} www.test.example A")), "192.0.2.1");
        assert_eq!(dig(&format!("{tcp} www.test.example AAAA")), "2001:db8::1");
        assert_eq!(
            dig(&format!("{tcp} txt.test.example TXT")),
            "\"sandboxed relay\""
        );
    }
    let log = dm1.log();
    assert!(
        log.contains("query[A] www.test.example") && log.contains("query[TXT] txt.test.example"),
        "the queries should have reached the dnsmasq on 127.0.0.53; its log: {log}"
    );

    // resolv.conf rewritten in place: the sandboxed relay still sees the file.
    thread::sleep(Duration::from_millis(1100));
    s.host.set_resolv_conf("nameserver 127.0.0.54\n");
    let start = Instant::now();
    loop {
        let got = dig("www.test.example A");
        if got == "192.0.2.2" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "6 s after resolv.conf named 127.0.0.54 the sandboxed relay still answers \
             {got:?} (expected 192.0.2.2); 127.0.0.54's log: {}",
            dm2.log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        dig("+tcp www.test.example A"),
        "192.0.2.2",
        "TCP after change"
    );
    s.engine.assert_alive("at the end of the test");
}

/// TCP (checksummed echoes via 10.0.2.2 to the host namespace's loopback, to
/// 198.51.100.1 and over IPv6 to 2001:db8:1::1), UDP echo to 198.51.100.1 and ICMP echo
/// to 10.0.2.2 and 198.51.100.1, with both flags and `-6`.
#[test]
fn sandboxed_tcp_udp_icmp() {
    require_tool("busybox");
    let mut s = Setup::with(Owner::Root, &confined(&["-6"]));
    let lo = s.host.tcp_server("127.0.0.1:0", echo_handler);
    let out = s.host.tcp_server("198.51.100.1:0", echo_handler);
    let out6 = s.host.tcp_server("[2001:db8:1::1]:0", echo_handler);
    s.echo_roundtrip(
        SocketAddr::from((GATEWAY, lo.port())),
        1,
        2 * 1024 * 1024 + 7,
    );
    s.echo_roundtrip(
        SocketAddr::from((HOST_ADDR, out.port())),
        2,
        2 * 1024 * 1024 + 11,
    );
    assert_eq!(lo.accepted(), 1, "the loopback server saw the connection");
    assert_eq!(
        out.accepted(),
        1,
        "the 198.51.100.1 server saw the connection"
    );

    // UDP.
    let echo = s.host.udp_echo("198.51.100.1:0");
    let sock: UdpSocket = s.guest.udp_socket();
    let port = echo.addr.port();
    s.guest
        .run(|| sock.connect(SocketAddr::from((HOST_ADDR, port))))
        .expect("connect udp");
    for (i, len) in [100usize, 1400, 20000].into_iter().enumerate() {
        let data = pattern(10 + i as u64, len);
        let got = udp_request(&sock, &data, 3, Duration::from_secs(3)).unwrap_or_else(|e| {
            panic!(
                "{len}-byte UDP echo through the sandboxed engine: {e}; engine: {}",
                s.engine.stderr()
            )
        });
        assert_eq!(sha256_hex(&got), sha256_hex(&data), "{len}-byte UDP echo");
    }

    // ICMP.
    for dst in ["10.0.2.2", "198.51.100.1"] {
        let o = s.guest.sh(&format!("busybox ping -c 3 -W 5 {dst}"));
        let t = text(&o.stdout);
        assert!(
            o.status.success() && t.contains("3 packets received"),
            "ping {dst} through the sandboxed engine: {t}{}\nengine: {}",
            text(&o.stderr),
            s.engine.stderr()
        );
    }

    // IPv6.
    wait_slaac(&s);
    s.echo_roundtrip(SocketAddr::from((HOST6, out6.port())), 3, 1024 * 1024 + 3);
    s.engine.assert_alive("at the end of the test");
}

/// Forwards with both flags, as root: a `-p` rule, a rule added through the API after
/// the sandbox was entered (on port 81: binding it needs the CAP_NET_BIND_SERVICE the
/// sandbox keeps), a UDP rule, and `usernet fwd add/list/remove`.
#[test]
fn sandboxed_forwards_api_and_fwd_cli() {
    let host = HostNs::new();
    let apidir = ApiDir::new(None);
    let api = apidir.sock();
    let a = api.to_string_lossy().into_owned();
    let hp1 = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = confined(&["-a", &a, "-p", &format!("{hp1}:9000")]);
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    let _srv = guest_echo(&s, 9000);
    host_echo(
        &s.host,
        SocketAddr::from(([127, 0, 0, 1], hp1)),
        20,
        1 << 20,
    );
    host_echo(&s.host, SocketAddr::from((HOST_ADDR, hp1)), 21, 1 << 20);

    // an API rule on a privileged port, added after the capabilities were dropped.
    let v = api_json(
        &api,
        r#"{"execute":"add_hostfwd","arguments":{"proto":"tcp","host_addr":"127.0.0.1","host_port":81,"guest_port":9000}}"#,
    );
    let id = v
        .pointer("/return/id")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| {
            panic!(
                "add_hostfwd on port 81 in the sandbox (CAP_NET_BIND_SERVICE kept): {v}; \
                 engine: {}",
                s.engine.stderr()
            )
        });
    host_echo(&s.host, SocketAddr::from(([127, 0, 0, 1], 81)), 22, 300_000);

    // UDP through an API rule.
    let up = s.host.free_port("127.0.0.1");
    let gsock: UdpSocket = s
        .guest
        .run(|| UdpSocket::bind("0.0.0.0:9001").expect("bind"));
    let v = api_json(
        &api,
        &format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"udp","host_addr":"127.0.0.1","host_port":{up},"guest_port":9001}}}}"#
        ),
    );
    assert!(v.pointer("/return/id").is_some(), "udp add_hostfwd: {v}");
    let gecho = thread::spawn(move || {
        gsock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            if let Ok((n, from)) = gsock.recv_from(&mut buf) {
                let _ = gsock.send_to(&buf[..n], from);
            }
        }
    });
    let hs = s.host.udp_socket("127.0.0.1:0");
    s.host
        .run(|| hs.connect(("127.0.0.1", up)))
        .expect("connect");
    let data = pattern(23, 1200);
    let got = udp_request(&hs, &data, 3, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("UDP through an API forward in the sandbox: {e}"));
    assert_eq!(got, data, "UDP forward echo");
    drop(hs);
    let _ = gecho.join();

    // usernet fwd round trip.
    let hp2 = s.host.free_port("0.0.0.0");
    let out = engine_cmd(&s.host, "fwd", &["add", "-a", &a, &format!("{hp2}:9000")]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "usernet fwd add against the sandboxed engine: {}; {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    let fid: u64 = stdout
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("usernet fwd add should print the id first: {stdout:?}"));
    host_echo(&s.host, SocketAddr::from((HOST_ADDR, hp2)), 24, 500_000);
    let out = engine_cmd(&s.host, "fwd", &["list", "--json", "-a", &a]);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fwd list --json ({e}): {}", text(&out.stdout)));
    let entries = v
        .pointer("/return/entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ids: BTreeSet<u64> = entries.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(entries.len(), 4, "-p, two API rules and fwd add: {v}");
    assert!(
        ids.contains(&id) && ids.contains(&fid),
        "ids {ids:?} in {v}"
    );
    let out = engine_cmd(&s.host, "fwd", &["remove", "-a", &a, &fid.to_string()]);
    assert!(
        out.status.success(),
        "usernet fwd remove: {}",
        text(&out.stderr)
    );
    let start = Instant::now();
    loop {
        let r = s.host.run(|| {
            TcpStream::connect_timeout(&SocketAddr::from((HOST_ADDR, hp2)), Duration::from_secs(2))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => assert!(
                start.elapsed() < Duration::from_secs(3),
                "after fwd remove the port should be closed: {other:?}"
            ),
        }
        thread::sleep(Duration::from_millis(100));
    }
    s.engine.assert_alive("at the end of the test");
}

/// As root, the sandboxed engine's root is an empty tmpfs holding only the kept
/// directories, and every capability set holds CAP_NET_BIND_SERVICE at most (effective
/// and permitted exactly that).
#[test]
fn sandbox_hides_filesystem_and_drops_capabilities() {
    let host = HostNs::new();
    let apidir = ApiDir::new(None);
    let api = apidir.sock();
    let guest = Guest::new(Owner::Root);
    let opts = confined(&["-a", &api.to_string_lossy()]);
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    // a moment for the API thread to exist; the sandbox was entered before ready.
    let srv = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(SocketAddr::from((HOST_ADDR, srv.port())), 30, 10_000);
    assert_sandboxed_root(s.engine.pid, &apidir.dir);
    let caps = cap_lines(s.engine.pid);
    for k in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let v = *caps
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in /proc/PID/status: {caps:?}"));
        assert_eq!(
            v & !NET_BIND_SERVICE,
            0,
            "{k} = {v:#x}: the sandbox should keep only CAP_NET_BIND_SERVICE (0x400)"
        );
    }
    assert_eq!(caps["CapEff"], NET_BIND_SERVICE, "CapEff: {caps:?}");
    assert_eq!(caps["CapPrm"], NET_BIND_SERVICE, "CapPrm: {caps:?}");
    assert_eq!(caps["CapBnd"], NET_BIND_SERVICE, "CapBnd: {caps:?}");
    // every thread, too (the API thread was started after the drop).
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.engine.pid)).expect("tasks");
    for t in tasks.filter_map(|e| e.ok()) {
        let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in st.lines().filter(|l| l.starts_with("CapEff")) {
            let v = u64::from_str_radix(l.split(':').nth(1).unwrap_or("").trim(), 16).unwrap_or(0);
            assert_eq!(v & !NET_BIND_SERVICE, 0, "thread {:?}: {l}", t.file_name());
        }
        assert!(
            st.lines()
                .any(|l| l.starts_with("Seccomp:") && l.contains('2')),
            "thread {:?} has no seccomp filter (Seccomp: 2 expected): {}",
            t.file_name(),
            st.lines()
                .filter(|l| l.starts_with("Seccomp"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    s.engine.assert_alive("at the end of the test");
}

/// `USERNET_SECCOMP_SELFTEST=1` makes the engine issue a forbidden syscall right after
/// installing the filter: it must die by SIGSYS (as root and in the rootless shape);
/// without the variable the same engine keeps running.
#[test]
fn seccomp_forbidden_syscall_kills_with_sigsys() {
    let bin = engine_bin();
    for as_nobody in [false, true] {
        let host = HostNs::new();
        let wrapper = host.dir.join("selftest.sh");
        write_script(
            &wrapper,
            &format!(
                "#!/bin/sh\nUSERNET_SECCOMP_SELFTEST=1 exec '{}' \"$@\"\n",
                bin.display()
            ),
        );
        let owner = if as_nobody {
            Owner::Nobody
        } else {
            Owner::Root
        };
        let guest = Guest::new(owner);
        for flags in [vec![SECCOMP], vec![SANDBOX, SECCOMP]] {
            let mut opts = EngineOpts::configure(&flags);
            opts.as_nobody = as_nobody;
            let mut e = Engine::spawn_with(&wrapper, &host, &guest, &opts, true).engine;
            let st = e.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| {
                panic!(
                    "with USERNET_SECCOMP_SELFTEST=1 and {flags:?} (as_nobody={as_nobody}) \
                     the engine is still running after 10 s; output: {}",
                    e.stderr()
                )
            });
            assert_eq!(
                st.signal(),
                Some(SIGSYS),
                "with {flags:?} (as_nobody={as_nobody}) the forbidden syscall should kill \
                 the engine with SIGSYS (31); it ended with {st}; output: {}",
                e.stderr()
            );
            // control: the same without the variable keeps serving.
            let mut ok = Engine::start(&host, &guest, &opts);
            thread::sleep(Duration::from_millis(300));
            ok.assert_alive(&format!(
                "with {flags:?} (as_nobody={as_nobody}) and no self-test"
            ));
        }
    }
}

/// The rootless shape: the engine runs as uid 65534 (in the initial user namespace, as
/// rootlesskit runs it) with both flags, enters a user namespace of its own, is
/// sandboxed, and still serves TCP both ways and a forward.
#[test]
fn rootless_sandbox_seccomp_serves_tcp() {
    let host = HostNs::new();
    // the API socket's directory must be writable by uid 65534.
    let apidir = ApiDir::new(Some(65534));
    let api = apidir.sock();
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Nobody);
    let mut opts = confined(&["-a", &api.to_string_lossy(), "-p", &format!("{hp}:9000")]);
    opts.as_nobody = true;
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    let lo = s.host.tcp_server("127.0.0.1:0", echo_handler);
    let out = s.host.tcp_server("198.51.100.1:0", echo_handler);
    s.echo_roundtrip(SocketAddr::from((GATEWAY, lo.port())), 40, 1 << 20);
    s.echo_roundtrip(SocketAddr::from((HOST_ADDR, out.port())), 41, 1 << 20);
    let _srv = guest_echo(&s, 9000);
    host_echo(&s.host, SocketAddr::from(([127, 0, 0, 1], hp)), 42, 1 << 20);
    // an API rule on a high port works too.
    let hp2 = s.host.free_port("127.0.0.1");
    let v = api_json(
        &api,
        &format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{hp2},"guest_port":9000}}}}"#
        ),
    );
    assert!(v.pointer("/return/id").is_some(), "add_hostfwd: {v}");
    host_echo(
        &s.host,
        SocketAddr::from(([127, 0, 0, 1], hp2)),
        43,
        200_000,
    );

    // confined: its own user namespace, uid 65534 outside, no capability there, and
    // its root holds only the kept directories.
    let pid = s.engine.pid;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or("")
        .to_string();
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65534"),
        "the rootless engine should run as uid 65534: {uid_line}"
    );
    let mine = std::fs::read_link("/proc/self/ns/user").expect("own user ns");
    let its = std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("engine user ns");
    assert_ne!(
        its, mine,
        "the rootless sandboxed engine should be in a user namespace"
    );
    assert_sandboxed_root(pid, &apidir.dir);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.contains('2')),
        "rootless: no seccomp filter on the engine"
    );
    s.engine.assert_alive("at the end of the test");
}

/// The API socket's directory under /tmp (rootlesskit's default state directory is
/// `/tmp/rootlesskitNNN`, and `mktemp -d` puts everything there): the sandbox must keep it
/// (the engine starts, the API works, the socket is visible inside).
#[test]
fn sandbox_keeps_api_socket_directory_under_tmp() {
    let host = HostNs::new();
    let api = host.dir.join("api.sock");
    let guest = Guest::new(Owner::Root);
    let opts = confined(&["-a", &api.to_string_lossy()]);
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    let v = api_json(&api, r#"{"execute":"list_hostfwd"}"#);
    assert!(v.pointer("/return/entries").is_some(), "list_hostfwd: {v}");
    assert_sandboxed_root(s.engine.pid, &s.host.dir);
    s.engine.assert_alive("at the end of the test");
}
