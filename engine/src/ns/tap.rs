//! Opening the TAP device and configuring it with ioctls.
//!
//! [`TapPlan::new`] runs in the parent and precomputes everything (validated name, addresses,
//! masks). [`open_and_configure`] runs in the forked helper child, inside the target namespace,
//! and only issues system calls.

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_char, c_int, c_short};
use nix::errno::Errno;

use super::report::{Failure, Step};
use super::sys::{self, RtEntry};
use super::{IfConfig, NsError};

/// Interface configuration, precomputed for the child.
pub(super) struct ConfPlan {
    addr: [u8; 4],
    mask: [u8; 4],
    gateway: [u8; 4],
    mtu: c_int,
    mac: Option<[u8; 6]>,
}

/// Everything the helper child needs to open (and maybe configure) the TAP.
pub(super) struct TapPlan {
    /// NUL-terminated interface name.
    name: [c_char; libc::IFNAMSIZ],
    conf: Option<ConfPlan>,
    vnet_hdr: bool,
}

/// Check a TAP interface name the way the kernel will (`dev_valid_name`), so that the user
/// gets a sentence instead of EINVAL.
pub(super) fn interface_name(name: &str) -> Result<[c_char; libc::IFNAMSIZ], NsError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !bytes
            .iter()
            .any(|&b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if !valid {
        return Err(NsError::InvalidTapName {
            name: name.to_owned(),
        });
    }
    let mut out = [0 as c_char; libc::IFNAMSIZ];
    for (dst, &src) in out.iter_mut().zip(bytes) {
        *dst = src as c_char;
    }
    Ok(out)
}

impl TapPlan {
    pub(super) fn new(name: &str, cfg: &IfConfig) -> Result<Self, NsError> {
        let name = interface_name(name)?;
        let conf = if cfg.configure {
            if cfg.prefix_len > 32 {
                return Err(NsError::InvalidPrefixLen {
                    prefix_len: cfg.prefix_len,
                });
            }
            if !(68..=65535).contains(&cfg.mtu) {
                return Err(NsError::InvalidMtu { mtu: cfg.mtu });
            }
            let mask = if cfg.prefix_len == 0 {
                0u32
            } else {
                u32::MAX << (32 - u32::from(cfg.prefix_len))
            };
            Some(ConfPlan {
                addr: cfg.addr.octets(),
                mask: mask.to_be_bytes(),
                gateway: cfg.gateway.octets(),
                mtu: cfg.mtu as c_int,
                mac: cfg.mac,
            })
        } else {
            None
        };
        Ok(TapPlan {
            name,
            conf,
            vnet_hdr: cfg.vnet_hdr,
        })
    }
}

/// The open TAP, as seen from inside the namespace.
pub(super) struct TapReady {
    pub fd: OwnedFd,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

fn fail(step: Step) -> impl FnOnce(Errno) -> Failure {
    move |errno| Failure::new(step, errno)
}

fn get_flags(sock: BorrowedFd<'_>, name: &[c_char; libc::IFNAMSIZ]) -> Result<c_short, Errno> {
    let mut ifr = sys::ifreq_named(name);
    // SAFETY: SIOCGIFFLAGS reads and writes one `ifreq`.
    unsafe { sys::ioctl_with(sock, libc::SIOCGIFFLAGS, &mut ifr) }?;
    // SAFETY: after a successful SIOCGIFFLAGS the kernel has stored the flags in `ifru_flags`
    // (and any bit pattern is a valid c_short).
    Ok(unsafe { ifr.ifr_ifru.ifru_flags })
}

fn set_flags(
    sock: BorrowedFd<'_>,
    name: &[c_char; libc::IFNAMSIZ],
    flags: c_short,
) -> Result<(), Errno> {
    let mut ifr = sys::ifreq_named(name);
    ifr.ifr_ifru.ifru_flags = flags;
    // SAFETY: SIOCSIFFLAGS reads one `ifreq`.
    unsafe { sys::ioctl_with(sock, libc::SIOCSIFFLAGS, &mut ifr) }.map(drop)
}

fn set_up(sock: BorrowedFd<'_>, name: &[c_char; libc::IFNAMSIZ]) -> Result<(), Errno> {
    let flags = get_flags(sock, name)?;
    set_flags(sock, name, flags | libc::IFF_UP as c_short)
}

fn set_addr(
    sock: BorrowedFd<'_>,
    name: &[c_char; libc::IFNAMSIZ],
    req: libc::Ioctl,
    ip: [u8; 4],
) -> Result<(), Errno> {
    let mut ifr = sys::ifreq_named(name);
    ifr.ifr_ifru.ifru_addr = sys::sockaddr_v4(ip);
    // SAFETY: `req` is SIOCSIFADDR or SIOCSIFNETMASK, which read one `ifreq`.
    unsafe { sys::ioctl_with(sock, req, &mut ifr) }.map(drop)
}

/// Read the hardware address of `name` (SIOCGIFHWADDR) through `fd`: an AF_INET socket in the
/// interface's namespace, or the TAP fd itself (the tun driver answers it too).
pub(super) fn read_mac(
    fd: BorrowedFd<'_>,
    name: &[c_char; libc::IFNAMSIZ],
) -> Result<[u8; 6], Errno> {
    let mut ifr = sys::ifreq_named(name);
    // SAFETY: SIOCGIFHWADDR reads and writes one `ifreq`.
    unsafe { sys::ioctl_with(fd, libc::SIOCGIFHWADDR, &mut ifr) }?;
    // SAFETY: after a successful SIOCGIFHWADDR `ifru_hwaddr` is the initialised member.
    let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(hw.sa_data) {
        *dst = src as u8;
    }
    Ok(mac)
}

fn configure(
    sock: BorrowedFd<'_>,
    name: &[c_char; libc::IFNAMSIZ],
    conf: &ConfPlan,
) -> Result<(), Failure> {
    let mut lo = [0 as c_char; libc::IFNAMSIZ];
    lo[0] = b'l' as c_char;
    lo[1] = b'o' as c_char;
    set_up(sock, &lo).map_err(fail(Step::LoopbackUp))?;

    let mut ifr = sys::ifreq_named(name);
    ifr.ifr_ifru.ifru_mtu = conf.mtu;
    // SAFETY: SIOCSIFMTU reads one `ifreq`.
    unsafe { sys::ioctl_with(sock, libc::SIOCSIFMTU, &mut ifr) }.map_err(fail(Step::SetMtu))?;

    if let Some(mac) = conf.mac {
        // The hardware address can only change while the interface is down.
        let flags = get_flags(sock, name).map_err(fail(Step::SetMac))?;
        if flags & libc::IFF_UP as c_short != 0 {
            set_flags(sock, name, flags & !(libc::IFF_UP as c_short))
                .map_err(fail(Step::SetMac))?;
        }
        let mut ifr = sys::ifreq_named(name);
        let mut sa_data = [0 as c_char; 14];
        for (dst, src) in sa_data.iter_mut().zip(mac) {
            *dst = src as c_char;
        }
        ifr.ifr_ifru.ifru_hwaddr = libc::sockaddr {
            sa_family: libc::ARPHRD_ETHER,
            sa_data,
        };
        // SAFETY: SIOCSIFHWADDR reads one `ifreq`.
        unsafe { sys::ioctl_with(sock, libc::SIOCSIFHWADDR, &mut ifr) }
            .map_err(fail(Step::SetMac))?;
    }

    // 0.0.0.0: bring the link up and leave addressing to the guest (its DHCP client).
    if conf.addr == [0; 4] {
        return set_up(sock, name).map_err(fail(Step::InterfaceUp));
    }
    set_addr(sock, name, libc::SIOCSIFADDR, conf.addr).map_err(fail(Step::SetAddress))?;
    set_addr(sock, name, libc::SIOCSIFNETMASK, conf.mask).map_err(fail(Step::SetNetmask))?;
    set_up(sock, name).map_err(fail(Step::InterfaceUp))?;
    // 0.0.0.0: no default route (a network that routes nowhere).
    if conf.gateway == [0; 4] {
        return Ok(());
    }

    // SAFETY: `RtEntry` is a plain C struct of integers, sockaddrs and raw pointers; all-zero
    // (null pointers included) is a valid value.
    let mut rt: RtEntry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sys::sockaddr_v4([0; 4]);
    rt.rt_genmask = sys::sockaddr_v4([0; 4]);
    rt.rt_gateway = sys::sockaddr_v4(conf.gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // The kernel only reads the name (it copies it with strncpy_from_user).
    rt.rt_dev = name.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads one `rtentry` and the NUL-terminated string at `rt_dev`, which
    // points into `name`, alive for the whole call.
    match unsafe { sys::ioctl_with(sock, libc::SIOCADDRT, &mut rt) } {
        Ok(_) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(Failure::new(Step::AddRoute, e)),
    }
}

/// Child side: open `/dev/net/tun`, create/attach the TAP, configure it if asked, and read
/// back its MAC and ifindex. Must run inside the target network namespace.
pub(super) fn open_and_configure(plan: &TapPlan) -> Result<TapReady, Failure> {
    let fd =
        sys::open(c"/dev/net/tun", libc::O_RDWR | libc::O_NONBLOCK).map_err(fail(Step::OpenTun))?;
    let mut ifr = sys::ifreq_named(&plan.name);
    let vnet = if plan.vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | vnet) as c_short;
    // SAFETY: TUNSETIFF reads (and writes back the name into) one `ifreq`.
    unsafe { sys::ioctl_with(fd.as_fd(), libc::TUNSETIFF, &mut ifr) }
        .map_err(fail(Step::CreateTap))?;

    // SAFETY: socket(2) takes only integer arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let s = Errno::result(s).map_err(fail(Step::ConfigSocket))?;
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };

    if let Some(conf) = &plan.conf {
        configure(sock.as_fd(), &plan.name, conf)?;
    }

    let mac = read_mac(sock.as_fd(), &plan.name).map_err(fail(Step::ReadMac))?;
    let mut ifr = sys::ifreq_named(&plan.name);
    // SAFETY: SIOCGIFINDEX reads and writes one `ifreq`.
    unsafe { sys::ioctl_with(sock.as_fd(), libc::SIOCGIFINDEX, &mut ifr) }
        .map_err(fail(Step::ReadIfindex))?;
    // SAFETY: after a successful SIOCGIFINDEX `ifru_ifindex` is the initialised member.
    let ifindex = unsafe { ifr.ifr_ifru.ifru_ifindex } as u32;
    Ok(TapReady { fd, mac, ifindex })
}
