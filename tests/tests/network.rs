//! Networks of guests: `usernet network NAME` (a learning switch plus, in nat and
//! host-only modes, the router), `usernet attach` (a namespace's TAP joins a running
//! network, or starts one), `usernet run --network` and a QEMU guest on the network's
//! stream socket.
//!
//! Every network runs inside the test's host namespace (`ip netns exec un-h-<id>`, as the
//! other engines do) with `--runtime-dir <scratch>/run`, so tests never share sockets and
//! everything the guests reach is the test's own: servers on the host namespace's
//! 127.0.0.1 (through 10.0.2.2) and on 198.51.100.1 (through NAT). DHCP clients run with
//! a script written by the harness that only configures tap0 inside the guest.

use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};
use usernet_tests::*;

/// Size of the file sent from one guest to another.
const FILE_LEN: usize = 4 << 20;
/// The port every guest's name server listens on (the forwards' target).
const NAME_PORT: u16 = 8080;
/// The port of the guests' sha256 sinks.
const SHA_PORT: u16 = 9100;

// ---------------------------------------------------------------------------------------
// helpers: guests
// ---------------------------------------------------------------------------------------

/// The IPv4 addresses ("A/LEN") on the guest's tap0.
fn tap_addrs(g: &Guest) -> Vec<String> {
    g.sh_ok("ip -4 -o addr show dev tap0")
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            w.next().map(str::to_string)
        })
        .collect()
}

/// The guest's tap0 MAC (lower case).
fn tap_mac(g: &Guest) -> String {
    g.sh_ok("ip -br link show dev tap0")
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_lowercase()
}

/// A TCP server in `g` on 0.0.0.0:`port` that reads to EOF and answers "LEN SHA256".
fn sha_server(g: &Guest, port: u16) -> TcpServer {
    let l: TcpListener = g.run(|| {
        TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
    });
    TcpServer::start(l, |mut s: TcpStream| {
        let (got, err) = read_to_end_result(&mut s);
        let msg = match err {
            None => format!("{} {}\n", got.len(), sha256_hex(&got)),
            Some(e) => format!("error {e}\n"),
        };
        let _ = s.write_all(msg.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// Sends `data` from `g` to a [`sha_server`] at `to`; returns its answer.
fn send_for_sha(g: &Guest, to: SocketAddr, data: &[u8]) -> io::Result<String> {
    g.run(|| {
        let mut s = connect_tcp(to, Duration::from_secs(5))?;
        s.write_all(data)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut ans = String::new();
        s.read_to_string(&mut ans)?;
        Ok(ans.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------
// helpers: --list / API JSON
// ---------------------------------------------------------------------------------------

fn norm_mac(s: &str) -> String {
    s.trim().to_lowercase().replace('-', ":")
}

fn jstr(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn jnum(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("field \"{k}\" missing or not a number in {v}"))
}

/// The lease address of `mac` in a leases array.
fn lease_addr(leases: &[Value], mac: &str) -> Option<String> {
    leases
        .iter()
        .find(|l| norm_mac(&jstr(l, "mac")) == norm_mac(mac))
        .map(|l| jstr(l, "addr"))
}

fn ports_of_kind<'a>(ports: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ports.iter().filter(|p| jstr(p, "kind") == kind).collect()
}

fn port_by_id(ports: &[Value], id: u64) -> Option<&Value> {
    ports
        .iter()
        .find(|p| p.get("id").and_then(Value::as_u64) == Some(id))
}

fn in_pool(addr: &str) -> bool {
    match addr.parse::<Ipv4Addr>() {
        Ok(a) => {
            let o = a.octets();
            o[..3] == [10, 0, 2] && o[3] >= 4 && o[3] != 255
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------
// 1. nat: three namespace guests
// ---------------------------------------------------------------------------------------

const MAC_A: &str = "52:54:00:aa:00:01";
const MAC_B: &str = "52:54:00:aa:00:02";
const MAC_C: &str = "52:54:00:aa:00:03";

/// Three guests on one nat network: reserved leases (.15, .16) and a pool lease, all
/// distinct (udhcpc, `ip addr`, `--list --json`); every guest pings the other two; 4 MiB
/// from A to B with the same sha256; each reaches 127.0.0.1 of the host namespace through
/// 10.0.2.2 and 198.51.100.1 through NAT; each is reached through its own forward (two
/// `-p` by address, one added through the API by MAC).
#[test]
fn nat_three_guests() {
    let host = HostNs::new();
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let ports = free_ports(&host, 3);
    let (p1, p2, p3) = (ports[0], ports[1], ports[2]);
    let name = net_name("nat3");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-host",
            &format!("{MAC_A},10.0.2.15"),
            "--dhcp-host",
            &format!("{MAC_B},10.0.2.16"),
            "-p",
            &format!("127.0.0.1:{p1}:10.0.2.15:{NAME_PORT}"),
            "-p",
            &format!("127.0.0.1:{p2}:10.0.2.16:{NAME_PORT}"),
        ],
    );
    let specs = [("ga", MAC_A), ("gb", MAC_B), ("gc", MAC_C)];
    let guests: Vec<Guest> = specs.iter().map(|_| Guest::new(Owner::Root)).collect();
    let mut port_ids = Vec::new();
    for (g, (tag, mac)) in guests.iter().zip(specs) {
        port_ids.push(net.attach(&host, g, &["--configure", "--macaddress", mac]));
        assert_eq!(tap_mac(g), mac, "{tag}: --macaddress");
    }
    let mut ids = port_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three attaches, three ports: {port_ids:?}");

    let mut addrs = Vec::new();
    for (g, (tag, _)) in guests.iter().zip(specs) {
        let l = guest_udhcpc(g, &host.dir, tag, &["-x", &format!("hostname:{tag}")]);
        let ip = l.get("ip").cloned().unwrap_or_default();
        assert_eq!(
            l.get("router").map(String::as_str),
            Some("10.0.2.2"),
            "{tag}: {l:?}"
        );
        assert_eq!(
            l.get("dns").map(String::as_str),
            Some("10.0.2.3"),
            "{tag}: {l:?}"
        );
        assert_eq!(
            tap_addrs(g),
            vec![format!("{ip}/24")],
            "{tag}: tap0 should carry its lease"
        );
        addrs.push(ip);
    }
    assert_eq!(addrs[0], "10.0.2.15", "reserved lease of {MAC_A}");
    assert_eq!(addrs[1], "10.0.2.16", "reserved lease of {MAC_B}");
    assert!(
        in_pool(&addrs[2]) && addrs[2] != addrs[0] && addrs[2] != addrs[1],
        "the third guest's pool lease should be a fresh 10.0.2.x: {addrs:?}"
    );
    let leases = net.list_array("leases");
    for ((_, mac), ip) in specs.iter().zip(&addrs) {
        assert_eq!(
            lease_addr(&leases, mac).as_deref(),
            Some(ip.as_str()),
            "--list --json lease of {mac}: {leases:#?}"
        );
    }
    assert_eq!(leases.len(), 3, "three leases: {leases:#?}");

    // every guest pings the other two.
    for (i, g) in guests.iter().enumerate() {
        for (j, ip) in addrs.iter().enumerate() {
            if i != j {
                ping_ok(g, ip, &net, &format!("{} -> {}", specs[i].0, specs[j].0));
            }
        }
    }

    // 4 MiB from A to B, checksummed.
    let sink = sha_server(&guests[1], SHA_PORT);
    let data = pattern(0x6e65_7431, FILE_LEN);
    let to_b = SocketAddr::from((addrs[1].parse::<Ipv4Addr>().expect("ip"), SHA_PORT));
    let ans = send_for_sha(&guests[0], to_b, &data)
        .unwrap_or_else(|e| panic!("A -> B {to_b}: {e}\nnetwork output: {}", net.log()));
    assert_eq!(
        ans,
        format!("{FILE_LEN} {}", sha256_hex(&data)),
        "B received something else than A sent"
    );
    drop(sink);

    // the host's loopback through 10.0.2.2 and the outside through NAT.
    let lo = SocketAddr::from((GATEWAY, lo_srv.port()));
    let out = SocketAddr::from((HOST_ADDR, out_srv.port()));
    for (k, (g, (tag, _))) in guests.iter().zip(specs).enumerate() {
        let seed = 100 + k as u64;
        echo_via(g, lo, seed, 64 * 1024)
            .unwrap_or_else(|e| panic!("{tag} -> host loopback via 10.0.2.2: {e}"));
        echo_via(g, out, seed + 10, 64 * 1024)
            .unwrap_or_else(|e| panic!("{tag} -> 198.51.100.1 through NAT: {e}"));
    }
    assert!(lo_srv.accepted() >= 3 && out_srv.accepted() >= 3);

    // forwards: two by -p (by address), the third added now through the API by MAC.
    let _names: Vec<TcpServer> = guests
        .iter()
        .zip(specs)
        .map(|(g, (tag, _))| name_server(g, NAME_PORT, tag))
        .collect();
    let v = api_json(
        &net.api(),
        &format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{p3},"guest_mac":"{MAC_C}","guest_port":{NAME_PORT}}}}}"#
        ),
    );
    assert!(
        v.pointer("/return/id").is_some(),
        "add_hostfwd with guest_mac: {v}"
    );
    via_forward(&host, p1, "ga", &net);
    via_forward(&host, p2, "gb", &net);
    via_forward(&host, p3, "gc", &net);
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 2. nat: a QEMU guest and a namespace guest
// ---------------------------------------------------------------------------------------

/// The VM's MAC (QEMU's default, explicit).
const VM_MAC: &str = "52:54:00:12:34:56";
/// The namespace guest's MAC.
const NS_MAC: &str = "52:54:00:bb:00:01";
/// The VM's echo server (busybox nc -e cat, started by its /init).
const VM_ECHO_PORT: u16 = 7000;
/// What the VM downloads from the host namespace's 127.0.0.1 through 10.0.2.2.
const VM_BLOB_LEN: usize = 512 * 1024;
/// Boot to "USERNET-READY" under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// A QEMU guest (killed on drop) whose /init reports "USERNET-..." lines on its console.
struct Vm {
    proc_: BgChild,
    console: PathBuf,
    qemu_log: PathBuf,
    started: Instant,
}

impl Vm {
    fn boot(host: &HostNs, netdev: &str, http_port: u16) -> Vm {
        let img = vm_image();
        let console = host.dir.join("console.log");
        let qemu_log = host.dir.join("qemu.log");
        let append = format!(
            "console=ttyS0 quiet panic=-1 usernet_http={http_port} usernet_echo={VM_ECHO_PORT}"
        );
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "q35", "-accel", "tcg", "-m", "256"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&img.kernel)
            .arg("-initrd")
            .arg(&img.initrd)
            .args(["-append", &append])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={VM_MAC}")])
            .args(["-netdev", netdev]);
        let started = Instant::now();
        let proc_ = BgChild::start(&mut c, &qemu_log);
        Vm {
            proc_,
            console,
            qemu_log,
            started,
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for a console line starting with `USERNET-<what>`; returns the rest.
    fn wait_line(&mut self, what: &str, net: &Network) -> String {
        let prefix = format!("USERNET-{what}");
        loop {
            let text = self.console();
            if let Some(l) = text.lines().find(|l| l.starts_with(&prefix)) {
                return l[prefix.len()..].trim().to_string();
            }
            let halted = text.contains("USERNET-HALT");
            let exited = self.proc_.try_wait();
            if halted || exited.is_some() || self.started.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "the VM never printed {prefix} (after {:?}; halted: {halted}; qemu exit: \
                     {exited:?})\n--- console ---\n{text}\n--- qemu ---\n{}\n--- network ---\n{}",
                    self.started.elapsed(),
                    fs::read_to_string(&self.qemu_log).unwrap_or_default(),
                    net.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A QEMU guest on DIR/NAME/stream.sock and a namespace guest on the same nat network:
/// both lease (distinct addresses), the VM pings the gateway and downloads from the
/// host namespace's loopback, the namespace pings the VM and exchanges 256 KiB with the
/// VM's echo server; `--list --json` shows a stream port and a tap port and both leases.
#[test]
fn nat_qemu_and_namespace() {
    vm_image();
    let host = HostNs::new();
    let seed = 0x766d_0000 + u64::from(std::process::id());
    let http = host.tcp_server("127.0.0.1:0", http_handler(seed, VM_BLOB_LEN));
    let name = net_name("vmns");
    let mut net = Network::start(&host, &name, &[]);
    let stream = net.stream_sock();
    {
        use std::os::unix::fs::FileTypeExt;
        let md = fs::metadata(&stream)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", stream.display(), net.log()));
        assert!(
            md.file_type().is_socket(),
            "{} is no socket",
            stream.display()
        );
    }
    let netdev = format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
        stream.display()
    );
    assert!(
        net.log()
            .contains(&format!("addr.path={}", stream.display())),
        "the network should print the QEMU arguments naming its stream socket:\n{}",
        net.log()
    );
    assert!(
        net.log().contains(&net.api().display().to_string()),
        "the network should print its API socket's path:\n{}",
        net.log()
    );
    let mut vm = Vm::boot(&host, &netdev, http.port());

    let g = Guest::new(Owner::Root);
    let ns_port = net.attach(&host, &g, &["--configure", "--macaddress", NS_MAC]);
    let ns_lease = guest_udhcpc(&g, &host.dir, "ns", &[]);
    let ns_ip = ns_lease.get("ip").cloned().unwrap_or_default();
    assert!(in_pool(&ns_ip), "namespace lease: {ns_lease:?}");

    let lease = vm.wait_line("LEASE", &net);
    let field = |k: &str| {
        lease
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    let vm_ip = field("ip");
    assert!(in_pool(&vm_ip), "the VM's lease: {lease}");
    assert_ne!(
        vm_ip, ns_ip,
        "the VM and the namespace got the same address"
    );
    assert_eq!(field("router"), "10.0.2.2", "the VM's lease: {lease}");
    assert_eq!(field("dns"), "10.0.2.3", "the VM's lease: {lease}");
    vm.wait_line("READY", &net);
    assert_eq!(
        vm.wait_line("PING", &net),
        "3 packets received",
        "the VM pings 10.0.2.2"
    );
    let sha = vm.wait_line("SHA256", &net);
    assert_eq!(
        sha,
        format!(
            "{} size={VM_BLOB_LEN}",
            sha256_hex(&pattern(seed, VM_BLOB_LEN))
        ),
        "the VM's download from the host namespace's 127.0.0.1 through 10.0.2.2"
    );

    // the namespace reaches the VM directly.
    ping_ok(&g, &vm_ip, &net, "namespace -> VM");
    let echo = SocketAddr::from((vm_ip.parse::<Ipv4Addr>().expect("ip"), VM_ECHO_PORT));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match echo_via(&g, echo, 7, 256 * 1024) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "namespace -> the VM's echo server {echo}: {e}\nnetwork output: {}",
                net.log()
            ),
        }
        thread::sleep(Duration::from_millis(500));
    }

    let ports = net.list_array("ports");
    let streams = ports_of_kind(&ports, "stream");
    assert_eq!(streams.len(), 1, "one stream port (QEMU): {ports:#?}");
    assert!(
        jnum(streams[0], "rx_frames") > 0 && jnum(streams[0], "tx_frames") > 0,
        "the stream port's counters: {ports:#?}"
    );
    let tap = port_by_id(&ports, ns_port)
        .unwrap_or_else(|| panic!("the namespace's port {ns_port} is not listed: {ports:#?}"));
    assert_eq!(jstr(tap, "kind"), "tap", "{tap}");
    let leases = net.list_array("leases");
    assert_eq!(
        lease_addr(&leases, VM_MAC).as_deref(),
        Some(vm_ip.as_str()),
        "the VM's lease in --list --json: {leases:#?}"
    );
    assert_eq!(
        lease_addr(&leases, NS_MAC).as_deref(),
        Some(ns_ip.as_str()),
        "the namespace's lease in --list --json: {leases:#?}"
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 3./4. internal networks
// ---------------------------------------------------------------------------------------

/// `--mode internal`: a switch only. Two guests with static addresses ping each other
/// and exchange 1 MiB each way; nothing answers at 10.0.2.2 (ping, TCP) and nothing is
/// routed (198.51.100.1); no default route was set; `--list --json` shows two tap ports
/// and no router.
#[test]
fn internal_two_guests() {
    let host = HostNs::new();
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let name = net_name("int");
    let mut net = Network::start(&host, &name, &["--mode", "internal"]);
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = net.attach(&host, &ga, &["--configure", "--address", "10.0.2.20/24"]);
    let pb = net.attach(&host, &gb, &["--configure", "--address", "10.0.2.21/24"]);
    assert_ne!(pa, pb, "two attaches, two ports");
    assert_eq!(tap_addrs(&ga), vec!["10.0.2.20/24".to_string()]);
    assert_eq!(tap_addrs(&gb), vec!["10.0.2.21/24".to_string()]);
    ping_ok(&ga, "10.0.2.21", &net, "a -> b");
    ping_ok(&gb, "10.0.2.20", &net, "b -> a");
    let sink_b = sha_server(&gb, SHA_PORT);
    let sink_a = sha_server(&ga, SHA_PORT);
    for (from, to, seed) in [(&ga, "10.0.2.21", 31u64), (&gb, "10.0.2.20", 32)] {
        let data = pattern(seed, 1 << 20);
        let sa = SocketAddr::from((to.parse::<Ipv4Addr>().expect("ip"), SHA_PORT));
        let ans = send_for_sha(from, sa, &data)
            .unwrap_or_else(|e| panic!("TCP to {sa}: {e}\nnetwork output: {}", net.log()));
        assert_eq!(
            ans,
            format!("{} {}", data.len(), sha256_hex(&data)),
            "to {sa}"
        );
    }
    drop((sink_a, sink_b));

    ping_fails(&ga, "10.0.2.2", "internal mode has no gateway");
    ping_fails(&ga, "198.51.100.1", "internal mode routes nothing");
    let t = Duration::from_secs(4);
    connect_fails(
        &ga,
        SocketAddr::from((GATEWAY, lo_srv.port())),
        t,
        "internal: TCP to 10.0.2.2",
    );
    connect_fails(
        &ga,
        SocketAddr::from((HOST_ADDR, out_srv.port())),
        t,
        "internal: TCP to 198.51.100.1",
    );
    assert_eq!(lo_srv.accepted(), 0, "the host's loopback was reached");
    assert_eq!(out_srv.accepted(), 0, "198.51.100.1 was reached");

    let ports = net.list_array("ports");
    let taps = ports_of_kind(&ports, "tap");
    assert_eq!(taps.len(), 2, "two tap ports: {ports:#?}");
    assert!(
        ports_of_kind(&ports, "router").is_empty(),
        "internal mode has no router port: {ports:#?}"
    );
    assert_eq!(ports.len(), 2, "nothing but the two taps: {ports:#?}");
    for id in [pa, pb] {
        assert!(port_by_id(&ports, id).is_some(), "port {id}: {ports:#?}");
    }
    net.assert_alive("at the end");
    // attach --configure --address sets a default route only in nat and host-only mode.
    for g in [&ga, &gb] {
        let routes = g.sh_ok("ip -4 route show");
        assert!(
            !routes.contains("default"),
            "internal mode: attach --address should set no default route: {routes}"
        );
    }
}

/// `--mode internal --dhcp`: two guests lease distinct addresses (no router handed out),
/// reach each other; 10.0.2.2 answers no ping.
#[test]
fn internal_with_dhcp() {
    let host = HostNs::new();
    let name = net_name("intd");
    let mut net = Network::start(&host, &name, &["--mode", "internal", "--dhcp"]);
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    net.attach(
        &host,
        &ga,
        &["--configure", "--macaddress", "52:54:00:dd:00:01"],
    );
    net.attach(
        &host,
        &gb,
        &["--configure", "--macaddress", "52:54:00:dd:00:02"],
    );
    let la = guest_udhcpc(&ga, &host.dir, "ia", &[]);
    let lb = guest_udhcpc(&gb, &host.dir, "ib", &[]);
    let (ia, ib) = (la["ip"].clone(), lb["ip"].clone());
    assert!(in_pool(&ia) && in_pool(&ib), "{la:?} {lb:?}");
    assert_ne!(ia, ib, "two guests, one address: {la:?} {lb:?}");
    assert_eq!(
        la.get("serverid").map(String::as_str),
        Some("10.0.2.2"),
        "{la:?}"
    );
    for (g, l) in [(&ga, &la), (&gb, &lb)] {
        assert_eq!(tap_addrs(g), vec![format!("{}/24", l["ip"])]);
        let routes = g.sh_ok("ip -4 route show");
        assert!(
            !routes.contains("default"),
            "internal mode hands out no router (lease {l:?}): {routes}"
        );
    }
    let leases = net.list_array("leases");
    assert_eq!(
        lease_addr(&leases, "52:54:00:dd:00:01").as_deref(),
        Some(ia.as_str()),
        "{leases:#?}"
    );
    assert_eq!(
        lease_addr(&leases, "52:54:00:dd:00:02").as_deref(),
        Some(ib.as_str()),
        "{leases:#?}"
    );
    ping_ok(&ga, &ib, &net, "a -> b");
    ping_ok(&gb, &ia, &net, "b -> a");
    let sink = sha_server(&gb, SHA_PORT);
    let data = pattern(41, 512 * 1024);
    let sa = SocketAddr::from((ib.parse::<Ipv4Addr>().expect("ip"), SHA_PORT));
    let ans = send_for_sha(&ga, sa, &data).unwrap_or_else(|e| panic!("TCP to {sa}: {e}"));
    assert_eq!(ans, format!("{} {}", data.len(), sha256_hex(&data)));
    drop(sink);
    ping_fails(&ga, "10.0.2.2", "internal --dhcp: nothing behind 10.0.2.2");
    ping_fails(&gb, "10.0.2.2", "internal --dhcp: nothing behind 10.0.2.2");
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 5. host-only
// ---------------------------------------------------------------------------------------

/// `--mode host-only`: the guest (DHCP) reaches a server on the host namespace's
/// 127.0.0.1 through 10.0.2.2 and resolves a name through the DNS relay; a TCP connect
/// to a listening 198.51.100.1 is refused at once (RST / ICMP unreachable), a ping there
/// gets no reply, and that server never sees a connection.
#[test]
fn host_only() {
    require_tool("dig");
    let host = HostNs::new();
    let _dns = Dnsmasq::start(
        &host,
        Ipv4Addr::LOCALHOST,
        &["--address=/www.test.example/192.0.2.10".to_string()],
    );
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let name = net_name("ho");
    let mut net = Network::start(&host, &name, &["--mode", "host-only"]);
    let g = Guest::new(Owner::Root);
    net.attach(&host, &g, &["--configure"]);
    let l = guest_udhcpc(&g, &host.dir, "ho", &[]);
    assert!(in_pool(&l["ip"]), "{l:?}");
    assert_eq!(
        l.get("router").map(String::as_str),
        Some("10.0.2.2"),
        "{l:?}"
    );

    echo_via(
        &g,
        SocketAddr::from((GATEWAY, lo_srv.port())),
        51,
        256 * 1024,
    )
    .unwrap_or_else(|e| {
        panic!(
            "host-only: the host's loopback through 10.0.2.2: {e}\nnetwork output: {}",
            net.log()
        )
    });
    let dig = g.sh_ok("dig +time=3 +tries=2 +short @10.0.2.3 www.test.example A");
    assert_eq!(dig.trim(), "192.0.2.10", "host-only: the DNS relay");

    let out = SocketAddr::from((HOST_ADDR, out_srv.port()));
    let t = Duration::from_secs(5);
    let e = connect_fails(&g, out, t, "host-only: TCP to 198.51.100.1");
    assert!(
        !matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "host-only: a connect to {out} should be refused at once (RST or ICMP unreachable), \
         it timed out after {t:?}: {e}"
    );
    ping_fails(&g, "198.51.100.1", "host-only: ping outside");
    assert_eq!(
        out_srv.accepted(),
        0,
        "host-only: 198.51.100.1 was reached from the guest"
    );
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 6. another user
// ---------------------------------------------------------------------------------------

/// A network run by root: DIR/NAME is 0700 and root's; uid 65534 attaching its own
/// namespace to it fails with an error naming permission / another user, adds no port
/// and starts no network of its own.
#[test]
fn second_user_cannot_attach() {
    let host = HostNs::new();
    let name = net_name("root");
    let mut net = Network::start(&host, &name, &[]);
    {
        use std::os::unix::fs::MetadataExt;
        let md = fs::metadata(net.dir()).expect("DIR/NAME");
        assert_eq!(
            md.mode() & 0o7777,
            0o700,
            "{} should be mode 0700",
            net.dir().display()
        );
        assert_eq!(md.uid(), 0, "{} should be root's", net.dir().display());
    }
    let g = Guest::new(Owner::Nobody);
    let mut c = host.command("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &engine_bin().to_string_lossy(),
        "attach",
        "--runtime-dir",
        &net.runtime_dir.to_string_lossy(),
        &name,
        &g.pid.to_string(),
    ]);
    let out = run_to_files(&mut c, &host.dir, "attach-nobody", Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "uid 65534 attached to root's network: {out:?}"
    );
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("permission") || err.contains("another user"),
        "the error should mention permission / another user: {out:?}"
    );
    let ports = net.api_array("list_ports", "ports");
    assert!(
        ports_of_kind(&ports, "tap").is_empty(),
        "a port was added: {ports:#?}"
    );
    assert_eq!(
        usernet_pids_mentioning(&net.runtime_dir),
        vec![net.pid],
        "the failed attach should not have started another network"
    );
    net.assert_alive("after the refused attach");
}

// ---------------------------------------------------------------------------------------
// 7. interface down and up
// ---------------------------------------------------------------------------------------

/// A guest takes tap0 down: the other's pings get no reply, the port stays (its drop
/// counter grows); up again: pings work both ways, same port.
#[test]
fn interface_down_up() {
    let host = HostNs::new();
    let name = net_name("updown");
    let mut net = Network::start(&host, &name, &[]);
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = net.attach(&host, &ga, &["--configure", "--address", "10.0.2.40/24"]);
    net.attach(&host, &gb, &["--configure", "--address", "10.0.2.41/24"]);
    ping_ok(&gb, "10.0.2.40", &net, "b -> a before");
    let drops_before = {
        let ports = net.list_array("ports");
        let p = port_by_id(&ports, pa).unwrap_or_else(|| panic!("port {pa}: {ports:#?}"));
        jnum(p, "drops")
    };

    ga.sh_ok("ip link set tap0 down");
    ping_fails(&gb, "10.0.2.40", "a's tap0 is down");
    thread::sleep(Duration::from_secs(1));
    let ports = net.list_array("ports");
    let p = port_by_id(&ports, pa)
        .unwrap_or_else(|| panic!("port {pa} vanished while tap0 was down: {ports:#?}"));
    assert!(
        jnum(p, "drops") > drops_before,
        "frames toward the down tap0 should be counted as drops ({drops_before} before): {p}"
    );
    net.assert_alive("while a guest's tap0 is down");

    ga.sh_ok("ip link set tap0 up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gb.sh("ping -c1 -W1 10.0.2.40").status.success() {
        assert!(
            Instant::now() < deadline,
            "no ping reply from a 10 s after tap0 came up; network output: {}",
            net.log()
        );
    }
    ping_ok(&ga, "10.0.2.41", &net, "a -> b after up");
    let ports = net.list_array("ports");
    let p = port_by_id(&ports, pa).unwrap_or_else(|| panic!("port {pa} after up: {ports:#?}"));
    let mac_a = norm_mac(&jstr(p, "mac"));
    assert_eq!(mac_a, tap_mac(&ga), "port {pa}'s MAC is a's tap0: {p}");
    assert_eq!(ports_of_kind(&ports, "tap").len(), 2, "{ports:#?}");
    let out = net.list_cmd(false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "--list: {}", out_text(&out));
    assert!(
        text.lines().any(|l| l.to_lowercase().contains(&mac_a)),
        "--list should still show a's port ({mac_a}):\n{text}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. usernet run --network
// ---------------------------------------------------------------------------------------

/// `usernet run --network NAME`: the command's tap0 has a lease of the network (not the
/// attached guest's), a default route via 10.0.2.2 and resolv.conf naming 10.0.2.3, and
/// it pings the attached guest; run exits 0.
#[test]
fn run_joins_network() {
    let host = HostNs::new();
    let name = net_name("run");
    let mut net = Network::start(&host, &name, &[]);
    let ga = Guest::new(Owner::Root);
    net.attach(
        &host,
        &ga,
        &["--configure", "--macaddress", "52:54:00:ee:00:01"],
    );
    let ia = guest_udhcpc(&ga, &host.dir, "ra", &[])["ip"].clone();
    assert!(in_pool(&ia), "{ia}");
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.args(["run", "--network", &name, "--runtime-dir"])
        .arg(&net.runtime_dir)
        .args([
            "--",
            "sh",
            "-c",
            &format!(
                "ping -c1 -W3 {ia} && ip -br addr show tap0 && ip -4 route show && \
                 cat /etc/resolv.conf"
            ),
        ]);
    let out = run_to_files(&mut c, &host.dir, "run", Duration::from_secs(60));
    assert!(
        out.status.success(),
        "usernet run --network {name}: {out:?}\nnetwork output: {}",
        net.log()
    );
    let addr_line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("tap0"))
        .unwrap_or_else(|| panic!("no tap0 line: {out:?}"));
    let run_ip = addr_line
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/24"))
        .unwrap_or_else(|| panic!("no 10.0.2.x/24 on tap0: {addr_line}"))
        .to_string();
    assert!(in_pool(&run_ip), "{addr_line}");
    assert_ne!(run_ip, ia, "run got the attached guest's address");
    assert!(
        out.stdout.contains("default via 10.0.2.2"),
        "default route: {}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .find(|l| l.starts_with("nameserver"))
            .is_some_and(|l| l.split_whitespace().nth(1) == Some("10.0.2.3")),
        "resolv.conf should name 10.0.2.3 first: {}",
        out.stdout
    );
    let leases = net.api_array("list_leases", "leases");
    assert!(
        leases.iter().any(|l| jstr(l, "addr") == run_ip),
        "run's lease {run_ip} in list_leases: {leases:#?}"
    );
    net.assert_alive("after usernet run");
}

// ---------------------------------------------------------------------------------------
// 9. attach starts the network
// ---------------------------------------------------------------------------------------

/// `usernet attach` of a network that does not run starts it (nat): the guest leases and
/// pings the gateway; api.sock exists; once the guest's namespace is gone the network
/// exits within 10 s (api.sock removed).
#[test]
fn attach_creates_network() {
    let host = HostNs::new();
    let runtime = network_runtime_dir(&host);
    let _killer = KillUsernetMentioning(runtime.clone());
    let name = net_name("auto");
    let api = runtime.join(&name).join("api.sock");
    assert!(!api.exists());
    let g = Guest::new(Owner::Root);
    let out = attach_cmd(&host, &runtime, &name, g.pid, &["--configure"]);
    let port = parse_attach_port(&out);
    assert!(
        port.is_some(),
        "attach to a network that does not run should start it: {out:?}"
    );
    assert!(
        api.exists(),
        "{} missing after attach started the network",
        api.display()
    );
    let l = guest_udhcpc(&g, &host.dir, "auto", &[]);
    assert!(in_pool(&l["ip"]), "{l:?}");
    assert_eq!(
        l.get("router").map(String::as_str),
        Some("10.0.2.2"),
        "nat mode: {l:?}"
    );
    let o = g.sh("ping -c1 -W2 10.0.2.2 || ping -c1 -W2 10.0.2.2");
    assert!(o.status.success(), "ping 10.0.2.2: {}", out_text(&o));
    let ports = {
        let v = api_json(&api, r#"{"execute":"list_ports"}"#);
        v.pointer("/return/ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("list_ports: {v}"))
    };
    assert_eq!(
        ports_of_kind(&ports, "tap").len(),
        1,
        "one tap port: {ports:#?}"
    );

    drop(g);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.exists() {
        assert!(
            Instant::now() < deadline,
            "the network attach started still runs 10 s after its only guest's namespace was \
             killed ({} still exists; usernet processes: {:?}; list_ports: {})",
            api.display(),
            usernet_pids_mentioning(&runtime),
            api_call(&api, br#"{"execute":"list_ports"}"#)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| e.to_string())
        );
        thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !usernet_pids_mentioning(&runtime).is_empty() {
        assert!(
            Instant::now() < deadline,
            "api.sock is gone but the network process still runs: {:?}",
            usernet_pids_mentioning(&runtime)
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// 10. --list
// ---------------------------------------------------------------------------------------

/// `--list` (text) and `--list --json` (and the API's list_ports / list_leases) show the
/// router and both tap ports with their MACs and counters, the two leases with the
/// hostnames the clients sent, and both forwards (one to an address, one to a MAC).
#[test]
fn list_shows_ports_leases_forwards() {
    const LA: &str = "52:54:00:cc:00:01";
    const LB: &str = "52:54:00:cc:00:02";
    let host = HostNs::new();
    let ports = free_ports(&host, 2);
    let (p1, p2) = (ports[0], ports[1]);
    let name = net_name("list");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-lease-time",
            "1h",
            "--dhcp-host",
            &format!("{LA},10.0.2.15"),
            "-p",
            &format!("127.0.0.1:{p1}:10.0.2.15:{NAME_PORT}"),
            "-p",
            &format!("127.0.0.1:{p2}:{}:{NAME_PORT}", LB.replace(':', "-")),
        ],
    );
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = net.attach(&host, &ga, &["--configure", "--macaddress", LA]);
    let pb = net.attach(&host, &gb, &["--configure", "--macaddress", LB]);
    let ia = guest_udhcpc(&ga, &host.dir, "la", &["-x", "hostname:lista"])["ip"].clone();
    let ib = guest_udhcpc(&gb, &host.dir, "lb", &["-x", "hostname:listb"])["ip"].clone();
    assert_eq!(ia, "10.0.2.15");
    assert!(in_pool(&ib) && ib != ia, "{ib}");
    let _na = name_server(&ga, NAME_PORT, "lista");
    let _nb = name_server(&gb, NAME_PORT, "listb");
    via_forward(&host, p1, "lista", &net);
    via_forward(&host, p2, "listb", &net);
    ping_ok(&ga, &ib, &net, "a -> b");

    // --json
    let v = net.list_json();
    let arr = |k: &str| -> Vec<Value> {
        v.get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("--list --json without \"{k}\": {v}"))
    };
    let jports = arr("ports");
    assert_eq!(
        ports_of_kind(&jports, "router").len(),
        1,
        "one router port: {jports:#?}"
    );
    assert_eq!(
        ports_of_kind(&jports, "tap").len(),
        2,
        "two tap ports: {jports:#?}"
    );
    for (id, mac) in [(pa, LA), (pb, LB)] {
        let p = port_by_id(&jports, id)
            .unwrap_or_else(|| panic!("port {id} (attach's number) not listed: {jports:#?}"));
        assert_eq!(jstr(p, "kind"), "tap", "{p}");
        assert_eq!(norm_mac(&jstr(p, "mac")), mac, "port {id}'s MAC: {p}");
        assert!(p.get("name").is_some(), "port without a name field: {p}");
        let (rf, rb, tf, tb) = (
            jnum(p, "rx_frames"),
            jnum(p, "rx_bytes"),
            jnum(p, "tx_frames"),
            jnum(p, "tx_bytes"),
        );
        assert!(rf >= 4 && tf >= 4, "frames both ways on port {id}: {p}");
        assert!(
            rb >= rf * 42 && tb >= tf * 42,
            "bytes ≥ 42 per frame on port {id}: {p}"
        );
        jnum(p, "drops");
    }
    let leases = arr("leases");
    assert_eq!(leases.len(), 2, "two leases: {leases:#?}");
    for (mac, ip, host_name) in [(LA, &ia, "lista"), (LB, &ib, "listb")] {
        let l = leases
            .iter()
            .find(|l| norm_mac(&jstr(l, "mac")) == mac)
            .unwrap_or_else(|| panic!("no lease of {mac}: {leases:#?}"));
        assert_eq!(&jstr(l, "addr"), ip, "{l}");
        assert_eq!(
            jstr(l, "hostname"),
            host_name,
            "the hostname udhcpc sent: {l}"
        );
        assert!(!jstr(l, "state").is_empty(), "lease state: {l}");
        let exp = jnum(l, "expires_in_secs");
        assert!(
            exp > 3000 && exp <= 3600,
            "expires_in_secs of a fresh 1 h lease: {l}"
        );
    }
    let fwds = arr("forwards");
    assert_eq!(fwds.len(), 2, "two forwards: {fwds:#?}");
    for p in [p1, p2] {
        assert!(
            fwds.iter().any(|f| f.to_string().contains(&p.to_string())),
            "forward of port {p}: {fwds:#?}"
        );
    }
    assert!(
        fwds.iter().any(
            |f| f.to_string().to_lowercase().contains("52:54:00:cc:00:02")
                || f.to_string().to_lowercase().contains("52-54-00-cc-00-02")
        ),
        "the forward to a MAC should name it: {fwds:#?}"
    );

    // the API agrees.
    let aports = net.api_array("list_ports", "ports");
    for id in [pa, pb] {
        assert!(port_by_id(&aports, id).is_some(), "list_ports: {aports:#?}");
    }
    assert_eq!(aports.len(), jports.len(), "list_ports vs --list --json");
    let aleases = net.api_array("list_leases", "leases");
    assert_eq!(lease_addr(&aleases, LA).as_deref(), Some(ia.as_str()));
    assert_eq!(lease_addr(&aleases, LB).as_deref(), Some(ib.as_str()));

    // text
    let out = net.list_cmd(false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "--list: {}\n{}",
        out.status,
        out_text(&out)
    );
    let low = text.to_lowercase();
    for want in [
        "tap",
        "router",
        LA,
        LB,
        ia.as_str(),
        ib.as_str(),
        "lista",
        "listb",
        &p1.to_string(),
        &p2.to_string(),
    ] {
        assert!(low.contains(want), "--list should show {want:?}:\n{text}");
    }
    let by_id: HashMap<u64, &str> = [(pa, LA), (pb, LB)].into_iter().collect();
    for (id, mac) in by_id {
        assert!(
            text.lines()
                .any(|l| l.to_lowercase().contains(mac) && l.contains(&id.to_string())),
            "--list should show port {id} with {mac} on one line:\n{text}"
        );
    }
    net.assert_alive("at the end");
}

/// A namespace named by path has no process to watch: its port stays until it is
/// detached through the API (`usernet network NAME --detach ID`), which closes its TAP
/// (the interface disappears from the namespace).
#[test]
fn detach_removes_a_port_named_by_path() {
    let host = HostNs::new();
    let name = net_name("detach");
    let net = Network::start(&host, &name, &[]);
    let ns = format!("un-d-{}", unique_id());
    run_ok(Command::new("ip").args(["netns", "add", &ns]));
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _del = DelNs(ns.clone());
    let path = format!("/run/netns/{ns}");
    let mut c = Command::new(engine_bin());
    c.args(["attach", "--runtime-dir"])
        .arg(&net.runtime_dir)
        .args([&name, &path, "tap0", "--netns-type", "path", "--configure"]);
    let out = run_timeout(&mut c, Duration::from_secs(20));
    assert!(out.status.success(), "attach by path failed: {out:?}");
    let port = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no \"port N\" in {out:?}"));
    let ids = |v: &[Value]| -> Vec<u64> { v.iter().filter_map(|p| p["id"].as_u64()).collect() };
    assert!(ids(&net.list_array("ports")).contains(&port));
    let link = |ns: &str| {
        Command::new("ip")
            .args(["-n", ns, "link", "show", "tap0"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(link(&ns), "tap0 should exist in {ns}");
    let mut d = Command::new(engine_bin());
    d.args([
        "network",
        &name,
        "--detach",
        &port.to_string(),
        "--runtime-dir",
    ])
    .arg(&net.runtime_dir);
    let out = run_timeout(&mut d, Duration::from_secs(20));
    assert!(out.status.success(), "--detach failed: {out:?}");
    assert!(
        !ids(&net.list_array("ports")).contains(&port),
        "port {port} still listed"
    );
    // The network held the only fd of the (non-persistent) TAP: the interface is gone.
    let t0 = Instant::now();
    while link(&ns) && t0.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!link(&ns), "tap0 still exists in {ns} after --detach");
    // Detaching it again names the problem.
    let out = run_timeout(&mut d, Duration::from_secs(20));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("no port {port}")),
        "{out:?}"
    );
}

/// A network confined as the other modes are (`--enable-sandbox --enable-seccomp`):
/// DHCP, DNS, TCP to the host's loopback and to the outside, ICMP, a forward in, a
/// QEMU-style stream connection and a second attach all still work.
#[test]
fn sandboxed_network_serves_its_guests() {
    require_tool("dig");
    let host = HostNs::new();
    let _dns = Dnsmasq::start(
        &host,
        Ipv4Addr::LOCALHOST,
        &["--address=/www.test.example/192.0.2.10".to_string()],
    );
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let fwd_port = free_ports(&host, 1)[0];
    let name = net_name("sbx");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--enable-sandbox",
            "--enable-seccomp",
            "-p",
            &format!("127.0.0.1:{fwd_port}:52-54-00-dd-00-01:{NAME_PORT}"),
        ],
    );
    let a = Guest::new(Owner::Root);
    let b = Guest::new(Owner::Root);
    net.attach(
        &host,
        &a,
        &["--configure", "--macaddress", "52:54:00:dd:00:01"],
    );
    net.attach(&host, &b, &["--configure"]);
    let la = guest_udhcpc(&a, &host.dir, "sa", &[]);
    let lb = guest_udhcpc(&b, &host.dir, "sb", &[]);
    assert!(in_pool(&la["ip"]) && in_pool(&lb["ip"]) && la["ip"] != lb["ip"]);
    for (g, seed) in [(&a, 61), (&b, 62)] {
        echo_via(
            g,
            SocketAddr::from((GATEWAY, lo_srv.port())),
            seed,
            128 * 1024,
        )
        .unwrap_or_else(|e| panic!("sandboxed: loopback via the gateway: {e}\n{}", net.log()));
        echo_via(
            g,
            SocketAddr::from((HOST_ADDR, out_srv.port())),
            seed,
            128 * 1024,
        )
        .unwrap_or_else(|e| panic!("sandboxed: the outside: {e}\n{}", net.log()));
        ping_ok(g, "10.0.2.2", &net, "sandboxed: ping the gateway");
    }
    ping_ok(&a, &lb["ip"], &net, "sandboxed: a -> b");
    let dig = b.sh_ok("dig +time=3 +tries=2 +short @10.0.2.3 www.test.example A");
    assert_eq!(dig.trim(), "192.0.2.10", "sandboxed: the DNS relay");
    let _srv = name_server(&a, NAME_PORT, "sandboxed-a");
    via_forward(&host, fwd_port, "sandboxed-a", &net);
    // A stream connection (what QEMU opens) becomes a port too.
    let s = host.run(|| std::os::unix::net::UnixStream::connect(net.stream_sock()));
    let s = s.unwrap_or_else(|e| panic!("connect to the stream socket: {e}"));
    let t0 = Instant::now();
    while ports_of_kind(&net.list_array("ports"), "stream").is_empty()
        && t0.elapsed() < Duration::from_secs(5)
    {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ports_of_kind(&net.list_array("ports"), "stream").len(), 1);
    drop(s);
    net.assert_alive("after every service was used under seccomp");
}

/// IPv6 on a network (`-6`): each guest configures itself by SLAAC from the shared
/// router's advertisements, the guests reach each other's global addresses, and both
/// reach the host's loopback through fd00::2.
#[test]
fn ipv6_guests_on_a_network() {
    let host = HostNs::new();
    let lo6 = host.run(|| TcpListener::bind("[::1]:0"));
    let lo6 = lo6.unwrap_or_else(|e| panic!("bind [::1]:0 in the host namespace: {e}"));
    let lo6_port = lo6.local_addr().map(|a| a.port()).unwrap_or(0);
    let _srv = TcpServer::start(lo6, echo_handler);
    let name = net_name("v6");
    let net = Network::start(&host, &name, &["-6"]);
    let guests = [Guest::new(Owner::Root), Guest::new(Owner::Root)];
    for g in &guests {
        g.sh_ok("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        net.attach(&host, g, &["--configure"]);
    }
    let global = |g: &Guest| -> Option<String> {
        let out = g.sh("ip -6 -br addr show dev tap0 scope global");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.starts_with("fd00::"))
            .map(|w| w.split('/').next().unwrap_or(w).to_string())
    };
    let t0 = Instant::now();
    let mut addrs = Vec::new();
    while t0.elapsed() < Duration::from_secs(15) {
        addrs = guests.iter().filter_map(global).collect();
        if addrs.len() == 2 {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        addrs.len(),
        2,
        "SLAAC addresses on both guests: {addrs:?}\n{}",
        net.log()
    );
    assert_ne!(addrs[0], addrs[1]);
    let ping = guests[0].sh(&format!("ping -6 -c1 -W3 {}", addrs[1]));
    assert!(
        ping.status.success(),
        "a -> b over IPv6: {}",
        out_text(&ping)
    );
    for (i, g) in guests.iter().enumerate() {
        let to: SocketAddr = format!("[fd00::2]:{lo6_port}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        echo_via(g, to, 70 + i as u64, 64 * 1024).unwrap_or_else(|e| {
            panic!(
                "guest {i}: the host's ::1 through fd00::2: {e}\n{}",
                net.log()
            )
        });
    }
    // Nobody was taken for a spoofer on the way.
    for p in net.api_array("list_policy", "ports") {
        let spoofed: u64 = p["spoofed"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        assert_eq!(spoofed, 0, "{p}");
    }
}
