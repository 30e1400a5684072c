//! Floods and churn from a hostile guest (issue 11): a SYN flood to many destinations,
//! 50 000 UDP flows, DNS query floods, malformed frames of every kind at full speed,
//! 100 000-cycle connect/close churn toward the host and through a forward, and a guest
//! that stops reading. Each runs while another guest flow downloads checksummed data
//! from the host namespace's loopback (through 10.0.2.2), which must complete intact.
//!
//! Every test watches the engine process itself (`Engine::pid` is the engine: `ip netns
//! exec` execs into it; checked against `/proc/PID/exe`): VmRSS and the number of open
//! fds are sampled every 20 ms, VmHWM is read at the end, and the `stats` API request
//! shows what was dropped and why. Run with `-- --nocapture` to see the figures (lines
//! starting with `FIGURES`).
//!
//! The caps the figures are held to (ARCHITECTURE.md, "What is bounded") are read from
//! the engine's sources when the test is built ([`caps`]): half-open TCP 1024, two rings
//! of `tcp_buffer` (1 MiB, mmap-backed: only bytes in flight cost memory) per TCP flow,
//! UDP mappings 4096, DNS pending 1024, reassembly 64 datagrams of ≤ 64 KiB, frames
//! toward the guest 4 MiB (values when this was written). The memory bound of each test
//! is derived from them in [`rss_bound`]; whatever it comes to, no test may see the
//! engine above [`RSS_CEILING`].
//!
//! usernet-only: slirp4netns has no `stats` request.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use usernet_tests::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

// The engine's caps (ARCHITECTURE.md "What is bounded"), read from the sources they are
// defined in, so that the bounds here follow the engine's.
const CONFIG_RS: &str = include_str!("../../engine/src/config.rs");
const RELAY_RS: &str = include_str!("../../dns/src/relay.rs");

fn cap(name: &str) -> u64 {
    if name == "DEFAULT_MAX_PENDING" {
        source_cap(RELAY_RS, "dns/src/relay.rs", name)
    } else {
        source_cap(CONFIG_RS, "engine/src/config.rs", name)
    }
}

/// The caps the figures are held to.
#[derive(Debug, Clone, Copy)]
struct Caps {
    half_open: u64,
    udp_mappings: u64,
    dns_pending: u64,
    /// Bytes of each of a TCP flow's two rings.
    tcp_buffer: u64,
    tx_queue: u64,
    reassembly: u64,
}

fn caps() -> Caps {
    Caps {
        half_open: cap("max_half_open"),
        udp_mappings: cap("max_udp_mappings"),
        dns_pending: cap("DEFAULT_MAX_PENDING"),
        tcp_buffer: cap("tcp_buffer"),
        tx_queue: cap("TX_QUEUE_BYTES"),
        reassembly: cap("max_reassembly") * 65535,
    }
}

/// An absolute ceiling on the engine's RSS in every test, whatever the derived bound.
const RSS_CEILING: u64 = 256 * MIB;

/// Size of each checksummed download running beside a flood.
const DOWNLOAD_LEN: usize = 32 << 20;

// ---------------------------------------------------------------------------------------
// the engine process: RSS, fds, stats
// ---------------------------------------------------------------------------------------

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS in bytes.
fn rss(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:").unwrap_or_else(|| panic!("no VmRSS for PID {pid}")) * KIB
}

/// VmHWM (peak RSS since the process started) in bytes.
fn hwm(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:").unwrap_or_else(|| panic!("no VmHWM for PID {pid}")) * KIB
}

/// Open fds of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB as f64)
}

/// Memory bound for a test: the idle RSS, plus what the caps let the test's state hold
/// (`held`), plus the frame queue toward the guest and the reassembly pool (which any
/// guest can fill), plus 16 MiB of allocator and stack slack. Never above
/// [`RSS_CEILING`].
fn rss_bound(idle: u64, held: u64) -> u64 {
    (idle + held + caps().tx_queue + caps().reassembly + 16 * MIB).min(RSS_CEILING)
}

/// Samples the engine's RSS and fd count every 20 ms (≤ 600 s) until finished.
struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, usize, u32)>>,
}

#[derive(Debug, Clone, Copy)]
struct Peaks {
    rss: u64,
    fds: usize,
    samples: u32,
}

impl Monitor {
    fn start(pid: u32) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let (mut peak_rss, mut peak_fds, mut n) = (0u64, 0usize, 0u32);
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(600) {
                if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
                    peak_rss = peak_rss.max(kib * KIB);
                }
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peak_fds = peak_fds.max(d.count());
                }
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            (peak_rss, peak_fds, n)
        });
        Monitor {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::SeqCst);
        let (rss, fds, samples) = self
            .handle
            .take()
            .expect("monitor running")
            .join()
            .expect("monitor thread");
        Peaks { rss, fds, samples }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Host namespace, guest and engine with `--configure -a api.sock` and `extra`.
struct Rig {
    s: Setup,
    api: PathBuf,
}

impl Rig {
    fn new(extra: &[&str]) -> Rig {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Rig::build(HostNs::new(), &extra)
    }

    /// The engine for an existing host namespace (servers it needs already there).
    fn build(host: HostNs, extra: &[String]) -> Rig {
        let api = host.dir.join("api.sock");
        let guest = Guest::new(Owner::Root);
        let mut args = vec![
            "--configure".to_string(),
            "-a".to_string(),
            api.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().cloned());
        let opts = EngineOpts {
            args,
            ..Default::default()
        };
        let engine = Engine::start(&host, &guest, &opts);
        // the PID the harness holds must be the engine itself, not a wrapper.
        let exe = std::fs::canonicalize(format!("/proc/{}/exe", engine.pid))
            .unwrap_or_else(|e| panic!("/proc/{}/exe: {e}", engine.pid));
        let bin = std::fs::canonicalize(engine_bin()).expect("engine binary path");
        assert_eq!(
            exe,
            bin,
            "Engine::pid {} is not the engine process ({})",
            engine.pid,
            exe.display()
        );
        Rig {
            s: Setup {
                engine,
                guest,
                host,
            },
            api,
        }
    }

    fn pid(&self) -> u32 {
        self.s.engine.pid
    }

    /// The `stats` request's `return` object.
    fn stats(&self) -> Value {
        let v = api_json(&self.api, r#"{"execute":"stats"}"#);
        v.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("stats reply without .return: {v}"))
    }

    /// Polls (≤ `timeout`) until `cond(stats)` holds; returns the last stats.
    fn wait_stats(&self, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let v = self.stats();
            if cond(&v) || start.elapsed() > timeout {
                return v;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// (gateway MAC as the guest knows it, the guest's own MAC).
    fn macs(&self) -> ([u8; 6], [u8; 6]) {
        // make sure the neighbour entry exists.
        let _ = self.s.guest.sh("ping -c 1 -W 2 10.0.2.2 >/dev/null 2>&1");
        let neigh = self.s.guest.sh_ok("ip neigh show 10.0.2.2 dev tap0");
        let gw = neigh
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .and_then(parse_mac)
            .unwrap_or_else(|| panic!("no neighbour entry for 10.0.2.2: {neigh}"));
        let link = self.s.guest.sh_ok("ip -o link show dev tap0");
        let me = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .and_then(parse_mac)
            .unwrap_or_else(|| panic!("no MAC on tap0: {link}"));
        (gw, me)
    }

    /// tap0's TX counters inside the guest (frames the guest's kernel handed to the
    /// engine's side, and frames it dropped because the engine did not read fast
    /// enough): (packets, dropped).
    fn tap_tx(&self) -> (u64, u64) {
        let out = self.s.guest.sh_ok("ip -s link show dev tap0");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let i = lines
            .iter()
            .position(|l| l.starts_with("TX:"))
            .unwrap_or_else(|| panic!("no TX: line in {out}"));
        let nums: Vec<u64> = lines
            .get(i + 1)
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(nums.len() >= 4, "TX counters of tap0: {out}");
        (nums[1], nums[3])
    }
}

fn drop_n(v: &Value, reason: &str) -> u64 {
    v.pointer(&format!("/drops/{reason}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn flows(v: &Value, proto: &str, which: &str) -> u64 {
    v.pointer(&format!("/flows/{proto}/{which}"))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("stats without flows.{proto}.{which}: {v}"))
}

/// TCP flows of both kinds: through the TAP, and spliced forwards from the host's
/// loopback (`which`: "open" or "total").
fn tcp_flows(v: &Value, which: &str) -> u64 {
    let spliced = if which == "open" {
        "spliced"
    } else {
        "spliced_total"
    };
    flows(v, "tcp", which) + flows(v, "tcp", spliced)
}

fn drops_of(v: &Value) -> String {
    v.get("drops").map(Value::to_string).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// the flow that transfers data beside every flood
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct TransferReport {
    downloads: u32,
    bytes: u64,
    secs: f64,
}

/// Back-to-back downloads of [`DOWNLOAD_LEN`] checksummed bytes from a server on the
/// host namespace's 127.0.0.1, reached from the guest through 10.0.2.2, until stopped
/// (≤ 5000 downloads, ≤ 280 s). Each must arrive whole and intact.
struct Transfer {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<TransferReport, String>>>,
    _srv: TcpServer,
}

impl Transfer {
    fn start(s: &Setup, seed: u64) -> Transfer {
        Transfer::start_paced(s, seed, None)
    }

    /// Like [`Transfer::start`], reading at most `rate` bytes per second (so that a test
    /// whose own load is the point is not slowed by a download at full speed).
    fn start_paced(s: &Setup, seed: u64, rate: Option<u64>) -> Transfer {
        let data = Arc::new(pattern(seed, DOWNLOAD_LEN));
        let want = sha256_hex(&data);
        let d2 = data.clone();
        let srv = s.host.tcp_server("127.0.0.1:0", move |mut c: TcpStream| {
            let _ = c.set_write_timeout(Some(Duration::from_secs(60)));
            let _ = c.write_all(&d2);
            let _ = c.shutdown(Shutdown::Write);
            let _ = read_to_end_result(&mut c);
        });
        let addr = SocketAddr::from((GATEWAY, srv.port()));
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (st, by) = (stop.clone(), bytes.clone());
        let handle = s.guest.spawn(move || -> Result<TransferReport, String> {
            let start = Instant::now();
            let mut downloads = 0u32;
            let mut buf = vec![0u8; 256 * 1024];
            while downloads < 5000 && start.elapsed() < Duration::from_secs(280) {
                let mut c = connect_tcp(addr, Duration::from_secs(20))
                    .map_err(|e| format!("download {}: connect {addr}: {e}", downloads + 1))?;
                c.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(|e| e.to_string())?;
                let mut h = Sha256::new();
                let mut got = 0usize;
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            h.update(&buf[..n]);
                            got += n;
                            let total = by.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                            if let Some(rate) = rate {
                                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                                if let Some(wait) = due.checked_sub(start.elapsed()) {
                                    thread::sleep(wait.min(Duration::from_secs(1)));
                                }
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(format!(
                                "download {}: read failed after {got} bytes: {e}",
                                downloads + 1
                            ));
                        }
                    }
                }
                let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                if got != DOWNLOAD_LEN || hex != want {
                    return Err(format!(
                        "download {}: {got} bytes (want {DOWNLOAD_LEN}), sha256 {hex} \
                         (want {want})",
                        downloads + 1
                    ));
                }
                downloads += 1;
                if st.load(Ordering::SeqCst) {
                    break;
                }
            }
            Ok(TransferReport {
                downloads,
                bytes: by.load(Ordering::SeqCst),
                secs: start.elapsed().as_secs_f64(),
            })
        });
        let t = Transfer {
            stop,
            bytes,
            handle: Some(handle),
            _srv: srv,
        };
        // the download is under way before the flood begins.
        let start = Instant::now();
        while t.bytes.load(Ordering::SeqCst) < MIB {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the background download did not start within 20 s"
            );
            if t.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        t
    }

    /// Stops after the download in progress; fails the test unless every download
    /// arrived whole and intact.
    fn finish(mut self, what: &str) -> TransferReport {
        self.stop.store(true, Ordering::SeqCst);
        let r = self
            .handle
            .take()
            .expect("transfer running")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let r = r.unwrap_or_else(|e| panic!("the download beside {what} failed: {e}"));
        assert!(r.downloads >= 1, "no download completed beside {what}");
        r
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------
// small servers
// ---------------------------------------------------------------------------------------

fn poll_in(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: p is one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// An accept loop without the harness server's 2 ms polling sleep (churn needs every
/// connection served at once): for each connection, `serve` runs inline. Stops when
/// dropped (≤ 400 s).
struct InlineServer {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl InlineServer {
    fn start(l: TcpListener, serve: impl Fn(TcpStream) + Send + 'static) -> InlineServer {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (st, sv) = (stop.clone(), served.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(400) {
                if !poll_in(l.as_raw_fd(), 100) {
                    continue;
                }
                if let Ok((c, _)) = l.accept() {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
                    serve(c);
                    sv.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        InlineServer {
            stop,
            served,
            handle: Some(handle),
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for InlineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A UDP sink: counts datagrams (≤ 400 s, until dropped).
struct UdpSink {
    port: u16,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpSink {
    fn start(sock: UdpSocket) -> UdpSink {
        let port = sock.local_addr().expect("local_addr").port();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (st, rc) = (stop.clone(), received.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(400) {
                if sock.recv_from(&mut buf).is_ok() {
                    rc.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        UdpSink {
            port,
            received,
            stop,
            handle: Some(handle),
        }
    }

    fn count(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
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

fn set_rcvbuf(fd: i32, bytes: i32) {
    // SAFETY: a plain setsockopt with an int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

/// A "new connections work" check after a flood: TCP echo to 198.51.100.1 and to the
/// host's loopback through 10.0.2.2, and a UDP echo round trip.
fn new_connections_work(r: &Rig, seed: u64) {
    let srv = r.s.host.tcp_server("198.51.100.1:0", echo_handler);
    let lo = r.s.host.tcp_server("127.0.0.1:0", echo_handler);
    let udp = r.s.host.udp_echo("198.51.100.1:0");
    r.s.echo_roundtrip(SocketAddr::from((HOST_ADDR, srv.port())), seed, 300_000);
    r.s.echo_roundtrip(SocketAddr::from((GATEWAY, lo.port())), seed + 1, 300_000);
    let u = r.s.guest.udp_socket();
    u.connect(udp.addr).expect("connect udp");
    let got = udp_request(&u, b"after the flood", 5, Duration::from_secs(2))
        .expect("UDP echo after the flood");
    assert_eq!(got, b"after the flood");
}

// ---------------------------------------------------------------------------------------
// 1. SYN flood to many destinations
// ---------------------------------------------------------------------------------------

/// Raw SYNs from the guest to 252 × 32 blackholed (198.51.100.x, port) tuples (x in
/// 2..=253: the host namespace ARPs for them and nobody answers, so each host connect
/// stays in flight ~3 s) and to 2000 closed ports of 198.51.100.1: the half-open table
/// stays at its cap (fds prove it: one per host connect in flight), the surplus is
/// counted as `tcp_half_open_full`, the download beside it completes intact, and new
/// connections work afterwards.
#[test]
fn syn_flood_many_destinations() {
    let r = Rig::new(&[]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let idle_fds = fds(pid);
    let before = r.stats();
    let tr = Transfer::start(&r.s, 1101);
    let (gw, me) = r.macs();
    // room for the whole burst in tap0's queue: every SYN reaches the engine.
    r.s.guest.sh_ok("ip link set dev tap0 txqueuelen 20000");
    let (_, tap_drop0) = r.tap_tx();
    let mon = Monitor::start(pid);
    let t0 = Instant::now();
    let rep = r.s.guest.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on tap0");
        let mut rep = SendReport::default();
        let mut sport: u16 = 20000;
        let mut closed_port: u16 = 1000;
        let mut id: u16 = 1;
        for round in 0..32u16 {
            for x in 2..=253u8 {
                let dst = Ipv4Addr::new(198, 51, 100, x);
                let dport = 5000 + round * 7 + u16::from(x % 5);
                let seg = tcp_segment(
                    (GUEST_ADDR, sport),
                    (dst, dport),
                    u32::from(sport) << 12,
                    0x02,
                    None,
                    b"",
                );
                send_frame(
                    &ps,
                    &ipv4_frame(gw, me, GUEST_ADDR, dst, 6, id, (false, 0), &seg),
                    &mut rep,
                );
                sport = sport.wrapping_add(1).max(20000);
                id = id.wrapping_add(1);
                // one SYN in four goes to a closed port of 198.51.100.1 (≤ 2000 of them).
                if x % 4 == 0 && closed_port < 3000 {
                    let seg = tcp_segment(
                        (GUEST_ADDR, sport),
                        (HOST_ADDR, closed_port),
                        u32::from(sport) << 12,
                        0x02,
                        None,
                        b"",
                    );
                    send_frame(
                        &ps,
                        &ipv4_frame(gw, me, GUEST_ADDR, HOST_ADDR, 6, id, (false, 0), &seg),
                        &mut rep,
                    );
                    sport = sport.wrapping_add(1).max(20000);
                    id = id.wrapping_add(1);
                    closed_port += 1;
                }
            }
        }
        rep
    });
    let burst = t0.elapsed();
    let tap_dropped = r.tap_tx().1 - tap_drop0;
    // during the flood: the engine answers stats and the half-open flows are bounded.
    let during = r.stats();
    let open_during = flows(&during, "tcp", "open");
    thread::sleep(Duration::from_secs(3));
    let trr = tr.finish("the SYN flood");
    // a blackholed connect ends when the host kernel gives up on ARP (it reports
    // EHOSTUNREACH only for the SYNs queued at that moment) or at the engine's
    // TCP_CONNECT_TIMEOUT (75 s): wait up to 100 s for every flow to go.
    let after = r.wait_stats(Duration::from_secs(100), |v| flows(v, "tcp", "open") == 0);
    let settle = t0.elapsed();
    let peaks = mon.finish();
    new_connections_work(&r, 1102);
    let end = r.wait_stats(Duration::from_secs(10), |v| flows(v, "tcp", "open") == 0);
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let d = |k: &str| drop_n(&after, k) - drop_n(&before, k);
    let half_open_full = d("tcp_half_open_full");
    let created = flows(&after, "tcp", "total") - flows(&before, "tcp", "total");
    println!(
        "FIGURES syn_flood: {} SYNs sent in {:.2} s ({} failed, {} ENOBUFS retries, {} dropped by tap0) to \
         8064 blackholed + 2000 closed-port tuples; tcp flows created {created}, open \
         during {open_during}, open after {:.1} s {}; tcp_half_open_full {half_open_full}, \
         tcp_table_full {}; RSS idle {} peak(sampled) {} VmHWM {} end {}; fds idle \
         {idle_fds} peak {} end {end_fds} ({} samples); download beside it: {} x {} MiB \
         in {:.1} s ({} bytes); drops {}",
        rep.sent,
        burst.as_secs_f64(),
        rep.failed,
        rep.enobufs,
        tap_dropped,
        settle.as_secs_f64(),
        flows(&after, "tcp", "open"),
        d("tcp_table_full"),
        mib(idle_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        peaks.samples,
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        trr.bytes,
        drops_of(&after),
    );
    assert!(rep.sent >= 10_000, "only {} SYNs went into tap0", rep.sent);
    assert!(
        half_open_full >= 1000,
        "with {} SYNs to blackholed tuples in {:.2} s, the half-open cap ({}) \
         should have refused many, tcp_half_open_full = {half_open_full}",
        rep.sent,
        burst.as_secs_f64(),
        caps().half_open
    );
    // every SYN that reached the engine became a flow or a counted refusal (the
    // downloads' own connections are flows too).
    assert!(
        created + half_open_full <= rep.sent + u64::from(trr.downloads) + 16,
        "flows created {created} + refused {half_open_full} > SYNs sent {} + downloads {}",
        rep.sent,
        trr.downloads
    );
    // every host connect in flight holds one fd: the half-open cap bounds them.
    let fd_bound = idle_fds + caps().half_open as usize + 32;
    assert!(
        peaks.fds <= fd_bound,
        "fds peaked at {} (idle {idle_fds}): above half-open cap + 32 = {fd_bound}",
        peaks.fds
    );
    assert!(
        open_during <= caps().half_open + 8,
        "tcp flows open during the flood: {open_during}"
    );
    assert_eq!(
        flows(&after, "tcp", "open"),
        0,
        "the blackholed flows did not go away within 100 s: {after}"
    );
    // state held: 1024 half-open flows (smoltcp socket, slab entry, page tables of the
    // untouched mmap-backed rings: ~9 KiB each, bench/README.md) at ≤ 16 KiB
    // each, and the download's two rings.
    let bound = rss_bound(
        idle_rss,
        caps().half_open * 16 * KIB + 2 * caps().tcp_buffer,
    );
    assert!(
        peak_hwm <= bound,
        "RSS peaked at {} (idle {}): above the bound {}",
        mib(peak_hwm),
        mib(idle_rss),
        mib(bound)
    );
    assert_eq!(flows(&end, "tcp", "open"), 0, "tcp flows left open: {end}");
    assert!(
        end_fds <= idle_fds + 2,
        "fds after the flood {end_fds}, idle {idle_fds}"
    );
}

/// The engine's soft RLIMIT_NOFILE (for the figures: the fd caps need it ≥ 4096 + a few).
fn nofile(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------
// 2. 50 000 UDP flows
// ---------------------------------------------------------------------------------------

/// One datagram from each of 50 000 distinct guest source ports (10000..60000, real
/// sockets bound in the guest) to a sink on 198.51.100.1:9. The sender keeps at most
/// 1024 datagrams ahead of what the sink has received, so that the guest's tap queue
/// does not drop them. The engine keeps ≤ 4096 mappings (one host socket each: the fd
/// count shows it), counts every eviction as `udp_evicted`, the download beside it
/// completes intact, and UDP and TCP work afterwards.
#[test]
fn udp_50000_flows() {
    const FLOWS: u16 = 50_000;
    let host = HostNs::new();
    let sink_sock = host.udp_socket("198.51.100.1:9");
    set_rcvbuf(sink_sock.as_raw_fd(), 8 << 20);
    let sink = UdpSink::start(sink_sock);
    let r = Rig::build(host, &[]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let idle_fds = fds(pid);
    let before = r.stats();
    let tr = Transfer::start(&r.s, 2101);
    r.s.guest.sh_ok("ip link set dev tap0 txqueuelen 20000");
    let (_, tap_drop0) = r.tap_tx();
    let mon = Monitor::start(pid);
    let dst = SocketAddr::from((HOST_ADDR, sink.port));
    let received = sink.received.clone();
    let api = r.api.clone();
    let t0 = Instant::now();
    // (sent, bind failures, send failures, stalls, max udp open seen)
    let (sent, bind_err, send_err, stalls, max_open) = r.s.guest.run(move || {
        let (mut sent, mut bind_err, mut send_err, mut stalls, mut max_open) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for i in 0..FLOWS {
            if t0.elapsed() > Duration::from_secs(150) {
                break;
            }
            // flow control on the sink's count (≤ 2 s per wait).
            let w = Instant::now();
            while sent.saturating_sub(received.load(Ordering::SeqCst)) > 1024 {
                if w.elapsed() > Duration::from_secs(2) {
                    stalls += 1;
                    break;
                }
                thread::sleep(Duration::from_micros(200));
            }
            let port = 10_000 + i;
            let Ok(u) = UdpSocket::bind(("0.0.0.0", port)) else {
                bind_err += 1;
                continue;
            };
            match u.send_to(&port.to_be_bytes(), dst) {
                Ok(_) => sent += 1,
                Err(_) => send_err += 1,
            }
            if i % 5000 == 4999 {
                let v = api_json(&api, r#"{"execute":"stats"}"#);
                let open = v
                    .pointer("/return/flows/udp/open")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                max_open = max_open.max(open);
            }
        }
        (sent, bind_err, send_err, stalls, max_open)
    });
    let dur = t0.elapsed();
    // the last datagrams reach the sink.
    let w = Instant::now();
    while sink.count() < sent && w.elapsed() < Duration::from_secs(5) {
        thread::sleep(Duration::from_millis(20));
    }
    let after = r.stats();
    let tap_dropped = r.tap_tx().1 - tap_drop0;
    let trr = tr.finish("50 000 UDP flows");
    let peaks = mon.finish();
    new_connections_work(&r, 2102);
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let d = |k: &str| drop_n(&after, k) - drop_n(&before, k);
    let created = flows(&after, "udp", "total") - flows(&before, "udp", "total");
    let open = flows(&after, "udp", "open");
    let evicted = d("udp_evicted");
    println!(
        "FIGURES udp_50000_flows: {sent} datagrams from {FLOWS} guest ports in {:.1} s \
         ({bind_err} bind errors, {send_err} send errors, {stalls} flow-control stalls, \
         {tap_dropped} dropped by tap0); sink received {}; udp mappings created {created}, open max {max_open} (sampled) \
         / at end {open}, udp_evicted {evicted}, udp_send_failed {}; RSS idle {} \
         peak(sampled) {} VmHWM {} end {}; fds idle {idle_fds} peak {} end {end_fds} \
         (engine RLIMIT_NOFILE {}); download beside it: {} x {} MiB in {:.1} s; drops {}",
        dur.as_secs_f64(),
        sink.count(),
        d("udp_send_failed"),
        mib(idle_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        nofile(pid),
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        drops_of(&after),
    );
    assert!(
        sent >= u64::from(FLOWS) * 99 / 100,
        "only {sent} of {FLOWS} datagrams were sent"
    );
    // every datagram arrived, or was dropped where a counter says so.
    assert!(
        sink.count() + tap_dropped + d("udp_send_failed") >= sent,
        "the sink received {} of {sent} datagrams ({tap_dropped} dropped by tap0, {} \
         udp_send_failed)",
        sink.count(),
        d("udp_send_failed")
    );
    assert!(
        max_open <= caps().udp_mappings && open <= caps().udp_mappings,
        "udp mappings above the cap {}: max {max_open}, end {open}",
        caps().udp_mappings
    );
    assert!(
        created >= sink.count(),
        "every datagram came from a fresh port, so each needed a mapping: created \
         {created}, delivered {}",
        sink.count()
    );
    assert_eq!(
        evicted,
        created - (open - flows(&before, "udp", "open")),
        "every mapping that is gone was evicted (and counted): created {created}, open \
         {open}, evicted {evicted}"
    );
    let fd_bound = idle_fds + caps().udp_mappings as usize + 32;
    assert!(
        peaks.fds <= fd_bound,
        "fds peaked at {} (idle {idle_fds}): above the mapping cap + 32 = {fd_bound}",
        peaks.fds
    );
    // state held: 4096 mappings (socket, slab entry, map entries) at ≤ 1 KiB, the
    // download's rings.
    let bound = rss_bound(idle_rss, caps().udp_mappings * KIB + 2 * caps().tcp_buffer);
    assert!(
        peak_hwm <= bound,
        "RSS peaked at {} (idle {}): above the bound {}",
        mib(peak_hwm),
        mib(idle_rss),
        mib(bound)
    );
}

// ---------------------------------------------------------------------------------------
// 3. DNS query floods
// ---------------------------------------------------------------------------------------

/// A DNS query for `name` type A with `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).expect("label"));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// An answer with rcode 0 whose last 4 bytes are `addr` (one A record).
fn dns_answer_is(a: &[u8], addr: [u8; 4]) -> bool {
    a.len() >= 16 && a[2] & 0x80 != 0 && a[3] & 0x0f == 0 && a[6..8] != [0, 0] && a.ends_with(&addr)
}

/// 20 000 queries (distinct names and ids) from the guest to 10.0.2.3 with a dnsmasq
/// upstream on 127.0.0.53 that answers them all, 256 outstanding at a time: every one is
/// answered with the right address, the relay's pending table never overflows, the
/// download beside it completes.
#[test]
fn dns_flood_answered_by_dnsmasq() {
    const QUERIES: u32 = 20_000;
    const WINDOW: u32 = 256;
    let host = HostNs::new();
    host.add_lo_addr("127.0.0.53/8");
    let dnsmasq = Dnsmasq::start(
        &host,
        Ipv4Addr::new(127, 0, 0, 53),
        &["--address=/flood.test/192.0.2.7".to_string()],
    );
    let r = Rig::build(host, &["--dns-upstream=127.0.0.53".to_string()]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let idle_fds = fds(pid);
    let before = r.stats();
    let tr = Transfer::start(&r.s, 3101);
    let mon = Monitor::start(pid);
    let t0 = Instant::now();
    let (answered, wrong, stalls) = r.s.guest.run(|| {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.connect("10.0.2.3:53").expect("connect");
        set_rcvbuf(u.as_raw_fd(), 4 << 20);
        u.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let answered = Arc::new(AtomicU64::new(0));
        let wrong = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![false; QUERIES as usize]));
        let rx = {
            let (u, answered, wrong, done, seen) = (
                u.try_clone().expect("clone"),
                answered.clone(),
                wrong.clone(),
                done.clone(),
                seen.clone(),
            );
            thread::spawn(move || {
                let start = Instant::now();
                let mut buf = [0u8; 1500];
                while !done.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                    let Ok(n) = u.recv(&mut buf) else { continue };
                    let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                    let mut s = seen.lock().expect("lock");
                    if dns_answer_is(&buf[..n], [192, 0, 2, 7]) && id < s.len() && !s[id] {
                        s[id] = true;
                        answered.fetch_add(1, Ordering::SeqCst);
                    } else {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let mut stalls = 0u64;
        for i in 0..QUERIES {
            let w = Instant::now();
            while u64::from(i).saturating_sub(answered.load(Ordering::SeqCst)) >= u64::from(WINDOW)
            {
                if w.elapsed() > Duration::from_secs(2) {
                    stalls += 1;
                    break;
                }
                thread::sleep(Duration::from_micros(100));
            }
            let _ = u.send(&dns_query(i as u16, &format!("q{i}.flood.test")));
        }
        let w = Instant::now();
        while answered.load(Ordering::SeqCst) < u64::from(QUERIES)
            && w.elapsed() < Duration::from_secs(10)
        {
            thread::sleep(Duration::from_millis(20));
        }
        done.store(true, Ordering::SeqCst);
        let _ = rx.join();
        (
            answered.load(Ordering::SeqCst),
            wrong.load(Ordering::SeqCst),
            stalls,
        )
    });
    let dur = t0.elapsed();
    let after = r.stats();
    let trr = tr.finish("the DNS flood");
    let peaks = mon.finish();
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let d = |k: &str| drop_n(&after, k) - drop_n(&before, k);
    let logged = dnsmasq.log().matches("flood.test").count();
    println!(
        "FIGURES dns_flood_answered: {QUERIES} queries ({WINDOW} outstanding) in {:.1} s = \
         {:.0}/s; answered correctly {answered}, wrong/duplicate {wrong}, stalls {stalls}; \
         dnsmasq log lines for flood.test {logged}; dns_dropped {}; RSS idle {} \
         peak(sampled) {} VmHWM {} end {}; fds idle {idle_fds} peak {} end {end_fds}; \
         download beside it: {} x {} MiB in {:.1} s; drops {}",
        dur.as_secs_f64(),
        f64::from(QUERIES) / dur.as_secs_f64(),
        d("dns_dropped"),
        mib(idle_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        drops_of(&after),
    );
    assert_eq!(
        answered,
        u64::from(QUERIES),
        "every query should be answered with 192.0.2.7 (wrong {wrong}, dns_dropped {})",
        d("dns_dropped")
    );
    assert_eq!(d("dns_dropped"), 0, "no query should be dropped: {after}");
    assert!(
        peaks.fds <= idle_fds + 8,
        "fds peaked at {} (idle {idle_fds})",
        peaks.fds
    );
    let bound = rss_bound(idle_rss, caps().dns_pending * KIB + 2 * caps().tcp_buffer);
    assert!(
        peak_hwm <= bound,
        "RSS peaked at {} (idle {}): above the bound {}",
        mib(peak_hwm),
        mib(idle_rss),
        mib(bound)
    );
}

/// 30 000 queries at full speed from 8 guest sockets to 10.0.2.3 while the upstream (a
/// UDP sink on the host namespace's loopback) never answers: the relay keeps ≤ 1024
/// queries pending (the sink sees ≤ 1024 distinct queries per 6 s: 3 tries of 2 s), the
/// rest are counted as `dns_dropped`; meanwhile the engine stays responsive (the
/// download beside it completes, the relay's local name answers within 1 s, `stats`
/// answers), and once the pending queries expire new queries are forwarded again.
#[test]
fn dns_flood_silent_upstream_pending_capped() {
    const QUERIES: u32 = 30_000;
    const SOCKS: u32 = 8;
    let host = HostNs::new();
    let sink_sock = host.udp_socket("127.0.0.1:0");
    set_rcvbuf(sink_sock.as_raw_fd(), 8 << 20);
    let sink = UdpSink::start(sink_sock);
    let r = Rig::build(host, &[format!("--dns-upstream=127.0.0.1:{}", sink.port)]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let idle_fds = fds(pid);
    let before = r.stats();
    let tr = Transfer::start(&r.s, 3201);
    r.s.guest.sh_ok("ip link set dev tap0 txqueuelen 40000");
    let (_, tap_drop0) = r.tap_tx();
    // the guest resolves 10.0.2.3's MAC first (else the burst waits in its ARP queue,
    // which drops what does not fit) and the relay answers its own name.
    let first = r.s.guest.run(|| {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.connect("10.0.2.3:53").expect("connect");
        udp_request(
            &u,
            &dns_query(1, "host.usernet.internal"),
            5,
            Duration::from_secs(1),
        )
    });
    assert!(
        first
            .as_ref()
            .is_ok_and(|a| dns_answer_is(a, [10, 0, 2, 2])),
        "the relay does not answer host.usernet.internal: {first:?}"
    );
    let mon = Monitor::start(pid);
    // a prober: the relay's own name, answered locally, every 100 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        r.s.guest.spawn(move || {
            let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
            u.connect("10.0.2.3:53").expect("connect");
            let (mut ok, mut lost, mut worst) = (0u32, 0u32, Duration::ZERO);
            let start = Instant::now();
            let mut id = 0u16;
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                id = id.wrapping_add(1);
                let t = Instant::now();
                match udp_request(
                    &u,
                    &dns_query(id, "host.usernet.internal"),
                    1,
                    Duration::from_secs(1),
                ) {
                    Ok(a) if dns_answer_is(&a, [10, 0, 2, 2]) => {
                        ok += 1;
                        worst = worst.max(t.elapsed());
                    }
                    _ => lost += 1,
                }
                thread::sleep(Duration::from_millis(100));
            }
            (ok, lost, worst)
        })
    };
    let t0 = Instant::now();
    let rep = r.s.guest.run(|| {
        let socks: Vec<UdpSocket> = (0..SOCKS)
            .map(|_| {
                let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
                u.connect("10.0.2.3:53").expect("connect");
                u
            })
            .collect();
        let mut rep = SendReport::default();
        for i in 0..QUERIES {
            let q = dns_query(i as u16, &format!("s{i}.silent.test"));
            match socks[(i % SOCKS) as usize].send(&q) {
                Ok(_) => rep.sent += 1,
                Err(_) => rep.failed += 1,
            }
        }
        rep
    });
    let burst = t0.elapsed();
    let api_t = Instant::now();
    let during = r.stats();
    let api_latency = api_t.elapsed();
    let tap_dropped = r.tap_tx().1 - tap_drop0;
    let sink_at_burst = sink.count();
    // the pending queries expire (3 tries × 2 s).
    thread::sleep(Duration::from_secs(8));
    let sink_expired = sink.count();
    let after = r.stats();
    // the table has room again: a fresh query goes upstream.
    r.s.guest.run(|| {
        let u = UdpSocket::bind("0.0.0.0:0").expect("bind");
        u.connect("10.0.2.3:53").expect("connect");
        let _ = u.send(&dns_query(7, "after.silent.test"));
    });
    let w = Instant::now();
    while sink.count() == sink_expired && w.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(20));
    }
    let sink_final = sink.count();
    stop.store(true, Ordering::SeqCst);
    let (probe_ok, probe_lost, probe_worst) = prober.join().expect("prober");
    let trr = tr.finish("the DNS flood");
    let peaks = mon.finish();
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let dd = |v: &Value, k: &str| drop_n(v, k) - drop_n(&before, k);
    let dropped = dd(&after, "dns_dropped");
    let reached = rep.sent - tap_dropped.min(rep.sent);
    println!(
        "FIGURES dns_flood_silent_upstream: {} queries sent in {:.2} s ({} failed, {} \
         dropped by tap0, so {reached} reached the engine); dns_dropped {} right after \
         the burst, {dropped} after expiry; the silent upstream got {sink_at_burst} \
         queries by the end of the burst, {sink_expired} after expiry (3 tries each), \
         {sink_final} after one more query; local-name probes during the flood: {probe_ok} \
         answered (worst {:.0} ms), {probe_lost} lost; stats latency during flood \
         {:.0} ms; RSS idle {} peak(sampled) {} VmHWM {} end {}; fds idle {idle_fds} peak \
         {} end {end_fds}; download beside it: {} x {} MiB in {:.1} s; drops {}",
        rep.sent,
        burst.as_secs_f64(),
        rep.failed,
        tap_dropped,
        dd(&during, "dns_dropped"),
        probe_worst.as_secs_f64() * 1000.0,
        api_latency.as_secs_f64() * 1000.0,
        mib(idle_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        drops_of(&after),
    );
    assert!(
        burst < Duration::from_secs(6),
        "the burst took {burst:?}: too slow to fill the pending table before expiry"
    );
    assert!(
        reached >= u64::from(QUERIES) / 2,
        "only {reached} queries reached the engine"
    );
    // everything beyond the pending cap was dropped and counted.
    assert!(
        dropped + caps().dns_pending >= reached,
        "{reached} queries reached the engine, {} can be pending, but dns_dropped is \
         only {dropped}",
        caps().dns_pending
    );
    assert!(
        dropped <= reached,
        "dns_dropped {dropped} > queries that reached the engine {reached}"
    );
    assert!(
        sink_expired <= 3 * caps().dns_pending,
        "the silent upstream got {sink_expired} queries: more than 3 tries × the pending \
         cap {}",
        caps().dns_pending
    );
    assert!(
        sink_final > sink_expired,
        "after the pending queries expired, a new query was not forwarded"
    );
    assert!(
        probe_ok >= 1 && probe_lost <= probe_ok / 10 + 1,
        "the relay's local answers during the flood: {probe_ok} answered, {probe_lost} lost"
    );
    assert!(
        peaks.fds <= idle_fds + 8,
        "fds peaked at {} (idle {idle_fds})",
        peaks.fds
    );
    let bound = rss_bound(idle_rss, caps().dns_pending * KIB + 2 * caps().tcp_buffer);
    assert!(
        peak_hwm <= bound,
        "RSS peaked at {} (idle {}): above the bound {}",
        mib(peak_hwm),
        mib(idle_rss),
        mib(bound)
    );
}

// ---------------------------------------------------------------------------------------
// 4. malformed frames at full speed
// ---------------------------------------------------------------------------------------

/// Every malformed kind sent, and the drop counter it must raise.
const MALFORMED: &[(&str, &str)] = &[
    ("Ethernet header only, IPv4 type", "ipv4_malformed"),
    ("unknown EtherType 0x88b5", "unknown_ethertype"),
    ("destination MAC not the gateway's", "frame_not_for_us"),
    ("IPv4 header cut at 10 bytes", "ipv4_malformed"),
    ("IPv4 IHL 4 (16 bytes < 20)", "ipv4_malformed"),
    ("IPv4 IHL 15 beyond the packet", "ipv4_malformed"),
    ("IPv4 version 6 in an IPv4 frame", "ipv4_malformed"),
    ("IPv4 header checksum wrong", "ipv4_bad_checksum"),
    ("IPv4 total length 60000 beyond the frame", "ipv4_malformed"),
    ("IPv4 total length 12 below the header", "ipv4_malformed"),
    ("IPv4 source = the gateway's address", "ipv4_bad_source"),
    ("IP protocol 47", "unsupported_protocol"),
    ("lone first fragment (fresh id each)", "fragment_evicted"),
    ("lone last fragment (fresh id each)", "fragment_evicted"),
    ("overlapping fragment pair", "fragment_overlap"),
    ("fragment ending beyond 65535", "fragment_invalid"),
    ("TCP data offset 2", "tcp_malformed"),
    ("TCP data offset 15 beyond the segment", "tcp_malformed"),
    ("TCP checksum wrong", "tcp_malformed"),
    ("UDP length beyond the payload", "udp_malformed"),
    ("UDP checksum wrong", "udp_malformed"),
    ("ICMP checksum wrong", "icmp_malformed"),
    ("ICMP cut at 3 bytes", "icmp_malformed"),
    ("ARP cut at 10 bytes", "arp_malformed"),
    ("ARP hardware type 6", "arp_malformed"),
    ("IPv6 while IPv6 is off", "ipv6_disabled"),
    (
        "oversized: 1518-byte VLAN-tagged frame",
        "unknown_ethertype",
    ),
];

/// The frames of malformed kind `k`, `i`-th instance (distinct ids and ports).
fn malformed(k: usize, i: u32, gw: [u8; 6], me: [u8; 6]) -> Vec<Vec<u8>> {
    let g = GUEST_ADDR;
    let h = HOST_ADDR;
    let port = 7 + (i % 50) as u16;
    let id = (i % 0x4000) as u16;
    let eth = |dst: [u8; 6], ty: [u8; 2], payload: &[u8]| {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&me);
        f.extend_from_slice(&ty);
        f.extend_from_slice(payload);
        f
    };
    let ip = |proto: u8, id: u16, frag: (bool, u16), payload: &[u8]| {
        ipv4_frame(gw, me, g, h, proto, id, frag, payload)
    };
    let udp_ok = ip(
        17,
        id,
        (false, 0),
        &udp_datagram((g, 40000), (h, port), None, b"0123456789abcdef"),
    );
    // fix the IPv4 header checksum after editing bytes of it.
    let reck = |mut f: Vec<u8>| {
        let ihl = usize::from(f[14] & 0x0f) * 4;
        if ihl >= 20 && f.len() >= 14 + ihl {
            f[24] = 0;
            f[25] = 0;
            let ck = inet_checksum(&f[14..14 + ihl]);
            f[24..26].copy_from_slice(&ck.to_be_bytes());
        }
        f
    };
    let one = |f: Vec<u8>| vec![f];
    match k {
        0 => one(eth(gw, [0x08, 0x00], b"")),
        1 => one(eth(gw, [0x88, 0xb5], &pattern(u64::from(i), 46))),
        2 => {
            let mut f = udp_ok;
            f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x99, 0x99]);
            one(f)
        }
        3 => one(udp_ok[..24].to_vec()),
        4 => {
            let mut f = udp_ok;
            f[14] = 0x44;
            one(reck(f))
        }
        5 => {
            let mut f = udp_ok;
            f[14] = 0x4f;
            one(f)
        }
        6 => {
            let mut f = udp_ok;
            f[14] = 0x65;
            one(reck(f))
        }
        7 => {
            let mut f = udp_ok;
            f[24] ^= 0x5a;
            one(f)
        }
        8 => {
            let mut f = udp_ok;
            f[16..18].copy_from_slice(&60000u16.to_be_bytes());
            one(reck(f))
        }
        9 => {
            let mut f = udp_ok;
            f[16..18].copy_from_slice(&12u16.to_be_bytes());
            one(reck(f))
        }
        10 => one(ipv4_frame(
            gw,
            me,
            GATEWAY,
            h,
            17,
            id,
            (false, 0),
            &udp_datagram((GATEWAY, 40000), (h, port), None, b"spoofed"),
        )),
        11 => one(ip(47, id, (false, 0), &pattern(u64::from(i), 24))),
        12 => one(ip(17, id, (true, 0), &pattern(u64::from(i), 64))),
        13 => one(ip(
            17,
            0x4000 + id,
            (false, 100),
            &pattern(u64::from(i), 40),
        )),
        14 => vec![
            ip(17, 0x8000 + id, (true, 0), &pattern(u64::from(i), 800)),
            ip(17, 0x8000 + id, (true, 50), &pattern(u64::from(i) + 1, 800)),
        ],
        15 => one(ip(
            17,
            0xc000 + id,
            (false, 8189),
            &pattern(u64::from(i), 104),
        )),
        16 | 17 => {
            let doff = if k == 16 { 2 } else { 15 };
            one(ip(
                6,
                id,
                (false, 0),
                &tcp_segment((g, 40000), (h, port), i, 0x10, Some(doff), b""),
            ))
        }
        18 => {
            let mut t = tcp_segment((g, 40000), (h, port), i, 0x10, None, b"payload!");
            t[22] ^= 0x01;
            one(ip(6, id, (false, 0), &t))
        }
        19 => one(ip(
            17,
            id,
            (false, 0),
            &udp_datagram((g, 40000), (h, port), Some(1000), b"short"),
        )),
        20 => {
            let mut u = udp_datagram((g, 40000), (h, port), None, b"0123456789abcdef");
            u[10] ^= 0x01;
            one(ip(17, id, (false, 0), &u))
        }
        21 | 22 => {
            let mut e = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
            e.extend_from_slice(b"ping payload");
            let ck = inet_checksum(&e);
            e[2..4].copy_from_slice(&ck.to_be_bytes());
            if k == 21 {
                e[9] ^= 0x01;
            } else {
                e.truncate(3);
            }
            one(ip(1, id, (false, 0), &e))
        }
        23 => one(eth(gw, [0x08, 0x06], &[0, 1, 8, 0, 6, 4, 0, 1, 0, 0])),
        24 => {
            let mut a = vec![0u8, 6, 8, 0, 6, 4, 0, 1];
            a.extend_from_slice(&me);
            a.extend_from_slice(&g.octets());
            a.extend_from_slice(&[0; 6]);
            a.extend_from_slice(&GATEWAY.octets());
            one(eth([0xff; 6], [0x08, 0x06], &a))
        }
        25 => one(eth(gw, [0x86, 0xdd], &pattern(u64::from(i), 60))),
        _ => {
            let mut p = vec![0x00, 0x05, 0x08, 0x00];
            p.extend_from_slice(&udp_ok[14..]);
            p.resize(1518 - 14, 0xee);
            one(eth(gw, [0x81, 0x00], &p))
        }
    }
}

/// 300 000 frames, round robin over every malformed kind in [`MALFORMED`], from a packet
/// socket in the guest as fast as the kernel takes them: the engine reads what it can
/// (tap0 drops the rest, and says so), each kind raises its own drop counter, every
/// frame the engine read is accounted for, the download beside it completes intact,
/// and new connections work afterwards.
#[test]
fn malformed_frames_full_speed() {
    const FRAMES: u64 = 300_000;
    let r = Rig::new(&[]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let idle_fds = fds(pid);
    let tr = Transfer::start(&r.s, 4101);
    let (gw, me) = r.macs();
    r.s.guest.sh_ok("ip link set dev tap0 txqueuelen 20000");
    let before = r.stats();
    let (_, tap_drop0) = r.tap_tx();
    let mon = Monitor::start(pid);
    let t0 = Instant::now();
    let (rep, per_kind) = r.s.guest.run(|| {
        let ps = PacketSocket::open("tap0").expect("AF_PACKET socket on tap0");
        let mut rep = SendReport::default();
        let mut per_kind = vec![0u64; MALFORMED.len()];
        let mut i = 0u32;
        while rep.sent + rep.failed < FRAMES && t0.elapsed() < Duration::from_secs(120) {
            for (k, n) in per_kind.iter_mut().enumerate() {
                for f in malformed(k, i, gw, me) {
                    let s0 = rep.sent;
                    send_frame(&ps, &f, &mut rep);
                    *n += rep.sent - s0;
                }
            }
            i += 1;
        }
        (rep, per_kind)
    });
    let burst = t0.elapsed();
    let tap_dropped = r.tap_tx().1 - tap_drop0;
    thread::sleep(Duration::from_millis(500));
    let after = r.stats();
    let trr = tr.finish("the malformed frames");
    let peaks = mon.finish();
    new_connections_work(&r, 4102);
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let d = |k: &str| drop_n(&after, k) - drop_n(&before, k);
    let all_drops = |v: &Value| -> u64 {
        v.get("drops")
            .and_then(Value::as_object)
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    };
    let drops_total = all_drops(&after) - all_drops(&before);
    let reached = rep.sent - tap_dropped.min(rep.sent);
    let pairs = per_kind[14] / 2;
    println!(
        "FIGURES malformed_frames: {} frames of {} kinds in {:.2} s = {:.0} frames/s ({} \
         failed, {} ENOBUFS retries, {tap_dropped} dropped by tap0 because the engine was \
         busy, so {reached} reached the engine); drops counted {drops_total}; RSS idle {} \
         peak(sampled) {} VmHWM {} end {}; fds idle {idle_fds} peak {} end {end_fds}; \
         download beside it: {} x {} MiB in {:.1} s; drops {}",
        rep.sent,
        MALFORMED.len(),
        burst.as_secs_f64(),
        rep.sent as f64 / burst.as_secs_f64(),
        rep.failed,
        rep.enobufs,
        mib(idle_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        drops_of(&after),
    );
    // frames (instances, for the overlapping pairs) each counter should have seen.
    let instances = |k: usize| {
        if k == 14 {
            per_kind[k] / 2
        } else {
            per_kind[k]
        }
    };
    let mut expect: Vec<(&str, u64)> = Vec::new();
    for (k, (_, counter)) in MALFORMED.iter().enumerate() {
        match expect.iter_mut().find(|(c, _)| c == counter) {
            Some(e) => e.1 += instances(k),
            None => expect.push((counter, instances(k))),
        }
    }
    for (k, (what, counter)) in MALFORMED.iter().enumerate() {
        println!(
            "FIGURES malformed_frames:   kind {what}: {} frames sent -> {counter}",
            per_kind[k]
        );
    }
    for (counter, n) in &expect {
        println!(
            "FIGURES malformed_frames:   counter {counter}: +{} for {n} malformed instances sent",
            d(counter)
        );
    }
    assert!(
        rep.sent >= FRAMES * 99 / 100,
        "only {} frames sent",
        rep.sent
    );
    for (k, (what, counter)) in MALFORMED.iter().enumerate() {
        assert!(
            per_kind[k] > 0 && d(counter) > 0,
            "{what}: {} sent, but {counter} did not move: {after}",
            per_kind[k]
        );
    }
    // tap0 drops frames of every kind alike (they are interleaved), so each counter sees
    // its share of what reached the engine; lone fragments still pending (≤ 64 per
    // reassembly table) are not counted yet, and the guest's own IPv6 frames add a few.
    let loss = tap_dropped as f64 / rep.sent.max(1) as f64;
    for (counter, n) in &expect {
        let lo = (*n as f64 * (1.0 - 2.0 * loss - 0.01)) as u64;
        let lo = lo.saturating_sub(64);
        assert!(
            d(counter) >= lo && d(counter) <= n + 64,
            "{counter}: +{} for {n} malformed instances sent (tap0 dropped {:.1} % of all \
             frames; expected between {lo} and {})",
            d(counter),
            loss * 100.0,
            n + 64
        );
    }
    // every frame that reached the engine is one drop, except the first frame of each
    // overlapping pair (one drop per pair), reassemblies still pending (≤ 64), and the
    // guest's own frames meanwhile (the download's ACKs are not drops).
    assert!(
        drops_total + pairs + 64 >= reached,
        "{reached} malformed frames reached the engine, only {drops_total} drops counted \
         (+ {pairs} overlapping pairs + 64 pending reassemblies)"
    );
    assert!(
        peaks.fds <= idle_fds + 8,
        "fds peaked at {} (idle {idle_fds})",
        peaks.fds
    );
    let bound = rss_bound(idle_rss, 2 * caps().tcp_buffer);
    assert!(
        peak_hwm <= bound,
        "RSS peaked at {} (idle {}): above the bound {}",
        mib(peak_hwm),
        mib(idle_rss),
        mib(bound)
    );
}

// ---------------------------------------------------------------------------------------
// 5. connect+close churn
// ---------------------------------------------------------------------------------------

/// Cycles each churn test aims at, and the time it may take (CI has 90 minutes for
/// everything; each test stays under ~3 minutes).
const CHURN_TARGET: u64 = 100_000;
const CHURN_BUDGET: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct ChurnReport {
    done: u64,
    errors: u64,
    first_error: Option<String>,
    secs: f64,
}

impl ChurnReport {
    fn rate(&self) -> f64 {
        self.done as f64 / self.secs
    }
}

/// Runs `cycle` until [`CHURN_TARGET`] cycles, [`CHURN_BUDGET`] or 100 errors.
fn churn_loop(mut cycle: impl FnMut() -> io::Result<()>) -> ChurnReport {
    let t0 = Instant::now();
    let (mut done, mut errors, mut first_error) = (0u64, 0u64, None);
    while done < CHURN_TARGET && t0.elapsed() < CHURN_BUDGET && errors < 100 {
        match cycle() {
            Ok(()) => done += 1,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("after {done} cycles: {e}"));
            }
        }
    }
    ChurnReport {
        done,
        errors,
        first_error,
        secs: t0.elapsed().as_secs_f64(),
    }
}

/// Reads the 1-byte greeting, then EOF.
fn greeting_then_eof(c: &mut TcpStream) -> io::Result<()> {
    let mut b = [0u8; 2];
    c.read_exact(&mut b[..1])?;
    match c.read(&mut b)? {
        0 => Ok(()),
        n => Err(io::Error::other(format!("{n} bytes after the greeting"))),
    }
}

/// Figures and checks common to both churn tests: run `cycles` beside a download,
/// then every flow is gone, fds are back to the start, RSS is near it.
fn churn_test(r: &Rig, what: &str, seed: u64, cycles: impl FnOnce() -> ChurnReport) {
    let pid = r.pid();
    let before = r.stats();
    let (start_rss, start_fds) = (rss(pid), fds(pid));
    // 64 MiB/s: two downloads a second beside the churn, without starving it of CPU.
    let tr = Transfer::start_paced(&r.s, seed, Some(64 * MIB));
    let mon = Monitor::start(pid);
    let rep = cycles();
    let during = r.stats();
    let trr = tr.finish(what);
    let peaks = mon.finish();
    let after = r.wait_stats(Duration::from_secs(15), |v| tcp_flows(v, "open") == 0);
    thread::sleep(Duration::from_millis(300));
    let (end_rss, end_fds, peak_hwm) = (rss(pid), fds(pid), hwm(pid));
    let created = tcp_flows(&after, "total") - tcp_flows(&before, "total");
    let projected = CHURN_TARGET as f64 / rep.rate();
    println!(
        "FIGURES churn {what}: {} connect+close cycles in {:.1} s = {:.0}/s ({} errors{}); \
         100 000 cycles would take {projected:.0} s at this rate; tcp flows created \
         {created} ({} spliced), open right after {} and after settling {}; RSS start {} \
         peak(sampled) {} VmHWM {} end {}; fds start {start_fds} peak {} end {end_fds}; \
         download beside it: {} x {} MiB in {:.1} s; drops {}",
        rep.done,
        rep.secs,
        rep.rate(),
        rep.errors,
        rep.first_error
            .as_ref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default(),
        flows(&after, "tcp", "spliced_total") - flows(&before, "tcp", "spliced_total"),
        tcp_flows(&during, "open"),
        tcp_flows(&after, "open"),
        mib(start_rss),
        mib(peaks.rss),
        mib(peak_hwm),
        mib(end_rss),
        peaks.fds,
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
        drops_of(&after),
    );
    assert_eq!(
        rep.errors, 0,
        "{what}: cycles failed: {:?}",
        rep.first_error
    );
    assert!(
        rep.done == CHURN_TARGET || rep.done >= 10_000,
        "{what}: only {} cycles in {:.0} s",
        rep.done,
        rep.secs
    );
    assert!(
        created >= rep.done,
        "{what}: {} cycles but only {created} flows",
        rep.done
    );
    assert_eq!(
        tcp_flows(&after, "open"),
        0,
        "{what}: tcp flows left open: {after}"
    );
    // + with --splice, the socket factory's pool of ready sockets (at most 8 per
    // family), which a churn leaves at another level than it found it.
    assert!(
        end_fds <= start_fds + 2 + 8,
        "{what}: fds {end_fds} after the churn, {start_fds} before"
    );
    let rss_limit = (2 * start_rss).max(start_rss + 8 * MIB);
    assert!(
        end_rss <= rss_limit,
        "{what}: RSS {} after the churn, {} before (limit {})",
        mib(end_rss),
        mib(start_rss),
        mib(rss_limit)
    );
    // a handful of flows at once (one cycle, one download, TIME-WAIT released at once).
    let bound = rss_bound(start_rss, 4 * 2 * caps().tcp_buffer);
    assert!(
        peak_hwm <= bound,
        "{what}: RSS peaked at {} (start {}): above the bound {}",
        mib(peak_hwm),
        mib(start_rss),
        mib(bound)
    );
    // A spliced flow holds 6 fds (two sockets, two pipes), and the socket factory hands
    // over 8 sockets at a time.
    assert!(
        peaks.fds <= start_fds + 24,
        "{what}: fds peaked at {} (start {start_fds})",
        peaks.fds
    );
}

/// Guest → 10.0.2.2:PORT (a server on the host namespace's 127.0.0.1 that sends one
/// byte and closes first, so that no TIME-WAIT piles up in the guest), up to 100 000
/// sequential cycles within the time budget: no fd or memory is left behind and the
/// TCP open flow count returns to 0.
#[test]
fn churn_toward_host() {
    let host = HostNs::new();
    let l = host.tcp_listener("127.0.0.1:0");
    let port = l.local_addr().expect("addr").port();
    let srv = InlineServer::start(l, |mut c| {
        let _ = c.write_all(b"y");
    });
    let r = Rig::build(host, &[]);
    let addr = SocketAddr::from((GATEWAY, port));
    let one = move || -> io::Result<()> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        greeting_then_eof(&mut c)
    };
    // warm up (lazily made sockets and tables exist before the start figures).
    let warm =
        r.s.guest
            .run(|| (0..20).map(|_| one()).collect::<io::Result<Vec<()>>>());
    warm.expect("warm-up cycles toward the host");
    let guest = &r.s.guest;
    churn_test(&r, "toward the host (guest -> 10.0.2.2)", 5101, || {
        guest.run(|| churn_loop(one))
    });
    assert!(
        srv.served() >= 20,
        "the host server served {}",
        srv.served()
    );
}

/// Host client → 127.0.0.1:HP → `-p HP:9000` → a guest server that sends one byte and
/// waits for the client to close first (so that no TIME-WAIT piles up in the guest), up
/// to 100 000 sequential cycles within the time budget: no fd or memory is left behind
/// and the TCP open flow count returns to 0.
#[test]
fn churn_through_forward() {
    churn_forward(false);
}

/// [`churn_through_forward`] with `--splice`: the first few thousand connections are
/// spliced (each closed first by usernet, so each leaves a TIME-WAIT entry in the guest),
/// then `TIME_WAIT_BUDGET` sends the rest through the TAP: no error, no slowdown, and
/// no fd, pipe or memory left behind.
#[test]
fn churn_through_spliced_forward() {
    churn_forward(true);
}

fn churn_forward(splice: bool) {
    let host = HostNs::new();
    let hp = host.free_port("0.0.0.0");
    let mut args = vec!["-p".to_string(), format!("{hp}:9000")];
    if splice {
        args.push("--splice".to_string());
    }
    let r = Rig::build(host, &args);
    let l =
        r.s.guest
            .run(|| TcpListener::bind("0.0.0.0:9000"))
            .expect("listen on 9000 in the guest");
    let srv = InlineServer::start(l, |mut c| {
        if c.write_all(b"x").is_ok() {
            let _ = read_to_end_result(&mut c);
        }
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], hp));
    let one = move || -> io::Result<()> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
    };
    let warm =
        r.s.host
            .run(|| (0..20).map(|_| one()).collect::<io::Result<Vec<()>>>());
    warm.expect("warm-up cycles through the forward");
    let host = &r.s.host;
    let what = if splice {
        "through a spliced forward (127.0.0.1:HP -> guest:9000, --splice)"
    } else {
        "through a forward (127.0.0.1:HP -> guest:9000)"
    };
    churn_test(&r, what, 5201, || host.run(|| churn_loop(one)));
    if splice {
        let v = r.stats();
        assert!(
            flows(&v, "tcp", "spliced_total") >= 1000,
            "{what}: only {} connections were spliced: {v}",
            flows(&v, "tcp", "spliced_total")
        );
    }
    assert!(
        srv.served() >= 20,
        "the guest server served {}",
        srv.served()
    );
}

// ---------------------------------------------------------------------------------------
// 6. a guest that stops reading
// ---------------------------------------------------------------------------------------

fn ioctl_int(fd: i32, req: libc::c_ulong) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD / TIOCOUTQ write one int.
    let r = unsafe { libc::ioctl(fd, req as _, &mut n) };
    if r < 0 { 0 } else { n as u64 }
}

/// Recv-Q of the engine's host socket toward `peer` (from `ss` in the host namespace).
fn engine_recvq(host: &HostNs, peer: SocketAddr) -> u64 {
    let out = host.exec_ok(&[
        "ss",
        "-tnH",
        "state",
        "established",
        "dst",
        &peer.to_string(),
    ]);
    out.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The guest connects to a host server that writes as fast as it can, and never reads.
/// The guest's window closes; usernet keeps at most one flow's transmit ring (`tcp_buffer`)
/// of the stream (computed exactly: written − guest's receive queue − the engine's host
/// socket receive queue − the server's send queue), its RSS grows by no more than the
/// flow's two rings plus slack, the server's writes block, other flows (the download,
/// an echo) still work, and when the guest finally reads, the whole stream arrives intact.
#[test]
fn zero_window_guest_bounded_buffering() {
    const CHUNK: usize = 1 << 20;
    let r = Rig::new(&[]);
    let pid = r.pid();
    let idle_rss = rss(pid);
    let l = r.s.host.tcp_listener("198.51.100.1:0");
    let srv_addr = l.local_addr().expect("addr");
    let stream = Arc::new(pattern(6101, CHUNK));
    let written = Arc::new(AtomicU64::new(0));
    let blocked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let srv_fd = Arc::new(std::sync::atomic::AtomicI32::new(-1));
    let server = {
        let (stream, written, blocked, stop, srv_fd) = (
            stream.clone(),
            written.clone(),
            blocked.clone(),
            stop.clone(),
            srv_fd.clone(),
        );
        thread::spawn(move || -> io::Result<()> {
            assert!(poll_in(l.as_raw_fd(), 20_000), "nobody connected");
            let (mut c, _) = l.accept()?;
            c.set_write_timeout(Some(Duration::from_millis(500)))?;
            c.set_read_timeout(Some(Duration::from_secs(60)))?;
            srv_fd.store(c.as_raw_fd(), Ordering::SeqCst);
            let start = Instant::now();
            let mut off = 0usize;
            while !stop.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(120) {
                match c.write(&stream[off % CHUNK..]) {
                    Ok(n) => {
                        off += n;
                        written.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        blocked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => return Err(e),
                }
            }
            c.shutdown(Shutdown::Write)?;
            // keep the socket until the guest has read everything and closed.
            let _ = read_to_end_result(&mut c);
            srv_fd.store(-1, Ordering::SeqCst);
            Ok(())
        })
    };
    let tr = Transfer::start(&r.s, 6102);
    thread::sleep(Duration::from_millis(500));
    let before_rss = rss(pid);
    let mon = Monitor::start(pid);
    let guest_conn =
        r.s.guest
            .tcp_connect(srv_addr)
            .expect("guest connects to the writing server");
    // wait until the server's writes block and the stream stops moving (≤ 60 s).
    let t0 = Instant::now();
    let mut last = (0u64, Instant::now());
    let stalled_at = loop {
        thread::sleep(Duration::from_millis(250));
        let w = written.load(Ordering::SeqCst);
        if w != last.0 {
            last = (w, Instant::now());
        } else if blocked.load(Ordering::SeqCst) > 0 && last.1.elapsed() > Duration::from_secs(2) {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the server's writes never blocked: {w} bytes written"
        );
    };
    // hold the stall a little longer: nothing may grow meanwhile.
    thread::sleep(Duration::from_secs(2));
    let w = written.load(Ordering::SeqCst);
    let guest_inq = ioctl_int(guest_conn.as_raw_fd(), libc::FIONREAD);
    let recvq = engine_recvq(&r.s.host, srv_addr);
    let outq = ioctl_int(srv_fd.load(Ordering::SeqCst), libc::TIOCOUTQ);
    let held = w.saturating_sub(guest_inq + recvq + outq);
    let stall_rss = rss(pid);
    // another flow works meanwhile.
    let echo = r.s.host.tcp_server("127.0.0.1:0", echo_handler);
    r.s.echo_roundtrip(SocketAddr::from((GATEWAY, echo.port())), 6103, 500_000);
    let trr = tr.finish("the zero-window flow");
    let peaks = mon.finish();
    let grew = peaks.rss.saturating_sub(before_rss);
    // the guest reads at last: the whole stream, intact.
    stop.store(true, Ordering::SeqCst);
    let mut gc = guest_conn;
    gc.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut got = 0u64;
    let mut bad = None;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match gc.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for (j, b) in buf[..n].iter().enumerate() {
                    let at = got as usize + j;
                    if bad.is_none() && *b != stream[at % CHUNK] {
                        bad = Some(at);
                    }
                }
                got += n as u64;
            }
            Err(e) => panic!("reading the stalled stream failed after {got} bytes: {e}"),
        }
    }
    drop(gc);
    server
        .join()
        .expect("server thread")
        .expect("the writing server failed");
    let total = written.load(Ordering::SeqCst);
    println!(
        "FIGURES zero_window: server wrote {w} bytes before its writes blocked (stalled \
         after {:.1} s, {} write timeouts); held: guest receive queue {guest_inq}, \
         engine's host socket Recv-Q {recvq}, server Send-Q {outq}, so usernet itself held \
         {held} bytes (cap: one ring, {}); RSS idle {} before {} stalled {} \
         peak {} (grew {}) VmHWM {}; fds peak {}; afterwards the guest read {got} of \
         {total} bytes, {}; download beside it: {} x {} MiB in {:.1} s",
        stalled_at.as_secs_f64(),
        blocked.load(Ordering::SeqCst),
        caps().tcp_buffer,
        mib(idle_rss),
        mib(before_rss),
        mib(stall_rss),
        mib(peaks.rss),
        mib(grew),
        mib(hwm(pid)),
        peaks.fds,
        if bad.is_none() { "intact" } else { "CORRUPT" },
        trr.downloads,
        DOWNLOAD_LEN >> 20,
        trr.secs,
    );
    assert!(
        held <= caps().tcp_buffer + 64 * KIB,
        "usernet holds {held} bytes of a stream the guest does not read (one ring is {})",
        caps().tcp_buffer
    );
    assert!(
        grew <= 2 * caps().tcp_buffer + 2 * MIB,
        "RSS grew by {} for one stalled flow (two rings = {})",
        mib(grew),
        mib(2 * caps().tcp_buffer)
    );
    assert_eq!(got, total, "the stream after the stall: length");
    assert_eq!(
        bad, None,
        "the stream after the stall: first differing offset"
    );
}

// ---------------------------------------------------------------------------------------
// Spare sockets
// ---------------------------------------------------------------------------------------

/// A short TCP flow leaves its closed smoltcp socket (rings included) to the next flow;
/// a flow that moved more than `SPARE_TOUCH_MAX` through its rings does not keep it (its
/// rings go back to the system). Every echo is checked byte for byte, so nothing of an
/// earlier flow shows through a reused ring.
#[test]
fn short_flows_reuse_sockets_bulk_flows_do_not() {
    let r = Rig::new(&[]);
    let lo = r.s.host.tcp_server("127.0.0.1:0", echo_handler);
    let dst = SocketAddr::from((GATEWAY, lo.port()));
    const SHORT: u64 = 40;
    for i in 0..SHORT {
        r.s.echo_roundtrip(dst, 7000 + i, 1000 + (i as usize * 97) % 4000);
    }
    let settled = |v: &Value| flows(v, "tcp", "open") == 0;
    let v = r.wait_stats(Duration::from_secs(10), settled);
    assert!(
        settled(&v),
        "flows still open 10 s after the last echo: {v}"
    );
    let reused = flows(&v, "tcp", "reused_sockets");
    let spare = flows(&v, "tcp", "spare_sockets");
    eprintln!("{SHORT} sequential short flows: {reused} took a spare socket, {spare} spare now");
    assert!(
        reused >= SHORT / 2,
        "only {reused} of {SHORT} sequential short flows reused a socket"
    );
    assert!(
        (1..=32).contains(&spare),
        "{spare} spare sockets after {SHORT} short flows (1..=SPARE_SOCKETS expected)"
    );
    // 2 × 200 kB through the rings: this flow takes a spare and does not give it back.
    r.s.echo_roundtrip(dst, 9000, 200_000);
    let v = r.wait_stats(Duration::from_secs(10), settled);
    assert!(
        settled(&v),
        "the bulk flow still open 10 s after its echo: {v}"
    );
    assert_eq!(
        flows(&v, "tcp", "reused_sockets"),
        reused + 1,
        "the bulk flow should have taken a spare socket"
    );
    assert_eq!(
        flows(&v, "tcp", "spare_sockets"),
        spare - 1,
        "the bulk flow's socket should not have been kept"
    );
}
