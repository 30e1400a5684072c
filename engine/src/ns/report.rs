//! The fixed-size message a helper child sends back to its parent over the socket pair.
//!
//! The child cannot safely format strings (it may be the fork of a multithreaded process), so
//! it reports *which step* failed and the `errno`; the parent, which knows the PID, paths, names
//! and addresses involved, turns that into a sentence ([`Failure::into_error`]).

use std::net::Ipv4Addr;

use nix::errno::Errno;

use super::NsError;

/// Length in bytes of every report on the wire.
pub(super) const REPORT_LEN: usize = 32;

const KIND_READY: u8 = 1;
const KIND_FAILED: u8 = 2;

/// Each place in a helper child that can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Step {
    JoinUserns = 1,
    JoinNetns,
    OpenTun,
    CreateTap,
    ConfigSocket,
    LoopbackUp,
    SetMtu,
    SetMac,
    SetAddress,
    SetNetmask,
    InterfaceUp,
    AddRoute,
    ReadMac,
    ReadIfindex,
    SendFd,
    Unshare,
    SetGroups,
    UidMap,
    GidMap,
    Exec,
}

impl Step {
    const ALL: [Step; 20] = [
        Step::JoinUserns,
        Step::JoinNetns,
        Step::OpenTun,
        Step::CreateTap,
        Step::ConfigSocket,
        Step::LoopbackUp,
        Step::SetMtu,
        Step::SetMac,
        Step::SetAddress,
        Step::SetNetmask,
        Step::InterfaceUp,
        Step::AddRoute,
        Step::ReadMac,
        Step::ReadIfindex,
        Step::SendFd,
        Step::Unshare,
        Step::SetGroups,
        Step::UidMap,
        Step::GidMap,
        Step::Exec,
    ];

    fn from_u8(v: u8) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u8 == v)
    }
}

/// A failed step in the child, with the `errno` it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Failure {
    pub step: Step,
    pub errno: Errno,
}

impl Failure {
    pub(super) fn new(step: Step, errno: Errno) -> Self {
        Failure { step, errno }
    }
}

/// Non-fatal outcomes of best-effort steps in the `run` child (errno values, 0 = success).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Warnings {
    /// errno of writing `net.ipv4.ping_group_range` (0 = success).
    pub ping_range: i32,
    /// The full range was refused and only "0 0" (the mapped group) could be set.
    pub ping_range_narrowed: bool,
    /// errno of making the mount tree private (0 = success or not attempted).
    pub mount_private: i32,
    /// errno of bind-mounting the resolv.conf file (0 = success or not attempted).
    pub resolv_conf: i32,
}

/// What the child says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// The TAP is open (its fd travels as SCM_RIGHTS with this message).
    Ready {
        mac: [u8; 6],
        ifindex: u32,
        warnings: Warnings,
    },
    Failed(Failure),
}

impl Report {
    pub(super) fn encode(&self) -> [u8; REPORT_LEN] {
        let mut b = [0u8; REPORT_LEN];
        match *self {
            Report::Ready {
                mac,
                ifindex,
                warnings,
            } => {
                b[0] = KIND_READY;
                b[2] = u8::from(warnings.ping_range_narrowed);
                b[4..10].copy_from_slice(&mac);
                b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
                b[16..20].copy_from_slice(&warnings.ping_range.to_ne_bytes());
                b[20..24].copy_from_slice(&warnings.mount_private.to_ne_bytes());
                b[24..28].copy_from_slice(&warnings.resolv_conf.to_ne_bytes());
            }
            Report::Failed(f) => {
                b[0] = KIND_FAILED;
                b[1] = f.step as u8;
                b[4..8].copy_from_slice(&(f.errno as i32).to_ne_bytes());
            }
        }
        b
    }

    pub(super) fn decode(b: &[u8]) -> Option<Report> {
        let b: &[u8; REPORT_LEN] = b.try_into().ok()?;
        let i32_at = |o: usize| i32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        match b[0] {
            KIND_READY => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&b[4..10]);
                Some(Report::Ready {
                    mac,
                    ifindex: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
                    warnings: Warnings {
                        ping_range: i32_at(16),
                        ping_range_narrowed: b[2] != 0,
                        mount_private: i32_at(20),
                        resolv_conf: i32_at(24),
                    },
                })
            }
            KIND_FAILED => Some(Report::Failed(Failure {
                step: Step::from_u8(b[1])?,
                errno: Errno::from_raw(i32_at(4)),
            })),
            _ => None,
        }
    }
}

/// What the parent knows about the operation, to word the error.
pub(super) struct ErrorContext<'a> {
    /// e.g. `of PID 1234 (/proc/1234/ns/user)` or `at /run/user/1000/userns`.
    pub userns: &'a str,
    /// e.g. `of PID 1234 (/proc/1234/ns/net)` or `at /run/netns/foo`.
    pub netns: &'a str,
    pub tap_name: &'a str,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub uid_map: &'a str,
    pub gid_map: &'a str,
    pub command: &'a str,
}

fn hint_for(step: Step, errno: Errno) -> &'static str {
    match (step, errno) {
        (Step::JoinUserns, Errno::EPERM) => {
            " (joining another user's user namespace needs CAP_SYS_ADMIN in it; run as the user that owns the namespace)"
        }
        (Step::JoinUserns, Errno::EINVAL) => " (is this a user namespace file?)",
        (Step::JoinNetns, Errno::EPERM) => {
            " (no CAP_SYS_ADMIN over that network namespace; pass --userns-path to join its owning user namespace)"
        }
        (Step::JoinNetns, Errno::EINVAL) => " (is this a network namespace file?)",
        (Step::OpenTun, Errno::ENOENT) => " (is the tun kernel module loaded?)",
        (Step::CreateTap, Errno::EBUSY) => {
            " (a device with that name already exists and is busy or is not a TAP device)"
        }
        (Step::CreateTap, Errno::EPERM) => " (no CAP_NET_ADMIN in the target network namespace)",
        (Step::AddRoute, Errno::ENETUNREACH) => {
            " (the gateway is not inside the interface's subnet)"
        }
        (Step::Unshare, Errno::EPERM) | (Step::Unshare, Errno::ENOSPC) => {
            " (are unprivileged user namespaces disabled? see sysctl user.max_user_namespaces and kernel.unprivileged_userns_clone)"
        }
        _ => "",
    }
}

pub(super) fn format_mac(mac: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

impl Failure {
    /// Turn a child's failure report into the error the caller sees.
    pub(super) fn into_error(self, cx: &ErrorContext<'_>) -> NsError {
        let source = self.errno;
        let hint = hint_for(self.step, source);
        let name = cx.tap_name.to_owned();
        match self.step {
            Step::JoinUserns => NsError::JoinUserns {
                what: cx.userns.to_owned(),
                source,
                hint,
            },
            Step::JoinNetns => NsError::JoinNetns {
                what: cx.netns.to_owned(),
                source,
                hint,
            },
            Step::OpenTun => NsError::OpenTun { source, hint },
            Step::CreateTap => NsError::CreateTap { name, source, hint },
            Step::ConfigSocket => NsError::ConfigSocket { source },
            Step::LoopbackUp => NsError::LoopbackUp { source },
            Step::SetMtu => NsError::SetMtu {
                name,
                mtu: cx.mtu,
                source,
            },
            Step::SetMac => NsError::SetMac {
                name,
                mac: cx.mac.map(format_mac).unwrap_or_default(),
                source,
            },
            Step::SetAddress => NsError::SetAddress {
                name,
                addr: cx.addr,
                source,
            },
            Step::SetNetmask => NsError::SetNetmask {
                name,
                prefix_len: cx.prefix_len,
                source,
            },
            Step::InterfaceUp => NsError::InterfaceUp { name, source },
            Step::AddRoute => NsError::AddRoute {
                name,
                gateway: cx.gateway,
                source,
                hint,
            },
            Step::ReadMac => NsError::ReadMac { name, source },
            Step::ReadIfindex => NsError::ReadIfindex { name, source },
            Step::SendFd => NsError::SendFd { source },
            Step::Unshare => NsError::Unshare { source, hint },
            Step::SetGroups => NsError::IdMap {
                file: "/proc/self/setgroups",
                content: "deny".to_owned(),
                source,
            },
            Step::UidMap => NsError::IdMap {
                file: "/proc/self/uid_map",
                content: cx.uid_map.trim_end().to_owned(),
                source,
            },
            Step::GidMap => NsError::IdMap {
                file: "/proc/self/gid_map",
                content: cx.gid_map.trim_end().to_owned(),
                source,
            },
            Step::Exec => NsError::Exec {
                command: cx.command.to_owned(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let ready = Report::Ready {
            mac: [2, 0x50, 0, 0, 0, 1],
            ifindex: 7,
            warnings: Warnings {
                ping_range: 0,
                ping_range_narrowed: true,
                mount_private: Errno::EPERM as i32,
                resolv_conf: Errno::ENOENT as i32,
            },
        };
        assert_eq!(Report::decode(&ready.encode()), Some(ready));
        for step in Step::ALL {
            let failed = Report::Failed(Failure::new(step, Errno::EACCES));
            assert_eq!(Report::decode(&failed.encode()), Some(failed));
        }
        assert_eq!(Report::decode(&[0u8; REPORT_LEN]), None);
        assert_eq!(Report::decode(&[1u8; 3]), None);
    }
}
