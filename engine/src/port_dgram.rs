//! QEMU `-netdev dgram` over unix datagram sockets: one Ethernet frame per datagram, no
//! header (reference/compat.md §2.5).
//!
//! usernet binds `LOCAL` and receives there. Replies go to `REMOTE` when given, else to
//! the last address a frame came from (QEMU's `local.path`). They leave through a second,
//! unbound socket *connected* to that address: only a connected unix datagram socket
//! reports writability when the peer's receive queue drains, so a full guest queue makes
//! `write_frame` return `Ok(false)` and the loop waits for room instead of spinning or
//! dropping. When the peer's socket goes away (QEMU restarted), the next write finds it
//! refused, the sender is dropped and reconnected to the address of the next frame.

use std::io;
use std::path::{Path, PathBuf};

use mio::net::UnixDatagram;
use mio::{Interest, Registry, Token};

use crate::port::Port;

/// Largest datagram read (a frame of the largest MTU plus its header, with margin).
const DGRAM_MAX: usize = 65536 + 64;

/// `--dgram unix:LOCAL[,REMOTE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DgramAddr {
    /// The path usernet binds.
    pub local: PathBuf,
    /// Where frames go; `None`: to the last sender.
    pub remote: Option<PathBuf>,
}

impl DgramAddr {
    /// Parse `unix:LOCAL[,REMOTE]` (REMOTE may carry its own `unix:`).
    pub fn parse(s: &str) -> Result<DgramAddr, String> {
        let Some(rest) = s.strip_prefix("unix:") else {
            return Err(format!(
                "\"{s}\" is not a datagram address (expected unix:LOCAL[,REMOTE])"
            ));
        };
        let (local, remote) = match rest.split_once(',') {
            Some((l, r)) => (l, Some(r.strip_prefix("unix:").unwrap_or(r))),
            None => (rest, None),
        };
        if local.is_empty() || remote.is_some_and(str::is_empty) {
            return Err(format!("\"{s}\": a unix socket path is empty"));
        }
        Ok(DgramAddr {
            local: PathBuf::from(local),
            remote: remote.map(PathBuf::from),
        })
    }

    /// The QEMU `-netdev dgram` options that talk to this port. Without REMOTE, QEMU's
    /// own socket is `LOCAL.qemu` (any path works: usernet replies to the sender).
    pub fn qemu_netdev(&self, id: &str) -> String {
        let qemu_local = match &self.remote {
            Some(r) => r.clone(),
            None => {
                let mut p = self.local.clone().into_os_string();
                p.push(".qemu");
                PathBuf::from(p)
            }
        };
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            qemu_local.display(),
            self.local.display()
        )
    }
}

/// A unix datagram port.
pub struct DgramPort {
    sock: UnixDatagram,
    local: PathBuf,
    fixed_remote: Option<PathBuf>,
    /// Where replies go now.
    peer: Option<PathBuf>,
    /// Unbound socket connected to `peer`.
    tx: Option<UnixDatagram>,
    buf: Vec<u8>,
    registry: Option<Registry>,
    token: Token,
    warned_no_peer: bool,
}

impl DgramPort {
    /// Bind `addr.local` (a stale socket file nobody serves is replaced).
    pub fn bind(addr: &DgramAddr) -> io::Result<DgramPort> {
        let sock = match UnixDatagram::bind(&addr.local) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                remove_stale(&addr.local)?;
                UnixDatagram::bind(&addr.local)?
            }
            r => r?,
        };
        Ok(DgramPort {
            sock,
            local: addr.local.clone(),
            fixed_remote: addr.remote.clone(),
            peer: addr.remote.clone(),
            tx: None,
            buf: vec![0u8; DGRAM_MAX],
            registry: None,
            token: Token(0),
            warned_no_peer: false,
        })
    }

    fn drop_tx(&mut self) {
        if let (Some(mut t), Some(r)) = (self.tx.take(), &self.registry) {
            let _ = r.deregister(&mut t);
        }
    }

    fn connect_tx(&mut self) -> io::Result<()> {
        let Some(peer) = &self.peer else {
            if !self.warned_no_peer {
                self.warned_no_peer = true;
                tracing::info!(
                    "no frame from the guest yet: frames toward it are dropped until one arrives"
                );
            }
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        };
        let mut t = UnixDatagram::unbound()?;
        if let Err(e) = t.connect(peer) {
            tracing::debug!(peer = %peer.display(), error = %e, "cannot reach the guest's socket");
            return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        if let Some(r) = &self.registry {
            r.register(&mut t, self.token, Interest::WRITABLE)?;
        }
        tracing::info!(peer = %peer.display(), "sending frames to the guest's socket");
        self.tx = Some(t);
        Ok(())
    }
}

fn remove_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if !is_socket {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path exists and is not a socket",
        ));
    }
    std::fs::remove_file(path)
}

impl Drop for DgramPort {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}

impl Port for DgramPort {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        self.token = token;
        registry.register(&mut self.sock, token, Interest::READABLE)?;
        self.registry = Some(registry.try_clone()?);
        Ok(())
    }

    fn read_frames(&mut self, max: usize, sink: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        for _ in 0..max {
            match self.sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if let Some(p) = from.as_pathname()
                        && self.fixed_remote.is_none()
                        && self.peer.as_deref() != Some(p)
                    {
                        tracing::info!(peer = %p.display(), "guest socket seen");
                        self.peer = Some(p.to_path_buf());
                        self.drop_tx();
                    }
                    if let Some(f) = self.buf.get(..n) {
                        sink(f);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        if self.tx.is_none() {
            self.connect_tx()?;
        }
        loop {
            let Some(t) = &self.tx else {
                return Err(io::Error::from_raw_os_error(libc::ENOTCONN));
            };
            match t.send(frame) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED) | Some(libc::ENOTCONN) | Some(libc::ECONNRESET)
                    ) {
                        // The guest's socket is gone: reconnect on the next frame.
                        tracing::info!("the guest's socket went away");
                        self.drop_tx();
                    }
                    return Err(e);
                }
            }
        }
    }

    fn is_fatal(&self, e: &io::Error) -> bool {
        // Only a broken own socket is final; a missing or full peer is not.
        matches!(e.raw_os_error(), Some(libc::EBADF) | Some(libc::ENOTSOCK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram as StdDgram;
    use std::time::Duration;

    #[test]
    fn parse_and_hint() {
        let a = DgramAddr::parse("unix:/tmp/u.sock").unwrap();
        assert_eq!(a.remote, None);
        assert_eq!(
            a.qemu_netdev("n0"),
            "dgram,id=n0,local.type=unix,local.path=/tmp/u.sock.qemu,remote.type=unix,remote.path=/tmp/u.sock"
        );
        let b = DgramAddr::parse("unix:/a,unix:/b").unwrap();
        assert_eq!(b.remote.as_deref(), Some(Path::new("/b")));
        assert_eq!(DgramAddr::parse("unix:/a,/b").unwrap(), b);
        assert!(DgramAddr::parse("/a").is_err());
        assert!(DgramAddr::parse("unix:/a,").is_err());
        assert!(DgramAddr::parse("unix:").is_err());
    }

    #[test]
    fn replies_to_the_last_sender() {
        let dir = std::env::temp_dir().join(format!("usernet-dg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let local = dir.join("u.sock");
        let poll = mio::Poll::new().unwrap();
        let mut port = DgramPort::bind(&DgramAddr {
            local: local.clone(),
            remote: None,
        })
        .unwrap();
        port.register(poll.registry(), Token(0)).unwrap();
        // Nobody has sent yet: a reply cannot go anywhere (not fatal).
        let e = port.write_frame(&[0u8; 60]).unwrap_err();
        assert!(!port.is_fatal(&e));

        let q1 = dir.join("q1.sock");
        let guest = StdDgram::bind(&q1).unwrap();
        guest
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        guest.send_to(&[7u8; 64], &local).unwrap();
        guest.send_to(&[8u8; 14], &local).unwrap();
        let mut got = Vec::new();
        for _ in 0..100 {
            port.read_frames(10, &mut |f| got.push(f.to_vec())).unwrap();
            if got.len() == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, vec![vec![7u8; 64], vec![8u8; 14]]);
        assert!(port.write_frame(&[9u8; 42]).unwrap());
        let mut b = [0u8; 100];
        assert_eq!(guest.recv(&mut b).unwrap(), 42);

        // The guest restarts with a new socket at another path.
        drop(guest);
        let _ = std::fs::remove_file(&q1);
        let e = port.write_frame(&[1u8; 42]).unwrap_err();
        assert!(!port.is_fatal(&e));
        let q2 = dir.join("q2.sock");
        let guest2 = StdDgram::bind(&q2).unwrap();
        guest2
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        guest2.send_to(&[5u8; 20], &local).unwrap();
        let mut n = 0;
        for _ in 0..100 {
            port.read_frames(10, &mut |_| n += 1).unwrap();
            if n == 1 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(port.write_frame(&[2u8; 50]).unwrap());
        assert_eq!(guest2.recv(&mut b).unwrap(), 50);
        drop(port);
        assert!(!local.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
