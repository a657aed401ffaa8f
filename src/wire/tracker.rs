//! Tracker protocol frames, spoken over TCP between peers and the tracker.
//!
//! Every frame is
//!
//! ```text
//!  0..4  len      u32, big-endian: bytes after this field (2 ..= MAX_FRAME_LEN)
//!  4     protocol 0xC1: magic in the high nibble (0xC), version in the low one (1)
//!  5     type     which message (see the `T_*` constants)
//!  6..   body     the message's fields, big-endian integers, u16-prefixed UTF-8 strings
//! ```
//!
//! The largest frame is a `Group` carrying the largest manifest we support:
//! [`manifest::MAX_CHUNKS`] (167,773) chunk digests of 32 bytes, plus the
//! owner and up to [`MAX_GROUP_MEMBERS`] members: [`MAX_FRAME_LEN`] is about
//! 5.5 MB. A reader checks an announced length against it before it buffers
//! anything ([`FrameBuffer`]), and every decoder returns a [`wire::Error`](Error)
//! on malformed input; none can panic.

use super::{Error, Reader};
use crate::manifest::{self, Digest32, Manifest, MAX_CHUNKS, MAX_NAME_LEN};
use byteorder::{ByteOrder, NetworkEndian};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Magic (high nibble) and version (low nibble) of the tracker protocol.
pub const PROTOCOL: u8 = 0xC1;
const MAGIC_NIBBLE: u8 = 0xC0;

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Most members a downloading group may hold (the tracker refuses more).
pub const MAX_GROUP_MEMBERS: usize = 4096;

/// Most shared files the tracker keeps (and so the longest `list` answer).
pub const MAX_FILES: usize = 4096;

/// Longest error message carried in a `Refused` frame, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Largest encoded [`PeerInfo`]: id, family, IPv6 address, port.
const MAX_PEER_INFO_LEN: usize = 8 + 1 + 16 + 2;

/// Largest encoded manifest: name, size, chunk size, chunk count, digests, file digest.
pub const MAX_MANIFEST_LEN: usize = 2 + MAX_NAME_LEN + 8 + 4 + 4 + 32 * MAX_CHUNKS as usize + 32;

/// Largest encoded `list` entry.
const MAX_FILE_ENTRY_LEN: usize = 2 + MAX_NAME_LEN + 8 + 4 + MAX_PEER_INFO_LEN + 4;

/// Largest frame (after the length prefix): protocol and type bytes, request
/// id, and a group view with the largest manifest and the most members.
pub const MAX_FRAME_LEN: usize =
    2 + 4 + MAX_MANIFEST_LEN + MAX_PEER_INFO_LEN + 4 + MAX_GROUP_MEMBERS * MAX_PEER_INFO_LEN;

// As the module doc says: about 5.5 MB.
const _: () = assert!(MAX_FRAME_LEN > 5_000_000 && MAX_FRAME_LEN < 6_000_000);

// The longest `list` answer fits in a frame too.
const _: () = assert!(2 + 4 + 4 + MAX_FILES * MAX_FILE_ENTRY_LEN <= MAX_FRAME_LEN);

// Message types. Peer to tracker: 0x01..; tracker to peer: 0x81..; both: heartbeat.
const T_HEARTBEAT: u8 = 0x00;
const T_HELLO: u8 = 0x01;
const T_REGISTER_FILE: u8 = 0x02;
const T_LIST: u8 = 0x03;
const T_JOIN_GROUP: u8 = 0x04;
const T_LEAVE_GROUP: u8 = 0x05;
const T_GET_GROUP: u8 = 0x06;
const T_WELCOME: u8 = 0x81;
const T_REGISTERED: u8 = 0x82;
const T_FILES: u8 = 0x83;
const T_GROUP: u8 = 0x84;
const T_LEFT: u8 = 0x85;
const T_GROUP_CLOSED: u8 = 0x86;
const T_REFUSED: u8 = 0x87;

/// The tracker's name for an online peer (one per TCP session, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}", self.0)
    }
}

/// Correlates a request with its answer. 0 marks a push the tracker sent unasked.
pub type RequestId = u32;

/// A peer as others must reach it: its tracker id and its rudp (UDP) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub udp: SocketAddr,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.id, self.udp)
    }
}

/// One line of the `list` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub chunk_count: u32,
    pub owner: PeerInfo,
    pub group_size: u32,
}

/// A file's downloading group as its owner and members must see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub manifest: Manifest,
    pub owner: PeerInfo,
    /// In the order they joined.
    pub members: Vec<PeerInfo>,
}

/// Why the tracker refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// No shared file has that name.
    UnknownFile = 1,
    /// Another peer already shares a file of that name.
    AlreadyShared = 2,
    /// A peer asked to join the group of its own file.
    OwnFile = 3,
    /// The peer is already in that group.
    AlreadyMember = 4,
    /// The peer is neither the owner nor a member of that group.
    NotMember = 5,
    /// The manifest is inconsistent.
    BadManifest = 6,
    /// A limit ([`MAX_FILES`], [`MAX_GROUP_MEMBERS`]) is reached.
    Full = 7,
    /// The frame broke the protocol; the tracker closes the session.
    Protocol = 8,
}

impl RefusalCode {
    fn from_u8(b: u8) -> Result<Self, Error> {
        Ok(match b {
            1 => RefusalCode::UnknownFile,
            2 => RefusalCode::AlreadyShared,
            3 => RefusalCode::OwnFile,
            4 => RefusalCode::AlreadyMember,
            5 => RefusalCode::NotMember,
            6 => RefusalCode::BadManifest,
            7 => RefusalCode::Full,
            8 => RefusalCode::Protocol,
            _ => return Err(Error::Invalid("refusal code")),
        })
    }
}

/// Frames a peer sends to the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// "I am alive"; also sent in answer to the tracker's.
    Heartbeat,
    /// First frame of a session: where the peer receives rudp traffic.
    /// `advertise` replaces the source IP the tracker sees, if given.
    Hello {
        udp_port: u16,
        advertise: Option<IpAddr>,
    },
    /// register-peer: share this file.
    RegisterFile { req: RequestId, manifest: Manifest },
    /// list.
    List { req: RequestId },
    /// register-group: join this file's downloading group.
    JoinGroup { req: RequestId, name: String },
    /// Leave a group joined before.
    LeaveGroup { req: RequestId, name: String },
    /// Fetch a group's current view (the owner, before upload).
    GetGroup { req: RequestId, name: String },
}

/// Frames the tracker sends to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerMessage {
    Heartbeat,
    /// Answer to `Hello`: the peer's id, the rudp address others will use,
    /// and the tracker's heartbeat interval.
    Welcome {
        peer_id: PeerId,
        udp: SocketAddr,
        heartbeat_ms: u32,
    },
    Registered {
        req: RequestId,
        name: String,
    },
    Files {
        req: RequestId,
        files: Vec<FileEntry>,
    },
    /// A group view: the answer to `JoinGroup`/`GetGroup`, or (req 0) a push
    /// after every change of the group.
    Group {
        req: RequestId,
        group: GroupView,
    },
    /// Answer to `LeaveGroup`.
    Left {
        req: RequestId,
        name: String,
    },
    /// Push: the group is gone because its owner went offline.
    GroupClosed {
        name: String,
    },
    /// A request was refused (req 0: the session broke the protocol).
    Refused {
        req: RequestId,
        code: RefusalCode,
        message: String,
    },
}

/// Appends big-endian fields to a frame under construction.
struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        let mut b = [0; 2];
        NetworkEndian::write_u16(&mut b, v);
        self.0.extend_from_slice(&b);
    }
    fn u32(&mut self, v: u32) {
        let mut b = [0; 4];
        NetworkEndian::write_u32(&mut b, v);
        self.0.extend_from_slice(&b);
    }
    fn u64(&mut self, v: u64) {
        let mut b = [0; 8];
        NetworkEndian::write_u64(&mut b, v);
        self.0.extend_from_slice(&b);
    }
    /// A u16-prefixed string, cut at `max` bytes (on a char boundary).
    fn str(&mut self, s: &str, max: usize) {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.0.extend_from_slice(&s.as_bytes()[..end]);
    }
    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                self.u8(4);
                self.0.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                self.u8(6);
                self.0.extend_from_slice(&v6.octets());
            }
        }
    }
    fn addr(&mut self, a: SocketAddr) {
        self.ip(a.ip());
        self.u16(a.port());
    }
    fn peer(&mut self, p: &PeerInfo) {
        self.u64(p.id.0);
        self.addr(p.udp);
    }
    fn manifest(&mut self, m: &Manifest) {
        self.str(&m.name, MAX_NAME_LEN);
        self.u64(m.size);
        self.u32(m.chunk_size);
        self.u32(m.chunk_hashes.len() as u32);
        for h in &m.chunk_hashes {
            self.0.extend_from_slice(h);
        }
        self.0.extend_from_slice(&m.file_hash);
    }
}

fn read_str(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<String, Error> {
    let len = r.u16()? as usize;
    if len > max {
        return Err(Error::TooLong {
            len: len as u64,
            max: max as u64,
        });
    }
    let bytes = r.bytes(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::Invalid(what))
}

fn read_name(r: &mut Reader<'_>) -> Result<String, Error> {
    let name = read_str(r, MAX_NAME_LEN, "file name (not UTF-8)")?;
    manifest::check_file_name(&name).map_err(|_| Error::Invalid("file name"))?;
    Ok(name)
}

fn read_ip(r: &mut Reader<'_>) -> Result<IpAddr, Error> {
    match r.u8()? {
        4 => Ok(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
        _ => Err(Error::Invalid("address family")),
    }
}

fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, Error> {
    let ip = read_ip(r)?;
    Ok(SocketAddr::new(ip, r.u16()?))
}

fn read_peer(r: &mut Reader<'_>) -> Result<PeerInfo, Error> {
    let id = PeerId(r.u64()?);
    Ok(PeerInfo {
        id,
        udp: read_addr(r)?,
    })
}

fn read_manifest(r: &mut Reader<'_>) -> Result<Manifest, Error> {
    let name = read_name(r)?;
    let size = r.u64()?;
    let chunk_size = r.u32()?;
    let count = r.u32()?;
    if count > MAX_CHUNKS {
        return Err(Error::TooLong {
            len: count as u64,
            max: MAX_CHUNKS as u64,
        });
    }
    // The digests must be present before we allocate room for them.
    let digests = r.bytes(count as usize * 32)?;
    let chunk_hashes: Vec<Digest32> = digests
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect();
    let file_hash = r.array::<32>()?;
    let m = Manifest {
        name,
        size,
        chunk_size,
        chunk_hashes,
        file_hash,
    };
    m.validate().map_err(|_| Error::Invalid("manifest"))?;
    Ok(m)
}

/// Reads a u32 element count and checks it against `max` and against the
/// bytes left (each element takes at least `min_len`), before any allocation.
fn read_count(r: &mut Reader<'_>, max: usize, min_len: usize) -> Result<usize, Error> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(Error::TooLong {
            len: n as u64,
            max: max as u64,
        });
    }
    if n.saturating_mul(min_len) > r.remaining() {
        return Err(Error::Truncated);
    }
    Ok(n)
}

/// Smallest encoded [`PeerInfo`] (IPv4).
const MIN_PEER_INFO_LEN: usize = 8 + 1 + 4 + 2;

fn read_group(r: &mut Reader<'_>) -> Result<GroupView, Error> {
    let manifest = read_manifest(r)?;
    let owner = read_peer(r)?;
    let n = read_count(r, MAX_GROUP_MEMBERS, MIN_PEER_INFO_LEN)?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push(read_peer(r)?);
    }
    Ok(GroupView {
        manifest,
        owner,
        members,
    })
}

/// Starts a frame: a length placeholder, the protocol byte and the type.
fn begin(out: &mut Vec<u8>, ty: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, PROTOCOL, ty]);
    start
}

/// Fills in the length of the frame that starts at `start`.
fn end(out: &mut [u8], start: usize) {
    let len = (out.len() - start - LEN_PREFIX) as u32;
    NetworkEndian::write_u32(&mut out[start..start + LEN_PREFIX], len);
}

/// Checks the protocol byte and returns the type and a reader over the body.
fn open(frame: &[u8]) -> Result<(u8, Reader<'_>), Error> {
    let mut r = Reader::new(frame);
    let proto = r.u8()?;
    if proto & 0xF0 != MAGIC_NIBBLE {
        return Err(Error::BadMagic(proto));
    }
    if proto != PROTOCOL {
        return Err(Error::BadVersion(proto & 0x0F));
    }
    let ty = r.u8()?;
    Ok((ty, r))
}

impl PeerMessage {
    /// Appends this message as one whole frame (length prefix included).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ty = match self {
            PeerMessage::Heartbeat => T_HEARTBEAT,
            PeerMessage::Hello { .. } => T_HELLO,
            PeerMessage::RegisterFile { .. } => T_REGISTER_FILE,
            PeerMessage::List { .. } => T_LIST,
            PeerMessage::JoinGroup { .. } => T_JOIN_GROUP,
            PeerMessage::LeaveGroup { .. } => T_LEAVE_GROUP,
            PeerMessage::GetGroup { .. } => T_GET_GROUP,
        };
        let start = begin(out, ty);
        let mut w = Writer(out);
        match self {
            PeerMessage::Heartbeat => {}
            PeerMessage::Hello {
                udp_port,
                advertise,
            } => {
                w.u16(*udp_port);
                match advertise {
                    None => w.u8(0),
                    Some(ip) => w.ip(*ip),
                }
            }
            PeerMessage::RegisterFile { req, manifest } => {
                w.u32(*req);
                w.manifest(manifest);
            }
            PeerMessage::List { req } => w.u32(*req),
            PeerMessage::JoinGroup { req, name }
            | PeerMessage::LeaveGroup { req, name }
            | PeerMessage::GetGroup { req, name } => {
                w.u32(*req);
                w.str(name, MAX_NAME_LEN);
            }
        }
        end(out, start);
    }

    /// Decodes one frame (the bytes after the length prefix).
    pub fn decode(frame: &[u8]) -> Result<PeerMessage, Error> {
        let (ty, mut r) = open(frame)?;
        let msg = match ty {
            T_HEARTBEAT => PeerMessage::Heartbeat,
            T_HELLO => {
                let udp_port = r.u16()?;
                let advertise = match r.u8()? {
                    0 => None,
                    4 => Some(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
                    6 => Some(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
                    _ => return Err(Error::Invalid("address family")),
                };
                PeerMessage::Hello {
                    udp_port,
                    advertise,
                }
            }
            T_REGISTER_FILE => PeerMessage::RegisterFile {
                req: r.u32()?,
                manifest: read_manifest(&mut r)?,
            },
            T_LIST => PeerMessage::List { req: r.u32()? },
            T_JOIN_GROUP => PeerMessage::JoinGroup {
                req: r.u32()?,
                name: read_name(&mut r)?,
            },
            T_LEAVE_GROUP => PeerMessage::LeaveGroup {
                req: r.u32()?,
                name: read_name(&mut r)?,
            },
            T_GET_GROUP => PeerMessage::GetGroup {
                req: r.u32()?,
                name: read_name(&mut r)?,
            },
            other => return Err(Error::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

impl TrackerMessage {
    /// Appends this message as one whole frame (length prefix included).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let ty = match self {
            TrackerMessage::Heartbeat => T_HEARTBEAT,
            TrackerMessage::Welcome { .. } => T_WELCOME,
            TrackerMessage::Registered { .. } => T_REGISTERED,
            TrackerMessage::Files { .. } => T_FILES,
            TrackerMessage::Group { .. } => T_GROUP,
            TrackerMessage::Left { .. } => T_LEFT,
            TrackerMessage::GroupClosed { .. } => T_GROUP_CLOSED,
            TrackerMessage::Refused { .. } => T_REFUSED,
        };
        let start = begin(out, ty);
        let mut w = Writer(out);
        match self {
            TrackerMessage::Heartbeat => {}
            TrackerMessage::Welcome {
                peer_id,
                udp,
                heartbeat_ms,
            } => {
                w.u64(peer_id.0);
                w.addr(*udp);
                w.u32(*heartbeat_ms);
            }
            TrackerMessage::Registered { req, name } | TrackerMessage::Left { req, name } => {
                w.u32(*req);
                w.str(name, MAX_NAME_LEN);
            }
            TrackerMessage::Files { req, files } => {
                w.u32(*req);
                let files = &files[..files.len().min(MAX_FILES)];
                w.u32(files.len() as u32);
                for f in files {
                    w.str(&f.name, MAX_NAME_LEN);
                    w.u64(f.size);
                    w.u32(f.chunk_count);
                    w.peer(&f.owner);
                    w.u32(f.group_size);
                }
            }
            TrackerMessage::Group { req, group } => {
                w.u32(*req);
                w.manifest(&group.manifest);
                w.peer(&group.owner);
                let members = &group.members[..group.members.len().min(MAX_GROUP_MEMBERS)];
                w.u32(members.len() as u32);
                for m in members {
                    w.peer(m);
                }
            }
            TrackerMessage::GroupClosed { name } => w.str(name, MAX_NAME_LEN),
            TrackerMessage::Refused { req, code, message } => {
                w.u32(*req);
                w.u8(*code as u8);
                w.str(message, MAX_MESSAGE_LEN);
            }
        }
        end(out, start);
    }

    /// Decodes one frame (the bytes after the length prefix).
    pub fn decode(frame: &[u8]) -> Result<TrackerMessage, Error> {
        let (ty, mut r) = open(frame)?;
        let msg = match ty {
            T_HEARTBEAT => TrackerMessage::Heartbeat,
            T_WELCOME => TrackerMessage::Welcome {
                peer_id: PeerId(r.u64()?),
                udp: read_addr(&mut r)?,
                heartbeat_ms: r.u32()?,
            },
            T_REGISTERED => TrackerMessage::Registered {
                req: r.u32()?,
                name: read_name(&mut r)?,
            },
            T_FILES => {
                let req = r.u32()?;
                let n = read_count(&mut r, MAX_FILES, 2 + 1 + 8 + 4 + MIN_PEER_INFO_LEN + 4)?;
                let mut files = Vec::with_capacity(n);
                for _ in 0..n {
                    files.push(FileEntry {
                        name: read_name(&mut r)?,
                        size: r.u64()?,
                        chunk_count: r.u32()?,
                        owner: read_peer(&mut r)?,
                        group_size: r.u32()?,
                    });
                }
                TrackerMessage::Files { req, files }
            }
            T_GROUP => TrackerMessage::Group {
                req: r.u32()?,
                group: read_group(&mut r)?,
            },
            T_LEFT => TrackerMessage::Left {
                req: r.u32()?,
                name: read_name(&mut r)?,
            },
            T_GROUP_CLOSED => TrackerMessage::GroupClosed {
                name: read_name(&mut r)?,
            },
            T_REFUSED => TrackerMessage::Refused {
                req: r.u32()?,
                code: RefusalCode::from_u8(r.u8()?)?,
                message: read_str(&mut r, MAX_MESSAGE_LEN, "message (not UTF-8)")?,
            },
            other => return Err(Error::UnknownType(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// Collects bytes from a stream and cuts them into frames. An announced
/// length is checked against [`MAX_FRAME_LEN`] as soon as its 4 bytes are in,
/// so a huge length is refused before anything is buffered for it.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
}

impl FrameBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Length the next frame announces, once its prefix is in; an error if
    /// that length is impossible. Callers may use it to bound their reads.
    fn announced(&self) -> Result<Option<usize>, Error> {
        let rest = &self.buf[self.start..];
        if rest.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = NetworkEndian::read_u32(&rest[..LEN_PREFIX]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(Error::TooLong {
                len: len as u64,
                max: MAX_FRAME_LEN as u64,
            });
        }
        if len < 2 {
            return Err(Error::Invalid("frame length"));
        }
        Ok(Some(len))
    }

    /// The next whole frame (without its length prefix), if all of it is in.
    /// After an error the stream is unusable: close it.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, Error> {
        let Some(len) = self.announced()? else {
            return Ok(None);
        };
        if self.pending() < LEN_PREFIX + len {
            return Ok(None);
        }
        let from = self.start + LEN_PREFIX;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Drops consumed bytes so the buffer does not grow without bound.
    pub fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, port: u16) -> PeerInfo {
        PeerInfo {
            id: PeerId(id),
            udp: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn frame_of(msg: &TrackerMessage) -> Vec<u8> {
        let mut out = Vec::new();
        msg.encode(&mut out);
        out
    }

    #[test]
    fn group_round_trip_and_every_truncation_fails() {
        let data: Vec<u8> = (0..250_000u32).map(|i| (i * 7 / 3) as u8).collect();
        let msg = TrackerMessage::Group {
            req: 9,
            group: GroupView {
                manifest: Manifest::of_bytes("movie.mp4", &data),
                owner: peer(1, 4000),
                members: vec![peer(2, 4001), peer(3, 4002)],
            },
        };
        let bytes = frame_of(&msg);
        assert_eq!(
            NetworkEndian::read_u32(&bytes) as usize,
            bytes.len() - LEN_PREFIX
        );
        assert_eq!(TrackerMessage::decode(&bytes[LEN_PREFIX..]), Ok(msg));
        for cut in LEN_PREFIX..bytes.len() {
            assert!(TrackerMessage::decode(&bytes[LEN_PREFIX..cut]).is_err());
        }
    }

    #[test]
    fn bad_protocol_byte_and_type() {
        assert_eq!(
            PeerMessage::decode(&[0x41, T_LIST, 0, 0, 0, 1]),
            Err(Error::BadMagic(0x41))
        );
        assert_eq!(
            PeerMessage::decode(&[0xC2, T_LIST, 0, 0, 0, 1]),
            Err(Error::BadVersion(2))
        );
        assert_eq!(
            PeerMessage::decode(&[PROTOCOL, 0x7F]),
            Err(Error::UnknownType(0x7F))
        );
        assert_eq!(
            PeerMessage::decode(&[PROTOCOL, T_LIST, 0, 0, 0, 1, 0]),
            Err(Error::TrailingBytes(1))
        );
    }

    #[test]
    fn huge_length_refused_before_buffering_the_body() {
        let mut fb = FrameBuffer::new();
        fb.extend(&[0xFF, 0xFF, 0xFF]);
        assert_eq!(fb.next_frame(), Ok(None));
        fb.extend(&[0xFF]);
        assert!(matches!(fb.next_frame(), Err(Error::TooLong { .. })));
        let mut fb = FrameBuffer::new();
        fb.extend(b"GET / HTTP/1.1\r\n");
        assert!(fb.next_frame().is_err());
    }

    #[test]
    fn frames_split_anywhere_come_out_whole() {
        let mut stream = Vec::new();
        PeerMessage::List { req: 1 }.encode(&mut stream);
        PeerMessage::Heartbeat.encode(&mut stream);
        PeerMessage::JoinGroup {
            req: 2,
            name: "a.bin".into(),
        }
        .encode(&mut stream);
        for split in 0..stream.len() {
            let mut fb = FrameBuffer::new();
            let mut got = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                fb.extend(part);
                while let Some(f) = fb.next_frame().unwrap() {
                    got.push(PeerMessage::decode(f).unwrap());
                }
                fb.compact();
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(fb.pending(), 0);
        }
    }
}
