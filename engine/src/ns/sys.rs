//! Thin wrappers over the raw system calls that the forked helper children use.
//!
//! Everything here is safe to call between `fork()` and `exec()`/`_exit()` in a child of a
//! multithreaded process: no heap allocation, no locks, no stdio, no panics on any input.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use libc::{c_char, c_int, c_short, c_ulong, c_ushort, c_void};
use nix::errno::Errno;

/// `struct rtentry` from `<linux/route.h>` (the kernel's layout; `libc` only has it for glibc).
#[repr(C)]
pub(super) struct RtEntry {
    pub rt_pad1: c_ulong,
    pub rt_dst: libc::sockaddr,
    pub rt_gateway: libc::sockaddr,
    pub rt_genmask: libc::sockaddr,
    pub rt_flags: c_ushort,
    pub rt_pad2: c_short,
    pub rt_pad3: c_ulong,
    pub rt_pad4: *mut c_void,
    pub rt_metric: c_short,
    pub rt_dev: *mut c_char,
    pub rt_mtu: c_ulong,
    pub rt_window: c_ulong,
    pub rt_irtt: c_ushort,
}

/// A `sockaddr` holding the IPv4 address `ip` (port 0), as the `SIOCSIF*` ioctls want it.
pub(super) fn sockaddr_v4(ip: [u8; 4]) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    // sa_data[0..2] is the port (0); sa_data[2..6] is sin_addr in network order.
    for (dst, src) in sa_data.iter_mut().skip(2).zip(ip) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// A zeroed `ifreq` whose name is `name` (already NUL-terminated, at most IFNAMSIZ bytes).
pub(super) fn ifreq_named(name: &[c_char; libc::IFNAMSIZ]) -> libc::ifreq {
    // SAFETY: `ifreq` is a plain C struct (a name array and a union of integers, sockaddrs
    // and a raw pointer); the all-zero bit pattern is a valid value for every field.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_name = *name;
    ifr
}

/// `ioctl(fd, req, arg)` for a request whose argument is a pointer to a `T`.
///
/// # Safety
/// `req` must be an ioctl that reads and/or writes at most one `T` through its argument
/// and has no other memory effects on this process.
pub(super) unsafe fn ioctl_with<T>(
    fd: BorrowedFd<'_>,
    req: libc::Ioctl,
    arg: &mut T,
) -> Result<c_int, Errno> {
    // SAFETY: `fd` is a live descriptor; by this function's contract the kernel accesses at
    // most one `T` at `arg`, which is a valid, exclusively borrowed `T`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    Errno::result(r)
}

/// `open(path, flags | O_CLOEXEC)`.
pub(super) fn open(path: &CStr, flags: c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: `path` is a valid NUL-terminated string; open(2) does not retain it.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    let fd = Errno::result(fd)?;
    // SAFETY: open(2) just returned this descriptor, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Write all of `data` to `fd` in one `write(2)` (the procfs and sysctl files we write
/// want the whole value in a single write).
pub(super) fn write_once(fd: BorrowedFd<'_>, data: &[u8]) -> Result<(), Errno> {
    // SAFETY: `data` is a valid readable buffer of `data.len()` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    let n = Errno::result(n)?;
    if n as usize == data.len() {
        Ok(())
    } else {
        Err(Errno::EIO)
    }
}

/// Open `path` write-only and write `data` to it in one `write(2)`.
pub(super) fn write_file(path: &CStr, data: &[u8]) -> Result<(), Errno> {
    let fd = open(path, libc::O_WRONLY)?;
    write_once(fd.as_fd(), data)
}

/// Read up to `buf.len()` bytes (retrying on EINTR). Returns the byte count (0 = EOF).
pub(super) fn read_retry(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(n) => return Ok(n as usize),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Send `data` as one message on the socket `sock`, with `fd` attached as SCM_RIGHTS if given.
pub(super) fn send_with_fd(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<RawFd>,
) -> Result<(), Errno> {
    match fd {
        Some(fd) => send_with_fds(sock, data, &[fd]),
        None => send_with_fds(sock, data, &[]),
    }
}

/// Most descriptors [`send_with_fds`] attaches to one message.
pub(super) const MAX_FDS_PER_MESSAGE: usize = 16;

/// Send `data` as one message on the socket `sock`, with `fds` (at most
/// [`MAX_FDS_PER_MESSAGE`]) attached as SCM_RIGHTS. The control buffer lives on the stack
/// (no allocation, unlike `nix::sys::socket::sendmsg`).
pub(super) fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    // Room for one cmsghdr carrying MAX_FDS_PER_MESSAGE ints, with alignment slack.
    #[repr(C, align(8))]
    struct CmsgBuf([u8; 128]);
    let mut cbuf = CmsgBuf([0; 128]);
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(Errno::EMSGSIZE);
    }

    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut c_void,
        iov_len: data.len(),
    };
    // SAFETY: `msghdr` is a plain C struct; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size from its argument.
        let space = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        if space > cbuf.0.len() {
            return Err(Errno::EMSGSIZE);
        }
        msg.msg_control = cbuf.0.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, 8-aligned bytes owned by `cbuf`,
        // which is large enough for one header and `fds.len()` ints (checked above), so
        // CMSG_FIRSTHDR returns a valid pointer into it and CMSG_DATA points at room for
        // every int written below.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            if cmsg.is_null() {
                return Err(Errno::EINVAL);
            }
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<c_int>();
            for (i, fd) in fds.iter().enumerate() {
                std::ptr::write_unaligned(data.add(i), *fd);
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (describing `data`) and, if set, at `cbuf`; all of
        // them outlive this call. sendmsg(2) only reads them.
        let r = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match Errno::result(r) {
            Ok(n) if n as usize == data.len() => return Ok(()),
            Ok(_) => return Err(Errno::EMSGSIZE),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Terminate the calling (child) process immediately, without running atexit handlers or
/// flushing stdio buffers that belong to the parent.
pub(super) fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit(2) is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Reset every caught signal to its default action, keeping ignored ones ignored (what
/// `posix_spawn` does with `POSIX_SPAWN_SETSIGDEF`). A forked child must not run the
/// parent's handlers: they would act on the parent's state (e.g. write to its self-pipe).
pub(super) fn reset_caught_signals() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `sigaction` is a plain C struct; all-zero is a valid value.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: querying the disposition (null new action) only writes `old`, a valid local.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            // SAFETY: signal(2) with SIG_DFL is async-signal-safe and touches no memory.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}
