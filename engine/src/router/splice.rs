//! Spliced port forwards: host loopback clients joined to the guest socket to socket.
//!
//! # Theory of operation
//! A TCP connection accepted on a forward from a client on the host's loopback does not
//! need usernet's TCP stack: nobody outside the host is involved, and the guest would see
//! the client as the gateway anyway. In the namespace modes (`usernet PID`, `usernet
//! run`) the engine has a [`SocketFactory`] in the guest's network namespace, so it takes
//! a socket from there, binds it to the guest's address (which proves the address is
//! the guest's own: otherwise `bind` fails and the connection takes the ordinary path)
//! and connects it to the forward's guest port over the guest's loopback. Bytes then move
//! host socket → pipe → guest socket and back with `splice(2)`: they never enter user
//! space, and no Ethernet frame, checksum or TCP segment of usernet's is involved.
//!
//! What the guest sees: the client comes from its own address (as with rootlesskit's
//! builtin port driver and pasta's spliced forwards), where slirp4netns shows the gateway
//! 10.0.2.2. That is why splicing is asked for (`--splice`), not the default. Clients from
//! other addresses always take the ordinary path, so the guest sees their real address.
//!
//! When it pays (measured in `bench/README.md`): bulk transfers (about 5 % more
//! throughput, half the engine CPU per GB, from the zero-copy path). Not for request/response
//! or connection rates on one CPU: a spliced round trip crosses two kernel TCP connections
//! (host and guest side), where the ordinary path crosses one plus usernet's own TCP, which
//! costs less; forwarded connect+close runs about 25 % slower spliced.
//!
//! Known limits: TCP urgent data stops `splice(2)` at its mark (the kernel's
//! `tcp_read_sock`), so a spliced flow that receives it stalls (only that flow; the
//! ordinary path handles urgent data). The factory is asked synchronously, once per
//! `FACTORY_BATCH` (8) connections; a helper that stopped answering
//! holds the loop for at most its 1 s timeout once, and splicing is then off.
//!
//! Each direction has its own pipe and runs "drain the pipe into the destination, then
//! refill it from the source" until the destination is full or the source is empty.
//! End of stream becomes `shutdown(SHUT_WR)` on the other side (half-close is kept); an
//! error or reset on either side resets the other (`SO_LINGER` 0) and ends the flow; a
//! refused connect resets the host client, as the ordinary path does. A flow ends when
//! both directions have ended. Empty pipes are kept for the next flow (at most
//! [`SPARE_PIPES`]). Readiness is edge-triggered: a refill that returned fewer bytes than
//! asked and fewer than the pipe's slots read everything the socket held, so the extra
//! read that would only say "would block" is skipped.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use slab::Slab;

use super::{Owner, Readiness};
use crate::ns::SocketFactory;

/// Each pipe's capacity asked for (`F_SETPIPE_SZ`); the kernel's default (64 KiB) is kept
/// when the per-user pipe budget refuses it.
pub const PIPE_SIZE: usize = 1 << 20;

/// Empty pipes kept for later flows.
pub const SPARE_PIPES: usize = 16;

/// Spliced flows that usernet closed first, within one [`TIME_WAIT`], beyond which new
/// loopback clients take the ordinary path. Each such flow leaves a TIME-WAIT entry in the
/// guest's namespace that holds one of its ephemeral ports toward that guest port for a
/// minute; without a budget a fast connect/close loop would use up the port range (about
/// 28 000 ports) and every further connect would scan it all before failing.
pub const TIME_WAIT_BUDGET: usize = 4096;

/// How long Linux keeps a TIME-WAIT entry (`TCP_TIMEWAIT_LEN`).
pub const TIME_WAIT: Duration = Duration::from_secs(60);

/// The largest page size of any Linux architecture. A pipe has one slot per page of its
/// capacity, so `capacity / MAX_PAGE` is a lower bound on its slots wherever it runs.
const MAX_PAGE: usize = 64 * 1024;

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Bytes in the pipe.
    len: usize,
    cap: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let _ = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
        let cap = fcntl(&w, FcntlArg::F_GETPIPE_SZ)
            .ok()
            .and_then(|c| usize::try_from(c).ok())
            .filter(|&c| c > 0)
            .unwrap_or(64 * 1024);
        Ok(Pipe { r, w, len: 0, cap })
    }
}

/// One direction of a flow.
struct Half {
    pipe: Pipe,
    /// The source reached end of stream.
    eof: bool,
    /// The end of stream was passed on (`shutdown(SHUT_WR)` on the destination).
    shut: bool,
    /// The last refill emptied the source.
    drained: bool,
    /// The source's end of stream (or reset) has arrived, maybe not read yet: no
    /// readiness edge will come for it again, so a refill must not stop short of it.
    hup: bool,
}

impl Half {
    fn new(pipe: Pipe) -> Half {
        Half {
            pipe,
            eof: false,
            shut: false,
            drained: false,
            hup: false,
        }
    }

    /// Move bytes `src` → pipe → `dst` until `dst` is full or `src` is empty.
    fn pump(&mut self, src: &TcpStream, dst: &TcpStream) -> Result<(), Errno> {
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            if self.pipe.len > 0 {
                match splice(&self.pipe.r, None, dst.as_fd(), None, self.pipe.len, flags) {
                    Ok(n) => self.pipe.len -= n.min(self.pipe.len),
                    Err(Errno::EAGAIN) => return Ok(()),
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e),
                }
                if self.pipe.len > 0 {
                    return Ok(());
                }
                if std::mem::take(&mut self.drained) {
                    return Ok(());
                }
            }
            if self.eof {
                if !self.shut {
                    self.shut = true;
                    let _ = dst.shutdown(Shutdown::Write);
                }
                return Ok(());
            }
            let want = self.pipe.cap;
            match splice(src.as_fd(), None, &self.pipe.w, None, want, flags) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.pipe.len = n;
                    // Each pipe slot holds at least one byte: fewer bytes than slots means
                    // the pipe did not fill up, so the socket had no more.
                    self.drained = !self.hup && n < want && n < self.pipe.cap / MAX_PAGE;
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn done(&self) -> bool {
        self.shut && self.pipe.len == 0
    }
}

/// A guest socket (connected or connecting) and the two pipes of a new flow.
type GuestSide = (std::net::TcpStream, [Pipe; 2]);

struct Flow {
    host: TcpStream,
    guest: TcpStream,
    connected: bool,
    /// usernet sent the guest its end of stream before the guest sent one (the guest
    /// side's socket will go through TIME-WAIT).
    closed_first: bool,
    to_guest: Half,
    to_host: Half,
}

/// The spliced flows of one engine.
pub struct Splicer {
    factory: SocketFactory,
    flows: Slab<Flow>,
    spare: Vec<Pipe>,
    max_flows: usize,
    /// When each recent flow that usernet closed first ended (at most
    /// [`TIME_WAIT_BUDGET`], oldest first).
    time_waits: VecDeque<Instant>,
    total: u64,
    fallbacks: u64,
}

/// What [`Splicer::open`] did with a connection.
pub enum Opened {
    /// Taken care of: spliced, or reset because the guest refused it at once.
    Handled,
    /// Not spliceable: here is the stream back, for the ordinary path.
    Fallback(std::net::TcpStream),
}

impl Splicer {
    /// Splice with sockets from `factory`, at most `max_flows` at once.
    pub fn new(factory: SocketFactory, max_flows: usize) -> Splicer {
        Splicer {
            factory,
            flows: Slab::new(),
            spare: Vec::new(),
            max_flows,
            time_waits: VecDeque::new(),
            total: 0,
            fallbacks: 0,
        }
    }

    /// Join the accepted loopback client `host` to `target` in the guest's namespace.
    pub fn open(
        &mut self,
        registry: &Registry,
        now: Instant,
        host: std::net::TcpStream,
        target: SocketAddr,
    ) -> Opened {
        while self
            .time_waits
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= TIME_WAIT)
        {
            self.time_waits.pop_front();
        }
        if self.time_waits.len() >= TIME_WAIT_BUDGET {
            self.fallbacks += 1;
            return Opened::Fallback(host);
        }
        match self.try_open(target) {
            Ok(Some((guest, pipes))) => {
                self.insert(registry, host, guest, pipes);
                Opened::Handled
            }
            Ok(None) => {
                self.fallbacks += 1;
                Opened::Fallback(host)
            }
            Err(e) => {
                // The guest refused at once: the client sees a reset, as on the ordinary path.
                tracing::debug!(%target, error = %e, "spliced forward refused");
                reset(&host);
                Opened::Handled
            }
        }
    }

    /// A connected-or-connecting guest socket and two pipes; `Ok(None)` when the
    /// connection should take the ordinary path.
    fn try_open(&mut self, target: SocketAddr) -> io::Result<Option<GuestSide>> {
        if self.flows.len() >= self.max_flows {
            return Ok(None);
        }
        let Some(fd) = self.factory.take(target.is_ipv6()) else {
            return Ok(None);
        };
        let s = socket2::Socket::from(fd);
        if target.is_ipv4() {
            let _ = nix::sys::socket::setsockopt(
                &s,
                nix::sys::socket::sockopt::IpBindAddressNoPort,
                &true,
            );
        }
        // Binding to the target proves it is an address of the guest's own.
        if let Err(e) = s.bind(&SocketAddr::new(target.ip(), 0).into()) {
            tracing::debug!(%target, error = %e, "not an address of the guest's namespace; not splicing");
            return Ok(None);
        }
        let _ = s.set_tcp_nodelay(true);
        match s.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            // No port left for this pair (TIME-WAIT): the ordinary path still works.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
            Err(e) => return Err(e),
        }
        let pipes = match (self.pipe(), self.pipe()) {
            (Ok(a), Ok(b)) => [a, b],
            (a, b) => {
                for p in [a, b].into_iter().flatten() {
                    self.give_back(p);
                }
                return Ok(None);
            }
        };
        Ok(Some((s.into(), pipes)))
    }

    fn pipe(&mut self) -> io::Result<Pipe> {
        match self.spare.pop() {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    fn give_back(&mut self, p: Pipe) {
        if p.len == 0 && self.spare.len() < SPARE_PIPES {
            self.spare.push(p);
        }
    }

    fn insert(
        &mut self,
        registry: &Registry,
        host: std::net::TcpStream,
        guest: std::net::TcpStream,
        pipes: [Pipe; 2],
    ) {
        let [a, b] = pipes;
        let entry = self.flows.vacant_entry();
        let i = entry.key();
        let mut flow = Flow {
            host: TcpStream::from_std(host),
            guest: TcpStream::from_std(guest),
            connected: false,
            closed_first: false,
            to_guest: Half::new(a),
            to_host: Half::new(b),
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let r1 = registry.register(&mut flow.host, Owner::Splice(i << 1).token(), both);
        let r2 = registry.register(&mut flow.guest, Owner::Splice((i << 1) | 1).token(), both);
        if r1.is_err() || r2.is_err() {
            let _ = registry.deregister(&mut flow.host);
            let _ = registry.deregister(&mut flow.guest);
            reset(&flow.host);
            return;
        }
        entry.insert(flow);
        self.total += 1;
    }

    /// Readiness on one side (`token_index` from [`Owner::Splice`]).
    pub fn event(&mut self, registry: &Registry, now: Instant, token_index: usize, ev: Readiness) {
        let Readiness {
            readable,
            writable,
            error,
            read_closed,
            ..
        } = ev;
        let i = token_index >> 1;
        let guest_side = token_index & 1 == 1;
        let Some(f) = self.flows.get_mut(i) else {
            return;
        };
        if read_closed || error {
            if guest_side {
                f.to_host.hup = true;
            } else {
                f.to_guest.hup = true;
            }
        }
        // A direction moves when its source became readable, or when its destination
        // became writable while the pipe holds bytes for it. Readiness reports every
        // condition that holds (a readable socket is usually writable too), so a
        // writable flag alone must not trigger a read that would only say "would block".
        let (mut to_guest, mut to_host) = if guest_side {
            (writable && f.to_guest.pipe.len > 0, readable)
        } else {
            (readable, writable && f.to_host.pipe.len > 0)
        };
        if error {
            (to_guest, to_host) = (true, true);
        }
        if !f.connected {
            if !guest_side || !(writable || error) {
                return;
            }
            match f.guest.take_error() {
                Ok(None) if f.guest.peer_addr().is_ok() => {}
                Ok(None) => return,
                Ok(Some(e)) | Err(e) => {
                    tracing::debug!(error = %e, "spliced forward: the guest refused");
                    self.abort(registry, i);
                    return;
                }
            }
            f.connected = true;
            (to_guest, to_host) = (true, true);
        }
        let r = (|| {
            if to_guest {
                let (shut, guest_done) = (f.to_guest.shut, f.to_host.eof);
                f.to_guest.pump(&f.host, &f.guest)?;
                f.closed_first |= f.to_guest.shut && !shut && !guest_done;
            }
            if to_host {
                f.to_host.pump(&f.guest, &f.host)?;
            }
            Ok::<(), Errno>(())
        })();
        match r {
            Err(e) => {
                tracing::debug!(error = %e, "spliced forward reset");
                self.abort(registry, i);
            }
            Ok(()) if f.to_guest.done() && f.to_host.done() => {
                if f.closed_first && self.time_waits.len() < TIME_WAIT_BUDGET {
                    self.time_waits.push_back(now);
                }
                self.close(registry, i)
            }
            Ok(()) => {}
        }
    }

    /// End flow `i` with a reset toward both sides.
    fn abort(&mut self, registry: &Registry, i: usize) {
        if let Some(f) = self.flows.try_remove(i) {
            reset(&f.host);
            reset(&f.guest);
            self.release(registry, f);
        }
    }

    /// End flow `i` after both directions ended cleanly.
    fn close(&mut self, registry: &Registry, i: usize) {
        if let Some(f) = self.flows.try_remove(i) {
            self.release(registry, f);
        }
    }

    fn release(&mut self, registry: &Registry, mut f: Flow) {
        let _ = registry.deregister(&mut f.host);
        let _ = registry.deregister(&mut f.guest);
        self.give_back(f.to_guest.pipe);
        self.give_back(f.to_host.pipe);
    }

    /// Flows spliced now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is spliced now.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Flows ever spliced, and loopback connections that took the ordinary path.
    pub fn counts(&self) -> (u64, u64) {
        (self.total, self.fallbacks)
    }

    /// Whether the factory still serves.
    pub fn working(&self) -> bool {
        self.factory.working()
    }
}

/// Make the socket's close send a reset (`SO_LINGER` 0).
fn reset(s: &impl AsFd) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}
