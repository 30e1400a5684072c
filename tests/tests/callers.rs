//! The drop-in with its real callers, run as they run it (`../shared/reference/compat.md`
//! §2.6): rootlesskit 1.1 (`--net=slirp4netns --slirp4netns-binary=usernet`, its
//! slirp4netns port driver, `--disable-host-loopback`, `--slirp4netns-sandbox/seccomp`)
//! and rootless podman 4.3 (`network_cmd_path` = usernet, `--network slirp4netns[:...]`,
//! `-p` through `add_hostfwd`, its default IPv6), both as an unprivileged user.
//!
//! Each test creates a dedicated user (useradd, which also gives it a subuid/subgid
//! range; `newuidmap`/`newgidmap` from `uidmap` need them) and removes it afterwards
//! (userdel, which removes the ranges too), with every file under
//! `/var/tmp/usernet-callers-<id>` (home, podman's storage, scripts) and
//! `/run/unc-<id>` (its XDG_RUNTIME_DIR).
//! The callers run inside the test's host network namespace (`ip netns exec`, whose
//! private mount namespace also gets a 0666 `/dev/net/tun`, as rootless setups have, and
//! a cgroup2 mount for crun; nothing changes outside): the servers they reach are on its
//! loopback (through 10.0.2.2) and on 198.51.100.1 / 2001:db8:1::1. The tests take a
//! lock so that only one runs at a time.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};
use usernet_tests::*;

/// One caller test at a time (users, subuid ranges, two cores).
static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const BLOB_LEN: usize = 1024 * 1024 + 17;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_exec(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn chown_r(path: &Path, uid: u32) {
    run_ok(Command::new("chown").args(["-R", &format!("{uid}:{uid}"), &path.to_string_lossy()]));
}

// ---------------------------------------------------------------------------------------
// a dedicated unprivileged user
// ---------------------------------------------------------------------------------------

/// Backup files that useradd/userdel write next to the databases: removed on drop unless
/// they existed before.
const BACKUPS: [&str; 6] = [
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/subuid-",
    "/etc/subgid-",
];

/// A user made for one test (name `unc<pid><n>`), with a subuid/subgid range of 65536,
/// a home, an XDG_RUNTIME_DIR and a scratch directory under
/// `/var/tmp/usernet-callers-<id>`. On drop: every process running as it (or as one of
/// its subordinate ids) is killed by PID (they are all ours: the user is new), the user
/// is deleted (with its ranges), the directory removed.
struct TestUser {
    name: String,
    uid: u32,
    base: PathBuf,
    home: PathBuf,
    runtime: PathBuf,
    sub_start: u32,
    new_backups: Vec<PathBuf>,
    had_subuid: bool,
    had_subgid: bool,
}

impl TestUser {
    fn new() -> TestUser {
        require_root();
        for t in ["useradd", "userdel", "usermod", "newuidmap", "newgidmap"] {
            require_tool(t);
        }
        let id = unique_id();
        let name = format!("unc{}", id.replace('-', "x"));
        let base = PathBuf::from(format!("/var/tmp/usernet-callers-{id}"));
        let home = base.join("home");
        // like /run/user/UID: short, so that podman's API socket path
        // (XDG_RUNTIME_DIR/libpod/tmp/<64 hex>.net) fits in a sockaddr_un.
        let runtime = PathBuf::from(format!("/run/unc-{id}"));
        let new_backups = BACKUPS
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        let had_subuid = Path::new("/etc/subuid").exists();
        let had_subgid = Path::new("/etc/subgid").exists();
        std::fs::create_dir_all(&base).expect("create the user's base dir");
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut u = TestUser {
            name,
            uid: 0,
            base,
            home,
            runtime,
            sub_start: 0,
            new_backups,
            had_subuid,
            had_subgid,
        };
        // useradd may find the databases locked by someone else for a moment: retry.
        let start = Instant::now();
        loop {
            let out = run_timeout(
                Command::new("useradd").args([
                    "-M",
                    "-U",
                    "-s",
                    "/bin/sh",
                    "-d",
                    &u.home.to_string_lossy(),
                    &u.name,
                ]),
                Duration::from_secs(30),
            );
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "useradd {} failed: {}",
                u.name,
                text(&out.stderr)
            );
            thread::sleep(Duration::from_millis(300));
        }
        u.uid = run_ok(Command::new("id").args(["-u", &u.name]))
            .trim()
            .parse()
            .expect("uid of the new user");
        // a subordinate range (useradd gives one when /etc/subuid exists; else add one).
        if let Some(s) = sub_range("/etc/subuid", &u.name) {
            u.sub_start = s;
        } else {
            let start = 200_000 + (u.uid % 1000) * 65_536;
            let r = format!("{start}-{}", start + 65_535);
            run_ok(Command::new("usermod").args([
                "--add-subuids",
                &r,
                "--add-subgids",
                &r,
                &u.name,
            ]));
            u.sub_start = start;
        }
        assert!(
            sub_range("/etc/subgid", &u.name).is_some(),
            "the test user {} has no subgid range after useradd/usermod",
            u.name
        );
        for d in [&u.home, &u.runtime] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        }
        chown_r(&u.home, u.uid);
        chown_r(&u.runtime, u.uid);
        u
    }

    /// A directory under the base owned by the user.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.base.join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        chown_r(&d, self.uid);
        d
    }

    /// `ip netns exec HOST sh -c PREP; exec setpriv ... env -i ... PROG ARGS`: PROG runs
    /// as the user in the host namespace with a clean environment (HOME, XDG_RUNTIME_DIR,
    /// PATH), a private 0666 /dev/net/tun and (`cgroup2`) a cgroup2 mount on
    /// /sys/fs/cgroup (ip netns exec's fresh /sys hides the machine's).
    fn command(&self, host: &HostNs, cgroup2: bool, prog: &str, args: &[&str]) -> Command {
        let mut c = host.command("sh");
        let cg = if cgroup2 {
            "mount -t cgroup2 none /sys/fs/cgroup || exit 96; "
        } else {
            ""
        };
        let script = format!(
            "mount -t tmpfs -o mode=0755 tmpfs /dev/net && \
             mknod -m 0666 /dev/net/tun c 10 200 || exit 97; {cg}\
             exec setpriv --reuid {uid} --regid {uid} --clear-groups env -i \
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             HOME='{home}' USER='{name}' LOGNAME='{name}' XDG_RUNTIME_DIR='{run}' \
             XDG_CONFIG_HOME='{home}/.config' XDG_DATA_HOME='{home}/.local/share' \
             \"$@\"",
            uid = self.uid,
            home = self.home.display(),
            name = self.name,
            run = self.runtime.display(),
        );
        c.args(["-c", &script, "sh", prog]).args(args);
        c
    }

    /// PIDs running as the user or one of its subordinate ids.
    fn pids(&self) -> Vec<i32> {
        let mut v = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return v;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let uid: Option<u32> = st
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse().ok());
            if let Some(u) = uid
                && (u == self.uid || (u >= self.sub_start && u < self.sub_start + 65_536))
            {
                v.push(pid);
            }
        }
        v
    }

    /// Processes of the user running the program `argv0` (its first argument).
    fn procs_of(&self, argv0: &str) -> Vec<(i32, Vec<String>)> {
        let all = self
            .pids()
            .into_iter()
            .filter_map(|p| {
                let raw = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
                let args: Vec<String> = raw
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (args.first().map(String::as_str) == Some(argv0)).then_some((p, args))
            })
            .collect::<Vec<_>>();
        // usernet's helper children (its socket factory) run the same binary: keep only
        // processes whose parent is not one of the matches.
        let pids: Vec<i32> = all.iter().map(|(p, _)| *p).collect();
        all.into_iter()
            .filter(|(p, _)| !parent_of(*p).is_some_and(|pp| pids.contains(&pp)))
            .collect()
    }
}

/// The parent PID of `pid` (from `/proc/PID/stat`).
fn parent_of(pid: i32) -> Option<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    st.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn sub_range(file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.next()?.parse().ok())?
    })
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.uid != 0 {
            // everything the user runs was started by this test: SIGTERM, then SIGKILL.
            for sig in [libc::SIGTERM, libc::SIGKILL] {
                for p in self.pids() {
                    // SAFETY: kill(2) on a process of the user this test created.
                    unsafe { libc::kill(p, sig) };
                }
                let start = Instant::now();
                while !self.pids().is_empty() && start.elapsed() < Duration::from_secs(3) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            let start = Instant::now();
            loop {
                let ok = Command::new("userdel")
                    .arg(&self.name)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok || start.elapsed() > Duration::from_secs(10) {
                    break;
                }
                thread::sleep(Duration::from_millis(300));
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
        let _ = std::fs::remove_dir_all(&self.runtime);
        // what the user's programs left in the shared temporary directories
        // (rootlesskit's default state directory /tmp/rootlesskitNNN, ...).
        if self.uid != 0 {
            use std::os::unix::fs::MetadataExt;
            for tmp in ["/tmp", "/var/tmp"] {
                let Ok(rd) = std::fs::read_dir(tmp) else {
                    continue;
                };
                for e in rd.filter_map(|e| e.ok()) {
                    if e.metadata().is_ok_and(|m| m.uid() == self.uid) {
                        let p = e.path();
                        if p.is_dir() {
                            let _ = std::fs::remove_dir_all(&p);
                        } else {
                            let _ = std::fs::remove_file(&p);
                        }
                    }
                }
            }
        }
        for b in &self.new_backups {
            let _ = std::fs::remove_file(b);
        }
        for (had, f) in [
            (self.had_subuid, "/etc/subuid"),
            (self.had_subgid, "/etc/subgid"),
        ] {
            if !had && std::fs::metadata(f).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

/// A UDP port on 127.0.0.1 in the host namespace where nothing listens.
fn free_udp_port(host: &HostNs) -> u16 {
    let s = host.udp_socket("127.0.0.1:0");
    s.local_addr().expect("addr").port()
}

/// A checksummed TCP echo from the host namespace to `addr` (a published port).
fn host_echo(host: &HostNs, addr: SocketAddr, seed: u64, len: usize) -> Result<(), String> {
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
    let got = got.map_err(|e| format!("echo through {addr}: {e}"))?;
    if got.len() != data.len() || sha256_hex(&got) != sha256_hex(&data) {
        return Err(format!(
            "echo through {addr}: got {} bytes of {}, content {}",
            got.len(),
            data.len(),
            if got == data { "same" } else { "differs" }
        ));
    }
    Ok(())
}

/// UDP echoes (several sizes) from the host namespace to `addr`.
fn host_udp_echo(host: &HostNs, addr: SocketAddr) -> Result<(), String> {
    let sock: UdpSocket = host.udp_socket("127.0.0.1:0");
    sock.connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    for (i, len) in [64usize, 1400, 8000].into_iter().enumerate() {
        let data = pattern(500 + i as u64, len);
        let got = udp_request(&sock, &data, 5, Duration::from_secs(2))
            .map_err(|e| format!("{len}-byte UDP echo through {addr}: {e}"))?;
        if got != data {
            return Err(format!(
                "{len}-byte UDP echo through {addr}: content differs"
            ));
        }
    }
    Ok(())
}

/// Waits (≤ `limit`) until `path` exists; fails with `why()` if `alive()` says the
/// caller ended first.
fn wait_file(path: &Path, limit: Duration, mut alive: impl FnMut() -> Option<String>) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(why) = alive() {
            panic!("{why}");
        }
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The engine's `/proc/PID/root` entries.
fn root_entries(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/root"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// rootlesskit
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct RkCase {
    disable_host_loopback: bool,
    sandbox: bool,
    /// rootlesskit's default state directory (`/tmp/rootlesskitNNN`) instead of one
    /// under the user's XDG_RUNTIME_DIR.
    default_state_dir: bool,
}

/// rootlesskit as the user, usernet as its slirp4netns: inside, curl reaches the host
/// namespace's loopback through 10.0.2.2 (or is refused with --disable-host-loopback)
/// and 198.51.100.1 (always); from outside, a TCP port published with `-p` and a UDP
/// port added with `rootlessctl add-ports` (both through the slirp4netns port driver,
/// i.e. the engine's API socket) reach servers inside; with the sandbox flags the
/// engine is confined. Everything checksummed.
fn rootlesskit_case(case: RkCase) {
    let _g = serial();
    require_tool("curl");
    let rk = require_tool("rootlesskit");
    let rkctl = require_tool("rootlessctl");
    let engine = engine_bin();
    let host = HostNs::new();
    let user = TestUser::new();
    let out = user.dir("out");
    let lo_srv = host.tcp_server("127.0.0.1:0", http_handler(71, BLOB_LEN));
    let out_srv = host.tcp_server("198.51.100.1:0", http_handler(72, BLOB_LEN));
    let want_lo = sha256_hex(&pattern(71, BLOB_LEN));
    let want_out = sha256_hex(&pattern(72, BLOB_LEN));
    let hp_tcp = host.free_port("127.0.0.1");
    let hp_udp = free_udp_port(&host);
    let state = user.runtime.join("rk");

    let child = user.base.join("child.sh");
    write_exec(
        &child,
        &format!(
            "#!/bin/sh\n\
             o='{o}'\n\
             echo \"$ROOTLESSKIT_STATE_DIR\" > $o/statedir\n\
             ip -o -4 addr show dev tap0 > $o/addr 2>&1\n\
             curl -sS --max-time 10 -o $o/lo.body http://10.0.2.2:{lp}/blob 2> $o/lo.err\n\
             echo $? > $o/lo.rc\n\
             curl -sS --max-time 10 -o $o/out.body http://198.51.100.1:{op}/blob 2> $o/out.err\n\
             echo $? > $o/out.rc\n\
             echo $$ > $o/pid.tmp && mv $o/pid.tmp $o/pid\n\
             exec sleep 300\n",
            o = out.display(),
            lp = lo_srv.port(),
            op = out_srv.port(),
        ),
    );
    let mut args: Vec<String> = vec![
        "--net=slirp4netns".into(),
        format!("--slirp4netns-binary={}", engine.display()),
        "--copy-up=/etc".into(),
        "--port-driver=slirp4netns".into(),
        "-p".into(),
        format!("127.0.0.1:{hp_tcp}:8080/tcp"),
    ];
    if !case.default_state_dir {
        args.push(format!("--state-dir={}", state.display()));
    }
    if case.disable_host_loopback {
        args.push("--disable-host-loopback".into());
    }
    if case.sandbox {
        args.push("--slirp4netns-sandbox=true".into());
        args.push("--slirp4netns-seccomp=true".into());
    }
    args.push("sh".into());
    args.push(child.to_string_lossy().into_owned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = user.base.join("rootlesskit.log");
    let mut c = user.command(&host, false, &rk.to_string_lossy(), &argv);
    let mut rkp = BgChild::start(&mut c, &log);
    let rk_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_file(&out.join("pid"), Duration::from_secs(60), || {
        rkp.try_wait().map(|st| {
            format!(
                "rootlesskit ({case:?}) exited ({st}) before its child was up; \
                 its output:\n{}",
                rk_log()
            )
        })
    });

    // the engine, as rootlesskit ran it.
    let engines = user.procs_of(&engine.to_string_lossy());
    assert_eq!(
        engines.len(),
        1,
        "one usernet process of the user expected: {engines:?}\nrootlesskit: {}",
        rk_log()
    );
    let (epid, eargs) = engines[0].clone();
    let ejoined = eargs.join(" ");
    assert!(
        ejoined.contains("--mtu 65520") && ejoined.contains("-r 3") && ejoined.ends_with(" tap0"),
        "rootlesskit's engine command line: {ejoined}"
    );
    assert_eq!(
        ejoined.contains("--disable-host-loopback"),
        case.disable_host_loopback,
        "--disable-host-loopback passed iff asked: {ejoined}"
    );
    for f in ["--enable-sandbox", "--enable-seccomp"] {
        assert_eq!(
            ejoined.contains(f),
            case.sandbox,
            "{f} passed iff asked: {ejoined}"
        );
    }
    if case.sandbox {
        let entries = root_entries(epid);
        assert!(
            !entries.is_empty() && !entries.contains("usr") && !entries.contains("home"),
            "rootlesskit's sandboxed engine should not see the host's filesystem: \
             its root holds {entries:?}"
        );
        let st = std::fs::read_to_string(format!("/proc/{epid}/status")).unwrap_or_default();
        assert!(
            st.lines()
                .any(|l| l.starts_with("Seccomp:") && l.contains('2')),
            "rootlesskit's engine has no seccomp filter"
        );
    }

    // inside: tap0 configured by rootlesskit, host loopback, outside.
    let addr = read_trim(&out.join("addr"));
    assert!(
        addr.contains("10.0.2.100/24"),
        "tap0 inside rootlesskit: {addr}"
    );
    let lo_rc = read_trim(&out.join("lo.rc"));
    if case.disable_host_loopback {
        // curl's exit 7: the connection was refused (not a 10 s time-out, 28).
        assert_eq!(
            lo_rc,
            "7",
            "with --disable-host-loopback, curl http://10.0.2.2:{}/ inside rootlesskit \
             should be refused (curl exit 7); curl said: {}",
            lo_srv.port(),
            read_trim(&out.join("lo.err"))
        );
        assert_eq!(
            lo_srv.accepted(),
            0,
            "with --disable-host-loopback the host's loopback server got a connection"
        );
    } else {
        let body = std::fs::read(out.join("lo.body")).unwrap_or_default();
        assert!(
            lo_rc == "0" && sha256_hex(&body) == want_lo,
            "curl http://10.0.2.2:{}/blob inside rootlesskit: exit {lo_rc}, {} bytes \
             ({}); engine/rootlesskit: {}",
            lo_srv.port(),
            body.len(),
            read_trim(&out.join("lo.err")),
            rk_log()
        );
    }
    let out_rc = read_trim(&out.join("out.rc"));
    let body = std::fs::read(out.join("out.body")).unwrap_or_default();
    assert!(
        out_rc == "0" && sha256_hex(&body) == want_out,
        "curl http://198.51.100.1:{}/blob inside rootlesskit: exit {out_rc}, {} bytes ({})",
        out_srv.port(),
        body.len(),
        read_trim(&out.join("out.err"))
    );

    // outside → inside: servers in rootlesskit's network namespace.
    let cpid = read_trim(&out.join("pid"));
    let netns = PathBuf::from(format!("/proc/{cpid}/ns/net"));
    let tl = in_netns(&netns, || {
        std::net::TcpListener::bind("0.0.0.0:8080").expect("bind 8080 inside rootlesskit")
    });
    let _tsrv = TcpServer::start(tl, echo_handler);
    let us = in_netns(&netns, || {
        UdpSocket::bind("0.0.0.0:8081").expect("bind udp 8081 inside rootlesskit")
    });
    let _usrv = UdpEcho::start(us);
    host_echo(
        &host,
        SocketAddr::from(([127, 0, 0, 1], hp_tcp)),
        73,
        BLOB_LEN,
    )
    .unwrap_or_else(|e| {
        panic!(
            "TCP port published with rootlesskit -p ({case:?}): {e}; rootlesskit: {}",
            rk_log()
        )
    });
    let statedir = read_trim(&out.join("statedir"));
    let sock = format!("{statedir}/api.sock");
    let ctl = |a: &[&str]| -> Output {
        let mut all = vec!["--socket", sock.as_str()];
        all.extend_from_slice(a);
        let mut c = user.command(&host, false, &rkctl.to_string_lossy(), &all);
        run_timeout(&mut c, Duration::from_secs(20))
    };
    let spec = format!("127.0.0.1:{hp_udp}:8081/udp");
    let o = ctl(&["add-ports", &spec]);
    assert!(
        o.status.success(),
        "rootlessctl add-ports {spec}: {}{}\nrootlesskit: {}",
        text(&o.stdout),
        text(&o.stderr),
        rk_log()
    );
    host_udp_echo(&host, SocketAddr::from(([127, 0, 0, 1], hp_udp))).unwrap_or_else(|e| {
        panic!(
            "UDP port added with rootlessctl ({case:?}; the replies must come back even \
             with --disable-host-loopback): {e}; rootlesskit: {}",
            rk_log()
        )
    });
    let o = ctl(&["list-ports", "--json"]);
    let listed = text(&o.stdout);
    assert!(
        o.status.success()
            && listed.contains(&format!("\"parentPort\":{hp_tcp}"))
            && listed.contains(&format!("\"parentPort\":{hp_udp}")),
        "rootlessctl list-ports should show both ports: {listed}{}",
        text(&o.stderr)
    );
    // the guest side stays reachable while rootlesskit runs.
    assert!(
        rkp.try_wait().is_none(),
        "rootlesskit exited during the test: {}",
        rk_log()
    );
    // rootlesskit's own shutdown: SIGTERM; the engine must go with it.
    let pid = libc::pid_t::try_from(rkp.pid).expect("pid");
    // SAFETY: kill(2) on the rootlesskit process this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    while rkp.try_wait().is_none() && start.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    while Path::new(&format!("/proc/{epid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{epid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the engine (pid {epid}) is still running 10 s after rootlesskit got SIGTERM"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// rootlesskit, host loopback allowed, no sandbox.
#[test]
fn rootlesskit_host_loopback_tcp_udp_ports() {
    rootlesskit_case(RkCase {
        disable_host_loopback: false,
        sandbox: false,
        default_state_dir: false,
    });
}

/// rootlesskit with `--disable-host-loopback`: 10.0.2.2 refused, the rest works (UDP
/// replies through a forward included).
#[test]
fn rootlesskit_disable_host_loopback() {
    rootlesskit_case(RkCase {
        disable_host_loopback: true,
        sandbox: false,
        default_state_dir: false,
    });
}

/// rootlesskit with `--slirp4netns-sandbox=true --slirp4netns-seccomp=true` and
/// `--disable-host-loopback` (state directory under XDG_RUNTIME_DIR).
#[test]
fn rootlesskit_sandbox_seccomp_disable_host_loopback() {
    rootlesskit_case(RkCase {
        disable_host_loopback: true,
        sandbox: true,
        default_state_dir: false,
    });
}

/// rootlesskit with the sandbox flags and its DEFAULT state directory
/// (`/tmp/rootlesskitNNN`, where the engine's API socket then lives).
#[test]
fn rootlesskit_sandbox_seccomp_default_state_dir() {
    rootlesskit_case(RkCase {
        disable_host_loopback: false,
        sandbox: true,
        default_state_dir: true,
    });
}

// ---------------------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------------------

const IMAGE: &str = "localhost/usernet-busybox:test";

/// The user, its podman configuration (vfs storage, no cgroups, file events,
/// `network_cmd_path` = the engine, slirp4netns as the rootless network) and a busybox
/// image imported from a tarball made here (busybox, its shared libraries if any, the
/// applet links, /www/blob).
struct Podman {
    /// Its processes (conmon, the pause process, engines) are killed and the user
    /// removed when it drops; nothing of podman lives outside the user's base dir.
    user: TestUser,
    podman: PathBuf,
}

impl Podman {
    fn new(host: &HostNs) -> Podman {
        let podman = require_tool("podman");
        for t in ["crun", "conmon", "catatonit", "busybox", "tar", "ldd"] {
            require_tool(t);
        }
        let user = TestUser::new();
        let cfg = user.home.join(".config/containers");
        std::fs::create_dir_all(&cfg).expect("mkdir config");
        std::fs::write(
            cfg.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}/storage\"\n\
                 runroot = \"{}/containers\"\n",
                user.home.display(),
                user.runtime.display()
            ),
        )
        .expect("storage.conf");
        std::fs::write(
            cfg.join("containers.conf"),
            format!(
                "[containers]\ncgroups = \"disabled\"\n\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 network_cmd_path = \"{}\"\n\n\
                 [network]\ndefault_rootless_network_cmd = \"slirp4netns\"\n",
                engine_bin().display()
            ),
        )
        .expect("containers.conf");
        chown_r(&user.home, user.uid);
        // the image's root filesystem.
        let root = user.base.join("rootfs");
        let bb = require_tool("busybox");
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "www", "run"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir rootfs");
        }
        std::fs::copy(&bb, root.join("bin/busybox")).expect("copy busybox");
        let ldd = Command::new("ldd").arg(&bb).output().expect("ldd");
        for lib in text(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dst = root.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().expect("parent")).expect("mkdir lib");
            std::fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
        for a in [
            "sh",
            "ip",
            "wget",
            "httpd",
            "sha256sum",
            "sleep",
            "cat",
            "grep",
            "seq",
            "echo",
            "nc",
            "timeout",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("symlink");
        }
        std::fs::write(root.join("www/blob"), pattern(81, BLOB_LEN)).expect("blob");
        let tarball = user.base.join("rootfs.tar");
        run_ok(Command::new("tar").args([
            "-C",
            &root.to_string_lossy(),
            "-cf",
            &tarball.to_string_lossy(),
            ".",
        ]));
        chown_r(&tarball, user.uid);
        let p = Podman { user, podman };
        let o = p.run(
            host,
            &["import", &tarball.to_string_lossy(), IMAGE],
            Duration::from_secs(120),
        );
        assert!(
            o.status.success(),
            "podman import of the busybox tarball failed: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        p
    }

    fn run(&self, host: &HostNs, args: &[&str], limit: Duration) -> Output {
        let mut c = self
            .user
            .command(host, true, &self.podman.to_string_lossy(), args);
        run_timeout(&mut c, limit)
    }

    /// `podman run --rm --network NET IMAGE sh -c SCRIPT` (60 s deadline).
    fn sh(&self, host: &HostNs, net: &str, script: &str) -> Output {
        self.run(
            host,
            &["run", "--rm", "--network", net, IMAGE, "sh", "-c", script],
            Duration::from_secs(60),
        )
    }
}

/// Rootless podman: `--network slirp4netns:allow_host_loopback=true` reaches a server on
/// the host namespace's loopback through 10.0.2.2 (checksummed); with
/// `allow_host_loopback=false`, and with podman's default (false), it is refused; the
/// outside (198.51.100.1) is reached in every case. The engine got podman's flags
/// (`--enable-sandbox --enable-seccomp --enable-ipv6 -c -e 3 -r 4 --netns-type=path`).
#[test]
fn podman_host_loopback_allowed_and_refused() {
    let _g = serial();
    let t0 = Instant::now();
    let host = HostNs::new();
    let pm = Podman::new(&host);
    let lo = host.tcp_server("127.0.0.1:0", http_handler(82, BLOB_LEN));
    let outside = host.tcp_server("198.51.100.1:0", http_handler(83, BLOB_LEN));
    let want_lo = sha256_hex(&pattern(82, BLOB_LEN));
    let want_out = sha256_hex(&pattern(83, BLOB_LEN));
    let script = format!(
        "timeout 20 wget -q -O - http://10.0.2.2:{}/blob | sha256sum; \
         timeout 20 wget -q -O - http://198.51.100.1:{}/blob | sha256sum",
        lo.port(),
        outside.port()
    );
    let o = pm.sh(&host, "slirp4netns:allow_host_loopback=true", &script);
    let so = text(&o.stdout);
    assert!(
        o.status.success() && so.contains(&want_lo) && so.contains(&want_out),
        "podman run --network slirp4netns:allow_host_loopback=true: the container should \
         download both blobs (10.0.2.2 → host loopback, 198.51.100.1); exit {}, out: \
         {so}; err: {}",
        o.status,
        text(&o.stderr)
    );
    assert_eq!(lo.accepted(), 1, "the loopback server saw one connection");
    for net in ["slirp4netns:allow_host_loopback=false", "slirp4netns"] {
        let o = pm.sh(
            &host,
            net,
            &format!(
                "if timeout 8 wget -q -O /dev/null http://10.0.2.2:{}/blob; then echo LO=reached; \
                 else echo LO=refused; fi; \
                 timeout 20 wget -q -O - http://198.51.100.1:{}/blob | sha256sum",
                lo.port(),
                outside.port()
            ),
        );
        let so = text(&o.stdout);
        assert!(
            o.status.success() && so.contains("LO=refused") && so.contains(&want_out),
            "podman run --network {net}: 10.0.2.2 must be refused and 198.51.100.1 \
             reached; exit {}, out: {so}; err: {}",
            o.status,
            text(&o.stderr)
        );
    }
    assert_eq!(
        lo.accepted(),
        1,
        "with allow_host_loopback=false the host's loopback server got a connection"
    );
    eprintln!(
        "podman_host_loopback_allowed_and_refused: {:?}",
        t0.elapsed()
    );
}

/// Rootless podman: `-p 127.0.0.1:HP:8080` with `port_handler=slirp4netns` (podman
/// calls `add_hostfwd` on the engine's API socket) publishes busybox httpd in the
/// container (checksummed download from the host namespace), as does podman's default
/// port handler (rootlessport); the engine runs with podman's flags, sandboxed and with
/// seccomp; when the container is removed the engine exits (its exit fd).
#[test]
fn podman_publish_port_sandboxed_engine() {
    let _g = serial();
    let t0 = Instant::now();
    require_tool("curl");
    let host = HostNs::new();
    let pm = Podman::new(&host);
    let want = sha256_hex(&pattern(81, BLOB_LEN));
    let engine = engine_bin();
    for (name, net) in [
        ("web-s4nn", "slirp4netns:port_handler=slirp4netns"),
        ("web-rlp", "slirp4netns"),
    ] {
        let hp = host.free_port("127.0.0.1");
        let o = pm.run(
            &host,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                net,
                "-p",
                &format!("127.0.0.1:{hp}:8080"),
                IMAGE,
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/www",
            ],
            Duration::from_secs(60),
        );
        assert!(
            o.status.success(),
            "podman run -d -p 127.0.0.1:{hp}:8080 --network {net}: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        // the engine as podman runs it.
        let engines = pm.user.procs_of(&engine.to_string_lossy());
        assert_eq!(
            engines.len(),
            1,
            "one engine for the container: {engines:?}"
        );
        let (epid, eargs) = engines[0].clone();
        let joined = eargs.join(" ");
        for f in [
            "--enable-sandbox",
            "--enable-seccomp",
            "--enable-ipv6",
            "--disable-host-loopback",
            "--mtu=65520",
            "-c",
            "-e 3",
            "-r 4",
            "--netns-type=path",
        ] {
            assert!(
                eargs.iter().any(|a| a == f) || joined.contains(&format!(" {f} ")),
                "podman should have passed {f}: {joined}"
            );
        }
        if net.contains("port_handler=slirp4netns") {
            assert!(
                joined.contains("--api-socket"),
                "with port_handler=slirp4netns podman passes --api-socket: {joined}"
            );
        }
        let entries = root_entries(epid);
        assert!(
            !entries.is_empty() && !entries.contains("usr") && !entries.contains("home"),
            "podman's sandboxed engine should not see the host's filesystem: its root \
             holds {entries:?}"
        );
        let st = std::fs::read_to_string(format!("/proc/{epid}/status")).unwrap_or_default();
        assert!(
            st.lines()
                .any(|l| l.starts_with("Seccomp:") && l.contains('2')),
            "podman's engine has no seccomp filter"
        );
        // the published port, from the host namespace (httpd may need a moment).
        let url = format!("http://127.0.0.1:{hp}/blob");
        let start = Instant::now();
        loop {
            let mut c = host.command("curl");
            c.args(["-sS", "--fail", "--max-time", "20", "-o", "-", &url]);
            let o = run_timeout(&mut c, Duration::from_secs(30));
            if o.status.success() && sha256_hex(&o.stdout) == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "curl {url} (published by podman with --network {net}): exit {}, {} bytes, \
                 {}",
                o.status,
                o.stdout.len(),
                text(&o.stderr)
            );
            thread::sleep(Duration::from_millis(300));
        }
        let o = pm.run(
            &host,
            &["rm", "-f", "-t", "0", name],
            Duration::from_secs(60),
        );
        assert!(
            o.status.success(),
            "podman rm -f {name}: {}",
            text(&o.stderr)
        );
        let start = Instant::now();
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{epid}/stat"))
                .map(|s| !s.contains(") Z"))
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the engine (pid {epid}) still runs 10 s after its container was removed"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // and the port is closed.
        let r = host.run(|| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], hp)),
                Duration::from_secs(2),
            )
        });
        assert!(
            r.is_err(),
            "port {hp} still open after the container went away"
        );
    }
    eprintln!("podman_publish_port_sandboxed_engine: {:?}", t0.elapsed());
}

/// Rootless podman's default IPv6 (`enable_ipv6=true`): the container's kernel gets an
/// address in fd00::/64 from the engine's router advertisement and downloads a blob from
/// 2001:db8:1::1 over IPv6 (checksummed).
#[test]
fn podman_default_ipv6() {
    let _g = serial();
    let t0 = Instant::now();
    let host = HostNs::new();
    let pm = Podman::new(&host);
    let srv = host.tcp_server("[2001:db8:1::1]:0", http_handler(84, BLOB_LEN));
    let want = sha256_hex(&pattern(84, BLOB_LEN));
    let script = format!(
        "for i in $(seq 100); do \
           if ip -6 addr show dev tap0 | grep -q 'inet6 fd00:.*scope global' && \
              ! ip -6 addr show dev tap0 | grep -q tentative; then break; fi; sleep 0.1; \
         done; ip -6 addr show dev tap0; ip -6 route; \
         timeout 20 wget -q -O - 'http://[2001:db8:1::1]:{}/blob' | sha256sum",
        srv.port()
    );
    for net in ["slirp4netns", "slirp4netns:enable_ipv6=true"] {
        let o = pm.sh(&host, net, &script);
        let so = text(&o.stdout);
        assert!(
            o.status.success() && so.contains("inet6 fd00:") && so.contains(&want),
            "podman run --network {net}: the container should get an fd00::/64 address and \
             download from [2001:db8:1::1] over IPv6; exit {}, out: {so}; err: {}",
            o.status,
            text(&o.stderr)
        );
    }
    eprintln!("podman_default_ipv6: {:?}", t0.elapsed());
}

/// Rootless podman publishes a UDP port with `port_handler=slirp4netns` (one
/// `add_hostfwd` with `"proto":"udp"`), while podman's default `--disable-host-loopback`
/// is on: datagrams from the host namespace's loopback reach a UDP echo inside the
/// container and the replies come back (slirp4netns 1.2.0 drops them: podman issue
/// #4586, compat.md §2.6).
#[test]
fn podman_publish_udp_with_host_loopback_disabled() {
    let _g = serial();
    let t0 = Instant::now();
    let host = HostNs::new();
    let pm = Podman::new(&host);
    let hp = free_udp_port(&host);
    let o = pm.run(
        &host,
        &[
            "run",
            "-d",
            "--name",
            "udp",
            "--network",
            "slirp4netns:port_handler=slirp4netns",
            "-p",
            &format!("127.0.0.1:{hp}:9000/udp"),
            IMAGE,
            "sleep",
            "300",
        ],
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "podman run -d -p 127.0.0.1:{hp}:9000/udp: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let engines = pm.user.procs_of(&engine_bin().to_string_lossy());
    assert_eq!(engines.len(), 1, "one engine: {engines:?}");
    assert!(
        engines[0].1.iter().any(|a| a == "--disable-host-loopback"),
        "podman's default passes --disable-host-loopback: {:?}",
        engines[0].1
    );
    let o = pm.run(
        &host,
        &["inspect", "-f", "{{.State.Pid}}", "udp"],
        Duration::from_secs(30),
    );
    let cpid = text(&o.stdout).trim().to_string();
    assert!(
        o.status.success() && cpid.parse::<u32>().is_ok_and(|p| p > 0),
        "podman inspect udp: {cpid} {}",
        text(&o.stderr)
    );
    // the UDP echo runs in the container's network namespace (bound from here).
    let sock = in_netns(&PathBuf::from(format!("/proc/{cpid}/ns/net")), || {
        UdpSocket::bind("0.0.0.0:9000").expect("bind udp 9000 in the container")
    });
    let echo = UdpEcho::start(sock);
    host_udp_echo(&host, SocketAddr::from(([127, 0, 0, 1], hp))).unwrap_or_else(|e| {
        panic!("UDP published by podman (port_handler=slirp4netns, --disable-host-loopback): {e}")
    });
    assert!(echo.count() >= 3, "the echo saw {} datagrams", echo.count());
    drop(echo);
    let o = pm.run(
        &host,
        &["rm", "-f", "-t", "0", "udp"],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "podman rm -f udp: {}", text(&o.stderr));
    eprintln!(
        "podman_publish_udp_with_host_loopback_disabled: {:?}",
        t0.elapsed()
    );
}
