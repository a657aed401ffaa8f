//! The userspace delayer for kernels without netem: it binds an NFQUEUE over a
//! raw `NETLINK_NETFILTER` socket, asks for packet metadata only (copy range 0),
//! raises the queue length, and answers with verdicts that a [`DelayLine`]
//! decides: lost packets are dropped at once, held ones are accepted later with
//! one batch verdict per wake-up (which also keeps them in order).
//!
//! It must run inside the router namespace (never in a sender's namespace: TCP
//! small queues would then starve the sender) and be bound before the iptables
//! rule that feeds it is inserted, or every packet is dropped.
//!
//! The message layouts are those of `linux/netfilter/nfnetlink_queue.h`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::delay_line::{Admission, DelayLine, DelayLineCounters, DelaySpec};

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Attribute type bits that are flags, not part of the type (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The kernel's default queue length (1,024) overflows at 40 ms RTT and
/// 100 Mbit/s; 50,000 was measured to be enough.
pub const QUEUE_MAXLEN: u32 = 50_000;
/// Receive buffer for packet notifications (about 100 bytes each with copy range 0).
const RCVBUF_BYTES: libc::c_int = 16 << 20;
/// Packet notifications read per wake-up before releasing due packets again.
const MAX_READS_PER_WAKEUP: usize = 4096;

/// Why the delayer could not run.
#[derive(Debug)]
pub enum DelayerError {
    /// A socket call failed (`what` names it).
    Io { what: &'static str, err: io::Error },
    /// The kernel refused a configuration message (errno); EBUSY means the
    /// queue number is taken by another listener.
    Refused { what: &'static str, errno: i32 },
    /// The kernel did not acknowledge a configuration message in time.
    NoAck { what: &'static str },
}

impl std::fmt::Display for DelayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DelayerError::Io { what, err } => write!(f, "nfqueue {what}: {err}"),
            DelayerError::Refused { what, errno } => write!(
                f,
                "nfqueue {what} refused by the kernel: {}",
                io::Error::from_raw_os_error(*errno)
            ),
            DelayerError::NoAck { what } => write!(f, "nfqueue {what}: no answer from the kernel"),
        }
    }
}

impl std::error::Error for DelayerError {}

/// One netlink message as the delayer understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkEvent {
    /// A queued packet's id.
    Packet(u32),
    /// An acknowledgement (`errno == 0`) or an error for request `seq`.
    Ack { seq: u32, errno: i32 },
    /// Anything else (well-formed, not ours to act on).
    Other,
}

/// Why a received buffer could not be read; the rest of that buffer is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedNetlink {
    Truncated,
    BadLength(u32),
    PacketWithoutHeader,
}

fn message_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_QUEUE << 8) | msg
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (len.next_multiple_of(4) - len), 0);
}

/// Appends one nfnetlink-queue message to `buf` (several may share one send).
pub fn push_message(
    buf: &mut Vec<u8>,
    msg: u16,
    flags: u16,
    seq: u32,
    queue: u16,
    attrs: &[(u16, &[u8])],
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]); // length, filled in below
    buf.extend_from_slice(&message_type(msg).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    buf.push(libc::AF_UNSPEC as u8); // nfgen_family
    buf.push(0); // NFNETLINK_V0
    buf.extend_from_slice(&queue.to_be_bytes()); // res_id
    for (kind, payload) in attrs {
        push_attr(buf, *kind, payload);
    }
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn push_verdict_message(buf: &mut Vec<u8>, msg: u16, queue: u16, id: u32, verdict: u32) {
    // struct nfqnl_msg_verdict_hdr { __be32 verdict; __be32 id; }
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.to_be_bytes());
    hdr[4..].copy_from_slice(&id.to_be_bytes());
    push_message(
        buf,
        msg,
        NLM_F_REQUEST,
        0,
        queue,
        &[(NFQA_VERDICT_HDR, &hdr)],
    );
}

/// A verdict for one packet (used to drop a lost one at once).
pub fn push_verdict(buf: &mut Vec<u8>, queue: u16, id: u32, verdict: u32) {
    push_verdict_message(buf, NFQNL_MSG_VERDICT, queue, id, verdict);
}

/// One verdict for every queued packet up to and including `id`, in queue order.
pub fn push_batch_verdict(buf: &mut Vec<u8>, queue: u16, id: u32, verdict: u32) {
    push_verdict_message(buf, NFQNL_MSG_VERDICT_BATCH, queue, id, verdict);
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the messages of one received buffer, calling `each` for every one,
/// and stops at the first malformed one. Never panics on any input.
pub fn parse_messages(
    mut buf: &[u8],
    mut each: impl FnMut(NetlinkEvent),
) -> Result<(), MalformedNetlink> {
    while !buf.is_empty() {
        let len = read_u32(buf, 0).ok_or(MalformedNetlink::Truncated)?;
        let kind = read_u16(buf, 4).ok_or(MalformedNetlink::Truncated)?;
        let seq = read_u32(buf, 8).ok_or(MalformedNetlink::Truncated)?;
        let ulen = len as usize;
        if ulen < NLMSG_HDRLEN || ulen > buf.len() {
            return Err(MalformedNetlink::BadLength(len));
        }
        let body = &buf[NLMSG_HDRLEN..ulen];
        let event = if kind == NLMSG_ERROR {
            let err = read_u32(body, 0).ok_or(MalformedNetlink::Truncated)? as i32;
            NetlinkEvent::Ack {
                seq,
                errno: err.wrapping_neg(),
            }
        } else if kind == message_type(NFQNL_MSG_PACKET) {
            NetlinkEvent::Packet(packet_id(body)?)
        } else {
            NetlinkEvent::Other
        };
        each(event);
        buf = buf.get(ulen.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(())
}

/// The packet id from a packet message body (nfgenmsg, then attributes).
fn packet_id(body: &[u8]) -> Result<u32, MalformedNetlink> {
    let mut attrs = body
        .get(NFGENMSG_LEN..)
        .ok_or(MalformedNetlink::Truncated)?;
    while attrs.len() >= 4 {
        let len = read_u16(attrs, 0).ok_or(MalformedNetlink::Truncated)? as usize;
        let kind = read_u16(attrs, 2).ok_or(MalformedNetlink::Truncated)? & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return Err(MalformedNetlink::BadLength(len as u32));
        }
        if kind == NFQA_PACKET_HDR {
            // struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; }
            let id = attrs
                .get(4..8)
                .ok_or(MalformedNetlink::Truncated)?
                .try_into()
                .map_err(|_| MalformedNetlink::Truncated)?;
            return Ok(u32::from_be_bytes(id));
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Err(MalformedNetlink::PacketWithoutHeader)
}

/// What the delayer did, printed as one JSON line when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayerReport {
    pub line: DelayLineCounters,
    /// Times the notification buffer overflowed (those packets are released
    /// undelayed by the next batch verdict).
    pub enobufs: u64,
    /// Malformed messages skipped.
    pub malformed: u64,
    /// Packets the kernel dropped because the queue was full (from /proc).
    pub queue_dropped: u64,
}

impl DelayerReport {
    /// Adds another delayer's counts to these.
    pub fn add(&mut self, other: &DelayerReport) {
        self.line.seen += other.line.seen;
        self.line.lost += other.line.lost;
        self.line.released += other.line.released;
        self.enobufs += other.enobufs;
        self.malformed += other.malformed;
        self.queue_dropped += other.queue_dropped;
    }

    pub fn to_json(&self) -> String {
        format!(
            "{{\"seen\":{},\"lost\":{},\"released\":{},\"enobufs\":{},\"malformed\":{},\"queue_dropped\":{}}}",
            self.line.seen,
            self.line.lost,
            self.line.released,
            self.enobufs,
            self.malformed,
            self.queue_dropped
        )
    }

    /// Reads back what `to_json` wrote.
    pub fn from_json(line: &str) -> Option<DelayerReport> {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_u64());
        Some(DelayerReport {
            line: DelayLineCounters {
                seen: get("seen")?,
                lost: get("lost")?,
                released: get("released")?,
            },
            enobufs: get("enobufs")?,
            malformed: get("malformed")?,
            queue_dropped: get("queue_dropped")?,
        })
    }
}

/// A bound NFQUEUE netlink socket.
pub struct NfQueue {
    fd: OwnedFd,
    queue: u16,
    seq: u32,
}

fn io_err(what: &'static str) -> DelayerError {
    DelayerError::Io {
        what,
        err: io::Error::last_os_error(),
    }
}

impl NfQueue {
    /// Opens the socket and binds `queue` with metadata-only copies and a
    /// queue length of [`QUEUE_MAXLEN`].
    pub fn bind(queue: u16) -> Result<NfQueue, DelayerError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io_err("socket"));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err("bind"));
        }
        // Best effort: a bigger buffer only makes overflow rarer.
        let size = RCVBUF_BYTES;
        // SAFETY: setsockopt with a c_int option value.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut q = NfQueue { fd, queue, seq: 0 };
        // struct nfqnl_msg_config_cmd { __u8 command; __u8 _pad; __be16 pf; }
        let mut cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
        cmd[2..].copy_from_slice(&(libc::AF_INET as u16).to_be_bytes());
        q.configure("bind", NFQA_CFG_CMD, &cmd)?;
        // struct nfqnl_msg_config_params { __be32 copy_range; __u8 copy_mode; } (packed)
        let params = [0, 0, 0, 0, NFQNL_COPY_META];
        q.configure("copy mode", NFQA_CFG_PARAMS, &params)?;
        q.configure(
            "queue length",
            NFQA_CFG_QUEUE_MAXLEN,
            &QUEUE_MAXLEN.to_be_bytes(),
        )?;
        Ok(q)
    }

    fn configure(
        &mut self,
        what: &'static str,
        attr: u16,
        payload: &[u8],
    ) -> Result<(), DelayerError> {
        self.seq += 1;
        let seq = self.seq;
        let mut msg = Vec::new();
        push_message(
            &mut msg,
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            self.queue,
            &[(attr, payload)],
        );
        self.send(&msg)
            .map_err(|err| DelayerError::Io { what, err })?;
        let mut buf = vec![0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !self.wait_readable(Some(Duration::from_millis(100))) {
                continue;
            }
            let n = match self.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(err) => return Err(DelayerError::Io { what, err }),
            };
            let mut answer = None;
            let _ = parse_messages(&buf[..n], |ev| {
                if let NetlinkEvent::Ack { seq: s, errno } = ev {
                    if s == seq {
                        answer = Some(errno);
                    }
                }
            });
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => return Err(DelayerError::Refused { what, errno }),
                None => {}
            }
        }
        Err(DelayerError::NoAck { what })
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: a valid buffer and length; the kernel is the default destination.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: a valid writable buffer and its length.
        let rc = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }

    /// Waits until the socket is readable or `timeout` passes (ns precision).
    fn wait_readable(&self, timeout: Option<Duration>) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one valid pollfd; ts_ptr is null or points to a live timespec.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, ts_ptr, std::ptr::null()) };
        rc > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Runs the delay line until `stop` is set; returns what it did.
    pub fn run(
        &mut self,
        spec: DelaySpec,
        stop: &AtomicBool,
    ) -> Result<DelayerReport, DelayerError> {
        // Wake-ups on time: the default 50 µs timer slack would add to every delay.
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        let epoch = Instant::now();
        let mut line: DelayLine<u32> = DelayLine::new(spec);
        let mut report = DelayerReport::default();
        let mut rx = vec![0u8; 65536];
        let mut out: Vec<u8> = Vec::with_capacity(65536);
        let idle = Duration::from_millis(100);
        while !stop.load(Ordering::Relaxed) {
            let now = epoch.elapsed();
            let timeout = line
                .next_release()
                .map_or(idle, |t| t.saturating_sub(now).min(idle));
            if self.wait_readable(Some(timeout)) {
                for _ in 0..MAX_READS_PER_WAKEUP {
                    let n = match self.recv(&mut rx) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            report.enobufs += 1;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                        Err(err) => return Err(DelayerError::Io { what: "recv", err }),
                    };
                    let now = epoch.elapsed();
                    let queue = self.queue;
                    let parsed = parse_messages(&rx[..n], |ev| {
                        if let NetlinkEvent::Packet(id) = ev {
                            if line.admit(now, id) == Admission::Lost {
                                push_verdict(&mut out, queue, id, NF_DROP);
                            }
                        }
                    });
                    if parsed.is_err() {
                        report.malformed += 1;
                    }
                    if out.len() > 60_000 {
                        self.flush(&mut out)?;
                    }
                }
            }
            if let Some(last) = line.pop_due(epoch.elapsed()) {
                push_batch_verdict(&mut out, self.queue, last, NF_ACCEPT);
            }
            self.flush(&mut out)?;
        }
        report.line = line.counters();
        report.queue_dropped = queue_dropped_from_proc(self.queue).unwrap_or(0);
        Ok(report)
    }

    fn flush(&self, out: &mut Vec<u8>) -> Result<(), DelayerError> {
        if out.is_empty() {
            return Ok(());
        }
        let result = self.send(out);
        out.clear();
        match result {
            Ok(()) => Ok(()),
            // A verdict for a packet that is gone (ENOENT) is harmless.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(err) => Err(DelayerError::Io {
                what: "verdict",
                err,
            }),
        }
    }
}

/// `queue_dropped + user_dropped` of one queue, from this namespace's
/// `/proc/net/netfilter/nfnetlink_queue`.
fn queue_dropped_from_proc(queue: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue").ok()?;
    parse_queue_dropped(&text, queue)
}

/// Columns: queue, portid, queued, copy mode, copy range, queue_dropped, user_dropped, id, 1.
pub fn parse_queue_dropped(text: &str, queue: u16) -> Option<u64> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.first()?.parse::<u16>().ok()? != queue {
            return None;
        }
        Some(f.get(5)?.parse::<u64>().ok()? + f.get(6)?.parse::<u64>().ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_message(id: u32) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 2]);
        let mut m = Vec::new();
        push_message(
            &mut m,
            NFQNL_MSG_PACKET,
            0,
            0,
            5,
            &[(9, &[1, 2, 3, 4]), (NFQA_PACKET_HDR, &hdr)],
        );
        m
    }

    #[test]
    fn packet_ids_come_out_of_a_buffer_of_messages() {
        let mut buf = packet_message(7);
        buf.extend(packet_message(0xdead_beef));
        let mut ids = Vec::new();
        parse_messages(&buf, |ev| {
            if let NetlinkEvent::Packet(id) = ev {
                ids.push(id)
            }
        })
        .unwrap();
        assert_eq!(ids, vec![7, 0xdead_beef]);
    }

    #[test]
    fn messages_are_padded_and_carry_the_queue_in_network_order() {
        let mut buf = Vec::new();
        push_batch_verdict(&mut buf, 0x0102, 99, NF_ACCEPT);
        assert_eq!(buf.len(), NLMSG_HDRLEN + NFGENMSG_LEN + 12);
        assert_eq!(read_u32(&buf, 0), Some(buf.len() as u32));
        assert_eq!(read_u16(&buf, 4), Some((3 << 8) | 3));
        assert_eq!(&buf[18..20], &[1, 2]);
        assert_eq!(&buf[24..28], &NF_ACCEPT.to_be_bytes());
        assert_eq!(&buf[28..32], &99u32.to_be_bytes());
        let mut m = Vec::new();
        push_message(
            &mut m,
            NFQNL_MSG_CONFIG,
            0,
            0,
            0,
            &[(NFQA_CFG_PARAMS, &[0, 0, 0, 0, 1])],
        );
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            read_u16(&m, NLMSG_HDRLEN + NFGENMSG_LEN),
            Some(9),
            "attr length excludes padding"
        );
    }

    #[test]
    fn acks_and_errors_carry_their_sequence_number() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&5u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::EBUSY).to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        let mut events = Vec::new();
        parse_messages(&m, |e| events.push(e)).unwrap();
        assert_eq!(
            events,
            vec![NetlinkEvent::Ack {
                seq: 5,
                errno: libc::EBUSY
            }]
        );
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let buf = packet_message(3);
        for cut in 0..buf.len() {
            let _ = parse_messages(&buf[..cut], |_| {});
        }
        assert!(parse_messages(&buf[..10], |_| {}).is_err());
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                let _ = parse_messages(&b, |_| {});
            }
        }
        let mut no_hdr = Vec::new();
        push_message(
            &mut no_hdr,
            NFQNL_MSG_PACKET,
            0,
            0,
            5,
            &[(9, &[1, 2, 3, 4])],
        );
        assert_eq!(
            parse_messages(&no_hdr, |_| {}),
            Err(MalformedNetlink::PacketWithoutHeader)
        );
    }

    #[test]
    fn proc_queue_line_gives_the_kernel_drops() {
        let text = "    3  12345     0 1     0     17     4   900  1\n    4  1 0 1 0 0 0 0 1\n";
        assert_eq!(parse_queue_dropped(text, 3), Some(21));
        assert_eq!(parse_queue_dropped(text, 4), Some(0));
        assert_eq!(parse_queue_dropped(text, 5), None);
    }

    #[test]
    fn report_round_trips_through_its_json_line() {
        let r = DelayerReport {
            line: DelayLineCounters {
                seen: 10,
                lost: 2,
                released: 8,
            },
            enobufs: 1,
            malformed: 0,
            queue_dropped: 3,
        };
        assert_eq!(DelayerReport::from_json(&r.to_json()), Some(r));
        assert_eq!(DelayerReport::from_json("ready"), None);
    }
}
