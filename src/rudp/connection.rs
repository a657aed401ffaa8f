//! One rudp connection: a sans-IO state machine (see `STATE` below).
//!
//! ```text
//! STATE (which methods move it)
//!   Handshaking  initiator only: INITIAL sent (and resent on Timer::Handshake
//!                with backoff), RETRY's cookie stored; an ACCEPT frame
//!                -> Established (Event::Connected).
//!   Established  responder starts here (its INITIAL carried a valid cookie).
//!   Closing      after close(): no new messages; once every message is
//!                acknowledged a CLOSE frame goes out; its ACK -> Closed(LocallyClosed).
//!   Draining     after the peer's CLOSE (Event::Closed(PeerClosed) already
//!                emitted): re-acknowledges retransmitted CLOSEs until Timer::Drain.
//!   Gone         nothing left to do; the endpoint forgets the connection.
//! Any state -> Gone on idle timeout, max_ptos probe timeouts, or handshake failure.
//! ```
//!
//! Sending side. Every datagram gets a new packet number (never reused). A
//! [`SentPacket`] remembers which message fragments it carried; when RFC 9002
//! loss detection declares it lost, exactly those fragments are queued again
//! (selective repeat), skipping bytes the peer has meanwhile acknowledged.
//! Packet records live in a `VecDeque` indexed by `pn - sent_base`, so an ACK
//! finds a packet in O(1); `acked_pns` lets an ACK skip ranges it already
//! processed, and a loss scan resumes where the last one stopped, so no ACK
//! walks the whole in-flight set.
//!
//! Packets go out with truncated packet numbers (sized from `largest_acked`)
//! and come in through [`Connection::decode_packet_number`].
//!
//! Receiving side. Packet numbers go into a [`RangeSet`] (the SACK ranges an
//! ACK reports, at most [`MAX_ACK_RANGES`] of them). Message fragments are
//! reassembled per message; a message is delivered when whole, exactly once
//! (`delivered_ids`); ordered messages wait for their predecessors. A
//! message's length arrives with its first (`START`) or last (`FIN`)
//! fragment; until then its buffer grows to the furthest byte seen.
//! Flow control counts message bytes in one connection-wide sequence: the
//! sender may send a byte only below the receiver's `MAX_DATA` = (bytes it
//! has delivered) + `recv_window`. Every message the sender has started
//! then begins below that limit, so the undelivered ones add up to less than
//! `recv_window` plus one message: the receiver reserves each message's
//! length (or furthest byte) against that bound and ignores a fragment that
//! would exceed it, which only a misbehaving sender causes.

use super::cc::{self, AckEvent, Controller, DeliveryRateEstimator, LossEvent, Pacer, RateState};
use super::endpoint::{ConnectionError, Event, SendError, Stats};
use super::packet::{self, close_reason, ConnectionId, Frame, Frames, StreamFrame, StreamHeader};
use super::range_set::RangeSet;
use super::rtt::{RttEstimator, MAX_ACK_DELAY};
use super::timer::{Timer, TimerTable};
use super::Config;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 9002 §6.1.1: kPacketThreshold.
pub const PACKET_THRESHOLD: u64 = 3;
/// RFC 9000 §13.2.2: acknowledge at least every second ack-eliciting packet.
pub const ACK_EVERY: u32 = 2;
/// Most SACK ranges the receiver remembers and reports (older ones were
/// reported many times already).
pub const MAX_ACK_RANGES: usize = 64;
/// Credit a sender assumes before the peer's first MAX_DATA.
pub const INITIAL_CREDIT: u64 = 64 * 1024;
/// RFC 9002 §7.6.1: kPersistentCongestionThreshold.
pub const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;
/// PTO probes sent per timeout (RFC 9002 §6.2.4 allows up to two).
const PROBES_PER_PTO: u32 = 2;
/// Largest ACK frame piggybacked on a data packet.
const MAX_PIGGYBACK_ACK: usize = 256;
/// Room kept for MAX_DATA, ACCEPT and CLOSE frames when sizing a piggybacked ACK.
const CONTROL_RESERVE: usize = packet::MAX_DATA_LEN + packet::ACCEPT_LEN + packet::CLOSE_LEN;
/// Packet-number bytes of an ack-eliciting packet, at least: its fragments,
/// if lost, must fit whole in the packet that resends them, whose number
/// is larger (a 1-byte number would leave room a 2-byte one lacks, and the
/// resend would split off a tiny fragment). ACK-only packets are never resent.
const MIN_DATA_PN_LEN: usize = 2;
/// INITIAL resends back off up to 2^this × PTO.
const MAX_HANDSHAKE_BACKOFF_EXP: u32 = 2;
/// Most messages the receiver keeps track of at once: incomplete ones,
/// complete ordered ones waiting for a predecessor, and gaps between
/// delivered unordered ids. The byte bound (window + largest message)
/// does not limit entries: a peer sending empty or 1-byte fragments of
/// far-apart message ids could otherwise make a few bytes on the wire cost
/// a hash-map entry each, without end. An honest sender has at most its
/// messages in flight open; a peer beyond this bound is closed as a
/// protocol violation.
pub const MAX_OPEN_MESSAGES: usize = 1 << 18;
/// Handshake retries answered by RETRY before giving up.
const MAX_RETRIES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Handshaking,
    Established,
    Closing,
    Draining,
    Gone,
}

/// A fragment of an outgoing message: `out_msgs` index, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FragRef {
    msg: u64,
    offset: u64,
    len: u16,
}

#[derive(Debug, Clone)]
enum Frags {
    None,
    One(FragRef),
    Many(Vec<FragRef>),
}

impl Frags {
    fn as_slice(&self) -> &[FragRef] {
        match self {
            Frags::None => &[],
            Frags::One(f) => std::slice::from_ref(f),
            Frags::Many(v) => v,
        }
    }
}

/// Which control frames a packet carried (resent if it is lost).
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    max_data: bool,
    accept: bool,
    close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SentState {
    InFlight,
    Acked,
    Lost,
}

#[derive(Debug, Clone)]
struct SentPacket {
    time_sent: Instant,
    size: u16,
    ack_eliciting: bool,
    state: SentState,
    has_max_data: bool,
    has_accept: bool,
    has_close: bool,
    frags: Frags,
    rate: RateState,
}

struct OutMessage {
    data: Vec<u8>,
    ordered: bool,
    msg_id: u64,
    conn_offset: u64,
    /// Byte ranges the peer has acknowledged.
    acked: RangeSet,
    /// A zero-length message is done when its one frame is acknowledged.
    empty_acked: bool,
}

impl OutMessage {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// The STREAM frame fields of a fragment starting at `offset`.
    fn header(&self, offset: u64) -> StreamHeader {
        StreamHeader {
            ordered: self.ordered,
            msg_id: self.msg_id,
            msg_len: self.len(),
            offset,
        }
    }

    fn complete(&self) -> bool {
        if self.data.is_empty() {
            self.empty_acked
        } else {
            self.acked.contains_range(0..self.len())
        }
    }
}

struct InMessage {
    /// Sized to the message's length once known, else to the furthest byte seen.
    data: Vec<u8>,
    got: RangeSet,
    len: Option<u64>,
}

pub struct Connection {
    role: Role,
    state: State,
    remote: SocketAddr,
    local_cid: ConnectionId,
    remote_cid: Option<ConnectionId>,
    max_payload: usize,
    config: Config,

    // Handshake.
    cookie: Vec<u8>,
    initial_pending: bool,
    handshake_attempts: u32,
    /// When the last INITIAL left (initiator): with the ACCEPT that answers
    /// it, the connection's first RTT sample.
    initial_sent_at: Option<Instant>,
    retries: u32,
    accept_pending: bool,
    accept_acked: bool,

    // Sending.
    next_pn: u64,
    sent: VecDeque<SentPacket>,
    sent_base: u64,
    acked_pns: RangeSet,
    loss_scan: u64,
    out_msgs: VecDeque<Option<OutMessage>>,
    out_base: u64,
    /// Index (into out_msgs numbering) of the message whose new bytes go next,
    /// and the offset within it.
    send_cursor: u64,
    send_cursor_offset: u64,
    retransmit: VecDeque<FragRef>,
    next_msg_id: [u64; 2],
    next_conn_offset: u64,
    peer_max_data: u64,
    backlog: usize,
    scratch_frags: Vec<FragRef>,

    // Receiving.
    recv_pns: RangeSet,
    largest_recv: Option<(u64, Instant)>,
    unacked_eliciting: u32,
    ack_now: bool,
    in_msgs: HashMap<(bool, u64), InMessage>,
    buffered: u64,
    delivered_ids: [RangeSet; 2],
    ordered_next: u64,
    ordered_ready: BTreeMap<u64, Vec<u8>>,
    /// Message bytes handed to the application (flow control counts from here).
    delivered_total: u64,
    /// `recv_window`, at least one message and [`INITIAL_CREDIT`].
    window: u64,
    local_max_data: u64,
    sent_max_data: u64,
    max_data_pending: bool,

    // Recovery and congestion.
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    rate: DeliveryRateEstimator,
    in_flight: u64,
    pto_count: u32,
    probes_pending: u32,
    ping_pending: bool,
    last_ack_eliciting_sent: Option<Instant>,
    largest_acked: Option<u64>,
    loss_time: Option<Instant>,
    pacing_wait: Option<Instant>,

    // Closing.
    close_requested: bool,
    close_pending: bool,
    close_sent: bool,
    close_was_acked: bool,

    timers: TimerTable,
    events: VecDeque<Event>,
    stats: Stats,
}

/// Why a validated packet was not processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    Duplicate,
}

impl Connection {
    pub fn new(
        role: Role,
        config: &Config,
        now: Instant,
        remote: SocketAddr,
        local_cid: ConnectionId,
        remote_cid: Option<ConnectionId>,
    ) -> Self {
        let mss = config.max_udp_payload as u64;
        // At least the credit a sender assumes before our first MAX_DATA:
        // what it may then have outstanding must fit the memory bound below
        // (`on_stream_frame`), whose excess is ignored but acknowledged.
        let recv_window =
            (config.recv_window.max(config.max_message_size) as u64).max(INITIAL_CREDIT);
        let mut c = Connection {
            role,
            state: match role {
                Role::Initiator => State::Handshaking,
                Role::Responder => State::Established,
            },
            remote,
            local_cid,
            remote_cid,
            max_payload: config.max_udp_payload,
            config: config.clone(),
            cookie: Vec::new(),
            initial_pending: role == Role::Initiator,
            handshake_attempts: 0,
            initial_sent_at: None,
            retries: 0,
            accept_pending: role == Role::Responder,
            accept_acked: role == Role::Initiator,
            next_pn: 0,
            sent: VecDeque::new(),
            sent_base: 0,
            acked_pns: RangeSet::new(),
            loss_scan: 0,
            out_msgs: VecDeque::new(),
            out_base: 0,
            send_cursor: 0,
            send_cursor_offset: 0,
            retransmit: VecDeque::new(),
            next_msg_id: [0; 2],
            next_conn_offset: 0,
            peer_max_data: INITIAL_CREDIT,
            backlog: 0,
            scratch_frags: Vec::new(),
            recv_pns: RangeSet::new(),
            largest_recv: None,
            unacked_eliciting: 0,
            ack_now: false,
            in_msgs: HashMap::new(),
            buffered: 0,
            delivered_ids: [RangeSet::new(), RangeSet::new()],
            ordered_next: 0,
            ordered_ready: BTreeMap::new(),
            delivered_total: 0,
            window: recv_window,
            local_max_data: recv_window,
            sent_max_data: 0,
            max_data_pending: true,
            rtt: RttEstimator::new(),
            cc: cc::new_controller(config.cc, mss, local_cid as u64),
            pacer: Pacer::new(mss),
            rate: DeliveryRateEstimator::default(),
            in_flight: 0,
            pto_count: 0,
            probes_pending: 0,
            ping_pending: false,
            last_ack_eliciting_sent: None,
            largest_acked: None,
            loss_time: None,
            pacing_wait: None,
            close_requested: false,
            close_pending: false,
            close_sent: false,
            close_was_acked: false,
            timers: TimerTable::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        c.timers.set(Timer::Idle, now + config.idle_timeout);
        if role == Role::Responder {
            c.events.push_back(Event::Connected);
        }
        c
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    pub fn local_cid(&self) -> ConnectionId {
        self.local_cid
    }

    /// Live from the application's point of view (no Closed event yet).
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            State::Handshaking | State::Established | State::Closing
        )
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.srtt = self.rtt.srtt();
        s.min_rtt = self.rtt.min();
        s.cwnd = self.cc.window();
        s.pacing_rate = self.pacer.rate();
        s
    }

    pub fn send_backlog(&self) -> usize {
        self.backlog
    }

    /// Message bytes queued and not yet sent once (resends not counted).
    pub fn unsent_bytes(&self) -> u64 {
        let sent = self
            .send_cursor
            .checked_sub(self.out_base)
            .and_then(|i| self.out_msgs.get(i as usize))
            .and_then(Option::as_ref)
            .map_or(self.next_conn_offset, |m| {
                m.conn_offset + self.send_cursor_offset
            });
        self.next_conn_offset.saturating_sub(sent)
    }

    /// Bytes this connection holds: queued outgoing messages, partially
    /// reassembled and undelivered incoming ones, and per-packet records.
    pub fn memory_usage(&self) -> usize {
        self.backlog
            + self.buffered as usize
            + self.sent.capacity() * std::mem::size_of::<SentPacket>()
            + self.out_msgs.capacity() * std::mem::size_of::<Option<OutMessage>>()
            + self.retransmit.capacity() * std::mem::size_of::<FragRef>()
            + std::mem::size_of::<Self>()
    }

    /// Receiver-side entries that the byte bound does not cover (see
    /// [`MAX_OPEN_MESSAGES`]).
    fn open_messages(&self) -> usize {
        self.in_msgs.len() + self.ordered_ready.len() + self.delivered_ids[0].range_count()
    }

    fn close_with(&mut self, err: ConnectionError) {
        if self.is_open() {
            self.events.push_back(Event::Closed(err));
        }
        self.state = State::Gone;
        self.timers = TimerTable::default();
    }

    // ----- application calls -----

    pub fn send(&mut self, message: Vec<u8>, ordered: bool) -> Result<(), SendError> {
        if !matches!(self.state, State::Handshaking | State::Established) || self.close_requested {
            return Err(SendError::Closed);
        }
        if message.len() > self.config.max_message_size {
            return Err(SendError::TooLarge {
                len: message.len(),
                max: self.config.max_message_size,
            });
        }
        let space = ordered as usize;
        let msg = OutMessage {
            ordered,
            msg_id: self.next_msg_id[space],
            conn_offset: self.next_conn_offset,
            acked: RangeSet::new(),
            empty_acked: false,
            data: message,
        };
        self.next_msg_id[space] += 1;
        self.next_conn_offset += msg.len();
        self.backlog += msg.data.len();
        self.out_msgs.push_back(Some(msg));
        Ok(())
    }

    pub fn close(&mut self) {
        match self.state {
            State::Handshaking if self.remote_cid.is_none() && self.out_msgs.is_empty() => {
                self.close_with(ConnectionError::LocallyClosed)
            }
            State::Handshaking if self.remote_cid.is_none() => {
                // Deliver what is queued once connected, then close.
                self.close_requested = true;
            }
            State::Handshaking | State::Established => {
                self.close_requested = true;
                self.state = State::Closing;
                self.maybe_queue_close();
            }
            _ => {}
        }
    }

    fn maybe_queue_close(&mut self) {
        if self.state == State::Closing && !self.close_sent && self.out_msgs.is_empty() {
            self.close_pending = true;
            self.close_sent = true;
        }
    }

    // ----- handshake (initiator side) -----

    pub fn wants_initial(&self) -> bool {
        self.state == State::Handshaking && self.remote_cid.is_none() && self.initial_pending
    }

    /// Writes the (padded) INITIAL into `buf`.
    pub fn write_initial(&mut self, now: Instant, buf: &mut Vec<u8>) -> usize {
        packet::write_initial(
            buf,
            self.local_cid,
            &self.cookie,
            self.max_payload.min(packet::MIN_INITIAL_SIZE),
        );
        self.initial_pending = false;
        // Backoff doubles up to 4 × PTO; the idle timer bounds the whole handshake.
        let backoff =
            self.rtt.pto_base() * (1u32 << self.handshake_attempts.min(MAX_HANDSHAKE_BACKOFF_EXP));
        self.handshake_attempts += 1;
        self.initial_sent_at = Some(now);
        self.timers.set(Timer::Handshake, now + backoff);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += buf.len() as u64;
        buf.len()
    }

    /// A RETRY for this (handshaking) connection arrived with `cookie`.
    pub fn handle_retry(&mut self, cookie: &[u8]) {
        if self.state != State::Handshaking || self.remote_cid.is_some() {
            return;
        }
        self.retries += 1;
        if self.retries > MAX_RETRIES.max(self.config.max_ptos) {
            self.close_with(ConnectionError::HandshakeFailed("too many retries"));
            return;
        }
        self.cookie = cookie.to_vec();
        self.initial_pending = true;
        self.handshake_attempts = 0; // the path works: restart the backoff
    }

    /// The responder saw this initiator's INITIAL again (its ACCEPT was lost
    /// or is late): make sure an ACCEPT goes out.
    pub fn handle_repeated_initial(&mut self) {
        if !self.accept_acked && self.is_open() {
            self.accept_pending = true;
        }
    }

    // ----- receiving -----

    /// The full packet number of a DATA packet that carried `t` (RFC 9000
    /// Appendix A.3, around the largest received so far). The caller checks
    /// the packet's CRC with it before anything changes.
    pub fn decode_packet_number(&self, t: packet::TruncatedPn) -> u64 {
        packet::pn::decode(t, self.largest_recv.map(|(pn, _)| pn))
    }

    /// Checks every frame of a DATA payload; nothing changes if this fails.
    pub fn validate(payload: &[u8]) -> Result<(), crate::wire::Error> {
        for f in Frames::new(payload) {
            f?;
        }
        Ok(())
    }

    /// Processes a DATA packet already checked by [`Connection::validate`].
    pub fn handle_packet(
        &mut self,
        now: Instant,
        pn: u64,
        payload: &[u8],
        size: usize,
    ) -> Result<(), Ignored> {
        if self.state == State::Gone {
            return Ok(());
        }
        if self.recv_pns.contains(pn) {
            self.ack_now = true; // our ACK may have been lost: repeat it
            return Err(Ignored::Duplicate);
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += size as u64;
        if self.state == State::Draining {
            // Closed already: only acknowledge (a retransmitted CLOSE, most likely).
            self.record_received(now, pn);
            self.ack_now = true;
            return Ok(());
        }
        self.timers.set(Timer::Idle, now + self.config.idle_timeout);
        let mut eliciting = false;
        let largest_before = self.recv_pns.max();
        self.record_received(now, pn);
        for f in Frames::new(payload).flatten() {
            eliciting |= f.is_ack_eliciting();
            match f {
                Frame::Ping => {}
                Frame::Ack(a) => self.on_ack_frame(now, &a),
                Frame::Stream(s) if self.state != State::Gone => self.on_stream_frame(&s),
                Frame::Stream(_) => {}
                Frame::MaxData(m) => {
                    if m > self.peer_max_data {
                        self.peer_max_data = m;
                    }
                }
                Frame::Close(reason) => {
                    self.on_close_frame(now, reason);
                }
                Frame::Accept(cid) => {
                    if self.role == Role::Initiator && self.remote_cid.is_none() {
                        self.remote_cid = Some(cid);
                        self.state = if self.close_requested {
                            State::Closing
                        } else {
                            State::Established
                        };
                        self.timers.stop(Timer::Handshake);
                        // The first RTT sample (RFC 9002 §5: handshake
                        // packets count), unless the INITIAL went out more
                        // than once since the RETRY, so that the first data
                        // is paced for this path and not at the initial
                        // window over the 333 ms initial RTT (a round trip
                        // at ~1 Mbit/s).
                        if let (1, Some(sent)) = (self.handshake_attempts, self.initial_sent_at) {
                            self.rtt
                                .update(now.saturating_duration_since(sent), Duration::ZERO);
                        }
                        self.events.push_back(Event::Connected);
                    }
                }
            }
            if self.state == State::Gone {
                return Ok(());
            }
        }
        // Only ack-eliciting packets are owed an ACK (RFC 9000 §13.2.1): an
        // ACK of the peer's ACK-only packets would ride on every data packet
        // and, with the holes reverse-path loss leaves in `recv_pns`, grow to
        // the full MAX_PIGGYBACK_ACK (measured: 6% of a lossy 100 Mbit/s path).
        if eliciting {
            self.unacked_eliciting += 1;
            // RFC 9000 §13.2.1: acknowledge out-of-order packets immediately.
            let out_of_order = largest_before.is_some_and(|l| pn != l + 1);
            if self.unacked_eliciting >= ACK_EVERY || out_of_order {
                self.ack_now = true;
            } else if self.timers.get(Timer::Ack).is_none() {
                self.timers.set(Timer::Ack, now + MAX_ACK_DELAY);
            }
        }
        self.maybe_queue_close();
        Ok(())
    }

    /// Notes packet number `pn` for the next ACK's SACK ranges.
    fn record_received(&mut self, now: Instant, pn: u64) {
        self.recv_pns.insert_one(pn);
        self.recv_pns.keep_highest(MAX_ACK_RANGES);
        if self.largest_recv.is_none_or(|(l, _)| pn > l) {
            self.largest_recv = Some((pn, now));
        }
    }

    fn on_close_frame(&mut self, now: Instant, _reason: u8) {
        if self.state == State::Draining {
            self.ack_now = true;
            return;
        }
        if self.is_open() {
            self.events
                .push_back(Event::Closed(ConnectionError::PeerClosed));
        }
        self.state = State::Draining;
        self.ack_now = true;
        let keep = self.timers.get(Timer::Drain);
        self.timers = TimerTable::default();
        self.timers
            .set(Timer::Drain, keep.unwrap_or(now + self.rtt.pto_base() * 3));
    }

    fn on_stream_frame(&mut self, s: &StreamFrame<'_>) {
        let space = s.ordered as usize;
        if self.delivered_ids[space].contains(s.msg_id)
            || (s.ordered && s.msg_id < self.ordered_next)
            || (s.ordered && self.ordered_ready.contains_key(&s.msg_id))
        {
            return; // a duplicate of a complete message
        }
        if s.data.is_empty() && s.msg_len.is_none() {
            // Carries nothing (an honest sender never writes one); it
            // would leave an empty entry behind.
            return;
        }
        let end = s.end();
        let max = self.config.max_message_size as u64;
        if end > max || s.msg_len.is_some_and(|l| l > max) {
            return; // beyond what we allow: ignored
        }
        let key = (s.ordered, s.msg_id);
        if !self.in_msgs.contains_key(&key) && self.open_messages() >= MAX_OPEN_MESSAGES {
            self.close_with(ConnectionError::ProtocolViolation(
                "too many incomplete messages at once",
            ));
            return;
        }
        // Work out the new reservation before changing anything.
        let (known, extent) = match self.in_msgs.get(&key) {
            Some(m) => (m.len, m.data.len() as u64),
            None => (None, 0),
        };
        let len = match (known, s.msg_len) {
            (Some(k), Some(l)) if k != l => return, // inconsistent: ignored
            (Some(k), _) => Some(k),
            (None, Some(l)) if l < extent => return,
            (None, l) => l,
        };
        if len.is_some_and(|l| end > l) {
            return;
        }
        let size = len.unwrap_or(extent.max(end));
        let growth = size - extent;
        if growth > 0 && self.buffered + growth > self.window + max {
            return; // memory bound; an honest sender never reaches it
        }
        self.buffered += growth;
        let m = self.in_msgs.entry(key).or_insert_with(|| InMessage {
            data: Vec::new(),
            got: RangeSet::new(),
            len: None,
        });
        if m.len.is_none() && len.is_some() {
            m.data.reserve_exact(size as usize - m.data.len());
        }
        m.len = len;
        m.data.resize(size as usize, 0);
        if m.got.insert(s.offset..end) {
            m.data[s.offset as usize..end as usize].copy_from_slice(s.data);
        }
        if !m.len.is_some_and(|l| m.got.contains_range(0..l)) {
            return;
        }
        let Some(m) = self.in_msgs.remove(&key) else {
            return;
        };
        if s.ordered {
            self.ordered_ready.insert(s.msg_id, m.data);
            while let Some(data) = self.ordered_ready.remove(&self.ordered_next) {
                self.delivered_ids[1].insert_one(self.ordered_next);
                self.ordered_next += 1;
                self.deliver(data);
            }
            self.delivered_ids[1].remove_below(self.ordered_next);
        } else {
            self.delivered_ids[0].insert_one(s.msg_id);
            self.deliver(m.data);
        }
    }

    /// Hands a whole message to the application and opens the window by its length.
    fn deliver(&mut self, data: Vec<u8>) {
        let len = data.len() as u64;
        self.buffered = self.buffered.saturating_sub(len);
        self.events.push_back(Event::Message(data));
        self.delivered_total += len;
        self.local_max_data = self.delivered_total + self.window;
        // Usually once the limit moved by window/8. But a sender can be
        // blocked inside a message of up to `max` bytes that began below
        // the limit we sent, with all before it delivered: the limit then
        // exceeds what we sent by more than window - max, possibly less
        // than window/8, and no later delivery comes to announce it.
        let max = (self.config.max_message_size as u64).min(self.window);
        let step = (self.window / 8).min(self.window - max + 1);
        if self.local_max_data - self.sent_max_data >= step {
            self.max_data_pending = true;
        }
    }

    fn on_ack_frame(&mut self, now: Instant, a: &packet::AckFrame<'_>) {
        if a.largest >= self.next_pn {
            return; // acknowledges something never sent: ignored
        }
        let mut newly_acked_bytes = 0u64;
        let mut largest_newly: Option<(u64, Instant, bool)> = None;
        let base = self.sent_base;
        let mut acked_any_eliciting = false;
        for r in a.ranges() {
            let r = r.start.max(base)..r.end.min(self.next_pn);
            if r.start >= r.end {
                continue;
            }
            let mut gaps: [std::ops::Range<u64>; 8] = Default::default();
            let mut n = 0;
            let mut overflow = false;
            self.acked_pns.for_each_gap(r.clone(), |g| {
                if n < gaps.len() {
                    gaps[n] = g;
                    n += 1;
                } else {
                    overflow = true;
                }
            });
            if overflow {
                // Many gaps: walk the range packet by packet (rare).
                n = 1;
                gaps[0] = r.clone();
            }
            for g in gaps.iter().take(n).cloned() {
                for pn in g.clone() {
                    let idx = (pn - base) as usize;
                    let Some(p) = self.sent.get_mut(idx) else {
                        continue;
                    };
                    match p.state {
                        SentState::Acked => continue,
                        SentState::Lost => {
                            if p.ack_eliciting {
                                self.stats.spurious_retransmits += 1;
                            }
                        }
                        SentState::InFlight => {
                            if p.ack_eliciting {
                                self.in_flight -= p.size as u64;
                                newly_acked_bytes += p.size as u64;
                            }
                        }
                    }
                    let was_in_flight = p.state == SentState::InFlight;
                    p.state = SentState::Acked;
                    if p.ack_eliciting {
                        acked_any_eliciting = true;
                    }
                    if largest_newly.is_none_or(|(l, _, _)| pn > l) {
                        largest_newly = Some((pn, p.time_sent, p.ack_eliciting));
                    }
                    let (rate, time_sent, size) = (p.rate, p.time_sent, p.size);
                    if was_in_flight && p.ack_eliciting {
                        self.rate.on_acked(now, &rate, time_sent, size as u64);
                    }
                    self.on_packet_acked(idx);
                }
                self.acked_pns.insert(g);
            }
        }
        let Some((largest_pn, largest_sent, largest_eliciting)) = largest_newly else {
            return;
        };
        if self.largest_acked.is_none_or(|l| a.largest > l) {
            self.largest_acked = Some(a.largest);
        }
        // RFC 9002 §5.1: sample only if the largest acknowledged is newly acked and ack-eliciting.
        if largest_pn == a.largest && largest_eliciting {
            let ack_delay = Duration::from_micros(a.ack_delay_us.min(1 << 30));
            self.rtt
                .update(now.saturating_duration_since(largest_sent), ack_delay);
        }
        if acked_any_eliciting {
            // RFC 9002 §6.2.1: reset the PTO backoff on an acknowledgement.
            self.pto_count = 0;
        }
        self.detect_lost(now);
        let sample = self.rate.take_sample(now);
        if newly_acked_bytes > 0 {
            self.cc.on_ack(
                &AckEvent {
                    now,
                    bytes_acked: newly_acked_bytes,
                    largest_sent_time: largest_sent,
                    in_flight: self.in_flight,
                    rate: sample,
                },
                &self.rtt,
            );
        }
        self.prune_sent(now);
        self.set_loss_timer();
        self.maybe_queue_close();
        if self.close_was_acked {
            self.close_with(ConnectionError::LocallyClosed);
        }
    }

    fn on_packet_acked(&mut self, idx: usize) {
        let Some(p) = self.sent.get_mut(idx) else {
            return;
        };
        if p.has_accept {
            self.accept_acked = true;
            self.accept_pending = false;
        }
        if p.has_close {
            self.close_was_acked = true;
        }
        let frags = std::mem::replace(&mut p.frags, Frags::None);
        for f in frags.as_slice() {
            self.on_frag_acked(*f);
        }
    }

    fn on_frag_acked(&mut self, f: FragRef) {
        let Some(i) = f.msg.checked_sub(self.out_base) else {
            return;
        };
        let Some(Some(m)) = self.out_msgs.get_mut(i as usize) else {
            return;
        };
        if f.len == 0 {
            m.empty_acked = true;
        } else {
            m.acked.insert(f.offset..f.offset + f.len as u64);
        }
        if m.complete() {
            let len = m.data.len();
            self.stats.bytes_delivered += len as u64;
            self.backlog -= len;
            self.out_msgs[i as usize] = None;
            while let Some(None) = self.out_msgs.front() {
                if self.out_base >= self.send_cursor {
                    break; // never pop a message not yet fully sent once
                }
                self.out_msgs.pop_front();
                self.out_base += 1;
            }
        }
    }

    /// RFC 9002 §6.1: packet and time thresholds. Resumes at `loss_scan`.
    fn detect_lost(&mut self, now: Instant) {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else {
            return;
        };
        let loss_delay = self.rtt.loss_delay();
        let lost_before = now.checked_sub(loss_delay);
        let mut pn = self.loss_scan.max(self.sent_base);
        let mut lost_bytes = 0u64;
        let mut lost_packets = 0u64;
        let mut first_lost: Option<Instant> = None;
        let mut last_lost: Option<Instant> = None;
        while pn <= largest {
            let idx = (pn - self.sent_base) as usize;
            let Some(p) = self.sent.get(idx) else { break };
            if p.state == SentState::InFlight {
                let by_count = largest - pn >= PACKET_THRESHOLD;
                let by_time = lost_before.is_some_and(|t| p.time_sent <= t);
                if !(by_count || by_time) {
                    self.loss_time = Some(p.time_sent + loss_delay);
                    break;
                }
                if p.ack_eliciting {
                    lost_bytes += p.size as u64;
                    lost_packets += 1;
                    first_lost.get_or_insert(p.time_sent);
                    last_lost = Some(p.time_sent);
                }
                self.on_packet_lost(idx);
            }
            // Everything below `pn + 1` is now acknowledged or lost.
            self.loss_scan = pn + 1;
            pn += 1;
        }
        if lost_packets > 0 {
            let (Some(first), Some(last)) = (first_lost, last_lost) else {
                return;
            };
            let persistent = self.rtt.has_sample()
                && last.saturating_duration_since(first)
                    > self.rtt.pto_base() * PERSISTENT_CONGESTION_THRESHOLD;
            self.stats.packets_lost += lost_packets;
            self.cc.on_loss(
                &LossEvent {
                    now,
                    bytes_lost: lost_bytes,
                    packets_lost: lost_packets,
                    largest_sent_time: last,
                    persistent,
                    in_flight: self.in_flight,
                },
                &self.rtt,
            );
        }
    }

    fn on_packet_lost(&mut self, idx: usize) {
        let Some(p) = self.sent.get_mut(idx) else {
            return;
        };
        p.state = SentState::Lost;
        if !p.ack_eliciting {
            return;
        }
        self.in_flight -= p.size as u64;
        if p.has_max_data {
            self.max_data_pending = true;
        }
        if p.has_accept && !self.accept_acked {
            self.accept_pending = true;
        }
        if p.has_close {
            self.close_pending = true;
        }
        // Keep the fragments in the record: if the packet was only late, its
        // ACK still marks them delivered and the queued resend is skipped.
        let frags = std::mem::replace(&mut p.frags, Frags::None);
        self.retransmit.extend(frags.as_slice().iter().copied());
        if let Some(p) = self.sent.get_mut(idx) {
            p.frags = frags;
        }
    }

    /// Forgets packet records nobody can still ask about.
    fn prune_sent(&mut self, now: Instant) {
        let keep_lost = self.rtt.srtt() * 4;
        while let Some(p) = self.sent.front() {
            let done = match p.state {
                SentState::Acked => true,
                SentState::Lost => now.saturating_duration_since(p.time_sent) > keep_lost,
                SentState::InFlight => false,
            };
            if !done {
                break;
            }
            self.sent.pop_front();
            self.sent_base += 1;
        }
        self.acked_pns.remove_below(self.sent_base);
    }

    fn set_loss_timer(&mut self) {
        if let Some(t) = self.loss_time {
            self.timers.set(Timer::LossDetection, t);
            return;
        }
        if self.in_flight == 0 {
            self.timers.stop(Timer::LossDetection);
            return;
        }
        // RFC 9002 §6.2.1: PTO = (srtt + max(4 rttvar, granularity) + max_ack_delay) × 2^pto_count.
        let pto = self.rtt.pto_base() * (1u32 << self.pto_count.min(16));
        match self.last_ack_eliciting_sent {
            Some(base) => self.timers.set(Timer::LossDetection, base + pto),
            None => self.timers.stop(Timer::LossDetection),
        }
    }

    // ----- timers -----

    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = self.timers.next_timeout();
        match (t, self.pacing_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pacing_wait.is_some_and(|t| t <= now) {
            self.pacing_wait = None;
        }
        if self.timers.expire(Timer::Drain, now) {
            self.state = State::Gone;
            return;
        }
        if self.timers.expire(Timer::Idle, now) {
            let err = if self.state == State::Handshaking {
                ConnectionError::HandshakeFailed("no answer from the peer")
            } else {
                ConnectionError::IdleTimeout
            };
            self.close_with(err);
            return;
        }
        if self.timers.expire(Timer::Handshake, now) {
            self.initial_pending = true;
        }
        if self.timers.expire(Timer::Ack, now) {
            self.ack_now = true;
        }
        // A keepalive only when nothing is in flight: otherwise the PTO is
        // already probing, and a PING would push its deadline back.
        if self.timers.expire(Timer::KeepAlive, now)
            && self.state == State::Established
            && self.in_flight == 0
        {
            self.ping_pending = true;
        }
        if self.timers.expire(Timer::LossDetection, now) {
            if self.loss_time.is_some() {
                self.detect_lost(now);
                self.prune_sent(now);
            } else if self.in_flight > 0 {
                // RFC 9002 §6.2.4: probe timeout.
                self.pto_count += 1;
                if self.pto_count >= self.config.max_ptos {
                    let err = if self.close_requested {
                        ConnectionError::LocallyClosed
                    } else {
                        ConnectionError::PeerDead {
                            ptos: self.pto_count,
                        }
                    };
                    self.close_with(err);
                    return;
                }
                self.probes_pending = PROBES_PER_PTO;
                self.queue_probe_data();
            }
            self.set_loss_timer();
        }
    }

    /// Queues the oldest unacknowledged fragments to go out in the probes.
    fn queue_probe_data(&mut self) {
        let mut queued = 0;
        for p in self.sent.iter() {
            if p.state != SentState::InFlight || !p.ack_eliciting {
                continue;
            }
            for f in p.frags.as_slice() {
                self.retransmit.push_front(*f);
            }
            // Control frames of the probed packets go out again too.
            self.accept_pending |= p.has_accept && !self.accept_acked;
            self.close_pending |= p.has_close;
            self.max_data_pending |= p.has_max_data;
            queued += 1;
            if queued >= PROBES_PER_PTO {
                break;
            }
        }
    }

    // ----- sending -----

    fn has_new_data(&self) -> bool {
        let Some(i) = self.send_cursor.checked_sub(self.out_base) else {
            return false;
        };
        let Some(Some(m)) = self.out_msgs.get(i as usize) else {
            return false;
        };
        // Flow control: the next byte must be within the peer's limit (an
        // empty message needs no credit).
        m.data.is_empty() || m.conn_offset + self.send_cursor_offset < self.peer_max_data
    }

    fn wants_ack_eliciting(&self) -> bool {
        self.probes_pending > 0
            || self.ping_pending
            || self.accept_pending
            || self.close_pending
            || (self.max_data_pending && self.local_max_data > self.sent_max_data)
            || !self.retransmit.is_empty()
            || self.has_new_data()
    }

    /// Writes the next DATA datagram into `buf`; returns its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<usize> {
        let dcid = self.remote_cid?;
        match self.state {
            State::Gone => return None,
            State::Draining => {
                if !self.ack_now {
                    return None;
                }
                return self.write_ack_only(now, dcid, buf);
            }
            _ => {}
        }
        let mss = self.max_payload as u64;
        if self.wants_ack_eliciting() {
            let probe = self.probes_pending > 0;
            let cwnd_ok = self.in_flight + mss <= self.cc.window();
            if probe || cwnd_ok {
                self.pacer.set_rate(self.pacing_rate());
                match self.pacer.delay_until(now, mss) {
                    Some(at) if !probe => {
                        self.pacing_wait = Some(at);
                    }
                    _ => {
                        self.pacing_wait = None;
                        return Some(self.write_data_packet(now, dcid, buf));
                    }
                }
            } else {
                self.pacing_wait = None;
            }
        } else {
            self.pacing_wait = None;
            if self.in_flight + mss <= self.cc.window() {
                self.rate.on_app_limited(self.in_flight);
            }
        }
        if self.ack_now || self.unacked_eliciting >= ACK_EVERY {
            return self.write_ack_only(now, dcid, buf);
        }
        None
    }

    fn pacing_rate(&self) -> u64 {
        let r = self.cc.pacing_rate(&self.rtt);
        match self.config.max_send_rate {
            Some(cap) => r.min(cap),
            None => r,
        }
    }

    fn write_ack_frame(&mut self, now: Instant, buf: &mut Vec<u8>, space: usize) -> bool {
        let Some((_, recv_time)) = self.largest_recv else {
            return false;
        };
        let delay = now.saturating_duration_since(recv_time).as_micros() as u64;
        let ok = packet::write_ack(buf, delay, self.recv_pns.iter().rev(), space);
        if ok {
            self.ack_now = false;
            self.unacked_eliciting = 0;
            self.timers.stop(Timer::Ack);
        }
        ok
    }

    fn write_ack_only(
        &mut self,
        now: Instant,
        dcid: ConnectionId,
        buf: &mut Vec<u8>,
    ) -> Option<usize> {
        let pn = self.next_pn;
        packet::start_data_packet(buf, dcid, pn, self.largest_acked, 1);
        let space = self.max_payload - buf.len() - packet::CRC_LEN;
        if !self.write_ack_frame(now, buf, space) {
            self.ack_now = false;
            return None;
        }
        packet::finish_data_packet(buf, pn);
        self.record_sent(now, buf.len(), false, Frags::None, Control::default());
        Some(buf.len())
    }

    fn write_data_packet(&mut self, now: Instant, dcid: ConnectionId, buf: &mut Vec<u8>) -> usize {
        let pn = self.next_pn;
        let header_len =
            packet::start_data_packet(buf, dcid, pn, self.largest_acked, MIN_DATA_PN_LEN);
        let limit = self.max_payload - packet::CRC_LEN;
        if self.unacked_eliciting > 0 || self.ack_now {
            // Piggyback an ACK, but never so large that the first queued
            // retransmission no longer fits whole (it would be split in two).
            let reserve = CONTROL_RESERVE + self.first_retransmit_size();
            let space = (limit - buf.len())
                .saturating_sub(reserve)
                .min(MAX_PIGGYBACK_ACK);
            self.write_ack_frame(now, buf, space);
        }
        let mut has_max_data = false;
        if self.max_data_pending && limit - buf.len() >= packet::MAX_DATA_LEN {
            packet::write_max_data(buf, self.local_max_data);
            self.sent_max_data = self.local_max_data;
            self.max_data_pending = false;
            has_max_data = true;
        }
        let mut has_accept = false;
        if self.accept_pending && limit - buf.len() >= packet::ACCEPT_LEN {
            packet::write_accept(buf, self.local_cid);
            self.accept_pending = false;
            has_accept = true;
        }
        let mut has_close = false;
        if self.close_pending && limit - buf.len() >= packet::CLOSE_LEN {
            packet::write_close(buf, close_reason::NORMAL);
            self.close_pending = false;
            has_close = true;
        }
        let mut frags = std::mem::take(&mut self.scratch_frags);
        frags.clear();
        let mut retransmitted = false;
        // Lost fragments first, skipping bytes acknowledged meanwhile.
        while let Some(f) = self.retransmit.front().copied() {
            let Some(m) = self.out_message(f.msg) else {
                self.retransmit.pop_front();
                continue;
            };
            let range = f.offset..f.offset + f.len as u64;
            if (f.len > 0 && m.acked.contains_range(range)) || (f.len == 0 && m.empty_acked) {
                self.retransmit.pop_front();
                continue;
            }
            let room = limit - buf.len();
            let head = m.header(f.offset);
            let mut f = f;
            if head.fits(room, f.len as usize) {
                self.retransmit.pop_front();
            } else {
                let fit = head.fit(room, f.len as usize);
                if !frags.is_empty() || fit == 0 {
                    break;
                }
                // Split: send what fits now, keep the rest queued.
                if let Some(front) = self.retransmit.front_mut() {
                    front.offset += fit as u64;
                    front.len -= fit as u16;
                }
                f.len = fit as u16;
            }
            let Some(m) = self.out_message(f.msg) else {
                break;
            };
            let range = f.offset as usize..f.offset as usize + f.len as usize;
            head.write(buf, room, &m.data[range]);
            frags.push(f);
            retransmitted = true;
        }
        // New data.
        while let Some(i) = self.send_cursor.checked_sub(self.out_base) {
            let peer_max = self.peer_max_data;
            let Some(Some(m)) = self.out_msgs.get(i as usize) else {
                break;
            };
            let off = self.send_cursor_offset;
            let head = m.header(off);
            let room = limit - buf.len();
            let credit = peer_max.saturating_sub(m.conn_offset + off);
            let want = (m.len() - off).min(credit).min(u16::MAX as u64) as usize;
            let len = head.fit(room, want);
            if len == 0 && !(m.data.is_empty() && head.fits(room, 0)) {
                break; // out of room or credit
            }
            head.write(buf, room, &m.data[off as usize..off as usize + len]);
            let len = len as u64;
            frags.push(FragRef {
                msg: self.send_cursor,
                offset: off,
                len: len as u16,
            });
            if off + len >= m.len() {
                self.send_cursor += 1;
                self.send_cursor_offset = 0;
            } else {
                self.send_cursor_offset = off + len;
            }
        }
        let ping = buf.len() == header_len
            || (frags.is_empty() && !has_max_data && !has_accept && !has_close);
        if ping {
            packet::write_ping(buf);
        }
        self.ping_pending = false;
        self.probes_pending = self.probes_pending.saturating_sub(1);
        packet::finish_data_packet(buf, pn);
        let stored = match frags.len() {
            0 => Frags::None,
            1 => Frags::One(frags[0]),
            _ => Frags::Many(frags.clone()),
        };
        self.scratch_frags = frags;
        if retransmitted {
            self.stats.packets_retransmitted += 1;
        }
        let control = Control {
            max_data: has_max_data,
            accept: has_accept,
            close: has_close,
        };
        self.record_sent(now, buf.len(), true, stored, control);
        buf.len()
    }

    /// Encoded size of the STREAM frame for the first queued retransmission.
    fn first_retransmit_size(&self) -> usize {
        let Some(f) = self.retransmit.front() else {
            return 0;
        };
        let Some(m) = self.out_message(f.msg) else {
            return 0;
        };
        m.header(f.offset).encoded_len(f.len as usize)
    }

    fn out_message(&self, msg: u64) -> Option<&OutMessage> {
        let i = msg.checked_sub(self.out_base)?;
        self.out_msgs.get(i as usize)?.as_ref()
    }

    fn record_sent(
        &mut self,
        now: Instant,
        size: usize,
        ack_eliciting: bool,
        frags: Frags,
        control: Control,
    ) {
        let rate = if ack_eliciting {
            self.rate.on_sent(now, self.in_flight)
        } else {
            RateState::default()
        };
        self.sent.push_back(SentPacket {
            time_sent: now,
            size: size as u16,
            ack_eliciting,
            // An ACK-only packet is never acknowledged on its own (nothing
            // elicits it) nor resent: there is nothing to wait for.
            state: if ack_eliciting {
                SentState::InFlight
            } else {
                SentState::Acked
            },
            has_max_data: control.max_data,
            has_accept: control.accept,
            has_close: control.close,
            frags,
            rate,
        });
        self.next_pn += 1;
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += size as u64;
        self.timers
            .set(Timer::KeepAlive, now + self.config.keepalive_interval);
        if ack_eliciting {
            self.pacer.on_sent(size as u64);
            self.in_flight += size as u64;
            self.last_ack_eliciting_sent = Some(now);
            self.cc.on_packet_sent(now, size as u64, self.in_flight);
            if self.loss_time.is_none() {
                let pto = self.rtt.pto_base() * (1u32 << self.pto_count.min(16));
                self.timers.set(Timer::LossDetection, now + pto);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A responder past the handshake, as the receiving side of the tests below.
    fn established_responder(now: Instant) -> Connection {
        let remote = SocketAddr::from(([10, 0, 0, 1], 7000));
        Connection::new(Role::Responder, &Config::default(), now, remote, 7, Some(9))
    }

    /// STREAM frames with no data and no length (offset 0 without START,
    /// not FIN) carry nothing, and an honest sender never writes one; each
    /// used to leave an empty reassembly entry behind for good, outside the
    /// byte bound: a few bytes of wire per entry, without limit.
    #[test]
    fn empty_fragments_without_a_length_leave_no_entry() {
        let now = Instant::now();
        let mut c = established_responder(now);
        let mut payload = Vec::new();
        for id in 0..300u64 {
            payload.push(packet::frame_type::STREAM | packet::stream_flag::LEN);
            packet::varint::write(&mut payload, id);
            packet::varint::write(&mut payload, 0); // offset
            packet::varint::write(&mut payload, 0); // data length
        }
        // An empty message, whole: still delivered.
        payload.push(
            packet::frame_type::STREAM | packet::stream_flag::START | packet::stream_flag::FIN,
        );
        packet::varint::write(&mut payload, 300);
        assert!(Connection::validate(&payload).is_ok());
        assert!(c.handle_packet(now, 0, &payload, payload.len()).is_ok());
        assert_eq!(c.in_msgs.len(), 0);
        let delivered = std::iter::from_fn(|| c.poll_event())
            .filter(|e| matches!(e, Event::Message(m) if m.is_empty()))
            .count();
        assert_eq!(delivered, 1);
    }

    /// Empty ordered messages with ids past a missing first one cost a few
    /// bytes each on the wire and nothing in the byte bound; past
    /// MAX_OPEN_MESSAGES of them the peer is closed, not followed without end.
    #[test]
    fn too_many_open_messages_close_the_connection() {
        let now = Instant::now();
        let mut c = established_responder(now);
        let mut payload = Vec::new();
        for id in 1..=(MAX_OPEN_MESSAGES as u64 + 10) {
            payload.push(
                packet::frame_type::STREAM
                    | packet::stream_flag::ORDERED
                    | packet::stream_flag::START
                    | packet::stream_flag::FIN
                    | packet::stream_flag::LEN,
            );
            packet::varint::write(&mut payload, id);
            packet::varint::write(&mut payload, 0); // data length
        }
        assert!(Connection::validate(&payload).is_ok());
        let _ = c.handle_packet(now, 0, &payload, payload.len());
        assert_eq!(c.ordered_ready.len(), MAX_OPEN_MESSAGES);
        let closed = std::iter::from_fn(|| c.poll_event())
            .any(|e| matches!(e, Event::Closed(ConnectionError::ProtocolViolation(_))));
        assert!(closed);
    }
}
