//! The rudp datagram format, in one place.
//!
//! Two header forms, as in QUIC (RFC 9000 §17): a long header for the
//! handshake, which carries the protocol version, and a short header for
//! DATA packets, which carries only what every datagram needs.
//! ```text
//! long (INITIAL, RETRY)
//!  0          1         2        6                        len-4    len
//! +----------+---------+--------+------------------------+--------+
//! |1000 type | version |  DCID  | payload                | CRC32  |
//! +----------+---------+--------+------------------------+--------+
//! short (DATA)
//!  0          1        5             5+n
//! +----------+--------+-------------+--------------------+--------+
//! |0100 00nn |  DCID  | PN (n bytes)| frames             | CRC32  |
//! +----------+--------+-------------+--------------------+--------+
//! ```
//! All integers are big-endian; connection IDs are 4 bytes, chosen by the
//! endpoint that receives with them (unique among its live connections). A
//! DATA packet carries the low `n` = `nn + 1` (1–4) bytes of its packet
//! number, enough for the peer to reconstruct it (RFC 9000 §17.1, Appendix
//! A.2/A.3; see [`pn`]). The CRC32 (IEEE, `crc32fast`) covers every byte
//! before it; for DATA it is computed over the full 8-byte packet number
//! followed by the datagram, so a packet so late that its number is
//! reconstructed wrongly fails the check instead of being taken for a new one
//! (QUIC gets the same from its AEAD nonce). A first byte with both top bits
//! clear is a version-1 datagram (whose first byte was its version): counted
//! as a bad version, like any other version mismatch.
//!
//! Long-header payloads:
//! - `INITIAL` (initiator → responder, destination CID 0): initiator CID `u32`,
//!   cookie length `u8`, cookie, zero padding up to at least
//!   [`MIN_INITIAL_SIZE`] bytes so a responder never answers with more bytes
//!   than it received (anti-amplification, as in RFC 9000 §8.1).
//! - `RETRY` (responder → initiator, stateless): cookie length `u8`, cookie.
//!
//! Frames (type byte, then fields; `v` is a QUIC variable-length integer, RFC 9000 §16):
//! - `0x00 PADDING`
//! - `0x01 PING` (ack-eliciting, no fields)
//! - `0x02 ACK` largest `v`, ack delay µs `v`, extra range count `v`, first
//!   range length `v`, then per extra range: gap `v`, length `v` (RFC 9000 §19.3 layout)
//! - `0x04 MAX_DATA` connection-offset limit `v`
//! - `0x05 CLOSE` reason `u8`
//! - `0x06 ACCEPT` responder CID `u32` (the handshake's answer)
//! - `0x10..=0x1f STREAM`: one fragment of a message. The type's low bits are
//!   flags ([`stream_flag`]): `ORDERED`; `FIN`, the fragment ends its message
//!   (so the message length is offset + data length); `START`, the fragment
//!   starts at offset 0, which is then not sent, and unless `FIN` is set the
//!   message length `v` follows instead; `LEN`, an explicit data length `v`
//!   precedes the data (without it the data runs to the CRC, so the frame is
//!   the packet's last). Fields: message id `v`, then message length `v`
//!   (`START` without `FIN`) or offset `v` (no `START`), data length `v`
//!   (`LEN`), data. A full-size fragment from the middle of a message costs
//!   1 + 2 + 4 bytes of frame header: with the 7-byte short header and the CRC,
//!   1454 of a 1472-byte datagram are message bytes.
//!
//! [`Packet`] is a checked view in the smoltcp style: `new_checked` validates
//! the length once, field offsets are named, and afterwards no accessor can
//! panic. [`Frames`] decodes the payload; a malformed frame is an `Err`.

use crate::wire::{Error, Reader};
use byteorder::{ByteOrder, NetworkEndian};
use std::ops::Range;

/// 2: short headers, 4-byte CIDs, truncated packet numbers, lean STREAM
/// frames (1 had a single 18-byte header form).
pub const PROTOCOL_VERSION: u8 = 2;

mod field {
    use std::ops::Range;
    pub const FIRST: usize = 0;
    pub const VERSION: usize = 1;
    pub const LONG_DCID: Range<usize> = 2..6;
    pub const LONG_PAYLOAD: usize = 6;
    pub const SHORT_DCID: Range<usize> = 1..5;
    pub const SHORT_PN: usize = 5;
}

/// First-byte bits: header form and, for short headers, the packet-number length.
mod first_byte {
    pub const LONG: u8 = 0x80;
    pub const SHORT: u8 = 0x40;
    pub const LONG_TYPE: u8 = 0x0f;
    /// Long header: bits that must be zero.
    pub const LONG_RESERVED: u8 = 0x70;
    pub const PN_LEN: u8 = 0x03;
    /// Short header: bits that must be zero.
    pub const SHORT_RESERVED: u8 = 0x3c;
}

pub const CID_LEN: usize = 4;
pub const LONG_HEADER_LEN: usize = field::LONG_PAYLOAD;
/// A short header with a 2-byte packet number (the usual case).
pub const SHORT_HEADER_LEN: usize = field::SHORT_PN + 2;
pub const CRC_LEN: usize = 4;
/// An INITIAL is padded to at least this many bytes (RFC 9000 §14.1 uses 1200).
pub const MIN_INITIAL_SIZE: usize = 1200;
pub const MAX_COOKIE_LEN: usize = 32;

/// A connection ID: how an endpoint finds the connection a datagram is for.
pub type ConnectionId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// Long header.
    Initial = 1,
    /// Long header.
    Retry = 2,
    /// Short header.
    Data = 3,
}

impl PacketType {
    fn from_long(v: u8) -> Option<Self> {
        match v {
            1 => Some(PacketType::Initial),
            2 => Some(PacketType::Retry),
            _ => None,
        }
    }
}

/// Which header a datagram has, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Long,
    Short {
        pn_len: usize,
    },
    /// Both top bits clear: a version-1 datagram, whose first byte is its version.
    Legacy,
}

impl Form {
    fn of(first: u8) -> Self {
        if first & first_byte::LONG != 0 {
            Form::Long
        } else if first & first_byte::SHORT != 0 {
            Form::Short {
                pn_len: (first & first_byte::PN_LEN) as usize + 1,
            }
        } else {
            Form::Legacy
        }
    }

    fn header_len(self) -> usize {
        match self {
            Form::Long => LONG_HEADER_LEN,
            Form::Short { pn_len } => field::SHORT_PN + pn_len,
            Form::Legacy => 1,
        }
    }
}

/// The low bytes of a packet number as sent; [`pn::decode`] restores the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruncatedPn {
    pub value: u32,
    /// 1–4 bytes.
    pub len: usize,
}

/// A checked view of one datagram.
#[derive(Debug)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    form: Form,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` after checking it can hold its header and a CRC, and
    /// that the header's reserved bits are zero.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let d = buffer.as_ref();
        let Some(&first) = d.first() else {
            return Err(Error::Truncated);
        };
        let form = Form::of(first);
        if d.len() < form.header_len() + CRC_LEN {
            return Err(Error::Truncated);
        }
        let reserved = match form {
            Form::Long => first_byte::LONG_RESERVED,
            Form::Short { .. } => first_byte::SHORT_RESERVED,
            Form::Legacy => 0,
        };
        if first & reserved != 0 {
            return Err(Error::Invalid("reserved header bits"));
        }
        Ok(Packet { buffer, form })
    }

    fn data(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The datagram's length.
    pub fn len(&self) -> usize {
        self.data().len()
    }

    pub fn is_empty(&self) -> bool {
        self.data().is_empty()
    }

    /// The protocol version a long-header (or version-1) datagram names;
    /// `None` for DATA, whose version the handshake settled.
    pub fn version(&self) -> Option<u8> {
        match self.form {
            Form::Long => Some(self.data()[field::VERSION]),
            Form::Legacy => Some(self.data()[field::FIRST]),
            Form::Short { .. } => None,
        }
    }

    pub fn packet_type(&self) -> Option<PacketType> {
        match self.form {
            Form::Long => PacketType::from_long(self.data()[field::FIRST] & first_byte::LONG_TYPE),
            Form::Short { .. } => Some(PacketType::Data),
            Form::Legacy => None,
        }
    }

    /// The destination connection ID (0 for a version-1 datagram).
    pub fn dcid(&self) -> ConnectionId {
        match self.form {
            Form::Long => NetworkEndian::read_u32(&self.data()[field::LONG_DCID]),
            Form::Short { .. } => NetworkEndian::read_u32(&self.data()[field::SHORT_DCID]),
            Form::Legacy => 0,
        }
    }

    /// A DATA packet's packet number as sent (`None` for long headers).
    pub fn truncated_pn(&self) -> Option<TruncatedPn> {
        let Form::Short { pn_len } = self.form else {
            return None;
        };
        let bytes = &self.data()[field::SHORT_PN..field::SHORT_PN + pn_len];
        let value = bytes.iter().fold(0u32, |v, &b| (v << 8) | b as u32);
        Some(TruncatedPn { value, len: pn_len })
    }

    pub fn payload(&self) -> &[u8] {
        let d = self.data();
        &d[self.form.header_len()..d.len() - CRC_LEN]
    }

    /// The CRC of a long-header (or version-1) datagram.
    pub fn crc_ok(&self) -> bool {
        let d = self.data();
        let (body, crc) = d.split_at(d.len() - CRC_LEN);
        crc32fast::hash(body) == NetworkEndian::read_u32(crc)
    }

    /// The CRC of a DATA packet whose full packet number is `pn`.
    pub fn data_crc_ok(&self, pn: u64) -> bool {
        let d = self.data();
        let (body, crc) = d.split_at(d.len() - CRC_LEN);
        data_crc(pn, body) == NetworkEndian::read_u32(crc)
    }
}

fn data_crc(pn: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&pn.to_be_bytes());
    h.update(body);
    h.finalize()
}

/// Packet-number truncation and reconstruction (RFC 9000 §17.1, Appendix A.2, A.3).
pub mod pn {
    use super::TruncatedPn;

    /// How many bytes of `pn` to send when the peer has acknowledged up to
    /// `largest_acked`: enough that the peer's window, centred on the next
    /// number it expects, covers twice the unacknowledged range.
    pub fn encoded_len(pn: u64, largest_acked: Option<u64>) -> usize {
        let unacked = match largest_acked {
            Some(l) => pn.saturating_sub(l),
            None => pn.saturating_add(1),
        };
        (1..4).find(|n| unacked <= 1u64 << (8 * n - 1)).unwrap_or(4)
    }

    /// The low `len` bytes of `pn`.
    pub fn truncate(pn: u64, len: usize) -> TruncatedPn {
        let len = len.clamp(1, 4);
        let mask = (1u64 << (8 * len)) - 1;
        TruncatedPn {
            value: (pn & mask) as u32,
            len,
        }
    }

    /// The packet number closest to the one after `largest` (the largest
    /// received so far) whose low bytes are `t`.
    pub fn decode(t: TruncatedPn, largest: Option<u64>) -> u64 {
        let expected = largest.map_or(0, |l| l.saturating_add(1));
        let bits = 8 * t.len.clamp(1, 4) as u32;
        let win = 1u64 << bits;
        let hwin = win / 2;
        let mask = win - 1;
        let candidate = (expected & !mask) | (t.value as u64 & mask);
        if candidate + hwin <= expected && candidate < (1u64 << 62) - win {
            candidate + win
        } else if candidate > expected + hwin && candidate >= win {
            candidate - win
        } else {
            candidate
        }
    }
}
/// QUIC variable-length integers (RFC 9000 §16): 1, 2, 4 or 8 bytes.
pub mod varint {
    use super::*;

    pub const MAX: u64 = (1 << 62) - 1;

    pub fn size(v: u64) -> usize {
        if v < 1 << 6 {
            1
        } else if v < 1 << 14 {
            2
        } else if v < 1 << 30 {
            4
        } else {
            8
        }
    }

    /// Appends `v` (values above [`MAX`] are clamped; callers never produce them).
    pub fn write(buf: &mut Vec<u8>, v: u64) {
        let v = v.min(MAX);
        match size(v) {
            1 => buf.push(v as u8),
            2 => buf.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
            4 => buf.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
            _ => buf.extend_from_slice(&(v | 0xC000_0000_0000_0000).to_be_bytes()),
        }
    }

    pub fn read(r: &mut Reader<'_>) -> Result<u64, Error> {
        let first = r.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = (first & 0x3f) as u64;
        for b in r.bytes(len - 1)? {
            v = (v << 8) | *b as u64;
        }
        Ok(v)
    }
}

pub mod frame_type {
    pub const PADDING: u8 = 0x00;
    pub const PING: u8 = 0x01;
    pub const ACK: u8 = 0x02;
    pub const MAX_DATA: u8 = 0x04;
    pub const CLOSE: u8 = 0x05;
    pub const ACCEPT: u8 = 0x06;
    /// `0x10..=0x1f`: the low four bits are [`super::stream_flag`]s.
    pub const STREAM: u8 = 0x10;
    pub const STREAM_MASK: u8 = 0xf0;
}

/// The flag bits of a STREAM frame's type byte.
pub mod stream_flag {
    pub const ORDERED: u8 = 0x01;
    /// The fragment ends its message: message length = offset + data length.
    pub const FIN: u8 = 0x02;
    /// Offset 0, not sent; unless FIN, the message length follows instead.
    pub const START: u8 = 0x04;
    /// An explicit data length precedes the data (else it runs to the CRC).
    pub const LEN: u8 = 0x08;
}

/// Why a connection was closed, as carried by a CLOSE frame.
pub mod close_reason {
    pub const NORMAL: u8 = 0;
    pub const PROTOCOL_VIOLATION: u8 = 1;
}

/// A fragment of one message, as decoded from a STREAM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFrame<'a> {
    pub ordered: bool,
    pub msg_id: u64,
    pub offset: u64,
    /// The message's length, when this fragment tells it (a `START` or `FIN`
    /// fragment); the decoder checked the data lies within it.
    pub msg_len: Option<u64>,
    pub data: &'a [u8],
}

impl StreamFrame<'_> {
    /// Where the fragment ends in its message (the decoder checked it fits a `u64`).
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// What the sender knows of a fragment besides its data: enough to size and
/// write the STREAM frame that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    pub ordered: bool,
    pub msg_id: u64,
    pub msg_len: u64,
    pub offset: u64,
}

impl StreamHeader {
    fn fin(&self, data_len: usize) -> bool {
        self.offset.saturating_add(data_len as u64) >= self.msg_len
    }

    /// Bytes before the data of a frame carrying `data_len` bytes, without
    /// an explicit data length.
    pub fn head_len(&self, data_len: usize) -> usize {
        let where_ = if self.offset != 0 {
            varint::size(self.offset)
        } else if self.fin(data_len) {
            0
        } else {
            varint::size(self.msg_len)
        };
        1 + varint::size(self.msg_id) + where_
    }

    /// The most a frame of `data_len` bytes can take (with an explicit length).
    pub fn encoded_len(&self, data_len: usize) -> usize {
        (self.head_len(data_len) + varint::size(data_len as u64)).saturating_add(data_len)
    }

    /// Whether a frame of `data_len` bytes fits in `room` bytes (at worst as
    /// the packet's last frame, without an explicit length).
    pub fn fits(&self, room: usize, data_len: usize) -> bool {
        self.head_len(data_len).saturating_add(data_len) <= room
    }

    /// The most of `want` bytes a frame fits in `room` bytes (0 if none).
    pub fn fit(&self, room: usize, want: usize) -> usize {
        if self.fits(room, want) {
            return want;
        }
        // Less than `want`: not the message's end, so the header does not
        // depend on the length.
        room.saturating_sub(self.head_len(0).max(self.head_len(want)))
            .min(want)
    }

    /// Writes the frame with `data` into the `room` bytes left before the
    /// CRC, where it must [`fit`](Self::fits). Without room for an explicit
    /// length the frame fills `room` exactly (PADDING before it) and must be
    /// the packet's last.
    pub fn write(&self, buf: &mut Vec<u8>, room: usize, data: &[u8]) {
        let fin = self.fin(data.len());
        let mut ty = frame_type::STREAM;
        if self.ordered {
            ty |= stream_flag::ORDERED;
        }
        if fin {
            ty |= stream_flag::FIN;
        }
        if self.offset == 0 {
            ty |= stream_flag::START;
        }
        let explicit = self.encoded_len(data.len()) <= room;
        if explicit {
            ty |= stream_flag::LEN;
        } else {
            let pad = room.saturating_sub(self.head_len(data.len()) + data.len());
            buf.resize(buf.len() + pad, frame_type::PADDING);
        }
        buf.push(ty);
        varint::write(buf, self.msg_id);
        if self.offset != 0 {
            varint::write(buf, self.offset);
        } else if !fin {
            varint::write(buf, self.msg_len);
        }
        if explicit {
            varint::write(buf, data.len() as u64);
        }
        buf.extend_from_slice(data);
    }
}

/// An ACK frame, decoded lazily: `ranges()` yields acknowledged packet-number
/// ranges from the highest down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    pub largest: u64,
    pub ack_delay_us: u64,
    pub first_range: u64,
    extra_count: u64,
    /// Encoded (gap, length) pairs, already validated.
    extra: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// Acknowledged ranges, highest first. Validated at decode time, so this
    /// iterator cannot fail or underflow.
    pub fn ranges(&self) -> AckRanges<'a> {
        AckRanges {
            next: Some(self.largest - self.first_range..self.largest + 1),
            reader: Reader::new(self.extra),
            left: self.extra_count,
        }
    }
}

pub struct AckRanges<'a> {
    next: Option<Range<u64>>,
    reader: Reader<'a>,
    left: u64,
}

impl Iterator for AckRanges<'_> {
    type Item = Range<u64>;
    fn next(&mut self) -> Option<Range<u64>> {
        let cur = self.next.take()?;
        if self.left > 0 {
            self.left -= 1;
            if let Ok(r) = next_ack_range(&mut self.reader, cur.start) {
                self.next = Some(r);
            }
        }
        Some(cur)
    }
}

/// Decodes the range below one whose smallest value is `prev_smallest`.
fn next_ack_range(r: &mut Reader<'_>, prev_smallest: u64) -> Result<Range<u64>, Error> {
    let gap = varint::read(r)?;
    let len = varint::read(r)?;
    let largest = prev_smallest
        .checked_sub(gap)
        .and_then(|v| v.checked_sub(2))
        .ok_or(Error::Invalid("ack gap"))?;
    let smallest = largest
        .checked_sub(len)
        .ok_or(Error::Invalid("ack range"))?;
    Ok(smallest..largest + 1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Ping,
    Ack(AckFrame<'a>),
    Stream(StreamFrame<'a>),
    MaxData(u64),
    Close(u8),
    Accept(ConnectionId),
}

impl Frame<'_> {
    /// Frames that oblige the receiver to acknowledge (RFC 9002 §2).
    pub fn is_ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Ack(_))
    }
}

/// Decodes the frames of a DATA payload one by one.
pub struct Frames<'a> {
    reader: Reader<'a>,
}

impl<'a> Frames<'a> {
    pub fn new(payload: &'a [u8]) -> Self {
        Frames {
            reader: Reader::new(payload),
        }
    }

    fn decode(&mut self, ty: u8) -> Result<Frame<'a>, Error> {
        let r = &mut self.reader;
        Ok(match ty {
            frame_type::PING => Frame::Ping,
            frame_type::ACK => {
                let largest = varint::read(r)?;
                let ack_delay_us = varint::read(r)?;
                let extra_count = varint::read(r)?;
                let first_range = varint::read(r)?;
                let mut smallest = largest
                    .checked_sub(first_range)
                    .ok_or(Error::Invalid("ack range"))?;
                let start = r.remaining();
                let rest = r.rest();
                let mut check = Reader::new(rest);
                for _ in 0..extra_count {
                    smallest = next_ack_range(&mut check, smallest)?.start;
                }
                let used = start - check.remaining();
                let extra = &rest[..used];
                // Put back what the ranges did not use.
                *r = Reader::new(&rest[used..]);
                Frame::Ack(AckFrame {
                    largest,
                    ack_delay_us,
                    first_range,
                    extra_count,
                    extra,
                })
            }
            frame_type::MAX_DATA => Frame::MaxData(varint::read(r)?),
            frame_type::CLOSE => Frame::Close(r.u8()?),
            frame_type::ACCEPT => Frame::Accept(r.u32()?),
            t if t & frame_type::STREAM_MASK == frame_type::STREAM => {
                Frame::Stream(decode_stream(r, t)?)
            }
            other => return Err(Error::UnknownType(other)),
        })
    }
}

fn decode_stream<'a>(r: &mut Reader<'a>, ty: u8) -> Result<StreamFrame<'a>, Error> {
    let flag = |f: u8| ty & f != 0;
    let msg_id = varint::read(r)?;
    let (offset, stated_len) = if !flag(stream_flag::START) {
        (varint::read(r)?, None)
    } else if flag(stream_flag::FIN) {
        (0, None)
    } else {
        (0, Some(varint::read(r)?))
    };
    let data = if flag(stream_flag::LEN) {
        let n = varint::read(r)?;
        r.bytes(usize::try_from(n).map_err(|_| Error::Truncated)?)?
    } else {
        r.rest()
    };
    let end = offset
        .checked_add(data.len() as u64)
        .filter(|&e| e <= varint::MAX)
        .ok_or(Error::Invalid("fragment offset"))?;
    let msg_len = if flag(stream_flag::FIN) {
        Some(end)
    } else {
        stated_len
    };
    if stated_len.is_some_and(|l| end > l) {
        return Err(Error::Invalid("fragment beyond message end"));
    }
    Ok(StreamFrame {
        ordered: flag(stream_flag::ORDERED),
        msg_id,
        offset,
        msg_len,
        data,
    })
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, Error>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ty = match self.reader.u8() {
                Ok(t) => t,
                Err(_) => return None,
            };
            if ty == frame_type::PADDING {
                continue;
            }
            let f = self.decode(ty);
            if f.is_err() {
                self.reader.rest(); // stop after the first error
            }
            return Some(f);
        }
    }
}

/// Starts a long-header datagram in `buf` (cleared first); finish with [`finish_packet`].
fn start_long(buf: &mut Vec<u8>, ty: PacketType, dcid: ConnectionId) {
    buf.clear();
    buf.push(first_byte::LONG | ty as u8);
    buf.push(PROTOCOL_VERSION);
    buf.extend_from_slice(&dcid.to_be_bytes());
}

/// Appends the CRC32 over everything in `buf` (a long-header datagram).
pub fn finish_packet(buf: &mut Vec<u8>) {
    let crc = crc32fast::hash(buf);
    buf.extend_from_slice(&crc.to_be_bytes());
}

/// Starts a DATA packet in `buf` (cleared first): packet number `pn`,
/// truncated to what the peer can restore given that it has acknowledged
/// up to `largest_acked`, but to no fewer than `min_pn_len` bytes. Finish
/// with [`finish_data_packet`]. Returns the header's length.
pub fn start_data_packet(
    buf: &mut Vec<u8>,
    dcid: ConnectionId,
    pn: u64,
    largest_acked: Option<u64>,
    min_pn_len: usize,
) -> usize {
    let len = pn::encoded_len(pn, largest_acked).max(min_pn_len);
    let t = pn::truncate(pn, len);
    buf.clear();
    buf.push(first_byte::SHORT | (t.len as u8 - 1));
    buf.extend_from_slice(&dcid.to_be_bytes());
    buf.extend_from_slice(&t.value.to_be_bytes()[4 - t.len..]);
    buf.len()
}

/// Appends the CRC32 over the full packet number `pn` and everything in `buf`.
pub fn finish_data_packet(buf: &mut Vec<u8>, pn: u64) {
    let crc = data_crc(pn, buf);
    buf.extend_from_slice(&crc.to_be_bytes());
}

pub fn write_ping(buf: &mut Vec<u8>) {
    buf.push(frame_type::PING);
}

pub fn write_max_data(buf: &mut Vec<u8>, limit: u64) {
    buf.push(frame_type::MAX_DATA);
    varint::write(buf, limit);
}

pub fn write_close(buf: &mut Vec<u8>, reason: u8) {
    buf.push(frame_type::CLOSE);
    buf.push(reason);
}

pub fn write_accept(buf: &mut Vec<u8>, cid: ConnectionId) {
    buf.push(frame_type::ACCEPT);
    buf.extend_from_slice(&cid.to_be_bytes());
}

pub const ACCEPT_LEN: usize = 1 + CID_LEN;
pub const CLOSE_LEN: usize = 2;
pub const MAX_DATA_LEN: usize = 9;

/// Writes an ACK frame for `ranges` (highest first) using at most `space`
/// bytes; ranges that do not fit are left out (the lowest ones). Returns
/// false if not even the first range fits.
pub fn write_ack<I>(buf: &mut Vec<u8>, ack_delay_us: u64, mut ranges: I, space: usize) -> bool
where
    I: Iterator<Item = Range<u64>>,
{
    let Some(first) = ranges.next() else {
        return false;
    };
    let largest = first.end - 1;
    let first_len = largest - first.start;
    let head = 1 + varint::size(largest) + varint::size(ack_delay_us) + 2 + varint::size(first_len);
    if head > space {
        return false;
    }
    // The count is written as a 2-byte varint placeholder and patched at the end.
    let start = buf.len();
    buf.push(frame_type::ACK);
    varint::write(buf, largest);
    varint::write(buf, ack_delay_us);
    let count_pos = buf.len();
    buf.extend_from_slice(&[0x40, 0]); // 2-byte varint placeholder for the count
    varint::write(buf, first_len);
    let mut count: u64 = 0;
    let mut prev_smallest = first.start;
    for r in ranges {
        if r.end >= prev_smallest || count >= (1 << 14) - 1 {
            break;
        }
        let gap = prev_smallest - r.end - 1;
        let len = r.end - 1 - r.start;
        if buf.len() - start + varint::size(gap) + varint::size(len) > space {
            break;
        }
        varint::write(buf, gap);
        varint::write(buf, len);
        count += 1;
        prev_smallest = r.start;
    }
    let c = (count as u16 | 0x4000).to_be_bytes();
    buf[count_pos] = c[0];
    buf[count_pos + 1] = c[1];
    true
}

/// An INITIAL's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initial<'a> {
    pub src_cid: ConnectionId,
    pub cookie: &'a [u8],
}

impl<'a> Initial<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<Self, Error> {
        let mut r = Reader::new(payload);
        let src_cid = r.u32()?;
        let cookie = read_cookie(&mut r)?;
        if r.rest().iter().any(|&b| b != 0) {
            return Err(Error::Invalid("initial padding"));
        }
        Ok(Initial { src_cid, cookie })
    }
}

/// Writes a whole INITIAL datagram, padded to `size` (at least [`MIN_INITIAL_SIZE`]).
pub fn write_initial(buf: &mut Vec<u8>, src_cid: ConnectionId, cookie: &[u8], size: usize) {
    start_long(buf, PacketType::Initial, 0);
    buf.extend_from_slice(&src_cid.to_be_bytes());
    let cookie = &cookie[..cookie.len().min(MAX_COOKIE_LEN)];
    buf.push(cookie.len() as u8);
    buf.extend_from_slice(cookie);
    let target = size.max(MIN_INITIAL_SIZE) - CRC_LEN;
    if buf.len() < target {
        buf.resize(target, 0);
    }
    finish_packet(buf);
}

/// Parses a RETRY's payload: the cookie.
pub fn parse_retry(payload: &[u8]) -> Result<&[u8], Error> {
    let mut r = Reader::new(payload);
    let cookie = read_cookie(&mut r)?;
    r.finish()?;
    Ok(cookie)
}

/// A length-prefixed cookie of at most [`MAX_COOKIE_LEN`] bytes.
fn read_cookie<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Error> {
    let len = r.u8()? as usize;
    if len > MAX_COOKIE_LEN {
        return Err(Error::TooLong {
            len: len as u64,
            max: MAX_COOKIE_LEN as u64,
        });
    }
    r.bytes(len)
}

pub fn write_retry(buf: &mut Vec<u8>, dcid: ConnectionId, cookie: &[u8]) {
    start_long(buf, PacketType::Retry, dcid);
    let cookie = &cookie[..cookie.len().min(MAX_COOKIE_LEN)];
    buf.push(cookie.len() as u8);
    buf.extend_from_slice(cookie);
    finish_packet(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn varint_round_trips() {
        for v in [
            0,
            1,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            varint::MAX,
        ] {
            let mut b = Vec::new();
            varint::write(&mut b, v);
            assert_eq!(b.len(), varint::size(v));
            let mut r = Reader::new(&b);
            assert_eq!(varint::read(&mut r).unwrap(), v);
            r.finish().unwrap();
        }
    }

    fn head(ordered: bool, msg_id: u64, msg_len: u64, offset: u64) -> StreamHeader {
        StreamHeader {
            ordered,
            msg_id,
            msg_len,
            offset,
        }
    }

    fn decoded(b: &[u8]) -> Vec<Frame<'_>> {
        let p = Packet::new_checked(b).unwrap();
        let start = p.len() - CRC_LEN - p.payload().len();
        Frames::new(&b[start..b.len() - CRC_LEN])
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn data_packet_round_trips() {
        let mut b = Vec::new();
        let hl = start_data_packet(&mut b, 0xdead_beef, 77, Some(70), 1);
        assert_eq!(hl, 6, "one byte of packet number");
        assert_eq!(start_data_packet(&mut b, 1, 77, Some(70), 2), 7);
        start_data_packet(&mut b, 0xdead_beef, 77, Some(70), 1);
        write_ping(&mut b);
        let ranges = vec![90..101, 50..60, 10..11, 0..5];
        assert!(write_ack(&mut b, 250, ranges.clone().into_iter(), 100));
        write_max_data(&mut b, 1 << 40);
        write_close(&mut b, close_reason::NORMAL);
        write_accept(&mut b, 42);
        // The end of one message, a whole one, the start of another.
        let limit = 1472 - CRC_LEN;
        let frames = [
            (head(true, 5, 100, 90), &[1u8; 10][..]),
            (head(false, 6, 0, 0), &[][..]),
            (head(false, 7, 1 << 20, 0), &[3u8; 40][..]),
        ];
        for (h, d) in frames {
            let room = limit - b.len();
            assert!(h.fits(room, d.len()));
            h.write(&mut b, room, d);
        }
        finish_data_packet(&mut b, 77);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.data_crc_ok(77));
        assert!(
            !p.data_crc_ok(77 + 256),
            "the CRC covers the full packet number"
        );
        assert_eq!(p.version(), None);
        assert_eq!(p.packet_type(), Some(PacketType::Data));
        assert_eq!(p.dcid(), 0xdead_beef);
        let t = p.truncated_pn().unwrap();
        assert_eq!(pn::decode(t, Some(76)), 77);
        let f = decoded(&b);
        assert_eq!(f[0], Frame::Ping);
        match f[1] {
            Frame::Ack(a) => {
                assert_eq!(a.ack_delay_us, 250);
                assert_eq!(a.ranges().collect::<Vec<_>>(), ranges);
            }
            _ => panic!("expected ack"),
        }
        assert_eq!(f[2], Frame::MaxData(1 << 40));
        assert_eq!(f[3], Frame::Close(0));
        assert_eq!(f[4], Frame::Accept(42));
        let stream = |ordered, msg_id, offset, msg_len, data| {
            Frame::Stream(StreamFrame {
                ordered,
                msg_id,
                offset,
                msg_len,
                data,
            })
        };
        assert_eq!(f[5], stream(true, 5, 90, Some(100), &[1u8; 10][..]));
        assert_eq!(f[6], stream(false, 6, 0, Some(0), &[][..]));
        assert_eq!(f[7], stream(false, 7, 0, Some(1 << 20), &[3u8; 40][..]));
        assert_eq!(f.len(), 8);
    }

    /// The steady state: one middle fragment filling the datagram costs
    /// 7 (short header) + 4 (CRC) + 7 (type, id, offset) bytes.
    #[test]
    fn a_full_fragment_carries_1454_bytes() {
        let msg = vec![9u8; 100 * 1024];
        let mut b = Vec::new();
        start_data_packet(&mut b, 1, 1000, Some(700), 1); // 300 unacked: 2 bytes of PN
        let limit = 1472 - CRC_LEN;
        let h = head(false, 100, msg.len() as u64, 20_000);
        let n = h.fit(limit - b.len(), usize::MAX);
        assert_eq!(n, 1454);
        let room = limit - b.len();
        h.write(&mut b, room, &msg[20_000..20_000 + n]);
        assert_eq!(
            b.len(),
            limit,
            "no explicit length: the frame runs to the CRC"
        );
        finish_data_packet(&mut b, 1000);
        let f = decoded(&b);
        let [Frame::Stream(s)] = f[..] else {
            panic!("{f:?}")
        };
        assert_eq!((s.offset, s.msg_len, s.data.len()), (20_000, None, 1454));
        // Message ids past 16383 take 4 bytes: still at least 1452.
        let h = head(true, 20_000, msg.len() as u64, 20_000);
        assert_eq!(h.fit(limit - SHORT_HEADER_LEN, usize::MAX), 1452);
    }

    #[test]
    fn stream_frames_fill_exactly_or_state_their_length() {
        let data = vec![5u8; 3000];
        for room in 1..60usize {
            for want in [0usize, 1, 2, 10, 40, 63, 64, 100] {
                for (msg_len, offset) in [(3000u64, 0u64), (3000, 2000), (want as u64, 0)] {
                    let want = want.min((msg_len - offset) as usize);
                    let h = head(false, 3, msg_len, offset);
                    let n = h.fit(room, want);
                    if n == 0 && want > 0 {
                        continue;
                    }
                    if !h.fits(room, n) {
                        assert_eq!(n, 0);
                        continue;
                    }
                    let mut b = vec![0xAA];
                    h.write(&mut b, room, &data[..n]);
                    assert!(b.len() - 1 <= room, "room {room} want {want}");
                    let frames: Vec<_> = Frames::new(&b[1..]).collect::<Result<_, _>>().unwrap();
                    let [Frame::Stream(s)] = frames[..] else {
                        panic!("{frames:?}")
                    };
                    assert_eq!((s.offset, s.data.len()), (offset, n));
                    let fin = offset + n as u64 == msg_len;
                    if fin || offset == 0 {
                        assert_eq!(s.msg_len, Some(msg_len));
                    }
                    // Another frame can follow unless this one filled the room.
                    if b.len() - 1 < room {
                        let mut more = b.clone();
                        write_ping(&mut more);
                        assert_eq!(Frames::new(&more[1..]).count(), 2);
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_stream_frames_are_errors() {
        // START without FIN: the message length must cover the data.
        let mut b = vec![frame_type::STREAM | stream_flag::START | stream_flag::LEN];
        varint::write(&mut b, 1); // id
        varint::write(&mut b, 3); // message length
        varint::write(&mut b, 4); // data length
        b.extend_from_slice(&[0; 4]);
        assert_eq!(
            Frames::new(&b).next(),
            Some(Err(Error::Invalid("fragment beyond message end")))
        );
        // An explicit length beyond the payload.
        let mut b = vec![frame_type::STREAM | stream_flag::LEN];
        varint::write(&mut b, 1);
        varint::write(&mut b, 10);
        varint::write(&mut b, 9);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(Frames::new(&b).next(), Some(Err(Error::Truncated)));
        // An offset so large the end overflows the varint range.
        let mut b = vec![frame_type::STREAM | stream_flag::FIN];
        varint::write(&mut b, 1);
        varint::write(&mut b, varint::MAX);
        b.push(0);
        assert_eq!(
            Frames::new(&b).next(),
            Some(Err(Error::Invalid("fragment offset")))
        );
        // The old STREAM type is unknown now.
        assert_eq!(Frames::new(&[3]).next(), Some(Err(Error::UnknownType(3))));
    }

    #[test]
    fn packet_numbers_as_in_rfc_9000() {
        // Appendix A.2: 0xac5c02 with 0xabe8b3 acknowledged needs 2 bytes.
        assert_eq!(pn::encoded_len(0xac5c02, Some(0xabe8b3)), 2);
        // Appendix A.3: 0x9b32 after 0xa82f30ea is 0xa82f9b32.
        let t = TruncatedPn {
            value: 0x9b32,
            len: 2,
        };
        assert_eq!(pn::decode(t, Some(0xa82f30ea)), 0xa82f9b32);
        assert_eq!(pn::encoded_len(0, None), 1);
        assert_eq!(pn::encoded_len(128, Some(0)), 1);
        assert_eq!(pn::encoded_len(129, Some(0)), 2);
        assert_eq!(pn::encoded_len(1 << 40, Some(0)), 4);
    }

    #[test]
    fn packet_numbers_across_wrap_boundaries_and_late_ones() {
        for len in 1..=4usize {
            let win = 1u64 << (8 * len);
            for base in [0, win - 3, 5 * win - 1, 1 << 40] {
                for pn in base..base + 6 {
                    let t = pn::truncate(pn, len);
                    // In order, after a gap, and late (behind larger ones).
                    for largest in [pn.checked_sub(1), pn.checked_sub(win / 4), Some(pn + 3)] {
                        assert_eq!(pn::decode(t, largest), pn, "len {len} pn {pn} {largest:?}");
                    }
                }
            }
            // Later than half the window: reconstructed wrongly, which the
            // DATA CRC (over the full number) then catches.
            let t = pn::truncate(10 * win, len);
            assert_ne!(pn::decode(t, Some(10 * win + win / 2 + 1)), 10 * win);
        }
        let mut b = Vec::new();
        start_data_packet(&mut b, 7, 70_000, Some(69_990), 1);
        finish_data_packet(&mut b, 70_000);
        let p = Packet::new_checked(&b[..]).unwrap();
        let t = p.truncated_pn().unwrap();
        assert_eq!(t.len, 1);
        let late = pn::decode(t, Some(70_200));
        assert_ne!(late, 70_000);
        assert!(!p.data_crc_ok(late));
        assert!(p.data_crc_ok(pn::decode(t, Some(69_999))));
    }

    #[test]
    fn header_forms_and_versions() {
        let mut b = Vec::new();
        write_initial(&mut b, 9, &[1, 2, 3], 1472);
        assert_eq!(b.len(), 1472);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.crc_ok());
        assert_eq!(p.version(), Some(PROTOCOL_VERSION));
        assert_eq!(p.packet_type(), Some(PacketType::Initial));
        assert_eq!(p.truncated_pn(), None);
        let i = Initial::parse(p.payload()).unwrap();
        assert_eq!((i.src_cid, i.cookie), (9, &[1u8, 2, 3][..]));
        write_retry(&mut b, 9, &[7; 16]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.packet_type(), Some(PacketType::Retry));
        assert_eq!(p.dcid(), 9);
        assert_eq!(parse_retry(p.payload()).unwrap(), &[7; 16]);
        // A version-1 datagram's first byte was its version (then its type).
        let mut old = vec![1u8, 1];
        old.resize(1200, 0);
        finish_packet(&mut old);
        let p = Packet::new_checked(&old[..]).unwrap();
        assert!(p.crc_ok());
        assert_eq!((p.version(), p.packet_type()), (Some(1), None));
        // Reserved bits set: malformed.
        assert!(Packet::new_checked(&[0x44u8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]).is_err());
        assert!(Packet::new_checked(&[0x40u8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]).is_ok());
        assert!(Packet::new_checked(&[0x40u8, 0, 0, 0, 0, 0, 0, 0, 0][..]).is_err());
        assert!(Packet::new_checked(&[0x41u8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]).is_err());
    }

    #[test]
    fn ack_respects_space() {
        let ranges: Vec<_> = (0..1000u64).rev().map(|i| i * 10..i * 10 + 5).collect();
        let mut b = Vec::new();
        assert!(write_ack(&mut b, 0, ranges.into_iter(), 200));
        assert!(b.len() <= 200);
        let f = Frames::new(&b).next().unwrap().unwrap();
        let Frame::Ack(a) = f else { panic!() };
        assert!(a.ranges().count() > 50);
    }

    proptest! {
        #[test]
        fn frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            for f in Frames::new(&bytes) {
                match f {
                    Ok(Frame::Ack(a)) => {
                        for r in a.ranges().take(10_000) {
                            prop_assert!(r.start < r.end);
                        }
                    }
                    Ok(Frame::Stream(s)) => {
                        prop_assert!(s.msg_len.is_none_or(|l| s.end() <= l));
                    }
                    _ => {}
                }
            }
            let _ = Initial::parse(&bytes);
            let _ = parse_retry(&bytes);
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.version(), p.packet_type(), p.dcid(), p.payload(), p.crc_ok());
                if let Some(t) = p.truncated_pn() {
                    let _ = p.data_crc_ok(pn::decode(t, Some(u64::from(t.value) * 3)));
                }
            }
        }

        /// Whatever the sender had acknowledged, the receiver restores the
        /// number as long as it is not more than about half a window late.
        #[test]
        fn truncated_packet_numbers_are_restored(
            pn in 0u64..(1 << 50),
            unacked in 1u64..(1 << 20),
            ahead in 0u64..(1 << 20),
            late in 0u64..(1 << 20),
        ) {
            let acked = pn.checked_sub(unacked);
            let len = pn::encoded_len(pn, acked);
            let t = pn::truncate(pn, len);
            let hwin = 1u64 << (8 * len - 1);
            // The receiver has seen at least `acked`; possibly more, up to past `pn`.
            let seen = acked.map(|a| a + ahead.min(pn - a - 1)).or(pn.checked_sub(1 + ahead.min(pn)));
            prop_assert_eq!(pn::decode(t, seen), pn);
            let later = pn + late.min(hwin - 2);
            prop_assert_eq!(pn::decode(t, Some(later)), pn);
        }
    }
}
