//! `usernet vm` with a real QEMU guest (TCG, no KVM): a Debian cloud kernel and a busybox
//! initramfs built by `tests/vm/build-initramfs.sh` (cached under `<target>/vm`).
//!
//! The engine runs inside a host namespace the test made (`HostNs`: its own loopback,
//! a veth with documentation addresses and nobody behind it), so nothing the guest does
//! can leave the machine. There: an HTTP server on 127.0.0.1 (the guest downloads
//! through 10.0.2.2), a dnsmasq on 127.0.0.1:53 with one fixed record (the engine's
//! `--dns-upstream`; the guest resolves through 10.0.2.3), and the port forward's host
//! side. QEMU attaches to the engine's unix socket (stream or dgram) or, for TCP, runs
//! in the host namespace too. The guest's /init reports every step as a
//! "USERNET-<WHAT> ..." line on its serial console (a file here); see the script.
//!
//! The QEMU tests take a lock so that only one guest boots at a time (2 cores, TCG).
//! Every wait is bounded; QEMU, the engine and the servers are killed (by the PIDs the
//! test started) when the test ends, pass or fail.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use usernet_tests::*;

/// The fixed record dnsmasq answers.
const DNS_NAME: &str = "vm.usernet.test";
const DNS_ADDR: &str = "192.0.2.77";
/// The guest's MAC (QEMU's default, set explicitly so that a restart reuses it).
const GUEST_MAC: &str = "52:54:00:12:34:56";
/// The guest's echo server port (busybox nc -e cat).
const GUEST_ECHO_PORT: u16 = 7000;
/// Boot to "USERNET-READY" (TCG: seconds to tens of seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the file the guest downloads: large enough that the guest (slow under TCG)
/// falls behind and the engine's writes to its socket would block.
const BLOB_LEN: usize = 8 << 20;

static VM_LOCK: Mutex<()> = Mutex::new(());

fn one_vm_at_a_time() -> MutexGuard<'static, ()> {
    VM_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host side: namespace, HTTP server, dnsmasq.
struct HostSide {
    http: TcpServer,
    _dns: Dnsmasq,
    blob_sha: String,
    host: HostNs,
}

impl HostSide {
    fn new() -> HostSide {
        let host = HostNs::new();
        let dns = Dnsmasq::start(
            &host,
            Ipv4Addr::LOCALHOST,
            &[format!("--host-record={DNS_NAME},{DNS_ADDR}")],
        );
        let seed = 0x5eed_0000 + u64::from(std::process::id());
        let http = host.tcp_server("127.0.0.1:0", http_handler(seed, BLOB_LEN));
        HostSide {
            http,
            _dns: dns,
            blob_sha: sha256_hex(&pattern(seed, BLOB_LEN)),
            host,
        }
    }
}

/// `usernet vm` inside the host namespace.
struct VmEngine {
    proc_: BgChild,
    log: PathBuf,
    api: PathBuf,
    pcap: PathBuf,
    fwd_port: u16,
}

/// Makes `fd` the child's descriptor `target` (kept open across exec).
fn pass_fd(c: &mut Command, fd: &OwnedFd, target: RawFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: between fork and exec the closure only calls dup2/fcntl, which are
    // async-signal-safe, on descriptors that stay open until the child is spawned.
    unsafe {
        c.pre_exec(move || {
            let r = if raw == target {
                libc::fcntl(raw, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, target)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl VmEngine {
    fn start(h: &HostSide, socket_args: &[&str]) -> VmEngine {
        VmEngine::start_with_fd(h, socket_args, None)
    }

    /// Like [`VmEngine::start`], handing `fd` to the engine as its descriptor 3.
    fn start_with_fd(h: &HostSide, socket_args: &[&str], fd: Option<OwnedFd>) -> VmEngine {
        let dir = &h.host.dir;
        let log = dir.join("engine.log");
        let api = dir.join("api.sock");
        let pcap = dir.join("vm.pcap");
        let fwd_port = h.host.free_port("127.0.0.1");
        let bin = engine_bin();
        let mut c = h.host.command(bin.to_str().expect("utf-8 path"));
        c.arg("vm")
            .args(socket_args)
            .args(["--dns-upstream", "127.0.0.1:53"])
            .args(["-p", &format!("127.0.0.1:{fwd_port}:{GUEST_ECHO_PORT}")])
            .arg("--api-socket")
            .arg(&api)
            .arg("--pcap")
            .arg(&pcap)
            .env("USERNET_LOG", "info");
        if let Some(fd) = &fd {
            pass_fd(&mut c, fd, 3);
        }
        let mut proc_ = BgChild::start(&mut c, &log);
        drop(fd); // the engine has its own copy now
        let start = Instant::now();
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains(" ready") {
                break;
            }
            if let Some(st) = proc_.try_wait() {
                panic!("usernet vm exited at start ({st}):\n{text}");
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "usernet vm not ready after {READY_TIMEOUT:?}:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        VmEngine {
            proc_,
            log,
            api,
            pcap,
            fwd_port,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.proc_.try_wait() {
            panic!("usernet vm exited {what} ({st}):\n{}", self.log());
        }
    }

    /// A drop counter of the stats API (0 when absent).
    fn drops(&self, reason: &str) -> u64 {
        let v = api_json(&self.api, r#"{"execute":"stats"}"#);
        let stats = v.get("return").unwrap_or(&v);
        stats
            .get("drops")
            .and_then(|d| d.get(reason))
            .and_then(|n| n.as_u64())
            .unwrap_or(0)
    }

    /// The stats API's DHCP leases as (addr, mac).
    fn leases(&self) -> Vec<(String, String)> {
        let v = api_json(&self.api, r#"{"execute":"stats"}"#);
        let stats = v.get("return").unwrap_or(&v);
        let leases = stats
            .get("dhcp_leases")
            .and_then(|l| l.as_array())
            .unwrap_or_else(|| panic!("stats reply without dhcp_leases: {v}"));
        leases
            .iter()
            .map(|l| {
                (
                    l["addr"].as_str().unwrap_or_default().to_string(),
                    l["mac"].as_str().unwrap_or_default().to_lowercase(),
                )
            })
            .collect()
    }
}

/// Sends SIGSTOP or SIGCONT to a process the test started.
fn signal(pid: u32, sig: &str) {
    run_ok(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()),
    );
}

/// A QEMU guest; killed on drop.
struct Vm {
    proc_: BgChild,
    console: PathBuf,
    qemu_log: PathBuf,
    started: Instant,
}

impl Vm {
    /// Boots the guest with `netdev` (the `-netdev` value, id n0); `in_host` runs QEMU in
    /// the host namespace (for TCP).
    fn boot(h: &HostSide, netdev: &str, in_host: bool, tag: &str) -> Vm {
        Vm::boot_with_fd(h, netdev, in_host, tag, None)
    }

    /// Like [`Vm::boot`], handing `fd` to QEMU as its descriptor 3.
    fn boot_with_fd(
        h: &HostSide,
        netdev: &str,
        in_host: bool,
        tag: &str,
        fd: Option<OwnedFd>,
    ) -> Vm {
        let img = vm_image();
        let console = h.host.dir.join(format!("console-{tag}.log"));
        let qemu_log = h.host.dir.join(format!("qemu-{tag}.log"));
        let _ = fs::remove_file(&console);
        let mut c = if in_host {
            h.host.command("qemu-system-x86_64")
        } else {
            Command::new("qemu-system-x86_64")
        };
        let append = format!(
            "console=ttyS0 quiet panic=-1 usernet_http={} usernet_name={DNS_NAME} usernet_echo={GUEST_ECHO_PORT}",
            h.http.port()
        );
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
            .args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC}"),
            ])
            .args(["-netdev", netdev]);
        if let Some(fd) = &fd {
            pass_fd(&mut c, fd, 3);
        }
        let started = Instant::now();
        let proc_ = BgChild::start(&mut c, &qemu_log);
        drop(fd);
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

    /// Waits for a console line starting with `USERNET-<what>`; fails on timeout, on a
    /// `USERNET-HALT`, or when QEMU exits. Returns the rest of the line.
    fn wait_line(&mut self, what: &str, engine: &VmEngine) -> String {
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
                    "guest never printed {prefix} (after {:?}; halted: {halted}; qemu exit: {exited:?})\n\
                     --- console ---\n{text}\n--- qemu ---\n{}\n--- engine ---\n{}",
                    self.started.elapsed(),
                    fs::read_to_string(&self.qemu_log).unwrap_or_default(),
                    engine.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// All console lines starting with `USERNET-<what> `.
    fn lines(&self, what: &str) -> Vec<String> {
        let prefix = format!("USERNET-{what} ");
        self.console()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }
}

/// Everything the guest does on its own, checked: lease, ping, download, DNS. Returns
/// the boot-to-lease time.
fn check_guest(vm: &mut Vm, h: &HostSide, e: &VmEngine, what: &str) -> Duration {
    let lease = vm.wait_line("LEASE", e);
    let to_lease = vm.started.elapsed();
    assert!(
        lease.starts_with("ip=10.0.2.15 router=10.0.2.2 dns=10.0.2.3 subnet=255.255.255.0 "),
        "{what}: unexpected lease: {lease}"
    );
    let uptime = lease
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .unwrap_or("?");
    eprintln!(
        "{what}: boot to lease {to_lease:.1?} (QEMU start to the lease line; guest uptime {uptime} s)"
    );
    vm.wait_line("READY", e);
    let ping = vm.wait_line("PING", e);
    assert_eq!(ping, "3 packets received", "{what}: ping 10.0.2.2");
    let sha = vm
        .lines("SHA256")
        .pop()
        .unwrap_or_else(|| panic!("{what}: download failed: {:?}", vm.lines("ERROR")));
    assert_eq!(
        sha,
        format!("{} size={BLOB_LEN}", h.blob_sha),
        "{what}: the downloaded file differs"
    );
    let dns = vm.lines("DNS");
    let answered = dns
        .iter()
        .skip_while(|l| !l.starts_with("Name:"))
        .any(|l| l.split_whitespace().last() == Some(DNS_ADDR) && l.starts_with("Address"));
    assert!(
        answered,
        "{what}: {DNS_NAME} did not resolve to {DNS_ADDR} through 10.0.2.3: {dns:#?}"
    );
    to_lease
}

/// A host client exchanges data with the guest's echo server through the forward.
fn check_forward(h: &HostSide, e: &VmEngine, seed: u64, what: &str) {
    check_forward_len(h, e, seed, 64 * 1024, what);
}

/// [`check_forward`] with `len` bytes each way.
fn check_forward_len(h: &HostSide, e: &VmEngine, seed: u64, len: usize, what: &str) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, e.fwd_port));
    let data = pattern(seed, len);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        let got = h.host.run(|| -> Result<Vec<u8>, String> {
            let mut s = connect_tcp(addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            let mut w = s.try_clone().map_err(|e| e.to_string())?;
            let d = data.clone();
            let writer = thread::spawn(move || {
                let r = w.write_all(&d);
                let _ = w.shutdown(std::net::Shutdown::Write);
                r
            });
            let mut back = Vec::new();
            let r = s.read_to_end(&mut back);
            let _ = writer.join();
            r.map_err(|e| e.to_string())?;
            Ok(back)
        });
        match got {
            Ok(back) if back == data => return,
            Ok(back) => last = format!("echoed {} bytes, expected {}", back.len(), data.len()),
            Err(err) => last = err,
        }
        thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{what}: no echo through the forward 127.0.0.1:{} -> guest:{GUEST_ECHO_PORT}: {last}\n{}",
        e.fwd_port,
        e.log()
    );
}

/// The pcap file holds frames both ways, the guest's MAC among the sources.
fn check_pcap(e: &VmEngine) {
    let b = fs::read(&e.pcap).expect("pcap file");
    assert!(b.len() > 24, "empty pcap file");
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_ne_bytes(), "pcap magic");
    let mac = [0x52u8, 0x54, 0, 0x12, 0x34, 0x56];
    let gw = [0x52u8, 0x55, 0x0a, 0, 2, 2];
    let (mut from_guest, mut to_guest, mut i) = (0, 0, 24);
    while i + 16 <= b.len() {
        let incl = u32::from_ne_bytes([b[i + 8], b[i + 9], b[i + 10], b[i + 11]]) as usize;
        let Some(f) = b.get(i + 16..i + 16 + incl) else {
            break; // a record still being written
        };
        if f.len() >= 12 && f[6..12] == mac {
            from_guest += 1;
        }
        if f.len() >= 12 && f[6..12] == gw && f[..6] == mac {
            to_guest += 1;
        }
        i += 16 + incl;
    }
    assert!(
        from_guest >= 10 && to_guest >= 10,
        "pcap: {from_guest} frames from the guest, {to_guest} to it"
    );
}

fn stream_unix_args(h: &HostSide) -> (Vec<String>, String) {
    let sock = h.host.dir.join("vm.sock");
    (
        vec!["--stream".into(), format!("unix:{}", sock.display())],
        format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            sock.display()
        ),
    )
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// QEMU -netdev stream over a unix socket: lease, ping, download, DNS, forward (also
/// while QEMU is paused), pcap.
#[test]
fn vm_stream_unix_guest_has_the_whole_network() {
    let _one = one_vm_at_a_time();
    vm_image();
    let h = HostSide::new();
    let (eargs, netdev) = stream_unix_args(&h);
    let mut e = VmEngine::start(&h, &args(&eargs));
    assert!(
        e.log().contains(&format!("-netdev {netdev}")),
        "the engine did not print the matching QEMU arguments:\n{}",
        e.log()
    );
    let mut vm = Vm::boot(&h, &netdev, false, "stream");
    check_guest(&mut vm, &h, &e, "stream");
    check_forward(&h, &e, 1, "stream");
    // QEMU paused in the middle of a 4 MiB echo: the guest stops reading its socket, the
    // engine's writes would block; nothing may be lost or reordered once it resumes.
    let qemu = vm.proc_.pid;
    let pauser = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        signal(qemu, "STOP");
        thread::sleep(Duration::from_secs(2));
        signal(qemu, "CONT");
    });
    check_forward_len(&h, &e, 6, 4 << 20, "stream, QEMU paused for 2 s");
    pauser.join().expect("pauser");
    e.assert_alive("during the stream test");
    assert_eq!(
        e.drops("port_write_failed"),
        0,
        "a frame toward the connected guest was dropped"
    );
    assert_eq!(
        e.leases(),
        vec![("10.0.2.15".to_string(), GUEST_MAC.to_string())]
    );
    check_pcap(&e);
}

/// QEMU -netdev dgram (unix datagrams, one frame each): the same checks, then QEMU
/// restarted against the same engine.
#[test]
fn vm_dgram_unix_guest_has_the_whole_network() {
    let _one = one_vm_at_a_time();
    vm_image();
    let h = HostSide::new();
    let ours = h.host.dir.join("usernet.dgram");
    let qemu = h.host.dir.join("qemu.dgram");
    let mut e = VmEngine::start(
        &h,
        &[
            "--dgram",
            &format!("unix:{},{}", ours.display(), qemu.display()),
        ],
    );
    let netdev = format!(
        "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        qemu.display(),
        ours.display()
    );
    assert!(e.log().contains(&netdev), "QEMU hint:\n{}", e.log());
    let mut vm = Vm::boot(&h, &netdev, false, "dgram");
    check_guest(&mut vm, &h, &e, "dgram");
    check_forward(&h, &e, 2, "dgram");
    e.assert_alive("during the dgram test");
    assert_eq!(
        e.drops("port_write_failed"),
        0,
        "a frame toward the guest was dropped"
    );
    check_pcap(&e);
    // QEMU restarted on the same socket paths: the engine finds the new socket, and the
    // guest gets its address back.
    drop(vm);
    e.assert_alive("after the dgram VM went away");
    let mut vm2 = Vm::boot(&h, &netdev, false, "dgram-2");
    check_guest(&mut vm2, &h, &e, "dgram after a restart");
    check_forward(&h, &e, 7, "dgram after a restart");
    assert_eq!(
        e.leases(),
        vec![("10.0.2.15".to_string(), GUEST_MAC.to_string())]
    );
}

/// QEMU -netdev stream over TCP (QEMU in the host namespace, connecting to 127.0.0.1).
#[test]
fn vm_stream_tcp_guest_gets_lease_and_downloads() {
    let _one = one_vm_at_a_time();
    vm_image();
    let h = HostSide::new();
    let port = h.host.free_port("127.0.0.1");
    let mut e = VmEngine::start(&h, &["--stream", &format!("tcp:127.0.0.1:{port}")]);
    let netdev =
        format!("stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    assert!(e.log().contains(&netdev), "QEMU hint:\n{}", e.log());
    let mut vm = Vm::boot(&h, &netdev, true, "tcp");
    check_guest(&mut vm, &h, &e, "stream over TCP");
    e.assert_alive("during the TCP test");
}

/// QEMU killed and started again against the same usernet: the engine keeps running,
/// the guest gets 10.0.2.15 again (one lease), and the network works again. A second
/// client while one is connected is refused (closed) with a log line.
#[test]
fn vm_restart_reconnects_and_keeps_the_lease() {
    let _one = one_vm_at_a_time();
    vm_image();
    let h = HostSide::new();
    let (eargs, netdev) = stream_unix_args(&h);
    let mut e = VmEngine::start(&h, &args(&eargs));
    let mut vm1 = Vm::boot(&h, &netdev, false, "first");
    check_guest(&mut vm1, &h, &e, "first boot");
    check_forward(&h, &e, 3, "first boot");

    // A second client while the VM is connected: accepted and closed at once.
    let sock = h.host.dir.join("vm.sock");
    let mut extra = UnixStream::connect(&sock).expect("connect a second client");
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut b = [0u8; 16];
    assert!(
        matches!(extra.read(&mut b), Ok(0)),
        "a second client was not closed"
    );
    drop(extra);

    drop(vm1); // kills QEMU
    let deadline = Instant::now() + Duration::from_secs(10);
    while !e.log().contains("guest disconnected") {
        assert!(
            Instant::now() < deadline,
            "no disconnect logged:\n{}",
            e.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    e.assert_alive("after the VM went away");

    let mut vm2 = Vm::boot(&h, &netdev, false, "second");
    check_guest(&mut vm2, &h, &e, "after the restart");
    check_forward(&h, &e, 4, "after the restart");
    e.assert_alive("after the restart");
    assert_eq!(
        e.leases(),
        vec![("10.0.2.15".to_string(), GUEST_MAC.to_string())],
        "one lease, kept across the restart"
    );
    let log = e.log();
    assert_eq!(log.matches("guest connected").count(), 2, "{log}");
    assert!(log.contains("refusing a second guest connection"), "{log}");
}

/// `usernet vm --fd 3`: a stream socket a parent connected (here one end of a socketpair,
/// the other is QEMU's `addr.type=fd`). The guest gets the whole network; when QEMU goes
/// away the engine exits with status 0.
#[test]
fn vm_fd_preconnected_socket_serves_the_guest_then_exits() {
    let _one = one_vm_at_a_time();
    vm_image();
    let h = HostSide::new();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let mut e = VmEngine::start_with_fd(&h, &["--fd", "3"], Some(OwnedFd::from(ours)));
    let mut vm = Vm::boot_with_fd(
        &h,
        "stream,id=n0,server=off,addr.type=fd,addr.str=3",
        false,
        "fd",
        Some(OwnedFd::from(theirs)),
    );
    check_guest(&mut vm, &h, &e, "--fd");
    check_forward(&h, &e, 5, "--fd");
    e.assert_alive("while the VM runs");
    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = e.proc_.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "usernet vm --fd did not exit after the VM closed its socket:\n{}",
            e.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.success(),
        "usernet vm --fd should exit 0 when the VM goes away: {status}\n{}",
        e.log()
    );
    assert!(
        e.log().contains("the VM closed its connection"),
        "{}",
        e.log()
    );
}

/// `--pcap` in namespace mode (`usernet run`): the guest's pings to the gateway and the
/// replies are in the file, as Ethernet frames.
#[test]
fn pcap_in_namespace_mode_records_both_directions() {
    let host = HostNs::new();
    let pcap = host.dir.join("run.pcap");
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.args(["run", "--pcap"]).arg(&pcap).args([
        "--",
        "sh",
        "-c",
        "busybox ping -c 3 -W 5 10.0.2.2",
    ]);
    let out = run_timeout(&mut c, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "usernet run --pcap ... ping failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let b = fs::read(&pcap).expect("the pcap file");
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_ne_bytes(), "pcap magic");
    assert_eq!(
        u32::from_ne_bytes([b[20], b[21], b[22], b[23]]),
        1,
        "LINKTYPE_ETHERNET"
    );
    let (mut requests, mut replies, mut i) = (0, 0, 24);
    while i + 16 <= b.len() {
        let incl = u32::from_ne_bytes([b[i + 8], b[i + 9], b[i + 10], b[i + 11]]) as usize;
        let f = &b[i + 16..i + 16 + incl];
        // IPv4, ICMP, between 10.0.2.100 and 10.0.2.2.
        if f.len() >= 34 + 8 && f[12..14] == [8, 0] && f[23] == 1 {
            let (src, dst, ty) = (&f[26..30], &f[30..34], f[34]);
            if src == [10, 0, 2, 100] && dst == [10, 0, 2, 2] && ty == 8 {
                requests += 1;
            }
            if src == [10, 0, 2, 2] && dst == [10, 0, 2, 100] && ty == 0 {
                replies += 1;
            }
        }
        i += 16 + incl;
    }
    assert_eq!(i, b.len(), "truncated pcap record");
    assert_eq!(
        (requests, replies),
        (3, 3),
        "echo requests/replies in the pcap"
    );
}
