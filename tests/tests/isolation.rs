//! Isolation and filtering on networks of guests: `--isolate`, `--block-host`,
//! `--restrict`, `--guest-policy`, anti-spoofing (on by default, `--allow-spoofing`),
//! `--filter` / `--filter-default` and the API requests `set_policy`, `set_filters`,
//! `list_policy`.
//!
//! As in `network.rs`, every network runs inside the test's host namespace with
//! `--runtime-dir <scratch>/run`; guests are namespaces attached with `usernet attach`
//! and lease with udhcpc run with a script written by the harness (never the
//! distribution's). Everything a guest reaches is the test's own: servers on the host
//! namespace's 127.0.0.1 (through 10.0.2.2) and on 198.51.100.1 (through NAT); forged
//! frames are written by a packet socket on the attacker's own tap0.

use serde_json::Value;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use usernet_tests::*;

/// The port every guest's name server listens on (the forwards' target).
const NAME_PORT: u16 = 8080;
/// How fast a refused connect (RST from the engine) must fail.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// helpers: guests
// ---------------------------------------------------------------------------------------

/// Attaches `g` with `--configure --macaddress MAC`, leases with udhcpc (tag `tag`) and
/// checks it got `want`; returns the port id.
fn attach_lease(host: &HostNs, net: &Network, g: &Guest, mac: &str, tag: &str, want: &str) -> u64 {
    let port = net.attach(host, g, &["--configure", "--macaddress", mac]);
    let l = guest_udhcpc(g, &host.dir, tag, &[]);
    assert_eq!(
        l.get("ip").map(String::as_str),
        Some(want),
        "{tag} ({mac}) should lease its reservation: {l:?}\nnetwork output: {}",
        net.log()
    );
    port
}

/// What a [`name_server`] at `addr` says, connecting from `g`.
fn name_via(g: &Guest, addr: SocketAddr) -> io::Result<String> {
    g.run(|| {
        let mut s = connect_tcp(addr, Duration::from_secs(5))?;
        let mut t = String::new();
        s.read_to_string(&mut t)?;
        Ok(t.trim().to_string())
    })
}

/// [`echo_via`] that fails the test (with the network's output) on error.
fn echo_ok(g: &Guest, addr: SocketAddr, seed: u64, net: &Network, what: &str) {
    echo_via(g, addr, seed, 64 * 1024)
        .unwrap_or_else(|e| panic!("{what}: {e}\nnetwork output: {}", net.log()));
}

/// A TCP connect from `g` to `addr` is refused (the engine's RST) within
/// [`REFUSED_WITHIN`].
fn connect_refused(g: &Guest, addr: SocketAddr, net: &Network, what: &str) {
    let start = Instant::now();
    let e = connect_fails(g, addr, Duration::from_secs(5), what);
    let took = start.elapsed();
    assert!(
        e.kind() == ErrorKind::ConnectionRefused && took < REFUSED_WITHIN,
        "{what}: a connect to {addr} should be refused at once (RST), got {e} ({:?}) after \
         {took:?}\nnetwork output: {}",
        e.kind(),
        net.log()
    );
}

/// One UDP datagram from `g` to `to` (a connected socket) and what came back within
/// `timeout`: the reply, or the error (an ICMP error shows as e.g. HostUnreachable).
fn udp_once(g: &Guest, to: SocketAddr, data: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    g.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        udp_request(&s, data, 1, timeout)
    })
}

/// A UDP request from `g` to `to` is answered by an echo (up to 3 tries).
fn udp_echo_ok(g: &Guest, to: SocketAddr, net: &Network, what: &str) {
    let data = format!("udp-echo-{to}").into_bytes();
    let r = g.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        udp_request(&s, &data, 3, Duration::from_secs(2))
    });
    match r {
        Ok(b) if b == data => {}
        Ok(b) => panic!("{what}: {to} answered {:?}", String::from_utf8_lossy(&b)),
        Err(e) => panic!(
            "{what}: no UDP echo from {to}: {e}\nnetwork output: {}",
            net.log()
        ),
    }
}

/// A UDP datagram from `g` to `to` is refused with an ICMP error (administratively
/// prohibited: the guest's kernel reports EHOSTUNREACH) and gets no answer.
fn udp_prohibited(g: &Guest, to: SocketAddr, net: &Network, what: &str) {
    let start = Instant::now();
    match udp_once(g, to, b"should-not-pass", Duration::from_secs(3)) {
        Ok(b) => panic!(
            "{what}: a UDP datagram to {to} should be refused, it was answered: {:?}",
            String::from_utf8_lossy(&b)
        ),
        Err(e) => assert!(
            e.kind() == ErrorKind::HostUnreachable,
            "{what}: a UDP datagram to {to} should get ICMP administratively prohibited \
             (EHOSTUNREACH in the guest), got {e} ({:?}) after {:?}\nnetwork output: {}",
            e.kind(),
            start.elapsed(),
            net.log()
        ),
    }
}

/// The lladdr of `ip` in `g`'s neighbour table on tap0 (lower case), if any.
fn neigh_mac(g: &Guest, ip: &str) -> Option<String> {
    let out = g.sh_ok(&format!("ip -4 neigh show {ip} dev tap0"));
    let mut w = out.split_whitespace();
    w.find(|x| *x == "lladdr")?;
    w.next().map(str::to_lowercase)
}

// ---------------------------------------------------------------------------------------
// helpers: the API
// ---------------------------------------------------------------------------------------

/// An API request on the network's socket; its `.return` (fails the test on `.error`).
fn api_ok(net: &Network, req: &str) -> Value {
    let v = api_json(&net.api(), req);
    match v.get("return") {
        Some(r) if v.get("error").is_none() => r.clone(),
        _ => panic!(
            "API request {req} failed: {v}\nnetwork output: {}",
            net.log()
        ),
    }
}

/// `list_policy`'s `.return`.
fn list_policy(net: &Network) -> Value {
    api_ok(net, r#"{"execute":"list_policy"}"#)
}

/// `stats`'s `.return.drops.KEY` (0 when absent: only non-zero counters are listed).
fn stats_drop(net: &Network, key: &str) -> u64 {
    let r = api_ok(net, r#"{"execute":"stats"}"#);
    let drops = r
        .get("drops")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("stats without a \"drops\" object: {r}"));
    drops.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn jnum(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{ptr} missing or not a number in {v}"))
}

/// The `list_policy` port with id `id`.
fn policy_port(pol: &Value, id: u64) -> Value {
    pol.get("ports")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("id").and_then(Value::as_u64) == Some(id))
        })
        .cloned()
        .unwrap_or_else(|| panic!("list_policy has no port {id}: {pol:#}"))
}

/// The `hits` of the network rule `rule` in `list_policy`.
fn rule_hits(pol: &Value, rule: &str) -> u64 {
    let rules = pol
        .pointer("/filters/network")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("list_policy without .filters.network: {pol:#}"));
    let r = rules
        .iter()
        .find(|r| r.get("rule").and_then(Value::as_str) == Some(rule))
        .unwrap_or_else(|| panic!("list_policy does not list the rule {rule:?}: {pol:#}"));
    jnum(r, "/hits")
}

/// The sum of a port's `spoofed` counters.
fn spoofed_total(port: &Value) -> u64 {
    port.get("spoofed")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("port without a \"spoofed\" object: {port}"))
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum()
}

// ---------------------------------------------------------------------------------------
// helpers: a UDP sink and forged frames
// ---------------------------------------------------------------------------------------

/// A UDP socket in a guest recording every datagram (source, payload); stops on drop
/// (or after 120 s).
struct UdpSink {
    got: Arc<Mutex<Vec<(SocketAddr, String)>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpSink {
    fn start(g: &Guest, port: u16) -> UdpSink {
        let s: UdpSocket = g.run(|| {
            UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind udp {port}: {e}"))
        });
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set_read_timeout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g2, st) = (got.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    g2.lock().expect("sink lock").push((from, text));
                }
            }
        });
        UdpSink {
            got,
            stop,
            handle: Some(handle),
        }
    }

    fn received(&self) -> Vec<(SocketAddr, String)> {
        self.got.lock().expect("sink lock").clone()
    }

    /// Waits (≤ `timeout`) for a datagram whose payload starts with `prefix`.
    fn wait_for(&self, prefix: &str, timeout: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((from, _)) = self.received().iter().find(|(_, p)| p.starts_with(prefix)) {
                return Some(*from);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends one UDP datagram from `g` to `to`.
fn udp_send(g: &Guest, to: SocketAddr, payload: &str) {
    g.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind udp");
        s.send_to(payload.as_bytes(), to)
            .unwrap_or_else(|e| panic!("send to {to}: {e}"));
    });
}

const BROADCAST: [u8; 6] = [0xff; 6];

fn mac(s: &str) -> [u8; 6] {
    parse_mac(s).unwrap_or_else(|| panic!("bad MAC {s}"))
}

/// An Ethernet ARP frame (padded to 60 bytes).
#[allow(clippy::too_many_arguments)]
fn arp_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa.octets());
    f.resize(60, 0);
    f
}

/// A UDP header + payload (checksum 0: none, valid over IPv4).
fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("fits");
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

// ---------------------------------------------------------------------------------------
// 1. --isolate
// ---------------------------------------------------------------------------------------

/// `--isolate`: two DHCP guests cannot ping each other nor connect to each other's TCP
/// server, while both reach 198.51.100.1 (NAT) and the host namespace's 127.0.0.1
/// (through 10.0.2.2); nor with each other's MAC in a static neighbour entry (unicast
/// frames), and `list_policy` and `stats` count those isolated frames. `set_policy`
/// isolate=false at run time lets them ping and connect.
#[test]
fn isolate_keeps_guests_apart() {
    const MA: &str = "52:54:00:15:00:01";
    const MB: &str = "52:54:00:15:00:02";
    let host = HostNs::new();
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let name = net_name("iso");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--isolate",
            "--dhcp-host",
            &format!("{MA},10.0.2.15"),
            "--dhcp-host",
            &format!("{MB},10.0.2.16"),
        ],
    );
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = attach_lease(&host, &net, &ga, MA, "isoa", "10.0.2.15");
    let pb = attach_lease(&host, &net, &gb, MB, "isob", "10.0.2.16");
    let na = name_server(&ga, NAME_PORT, "isoa");
    let nb = name_server(&gb, NAME_PORT, "isob");

    // the gateway and the outside work for both.
    let lo = SocketAddr::from((GATEWAY, lo_srv.port()));
    let out = SocketAddr::from((HOST_ADDR, out_srv.port()));
    for (k, (g, tag)) in [(&ga, "a"), (&gb, "b")].into_iter().enumerate() {
        let seed = 10 + k as u64;
        echo_ok(
            g,
            lo,
            seed,
            &net,
            &format!("isolated {tag} -> 10.0.2.2 (host loopback)"),
        );
        echo_ok(
            g,
            out,
            seed + 5,
            &net,
            &format!("isolated {tag} -> 198.51.100.1"),
        );
    }
    ping_ok(&ga, "10.0.2.2", &net, "isolated a -> gateway");

    // but not each other.
    ping_fails(&ga, "10.0.2.16", "--isolate: a -> b");
    ping_fails(&gb, "10.0.2.15", "--isolate: b -> a");
    let to_b = SocketAddr::from(([10, 0, 2, 16], NAME_PORT));
    let to_a = SocketAddr::from(([10, 0, 2, 15], NAME_PORT));
    connect_fails(&ga, to_b, Duration::from_secs(5), "--isolate: TCP a -> b");
    connect_fails(&gb, to_a, Duration::from_secs(5), "--isolate: TCP b -> a");

    // the same with each other's MAC known (static neighbour entries): unicast frames
    // between them are dropped too, and counted.
    ga.sh_ok(&format!(
        "ip neigh replace 10.0.2.16 lladdr {MB} dev tap0 nud permanent"
    ));
    gb.sh_ok(&format!(
        "ip neigh replace 10.0.2.15 lladdr {MA} dev tap0 nud permanent"
    ));
    ping_fails(&ga, "10.0.2.16", "--isolate, b's MAC known: a -> b");
    ping_fails(&gb, "10.0.2.15", "--isolate, a's MAC known: b -> a");
    connect_fails(
        &ga,
        to_b,
        Duration::from_secs(3),
        "--isolate, MAC known: TCP a -> b",
    );
    assert_eq!(nb.accepted(), 0, "--isolate: b's server was reached");
    assert_eq!(na.accepted(), 0, "--isolate: a's server was reached");

    let pol = list_policy(&net);
    assert_eq!(
        pol.pointer("/network/isolate"),
        Some(&Value::Bool(true)),
        "list_policy .network.isolate with --isolate: {pol:#}"
    );
    for id in [pa, pb] {
        let p = policy_port(&pol, id);
        assert_eq!(
            p.pointer("/flags/isolate"),
            Some(&Value::Bool(true)),
            "port {id}'s flags: {p:#}"
        );
        assert!(
            jnum(&p, "/isolated") > 0,
            "list_policy should count the isolated frames of port {id}: {pol:#}"
        );
    }
    let drops = stats_drop(&net, "guest_isolated");
    assert!(
        drops > 0,
        "stats .drops.guest_isolated should be > 0: {}",
        api_json(&net.api(), r#"{"execute":"stats"}"#)
    );

    // isolation off at run time.
    let r = api_ok(
        &net,
        r#"{"execute":"set_policy","arguments":{"isolate":false}}"#,
    );
    assert!(
        !r.to_string().contains("\"isolate\":true"),
        "set_policy isolate=false answered {r}"
    );
    let pol = list_policy(&net);
    assert_eq!(
        pol.pointer("/network/isolate"),
        Some(&Value::Bool(false)),
        "list_policy after set_policy isolate=false: {pol:#}"
    );
    // through ARP again, not the static entries.
    ga.sh_ok("ip neigh del 10.0.2.16 dev tap0");
    gb.sh_ok("ip neigh del 10.0.2.15 dev tap0");
    ping_ok(&ga, "10.0.2.16", &net, "isolation off: a -> b");
    ping_ok(&gb, "10.0.2.15", &net, "isolation off: b -> a");
    let t = name_via(&ga, to_b)
        .unwrap_or_else(|e| panic!("isolation off: TCP a -> b: {e}\n{}", net.log()));
    assert_eq!(t, "isob", "isolation off: a -> b's name server");
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 2. --block-host
// ---------------------------------------------------------------------------------------

/// A namespace beyond the host: the host namespace's `ext0p` moved into it with
/// 198.51.100.254/24, so the host reaches it through `ext0` (the "outside" that is not
/// the host itself). Deleted on drop.
struct Outside {
    name: String,
}

impl Outside {
    fn new(host: &HostNs) -> Outside {
        let name = format!("un-o-{}", unique_id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let o = Outside { name };
        host.exec_ok(&["ip", "link", "set", "ext0p", "netns", &o.name]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "198.51.100.254/24", "dev", "ext0p"],
            &["link", "set", "ext0p", "up"],
        ] {
            run_ok(Command::new("ip").arg("-n").arg(&o.name).args(args));
        }
        o
    }

    fn tcp_server(&self) -> TcpServer {
        let l = in_netns(&PathBuf::from(format!("/run/netns/{}", self.name)), || {
            std::net::TcpListener::bind("198.51.100.254:0")
        })
        .expect("a listener in the outside namespace");
        TcpServer::start(l, echo_handler)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `--block-host`: the guest's TCP to 10.0.2.2 (the host's loopback) is refused and its
/// UDP there gets ICMP administratively prohibited; TCP to the host's own address
/// 198.51.100.1 through NAT is refused too (it is the host all the same); a forward
/// from the host namespace's 127.0.0.1 reaches the guest's server, and the guest still
/// reaches a server beyond the host (198.51.100.254, in another namespace).
#[test]
fn block_host_but_forward_in() {
    const MG: &str = "52:54:00:b1:00:01";
    let host = HostNs::new();
    let outside = Outside::new(&host);
    let beyond = outside.tcp_server();
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let lo_udp = host.udp_echo("127.0.0.1:0");
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let p = free_ports(&host, 1)[0];
    let name = net_name("bh");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--block-host",
            "--dhcp-host",
            &format!("{MG},10.0.2.15"),
            "-p",
            &format!("127.0.0.1:{p}:10.0.2.15:{NAME_PORT}"),
        ],
    );
    let g = Guest::new(Owner::Root);
    let port = attach_lease(&host, &net, &g, MG, "bh", "10.0.2.15");
    let _ns = name_server(&g, NAME_PORT, "blocked-guest");

    connect_refused(
        &g,
        SocketAddr::from((GATEWAY, lo_srv.port())),
        &net,
        "--block-host: TCP to 10.0.2.2",
    );
    udp_prohibited(
        &g,
        SocketAddr::from((GATEWAY, lo_udp.addr.port())),
        &net,
        "--block-host: UDP to 10.0.2.2",
    );
    assert_eq!(
        lo_srv.accepted(),
        0,
        "the host's loopback was reached (TCP)"
    );
    assert_eq!(lo_udp.count(), 0, "the host's loopback was reached (UDP)");

    connect_refused(
        &g,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        &net,
        "--block-host: TCP to the host's own address 198.51.100.1",
    );
    assert_eq!(out_srv.accepted(), 0, "the host's own address was reached");

    via_forward(&host, p, "blocked-guest", &net);
    echo_ok(
        &g,
        SocketAddr::from(([198, 51, 100, 254], beyond.port())),
        21,
        &net,
        "--block-host: 198.51.100.254 beyond the host, through NAT",
    );
    assert_eq!(beyond.accepted(), 1, "the server beyond the host");

    let pol = list_policy(&net);
    assert_eq!(
        pol.pointer("/network/block_host"),
        Some(&Value::Bool(true)),
        "{pol:#}"
    );
    assert_eq!(
        policy_port(&pol, port).pointer("/flags/block_host"),
        Some(&Value::Bool(true)),
        "the guest's port flags: {pol:#}"
    );
    assert!(
        jnum(&pol, "/filters/denied/host_blocked") >= 3,
        "list_policy .filters.denied.host_blocked should count the TCP, UDP and \
         198.51.100.1 attempts: {pol:#}"
    );
    assert!(
        stats_drop(&net, "flow_denied") >= 2,
        "stats .drops.flow_denied"
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 3. anti-spoofing
// ---------------------------------------------------------------------------------------

const V_MAC: &str = "52:54:00:5f:00:01";
const N_MAC: &str = "52:54:00:5f:00:02";
const A_MAC: &str = "52:54:00:5f:00:03";
const V_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const N_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 17);
/// V's UDP sink.
const SINK_PORT: u16 = 9300;
/// N's UDP sink.
const SINK_PORT_N: u16 = 9301;

/// Victim V, neighbour N and attacker A on one nat network (all leased); A forges, from
/// a packet socket on its own tap0: ARP replies to V and gratuitous ARP claiming N's
/// address and the gateway's, UDP to V with N's source address (A's MAC), and UDP to V
/// with N's MAC and address, and a DHCP server message (UDP source port 67). With
/// anti-spoofing on (the default) nothing forged reaches V, V's neighbour entries are
/// untouched, the switch still delivers V → N to N, and A's port counts arp,
/// ipv4_source, mac and rogue_server; with `--allow-spoofing` the forged UDP
/// arrives (so the checks are what stop it).
fn spoof_scenario(allow_spoofing: bool) {
    let host = HostNs::new();
    let name = net_name(if allow_spoofing { "spoofok" } else { "spoof" });
    let mut args = vec![
        "--dhcp-host".to_string(),
        format!("{V_MAC},{V_IP}"),
        "--dhcp-host".to_string(),
        format!("{N_MAC},{N_IP}"),
        "--dhcp-host".to_string(),
        format!("{A_MAC},{A_IP}"),
    ];
    if allow_spoofing {
        args.push("--allow-spoofing".to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut net = Network::start(&host, &name, &args);
    let gv = Guest::new(Owner::Root);
    let gn = Guest::new(Owner::Root);
    let ga = Guest::new(Owner::Root);
    let pv = attach_lease(&host, &net, &gv, V_MAC, "victim", "10.0.2.15");
    let pn = attach_lease(&host, &net, &gn, N_MAC, "neighbour", "10.0.2.16");
    let pa = attach_lease(&host, &net, &ga, A_MAC, "attacker", "10.0.2.17");

    // V knows N and the gateway; N knows V through a permanent entry, so that N never
    // sends V an ARP probe (which would refresh V's entry for N and hide a successful
    // forgery).
    gn.sh_ok(&format!(
        "ip neigh replace {V_IP} lladdr {V_MAC} dev tap0 nud permanent"
    ));
    ping_ok(&gv, "10.0.2.2", &net, "victim -> gateway");
    ping_ok(&gv, "10.0.2.16", &net, "victim -> neighbour");
    ping_ok(&gn, "10.0.2.15", &net, "neighbour -> victim");
    assert_eq!(
        neigh_mac(&gv, "10.0.2.16").as_deref(),
        Some(N_MAC),
        "V's neighbour entry for N before the attack"
    );
    let gw_mac = neigh_mac(&gv, "10.0.2.2")
        .unwrap_or_else(|| panic!("V has no neighbour entry for 10.0.2.2 after pinging it"));

    let sink_v = UdpSink::start(&gv, SINK_PORT);
    let sink_n = UdpSink::start(&gn, SINK_PORT_N);
    udp_send(&gn, SocketAddr::from((V_IP, SINK_PORT)), "legit-1");
    let legit_from = sink_v
        .wait_for("legit-1", Duration::from_secs(3))
        .unwrap_or_else(|| panic!("N's own datagram never reached V's sink\n{}", net.log()));
    assert_eq!(
        legit_from.ip(),
        std::net::IpAddr::V4(N_IP),
        "legit-1's source"
    );

    // past the kernel's ARP locktime (1 s), so that an accepted forged ARP would
    // replace V's entry.
    thread::sleep(Duration::from_millis(1200));

    let (v, n, a) = (mac(V_MAC), mac(N_MAC), mac(A_MAC));
    let gw_ip = GATEWAY;
    let sent = ga.run(|| -> io::Result<usize> {
        let ps = PacketSocket::open("tap0")?;
        let mut k = 0;
        for round in 0..3u16 {
            let frames = [
                // ARP reply to V: "N's address is at A's MAC".
                arp_frame(v, a, 2, a, N_IP, v, V_IP),
                // gratuitous ARP (request form) claiming N's address.
                arp_frame(BROADCAST, a, 1, a, N_IP, [0; 6], N_IP),
                // gratuitous ARP (reply form) claiming the gateway's address.
                arp_frame(BROADCAST, a, 2, a, gw_ip, BROADCAST, gw_ip),
                // UDP to V with N's source address, from A's MAC.
                ipv4_frame(
                    v,
                    a,
                    N_IP,
                    V_IP,
                    17,
                    0x5000 + round,
                    (false, 0),
                    &udp_datagram(40000, SINK_PORT, format!("forged-ip-{round}").as_bytes()),
                ),
                // a "DHCP server" message (UDP 67 -> 68) from A's own address.
                ipv4_frame(
                    BROADCAST,
                    a,
                    A_IP,
                    Ipv4Addr::BROADCAST,
                    17,
                    0x7000 + round,
                    (false, 0),
                    &udp_datagram(67, 68, b"rogue-dhcp-server"),
                ),
                // UDP to V with N's MAC and N's address.
                ipv4_frame(
                    v,
                    n,
                    N_IP,
                    V_IP,
                    17,
                    0x6000 + round,
                    (false, 0),
                    &udp_datagram(40001, SINK_PORT, format!("forged-mac-{round}").as_bytes()),
                ),
            ];
            for f in &frames {
                ps.send(f)?;
                k += 1;
            }
            thread::sleep(Duration::from_millis(200));
        }
        Ok(k)
    });
    let sent = sent.unwrap_or_else(|e| panic!("the attacker's packet socket on tap0: {e}"));
    assert_eq!(sent, 18, "forged frames written");
    // V's entries right after the forged ARP (before V sends anything itself).
    let n_entry = neigh_mac(&gv, "10.0.2.16");
    let gw_entry = neigh_mac(&gv, "10.0.2.2");
    thread::sleep(Duration::from_millis(500));

    // first frame from V to N after the attack: the switch must still deliver it to N.
    udp_send(&gv, SocketAddr::from((N_IP, SINK_PORT_N)), "v-to-n");
    let v_to_n = sink_n.wait_for("v-to-n", Duration::from_secs(3));

    let got = sink_v.received();
    let forged_ip: Vec<_> = got
        .iter()
        .filter(|(_, p)| p.starts_with("forged-ip"))
        .collect();
    let forged_mac: Vec<_> = got
        .iter()
        .filter(|(_, p)| p.starts_with("forged-mac"))
        .collect();
    let pol = list_policy(&net);
    let port_a = policy_port(&pol, pa);

    if allow_spoofing {
        assert!(
            !forged_ip.is_empty() && forged_ip.iter().all(|(f, _)| f.ip() == N_IP),
            "--allow-spoofing: the UDP with N's source address (A's MAC) should reach V as \
             from {N_IP} (this proves the frames are well formed and only the checks stop \
             them); V received {got:?}\nnetwork output: {}",
            net.log()
        );
        assert!(
            !forged_mac.is_empty(),
            "--allow-spoofing: the frame with N's MAC should reach V; V received {got:?}"
        );
        assert_eq!(
            n_entry.as_deref(),
            Some(A_MAC),
            "--allow-spoofing: the forged ARP should have changed V's entry for N (this \
             proves the forged ARP is one V's kernel accepts)"
        );
        assert_eq!(
            spoofed_total(&port_a),
            0,
            "--allow-spoofing: nothing is counted as spoofed: {pol:#}"
        );
        assert_eq!(
            pol.pointer("/network/allow_spoofing"),
            Some(&Value::Bool(true)),
            "{pol:#}"
        );
    } else {
        assert!(
            forged_ip.is_empty() && forged_mac.is_empty(),
            "anti-spoofing: forged datagrams reached V: {got:?}\nnetwork output: {}",
            net.log()
        );
        assert_eq!(
            n_entry.as_deref(),
            Some(N_MAC),
            "anti-spoofing: V's ARP entry for N was changed by the attacker ({A_MAC})"
        );
        assert_eq!(
            gw_entry.as_deref(),
            Some(gw_mac.as_str()),
            "anti-spoofing: V's ARP entry for the gateway was changed (attacker {A_MAC})"
        );
        assert!(
            v_to_n.is_some(),
            "anti-spoofing: after A sent frames with N's MAC the switch should still deliver \
             V -> N to N (N received {:?})\nnetwork output: {}",
            sink_n.received(),
            net.log()
        );
        for k in ["arp", "ipv4_source", "mac", "rogue_server"] {
            assert!(
                jnum(&port_a, &format!("/spoofed/{k}")) > 0,
                "anti-spoofing: the attacker's port {pa} should count spoofed.{k}: {port_a:#}"
            );
        }
        for (id, who) in [(pv, "victim"), (pn, "neighbour")] {
            let p = policy_port(&pol, id);
            assert_eq!(
                spoofed_total(&p),
                0,
                "the {who}'s port {id} sent nothing forged: {p:#}"
            );
        }
        assert_eq!(
            pol.pointer("/network/allow_spoofing"),
            Some(&Value::Bool(false)),
            "anti-spoofing is on by default: {pol:#}"
        );
        assert!(
            stats_drop(&net, "spoofed") > 0,
            "stats .drops.spoofed should be > 0"
        );
        // N's own traffic still reaches V, as from N.
        udp_send(&gn, SocketAddr::from((V_IP, SINK_PORT)), "legit-2");
        let from = sink_v.wait_for("legit-2", Duration::from_secs(3));
        assert_eq!(
            from.map(|f| f.ip()),
            Some(std::net::IpAddr::V4(N_IP)),
            "N's datagram after the attack (V received {:?})",
            sink_v.received()
        );
        ping_ok(
            &gv,
            "10.0.2.16",
            &net,
            "victim -> neighbour after the attack",
        );
    }
    net.assert_alive("at the end");
}

/// Anti-spoofing on (the default): a guest cannot hijack another's address or MAC.
#[test]
fn spoofer_cannot_hijack() {
    spoof_scenario(false);
}

/// `--allow-spoofing`: the same forged frames do get through (the control of
/// [`spoofer_cannot_hijack`]).
#[test]
fn allow_spoofing_lets_forgery_through() {
    spoof_scenario(true);
}

// ---------------------------------------------------------------------------------------
// 4. --filter
// ---------------------------------------------------------------------------------------

/// `--filter deny:tcp:198.51.100.1/32:P1` and `--filter deny:udp:198.51.100.1/32:U1`:
/// the guest's connect to P1 is refused at once while P2 works; its UDP to U1 gets ICMP
/// administratively prohibited and no answer while U2 echoes; `list_policy` shows one
/// hit per rule.
#[test]
fn deny_rule_blocks_one_port() {
    let host = HostNs::new();
    let s1 = host.tcp_server("198.51.100.1:0", echo_handler);
    let s2 = host.tcp_server("198.51.100.1:0", echo_handler);
    let u1 = host.udp_echo("198.51.100.1:0");
    let u2 = host.udp_echo("198.51.100.1:0");
    let tcp_rule = format!("deny:tcp:198.51.100.1/32:{}", s1.port());
    let udp_rule = format!("deny:udp:198.51.100.1/32:{}", u1.addr.port());
    let name = net_name("deny");
    let mut net = Network::start(
        &host,
        &name,
        &["--filter", &tcp_rule, "--filter", &udp_rule],
    );
    let g = Guest::new(Owner::Root);
    attach_lease(&host, &net, &g, "52:54:00:de:00:01", "deny", "10.0.2.15");

    connect_refused(
        &g,
        SocketAddr::from((HOST_ADDR, s1.port())),
        &net,
        &format!("{tcp_rule}: TCP to P1"),
    );
    assert_eq!(s1.accepted(), 0, "{tcp_rule}: the server on P1 was reached");
    echo_ok(
        &g,
        SocketAddr::from((HOST_ADDR, s2.port())),
        41,
        &net,
        &format!("{tcp_rule}: TCP to P2"),
    );
    udp_prohibited(&g, u1.addr, &net, &format!("{udp_rule}: UDP to U1"));
    assert_eq!(
        u1.count(),
        0,
        "{udp_rule}: the UDP server on U1 was reached"
    );
    udp_echo_ok(&g, u2.addr, &net, &format!("{udp_rule}: UDP to U2"));

    let pol = list_policy(&net);
    assert_eq!(rule_hits(&pol, &tcp_rule), 1, "hits of {tcp_rule}: {pol:#}");
    assert_eq!(rule_hits(&pol, &udp_rule), 1, "hits of {udp_rule}: {pol:#}");
    assert_eq!(
        pol.pointer("/filters/default").and_then(Value::as_str),
        Some("allow"),
        "{pol:#}"
    );
    assert!(
        jnum(&pol, "/filters/denied/filtered") >= 2,
        "list_policy .filters.denied.filtered: {pol:#}"
    );
    assert!(
        stats_drop(&net, "flow_denied") >= 2,
        "stats .drops.flow_denied"
    );
    net.assert_alive("at the end");
}

/// Rules cover flows to other guests too: guest A's own rules
/// (`--filter MAC_A=deny:tcp:10.0.2.16/32:P1`, `...=deny:udp:10.0.2.16/32:U1`) refuse
/// its connect to B's P1 at once (RST from B's address) and its UDP to B's U1 (ICMP
/// administratively prohibited) while B's P2 and U2 answer A; B, without rules,
/// reaches A's servers on the same ports; `list_policy` counts one hit per rule.
#[test]
fn rules_cover_guest_to_guest_flows() {
    const MA: &str = "52:54:00:9a:00:01";
    const MB: &str = "52:54:00:9a:00:02";
    const P1: u16 = 7101;
    const P2: u16 = 7102;
    const U1: u16 = 7201;
    const U2: u16 = 7202;
    let host = HostNs::new();
    let tcp_rule = format!("deny:tcp:10.0.2.16/32:{P1}");
    let udp_rule = format!("deny:udp:10.0.2.16/32:{U1}");
    let name = net_name("g2g");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-host",
            &format!("{MA},10.0.2.15"),
            "--dhcp-host",
            &format!("{MB},10.0.2.16"),
            "--filter",
            &format!("{MA}={tcp_rule}"),
            "--filter",
            &format!("{MA}={udp_rule}"),
        ],
    );
    let a = Guest::new(Owner::Root);
    let b = Guest::new(Owner::Root);
    attach_lease(&host, &net, &a, MA, "g2g-a", "10.0.2.15");
    attach_lease(&host, &net, &b, MB, "g2g-b", "10.0.2.16");
    let serve = |g: &Guest| {
        let t: Vec<TcpServer> = [P1, P2]
            .iter()
            .map(|p| {
                let l = g
                    .run(|| std::net::TcpListener::bind(("0.0.0.0", *p)))
                    .unwrap();
                TcpServer::start(l, echo_handler)
            })
            .collect();
        let u: Vec<UdpEcho> = [U1, U2]
            .iter()
            .map(|p| UdpEcho::start(g.run(|| UdpSocket::bind(("0.0.0.0", *p))).unwrap()))
            .collect();
        (t, u)
    };
    let (bt, bu) = serve(&b);
    let (at, au) = serve(&a);
    let ip_a = Ipv4Addr::new(10, 0, 2, 15);
    let ip_b = Ipv4Addr::new(10, 0, 2, 16);

    connect_refused(&a, SocketAddr::from((ip_b, P1)), &net, "A to B:P1 (denied)");
    assert_eq!(bt[0].accepted(), 0, "B's P1 was reached");
    echo_ok(&a, SocketAddr::from((ip_b, P2)), 51, &net, "A to B:P2");
    udp_prohibited(&a, SocketAddr::from((ip_b, U1)), &net, "A to B:U1 (denied)");
    assert_eq!(bu[0].count(), 0, "B's U1 was reached");
    udp_echo_ok(&a, SocketAddr::from((ip_b, U2)), &net, "A to B:U2");
    // B has no rules of its own.
    echo_ok(&b, SocketAddr::from((ip_a, P1)), 52, &net, "B to A:P1");
    udp_echo_ok(&b, SocketAddr::from((ip_a, U1)), &net, "B to A:U1");
    assert_eq!(at[0].accepted(), 1);
    assert!(au[0].count() >= 1);

    let pol = list_policy(&net);
    let guests = pol
        .pointer("/filters/guests")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("list_policy without .filters.guests: {pol:#}"));
    let hits = |rule: &str| -> u64 {
        guests
            .iter()
            .flat_map(|g| {
                g.get("rules")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|r| r.get("rule").and_then(Value::as_str) == Some(rule))
            .map(|r| jnum(&r, "/hits"))
            .unwrap_or_else(|| panic!("list_policy does not list A's rule {rule}: {pol:#}"))
    };
    assert_eq!(hits(&tcp_rule), 1, "{pol:#}");
    assert_eq!(hits(&udp_rule), 1, "{pol:#}");
    assert!(
        stats_drop(&net, "flow_denied") >= 2,
        "stats .drops.flow_denied"
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 5. set_filters at run time
// ---------------------------------------------------------------------------------------

/// A network without rules: a connection to 198.51.100.1:P1 works; `set_filters` with a
/// deny rule for P1 makes a new connect fail at once while the connection opened before
/// keeps exchanging data (rules are asked once per new flow); `set_filters []` lets new
/// connects through again. A bad rule through the API is an error naming it and changes
/// nothing. Then `--filter-default deny --filter allow:tcp:198.51.100.1/32:P2` lets only
/// P2 through.
#[test]
fn rules_change_at_run_time() {
    let host = HostNs::new();
    let s1 = host.tcp_server("198.51.100.1:0", echo_handler);
    let s2 = host.tcp_server("198.51.100.1:0", echo_handler);
    let to1 = SocketAddr::from((HOST_ADDR, s1.port()));
    let to2 = SocketAddr::from((HOST_ADDR, s2.port()));
    let rule = format!("deny:tcp:198.51.100.1/32:{}", s1.port());
    {
        let name = net_name("rt");
        let mut net = Network::start(&host, &name, &[]);
        let g = Guest::new(Owner::Root);
        attach_lease(&host, &net, &g, "52:54:00:de:00:02", "rt", "10.0.2.15");

        // a connection opened before the rule.
        let mut c1 = g
            .tcp_connect(to1)
            .unwrap_or_else(|e| panic!("TCP to {to1} before any rule: {e}\n{}", net.log()));
        let roundtrip = |c: &mut TcpStream, msg: &[u8]| -> io::Result<Vec<u8>> {
            c.write_all(msg)?;
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf)?;
            Ok(buf)
        };
        assert_eq!(
            roundtrip(&mut c1, b"before-the-rule").expect("echo before the rule"),
            b"before-the-rule"
        );

        let r = api_ok(
            &net,
            &format!(r#"{{"execute":"set_filters","arguments":{{"rules":["{rule}"]}}}}"#),
        );
        assert!(
            r.to_string().contains(&rule),
            "set_filters should answer the new rule list: {r}"
        );
        connect_refused(&g, to1, &net, &format!("after set_filters [{rule}]"));
        assert_eq!(
            roundtrip(&mut c1, b"after-the-rule")
                .unwrap_or_else(|e| panic!("the connection opened before the rule: {e}")),
            b"after-the-rule",
            "the connection opened before the rule should keep working"
        );
        echo_ok(&g, to2, 51, &net, "P2 while P1 is denied");
        assert_eq!(s1.accepted(), 1, "only the first connection reached P1");
        let pol = list_policy(&net);
        assert_eq!(
            rule_hits(&pol, &rule),
            1,
            "one denied connect, and the open connection's data asks no rule: {pol:#}"
        );

        // a bad rule: an error naming it; nothing changes.
        let bad = "deny:tcp:10.0.2.5/24";
        let v = api_json(
            &net.api(),
            &format!(r#"{{"execute":"set_filters","arguments":{{"rules":["{bad}"]}}}}"#),
        );
        let desc = v
            .pointer("/error/desc")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("set_filters with a bad rule should be an error: {v}"));
        assert!(
            desc.contains(bad) && desc.contains("host bits"),
            "the error should name the rule {bad:?} and say \"host bits\": {desc:?}"
        );
        let pol = list_policy(&net);
        assert_eq!(
            rule_hits(&pol, &rule),
            1,
            "a refused set_filters should leave the rules as they were: {pol:#}"
        );
        connect_refused(&g, to1, &net, "after a refused set_filters");

        // no rules again.
        api_ok(
            &net,
            r#"{"execute":"set_filters","arguments":{"rules":[]}}"#,
        );
        let pol = list_policy(&net);
        assert_eq!(
            pol.pointer("/filters/network")
                .and_then(Value::as_array)
                .map(Vec::len),
            Some(0),
            "set_filters [] should leave no network rule: {pol:#}"
        );
        echo_ok(&g, to1, 52, &net, "P1 after set_filters []");
        assert_eq!(
            roundtrip(&mut c1, b"at-the-end").expect("the first connection at the end"),
            b"at-the-end"
        );
        drop(c1);
        net.assert_alive("after the rule changes");
    }

    // default deny, one allow rule.
    let allow = format!("allow:tcp:198.51.100.1/32:{}", s2.port());
    let name = net_name("dd");
    let mut net = Network::start(
        &host,
        &name,
        &["--filter-default", "deny", "--filter", &allow],
    );
    let g = Guest::new(Owner::Root);
    attach_lease(&host, &net, &g, "52:54:00:de:00:03", "dd", "10.0.2.15");
    let before = s1.accepted();
    echo_ok(
        &g,
        to2,
        53,
        &net,
        &format!("--filter-default deny --filter {allow}"),
    );
    connect_refused(&g, to1, &net, "--filter-default deny: P1");
    assert_eq!(s1.accepted(), before, "default deny: P1 was reached");
    let pol = list_policy(&net);
    assert_eq!(
        pol.pointer("/filters/default").and_then(Value::as_str),
        Some("deny"),
        "{pol:#}"
    );
    assert_eq!(rule_hits(&pol, &allow), 1, "hits of {allow}: {pol:#}");
    assert!(
        jnum(&pol, "/filters/default_hits") >= 1,
        "the refused connect to P1 should count as a default hit: {pol:#}"
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 6. --guest-policy MAC=restrict
// ---------------------------------------------------------------------------------------

/// `--guest-policy R=restrict`: guest R (DHCP) reaches neither 198.51.100.1, nor
/// 10.0.2.2, nor the other guest, nor the DNS relay, but a forward into it works; the
/// other guest F reaches 198.51.100.1 and resolves through 10.0.2.3. `set_policy` for R
/// with restrict=false at run time lets R out.
#[test]
fn restrict_guest() {
    const MR: &str = "52:54:00:4e:00:01";
    const MF: &str = "52:54:00:4e:00:02";
    require_tool("dig");
    let host = HostNs::new();
    let _dns = Dnsmasq::start(
        &host,
        Ipv4Addr::LOCALHOST,
        &["--address=/www.test.example/192.0.2.10".to_string()],
    );
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let out_udp = host.udp_echo("198.51.100.1:0");
    let p = free_ports(&host, 1)[0];
    let name = net_name("rs");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-host",
            &format!("{MR},10.0.2.15"),
            "--dhcp-host",
            &format!("{MF},10.0.2.16"),
            "--guest-policy",
            &format!("{MR}=restrict"),
            "-p",
            &format!("127.0.0.1:{p}:10.0.2.15:{NAME_PORT}"),
        ],
    );
    let gr = Guest::new(Owner::Root);
    let gf = Guest::new(Owner::Root);
    let pr = attach_lease(&host, &net, &gr, MR, "restricted", "10.0.2.15");
    let pf = attach_lease(&host, &net, &gf, MF, "free", "10.0.2.16");
    let _nr = name_server(&gr, NAME_PORT, "restricted");
    let _nf = name_server(&gf, NAME_PORT, "free");

    // the unrestricted guest works.
    echo_ok(
        &gf,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        61,
        &net,
        "unrestricted F -> 198.51.100.1",
    );
    let dig = gf.sh_ok("dig +time=2 +tries=2 +short @10.0.2.3 www.test.example A");
    assert_eq!(dig.trim(), "192.0.2.10", "unrestricted F: the DNS relay");
    let accepted_out = out_srv.accepted();

    // the restricted one reaches nothing: new flows of its own are refused (RST, ICMP
    // administratively prohibited), the other guest is fenced off.
    let t = Duration::from_secs(4);
    connect_refused(
        &gr,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        &net,
        "restricted R: TCP to 198.51.100.1",
    );
    connect_refused(
        &gr,
        SocketAddr::from((GATEWAY, lo_srv.port())),
        &net,
        "restricted R: TCP to 10.0.2.2",
    );
    udp_prohibited(&gr, out_udp.addr, &net, "restricted R: UDP to 198.51.100.1");
    assert_eq!(out_udp.count(), 0, "restricted R reached the UDP echo");
    connect_fails(
        &gr,
        SocketAddr::from(([10, 0, 2, 16], NAME_PORT)),
        t,
        "restricted R: TCP to the other guest",
    );
    ping_fails(&gr, "198.51.100.1", "restricted R: ping 198.51.100.1");
    ping_fails(&gr, "10.0.2.16", "restricted R: ping the other guest");
    let o = gr.sh("dig +time=1 +tries=1 +short @10.0.2.3 www.test.example A");
    // dig exits 9 when no server answered at all (the relay stays silent for a
    // restricted guest, as slirp's DNS does with restrict=on).
    assert!(
        o.status.code() == Some(9) && !String::from_utf8_lossy(&o.stdout).contains("192.0.2.10"),
        "restricted R: the DNS relay should not answer (dig exit 9, no reply): {}",
        out_text(&o)
    );
    assert_eq!(
        out_srv.accepted(),
        accepted_out,
        "restricted R reached 198.51.100.1"
    );
    assert_eq!(
        lo_srv.accepted(),
        0,
        "restricted R reached the host's loopback"
    );

    // a forward in still works.
    via_forward(&host, p, "restricted", &net);

    let pol = list_policy(&net);
    assert_eq!(
        policy_port(&pol, pr).pointer("/flags/restrict"),
        Some(&Value::Bool(true)),
        "R's port flags: {pol:#}"
    );
    assert_eq!(
        policy_port(&pol, pf).pointer("/flags/restrict"),
        Some(&Value::Bool(false)),
        "F's port flags: {pol:#}"
    );
    assert_eq!(
        pol.pointer("/network/restrict"),
        Some(&Value::Bool(false)),
        "{pol:#}"
    );
    assert!(
        jnum(&pol, "/filters/denied/restricted") >= 2,
        "list_policy .filters.denied.restricted should count R's attempts: {pol:#}"
    );
    // F, unrestricted, still reaches the outside afterwards.
    echo_ok(
        &gf,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        62,
        &net,
        "unrestricted F -> 198.51.100.1 at the end",
    );
    udp_echo_ok(
        &gf,
        out_udp.addr,
        &net,
        "unrestricted F: UDP to 198.51.100.1",
    );

    // set_policy for R at run time: restrict off, R reaches the outside.
    api_ok(
        &net,
        &format!(r#"{{"execute":"set_policy","arguments":{{"guest":"{MR}","restrict":false}}}}"#),
    );
    let pol = list_policy(&net);
    assert_eq!(
        policy_port(&pol, pr).pointer("/flags/restrict"),
        Some(&Value::Bool(false)),
        "R's port flags after set_policy restrict=false: {pol:#}"
    );
    echo_ok(
        &gr,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        63,
        &net,
        "R after set_policy restrict=false -> 198.51.100.1",
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 7. a bad rule on the command line
// ---------------------------------------------------------------------------------------

/// `usernet network X --filter deny:tcp:10.0.2.5/24` (and the GUEST= form) exits
/// non-zero at once with an error naming the rule and its host bits; no api.sock.
#[test]
fn bad_filter_rule_is_a_clear_error() {
    let host = HostNs::new();
    let runtime = network_runtime_dir(&host);
    let _killer = KillUsernetMentioning(runtime.clone());
    let rule = "deny:tcp:10.0.2.5/24";
    for arg in [rule.to_string(), format!("52:54:00:ba:d0:01={rule}")] {
        let name = net_name("bad");
        let mut c = host.command(&engine_bin().to_string_lossy());
        c.arg("network")
            .arg(&name)
            .arg("--runtime-dir")
            .arg(&runtime)
            .args(["--filter", &arg]);
        let start = Instant::now();
        let out = run_to_files(&mut c, &host.dir, "bad", Duration::from_secs(10));
        assert!(
            !out.status.success(),
            "--filter {arg} should be refused: {out:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "--filter {arg}: refused only after {:?}",
            start.elapsed()
        );
        assert!(
            out.stderr.contains(rule) && out.stderr.contains("host bits"),
            "--filter {arg}: the error should name the rule {rule:?} and say \"host bits\": \
             {:?}",
            out.stderr
        );
        assert!(
            !runtime.join(&name).join("api.sock").exists(),
            "--filter {arg}: the refused network left an api.sock"
        );
    }
}
