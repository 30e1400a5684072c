//! End-to-end test harness for usernet.
//!
//! Topology per test (see `../shared/testing.md`):
//!
//! * a "host" network namespace `un-h-<id>` (made with `ip netns add`) with `lo` up and a
//!   veth pair `ext0`/`ext0p` whose both ends live inside it; `ext0` carries
//!   198.51.100.1/24 and 2001:db8:1::1/64 and the default route points at
//!   198.51.100.254 (nobody behind it) so that the engine finds a route. Servers bind to
//!   198.51.100.1 and 127.0.0.1 inside it. `/etc/netns/un-h-<id>/resolv.conf` names
//!   127.0.0.1 so that the engine never sees the machine's resolvers.
//! * a guest: a user+net namespace made by `unshare -r -n sleep infinity` (optionally by
//!   uid 65534: the rootless shape).
//! * the engine, started as `ip netns exec un-h-<id> ENGINE ... PID tap0`, with the ready
//!   fd (and optionally an exit fd) handed to it.
//!
//! Code can run "inside" a namespace through [`in_netns`]: a thread that did
//! `setns(CLONE_NEWNET)`; sockets made there stay in that namespace and may then be used
//! from any thread.
//!
//! Every missing prerequisite makes the test fail (panic) with a sentence naming it.

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The address of the "outside world" inside the host namespace.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Default guest address with `--configure`.
pub const GUEST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// Default gateway (stands for the host's loopback).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// How long the engine gets to signal readiness.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout for socket operations in tests.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id unique to this process and call: used in namespace and file names.
pub fn unique_id() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}-{}", std::process::id(), n)
}

// ---------------------------------------------------------------------------------------
// prerequisites
// ---------------------------------------------------------------------------------------

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "prerequisite missing: the end-to-end tests need root (network namespaces, veth, \
         /dev/net/tun); run them as root (CI does)"
    );
}

/// Returns the full path of `tool` on PATH or fails the test naming it.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "prerequisite missing: the tool `{tool}` is not installed (not found on PATH); \
         `.ci/run` lists the Debian packages the tests need"
    );
}

/// Checks root, /dev/net/tun and the tools every e2e test needs.
pub fn require_base() {
    require_root();
    assert!(
        Path::new("/dev/net/tun").exists(),
        "prerequisite missing: /dev/net/tun does not exist (the tun kernel module / device \
         node is needed)"
    );
    for t in [
        "ip", "unshare", "nsenter", "sh", "setpriv", "mount", "mknod", "sysctl",
    ] {
        require_tool(t);
    }
}

/// Path of the engine binary: `$USERNET_BIN`, else `<target>/release/usernet`.
pub fn engine_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("USERNET_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "USERNET_BIN={} does not name an existing file",
            p.display()
        );
        return p;
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        }
        None => workspace_root().join("target"),
    };
    let p = target.join("release").join("usernet");
    assert!(
        p.is_file(),
        "the engine binary {} does not exist: build it first with \
         `cargo build --release --workspace` (or point USERNET_BIN at an engine binary)",
        p.display()
    );
    p
}

/// True when the engine under test is slirp4netns (some usernet-only checks are noted).
pub fn engine_is_slirp4netns() -> bool {
    engine_bin()
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("slirp4netns"))
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

// ---------------------------------------------------------------------------------------
// data helpers
// ---------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads until EOF (or error), returning what was read and the error if any.
pub fn read_to_end_result(s: &mut impl Read) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// running commands
// ---------------------------------------------------------------------------------------

/// Runs a command with a deadline; kills it (by its PID, which we started) at the deadline
/// and fails the test then.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    try_run_timeout(cmd, timeout).unwrap_or_else(|(st, stdout, stderr)| {
        panic!(
            "{desc} did not finish within {timeout:?} (killed, {st}); stdout: {}; stderr: {}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    })
}

/// Runs a command with a deadline; on timeout kills it and returns what it printed as
/// `Err((status, stdout, stderr))`.
#[allow(clippy::type_complexity)]
pub fn try_run_timeout(
    cmd: &mut Command,
    timeout: Duration,
) -> Result<Output, (ExitStatus, Vec<u8>, Vec<u8>)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let mut so = child.stdout.take().expect("stdout piped");
    let mut se = child.stderr.take().expect("stderr piped");
    let t1 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            let stdout = t1.join().unwrap_or_default();
            let stderr = t2.join().unwrap_or_default();
            return Err((st, stdout, stderr));
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    })
}

/// Runs a command (20 s deadline) and fails the test unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, Duration::from_secs(20));
    assert!(
        out.status.success(),
        "{desc} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(prog: &str, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

// ---------------------------------------------------------------------------------------
// namespaces
// ---------------------------------------------------------------------------------------

fn enter_netns(path: &Path) {
    let f = File::open(path)
        .unwrap_or_else(|e| panic!("cannot open network namespace {}: {e}", path.display()));
    // SAFETY: f is an open namespace fd for the duration of the call; setns only affects
    // the calling thread for CLONE_NEWNET.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "setns into {} failed: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

/// Runs `f` on a fresh thread that joined the network namespace at `ns_path`.
pub fn in_netns<T: Send>(ns_path: &Path, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns_path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Spawns a detached thread inside the namespace at `ns_path`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns_path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let p = ns_path.to_path_buf();
    thread::spawn(move || {
        enter_netns(&p);
        f()
    })
}

/// The "host" network namespace with the veth pair carrying 198.51.100.1/24.
pub struct HostNs {
    /// `un-h-<id>`.
    pub name: String,
    /// Per-test scratch directory (removed on drop).
    pub dir: PathBuf,
    etc_dir: PathBuf,
}

impl HostNs {
    /// Creates the namespace and its addresses; `/etc/netns/<name>/resolv.conf` names
    /// 127.0.0.1.
    pub fn new() -> HostNs {
        HostNs::with_resolv_conf("nameserver 127.0.0.1\n")
    }

    /// Like [`HostNs::new`] with `resolv` as the contents of the namespace's
    /// `/etc/resolv.conf` (what the engine, started with `ip netns exec`, reads).
    pub fn with_resolv_conf(resolv: &str) -> HostNs {
        require_base();
        let id = unique_id();
        let name = format!("un-h-{id}");
        let dir = std::env::temp_dir().join(format!("usernet-tests-{id}"));
        let etc_dir = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        let h = HostNs { name, dir, etc_dir };
        std::fs::create_dir_all(&h.etc_dir).expect("create /etc/netns/<name>");
        std::fs::write(h.etc_dir.join("resolv.conf"), resolv).expect("write resolv.conf");
        run_ok(&mut cmd("ip", &["netns", "add", &h.name]));
        let n = h.name.clone();
        let ipn = |args: &[&str]| {
            let mut a = vec!["-n", &n];
            a.extend_from_slice(args);
            run_ok(&mut cmd("ip", &a));
        };
        ipn(&["link", "set", "lo", "up"]);
        ipn(&[
            "link", "add", "ext0", "type", "veth", "peer", "name", "ext0p",
        ]);
        ipn(&["addr", "add", "198.51.100.1/24", "dev", "ext0"]);
        ipn(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1::1/64",
            "dev",
            "ext0",
            "nodad",
        ]);
        ipn(&["link", "set", "ext0", "up"]);
        ipn(&["link", "set", "ext0p", "up"]);
        ipn(&[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.254",
            "dev",
            "ext0",
        ]);
        // ping sockets for the engine (slirp4netns uses them).
        h.exec_ok(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
        h
    }

    /// `/etc/netns/<name>/resolv.conf`: bind-mounted over `/etc/resolv.conf` for every
    /// `ip netns exec` into this namespace.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.etc_dir.join("resolv.conf")
    }

    /// Rewrites the namespace's resolv.conf IN PLACE (truncate + write, same inode), so
    /// that a running engine, which sees it through a bind mount, sees the new contents.
    pub fn set_resolv_conf(&self, contents: &str) {
        let path = self.resolv_conf_path();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
        f.write_all(contents.as_bytes())
            .and_then(|()| f.sync_all())
            .unwrap_or_else(|e| panic!("rewrite {}: {e}", path.display()));
    }

    /// Adds `addr` (e.g. "127.0.0.53/8") to the namespace's `lo`.
    pub fn add_lo_addr(&self, addr: &str) {
        run_ok(&mut cmd(
            "ip",
            &["-n", &self.name, "addr", "add", addr, "dev", "lo"],
        ));
    }

    /// `/run/netns/<name>`.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command run inside the namespace through `ip netns exec`.
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, prog]);
        c
    }

    /// Runs `args` inside the namespace; fails the test unless it succeeds.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let mut c = self.command(args[0]);
        c.args(&args[1..]);
        run_ok(&mut c)
    }

    /// Runs `f` in a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns_path(), f)
    }

    /// A TCP listener bound inside the namespace (`addr` like "127.0.0.1:0").
    pub fn tcp_listener(&self, addr: &str) -> TcpListener {
        self.run(|| TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    /// A UDP socket bound inside the namespace.
    pub fn udp_socket(&self, addr: &str) -> UdpSocket {
        self.run(|| UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")))
    }

    /// A port on `ip` in this namespace where nothing listens (TCP and UDP).
    pub fn free_port(&self, ip: &str) -> u16 {
        let t = self.tcp_listener(&format!("{ip}:0"));
        let port = t.local_addr().expect("local_addr").port();
        drop(t);
        port
    }

    /// Starts a TCP server on `addr` inside the namespace; every accepted connection runs
    /// `handler` on its own thread (with [`IO_TIMEOUT`] read/write timeouts).
    pub fn tcp_server<F>(&self, addr: &str, handler: F) -> TcpServer
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        TcpServer::start(self.tcp_listener(addr), handler)
    }

    /// Starts a UDP echo server on `addr`.
    pub fn udp_echo(&self, addr: &str) -> UdpEcho {
        UdpEcho::start(self.udp_socket(addr))
    }
}

impl Default for HostNs {
    fn default() -> Self {
        HostNs::new()
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.etc_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Who creates the guest's user namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// root (`unshare -r -n`).
    Root,
    /// uid/gid 65534 (`setpriv --reuid 65534 ... unshare -r -n`): the rootless shape.
    Nobody,
}

/// The guest: a user+net namespace held by `sleep infinity`.
pub struct Guest {
    child: Child,
    /// PID of the `sleep` holding the namespaces.
    pub pid: u32,
    /// Who created it.
    pub owner: Owner,
}

impl Guest {
    /// Creates a guest namespace.
    pub fn new(owner: Owner) -> Guest {
        require_base();
        let mut c = match owner {
            Owner::Root => cmd("unshare", &["-r", "-n", "sleep", "infinity"]),
            Owner::Nobody => cmd(
                "setpriv",
                &[
                    "--reuid",
                    "65534",
                    "--regid",
                    "65534",
                    "--clear-groups",
                    "unshare",
                    "-r",
                    "-n",
                    "sleep",
                    "infinity",
                ],
            ),
        };
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("start unshare");
        let pid = child.id();
        let mut g = Guest { child, pid, owner };
        let my_net = std::fs::read_link("/proc/self/ns/net").ok();
        let start = Instant::now();
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let net = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            if comm.trim() == "sleep" && net.is_some() && net != my_net {
                break;
            }
            if let Ok(Some(st)) = g.child.try_wait() {
                panic!(
                    "could not create the guest namespace ({owner:?}): unshare exited {st} \
                     (unprivileged user namespaces may be disabled)"
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "guest namespace not ready within 10 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
        // allow ping sockets inside the guest.
        let _ = g.sh("sysctl -qw net.ipv4.ping_group_range='0 2147483647'");
        g
    }

    /// `/proc/PID/ns/net`.
    pub fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// A command run inside the guest (`nsenter -t PID -U -n --preserve-credentials`).
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.pid.to_string(),
            "-U",
            "-n",
            "--preserve-credentials",
            prog,
        ]);
        c
    }

    /// Runs `sh -c script` inside the guest (30 s deadline).
    pub fn sh(&self, script: &str) -> Output {
        let mut c = self.command("sh");
        c.args(["-c", script]);
        run_timeout(&mut c, Duration::from_secs(30))
    }

    /// Runs `sh -c script` inside the guest and fails unless it succeeds; returns stdout.
    pub fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in guest: `{script}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` in a thread inside the guest's network namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns_path(), f)
    }

    /// Spawns a thread inside the guest's network namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        spawn_in_netns(&self.ns_path(), f)
    }

    /// A TCP connection from the guest (timeouts set to [`IO_TIMEOUT`]).
    pub fn tcp_connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.run(|| connect_tcp(addr, Duration::from_secs(10)))
    }

    /// A UDP socket bound in the guest (0.0.0.0:0).
    pub fn udp_socket(&self) -> UdpSocket {
        self.run(|| UdpSocket::bind("0.0.0.0:0").expect("bind udp in guest"))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// connect with timeout and set IO timeouts.
pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// the engine
// ---------------------------------------------------------------------------------------

/// How to start the engine.
#[derive(Clone, Debug, Default)]
pub struct EngineOpts {
    /// Extra options (before `PID tap0`), e.g. `--configure`, `--mtu=65520`.
    pub args: Vec<String>,
    /// Pass an exit fd (`-e`); the test keeps its write end.
    pub exit_fd: bool,
    /// Run the engine as uid/gid 65534 with a private 0666 /dev/net/tun (rootless shape).
    pub as_nobody: bool,
    /// Tap name (default tap0).
    pub tap: Option<String>,
    /// The positional target instead of the guest's PID (e.g. a netns path with
    /// `--netns-type=path`).
    pub target: Option<String>,
}

impl EngineOpts {
    /// `--configure` plus `extra`.
    pub fn configure(extra: &[&str]) -> EngineOpts {
        let mut args = vec!["--configure".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        EngineOpts {
            args,
            ..Default::default()
        }
    }
}

/// A running engine (killed on drop).
pub struct Engine {
    child: Child,
    /// PID of the engine process (ip netns exec / sh / setpriv all exec into it).
    pub pid: u32,
    /// Write end of the exit fd, when asked for.
    pub exit_w: Option<OwnedFd>,
    /// What was read from the ready fd.
    pub ready_bytes: Vec<u8>,
    stderr_path: PathBuf,
    reaped: Option<ExitStatus>,
}

const READY_FD: RawFd = 20;
const EXIT_FD: RawFd = 21;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid 2-element array for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, both fds are fresh and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Hands `fds` (src → dst) to the child at exec.
fn pass_fds(c: &mut Command, fds: Vec<(RawFd, RawFd)>) {
    // SAFETY: the closure only calls async-signal-safe functions (fcntl, dup2) on fds
    // that are open in the child; it does not allocate.
    unsafe {
        c.pre_exec(move || {
            let mut tmp = [(-1 as RawFd, -1 as RawFd); 4];
            for (i, (src, dst)) in fds.iter().enumerate().take(4) {
                let t = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, 64);
                if t < 0 {
                    return Err(io::Error::last_os_error());
                }
                tmp[i] = (t, *dst);
            }
            for (t, dst) in tmp.iter() {
                if *t >= 0 && libc::dup2(*t, *dst) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: p is a valid pollfd for one element.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0
}

impl Engine {
    /// Starts the engine in `host` for `guest` and waits (≤ [`READY_TIMEOUT`]) for "1"
    /// on the ready fd.
    pub fn start(host: &HostNs, guest: &Guest, opts: &EngineOpts) -> Engine {
        Engine::start_with(&engine_bin(), host, guest, opts)
    }

    /// Like [`Engine::start`] with another engine binary (e.g. the reference
    /// slirp4netns, for side-by-side figures).
    pub fn start_with(bin: &Path, host: &HostNs, guest: &Guest, opts: &EngineOpts) -> Engine {
        Engine::spawn_with(bin, host, guest, opts, true).expect_ready()
    }

    /// Spawns without waiting; `ready` says whether to pass `-r`.
    pub fn spawn(host: &HostNs, guest: &Guest, opts: &EngineOpts, ready: bool) -> EngineStarting {
        Engine::spawn_with(&engine_bin(), host, guest, opts, ready)
    }

    /// [`Engine::spawn`] with an explicit binary.
    pub fn spawn_with(
        bin: &Path,
        host: &HostNs,
        guest: &Guest,
        opts: &EngineOpts,
        ready: bool,
    ) -> EngineStarting {
        let mut args: Vec<String> = opts.args.clone();
        let (rr, rw) = pipe();
        let (er, ew) = pipe();
        let mut fds = Vec::new();
        if ready {
            args.push(format!("--ready-fd={READY_FD}"));
            fds.push((rw.as_raw_fd(), READY_FD));
        }
        if opts.exit_fd {
            args.push(format!("--exit-fd={EXIT_FD}"));
            fds.push((er.as_raw_fd(), EXIT_FD));
        }
        args.push(opts.target.clone().unwrap_or_else(|| guest.pid.to_string()));
        args.push(opts.tap.clone().unwrap_or_else(|| "tap0".into()));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.name]);
        if opts.as_nobody {
            // private mount namespace (ip netns exec makes one, slave of /): a 0666 tun
            // node, as rootless engines need; nothing changes outside.
            c.args([
                "sh",
                "-c",
                "mount -t tmpfs -o mode=0755 tmpfs /dev/net && \
                 mknod -m 0666 /dev/net/tun c 10 200 || exit 97; \
                 exec setpriv --reuid 65534 --regid 65534 --clear-groups \"$@\"",
                "sh",
            ]);
        }
        c.arg(bin).args(&args);
        let id = unique_id();
        let stderr_path = host.dir.join(format!("engine-{id}.stderr"));
        let errf = File::create(&stderr_path).expect("create stderr file");
        c.stdin(Stdio::null())
            .stdout(errf.try_clone().expect("dup"))
            .stderr(errf);
        pass_fds(&mut c, fds);
        let desc = format!("{c:?}");
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        drop(rw);
        drop(er);
        let pid = child.id();
        EngineStarting {
            engine: Engine {
                child,
                pid,
                exit_w: opts.exit_fd.then_some(ew),
                ready_bytes: Vec::new(),
                stderr_path,
                reaped: None,
            },
            ready_r: ready.then_some(rr),
            desc,
        }
    }

    /// The engine's stderr/stdout so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// utime+stime of the engine in seconds (from /proc/PID/stat).
    pub fn cpu_seconds(&self) -> Option<f64> {
        proc_cpu_seconds(self.pid)
    }

    /// Exit status if it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// Waits up to `timeout` for the engine to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the engine (a PID we started).
    pub fn signal(&self, sig: i32) {
        if self.reaped.is_none() {
            let pid = libc::pid_t::try_from(self.pid).expect("pid fits");
            // SAFETY: kill on a child we started and have not reaped.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Panics with the engine's output unless it is still running.
    pub fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.try_wait() {
            panic!("engine exited ({st}) {what}; its output: {}", self.stderr());
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An engine spawned but not yet known to be ready.
pub struct EngineStarting {
    /// The engine.
    pub engine: Engine,
    ready_r: Option<OwnedFd>,
    desc: String,
}

impl EngineStarting {
    /// Waits for the ready fd; returns the engine or fails the test with its output.
    pub fn expect_ready(mut self) -> Engine {
        let rr = self
            .ready_r
            .take()
            .expect("engine started without a ready fd");
        let mut f = File::from(rr);
        let start = Instant::now();
        let mut got = Vec::new();
        // read until EOF (the engine closes the fd) or "1" plus a short grace for EOF.
        loop {
            let left = READY_TIMEOUT.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            if !poll_readable(f.as_raw_fd(), left.min(Duration::from_millis(200))) {
                if let Some(st) = self.engine.try_wait() {
                    panic!(
                        "engine exited ({st}) before signalling readiness: {}\noutput: {}",
                        self.desc,
                        self.engine.stderr()
                    );
                }
                if !got.is_empty() {
                    break;
                }
                continue;
            }
            let mut buf = [0u8; 16];
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        if got.is_empty()
            && let Some(st) = self.engine.wait_timeout(Duration::from_millis(500))
        {
            panic!(
                "engine exited ({st}) without writing to its ready fd: {}\noutput: {}",
                self.desc,
                self.engine.stderr()
            );
        }
        assert!(
            !got.is_empty(),
            "engine did not write to its ready fd within {READY_TIMEOUT:?}: {}\noutput: {}",
            self.desc,
            self.engine.stderr()
        );
        self.engine.ready_bytes = got;
        self.engine.assert_alive("right after signalling readiness");
        self.engine
    }
}

/// utime+stime of `pid` in seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after comm: state(3) ... utime is field 14 → index 11 here, stime 12.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}

// ---------------------------------------------------------------------------------------
// a full setup
// ---------------------------------------------------------------------------------------

/// Host namespace + guest + engine (drop order: engine, guest, host).
pub struct Setup {
    /// The engine.
    pub engine: Engine,
    /// The guest.
    pub guest: Guest,
    /// The host namespace.
    pub host: HostNs,
}

impl Setup {
    /// Host ns, root-made guest, engine with `--configure` and `extra` options.
    pub fn configured(extra: &[&str]) -> Setup {
        Setup::with(Owner::Root, &EngineOpts::configure(extra))
    }

    /// Host ns, guest made by `owner`, engine with `opts`.
    pub fn with(owner: Owner, opts: &EngineOpts) -> Setup {
        let host = HostNs::new();
        let guest = Guest::new(owner);
        let engine = Engine::start(&host, &guest, opts);
        Setup {
            engine,
            guest,
            host,
        }
    }

    /// A guest→host TCP echo round trip of `len` bytes to `addr`; fails the test otherwise.
    pub fn echo_roundtrip(&self, addr: SocketAddr, seed: u64, len: usize) {
        if let Err(e) = echo_once(&self.guest, addr, seed, len, Duration::from_secs(10)) {
            panic!("echo via {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// servers
// ---------------------------------------------------------------------------------------

/// A TCP server running handlers on threads; stops accepting on drop (or after 300 s).
pub struct TcpServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU32>,
    handle: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Serves `listener`.
    pub fn start<F>(listener: TcpListener, handler: F) -> TcpServer
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().expect("local_addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let handler = Arc::new(handler);
        let (st, acc) = (stop.clone(), accepted.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(300) {
                match listener.accept() {
                    Ok((s, _)) => {
                        acc.fetch_add(1, Ordering::SeqCst);
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                        let h = handler.clone();
                        thread::spawn(move || h(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TcpServer {
            addr,
            stop,
            accepted,
            handle: Some(handle),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Handler: echo everything until EOF, then close.
pub fn echo_handler(mut s: TcpStream) {
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Handler factory: a minimal HTTP/1.0 server answering any GET with `pattern(seed, len)`.
pub fn http_handler(seed: u64, len: usize) -> impl Fn(TcpStream) + Send + Sync + 'static {
    let body = Arc::new(pattern(seed, len));
    move |mut s: TcpStream| {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let hdr = format!(
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if s.write_all(hdr.as_bytes()).is_ok() {
            let _ = s.write_all(&body);
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        // drain until the client closes (bounded by the read timeout).
        let _ = read_to_end_result(&mut s);
    }
}

/// A UDP echo server; counts datagrams; stops on drop.
pub struct UdpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Datagrams received.
    pub received: Arc<AtomicU32>,
    /// Sizes of datagrams received.
    pub sizes: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Echoes every datagram on `sock` back to its sender.
    pub fn start(sock: UdpSocket) -> UdpEcho {
        let addr = sock.local_addr().expect("local_addr");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU32::new(0));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (st, rc, sz) = (stop.clone(), received.clone(), sizes.clone());
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(300) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    rc.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut v) = sz.lock() {
                        v.push(n);
                    }
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            addr,
            received,
            sizes,
            stop,
            handle: Some(handle),
        }
    }

    /// Datagrams received so far.
    pub fn count(&self) -> u32 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends `data` on a connected UDP socket and waits (≤ `timeout`, `tries` sends) for a
/// reply; returns the reply or the last error.
pub fn udp_request(
    sock: &UdpSocket,
    data: &[u8],
    tries: u32,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    sock.set_read_timeout(Some(timeout))?;
    let mut buf = vec![0u8; 65536];
    let mut last = io::Error::new(io::ErrorKind::TimedOut, "no reply");
    for _ in 0..tries {
        if let Err(e) = sock.send(data) {
            last = e;
            continue;
        }
        match sock.recv(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

// ---------------------------------------------------------------------------------------
// raw frames into tap0 (from inside the guest)
// ---------------------------------------------------------------------------------------

/// An AF_PACKET socket bound to an interface of the calling thread's namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    /// Opens a packet socket on `ifname` (call from a thread inside the namespace).
    pub fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: name is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if idx == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto.into(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh socket we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PacketSocket {
            fd,
            ifindex: i32::try_from(idx).map_err(io::Error::other)?,
        })
    }

    /// Sends one raw Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; zeroed is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        if frame.len() >= 6 {
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: frame and sll are valid for the lengths given.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

impl PacketSocket {
    /// Sets the receive buffer to `bytes`, above the system's cap (needs root), so that
    /// a capture of a fast transfer keeps its frames.
    pub fn force_rcvbuf(&self, bytes: i32) -> io::Result<()> {
        // SAFETY: a plain setsockopt with an int that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one frame seen on the interface (either direction), waiting at most
    /// `timeout`; `Ok(None)` when none came.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: a plain setsockopt with a timeval that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
            _ => Err(e),
        }
    }
}

/// The value of `name: EXPR,` or `name: TYPE = EXPR;` in `src`, the text of `file` (an
/// `include_str!` of an engine source such as `engine/src/config.rs`, so that a test's
/// bounds follow the engine's caps), where EXPR is a product of integer literals
/// (`1024 * 1024`).
pub fn source_cap(src: &str, file: &str, name: &str) -> u64 {
    let line = src
        .lines()
        .map(str::trim)
        .find(|l| {
            l.starts_with(&format!("{name}:")) || l.starts_with(&format!("pub const {name}:"))
        })
        .unwrap_or_else(|| panic!("{file} no longer defines {name}"));
    let expr = match line.split_once('=') {
        Some((_, e)) => e,
        None => line.split_once(':').map(|(_, e)| e).unwrap_or(""),
    };
    expr.trim()
        .trim_end_matches([',', ';'])
        .split('*')
        .map(|f| f.trim().replace('_', "").parse::<u64>())
        .product::<Result<u64, _>>()
        .unwrap_or_else(|e| panic!("{file}: cannot read {name} from {line:?}: {e}"))
}

/// Internet checksum.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo-header.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12 + seg.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&u16::try_from(seg.len()).expect("fits").to_be_bytes());
    p.extend_from_slice(seg);
    inet_checksum(&p)
}

/// A TCP segment (20-byte header plus an MSS option when `flags` has SYN) with a correct
/// checksum; `doff` overrides the data offset field afterwards (checksum kept valid).
pub fn tcp_segment(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    seq: u32,
    flags: u8,
    doff: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    let syn = flags & 0x02 != 0;
    let hl = if syn { 24 } else { 20 };
    let mut t = vec![0u8; hl];
    t[0..2].copy_from_slice(&src.1.to_be_bytes());
    t[2..4].copy_from_slice(&dst.1.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    if flags & 0x10 != 0 {
        t[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    t[12] = doff.unwrap_or((hl / 4) as u8) << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    if syn {
        t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    t.extend_from_slice(payload);
    let ck = l4_checksum(src.0, dst.0, 6, &t);
    t[16..18].copy_from_slice(&ck.to_be_bytes());
    t
}

/// A UDP datagram with a correct checksum; `len` overrides the length field first.
pub fn udp_datagram(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    len: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src.1.to_be_bytes());
    u.extend_from_slice(&dst.1.to_be_bytes());
    let real = u16::try_from(8 + payload.len()).expect("fits");
    u.extend_from_slice(&len.unwrap_or(real).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let ck = l4_checksum(src.0, dst.0, 17, &u);
    u[6..8].copy_from_slice(&ck.to_be_bytes());
    u
}

/// What [`send_frame`] made of a burst of frames.
#[derive(Debug, Default, Clone, Copy)]
pub struct SendReport {
    /// Frames the kernel took.
    pub sent: u64,
    /// Frames given up on (another error, or ENOBUFS 2000 times).
    pub failed: u64,
    /// ENOBUFS answers waited out.
    pub enobufs: u64,
}

/// Sends one frame; when the kernel says its queue is full (ENOBUFS), waits 50 µs and
/// tries again (≤ 2000 times). Counts into `r`.
pub fn send_frame(ps: &PacketSocket, f: &[u8], r: &mut SendReport) {
    for _ in 0..2000 {
        match ps.send(f) {
            Ok(()) => {
                r.sent += 1;
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                r.enobufs += 1;
                thread::sleep(Duration::from_micros(50));
            }
            Err(_) => break,
        }
    }
    r.failed += 1;
}

#[allow(clippy::too_many_arguments)]
/// Builds an Ethernet+IPv4 frame; `frag` = (more_fragments, offset in 8-byte units).
pub fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    frag: (bool, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 20 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = u16::try_from(20 + payload.len()).expect("fits");
    let flags_off = (if frag.0 { 0x2000u16 } else { 0 }) | (frag.1 & 0x1fff);
    let mut ip = Vec::with_capacity(20);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&flags_off.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let ck = inet_checksum(&ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

// ---------------------------------------------------------------------------------------
// background processes, dnsmasq, the API socket
// ---------------------------------------------------------------------------------------

/// A process the test started in the background; killed (by its PID) and reaped on drop.
pub struct BgChild {
    child: Child,
    /// What was started (for messages).
    pub desc: String,
    /// Its PID.
    pub pid: u32,
}

impl BgChild {
    /// Starts `c` with stdin null and stdout/stderr to `log` (a file created here).
    pub fn start(c: &mut Command, log: &Path) -> BgChild {
        let f = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        c.stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        let desc = format!("{c:?}");
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let pid = child.id();
        BgChild { child, desc, pid }
    }

    /// Exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for BgChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Guest {
    /// Starts `prog args` in the background inside the guest (nsenter execs it, so the
    /// child is the program itself); output goes to `log`.
    pub fn spawn_cmd(&self, prog: &str, args: &[&str], log: &Path) -> BgChild {
        let mut c = self.command(prog);
        c.args(args);
        BgChild::start(&mut c, log)
    }

    /// Waits (≤ `timeout`) until a TCP connection from inside the guest to `addr`
    /// succeeds (a server started in the background is listening).
    pub fn wait_tcp_listening(&self, addr: SocketAddr, timeout: Duration) {
        let start = Instant::now();
        loop {
            if self
                .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
                .is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "nothing listens on {addr} inside the guest after {timeout:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A dnsmasq serving fixed records on `addr`:53 (UDP and TCP) inside a host namespace;
/// no upstreams, no hosts file, no config file; killed on drop.
pub struct Dnsmasq {
    proc_: BgChild,
    /// The address it listens on.
    pub addr: Ipv4Addr,
    /// Its query log.
    pub log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq on `addr` (which must be an address of the namespace, e.g. added to
    /// `lo` with [`HostNs::add_lo_addr`]); `records` are dnsmasq options such as
    /// `--address=/www.test.example/192.0.2.10` or `--txt-record=...`. Waits (≤ 10 s)
    /// until it accepts TCP on port 53.
    pub fn start(host: &HostNs, addr: Ipv4Addr, records: &[String]) -> Dnsmasq {
        require_tool("dnsmasq");
        let id = unique_id();
        let log = host.dir.join(format!("dnsmasq-{addr}-{id}.log"));
        let out = host.dir.join(format!("dnsmasq-{addr}-{id}.out"));
        let pidf = host.dir.join(format!("dnsmasq-{addr}-{id}.pid"));
        let mut c = host.command("dnsmasq");
        c.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--group=root",
            "--log-queries",
        ]);
        c.arg(format!("--listen-address={addr}"));
        c.arg(format!("--pid-file={}", pidf.display()));
        c.arg(format!("--log-facility={}", log.display()));
        c.args(records);
        let mut proc_ = BgChild::start(&mut c, &out);
        host.wait_tcp_listening(
            SocketAddr::from((addr, 53)),
            &mut proc_,
            &out,
            Instant::now(),
        );
        Dnsmasq { proc_, addr, log }
    }

    /// The query log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// PID of the dnsmasq process.
    pub fn pid(&self) -> u32 {
        self.proc_.pid
    }
}

/// One request on the engine's API socket, slirp4netns style: connect, write `req` (in
/// the pieces given, pausing `pause` between them), shut down the write side, read the
/// reply to EOF (≤ 10 s). Returns the reply bytes.
pub fn api_call_parts(path: &Path, parts: &[&[u8]], pause: Duration) -> io::Result<Vec<u8>> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let owned: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    // a writer thread, so that a server that answers before reading everything (an
    // oversized request) cannot block us.
    let writer = thread::spawn(move || {
        for (i, p) in owned.iter().enumerate() {
            if i > 0 {
                thread::sleep(pause);
            }
            if w.write_all(p).is_err() {
                break;
            }
        }
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let (got, err) = read_to_end_result(&mut s);
    let _ = writer.join();
    match err {
        Some(e) if got.is_empty() => Err(e),
        _ => Ok(got),
    }
}

/// [`api_call_parts`] with one piece.
pub fn api_call(path: &Path, req: &[u8]) -> io::Result<Vec<u8>> {
    api_call_parts(path, &[req], Duration::ZERO)
}

/// [`api_call`] parsed as JSON; fails the test on any error.
pub fn api_json(path: &Path, req: &str) -> serde_json::Value {
    let got = api_call(path, req.as_bytes())
        .unwrap_or_else(|e| panic!("API request {req} on {}: {e}", path.display()));
    serde_json::from_slice(&got).unwrap_or_else(|e| {
        panic!(
            "API reply to {req} is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&got)
        )
    })
}

impl HostNs {
    /// Wait (at most 10 s from `start`) until something accepts TCP on `sa` in this
    /// namespace; fail with the child's output if `child` exits first.
    pub fn wait_tcp_listening(
        &self,
        sa: SocketAddr,
        child: &mut BgChild,
        out: &Path,
        start: Instant,
    ) {
        loop {
            if self
                .run(|| TcpStream::connect_timeout(&sa, Duration::from_secs(1)))
                .is_ok()
            {
                return;
            }
            if let Some(st) = child.try_wait() {
                panic!(
                    "{} exited ({st}): {}",
                    child.desc,
                    std::fs::read_to_string(out).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} not listening on {sa} after 10 s",
                child.desc
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Stops a daemonised dhclient (by the PID in its pid file, a process the test started).
pub struct DhclientGuard {
    /// dhclient's `-pf` file.
    pub pidfile: PathBuf,
}

impl Drop for DhclientGuard {
    fn drop(&mut self) {
        let Ok(t) = std::fs::read_to_string(&self.pidfile) else {
            return;
        };
        let Ok(pid) = t.trim().parse::<i32>() else {
            return;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "dhclient" {
            // SAFETY: kill(2) on the dhclient this test started (checked by name).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// networks of guests: `usernet network`, `usernet attach`
// ---------------------------------------------------------------------------------------

/// What a command printed, run with its output to files (not pipes): safe when it leaves
/// a background child behind that keeps its stdout/stderr open.
#[derive(Debug)]
pub struct FileOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `c` with stdout/stderr to fresh files in `dir` (tagged `tag`), waits at most
/// `timeout` (then kills it, by its PID, and fails the test).
pub fn run_to_files(c: &mut Command, dir: &Path, tag: &str, timeout: Duration) -> FileOutput {
    let id = unique_id();
    let so = dir.join(format!("{tag}-{id}.stdout"));
    let se = dir.join(format!("{tag}-{id}.stderr"));
    let fo = File::create(&so).unwrap_or_else(|e| panic!("create {}: {e}", so.display()));
    let fe = File::create(&se).unwrap_or_else(|e| panic!("create {}: {e}", se.display()));
    c.stdin(Stdio::null()).stdout(fo).stderr(fe);
    let desc = format!("{c:?}");
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!(
                "{desc} did not finish within {timeout:?} (killed, {st}); stdout: {}; stderr: {}",
                std::fs::read_to_string(&so).unwrap_or_default(),
                std::fs::read_to_string(&se).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    FileOutput {
        status,
        stdout: std::fs::read_to_string(&so).unwrap_or_default(),
        stderr: std::fs::read_to_string(&se).unwrap_or_default(),
    }
}

/// `usernet network NAME --runtime-dir DIR ...` running inside a host namespace (killed,
/// by its PID, on drop). DIR is `<host scratch dir>/run`, so tests never share sockets.
pub struct Network {
    child: Child,
    /// PID of the engine (ip netns exec execs into it).
    pub pid: u32,
    /// The network's name.
    pub name: String,
    /// The `--runtime-dir`.
    pub runtime_dir: PathBuf,
    /// The host namespace's name (for `ip netns exec`).
    pub host_name: String,
    log: PathBuf,
    reaped: Option<ExitStatus>,
}

/// The runtime directory the network helpers use for a host namespace.
pub fn network_runtime_dir(host: &HostNs) -> PathBuf {
    host.dir.join("run")
}

impl Network {
    /// Starts `usernet network NAME --runtime-dir <host.dir>/run --ready-fd=20 ARGS` in
    /// `host` and waits (≤ [`READY_TIMEOUT`]) for "1" on the ready fd.
    pub fn start(host: &HostNs, name: &str, args: &[&str]) -> Network {
        let runtime_dir = network_runtime_dir(host);
        let log = host.dir.join(format!("network-{name}.log"));
        let errf = File::create(&log).expect("create network log");
        let (rr, rw) = pipe();
        let mut c = host.command(&engine_bin().to_string_lossy());
        c.arg("network")
            .arg(name)
            .arg("--runtime-dir")
            .arg(&runtime_dir)
            .arg(format!("--ready-fd={READY_FD}"))
            .args(args);
        c.stdin(Stdio::null())
            .stdout(errf.try_clone().expect("dup"))
            .stderr(errf);
        pass_fds(&mut c, vec![(rw.as_raw_fd(), READY_FD)]);
        let desc = format!("{c:?}");
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        drop(rw);
        let pid = child.id();
        let mut n = Network {
            child,
            pid,
            name: name.to_string(),
            runtime_dir,
            host_name: host.name.clone(),
            log,
            reaped: None,
        };
        let mut f = File::from(rr);
        let start = Instant::now();
        let mut got = Vec::new();
        loop {
            let left = READY_TIMEOUT.saturating_sub(start.elapsed());
            assert!(
                !left.is_zero(),
                "{desc}: nothing on the ready fd within {READY_TIMEOUT:?}; output: {}",
                n.log()
            );
            if !poll_readable(f.as_raw_fd(), left.min(Duration::from_millis(200))) {
                if let Some(st) = n.try_wait() {
                    panic!(
                        "{desc} exited ({st}) before it was ready; output: {}",
                        n.log()
                    );
                }
                continue;
            }
            let mut buf = [0u8; 16];
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    got.extend_from_slice(&buf[..k]);
                    if got.contains(&b'1') {
                        break;
                    }
                }
            }
        }
        assert_eq!(
            got,
            b"1",
            "{desc}: the ready fd should carry \"1\"; output: {}",
            n.log()
        );
        n.assert_alive("right after signalling readiness");
        n
    }

    /// `DIR/NAME`.
    pub fn dir(&self) -> PathBuf {
        self.runtime_dir.join(&self.name)
    }

    /// `DIR/NAME/api.sock`.
    pub fn api(&self) -> PathBuf {
        self.dir().join("api.sock")
    }

    /// `DIR/NAME/stream.sock`.
    pub fn stream_sock(&self) -> PathBuf {
        self.dir().join("stream.sock")
    }

    /// What the engine printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Exit status if it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().ok().flatten();
        }
        self.reaped
    }

    /// Fails the test (with the engine's output) unless it still runs.
    pub fn assert_alive(&mut self, what: &str) {
        if let Some(st) = self.try_wait() {
            panic!(
                "usernet network {} exited ({st}) {what}; its output: {}",
                self.name,
                self.log()
            );
        }
    }

    /// `usernet attach --runtime-dir DIR ARGS NAME PID` for `guest` (run inside the host
    /// namespace); fails the test unless it exits 0 printing "port N"; returns N.
    pub fn attach(&self, host: &HostNs, guest: &Guest, args: &[&str]) -> u64 {
        let out = attach_cmd(host, &self.runtime_dir, &self.name, guest.pid, args);
        parse_attach_port(&out).unwrap_or_else(|| {
            panic!(
                "usernet attach {args:?} {} {} failed or printed no \"port N\": {out:?}\n\
                 network output: {}",
                self.name,
                guest.pid,
                self.log()
            )
        })
    }

    /// `usernet network NAME --list [--json] --runtime-dir DIR` (20 s deadline).
    pub fn list_cmd(&self, json: bool) -> Output {
        let mut c = Command::new(engine_bin());
        c.arg("network").arg(&self.name).arg("--list");
        if json {
            c.arg("--json");
        }
        c.arg("--runtime-dir").arg(&self.runtime_dir);
        run_timeout(&mut c, Duration::from_secs(20))
    }

    /// `--list --json` parsed; fails the test unless it succeeds with a JSON object.
    pub fn list_json(&self) -> serde_json::Value {
        let out = self.list_cmd(true);
        assert!(
            out.status.success(),
            "usernet network {} --list --json failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "--list --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The `--list --json` array `key` ("ports", "leases", "forwards").
    pub fn list_array(&self, key: &str) -> Vec<serde_json::Value> {
        let v = self.list_json();
        v.get(key)
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("--list --json without a \"{key}\" array: {v}"))
    }

    /// An API request's `.return.KEY` array (`list_ports` → "ports", `list_leases` →
    /// "leases").
    pub fn api_array(&self, execute: &str, key: &str) -> Vec<serde_json::Value> {
        let v = api_json(&self.api(), &format!(r#"{{"execute":"{execute}"}}"#));
        v.pointer(&format!("/return/{key}"))
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_else(|| panic!("{execute} reply without .return.{key}: {v}"))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- usernet network {} output ---\n{}",
                self.name,
                self.log()
            );
        }
        if self.reaped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `ip netns exec HOST usernet attach --runtime-dir DIR ARGS NAME PID` (30 s deadline;
/// output to files, as attach may start a network that outlives it).
pub fn attach_cmd(
    host: &HostNs,
    runtime_dir: &Path,
    name: &str,
    pid: u32,
    args: &[&str],
) -> FileOutput {
    let mut c = host.command(&engine_bin().to_string_lossy());
    c.arg("attach")
        .arg("--runtime-dir")
        .arg(runtime_dir)
        .args(args)
        .arg(name)
        .arg(pid.to_string());
    run_to_files(&mut c, &host.dir, "attach", Duration::from_secs(30))
}

/// The N of attach's "port N" (only when it exited 0).
pub fn parse_attach_port(out: &FileOutput) -> Option<u64> {
    if !out.status.success() {
        return None;
    }
    out.stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("port "))
        .and_then(|n| n.trim().parse().ok())
}

/// PIDs of `usernet` processes whose command line names `path` (e.g. a network the test
/// caused `usernet attach` to start with the test's runtime directory).
pub fn usernet_pids_mentioning(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let is_usernet = args
            .first()
            .is_some_and(|a| a.rsplit('/').next() == Some("usernet"))
            || exe
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("usernet"));
        if is_usernet && args.iter().any(|a| a.contains(&needle)) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills (SIGKILL, by PID) on drop every `usernet` process whose command line names
/// `path`: the networks `usernet attach` started for the test (they live in its scratch
/// directory, so no other process matches).
pub struct KillUsernetMentioning(pub PathBuf);

impl Drop for KillUsernetMentioning {
    fn drop(&mut self) {
        for pid in usernet_pids_mentioning(&self.0) {
            if let Ok(p) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on a usernet process started for this test (its command
                // line names the test's own scratch directory).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

/// Runs busybox udhcpc once in `guest` on tap0 (DISCOVER → lease → quit, ≤ ~12 s) with a
/// script written here that configures tap0 INSIDE the guest (address, default route via
/// the first router if any) and records what it was given; never the distribution
/// script. `extra` goes to udhcpc (e.g. `-x hostname:NAME`). Returns the recorded
/// variables (ip, mask, router, dns, serverid, lease); fails the test without a lease.
pub fn guest_udhcpc(
    guest: &Guest,
    dir: &Path,
    tag: &str,
    extra: &[&str],
) -> std::collections::HashMap<String, String> {
    require_tool("udhcpc");
    let out = dir.join(format!("udhcpc-{tag}.env"));
    let script = dir.join(format!("udhcpc-{tag}.sh"));
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             case \"$1\" in bound|renew)\n\
             ip addr replace \"$ip/$mask\" dev \"$interface\" || exit 1\n\
             for r in $router; do ip route replace default via \"$r\" dev \"$interface\"; break; done\n\
             {{ echo \"event=$1\"; echo \"ip=$ip\"; echo \"mask=$mask\"; echo \"router=$router\";\n\
             echo \"dns=$dns\"; echo \"serverid=$serverid\"; echo \"lease=$lease\"; }} > '{}' ;;\n\
             esac\nexit 0\n",
            out.display()
        ),
    )
    .expect("write udhcpc script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod udhcpc script");
    }
    let mut c = guest.command("udhcpc");
    c.args(["-i", "tap0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s"])
        .arg(&script)
        .args(extra);
    let o = run_timeout(&mut c, Duration::from_secs(30));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    if !o.status.success() || text.is_empty() {
        let links = guest.sh("ip -d link show; ip addr show");
        panic!(
            "udhcpc ({tag}) got no lease ({}): {}{}\nthe guest's interfaces: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&links.stdout),
            String::from_utf8_lossy(&links.stderr)
        );
    }
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// helpers shared by the tests of networks of guests (network.rs, isolation.rs)
// ---------------------------------------------------------------------------------------

/// A network name unique to this test run.
pub fn net_name(tag: &str) -> String {
    format!("{tag}-{}", unique_id())
}

/// Standard output and error of a finished command, as text.
pub fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `ping -c1 -W2 ADDR` from `g` succeeds (up to 3 tries: the first may wait for ARP).
pub fn ping_ok(g: &Guest, addr: &str, net: &Network, what: &str) {
    let mut last = String::new();
    for _ in 0..3 {
        let o = g.sh(&format!("ping -c1 -W2 {addr}"));
        if o.status.success() {
            return;
        }
        last = out_text(&o);
    }
    panic!(
        "{what}: ping {addr} failed three times: {last}\nnetwork output: {}",
        net.log()
    );
}

/// `ping -c2 -W2 ADDR` from `g` gets no reply.
pub fn ping_fails(g: &Guest, addr: &str, what: &str) {
    let o = g.sh(&format!("ping -c2 -W2 {addr}"));
    assert!(
        !o.status.success(),
        "{what}: ping {addr} should get no reply: {}",
        out_text(&o)
    );
}

/// A TCP server in `g` on 0.0.0.0:`port` that says `name` and closes.
pub fn name_server(g: &Guest, port: u16, name: &str) -> TcpServer {
    let l: TcpListener = g.run(|| {
        TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| panic!("bind {port}: {e}"))
    });
    let msg = format!("{name}\n");
    TcpServer::start(l, move |mut s: TcpStream| {
        let _ = s.write_all(msg.as_bytes());
        let _ = s.shutdown(std::net::Shutdown::Write);
    })
}

/// `len` pattern bytes from `g` to an echo server at `addr` and back; Err says what
/// differed.
pub fn echo_via(g: &Guest, addr: SocketAddr, seed: u64, len: usize) -> Result<(), String> {
    echo_once(g, addr, seed, len, Duration::from_secs(5))
}

/// [`echo_via`] with the connect timeout given.
fn echo_once(
    g: &Guest,
    addr: SocketAddr,
    seed: u64,
    len: usize,
    connect_timeout: Duration,
) -> Result<(), String> {
    g.run(|| echo_here(addr, seed, len, connect_timeout))
}

/// `len` pattern bytes from the calling thread's namespace to an echo server at `addr`
/// (the write side shut down after them) and back; Err says what differed.
pub fn echo_here(
    addr: SocketAddr,
    seed: u64,
    len: usize,
    connect_timeout: Duration,
) -> Result<(), String> {
    let data = pattern(seed, len);
    let got = (|| -> io::Result<Vec<u8>> {
        let mut s = connect_tcp(addr, connect_timeout)?;
        let mut w = s.try_clone()?;
        thread::scope(|sc| {
            let writer = sc.spawn(|| {
                let r = w.write_all(&data);
                let _ = w.shutdown(std::net::Shutdown::Write);
                r
            });
            let (got, err) = read_to_end_result(&mut s);
            writer
                .join()
                .map_err(|_| io::Error::other("writer panicked"))??;
            match err {
                Some(e) => Err(e),
                None => Ok(got),
            }
        })
    })();
    match got {
        Err(e) => Err(format!("{addr}: {e}")),
        Ok(b) if b.len() != data.len() => Err(format!(
            "{addr}: echoed {} bytes, sent {}",
            b.len(),
            data.len()
        )),
        Ok(b) if sha256_hex(&b) != sha256_hex(&data) => Err(format!("{addr}: content differs")),
        Ok(_) => Ok(()),
    }
}

/// A TCP connect from `g` to `addr` fails within `timeout`; returns the error.
pub fn connect_fails(g: &Guest, addr: SocketAddr, timeout: Duration, what: &str) -> io::Error {
    let start = Instant::now();
    let r = g.run(|| TcpStream::connect_timeout(&addr, timeout));
    match r {
        Ok(s) => panic!(
            "{what}: a TCP connect to {addr} should fail, it succeeded ({:?} -> {:?})",
            s.local_addr(),
            s.peer_addr()
        ),
        Err(e) => {
            assert!(
                start.elapsed() < timeout + Duration::from_secs(2),
                "{what}: connect to {addr} took {:?}",
                start.elapsed()
            );
            e
        }
    }
}

/// What a forward at 127.0.0.1:`port` of the host namespace answers (a [`name_server`]);
/// retried for up to 10 s.
pub fn via_forward(host: &HostNs, port: u16, want: &str, net: &Network) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        let r = host.run(|| -> io::Result<String> {
            let mut s = connect_tcp(addr, Duration::from_secs(3))?;
            let mut t = String::new();
            s.read_to_string(&mut t)?;
            Ok(t.trim().to_string())
        });
        match r {
            Ok(t) if t == want => return,
            Ok(t) => last = format!("answered {t:?}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "the forward 127.0.0.1:{port} should reach {want:?}: {last}\nnetwork output: {}",
        net.log()
    );
}

/// `n` distinct free TCP ports on the host namespace's 127.0.0.1.
pub fn free_ports(host: &HostNs, n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n).map(|_| host.tcp_listener("127.0.0.1:0")).collect();
    ls.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// The kernel and initramfs of `tests/vm/build-initramfs.sh`.
pub struct VmImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
}

/// The workspace's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .expect("workspace root");
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) if PathBuf::from(&t).is_absolute() => PathBuf::from(t),
        Some(t) => root.join(t),
        None => root.join("target"),
    }
}

/// Builds (or reuses, under `target/vm`) the VM image once per test process; fails
/// naming what is missing.
pub fn vm_image() -> &'static VmImage {
    static IMAGE: std::sync::OnceLock<VmImage> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        require_root();
        for t in [
            "qemu-system-x86_64",
            "apt-get",
            "dpkg-deb",
            "gzip",
            "flock",
            "dnsmasq",
        ] {
            require_tool(t);
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vm/build-initramfs.sh");
        let out = run_timeout(
            Command::new("bash")
                .arg(&script)
                .arg(target_dir().join("vm")),
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "prerequisite missing: {} could not build the VM image ({}):\n{}",
            script.display(),
            out.status,
            out_text(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines().filter(|l| !l.trim().is_empty());
        let kernel = PathBuf::from(lines.next().expect("kernel path").trim());
        let initrd = PathBuf::from(lines.next().expect("initrd path").trim());
        assert!(kernel.is_file() && initrd.is_file(), "{stdout}");
        VmImage { kernel, initrd }
    })
}
