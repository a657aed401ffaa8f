//! The UDP socket under the driver, with batched system calls: on Linux
//! `sendmmsg` with UDP generic segmentation offload (one `UDP_SEGMENT` message
//! carries up to 64 equal-sized datagrams to one destination) and `recvmmsg`
//! with UDP generic receive offload; one datagram per call elsewhere, when
//! disabled, or when the kernel refuses (EIO/EINVAL disable GSO for good).

use log::{debug, info, warn};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

/// Datagrams in one `sendmmsg`/`recvmmsg` call.
const MAX_MESSAGES: usize = 32;
/// Segments in one GSO message (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one GSO message: an IPv4 datagram's payload limit, with margin.
const MAX_GSO_BYTES: usize = 65_000;
/// Receive buffer per slot: room for one GRO super-datagram.
const RX_SLOT: usize = 1 << 16;

/// Counters of what the socket did, for logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocketCounters {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// System calls that sent (sendmmsg/sendmsg/sendto).
    pub send_calls: u64,
    /// System calls that received, including the one that found nothing.
    pub recv_calls: u64,
    /// Sends refused because the socket buffer was full (retried later).
    pub send_would_block: u64,
    /// Datagrams dropped because the kernel refused them (e.g. unreachable).
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Datagrams larger than the receive buffer, dropped.
    pub truncated: u64,
}

/// Effective socket settings, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketInfo {
    pub local_addr: SocketAddr,
    pub recv_buffer: usize,
    pub send_buffer: usize,
    pub batch: bool,
    pub gso: bool,
    pub gro: bool,
}

#[derive(Debug, Clone, Copy)]
struct QueuedDatagram {
    destination: SocketAddr,
    start: usize,
    len: usize,
}

/// Datagrams waiting for the socket, stored back to back so that a run to one
/// destination goes out as one GSO message.
#[derive(Debug, Default)]
pub struct TransmitQueue {
    bytes: Vec<u8>,
    entries: VecDeque<QueuedDatagram>,
}

impl TransmitQueue {
    pub fn new() -> Self {
        TransmitQueue::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn push(&mut self, destination: SocketAddr, datagram: &[u8]) {
        if self.entries.is_empty() {
            self.bytes.clear();
        }
        self.entries.push_back(QueuedDatagram {
            destination,
            start: self.bytes.len(),
            len: datagram.len(),
        });
        self.bytes.extend_from_slice(datagram);
    }

    /// Forgets the first `n` datagrams (they were sent or refused).
    fn consume(&mut self, n: usize) {
        self.entries.drain(..n.min(self.entries.len()));
        if self.entries.is_empty() {
            self.bytes.clear();
        }
    }

    fn get(&self, i: usize) -> Option<(QueuedDatagram, &[u8])> {
        let e = *self.entries.get(i)?;
        Some((e, &self.bytes[e.start..e.start + e.len]))
    }
}

/// What one `send` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOutcome {
    pub datagrams: usize,
    /// The socket buffer is full: wait for a writable event.
    pub blocked: bool,
}

/// What one `recv` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecvOutcome {
    pub datagrams: usize,
    /// The socket has nothing more to read (false: the budget ran out first).
    pub drained: bool,
}

/// A non-blocking UDP socket with large buffers and batched I/O.
pub struct BatchSocket {
    socket: mio::net::UdpSocket,
    info: SocketInfo,
    rx: Vec<u8>,
    counters: SocketCounters,
}

impl BatchSocket {
    /// Binds a socket asking for `buffer` bytes of SO_RCVBUF and SO_SNDBUF
    /// (forced past the sysctl limits when we may); `batch` enables
    /// sendmmsg/recvmmsg, `gso` UDP segmentation and receive offload.
    pub fn bind(addr: SocketAddr, buffer: usize, batch: bool, gso: bool) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        set_buffers(&socket, buffer);
        socket.bind(&addr.into())?;
        let recv_buffer = socket.recv_buffer_size().unwrap_or(0);
        let send_buffer = socket.send_buffer_size().unwrap_or(0);
        let batch = batch && cfg!(target_os = "linux");
        let (gso, gro) = if batch && gso {
            sys::enable_offload(&socket)
        } else {
            (false, false)
        };
        let std_socket: std::net::UdpSocket = socket.into();
        let local_addr = std_socket.local_addr()?;
        let info = SocketInfo {
            local_addr,
            recv_buffer,
            send_buffer,
            batch,
            gso,
            gro,
        };
        info!(
            "udp {local_addr}: SO_RCVBUF {} KiB, SO_SNDBUF {} KiB, batch {batch}, gso {gso}, gro {gro}",
            recv_buffer >> 10,
            send_buffer >> 10
        );
        let slots = if batch { MAX_MESSAGES } else { 1 };
        Ok(BatchSocket {
            socket: mio::net::UdpSocket::from_std(std_socket),
            info,
            rx: vec![0; slots * RX_SLOT],
            counters: SocketCounters::default(),
        })
    }

    pub fn info(&self) -> SocketInfo {
        self.info
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.info.local_addr
    }

    pub fn counters(&self) -> &SocketCounters {
        &self.counters
    }

    /// The mio source, to register with a `Poll`.
    pub fn source(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.socket
    }

    /// Sends queued datagrams until the queue is empty or the socket would
    /// block. A datagram the kernel refuses is dropped and counted.
    pub fn send(&mut self, queue: &mut TransmitQueue) -> SendOutcome {
        let mut out = SendOutcome::default();
        while !queue.is_empty() {
            let result = if self.info.batch {
                sys::send_batch(&self.socket, queue, self.info.gso)
            } else {
                self.send_one(queue)
            };
            self.counters.send_calls += 1;
            match result {
                Ok((datagrams, bytes)) => {
                    queue.consume(datagrams);
                    out.datagrams += datagrams;
                    self.counters.datagrams_sent += datagrams as u64;
                    self.counters.bytes_sent += bytes as u64;
                }
                Err(SendFailure::WouldBlock) => {
                    self.counters.send_would_block += 1;
                    out.blocked = true;
                    break;
                }
                Err(SendFailure::Interrupted) => {}
                Err(SendFailure::Offload(e)) => {
                    warn!("UDP GSO refused ({e}); sending without segmentation offload");
                    self.info.gso = false;
                }
                Err(SendFailure::Unsupported(e)) => {
                    warn!("sendmmsg unavailable ({e}); one datagram per system call");
                    self.info.batch = false;
                    self.info.gso = false;
                }
                Err(SendFailure::Refused { datagrams, error }) => {
                    if self.counters.send_errors < 10 {
                        warn!(
                            "send to {:?} failed: {error}",
                            queue.get(0).map(|d| d.0.destination)
                        );
                    } else {
                        debug!("send failed: {error}");
                    }
                    queue.consume(datagrams.max(1));
                    self.counters.send_errors += datagrams.max(1) as u64;
                }
            }
        }
        out
    }

    fn send_one(&mut self, queue: &TransmitQueue) -> Result<(usize, usize), SendFailure> {
        let Some((d, bytes)) = queue.get(0) else {
            return Ok((0, 0));
        };
        match self.socket.send_to(bytes, d.destination) {
            Ok(n) => Ok((1, n)),
            Err(e) => Err(SendFailure::classify(e, 1, false)),
        }
    }

    /// Reads datagrams until the socket is empty or `budget` datagrams were
    /// handed to `deliver` (a GRO super-datagram is split into its segments).
    pub fn recv<F: FnMut(SocketAddr, &[u8])>(
        &mut self,
        budget: usize,
        mut deliver: F,
    ) -> RecvOutcome {
        let mut out = RecvOutcome::default();
        while out.datagrams < budget {
            self.counters.recv_calls += 1;
            let result = if self.info.batch {
                sys::recv_batch(&self.socket, &mut self.rx, &mut self.counters, &mut deliver)
            } else {
                recv_one(&self.socket, &mut self.rx, &mut self.counters, &mut deliver)
            };
            match result {
                Ok((datagrams, full)) => {
                    out.datagrams += datagrams;
                    if !full {
                        out.drained = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if self.info.batch && is_unsupported(&e) => {
                    warn!("recvmmsg unavailable ({e}); one datagram per system call");
                    self.info.batch = false;
                    self.info.gso = false;
                    if self.info.gro {
                        self.info.gro = false;
                        sys::disable_gro(&self.socket);
                    }
                }
                Err(e) => {
                    // E.g. ECONNREFUSED from an ICMP error: nothing to read now.
                    self.counters.recv_errors += 1;
                    debug!("recv failed: {e}");
                    out.drained = true;
                    break;
                }
            }
        }
        out
    }
}

/// One `recv_from`; returns (datagrams, whether the call may have left more).
fn recv_one<F: FnMut(SocketAddr, &[u8])>(
    socket: &mio::net::UdpSocket,
    rx: &mut [u8],
    counters: &mut SocketCounters,
    deliver: &mut F,
) -> io::Result<(usize, bool)> {
    let (len, from) = socket.recv_from(rx)?;
    if len >= rx.len() {
        counters.truncated += 1;
        return Ok((0, true));
    }
    counters.datagrams_received += 1;
    counters.bytes_received += len as u64;
    deliver(from, &rx[..len]);
    Ok((1, true))
}

enum SendFailure {
    WouldBlock,
    Interrupted,
    /// GSO is not usable on this path: disable it and retry.
    Offload(io::Error),
    /// The batched system call does not exist here (old kernel, seccomp).
    Unsupported(io::Error),
    /// The first `datagrams` queued datagrams cannot be sent: drop them.
    Refused {
        datagrams: usize,
        error: io::Error,
    },
}

impl SendFailure {
    fn classify(error: io::Error, datagrams: usize, segmented: bool) -> Self {
        match error.kind() {
            io::ErrorKind::WouldBlock => SendFailure::WouldBlock,
            io::ErrorKind::Interrupted => SendFailure::Interrupted,
            _ if segmented
                && matches!(error.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) =>
            {
                SendFailure::Offload(error)
            }
            _ if is_unsupported(&error) => SendFailure::Unsupported(error),
            _ => SendFailure::Refused { datagrams, error },
        }
    }
}

/// ENOSYS and friends: the system call itself is missing or forbidden.
fn is_unsupported(e: &io::Error) -> bool {
    // Not EPERM: a firewall rule refusing one datagram returns that too.
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

fn set_buffers(socket: &socket2::Socket, size: usize) {
    if size == 0 {
        return;
    }
    // The kernel doubles what it is given and reports the doubled figure.
    if socket.set_recv_buffer_size(size).is_ok() && socket.recv_buffer_size().unwrap_or(0) < size {
        sys::force_buffer(socket, sys::Buffer::Receive, size);
    }
    if socket.set_send_buffer_size(size).is_ok() && socket.send_buffer_size().unwrap_or(0) < size {
        sys::force_buffer(socket, sys::Buffer::Send, size);
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use super::{
        QueuedDatagram, SendFailure, SocketCounters, TransmitQueue, MAX_GSO_BYTES, MAX_MESSAGES,
        MAX_SEGMENTS, RX_SLOT,
    };
    use libc::{c_int, c_uint, c_void, socklen_t};
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::AsRawFd;

    pub enum Buffer {
        Receive,
        Send,
    }

    fn setsockopt_int(fd: c_int, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: `value` lives across the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const c_int as *const c_void,
                size_of::<c_int>() as socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// SO_RCVBUFFORCE / SO_SNDBUFFORCE: allowed with CAP_NET_ADMIN.
    pub fn force_buffer(socket: &socket2::Socket, which: Buffer, size: usize) {
        let name = match which {
            Buffer::Receive => libc::SO_RCVBUFFORCE,
            Buffer::Send => libc::SO_SNDBUFFORCE,
        };
        let size = c_int::try_from(size).unwrap_or(c_int::MAX);
        if let Err(e) = setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, name, size) {
            log::debug!("cannot force socket buffer size: {e}");
        }
    }

    /// Turns on GRO and checks GSO is known; returns (gso, gro).
    pub fn enable_offload(socket: &socket2::Socket) -> (bool, bool) {
        let fd = socket.as_raw_fd();
        // Setting UDP_SEGMENT to 0 is a no-op that fails where GSO is unknown.
        let gso = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        let gro = setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        (gso, gro)
    }

    pub fn disable_gro(socket: &mio::net::UdpSocket) {
        if let Err(e) = setsockopt_int(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, 0) {
            log::warn!("cannot turn UDP GRO off: {e}");
        }
    }

    fn write_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> socklen_t {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                size_of::<libc::sockaddr_in>() as socklen_t
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>() as socklen_t
            }
        }
    }

    fn read_sockaddr(storage: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
        match storage.ss_family as c_int {
            libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family says this storage holds a sockaddr_in.
                let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family says this storage holds a sockaddr_in6.
                let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// How many queued datagrams from `first` form one GSO message: same
    /// destination, same size except a shorter last one, bounded in count and bytes.
    fn segment_run(
        queue: &TransmitQueue,
        first: usize,
        gso: bool,
    ) -> (QueuedDatagram, usize, usize) {
        let (head, _) = queue.get(first).expect("caller checked the index");
        let mut n = 1;
        let mut bytes = head.len;
        if gso {
            while n < MAX_SEGMENTS {
                let Some((next, _)) = queue.get(first + n) else {
                    break;
                };
                if next.destination != head.destination
                    || next.len > head.len
                    || next.len == 0
                    || bytes + next.len > MAX_GSO_BYTES
                {
                    break;
                }
                n += 1;
                bytes += next.len;
                if next.len < head.len {
                    break;
                }
            }
        }
        (head, n, bytes)
    }

    /// One `sendmmsg` of up to MAX_MESSAGES messages, each one datagram or a
    /// GSO run. Returns (datagrams sent, bytes sent).
    pub fn send_batch(
        socket: &mio::net::UdpSocket,
        queue: &TransmitQueue,
        gso: bool,
    ) -> Result<(usize, usize), SendFailure> {
        // SAFETY (all the zeroed values below): plain C structs for which all
        // zero bytes are a valid (empty) value.
        let mut addrs: [libc::sockaddr_storage; MAX_MESSAGES] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; MAX_MESSAGES] = unsafe { zeroed() };
        let mut control: [[u64; 4]; MAX_MESSAGES] = [[0; 4]; MAX_MESSAGES];
        let mut hdrs: [libc::mmsghdr; MAX_MESSAGES] = unsafe { zeroed() };
        let mut runs = [(0usize, 0usize); MAX_MESSAGES];

        let mut next = 0;
        let mut messages = 0;
        while next < queue.len() && messages < MAX_MESSAGES {
            let (head, n, bytes) = segment_run(queue, next, gso);
            let m = messages;
            let namelen = write_sockaddr(&head.destination, &mut addrs[m]);
            iovs[m] = libc::iovec {
                // sendmmsg only reads through this pointer.
                iov_base: queue.bytes[head.start..].as_ptr() as *mut c_void,
                iov_len: bytes,
            };
            let hdr = &mut hdrs[m].msg_hdr;
            hdr.msg_name = &mut addrs[m] as *mut _ as *mut c_void;
            hdr.msg_namelen = namelen;
            hdr.msg_iov = &mut iovs[m];
            hdr.msg_iovlen = 1;
            if n > 1 {
                hdr.msg_control = control[m].as_mut_ptr() as *mut c_void;
                // SAFETY: CMSG_* compute sizes and walk the buffer we just
                // attached, which is 32 bytes: room for one u16 cmsg.
                unsafe {
                    hdr.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as c_uint) as _;
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as c_uint) as _;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, head.len as u16);
                }
            }
            runs[m] = (n, bytes);
            next += n;
            messages += 1;
        }
        // SAFETY: every header points into arrays that outlive the call.
        let r =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), hdrs.as_mut_ptr(), messages as c_uint, 0) };
        if r < 0 {
            let (n, _) = runs[0];
            return Err(SendFailure::classify(io::Error::last_os_error(), n, n > 1));
        }
        let sent = r as usize;
        Ok(runs[..sent]
            .iter()
            .fold((0, 0), |(d, b), &(n, bytes)| (d + n, b + bytes)))
    }

    /// One `recvmmsg`; hands each datagram (each GRO segment) to `deliver`.
    /// Returns (datagrams, whether every slot was filled so more may wait).
    pub fn recv_batch<F: FnMut(SocketAddr, &[u8])>(
        socket: &mio::net::UdpSocket,
        rx: &mut [u8],
        counters: &mut SocketCounters,
        deliver: &mut F,
    ) -> io::Result<(usize, bool)> {
        let slots = (rx.len() / RX_SLOT).min(MAX_MESSAGES);
        // SAFETY: plain C structs, all-zero is valid.
        let mut addrs: [libc::sockaddr_storage; MAX_MESSAGES] = unsafe { zeroed() };
        let mut iovs: [libc::iovec; MAX_MESSAGES] = unsafe { zeroed() };
        let mut control: [[u64; 8]; MAX_MESSAGES] = [[0; 8]; MAX_MESSAGES];
        let mut hdrs: [libc::mmsghdr; MAX_MESSAGES] = unsafe { zeroed() };
        for (s, chunk) in rx.chunks_exact_mut(RX_SLOT).take(slots).enumerate() {
            iovs[s] = libc::iovec {
                iov_base: chunk.as_mut_ptr() as *mut c_void,
                iov_len: RX_SLOT,
            };
            let hdr = &mut hdrs[s].msg_hdr;
            hdr.msg_name = &mut addrs[s] as *mut _ as *mut c_void;
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as socklen_t;
            hdr.msg_iov = &mut iovs[s];
            hdr.msg_iovlen = 1;
            hdr.msg_control = control[s].as_mut_ptr() as *mut c_void;
            hdr.msg_controllen = size_of::<[u64; 8]>() as _;
        }
        // SAFETY: every header points into buffers that outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                slots as c_uint,
                0,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = r as usize;
        let mut datagrams = 0;
        for s in 0..got {
            let hdr = &hdrs[s].msg_hdr;
            let len = hdrs[s].msg_len as usize;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 || len > RX_SLOT {
                counters.truncated += 1;
                continue;
            }
            let Some(from) = read_sockaddr(&addrs[s], hdr.msg_namelen) else {
                counters.recv_errors += 1;
                continue;
            };
            let mut segment = len;
            // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_*
            // walk within it.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                        let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const c_int);
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            let data = &rx[s * RX_SLOT..s * RX_SLOT + len];
            if data.is_empty() {
                deliver(from, data);
                datagrams += 1;
            }
            for piece in data.chunks(segment.max(1)) {
                deliver(from, piece);
                datagrams += 1;
            }
            counters.bytes_received += len as u64;
        }
        counters.datagrams_received += datagrams as u64;
        Ok((datagrams, got == slots))
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::{SendFailure, SocketCounters, TransmitQueue};
    use std::io;
    use std::net::SocketAddr;

    pub enum Buffer {
        Receive,
        Send,
    }

    pub fn force_buffer(_: &socket2::Socket, _: Buffer, _: usize) {}

    pub fn enable_offload(_: &socket2::Socket) -> (bool, bool) {
        (false, false)
    }

    pub fn disable_gro(_: &mio::net::UdpSocket) {}

    pub fn send_batch(
        _: &mio::net::UdpSocket,
        _: &TransmitQueue,
        _: bool,
    ) -> Result<(usize, usize), SendFailure> {
        unreachable!("batching is only enabled on Linux")
    }

    pub fn recv_batch<F: FnMut(SocketAddr, &[u8])>(
        _: &mio::net::UdpSocket,
        _: &mut [u8],
        _: &mut SocketCounters,
        _: &mut F,
    ) -> io::Result<(usize, bool)> {
        unreachable!("batching is only enabled on Linux")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn pair(batch: bool, gso: bool) -> (BatchSocket, BatchSocket) {
        let a = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, batch, gso).unwrap();
        let b = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, batch, gso).unwrap();
        (a, b)
    }

    /// Sends datagrams of mixed sizes (so GSO runs break) and checks each one
    /// arrives intact and in order (loopback neither drops under this load nor reorders).
    fn roundtrip(batch: bool, gso: bool) {
        let (mut a, mut b) = pair(batch, gso);
        let to = b.local_addr();
        let from = a.local_addr();
        let mut queue = TransmitQueue::new();
        let mut sent = Vec::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let limit = Instant::now() + Duration::from_secs(5);
        for i in 0..300u32 {
            let len = if i % 50 == 49 { 700 } else { 1200 };
            let d: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j) as u8).collect();
            queue.push(to, &d);
            sent.push(d);
            if queue.len() == 100 {
                let out = a.send(&mut queue);
                assert!(!out.blocked);
                assert_eq!(out.datagrams, 100);
                // Read each hundred before sending more: fits any SO_RCVBUF.
                while got.len() < sent.len() && Instant::now() < limit {
                    b.recv(64, |src, d| {
                        assert_eq!(src, from);
                        got.push(d.to_vec());
                    });
                }
            }
        }
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "datagrams differ");
        assert_eq!(b.counters().datagrams_received, 300);
        assert_eq!(a.counters().datagrams_sent, 300);
        if batch {
            assert!(a.counters().send_calls < 300 / 2, "{:?}", a.counters());
        }
    }

    #[test]
    fn datagrams_survive_plain_io() {
        roundtrip(false, false);
    }

    #[test]
    fn datagrams_survive_batched_io() {
        roundtrip(true, false);
    }

    #[test]
    fn datagrams_survive_segmentation_offload() {
        roundtrip(true, true);
    }

    #[test]
    fn refused_datagram_is_dropped_not_retried() {
        let (mut a, _b) = pair(true, true);
        let mut queue = TransmitQueue::new();
        // IPv6 destination from an IPv4 socket: the kernel refuses it.
        queue.push("[::1]:9".parse().unwrap(), b"x");
        let out = a.send(&mut queue);
        assert!(queue.is_empty());
        assert_eq!(out.datagrams, 0);
        assert_eq!(a.counters().send_errors, 1);
    }
}
