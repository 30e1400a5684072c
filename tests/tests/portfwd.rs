//! Port forwarding: `-p`/`--natpf` rules, the slirp4netns-compatible API socket,
//! `usernet fwd` and `usernet stats`, against real peers (busybox httpd in the guest,
//! curl in the host namespace) and small servers that report the client address they
//! see.

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use usernet_tests::*;

const FILE_LEN: usize = 3 * 1024 * 1024 + 123;

fn api_path(host: &HostNs) -> PathBuf {
    host.dir.join("api.sock")
}

/// A file of `FILE_LEN` pattern bytes in a fresh directory, served by busybox httpd on
/// `port` inside the guest. Returns the server and the file's sha256.
fn guest_httpd(s: &Setup, port: u16, seed: u64) -> (BgChild, String) {
    require_tool("busybox");
    let www = s.host.dir.join(format!("www-{port}"));
    std::fs::create_dir_all(&www).expect("mkdir www");
    let data = pattern(seed, FILE_LEN);
    std::fs::write(www.join("blob"), &data).expect("write blob");
    let p = port.to_string();
    let srv = s.guest.spawn_cmd(
        "busybox",
        &["httpd", "-f", "-p", &p, "-h", &www.to_string_lossy()],
        &s.host.dir.join(format!("httpd-{port}.log")),
    );
    s.guest.wait_tcp_listening(
        SocketAddr::from((GUEST_ADDR, port)),
        Duration::from_secs(10),
    );
    (srv, sha256_hex(&data))
}

/// curl (in the host namespace) of `url`; returns (curl's exit code, body).
fn curl(host: &HostNs, url: &str) -> (Option<i32>, Vec<u8>) {
    require_tool("curl");
    let mut c = host.command("curl");
    c.args(["-sS", "--fail", "--max-time", "60", "-o", "-", url]);
    let out = run_timeout(&mut c, Duration::from_secs(90));
    (out.status.code(), out.stdout)
}

fn curl_sha(s: &Setup, url: &str, want: &str) {
    let (code, body) = curl(&s.host, url);
    assert_eq!(
        code,
        Some(0),
        "curl {url} failed (got {} bytes); engine: {}",
        body.len(),
        s.engine.stderr()
    );
    assert_eq!(body.len(), FILE_LEN, "curl {url}: length");
    assert_eq!(sha256_hex(&body), want, "curl {url}: content differs");
}

/// Connects from the host namespace; returns the connect result's error kind, if any.
fn host_connect(host: &HostNs, addr: SocketAddr) -> std::io::Result<TcpStream> {
    host.run(|| connect_tcp(addr, Duration::from_secs(5)))
}

/// Polls (≤ 3 s) until a TCP connect to `addr` from the host namespace is refused.
fn assert_refused_soon(host: &HostNs, addr: SocketAddr, what: &str) {
    let start = Instant::now();
    loop {
        match host_connect(host, addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "{what}: connecting to {addr} should be refused, got {other:?}"
                );
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn engine_cmd(host: &HostNs, sub: &str, args: &[&str]) -> Output {
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.arg(sub).args(args);
    run_timeout(&mut c, Duration::from_secs(20))
}

fn entries_of(v: &Value) -> Vec<Value> {
    v.pointer("/return/entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("list_hostfwd reply without .return.entries: {v}"))
}

fn list(path: &Path) -> Vec<Value> {
    entries_of(&api_json(path, r#"{"execute":"list_hostfwd"}"#))
}

fn add(path: &Path, args: &str) -> u64 {
    let req = format!(r#"{{"execute":"add_hostfwd","arguments":{args}}}"#);
    let v = api_json(path, &req);
    v.pointer("/return/id")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("add_hostfwd {args}: no .return.id in {v}"))
}

// ---------------------------------------------------------------------------------------
// servers in the guest that report who they see
// ---------------------------------------------------------------------------------------

/// TCP server in the guest on `port`: writes the peer's address ("IP:PORT\n"), closes.
fn guest_peer_reporter(s: &Setup, port: u16) -> TcpServer {
    let l: TcpListener = s.guest.run(|| {
        TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
    });
    TcpServer::start(l, |mut c: TcpStream| {
        let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let _ = c.write_all(format!("{peer}\n").as_bytes());
        let _ = c.shutdown(std::net::Shutdown::Write);
    })
}

/// Reads what a [`guest_peer_reporter`] says to a host client of `addr`.
fn peer_seen(host: &HostNs, addr: SocketAddr) -> String {
    let mut c = host_connect(host, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    s.trim().to_string()
}

/// UDP echo in the guest that answers `payload|PEER`; stops on drop (or after 120 s).
struct GuestUdpPeerEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl GuestUdpPeerEcho {
    fn start(s: &Setup, port: u16) -> GuestUdpPeerEcho {
        let sock: UdpSocket = s.guest.run(|| {
            UdpSocket::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind udp {port}: {e}"))
        });
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut r = buf[..n].to_vec();
                    r.extend_from_slice(format!("|{from}").as_bytes());
                    let _ = sock.send_to(&r, from);
                }
            }
        });
        GuestUdpPeerEcho {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for GuestUdpPeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

/// curl in the host namespace downloads a 3 MB file from busybox httpd in the guest
/// through `-p` rules (all addresses, a given host address) and a `--natpf` rule.
#[test]
fn publish_rules_reach_guest_httpd() {
    let host = HostNs::new();
    let hp1 = host.free_port("0.0.0.0");
    let hp2 = host.free_port("0.0.0.0");
    let hp3 = host.free_port("0.0.0.0");
    let hp6 = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&[
        "-p",
        &format!("{hp1}:8080"),
        "-p",
        &format!("198.51.100.1:{hp2}:8080/tcp"),
        "--natpf",
        &format!("web,tcp,,{hp3},,8080"),
        "-p",
        &format!("[::1]:{hp6}:8080"),
    ]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let (_httpd, sha) = guest_httpd(&s, 8080, 1);
    curl_sha(&s, &format!("http://127.0.0.1:{hp1}/blob"), &sha);
    curl_sha(&s, &format!("http://198.51.100.1:{hp1}/blob"), &sha);
    curl_sha(&s, &format!("http://198.51.100.1:{hp2}/blob"), &sha);
    curl_sha(&s, &format!("http://127.0.0.1:{hp3}/blob"), &sha);
    curl_sha(&s, &format!("http://[::1]:{hp6}/blob"), &sha);
    // the rule bound to 198.51.100.1 does not listen on 127.0.0.1.
    assert_refused_soon(
        &s.host,
        SocketAddr::from(([127, 0, 0, 1], hp2)),
        "a rule for 198.51.100.1 only",
    );
}

/// A rule added through the API works (sha256 of a curl download), shows in
/// list_hostfwd, and once removed its port is closed and the list no longer has it.
#[test]
fn api_added_rule_works_and_remove_closes_it() {
    let host = HostNs::new();
    let api = api_path(&host);
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy()]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let (_httpd, sha) = guest_httpd(&s, 8080, 2);
    let hp = s.host.free_port("0.0.0.0");
    assert!(list(&api).is_empty(), "no rules yet");
    let id = add(
        &api,
        &format!(r#"{{"proto":"tcp","host_addr":"0.0.0.0","host_port":{hp},"guest_port":8080}}"#),
    );
    assert!(id >= 1, "ids start at 1: {id}");
    let l = list(&api);
    assert_eq!(l.len(), 1, "one rule listed: {l:?}");
    assert_eq!(l[0]["id"].as_u64(), Some(id));
    assert_eq!(l[0]["proto"], "tcp");
    assert_eq!(l[0]["host_addr"], "0.0.0.0");
    assert_eq!(l[0]["host_port"].as_u64(), Some(u64::from(hp)));
    assert_eq!(l[0]["guest_addr"], "10.0.2.100");
    assert_eq!(l[0]["guest_port"].as_u64(), Some(8080));
    curl_sha(&s, &format!("http://127.0.0.1:{hp}/blob"), &sha);
    curl_sha(&s, &format!("http://198.51.100.1:{hp}/blob"), &sha);

    let v = api_json(
        &api,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert_eq!(v, serde_json::json!({"return": {}}), "remove reply");
    assert!(list(&api).is_empty(), "the removed rule is still listed");
    assert_refused_soon(
        &s.host,
        SocketAddr::from(([127, 0, 0, 1], hp)),
        "after remove_hostfwd",
    );
    let (code, _) = curl(&s.host, &format!("http://127.0.0.1:{hp}/blob"));
    assert_eq!(
        code,
        Some(7),
        "curl after removal: connection refused (exit 7)"
    );
    // removing it again: the slirp4netns error.
    let again = api_call(
        &api,
        format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#).as_bytes(),
    )
    .expect("api");
    assert_eq!(
        String::from_utf8_lossy(&again).trim_end(),
        r#"{"error":{"desc":"bad request: remove_hostfwd: bad arguments.id"}}"#
    );
}

/// A UDP forward with three outside clients at once (two on loopback, one from
/// 198.51.100.1), interleaved: each gets exactly its own replies, and the guest sees
/// 10.0.2.2 (loopback clients, each with its own port) and 198.51.100.1.
#[test]
fn udp_forward_several_clients_interleaved() {
    let host = HostNs::new();
    let hp = host.free_port("0.0.0.0");
    let api = api_path(&host);
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy(), "-p", &format!("{hp}:7/udp")]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let _echo = GuestUdpPeerEcho::start(&s, 7);
    let clients: Vec<(UdpSocket, &str)> = vec![
        (s.host.udp_socket("127.0.0.1:0"), "127.0.0.1"),
        (s.host.udp_socket("127.0.0.1:0"), "127.0.0.1"),
        (s.host.udp_socket("198.51.100.1:0"), "198.51.100.1"),
    ];
    for (c, dst) in &clients {
        c.connect((*dst, hp)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    let mut seen_peer: Vec<Option<String>> = vec![None; clients.len()];
    let mut buf = vec![0u8; 65536];
    for round in 0..15 {
        // everyone sends, then everyone reads: the flows are interleaved in the engine.
        for (i, (c, _)) in clients.iter().enumerate() {
            c.send(format!("client{i}-round{round}").as_bytes())
                .expect("send");
        }
        for (i, (c, _)) in clients.iter().enumerate() {
            let want = format!("client{i}-round{round}|");
            let mut got = None;
            for attempt in 0..3 {
                if attempt > 0 {
                    c.send(format!("client{i}-round{round}").as_bytes())
                        .expect("resend");
                }
                // skip a late duplicate of an earlier round (after a resend).
                let mut stale = 0;
                while let Ok(n) = c.recv(&mut buf) {
                    let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let earlier =
                        (0..round).any(|k| r.starts_with(&format!("client{i}-round{k}|")));
                    if earlier && stale < 5 {
                        stale += 1;
                        continue;
                    }
                    got = Some(r);
                    break;
                }
                if got.is_some() {
                    break;
                }
            }
            let got = got.unwrap_or_else(|| {
                panic!(
                    "client {i} got no reply in round {round}; engine: {}",
                    s.engine.stderr()
                )
            });
            let peer = got.strip_prefix(&want).unwrap_or_else(|| {
                panic!("client {i} round {round}: got someone else's reply {got:?}")
            });
            match &seen_peer[i] {
                None => seen_peer[i] = Some(peer.to_string()),
                Some(p) => assert_eq!(p, peer, "client {i}: the guest saw another peer"),
            }
        }
    }
    let peers: Vec<String> = seen_peer
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    assert!(
        peers[0].starts_with("10.0.2.2:") && peers[1].starts_with("10.0.2.2:"),
        "loopback clients should appear as 10.0.2.2: {peers:?}"
    );
    assert_ne!(
        peers[0], peers[1],
        "two loopback clients must be two flows (different ports) in the guest"
    );
    assert!(
        peers[2].starts_with("198.51.100.1:"),
        "a client from 198.51.100.1 should appear as itself: {peers:?}"
    );

    // the -p rule is listed (udp) and can be removed; its socket closes at once.
    let l = list(&api);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["proto"], "udp");
    assert_eq!(l[0]["host_port"].as_u64(), Some(u64::from(hp)));
    assert_eq!(l[0]["guest_port"].as_u64(), Some(7));
    let id = l[0]["id"].as_u64().expect("id");
    let v = api_json(
        &api,
        &format!(r#"{{"execute":"remove_hostfwd","arguments":{{"id":{id}}}}}"#),
    );
    assert_eq!(v, serde_json::json!({"return": {}}));
    assert!(list(&api).is_empty());
    let rebind = s.host.run(|| UdpSocket::bind(("0.0.0.0", hp)));
    assert!(
        rebind.is_ok(),
        "after remove_hostfwd the UDP port {hp} should be free at once: {rebind:?}"
    );
    // nothing answers any more.
    let (c, _) = &clients[0];
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    for _ in 0..10 {
        if c.recv(&mut buf).is_err() {
            break; // drained
        }
    }
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let _ = c.send(b"after-remove");
    assert!(
        c.recv(&mut buf).is_err(),
        "a removed UDP forward still answered"
    );
}

/// The guest's TCP server sees 198.51.100.1 for a client in the host namespace that
/// connects to 198.51.100.1:PORT, and 10.0.2.2 for one that connects to 127.0.0.1:PORT.
#[test]
fn guest_sees_real_client_address() {
    let host = HostNs::new();
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-p", &format!("{hp}:9000")]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let _srv = guest_peer_reporter(&s, 9000);
    let outside = peer_seen(&s.host, SocketAddr::from(([198, 51, 100, 1], hp)));
    assert!(
        outside.starts_with("198.51.100.1:"),
        "client from 198.51.100.1 should be seen as itself, the guest saw {outside:?}"
    );
    let lo = peer_seen(&s.host, SocketAddr::from(([127, 0, 0, 1], hp)));
    assert!(
        lo.starts_with("10.0.2.2:"),
        "a loopback client should be seen as 10.0.2.2, the guest saw {lo:?}"
    );
    // the client port is kept for outside clients (one connection, one flow).
    let c = host_connect(&s.host, SocketAddr::from(([198, 51, 100, 1], hp))).expect("connect");
    let local = c.local_addr().expect("local_addr");
    let mut c = c;
    let mut seen = String::new();
    let _ = c.read_to_string(&mut seen);
    assert_eq!(
        seen.trim(),
        local.to_string(),
        "the guest should see the outside client's own address and port"
    );
}

/// Malformed API requests get slirp4netns's exact error replies; a request split over
/// two writes with a pause succeeds; afterwards the engine still serves (API and data).
#[test]
fn api_malformed_requests_exact_errors_engine_still_serves() {
    let host = HostNs::new();
    let api = api_path(&host);
    let hp0 = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy(), "-p", &format!("{hp0}:9000")]);
    let engine = Engine::start(&host, &guest, &opts);
    let mut s = Setup {
        engine,
        guest,
        host,
    };
    let _srv = guest_peer_reporter(&s, 9000);
    let hp = s.host.free_port("0.0.0.0");
    let busy = s.host.tcp_listener("127.0.0.1:0");
    let busy_port = busy.local_addr().expect("addr").port();
    let add = |a: &str| format!(r#"{{"execute":"add_hostfwd","arguments":{a}}}"#);
    let e = |d: &str| format!(r#"{{"error":{{"desc":"bad request: {d}"}}}}"#);
    let cases: Vec<(Vec<u8>, String)> = vec![
        (b"not json".to_vec(), e("cannot parse JSON")),
        (b"".to_vec(), e("cannot parse JSON")),
        (b"{\"execute\":".to_vec(), e("cannot parse JSON")),
        (b"[1,2]".to_vec(), e("json_object() failed")),
        (b"{}".to_vec(), e("no execute found")),
        (b"{\"execute\":42}".to_vec(), e("no execute found")),
        (
            br#"{"execute":"frobnicate"}"#.to_vec(),
            e("unknown execute"),
        ),
        (
            br#"{"execute":"add_hostfwd"}"#.to_vec(),
            e("add_hostfwd: bad arguments.proto"),
        ),
        (
            add(r#"{"proto":"sctp","host_port":1234,"guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.proto"),
        ),
        (
            add(r#"{"proto":6,"host_port":1234,"guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.proto"),
        ),
        (
            add(r#"{"proto":"tcp","guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":0,"guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":70000,"guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_port":{hp},"guest_port":70000}}"#))
                .into_bytes(),
            e("add_hostfwd: bad arguments.guest_port"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_port":{hp},"guest_port":0}}"#)).into_bytes(),
            e("add_hostfwd: bad arguments.guest_port"),
        ),
        (
            add(r#"{"proto":"tcp","host_port":"8080","guest_port":80}"#).into_bytes(),
            e("add_hostfwd: bad arguments.host_port"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_port":{hp},"guest_port":[80]}}"#))
                .into_bytes(),
            e("add_hostfwd: bad arguments.guest_port"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_addr":"localhost","host_port":{hp},"guest_port":80}}"#))
                .into_bytes(),
            e("add_hostfwd: bad arguments.host_addr"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_addr":17,"host_port":{hp},"guest_port":80}}"#))
                .into_bytes(),
            e("add_hostfwd: bad arguments.host_addr"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_port":{hp},"guest_addr":"10.0.2","guest_port":80}}"#))
                .into_bytes(),
            e("add_hostfwd: bad arguments.guest_addr"),
        ),
        (
            add(&format!(r#"{{"proto":"tcp","host_addr":"127.0.0.1","host_port":{busy_port},"guest_port":80}}"#))
                .into_bytes(),
            e("add_hostfwd: slirp_add_hostfwd failed"),
        ),
        (
            br#"{"execute":"remove_hostfwd"}"#.to_vec(),
            e("remove_hostfwd: bad arguments.id"),
        ),
        (
            br#"{"execute":"remove_hostfwd","arguments":{"id":"1"}}"#.to_vec(),
            e("remove_hostfwd: bad arguments.id"),
        ),
        (
            br#"{"execute":"remove_hostfwd","arguments":{"id":4242}}"#.to_vec(),
            e("remove_hostfwd: bad arguments.id"),
        ),
    ];
    for (req, want) in &cases {
        let got = api_call(&api, req).unwrap_or_else(|err| {
            panic!(
                "API request {:?}: {err}; engine: {}",
                String::from_utf8_lossy(req),
                s.engine.stderr()
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&got).trim_end_matches('\n'),
            want,
            "reply to {:?}",
            String::from_utf8_lossy(req)
        );
    }
    // oversized (more than 64 KiB).
    let mut big = br#"{"execute":"list_hostfwd","pad":""#.to_vec();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    big.extend_from_slice(b"\"}");
    let got = api_call(&api, &big).expect("oversized request: some reply");
    assert_eq!(
        String::from_utf8_lossy(&got).trim_end_matches('\n'),
        e("too large message"),
        "oversized request"
    );
    s.engine.assert_alive("after malformed API requests");
    assert!(
        list(&api)
            .iter()
            .all(|r| r["host_port"].as_u64() != Some(u64::from(hp))),
        "nothing of the failed adds may be listed"
    );

    // a request split across two writes, 400 ms apart, succeeds.
    let req = add(&format!(
        r#"{{"proto":"tcp","host_addr":"0.0.0.0","host_port":{hp},"guest_port":9000}}"#
    ));
    let (a, b) = req.as_bytes().split_at(req.len() / 2);
    let got = api_call_parts(&api, &[a, b], Duration::from_millis(400)).expect("split request");
    let v: Value = serde_json::from_slice(&got).unwrap_or_else(|err| {
        panic!(
            "split request reply not JSON ({err}): {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    assert!(
        v.pointer("/return/id").and_then(Value::as_u64).is_some(),
        "a request split across two writes should succeed: {v}"
    );
    // still serving: the API and both forwards.
    assert_eq!(list(&api).len(), 2, "the -p rule and the split-added rule");
    for port in [hp0, hp] {
        let seen = peer_seen(&s.host, SocketAddr::from(([198, 51, 100, 1], port)));
        assert!(
            seen.starts_with("198.51.100.1:"),
            "forward on {port} after the bad requests: {seen:?}"
        );
    }
    drop(busy);
}

/// The API socket is created 0600 and removed when the engine exits.
#[test]
fn api_socket_mode_and_removed_on_exit() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let host = HostNs::new();
    let api = api_path(&host);
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy()]);
    let mut engine = Engine::start(&host, &guest, &opts);
    let md = std::fs::metadata(&api).expect("the API socket exists once ready");
    assert!(
        md.file_type().is_socket(),
        "{} is not a socket",
        api.display()
    );
    assert_eq!(
        md.permissions().mode() & 0o777,
        0o600,
        "API socket mode should be 0600"
    );
    assert!(
        api_json(&api, r#"{"execute":"list_hostfwd"}"#)
            .pointer("/return/entries")
            .is_some()
    );
    engine.signal(libc::SIGTERM);
    let st = engine.wait_timeout(Duration::from_secs(10));
    assert!(st.is_some(), "engine did not exit on SIGTERM");
    assert!(
        !api.exists(),
        "the API socket {} should be removed when the engine exits",
        api.display()
    );
}

/// `usernet fwd add/list/remove` (and `list --json`) against a running engine.
#[test]
fn fwd_cli_round_trip() {
    let host = HostNs::new();
    let api = api_path(&host);
    let a = api.to_string_lossy().into_owned();
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let engine = Engine::start(&host, &guest, &EngineOpts::configure(&["-a", &a]));
    let s = Setup {
        engine,
        guest,
        host,
    };
    let _srv = guest_peer_reporter(&s, 9000);
    let out = engine_cmd(&s.host, "fwd", &["add", "-a", &a, &format!("{hp}:9000")]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "usernet fwd add: {}; {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let id: u64 = stdout
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("usernet fwd add should print the id first: {stdout:?}"));
    let seen = peer_seen(&s.host, SocketAddr::from(([198, 51, 100, 1], hp)));
    assert!(
        seen.starts_with("198.51.100.1:"),
        "forward added by fwd add: {seen:?}"
    );

    let out = engine_cmd(&s.host, "fwd", &["list", "-a", &a]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "usernet fwd list: {}", out.status);
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_else(|| panic!("fwd list has no row for id {id}: {table}"));
    assert!(
        row.contains(&hp.to_string()) && row.contains("9000") && row.contains("tcp"),
        "fwd list row should show proto, host port and guest port: {row:?}"
    );

    let out = engine_cmd(&s.host, "fwd", &["list", "--json", "-a", &a]);
    assert!(
        out.status.success(),
        "usernet fwd list --json: {}",
        out.status
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fwd list --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let es = entries_of(&v);
    assert_eq!(es.len(), 1, "{v}");
    assert_eq!(es[0]["id"].as_u64(), Some(id));
    assert_eq!(es[0]["host_port"].as_u64(), Some(u64::from(hp)));
    assert_eq!(es[0]["guest_port"].as_u64(), Some(9000));

    let out = engine_cmd(&s.host, "fwd", &["remove", "-a", &a, &id.to_string()]);
    assert!(
        out.status.success(),
        "usernet fwd remove: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = engine_cmd(&s.host, "fwd", &["list", "--json", "-a", &a]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(entries_of(&v).is_empty(), "removed rule still listed: {v}");
    assert_refused_soon(
        &s.host,
        SocketAddr::from(([198, 51, 100, 1], hp)),
        "after usernet fwd remove",
    );
    // errors are reported with a non-zero status.
    let out = engine_cmd(&s.host, "fwd", &["remove", "-a", &a, &id.to_string()]);
    assert!(!out.status.success(), "removing a removed id should fail");
    let out = engine_cmd(&s.host, "fwd", &["add", "-a", &a, "0:80"]);
    assert!(!out.status.success(), "fwd add 0:80 should fail");
}

/// Without --configure the guest leases 10.0.2.15 (udhcpc, its script configures tap0);
/// a `-p` rule then reaches it at the leased address; `usernet stats` shows frames both
/// ways and the lease (text and --json).
#[test]
fn stats_and_forward_to_dhcp_lease() {
    require_tool("udhcpc");
    let host = HostNs::new();
    let api = api_path(&host);
    let a = api.to_string_lossy().into_owned();
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts {
        args: vec!["-a".into(), a.clone(), "-p".into(), format!("{hp}:9000")],
        ..Default::default()
    };
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    s.guest
        .sh_ok("ip link set lo up && ip link set tap0 address 02:00:00:00:40:01 up");
    let script = s.host.dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound)\n\
         ip addr add \"$ip/$mask\" dev \"$interface\" && ip route add default via \"$router\";;\n\
         esac\nexit 0\n",
    )
    .expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    s.guest.sh_ok(&format!(
        "udhcpc -i tap0 -f -q -n -t 5 -T 2 -s '{}'",
        script.display()
    ));
    let addrs = s.guest.sh_ok("ip -4 -o addr show dev tap0");
    assert!(addrs.contains("10.0.2.15/24"), "leased address: {addrs}");
    let _srv = guest_peer_reporter(&s, 9000);
    let seen = peer_seen(&s.host, SocketAddr::from(([198, 51, 100, 1], hp)));
    assert!(
        seen.starts_with("198.51.100.1:"),
        "a -p rule without --configure should reach the DHCP-leased guest: {seen:?}; engine: {}",
        s.engine.stderr()
    );

    let out = engine_cmd(&s.host, "stats", &["-a", &a, "--json"]);
    assert!(out.status.success(), "usernet stats --json: {}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stats --json not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    assert!(n("/frames/from_guest") >= 4, "frames from guest: {v}");
    assert!(n("/frames/to_guest") >= 4, "frames to guest: {v}");
    assert!(
        n("/bytes/from_guest") > n("/frames/from_guest"),
        "bytes: {v}"
    );
    let leases = v
        .get("dhcp_leases")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("stats without dhcp_leases: {v}"));
    assert_eq!(leases.len(), 1, "one lease: {v}");
    assert_eq!(leases[0]["addr"], "10.0.2.15", "{v}");
    assert_eq!(leases[0]["mac"], "02:00:00:00:40:01", "{v}");
    // the same through the raw API.
    let raw = api_json(&api, r#"{"execute":"stats"}"#);
    assert!(raw.pointer("/return/frames/from_guest").is_some(), "{raw}");

    let out = engine_cmd(&s.host, "stats", &["-a", &a]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "usernet stats: {}", out.status);
    let frames = text
        .lines()
        .find(|l| l.starts_with("frames"))
        .unwrap_or_else(|| panic!("no frames line: {text}"));
    let nums: Vec<u64> = frames
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        nums.len() == 2 && nums.iter().all(|&x| x >= 4),
        "frames line should show both directions: {frames:?}"
    );
    let lease_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("lease")).collect();
    assert_eq!(lease_lines.len(), 1, "one lease line: {text}");
    assert!(lease_lines[0].contains("10.0.2.15"), "{text}");
}

/// A `-p` rule whose host port is taken makes the engine fail at start, naming the port.
#[test]
fn publish_port_in_use_fails_at_start() {
    let host = HostNs::new();
    let busy = host.tcp_listener("0.0.0.0:0");
    let port = busy.local_addr().expect("addr").port();
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-p", &format!("{port}:80")]);
    let mut engine = Engine::spawn(&host, &guest, &opts, true).engine;
    let st = engine.wait_timeout(Duration::from_secs(10));
    let err = engine.stderr();
    let st = st.unwrap_or_else(|| {
        panic!("engine kept running with host port {port} taken; output: {err}")
    });
    assert!(
        !st.success(),
        "engine should fail when port {port} is taken: {st}"
    );
    assert!(
        err.contains(&port.to_string()),
        "the error should name port {port}: {err}"
    );
    drop(busy);
}

/// A forward to a guest port where nothing listens: the host client's connection is
/// reset (or refused), not left hanging or closed cleanly.
#[test]
fn forward_to_closed_guest_port_resets_client() {
    let host = HostNs::new();
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-p", &format!("{hp}:9")]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    for dst in [[127, 0, 0, 1], [198, 51, 100, 1]] {
        let addr = SocketAddr::from((dst, hp));
        match host_connect(&s.host, addr) {
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
                ),
                "{addr}: expected refused/reset, got {e}"
            ),
            Ok(mut c) => {
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                // only read: a write could consume the reset's error, after which a
                // read returns 0 even though the peer did reset.
                let mut b = [0u8; 64];
                match c.read(&mut b) {
                    Err(e) => assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
                        ),
                        "{addr}: expected a reset, got {e}"
                    ),
                    Ok(n) => {
                        panic!("{addr}: expected a reset, got a clean read of {n} bytes (0 = FIN)")
                    }
                }
            }
        }
    }
}

/// podman's exact request bytes (trailing newline, `guest_addr` "", write side shut
/// down) add a working forward; `list_hostfwd` answers both `.return.entries` and
/// `.entries`.
#[test]
fn podman_request_and_both_list_shapes() {
    let host = HostNs::new();
    let api = api_path(&host);
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy()]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let (_httpd, sha) = guest_httpd(&s, 80, 3);
    let req = format!(
        "{{\"execute\":\"add_hostfwd\",\"arguments\":{{\"proto\":\"tcp\",\"host_addr\":\"0.0.0.0\",\"host_port\":{hp},\"guest_addr\":\"\",\"guest_port\":80}}}}\n"
    );
    let got = api_call(&api, req.as_bytes()).expect("podman request");
    let v: Value = serde_json::from_slice(&got).unwrap_or_else(|e| {
        panic!(
            "reply to podman's request is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&got)
        )
    });
    let id = v
        .pointer("/return/id")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("podman's request should succeed: {v}"));
    curl_sha(&s, &format!("http://127.0.0.1:{hp}/blob"), &sha);

    let v = api_json(&api, r#"{"execute":"list_hostfwd"}"#);
    for ptr in ["/return/entries", "/entries"] {
        let es = v
            .pointer(ptr)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("list_hostfwd reply without {ptr}: {v}"));
        assert_eq!(es.len(), 1, "{ptr}: {v}");
        let e = &es[0];
        assert_eq!(e["id"].as_u64(), Some(id), "{ptr}");
        assert_eq!(e["proto"], "tcp", "{ptr}");
        assert_eq!(e["host_addr"], "0.0.0.0", "{ptr}");
        assert_eq!(e["host_port"].as_u64(), Some(u64::from(hp)), "{ptr}");
        assert_eq!(e["guest_addr"], "10.0.2.100", "{ptr}");
        assert_eq!(e["guest_port"].as_u64(), Some(80), "{ptr}");
    }
}

/// API clients do not block each other or the data path: one client that connects and
/// sends nothing, one that sends a whole request without shutting down its write side
/// (slirp4netns answers it after one read), and many quick clients during a download.
#[test]
fn api_clients_do_not_block_each_other_or_data() {
    use std::os::unix::net::UnixStream;
    let host = HostNs::new();
    let api = api_path(&host);
    let hp = host.free_port("0.0.0.0");
    let guest = Guest::new(Owner::Root);
    let opts = EngineOpts::configure(&["-a", &api.to_string_lossy(), "-p", &format!("{hp}:8080")]);
    let engine = Engine::start(&host, &guest, &opts);
    let s = Setup {
        engine,
        guest,
        host,
    };
    let (_httpd, sha) = guest_httpd(&s, 8080, 4);

    // an idle client, held open for the whole test.
    let idle = UnixStream::connect(&api).expect("connect idle client");
    let t = Instant::now();
    assert_eq!(
        list(&api).len(),
        1,
        "list while an idle client is connected"
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "an idle API client delayed another one by {:?}",
        t.elapsed()
    );

    // a whole request, write side left open.
    let mut open = UnixStream::connect(&api).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    open.write_all(br#"{"execute":"list_hostfwd"}"#)
        .expect("write");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        match open.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let v: Value = serde_json::from_slice(&reply).unwrap_or_else(|e| {
        panic!(
            "a complete request without shutdown(SHUT_WR) should be answered ({e}): {:?}",
            String::from_utf8_lossy(&reply)
        )
    });
    assert_eq!(entries_of(&v).len(), 1, "{v}");

    // many API calls while curl downloads through the forward.
    let api2 = api.clone();
    let lister = thread::spawn(move || {
        let mut ok = 0;
        for _ in 0..40 {
            if api_call(&api2, br#"{"execute":"list_hostfwd"}"#).is_ok_and(|r| !r.is_empty()) {
                ok += 1;
            }
            thread::sleep(Duration::from_millis(10));
        }
        ok
    });
    curl_sha(&s, &format!("http://127.0.0.1:{hp}/blob"), &sha);
    let ok = lister.join().expect("lister");
    assert_eq!(
        ok, 40,
        "every API call during the download should be answered"
    );
    drop(idle);
}

/// With `--splice`, a forward's loopback clients are spliced into the guest's namespace: 3 MB echoed
/// intact with the client's half-close passed on, a guest that closes first gives the
/// client its bytes and a clean end of stream, the stats count the spliced flows (and no
/// TAP flow), and every spliced flow is gone afterwards. Without `--splice` the same
/// echo takes the ordinary path and the guest sees the gateway, as with slirp4netns.
#[test]
fn splice_joins_loopback_clients_to_the_guest_and_default_keeps_the_gateway() {
    if engine_is_slirp4netns() {
        return; // slirp4netns has no splice path and no --splice
    }
    for splice in [true, false] {
        let host = HostNs::new();
        let api = api_path(&host);
        let hp = host.free_port("0.0.0.0");
        let hp2 = host.free_port("0.0.0.0");
        let guest = Guest::new(Owner::Root);
        let a = api.to_string_lossy().to_string();
        let (r1, r2) = (format!("{hp}:9000"), format!("{hp2}:9001"));
        let mut args = vec!["-a", &a, "-p", &r1, "-p", &r2];
        if splice {
            args.push("--splice");
        }
        let engine = Engine::start(&host, &guest, &EngineOpts::configure(&args));
        let s = Setup {
            engine,
            guest,
            host,
        };
        let l = s
            .guest
            .run(|| TcpListener::bind("0.0.0.0:9000"))
            .expect("bind 9000");
        let _echo = TcpServer::start(l, echo_handler);
        let _peer = guest_peer_reporter(&s, 9001);
        // 3 MB through, the client's FIN passed on, 3 MB back, then the guest's FIN.
        let to = SocketAddr::from(([127, 0, 0, 1], hp));
        if let Err(e) = s
            .host
            .run(|| echo_here(to, 41, FILE_LEN, Duration::from_secs(10)))
        {
            panic!(
                "splice={splice}: echo via {e}; engine: {}",
                s.engine.stderr()
            );
        }
        // The guest closes first: its bytes, then a clean end of stream.
        let seen = peer_seen(&s.host, SocketAddr::from(([127, 0, 0, 1], hp2)));
        let want = if splice { "10.0.2.100:" } else { "10.0.2.2:" };
        assert!(
            seen.starts_with(want),
            "splice={splice}: the guest saw {seen:?}, want {want}"
        );
        let stats = || api_json(&api, r#"{"execute":"stats"}"#);
        let n = |v: &Value, k: &str| {
            v.pointer(&format!("/return/flows/tcp/{k}"))
                .and_then(Value::as_u64)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut v = stats();
        while n(&v, "spliced").unwrap_or(0) + n(&v, "open").unwrap_or(0) > 0
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
            v = stats();
        }
        if splice {
            assert_eq!(n(&v, "spliced_total"), Some(2), "two spliced flows: {v}");
            assert_eq!(n(&v, "total"), Some(0), "no flow through the TAP: {v}");
            assert_eq!(n(&v, "spliced"), Some(0), "spliced flows left open: {v}");
            assert_eq!(
                v.pointer("/return/flows/tcp/splice"),
                Some(&Value::Bool(true)),
                "{v}"
            );
        } else {
            assert_eq!(
                n(&v, "spliced_total"),
                Some(0),
                "spliced without --splice: {v}"
            );
            assert_eq!(n(&v, "total"), Some(2), "both flows through the TAP: {v}");
            assert_eq!(
                v.pointer("/return/flows/tcp/splice"),
                Some(&Value::Null),
                "{v}"
            );
        }
    }
}
