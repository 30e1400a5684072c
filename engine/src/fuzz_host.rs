//! The host side of the frame-pipeline fuzz target: sockets on the host's loopback that
//! stand in for every server a guest reaches and for the clients of two port forwards,
//! driven by the fuzz input.
//!
//! The pipeline's router runs with [`Config::sink`](crate::config::Config::sink) set
//! to [`HostSide::port`], so every guest flow that would leave through a host socket
//! goes to that port on 127.0.0.1 (or ::1) instead of its destination: TCP flows connect
//! to the sink's listener, UDP datagrams arrive at its UDP socket, and the DNS relay's
//! upstream is the sink too (ICMP echoes beyond the gateway are dropped: they would go
//! to their real destination). `host::contained` refuses any send or connect beyond
//! the loopback while the sink is set, as a net under the redirect. Nothing the fuzzer
//! writes leaves the host's loopback, and every socket here is closed (connections
//! reset) when the input ends.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

/// Connections the host side holds at once (accepted from the sink, or clients of the
/// TCP forward); more are reset.
pub const MAX_PEERS: usize = 8;
/// UDP peers of the sink remembered for replies (the oldest is forgotten first).
pub const MAX_SENDERS: usize = 8;
/// Bytes one drain reads from one connection, datagrams from one UDP socket: bounds
/// the work of one record.
const DRAIN_BYTES: usize = 256 * 1024;
const DRAIN_DATAGRAMS: usize = 64;

/// A UDP peer of the sink: its address and the first two bytes of the last datagram
/// it sent (a DNS query's id).
#[derive(Clone, Copy, Debug)]
pub struct Sender {
    /// Where the datagrams came from (a mapping's socket, the DNS relay's).
    pub addr: SocketAddr,
    /// The first two bytes of its last datagram.
    pub id: [u8; 2],
}

/// The sink's sockets, the connections and UDP peers seen so far, and the forwards'
/// client side.
#[derive(Debug)]
pub struct HostSide {
    port: u16,
    listeners: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
    peers: Vec<TcpStream>,
    senders: Vec<Sender>,
    fwd_tcp: Option<SocketAddr>,
    fwd_udp: Option<(UdpSocket, SocketAddr)>,
    /// Bytes and datagrams the host side has read so far (for tests).
    pub received: Vec<Vec<u8>>,
    /// Whether `received` keeps what arrives (tests); the fuzz target only counts.
    pub keep: bool,
}

impl HostSide {
    /// Bind a TCP listener and a UDP socket on one free port of 127.0.0.1, and on ::1
    /// when the host has it (IPv6 flows are refused by the host's stack otherwise).
    pub fn bind() -> io::Result<HostSide> {
        for _ in 0..16 {
            let l4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            let port = l4.local_addr()?.port();
            let Ok(u4) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) else {
                continue;
            };
            let mut listeners = vec![l4];
            let mut udp = vec![u4];
            if let (Ok(l6), Ok(u6)) = (
                TcpListener::bind((Ipv6Addr::LOCALHOST, port)),
                UdpSocket::bind((Ipv6Addr::LOCALHOST, port)),
            ) {
                listeners.push(l6);
                udp.push(u6);
            }
            for l in &listeners {
                l.set_nonblocking(true)?;
            }
            for u in &udp {
                u.set_nonblocking(true)?;
            }
            return Ok(HostSide {
                port,
                listeners,
                udp,
                peers: Vec::new(),
                senders: Vec::new(),
                fwd_tcp: None,
                fwd_udp: None,
                received: Vec::new(),
                keep: false,
            });
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no port of 127.0.0.1 was free for both TCP and UDP",
        ))
    }

    /// The sink's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the TCP and UDP forwards listen, once the pipeline has added them.
    pub fn set_forwards(
        &mut self,
        tcp: Option<SocketAddr>,
        udp: Option<SocketAddr>,
    ) -> io::Result<()> {
        self.fwd_tcp = tcp;
        if let Some(to) = udp {
            let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            s.set_nonblocking(true)?;
            self.fwd_udp = Some((s, to));
        }
        Ok(())
    }

    /// Connections held now.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// UDP peers remembered now.
    pub fn senders(&self) -> &[Sender] {
        &self.senders
    }

    fn peer(&self, i: u8) -> Option<usize> {
        (!self.peers.is_empty()).then(|| usize::from(i) % self.peers.len())
    }

    fn hold(&mut self, s: TcpStream) {
        if self.peers.len() < MAX_PEERS && s.set_nonblocking(true).is_ok() {
            self.peers.push(s);
        } else {
            reset(s);
        }
    }

    /// Accept every connection waiting at the sink.
    pub fn accept(&mut self) {
        let mut got = Vec::new();
        for l in &self.listeners {
            while let Ok((s, _)) = l.accept() {
                got.push(s);
            }
        }
        for s in got {
            self.hold(s);
        }
    }

    /// Connection `i` (modulo those held) writes what it can of `data`.
    pub fn write(&mut self, i: u8, data: &[u8]) {
        if let Some(k) = self.peer(i) {
            let _ = self.peers[k].write(data);
        }
    }

    /// Connection `i` shuts its sending side (the guest sees FIN).
    pub fn shutdown(&mut self, i: u8) {
        if let Some(k) = self.peer(i) {
            let _ = self.peers[k].shutdown(Shutdown::Write);
        }
    }

    /// Connection `i` is closed: reset (`SO_LINGER` 0) or gracefully.
    pub fn close(&mut self, i: u8, rst: bool) {
        if let Some(k) = self.peer(i) {
            let s = self.peers.swap_remove(k);
            if rst {
                reset(s);
            }
        }
    }

    /// Read what waits on every connection and UDP socket, remembering who sent
    /// datagrams.
    pub fn drain(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        for p in &mut self.peers {
            let mut left = DRAIN_BYTES;
            while left > 0 {
                match p.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        left = left.saturating_sub(n);
                        if self.keep {
                            self.received.push(buf[..n].to_vec());
                        }
                    }
                }
            }
        }
        let fwd = self.fwd_udp.as_ref().map(|(s, _)| s);
        for u in self.udp.iter().chain(fwd) {
            for _ in 0..DRAIN_DATAGRAMS {
                let Ok((n, from)) = u.recv_from(&mut buf) else {
                    break;
                };
                if self.keep {
                    self.received.push(buf[..n].to_vec());
                }
                let id = [
                    buf.first().copied().unwrap_or(0),
                    buf.get(1).copied().unwrap_or(0),
                ];
                match self.senders.iter_mut().find(|s| s.addr == from) {
                    Some(s) => s.id = id,
                    None => {
                        if self.senders.len() == MAX_SENDERS {
                            self.senders.remove(0);
                        }
                        self.senders.push(Sender { addr: from, id });
                    }
                }
            }
        }
    }

    /// The sink sends `data` to remembered UDP peer `i`; with `echo_id`, its first two
    /// bytes become those of that peer's last datagram (an answer to a DNS query).
    pub fn reply(&mut self, i: u8, data: &[u8], echo_id: bool) {
        if self.senders.is_empty() {
            return;
        }
        let s = self.senders[usize::from(i) % self.senders.len()];
        let mut msg = data.to_vec();
        if echo_id && msg.len() >= 2 {
            msg[..2].copy_from_slice(&s.id);
        }
        let sock = match s.addr {
            SocketAddr::V4(_) => self.udp.first(),
            SocketAddr::V6(_) => self.udp.get(1),
        };
        if let Some(u) = sock {
            let _ = u.send_to(&msg, s.addr);
        }
    }

    /// A client connects to the TCP forward (and is held as a connection).
    pub fn connect_forward(&mut self) {
        let Some(to) = self.fwd_tcp else { return };
        if self.peers.len() >= MAX_PEERS {
            return;
        }
        // Nonblocking: with the engine's backlog full, the connect waits in the kernel
        // instead of holding up the input.
        use socket2::{Domain, Socket, Type};
        let Ok(s) = Socket::new(Domain::IPV4, Type::STREAM.nonblocking().cloexec(), None) else {
            return;
        };
        match s.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(_) => return,
        }
        self.hold(s.into());
    }

    /// A client sends `data` to the UDP forward.
    pub fn send_forward(&mut self, data: &[u8]) {
        if let Some((s, to)) = &self.fwd_udp {
            let _ = s.send_to(data, *to);
        }
    }
}

impl Drop for HostSide {
    /// Reset every connection, so that neither end lingers in TIME-WAIT.
    fn drop(&mut self) {
        for s in self.peers.drain(..) {
            reset(s);
        }
    }
}

fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
}
