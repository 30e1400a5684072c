//! Networks of guests: `usernet network NAME` (a learning switch plus, in nat and
//! host-only modes, the router), `usernet attach` (a namespace's TAP joins a running
//! network, or starts one), `usernet run --network`, and QEMU guests on the network's
//! stream socket or through `usernet vm --network`.
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

/// 256 KiB echoed by the VM's echo server from `g`, retried for up to 30 s (the VM's
/// server may still be starting).
fn echo_vm(g: &Guest, vm_ip: &str, seed: u64, net: &Network) {
    let echo = SocketAddr::from((vm_ip.parse::<Ipv4Addr>().expect("ip"), VM_ECHO_PORT));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match echo_via(g, echo, seed, 256 * 1024) {
            Ok(()) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "namespace -> the VM's echo server {echo}: {e}\nnetwork output: {}",
                net.log()
            ),
        }
        thread::sleep(Duration::from_millis(500));
    }
}

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

/// A port forward as `list_hostfwd` should show it (host address 127.0.0.1).
struct WantFwd {
    proto: &'static str,
    host_port: u16,
    /// "" for a forward to a MAC.
    guest_addr: String,
    /// The MAC (colons, lower case) of a forward to a MAC.
    guest_mac: Option<&'static str>,
    guest_port: u16,
    /// The `--natpf` rule's NAME.
    name: Option<&'static str>,
}

/// The lines of `--list`'s "forwards:" section, whitespace collapsed.
fn list_text_forwards(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| l.trim() != "forwards:")
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// `list_hostfwd` (`.return.entries`), `--list --json`'s `forwards` and `--list`'s text
/// show exactly the forwards `want`, every field compared; returns each one's id, by
/// (proto, host port).
fn check_forwards(net: &Network, want: &[WantFwd]) -> HashMap<(String, u16), u64> {
    let api = net.api_array("list_hostfwd", "entries");
    let json = net.list_array("forwards");
    let mut ids = HashMap::new();
    for (src, entries) in [("list_hostfwd", &api), ("--list --json", &json)] {
        assert_eq!(
            entries.len(),
            want.len(),
            "{src}: {} forwards expected: {entries:#?}",
            want.len()
        );
        for w in want {
            let e = entries
                .iter()
                .find(|e| {
                    jstr(e, "proto") == w.proto
                        && e.get("host_port").and_then(Value::as_u64) == Some(w.host_port.into())
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{src}: no {} forward of host port {}: {entries:#?}",
                        w.proto, w.host_port
                    )
                });
            let what = format!(
                "{src}: the {} forward of host port {}",
                w.proto, w.host_port
            );
            assert_eq!(jstr(e, "host_addr"), "127.0.0.1", "{what}: {e}");
            assert_eq!(jstr(e, "guest_addr"), w.guest_addr, "{what}: {e}");
            assert_eq!(
                jnum(e, "guest_port"),
                u64::from(w.guest_port),
                "{what}: {e}"
            );
            assert_eq!(
                norm_mac(&jstr(e, "guest_mac")),
                w.guest_mac.unwrap_or(""),
                "{what}: {e}"
            );
            assert_eq!(jstr(e, "name"), w.name.unwrap_or(""), "{what}: {e}");
            let id = jnum(e, "id");
            let prev = ids.insert((w.proto.to_string(), w.host_port), id);
            assert!(
                prev.is_none() || prev == Some(id),
                "{what}: id {id}, {prev:?} elsewhere"
            );
        }
    }
    let mut uniq: Vec<u64> = ids.values().copied().collect();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        want.len(),
        "forward ids should be distinct: {ids:?}"
    );
    let out = net.list_cmd(false);
    assert!(out.status.success(), "--list: {}", out_text(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut got = list_text_forwards(&text);
    let mut exp: Vec<String> = want
        .iter()
        .map(|w| {
            let id = ids[&(w.proto.to_string(), w.host_port)];
            let guest = w.guest_mac.map_or(w.guest_addr.clone(), str::to_string);
            format!(
                "{id} {}/127.0.0.1:{} -> {guest}:{}",
                w.proto, w.host_port, w.guest_port
            )
        })
        .collect();
    got.sort();
    exp.sort();
    assert_eq!(got, exp, "--list's forwards section:\n{text}");
    ids
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
// 1b. forwards that name their guest: --natpf and the API
// ---------------------------------------------------------------------------------------

/// The UDP port of the guests' tag servers.
const TAG_UDP_PORT: u16 = 7100;

/// A UDP server in `g` on 0.0.0.0:`port` answering every datagram with `tag`; counts
/// them; stops on drop.
struct UdpTag {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicU32>,
    handle: Option<thread::JoinHandle<()>>,
}

impl UdpTag {
    fn start(g: &Guest, port: u16, tag: &str) -> UdpTag {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let s = g.run(|| std::net::UdpSocket::bind(("0.0.0.0", port)));
        let s = s.unwrap_or_else(|e| panic!("bind udp {port}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let count = std::sync::Arc::new(AtomicU32::new(0));
        let (st, n, tag) = (stop.clone(), count.clone(), tag.to_string());
        let handle = thread::spawn(move || {
            let t0 = Instant::now();
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(180) {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    n.fetch_add(1, Ordering::SeqCst);
                    let _ = s.send_to(tag.as_bytes(), from);
                }
            }
        });
        UdpTag {
            stop,
            count,
            handle: Some(handle),
        }
    }

    fn count(&self) -> u32 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for UdpTag {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the forward at the host namespace's 127.0.0.1:`port` (`proto`) answers: the tag
/// of the guest it reached. Retried (≤ 10 s) while nothing answers; a wrong answer fails
/// at once (a retry must not hide a forward that reached the other guest). Returns
/// how many tries it took.
fn forward_tag(host: &HostNs, proto: &str, port: u16, want: &str, net: &Network) -> u32 {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    let mut tries = 0;
    while Instant::now() < deadline {
        tries += 1;
        let r = host.run(|| -> io::Result<String> {
            if proto == "udp" {
                let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
                s.connect(addr)?;
                let b = udp_request(&s, b"who", 1, Duration::from_secs(1))?;
                Ok(String::from_utf8_lossy(&b).trim().to_string())
            } else {
                let mut s = connect_tcp(addr, Duration::from_secs(3))?;
                let mut t = String::new();
                s.read_to_string(&mut t)?;
                Ok(t.trim().to_string())
            }
        });
        match r {
            Ok(t) if t == want => return tries,
            Ok(t) if !t.is_empty() => panic!(
                "the {proto} forward 127.0.0.1:{port} should reach {want:?}; it reached {t:?}\n\
                 network output: {}",
                net.log()
            ),
            Ok(_) => last = "an empty answer".into(),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the {proto} forward 127.0.0.1:{port} should reach {want:?}: {last}\nnetwork output: {}",
        net.log()
    );
}

/// Forwards on a network each name their guest, and reach exactly it: two guests (A
/// reserved 10.0.2.15, B 10.0.2.16) run the same TCP and UDP servers on the same ports,
/// each answering its own tag. `--natpf` (VirtualBox's NAME,PROTO,HOSTIP,HOSTPORT,
/// GUESTIP,GUESTPORT) forwards to A by address (TCP and UDP), to B by address and to B by
/// MAC; the API's `add_hostfwd` adds, the other way round, B by `guest_addr`, A by
/// `guest_addr` (TCP), B by `guest_addr` (UDP) and A by `guest_mac`. Every forward answers
/// its guest's tag (a wrong tag fails at once), each guest's servers saw exactly the
/// connections and datagrams of its own forwards, and list_hostfwd, `--list --json` and
/// `--list` show every rule field for field; after `remove_hostfwd` of one, its port is
/// closed and the list shows the others.
#[test]
fn forwards_reach_their_own_guest() {
    const FA: &str = "52:54:00:f0:00:01";
    const FB: &str = "52:54:00:f0:00:02";
    let host = HostNs::new();
    let tcp = free_ports(&host, 6);
    let udp: Vec<u16> = (0..2)
        .map(|_| {
            host.udp_socket("127.0.0.1:0")
                .local_addr()
                .expect("local_addr")
                .port()
        })
        .collect();
    let name = net_name("natpf");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-host",
            &format!("{FA},10.0.2.15"),
            "--dhcp-host",
            &format!("{FB},10.0.2.16"),
            "--natpf",
            &format!("a-tcp,tcp,127.0.0.1,{},10.0.2.15,{NAME_PORT}", tcp[0]),
            "--natpf",
            &format!("b-tcp,tcp,127.0.0.1,{},10.0.2.16,{NAME_PORT}", tcp[1]),
            "--natpf",
            &format!(
                "b-mac,tcp,127.0.0.1,{},{},{NAME_PORT}",
                tcp[2],
                FB.replace(':', "-")
            ),
            "--natpf",
            &format!("a-udp,udp,127.0.0.1,{},10.0.2.15,{TAG_UDP_PORT}", udp[0]),
        ],
    );
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    net.attach(&host, &ga, &["--configure", "--macaddress", FA]);
    net.attach(&host, &gb, &["--configure", "--macaddress", FB]);
    let ia = guest_udhcpc(&ga, &host.dir, "fa", &[])["ip"].clone();
    let ib = guest_udhcpc(&gb, &host.dir, "fb", &[])["ip"].clone();
    assert_eq!((ia.as_str(), ib.as_str()), ("10.0.2.15", "10.0.2.16"));
    let ta = name_server(&ga, NAME_PORT, "guest-a");
    let tb = name_server(&gb, NAME_PORT, "guest-b");
    let ua = UdpTag::start(&ga, TAG_UDP_PORT, "guest-a");
    let ub = UdpTag::start(&gb, TAG_UDP_PORT, "guest-b");

    // The API, the other way round: B first, by address; A by address; B's UDP; A by MAC.
    let add = |proto: &str, port: u16, guest: &str, guest_port: u16| -> u64 {
        let v = api_json(
            &net.api(),
            &format!(
                r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"127.0.0.1","host_port":{port},{guest},"guest_port":{guest_port}}}}}"#
            ),
        );
        v.pointer("/return/id")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("add_hostfwd {proto} {port} {guest}: {v}"))
    };
    let api_b = add("tcp", tcp[3], r#""guest_addr":"10.0.2.16""#, NAME_PORT);
    add("tcp", tcp[4], r#""guest_addr":"10.0.2.15""#, NAME_PORT);
    add("udp", udp[1], r#""guest_addr":"10.0.2.16""#, TAG_UDP_PORT);
    add("tcp", tcp[5], &format!(r#""guest_mac":"{FA}""#), NAME_PORT);

    let to_a = [
        ("tcp", tcp[0]),
        ("tcp", tcp[4]),
        ("tcp", tcp[5]),
        ("udp", udp[0]),
    ];
    let to_b = [
        ("tcp", tcp[1]),
        ("tcp", tcp[2]),
        ("tcp", tcp[3]),
        ("udp", udp[1]),
    ];
    let mut udp_tries = [0u32; 2];
    for _round in 0..2 {
        for (k, (tag, fwds)) in [("guest-a", to_a), ("guest-b", to_b)]
            .into_iter()
            .enumerate()
        {
            for (proto, port) in fwds {
                let n = forward_tag(&host, proto, port, tag, &net);
                if proto == "udp" {
                    udp_tries[k] += n;
                }
            }
        }
    }
    // Each guest's servers saw its own forwards' traffic and nothing else: 3 TCP forwards
    // and 1 UDP forward each, twice (every answer above was the right tag, so none went
    // to the other guest). A UDP try whose answer was lost may have arrived, hence ≤.
    assert_eq!(
        (ta.accepted(), tb.accepted()),
        (6, 6),
        "TCP connections at A, at B"
    );
    for (k, (tag, got)) in [("A", ua.count()), ("B", ub.count())]
        .into_iter()
        .enumerate()
    {
        assert!(
            got >= 2 && got <= udp_tries[k],
            "UDP datagrams at {tag}: {got}, sent through its forwards: {}",
            udp_tries[k]
        );
    }

    let mut want = vec![
        WantFwd {
            proto: "tcp",
            host_port: tcp[0],
            guest_addr: "10.0.2.15".into(),
            guest_mac: None,
            guest_port: NAME_PORT,
            name: Some("a-tcp"),
        },
        WantFwd {
            proto: "tcp",
            host_port: tcp[1],
            guest_addr: "10.0.2.16".into(),
            guest_mac: None,
            guest_port: NAME_PORT,
            name: Some("b-tcp"),
        },
        WantFwd {
            proto: "tcp",
            host_port: tcp[2],
            guest_addr: String::new(),
            guest_mac: Some(FB),
            guest_port: NAME_PORT,
            name: Some("b-mac"),
        },
        WantFwd {
            proto: "udp",
            host_port: udp[0],
            guest_addr: "10.0.2.15".into(),
            guest_mac: None,
            guest_port: TAG_UDP_PORT,
            name: Some("a-udp"),
        },
        WantFwd {
            proto: "tcp",
            host_port: tcp[3],
            guest_addr: "10.0.2.16".into(),
            guest_mac: None,
            guest_port: NAME_PORT,
            name: None,
        },
        WantFwd {
            proto: "tcp",
            host_port: tcp[4],
            guest_addr: "10.0.2.15".into(),
            guest_mac: None,
            guest_port: NAME_PORT,
            name: None,
        },
        WantFwd {
            proto: "udp",
            host_port: udp[1],
            guest_addr: "10.0.2.16".into(),
            guest_mac: None,
            guest_port: TAG_UDP_PORT,
            name: None,
        },
        WantFwd {
            proto: "tcp",
            host_port: tcp[5],
            guest_addr: String::new(),
            guest_mac: Some(FA),
            guest_port: NAME_PORT,
            name: None,
        },
    ];
    let ids = check_forwards(&net, &want);
    assert_eq!(ids[&("tcp".to_string(), tcp[3])], api_b, "add_hostfwd's id");

    // remove_hostfwd: that port closes, the list shows the other seven.
    let v = api_json(
        &net.api(),
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{api_b}}}}}"#),
    );
    assert!(v.get("error").is_none(), "remove_hostfwd {api_b}: {v}");
    want.retain(|w| !(w.proto == "tcp" && w.host_port == tcp[3]));
    check_forwards(&net, &want);
    let gone = SocketAddr::from((Ipv4Addr::LOCALHOST, tcp[3]));
    let r = host.run(|| TcpStream::connect_timeout(&gone, Duration::from_secs(3)));
    assert!(
        r.is_err(),
        "the removed forward 127.0.0.1:{} still accepts",
        tcp[3]
    );
    forward_tag(&host, "tcp", tcp[1], "guest-b", &net);
    assert_eq!(tb.accepted(), 7);

    // A forward naming no guest, on a network where two guests hold leases: which one
    // is meant? The client is closed (counted), no guest is guessed at.
    let vague = host.free_port("127.0.0.1");
    let v = api_json(
        &net.api(),
        &format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{vague},"guest_port":{NAME_PORT}}}}}"#
        ),
    );
    assert!(v.get("error").is_none(), "add_hostfwd without a guest: {v}");
    let before = (ta.accepted(), tb.accepted());
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, vague));
    let got = host.run(|| -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut t = String::new();
        s.read_to_string(&mut t)?;
        Ok(t)
    });
    assert!(
        got.as_ref().map_or(true, |t| t.is_empty()),
        "a forward without a guest on a network of two reached {got:?}"
    );
    assert_eq!((ta.accepted(), tb.accepted()), before);
    let st = api_json(&net.api(), r#"{"execute":"stats"}"#);
    assert!(
        st.pointer("/return/drops/forward_guest_unknown")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            >= 1,
        "stats .drops.forward_guest_unknown: {st}"
    );
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
    /// Boots the test VM on `netdev`; `params` are the /init's kernel parameters
    /// (`usernet_http=`, `usernet_echo=`, `usernet_peer=`, see tests/vm/build-initramfs.sh).
    fn boot(host: &HostNs, netdev: &str, params: &str) -> Vm {
        let img = vm_image();
        let console = host.dir.join("console.log");
        let qemu_log = host.dir.join("qemu.log");
        let append = format!("console=ttyS0 quiet panic=-1 {params}");
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
    /// The VM's lease line: its address (returned) is in the pool and not `ns_ip`, and
    /// it names the gateway and the DNS address.
    fn leased_beside(&mut self, ns_ip: &str, net: &Network) -> String {
        let lease = self.wait_line("LEASE", net);
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
        vm_ip
    }

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
    let mut vm = Vm::boot(
        &host,
        &netdev,
        &format!("usernet_http={} usernet_echo={VM_ECHO_PORT}", http.port()),
    );

    let g = Guest::new(Owner::Root);
    let ns_port = net.attach(&host, &g, &["--configure", "--macaddress", NS_MAC]);
    let ns_lease = guest_udhcpc(&g, &host.dir, "ns", &[]);
    let ns_ip = ns_lease.get("ip").cloned().unwrap_or_default();
    assert!(in_pool(&ns_ip), "namespace lease: {ns_lease:?}");

    let vm_ip = vm.leased_beside(&ns_ip, &net);
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
    echo_vm(&g, &vm_ip, 7, &net);

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

/// The namespace guest's HTTP port the VM downloads from (`usernet_peer=`).
const PEER_HTTP_PORT: u16 = 8090;
/// What the VM downloads from the namespace guest.
const PEER_BLOB_LEN: usize = 384 * 1024;

/// The `N` of `usernet vm --network`'s "a VM joined network NAME as port N".
fn vm_joined_port(log: &str, name: &str) -> Option<u64> {
    let prefix = format!("usernet: a VM joined network {name} as port ");
    log.lines()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
}

/// A QEMU guest started the way users start one on a network: `usernet vm --network NAME
/// --stream unix:PATH` listens on PATH (printing the QEMU arguments that name it) and
/// hands QEMU's connection to the running network as a port. A namespace guest sits on
/// the same network (leased first). The VM leases a distinct address (router 10.0.2.2,
/// DNS 10.0.2.3), pings the gateway, pings the namespace and downloads 384 KiB from an
/// HTTP server in it (sha256 compared); the namespace pings the VM and exchanges 256 KiB
/// with its echo server. `--list --json` and `--list` show the VM as a stream port named
/// `vm-1` with the VM's MAC and traffic both ways (the number `usernet vm` printed), the
/// namespace's tap port and both leases; `usernet vm` keeps running for the next VM.
#[test]
fn vm_network_flag_joins_with_namespace() {
    vm_image();
    let host = HostNs::new();
    let name = net_name("vmflag");
    let mut net = Network::start(&host, &name, &[]);

    // The namespace guest first: its lease is what the VM is told to reach.
    let g = Guest::new(Owner::Root);
    let ns_port = net.attach(&host, &g, &["--configure", "--macaddress", NS_MAC]);
    let ns_ip = guest_udhcpc(&g, &host.dir, "vmflag-ns", &[])["ip"].clone();
    assert!(in_pool(&ns_ip), "the namespace's lease: {ns_ip}");
    let seed = 0x7065_6572_0000 + u64::from(std::process::id());
    let l = g.run(|| TcpListener::bind(("0.0.0.0", PEER_HTTP_PORT)));
    let l = l.unwrap_or_else(|e| panic!("bind {PEER_HTTP_PORT} in the namespace: {e}"));
    let peer_http = TcpServer::start(l, http_handler(seed, PEER_BLOB_LEN));

    // usernet vm --network NAME --stream unix:PATH, in the host namespace.
    let sock = host.dir.join("vm-net.sock");
    let uvm_log = host.dir.join("usernet-vm.log");
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.args(["vm", "--network", &name, "--runtime-dir"])
        .arg(&net.runtime_dir)
        .arg("--stream")
        .arg(format!("unix:{}", sock.display()));
    let mut uvm = BgChild::start(&mut c, &uvm_log);
    let uvm_text = || fs::read_to_string(&uvm_log).unwrap_or_default();
    let t0 = Instant::now();
    loop {
        use std::os::unix::fs::FileTypeExt;
        if fs::metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
            break;
        }
        if let Some(st) = uvm.try_wait() {
            panic!(
                "usernet vm --network {name} exited ({st}) before listening: {}",
                uvm_text()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "usernet vm --network {name} does not listen on {} after 10 s: {}",
            sock.display(),
            uvm_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let netdev = format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={}",
        sock.display()
    );
    assert!(
        uvm_text().contains(&format!("-netdev {netdev}")),
        "usernet vm --network should print the QEMU arguments naming {}:\n{}",
        sock.display(),
        uvm_text()
    );
    let mut vm = Vm::boot(
        &host,
        &netdev,
        &format!("usernet_echo={VM_ECHO_PORT} usernet_peer={ns_ip}:{PEER_HTTP_PORT}"),
    );

    // QEMU connects at once; usernet vm hands the connection over and says which port.
    let t0 = Instant::now();
    let vm_port = loop {
        if let Some(n) = vm_joined_port(&uvm_text(), &name) {
            break n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "usernet vm never said the VM joined network {name}: {}\nnetwork output: {}",
            uvm_text(),
            net.log()
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(vm_port, ns_port, "the VM got the namespace's port");

    let vm_ip = vm.leased_beside(&ns_ip, &net);
    assert_eq!(
        vm.wait_line("PING", &net),
        "3 packets received",
        "the VM pings 10.0.2.2"
    );
    // VM -> namespace: ICMP, then a TCP download checked byte for byte.
    let peer_ping = vm.wait_line("PEER-PING", &net);
    let got: u32 = peer_ping
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        got >= 2,
        "the VM's 3 pings to the namespace {ns_ip}: {peer_ping}\nnetwork output: {}",
        net.log()
    );
    assert_eq!(
        vm.wait_line("PEER-SHA256", &net),
        format!(
            "{} size={PEER_BLOB_LEN}",
            sha256_hex(&pattern(seed, PEER_BLOB_LEN))
        ),
        "the VM's download from the namespace guest's HTTP server {ns_ip}:{PEER_HTTP_PORT}"
    );
    assert!(peer_http.accepted() >= 1);
    vm.wait_line("READY", &net);

    // namespace -> VM.
    ping_ok(&g, &vm_ip, &net, "namespace -> VM");
    echo_vm(&g, &vm_ip, 11, &net);

    // The VM is a port of the network, listed as such.
    let ports = net.list_array("ports");
    let streams = ports_of_kind(&ports, "stream");
    assert_eq!(streams.len(), 1, "one stream port (the VM): {ports:#?}");
    let p = port_by_id(&ports, vm_port).unwrap_or_else(|| {
        panic!("port {vm_port} (what usernet vm printed) is not listed: {ports:#?}")
    });
    assert_eq!(jstr(p, "kind"), "stream", "{p}");
    assert_eq!(
        jstr(p, "name"),
        "vm-1",
        "usernet vm's label of its first VM: {p}"
    );
    assert_eq!(norm_mac(&jstr(p, "mac")), VM_MAC, "the VM port's MAC: {p}");
    assert!(
        jnum(p, "rx_frames") >= 100 && jnum(p, "tx_frames") >= 100,
        "the VM's port carried the download and the echo both ways: {p}"
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
    let out = net.list_cmd(false);
    assert!(out.status.success(), "--list: {}", out_text(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 4
                && w[0] == vm_port.to_string()
                && w[1] == "stream"
                && w[2] == "vm-1"
                && w[3].eq_ignore_ascii_case(VM_MAC)
        }),
        "--list should show port {vm_port} as \"stream vm-1 {VM_MAC}\":\n{text}"
    );
    if let Some(st) = uvm.try_wait() {
        panic!(
            "usernet vm --network should keep listening for the next VM; it exited ({st}): {}",
            uvm_text()
        );
    }
    net.assert_alive("at the end");
}

// ---------------------------------------------------------------------------------------
// 3./4. internal networks
// ---------------------------------------------------------------------------------------

/// The gateway's MAC on nat and host-only networks (the router port's static entry).
const GATEWAY_MAC: &str = "52:55:0a:00:02:02";

/// Gives `g` a way out as a guest of a routed network has one: a default route via
/// 10.0.2.2; with `neigh`, also a permanent neighbour entry for 10.0.2.2 with the MAC a
/// router port would own, so that its packets for the outside are put on the switch
/// (not held back by an unanswered ARP request).
fn route_via_gateway(g: &Guest, neigh: bool) {
    g.sh_ok("ip route replace default via 10.0.2.2 dev tap0 onlink");
    if neigh {
        g.sh_ok(&format!(
            "ip neigh replace 10.0.2.2 lladdr {GATEWAY_MAC} dev tap0 nud permanent"
        ));
    }
    let r = g.sh_ok("ip -4 route show default");
    assert!(r.contains("via 10.0.2.2"), "default route: {r}");
}

/// A port's `rx_frames` in `--list --json`.
fn port_rx(net: &Network, id: u64) -> u64 {
    let ports = net.list_array("ports");
    let p = port_by_id(&ports, id).unwrap_or_else(|| panic!("port {id}: {ports:#?}"));
    jnum(p, "rx_frames")
}

/// From `g` (which has a default route via 10.0.2.2): nothing beyond the switch answers.
/// Pings to 10.0.2.2 and 198.51.100.1, TCP to the host namespace's servers on 127.0.0.1
/// (through 10.0.2.2) and 198.51.100.1, and UDP to its echo servers there all fail;
/// those servers stay untouched (checked by the caller).
fn nothing_routes(g: &Guest, what: &str, lo_tcp: u16, out_tcp: u16, lo_udp: u16, out_udp: u16) {
    ping_fails(g, "10.0.2.2", &format!("{what}: nothing behind 10.0.2.2"));
    ping_fails(g, "198.51.100.1", &format!("{what}: nothing is routed"));
    let t = Duration::from_secs(4);
    connect_fails(
        g,
        SocketAddr::from((GATEWAY, lo_tcp)),
        t,
        &format!("{what}: TCP to the host's loopback through 10.0.2.2"),
    );
    connect_fails(
        g,
        SocketAddr::from((HOST_ADDR, out_tcp)),
        t,
        &format!("{what}: TCP to 198.51.100.1"),
    );
    for to in [
        SocketAddr::from((GATEWAY, lo_udp)),
        SocketAddr::from((HOST_ADDR, out_udp)),
    ] {
        let r = g.run(|| -> io::Result<Vec<u8>> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to)?;
            udp_request(&s, b"anyone?", 2, Duration::from_secs(1))
        });
        assert!(
            r.is_err(),
            "{what}: UDP to {to} should get no answer, got {r:?}"
        );
    }
}

/// `--mode internal`: a switch only. Two guests with static addresses ping each other
/// and exchange 1 MiB each way; attach set no default route and `--list --json` shows two
/// tap ports and no router. Then both guests get a default route via 10.0.2.2 (A also a
/// permanent neighbour entry with the gateway MAC of routed networks, so its packets for
/// the outside really enter the switch, as A's port counter shows): still nothing answers
/// at 10.0.2.2 (ping, TCP, UDP) and nothing is routed to 198.51.100.1, whose servers and
/// the host's loopback servers see no connection and no datagram.
#[test]
fn internal_two_guests() {
    let host = HostNs::new();
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let lo_udp = host.udp_echo("127.0.0.1:0");
    let out_udp = host.udp_echo("198.51.100.1:0");
    let name = net_name("int");
    let mut net = Network::start(&host, &name, &["--mode", "internal"]);
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = net.attach(&host, &ga, &["--configure", "--address", "10.0.2.20/24"]);
    let pb = net.attach(&host, &gb, &["--configure", "--address", "10.0.2.21/24"]);
    assert_ne!(pa, pb, "two attaches, two ports");
    assert_eq!(tap_addrs(&ga), vec!["10.0.2.20/24".to_string()]);
    assert_eq!(tap_addrs(&gb), vec!["10.0.2.21/24".to_string()]);
    // attach --configure --address sets a default route only in nat and host-only mode.
    for g in [&ga, &gb] {
        let routes = g.sh_ok("ip -4 route show");
        assert!(
            !routes.contains("default"),
            "internal mode: attach --address should set no default route: {routes}"
        );
    }
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

    // Now the guests try the way out a routed network would give them.
    route_via_gateway(&ga, true);
    route_via_gateway(&gb, false);
    let rx_a = port_rx(&net, pa);
    for (g, what) in [(&ga, "internal (a)"), (&gb, "internal (b)")] {
        nothing_routes(
            g,
            what,
            lo_srv.port(),
            out_srv.port(),
            lo_udp.addr.port(),
            out_udp.addr.port(),
        );
    }
    // a's 2 + 2 pings, its TCP SYNs and UDP datagrams did enter the switch.
    let sent_a = port_rx(&net, pa) - rx_a;
    assert!(
        sent_a >= 10,
        "a's packets for 10.0.2.2 and the outside should have entered the switch \
         (a's port counted {sent_a} frames)"
    );
    assert_eq!(lo_srv.accepted(), 0, "the host's loopback was reached");
    assert_eq!(out_srv.accepted(), 0, "198.51.100.1 was reached");
    assert_eq!(lo_udp.count(), 0, "the host's loopback got UDP");
    assert_eq!(out_udp.count(), 0, "198.51.100.1 got UDP");
    // and the switch still works.
    ping_ok(&gb, "10.0.2.20", &net, "b -> a at the end");
    net.assert_alive("at the end");
}

/// `--mode internal --dhcp`: two guests lease distinct addresses from the DHCP server
/// (10.0.2.2) with neither a router nor a DNS server in the lease (so no default route),
/// and reach each other (ping, 512 KiB). Then, given a default route via 10.0.2.2 (whose
/// ARP the DHCP server may answer), nothing beyond the switch answers: pings to 10.0.2.2
/// and 198.51.100.1, TCP and UDP to the host namespace's servers on 127.0.0.1 (through
/// 10.0.2.2) and 198.51.100.1, and DNS through 10.0.2.3 and 10.0.2.2 (a dnsmasq on the
/// host's 127.0.0.1 that would answer) all fail, and no server saw anything.
#[test]
fn internal_with_dhcp() {
    require_tool("dig");
    let host = HostNs::new();
    let dns = Dnsmasq::start(
        &host,
        Ipv4Addr::LOCALHOST,
        &["--address=/www.test.example/192.0.2.10".to_string()],
    );
    let lo_srv = host.tcp_server("127.0.0.1:0", echo_handler);
    let out_srv = host.tcp_server("198.51.100.1:0", echo_handler);
    let lo_udp = host.udp_echo("127.0.0.1:0");
    let out_udp = host.udp_echo("198.51.100.1:0");
    let name = net_name("intd");
    let mut net = Network::start(&host, &name, &["--mode", "internal", "--dhcp"]);
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    let pa = net.attach(
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
    for l in [&la, &lb] {
        assert_eq!(
            l.get("serverid").map(String::as_str),
            Some("10.0.2.2"),
            "{l:?}"
        );
        assert_eq!(
            l.get("router").map(String::as_str),
            Some(""),
            "an internal network's lease names no router: {l:?}"
        );
        assert_eq!(
            l.get("dns").map(String::as_str),
            Some(""),
            "an internal network's lease names no DNS server: {l:?}"
        );
    }
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

    // The way out a routed network would give: a default route via 10.0.2.2 (a's packets
    // go to the gateway MAC, b's wait for an ARP answer from whoever holds 10.0.2.2).
    route_via_gateway(&ga, true);
    route_via_gateway(&gb, false);
    let rx_a = port_rx(&net, pa);
    for (g, what) in [(&ga, "internal --dhcp (a)"), (&gb, "internal --dhcp (b)")] {
        nothing_routes(
            g,
            what,
            lo_srv.port(),
            out_srv.port(),
            lo_udp.addr.port(),
            out_udp.addr.port(),
        );
        for server in ["10.0.2.3", "10.0.2.2"] {
            let o = g.sh(&format!(
                "dig +time=2 +tries=1 +short @{server} www.test.example A"
            ));
            assert!(
                !o.status.success() || !String::from_utf8_lossy(&o.stdout).contains("192.0.2.10"),
                "{what}: an internal network relays no DNS, yet @{server} answered: {}",
                out_text(&o)
            );
        }
    }
    let sent_a = port_rx(&net, pa) - rx_a;
    assert!(
        sent_a >= 10,
        "a's packets for 10.0.2.2 and the outside should have entered the switch \
         (a's port counted {sent_a} frames)"
    );
    assert_eq!(lo_srv.accepted(), 0, "the host's loopback was reached");
    assert_eq!(out_srv.accepted(), 0, "198.51.100.1 was reached");
    assert_eq!(lo_udp.count(), 0, "the host's loopback got UDP");
    assert_eq!(out_udp.count(), 0, "198.51.100.1 got UDP");
    assert!(
        !dns.log().contains("www.test.example"),
        "the host's resolver saw a guest's query: {}",
        dns.log()
    );
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

/// A network run by root: DIR/NAME is 0700 and root's. The directories above it are
/// made traversable for everyone (0711), as a shared runtime base would be, so that only
/// NAME's own mode stands in the way (uid 65534 can stat DIR/NAME but not look inside).
/// uid 65534 attaching its own namespace to it fails with an error naming the
/// permission problem on DIR/NAME and another user, adds no port and starts no network
/// of its own.
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
    // Up to DIR/NAME, everyone may pass: the scratch directory and the runtime base (the
    // network made the latter 0700, as it does for the parent it creates).
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [&host.dir, &net.runtime_dir] {
            fs::set_permissions(d, fs::Permissions::from_mode(0o711))
                .unwrap_or_else(|e| panic!("chmod 0711 {}: {e}", d.display()));
        }
    }
    let as_nobody = |script: &str| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ]);
        run_timeout(&mut c, Duration::from_secs(20))
    };
    let nd = net.dir().display().to_string();
    let o = as_nobody(&format!("stat -c %a '{nd}'"));
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "700",
        "uid 65534 should reach {nd} itself (its parents are traversable): {}",
        out_text(&o)
    );
    let o = as_nobody(&format!("ls '{nd}/'"));
    assert!(
        !o.status.success() && out_text(&o).to_lowercase().contains("permission denied"),
        "uid 65534 should not see inside {nd}: {}",
        out_text(&o)
    );
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
        err.contains(&format!("permission denied on {}", nd.to_lowercase())),
        "the error should name the permission problem on {nd}: {out:?}"
    );
    assert!(
        err.contains("another user"),
        "the error should say the network is another user's: {out:?}"
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
/// hostnames the clients sent, and both forwards (one to an address, one to a MAC) field
/// for field: protocol, host address and port, guest address or MAC, guest port.
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
    // The forwards, field for field (list_hostfwd, --list --json, --list's lines).
    check_forwards(
        &net,
        &[
            WantFwd {
                proto: "tcp",
                host_port: p1,
                guest_addr: "10.0.2.15".into(),
                guest_mac: None,
                guest_port: NAME_PORT,
                name: None,
            },
            WantFwd {
                proto: "tcp",
                host_port: p2,
                guest_addr: String::new(),
                guest_mac: Some(LB),
                guest_port: NAME_PORT,
                name: None,
            },
        ],
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

// ---------------------------------------------------------------------------------------
// 11. fair service: a guest that floods
// ---------------------------------------------------------------------------------------

/// Size of the flood's UDP payloads.
const FLOOD_PAYLOAD: usize = 1400;
/// A UDP port nobody listens on in the flood's target.
const FLOOD_PORT: u16 = 9999;
/// What B sends C while A floods.
const FAIR_LEN: usize = 8 << 20;

/// tap0's (tx_packets, tx_dropped) in `g`, from its /proc/net/dev.
fn tap_tx(g: &Guest) -> (u64, u64) {
    let text = g.sh_ok("cat /proc/net/dev");
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("tap0:"))
        .unwrap_or_else(|| panic!("no tap0 in /proc/net/dev: {text}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    assert!(f.len() >= 12, "/proc/net/dev tap0 line: {line}");
    (f[9], f[11])
}

/// (rx_frames, tx_frames, drops) of every port, by id, from list_ports.
fn port_counters(net: &Network) -> HashMap<u64, (u64, u64, u64)> {
    net.api_array("list_ports", "ports")
        .iter()
        .map(|p| {
            (
                jnum(p, "id"),
                (jnum(p, "rx_frames"), jnum(p, "tx_frames"), jnum(p, "drops")),
            )
        })
        .collect()
}

/// How many replies a `ping -c N` printed ("N received" / "N packets received").
fn ping_received(out: &str) -> u32 {
    out.lines()
        .find(|l| l.contains("transmitted"))
        .and_then(|l| {
            l.split(',')
                .find(|p| p.contains("received"))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Fair service between ports: on a nat network of three guests, A floods (two threads,
/// as fast as they go, for as long as the rest takes and at least 3 s) 1400-byte UDP
/// datagrams to C's address on a closed port and to the broadcast address, while B sends
/// C 8 MiB over TCP and C pings B. The transfer completes intact (sha256) within 60 s and
/// C's pings are answered. The counters account for the flood: A's port read (rx_frames)
/// every frame A's kernel handed its tap0 (its tx_packets; what did not fit in that
/// bounded queue is A's tap0 tx_dropped), and every one of them reached C's port queue:
/// C's written frames plus C's drops grew by at least as many; and the flood was more
/// than the network took from A (drops at A's tap0 or at A's or C's port), else the test
/// would show nothing. It prints where the flood was cut back (A's tap0 drops, each
/// port's drops).
#[test]
fn flooding_guest_does_not_starve_the_others() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let host = HostNs::new();
    let name = net_name("flood");
    let mut net = Network::start(&host, &name, &[]);
    let macs = [
        "52:54:00:f1:00:01",
        "52:54:00:f1:00:02",
        "52:54:00:f1:00:03",
    ];
    let guests: Vec<Guest> = macs.iter().map(|_| Guest::new(Owner::Root)).collect();
    let mut ids = Vec::new();
    let mut ips = Vec::new();
    for (i, (g, mac)) in guests.iter().zip(macs).enumerate() {
        ids.push(net.attach(&host, g, &["--configure", "--macaddress", mac]));
        let l = guest_udhcpc(g, &host.dir, &format!("flood{i}"), &[]);
        ips.push(l["ip"].parse::<Ipv4Addr>().expect("lease ip"));
    }
    let (ga, gb, gc) = (&guests[0], &guests[1], &guests[2]);
    let (ia, ib, ic) = (ids[0], ids[1], ids[2]);
    // Neighbours learned before the flood (A must know C's MAC to flood it by unicast).
    ping_ok(ga, &ips[2].to_string(), &net, "a -> c");
    ping_ok(gc, &ips[1].to_string(), &net, "c -> b");
    ping_ok(gb, &ips[2].to_string(), &net, "b -> c");
    let sink = sha_server(gc, SHA_PORT);

    let before = port_counters(&net);
    let a_before = tap_tx(ga);

    // A floods from two threads inside its namespace.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let targets = [
        SocketAddr::from((ips[2], FLOOD_PORT)),
        SocketAddr::from((Ipv4Addr::new(10, 0, 2, 255), FLOOD_PORT)),
    ];
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (stop, sent) = (stop.clone(), sent.clone());
            ga.spawn(move || {
                let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind flood socket");
                s.set_broadcast(true).expect("SO_BROADCAST");
                let buf = vec![0x5au8; FLOOD_PAYLOAD];
                let t0 = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                    for to in targets {
                        if s.send_to(&buf, to).is_ok() {
                            n += 1;
                        }
                    }
                    if n >= 256 {
                        sent.fetch_add(n, Ordering::Relaxed);
                        n = 0;
                    }
                }
                sent.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t0 = Instant::now();
    while sent.load(Ordering::Relaxed) < 20_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the flood did not get going: {} datagrams in 20 s",
            sent.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(20));
    }

    // Meanwhile: 8 MiB from B to C, and C pings B.
    let data = Arc::new(pattern(0x6661_6972, FAIR_LEN));
    let to_c = SocketAddr::from((ips[2], SHA_PORT));
    let started = Instant::now();
    let transfer = {
        let data = data.clone();
        gb.spawn(move || -> io::Result<(String, Duration)> {
            let t = Instant::now();
            let mut s = connect_tcp(to_c, Duration::from_secs(10))?;
            s.write_all(&data)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut ans = String::new();
            s.read_to_string(&mut ans)?;
            Ok((ans.trim().to_string(), t.elapsed()))
        })
    };
    let ping = gc.sh(&format!("ping -c 10 -i 0.2 -W 3 {}", ips[1]));
    while !transfer.is_finished() && started.elapsed() < Duration::from_secs(90) {
        thread::sleep(Duration::from_millis(50));
    }
    // Keep flooding for at least 3 s in all.
    while t0.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(50));
    }
    let flooded_for = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().expect("flood thread");
    }
    let flood_n = sent.load(Ordering::Relaxed);
    assert!(
        transfer.is_finished(),
        "B's transfer to C still runs after 90 s of A's flood\nnetwork output: {}",
        net.log()
    );
    let r = transfer.join().expect("transfer thread");
    let (ans, took) = r.unwrap_or_else(|e| {
        panic!(
            "B -> C during A's flood: {e}\nnetwork output: {}",
            net.log()
        )
    });
    assert_eq!(
        ans,
        format!("{FAIR_LEN} {}", sha256_hex(&data)),
        "C received something else than B sent during A's flood"
    );
    drop(sink);
    let ping_out = out_text(&ping);
    let answered = ping_received(&ping_out);

    // Let the queues drain, then account.
    thread::sleep(Duration::from_secs(1));
    let after = port_counters(&net);
    let a_after = tap_tx(ga);
    let d = |id: u64, f: fn(&(u64, u64, u64)) -> u64| f(&after[&id]) - f(&before[&id]);
    let a_rx = d(ia, |c| c.0);
    let a_tap_tx = a_after.0 - a_before.0;
    let a_tap_drop = a_after.1 - a_before.1;
    let c_out = d(ic, |c| c.1) + d(ic, |c| c.2);
    eprintln!(
        "flood: {flood_n} datagrams sent by A in {flooded_for:?}; A's tap0 handed the \
         network {a_tap_tx} frames and dropped {a_tap_drop}; A's port read {a_rx}; \
         C's port wrote {} and dropped {}; B's port wrote {} and dropped {}; A's port drops \
         {}; B -> C 8 MiB took {took:?}; C's pings to B: {answered}/10",
        d(ic, |c| c.1),
        d(ic, |c| c.2),
        d(ib, |c| c.1),
        d(ib, |c| c.2),
        d(ia, |c| c.2),
    );
    assert!(
        took <= Duration::from_secs(60),
        "B's 8 MiB to C took {took:?} during A's flood (bound: 60 s)"
    );
    assert!(
        answered >= 7,
        "C's pings to B during A's flood: {answered}/10 answered:\n{ping_out}"
    );
    assert!(
        flood_n >= 20_000 && a_rx >= 10_000,
        "the flood should have been heavy: {flood_n} sent, {a_rx} read by the network"
    );
    assert!(
        a_tap_drop + d(ia, |c| c.2) + d(ic, |c| c.2) > 0,
        "the flood never exceeded what the network took from A (no drop at A's tap0 nor \
         at A's or C's port): it showed nothing about starvation"
    );
    assert!(
        a_rx.abs_diff(a_tap_tx) <= 64,
        "A's port should have read (rx_frames {a_rx}) every frame A's tap0 handed over \
         (tx_packets {a_tap_tx})"
    );
    assert!(
        c_out + 64 >= a_rx,
        "every frame of A's flood (unicast to C or broadcast) should have reached C's port \
         queue, written or counted as dropped: C's port wrote + dropped {c_out}, A sent {a_rx}"
    );
    net.assert_alive("after the flood");
    // The network still serves everyone afterwards.
    ping_ok(gc, &ips[1].to_string(), &net, "c -> b after the flood");
    ping_ok(ga, &ips[2].to_string(), &net, "a -> c after the flood");
}

// ---------------------------------------------------------------------------------------
// 12. a guest's share of the NAT tables
// ---------------------------------------------------------------------------------------

/// The engine's table sizes are read from its source (`Limits::default`), so that the
/// flood outgrows them whatever they are.
const CONFIG_RS: &str = include_str!("../../engine/src/config.rs");

fn config_cap(name: &str) -> u64 {
    source_cap(CONFIG_RS, "engine/src/config.rs", name)
}

/// Where A's SYN flood goes: an address on the host namespace's link whose (permanent)
/// neighbour entry names a MAC nobody has. The host's SYNs leave ext0 and its veth peer
/// drops them, so every connect stays in progress until the engine gives up (75 s);
/// an address nobody answers ARP for would fail them after ~3 s, within B's bound.
const SYN_SINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const SYN_SINK_MAC: &str = "02:00:00:00:00:77";

/// `stats`'s `.return` on the network's API socket.
fn net_stats(net: &Network) -> Value {
    let v = api_json(&net.api(), r#"{"execute":"stats"}"#);
    v.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("stats reply without .return: {v}"))
}

/// `.drops.REASON` of a stats return (0 when absent: only non-zero counters are listed).
fn drop_count(v: &Value, reason: &str) -> u64 {
    v.pointer(&format!("/drops/{reason}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// `.flows.PROTO.WHICH` ("open", "total") of a stats return.
fn flow_count(v: &Value, proto: &str, which: &str) -> u64 {
    v.pointer(&format!("/flows/{proto}/{which}"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("stats without flows.{proto}.{which}: {v}"))
}

/// Polls the network's stats (≤ `timeout`) until `cond` holds; returns the last.
fn wait_net_stats(net: &Network, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = net_stats(net);
        if cond(&v) || start.elapsed() > timeout {
            return v;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A guest that floods cannot starve the others at the NAT tables: on a nat network,
/// B opens a UDP "session" with a server on 198.51.100.1 (the server notes B's mapped
/// address). A then sends 3 × `max_half_open` raw SYNs (distinct source ports) to
/// [`SYN_SINK`], whose host connects stay in progress: A holds at most three quarters of
/// the half-open table (open TCP flows ≤ 3/4 + 8, the rest counted as
/// `tcp_guest_share_full`: the last quarter is kept for guests within their 1/16),
/// and while A's connects are still pending B connects to a TCP echo server on
/// 198.51.100.1 within 5 s and exchanges 64 KiB (a table A could fill whole would drop
/// B's SYNs as `tcp_half_open_full` for the 75 s A's connects last). Once B's session
/// has been idle 11 s (past the 10 s grace a shared table gives recently used
/// mappings), A sends datagrams from 1.5 × `max_udp_mappings` distinct source ports to
/// a sink on 198.51.100.1: A holds at most three quarters of the UDP mappings (open ≤
/// 3/4 + 8),
/// making room by evicting its own (`udp_evicted` ≥ the surplus), and B's mapping
/// survives: the server's datagram to B's noted address reaches B's socket, and B's next
/// datagram arrives from that same address; a new UDP flow from B is echoed. The network
/// stays up and B still pings the gateway.
#[test]
fn flooding_guest_leaves_the_others_their_part_of_the_nat_tables() {
    const MA: &str = "52:54:00:fa:00:01";
    const MB: &str = "52:54:00:fa:00:02";
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
    let half_open = config_cap("max_half_open");
    let udp_mappings = config_cap("max_udp_mappings");
    // A guest beyond its guaranteed part (1/16) gets no more once a table is three
    // quarters full (engine/src/config.rs `over_share`): alone, A reaches 3/4.
    let (tcp_share, udp_share) = (half_open - half_open / 4, udp_mappings - udp_mappings / 4);
    let n_syn = 3 * half_open;
    let n_udp = 3 * udp_mappings / 2;

    let host = HostNs::new();
    host.exec_ok(&[
        "ip",
        "neigh",
        "replace",
        &SYN_SINK.to_string(),
        "lladdr",
        SYN_SINK_MAC,
        "nud",
        "permanent",
        "dev",
        "ext0",
    ]);
    let tcp_echo = host.tcp_server("198.51.100.1:0", echo_handler);
    let udp_echo = host.udp_echo("198.51.100.1:0");
    let session = host.udp_socket("198.51.100.1:0");
    session
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let session_addr = session.local_addr().expect("local_addr");
    // A's UDP flood goes here; nobody reads it (no answers, no ICMP errors).
    let sink = host.udp_socket("198.51.100.1:0");
    let sink_port = sink.local_addr().expect("local_addr").port();

    let name = net_name("share");
    let mut net = Network::start(
        &host,
        &name,
        &[
            "--dhcp-host",
            &format!("{MA},{IP_A}"),
            "--dhcp-host",
            &format!("{MB},{IP_B}"),
        ],
    );
    let ga = Guest::new(Owner::Root);
    let gb = Guest::new(Owner::Root);
    for (g, mac, ip, tag) in [(&ga, MA, IP_A, "sharea"), (&gb, MB, IP_B, "shareb")] {
        net.attach(&host, g, &["--configure", "--macaddress", mac]);
        let l = guest_udhcpc(g, &host.dir, tag, &[]);
        assert_eq!(
            l.get("ip").map(String::as_str),
            Some(ip.to_string().as_str()),
            "{tag}: reserved lease of {mac}: {l:?}"
        );
    }
    // room for the whole burst in A's tap0 queue: every frame reaches the network.
    ga.sh_ok("ip link set dev tap0 txqueuelen 20000");
    let tcp_out = SocketAddr::from((HOST_ADDR, tcp_echo.port()));
    echo_via(&gb, tcp_out, 0x5348_0001, 64 * 1024)
        .unwrap_or_else(|e| panic!("B -> 198.51.100.1 before the flood: {e}\n{}", net.log()));

    // 2. B's UDP session: the server notes where B's datagrams come from.
    let b_sock = gb.udp_socket();
    b_sock.connect(session_addr).expect("connect B's session");
    let b_port = b_sock.local_addr().expect("local_addr").port();
    let mut buf = [0u8; 2048];
    let b_mapped = {
        let mut got = None;
        for _ in 0..3 {
            b_sock.send(b"hello").expect("B's session: send");
            if let Ok((n, from)) = session.recv_from(&mut buf) {
                assert_eq!(&buf[..n], b"hello", "B's session datagram");
                got = Some(from);
                break;
            }
        }
        got.unwrap_or_else(|| panic!("B's session datagram never arrived\n{}", net.log()))
    };
    session
        .send_to(b"welcome", b_mapped)
        .expect("session reply");
    b_sock
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let n = b_sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("B's session: no reply: {e}\n{}", net.log()));
    assert_eq!(&buf[..n], b"welcome", "B's session reply");
    let session_idle_since = Instant::now();
    let before = net_stats(&net);

    // 3a. A's SYN flood: raw SYNs from distinct source ports to the blackhole.
    let gw = parse_mac(GATEWAY_MAC).expect("gateway MAC");
    let ma = parse_mac(MA).expect("A's MAC");
    let t_flood = Instant::now();
    let syn_rep = ga.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on A's tap0");
        let mut rep = SendReport::default();
        for i in 0..n_syn {
            let i = u16::try_from(i).expect("fits");
            let sport = 20000 + i;
            let seg = tcp_segment(
                (IP_A, sport),
                (SYN_SINK, 7000 + i % 64),
                u32::from(sport) << 12,
                0x02,
                None,
                b"",
            );
            let f = ipv4_frame(gw, ma, IP_A, SYN_SINK, 6, i, (false, 0), &seg);
            send_frame(&ps, &f, &mut rep);
        }
        rep
    });
    let syn_burst = t_flood.elapsed();
    // every SYN handled: a flow or a refusal.
    let syn_done = |v: &Value| {
        let d = |k: &str| drop_count(v, k) - drop_count(&before, k);
        flow_count(v, "tcp", "total") - flow_count(&before, "tcp", "total")
            + d("tcp_guest_share_full")
            + d("tcp_half_open_full")
            + d("tcp_table_full")
            >= syn_rep.sent
    };
    let during = wait_net_stats(&net, Duration::from_secs(10), syn_done);
    let a_pending = flow_count(&during, "tcp", "open");

    // 4a. meanwhile B connects and exchanges data.
    let t_b = Instant::now();
    let b_tcp = gb.run(|| echo_here(tcp_out, 0x5348_0002, 64 * 1024, Duration::from_secs(5)));
    let b_took = t_b.elapsed();
    let after_b = net_stats(&net);
    let still_pending = flow_count(&after_b, "tcp", "open");
    let d = |v: &Value, k: &str| drop_count(v, k) - drop_count(&before, k);
    eprintln!(
        "SYN flood: {} SYNs sent by A in {syn_burst:?} ({} failed); open TCP flows {a_pending} \
         (A's share {tcp_share}); tcp_guest_share_full {}, tcp_half_open_full {}; B's connect + \
         64 KiB echo {b_took:?} ({b_tcp:?}) at {:?} into the flood; open TCP flows then \
         {still_pending}; drops {}",
        syn_rep.sent,
        syn_rep.failed,
        d(&during, "tcp_guest_share_full"),
        d(&during, "tcp_half_open_full"),
        t_b.duration_since(t_flood),
        after_b
            .get("drops")
            .map(Value::to_string)
            .unwrap_or_default(),
    );
    assert!(
        syn_rep.sent >= n_syn - 16,
        "only {} of A's {n_syn} SYNs went into tap0",
        syn_rep.sent
    );
    assert!(
        syn_done(&during),
        "the network did not handle A's {} SYNs within 10 s: {during}",
        syn_rep.sent
    );
    if let Err(e) = b_tcp {
        panic!(
            "B could not connect to 198.51.100.1 and echo 64 KiB within 5 s while A's \
             {a_pending} connects were pending ({e}; {b_took:?}): A starved the half-open \
             table (tcp_half_open_full {}, tcp_guest_share_full {})\n{}",
            d(&after_b, "tcp_half_open_full"),
            d(&after_b, "tcp_guest_share_full"),
            net.log()
        );
    }
    assert!(
        b_took <= Duration::from_secs(5),
        "B's connect + echo took {b_took:?} during A's SYN flood"
    );
    assert!(
        a_pending <= tcp_share + 8,
        "A holds {a_pending} TCP flows (pending connects): more than its share ({tcp_share}) \
         of the half-open table ({half_open})"
    );
    // A's connects were still in progress when B got through (not timed out already).
    assert!(
        a_pending + 8 >= tcp_share && still_pending + 8 >= tcp_share,
        "A's connects should have filled its share ({tcp_share}) and stayed in progress \
         during B's connect: open TCP flows {a_pending} before, {still_pending} after"
    );
    let gsf_syn = d(&after_b, "tcp_guest_share_full");
    assert!(
        gsf_syn > 0 && gsf_syn + tcp_share + 16 >= syn_rep.sent,
        "A's SYNs beyond its share should be refused as tcp_guest_share_full: {gsf_syn} of {} \
         (share {tcp_share})",
        syn_rep.sent
    );
    assert_eq!(
        d(&after_b, "tcp_half_open_full"),
        0,
        "the half-open table itself never filled"
    );

    // 3b. A's UDP flood, once B's session has been idle for 11 s.
    let idle = Duration::from_secs(11);
    if let Some(left) = idle.checked_sub(session_idle_since.elapsed()) {
        thread::sleep(left);
    }
    let before_udp = net_stats(&net);
    let udp_rep = ga.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on A's tap0");
        let mut rep = SendReport::default();
        for i in 0..n_udp {
            let i = u16::try_from(i).expect("fits");
            let sport = 30000 + i;
            let u = udp_datagram((IP_A, sport), (HOST_ADDR, sink_port), None, b"flood");
            let f = ipv4_frame(gw, ma, IP_A, HOST_ADDR, 17, i, (false, 0), &u);
            send_frame(&ps, &f, &mut rep);
        }
        rep
    });
    // every datagram handled: a new mapping, or (at A's share with none of its own to
    // evict among the oldest) a refusal.
    let udp_done = |v: &Value| {
        flow_count(v, "udp", "total") - flow_count(&before_udp, "udp", "total")
            + drop_count(v, "udp_guest_share_full")
            - drop_count(&before_udp, "udp_guest_share_full")
            >= udp_rep.sent
    };
    let after_udp = wait_net_stats(&net, Duration::from_secs(15), udp_done);
    let du = |k: &str| drop_count(&after_udp, k) - drop_count(&before_udp, k);
    let udp_open = flow_count(&after_udp, "udp", "open");
    let evicted = du("udp_evicted");
    eprintln!(
        "UDP flood: {} datagrams from distinct ports sent by A ({} failed); open UDP \
         mappings {udp_open} (A's share {udp_share}); udp_evicted {evicted}, \
         udp_guest_share_full {}",
        udp_rep.sent,
        udp_rep.failed,
        du("udp_guest_share_full"),
    );
    assert!(
        udp_rep.sent >= n_udp - 16,
        "only {} of A's {n_udp} datagrams went into tap0",
        udp_rep.sent
    );
    assert!(
        udp_done(&after_udp),
        "the network did not handle A's {} datagrams within 15 s: {after_udp}",
        udp_rep.sent
    );

    // 4b. B's session survived: the server reaches B at the address it noted, and B's
    // next datagram comes from there.
    let mut pushed = None;
    for k in 0..3 {
        session.send_to(b"push", b_mapped).expect("session push");
        match b_sock.recv(&mut buf) {
            Ok(n) => {
                pushed = Some((k, buf[..n].to_vec()));
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("B's session socket: {e}"),
        }
    }
    let (k, got) = pushed.unwrap_or_else(|| {
        panic!(
            "the server's datagrams to B's mapped address {b_mapped} never reached B's \
             socket (port {b_port}): A's UDP flood evicted B's mapping (udp_evicted \
             {evicted}, open mappings {udp_open})\n{}",
            net.log()
        )
    });
    assert_eq!(
        got, b"push",
        "B's session: what the server pushed (try {k})"
    );
    b_sock.send(b"again").expect("B's session: send");
    let (n, from) = session
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("B's session datagram after the flood: {e}"));
    assert_eq!(&buf[..n], b"again", "B's session datagram after the flood");
    assert_eq!(
        from, b_mapped,
        "B's session datagram after A's flood came from another mapping"
    );
    // a new UDP flow from B works.
    let b_new = gb.udp_socket();
    b_new.connect(udp_echo.addr).expect("connect udp echo");
    let echoed = udp_request(&b_new, b"new flow", 5, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("B's new UDP flow after A's flood: {e}\n{}", net.log()));
    assert_eq!(echoed, b"new flow", "B's new UDP flow");

    assert!(
        udp_open <= udp_share + 8,
        "{udp_open} UDP mappings open after A's flood: A holds more than its \
         share ({udp_share}) of the table ({udp_mappings})"
    );
    assert!(
        evicted + udp_share + 16 >= udp_rep.sent,
        "A should have made room by evicting its own mappings: udp_evicted {evicted} for \
         {} datagrams from distinct ports (share {udp_share})",
        udp_rep.sent
    );

    // 5. the network is alive and A was capped.
    let end = net_stats(&net);
    assert!(
        drop_count(&end, "tcp_guest_share_full") > 0,
        "tcp_guest_share_full never counted: {end}"
    );
    net.assert_alive("after A's floods");
    ping_ok(&gb, "10.0.2.2", &net, "b -> gateway after A's floods");
    drop(sink);
}
