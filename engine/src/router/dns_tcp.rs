//! DNS over TCP to the DNS address.
//!
//! A guest TCP connection to the DNS address port 53 is an ordinary TCP flow whose
//! host side connects to an upstream resolver (the next one when a connect fails), with
//! one difference: the byte stream is framed (RFC 1035 §4.2.2: a 2-byte length before
//! each message) in both directions. Each complete guest query for a local name is
//! answered by usernet itself; every other query passes to the upstream unchanged.
//! Local answers are inserted into the stream toward the guest only between two
//! upstream messages (RFC 7766 allows answers out of order; they match by id). Every
//! buffer is bounded by one maximum-size message.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use smoltcp::socket::tcp;

use super::dns::DnsService;

/// Local answers waiting for a message boundary toward the guest; beyond this the
/// guest's queries wait in its socket (backpressure).
const MAX_LOCAL_PENDING: usize = 4;

/// Per-flow state of a DNS-over-TCP flow.
pub struct DnsStream {
    /// Upstreams to try, in order.
    pub upstreams: Vec<SocketAddr>,
    /// The next one to try after a connect failure.
    pub next: usize,
    msg: Vec<u8>,
    to_host: Vec<u8>,
    to_host_off: usize,
    local: VecDeque<Vec<u8>>,
    h2g_hdr: [u8; 2],
    h2g_hdr_have: usize,
    h2g_left: usize,
}

impl DnsStream {
    /// State for a flow that tries `upstreams` in order (the first is being connected).
    pub fn new(upstreams: Vec<SocketAddr>) -> DnsStream {
        DnsStream {
            upstreams,
            next: 1,
            msg: Vec::new(),
            to_host: Vec::new(),
            to_host_off: 0,
            local: VecDeque::new(),
            h2g_hdr: [0; 2],
            h2g_hdr_have: 0,
            h2g_left: 0,
        }
    }

    /// Whether nothing of the guest's stream waits in usernet.
    pub fn g2h_idle(&self) -> bool {
        self.msg.is_empty() && self.to_host_off >= self.to_host.len()
    }

    /// Whether local answers still wait to be sent to the guest.
    pub fn has_local(&self) -> bool {
        !self.local.is_empty()
    }
}

/// Guest → host: frame the receive ring's bytes into messages, answer local names,
/// pass the rest to the host. Returns an error for the host socket's failures.
pub fn pump_g2h(
    st: &mut DnsStream,
    sock: &mut tcp::Socket<'static>,
    mut host: &mio::net::TcpStream,
    host_writable: &mut bool,
    dns: &DnsService,
) -> io::Result<()> {
    loop {
        while *host_writable && st.to_host_off < st.to_host.len() {
            match host.write(&st.to_host[st.to_host_off..]) {
                Ok(n) => st.to_host_off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *host_writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if st.to_host_off < st.to_host.len() || st.local.len() >= MAX_LOCAL_PENDING {
            return Ok(());
        }
        st.to_host.clear();
        st.to_host_off = 0;
        let need = if st.msg.len() < 2 {
            2 - st.msg.len()
        } else {
            2 + usize::from(u16::from_be_bytes([st.msg[0], st.msg[1]])) - st.msg.len()
        };
        if need > 0 {
            let got = sock.recv(|data| {
                let n = data.len().min(need);
                st.msg.extend_from_slice(&data[..n]);
                (n, n)
            });
            if !matches!(got, Ok(n) if n > 0) {
                return Ok(());
            }
            continue;
        }
        // A whole message.
        let mut answer = vec![0u8; 2 + 512];
        match dns.local_answer(&st.msg[2..], &mut answer[2..]) {
            Some(len) => {
                answer.truncate(2 + len);
                answer[..2].copy_from_slice(&(len as u16).to_be_bytes());
                st.local.push_back(answer);
            }
            None => st.to_host.extend_from_slice(&st.msg),
        }
        st.msg.clear();
    }
}

/// Host → guest: pass upstream messages through, stopping at each message boundary to
/// insert pending local answers.
pub fn pump_h2g(
    st: &mut DnsStream,
    sock: &mut tcp::Socket<'static>,
    mut host: &mio::net::TcpStream,
    host_readable: &mut bool,
    host_eof: &mut bool,
) -> io::Result<()> {
    loop {
        if st.h2g_hdr_have == 0 {
            while let Some(a) = st.local.front() {
                if !sock.may_send() || sock.send_capacity() - sock.send_queue() < a.len() {
                    return Ok(());
                }
                let _ = sock.send_slice(a);
                st.local.pop_front();
            }
        }
        if !*host_readable || *host_eof || !sock.may_send() {
            return Ok(());
        }
        if st.h2g_hdr_have < 2 {
            // The length prefix is read into our copy first, so we know the message size.
            if sock.send_capacity() - sock.send_queue() < 2 {
                return Ok(());
            }
            match host.read(&mut st.h2g_hdr[st.h2g_hdr_have..]) {
                Ok(0) => {
                    *host_eof = true;
                    return Ok(());
                }
                Ok(k) => {
                    st.h2g_hdr_have += k;
                    if st.h2g_hdr_have == 2 {
                        let _ = sock.send_slice(&st.h2g_hdr);
                        st.h2g_left = usize::from(u16::from_be_bytes(st.h2g_hdr));
                        if st.h2g_left == 0 {
                            st.h2g_hdr_have = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *host_readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        let limit = st.h2g_left;
        let r = sock.send(|buf| {
            let n = buf.len().min(limit);
            if n == 0 {
                return (0, Ok(None));
            }
            match host.read(&mut buf[..n]) {
                Ok(k) => (k, Ok(Some(k))),
                Err(e) => (0, Err(e)),
            }
        });
        match r {
            Ok(Ok(Some(0))) => {
                *host_eof = true;
                return Ok(());
            }
            Ok(Ok(Some(k))) => {
                st.h2g_left -= k;
                if st.h2g_left == 0 {
                    st.h2g_hdr_have = 0;
                }
            }
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                *host_readable = false;
                return Ok(());
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}
