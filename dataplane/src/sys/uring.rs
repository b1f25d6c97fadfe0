//! The io_uring instance of one worker and the memory it shares with the kernel: the unsafe
//! half of `worker::uring`, which holds the loop and every decision.
//!
//! Two kinds of memory are shared with the kernel while operations are in flight:
//! - receive buffers: a provided-buffer ring ([`BufRing`]); a buffer is ours from the
//!   completion that names it (a [`RecvBuf`] token, found in [`Completion::Recv`]) until it is
//!   provided back ([`Ring::provide`] consumes the token);
//! - TUN slots: a read buffer, its split output, the peer address and the `msghdr`s of its
//!   sends, which the kernel reads until each send completes. A slot's memory is lent out
//!   ([`Ring::take_slot`]) only while none of its sends is in flight, and the in-flight count
//!   drops only by a send's completion ([`Sent`], neither `Copy` nor `Clone`).
//!
//! So every operation the ring carries points into memory that is leaked (stable for the
//! process lifetime) and untouched by us until its completion: the invariant `Ring::push`
//! relies on. Slot memory is leaked on purpose (allocated once per worker): the kernel may
//! still hold pointers into it while the ring is torn down at exit.
//!
//! [`probe`] checks once at startup that this kernel's io_uring has what the worker needs.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::buf_ring::{recv_layout, BufRing, RecvBuf, RECVMSG_OUT_LEN};
use super::socket::{encode_udp_segment, sockaddr_in, CMSG_BUF};
use crate::transmit::{Transmit, TxBuffer};

/// Submission queue entries (the completion queue is twice that).
pub const RING_ENTRIES: u32 = 1024;
/// Buffer group id of the receive ring.
const RECV_BGID: u16 = 0;
/// Buffer group id of the TUN slots' read buffers (multishot TUN reads).
const TUN_BGID: u16 = 1;
/// Receive buffer: recvmsg_out header, source address, control, then the payload.
pub const NAME_AREA: usize = std::mem::size_of::<libc::sockaddr_in>();
/// Sends one TUN slot may have (chunks of one super-packet, or its segments one by one when
/// GSO is off); [`Ring::post_send`] refuses more.
pub const MAX_SENDS: usize = 96;

/// Registered files (IORING_REGISTER_FILES, 5.1): the ring's operations name the TUN queue and
/// the sockets by index, which saves a file-table lookup and reference per operation.
const FIXED_TUN: types::Fixed = types::Fixed(0);
const FIXED_RECV: types::Fixed = types::Fixed(1);
const FIXED_SEND: types::Fixed = types::Fixed(2);

const K_TUN_POLL: u64 = 1;
const K_UDP_SEND: u64 = 2;
const K_UDP_RECV: u64 = 3;
const K_WAKE: u64 = 6;
const K_CANCEL: u64 = 7;
const K_RECV_CANCEL: u64 = 8;
const K_TUN_READ: u64 = 9;
const K_TUN_READ_CANCEL: u64 = 10;
const K_TUN_WRITE: u64 = 11;

fn ud(kind: u64, slot: usize, sub: usize) -> u64 {
    (kind << 56) | ((slot as u64 & 0xff_ffff) << 24) | (sub as u64 & 0xff_ffff)
}

/// Whether io_uring works here with the opcodes we need. `Err` explains why not (e.g. EPERM
/// under `kernel.io_uring_disabled=2`, ENOSYS on old kernels).
pub fn probe() -> io::Result<()> {
    let ring: IoUring = IoUring::new(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    // Multishot poll (5.13) and multishot receive with a buffer ring (5.19, 6.0) have no opcode
    // of their own: try each once and see it answer.
    multishot_poll_works()?;
    multishot_recvmsg_works()
}

/// Whether this kernel's io_uring has the multishot READ (`IORING_OP_READ_MULTISHOT`, Linux
/// 6.7, which is after TUN became FMODE_NOWAIT in 6.4: reads complete inline, no io-wq
/// thread). `Err` says why not.
pub fn probe_multishot_read() -> io::Result<()> {
    let ring: IoUring = IoUring::new(8)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    if p.is_supported(opcode::ReadMulti::CODE) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks READ_MULTISHOT (Linux 6.7)",
        ))
    }
}

/// Registers a small buffer ring and receives one datagram over an AF_UNIX socket pair with a
/// multishot RECVMSG; checks the completion picked a buffer and keeps the request armed.
fn multishot_recvmsg_works() -> io::Result<()> {
    let mut ring: IoUring = IoUring::new(4)?;
    let mut bufs = BufRing::new(2, 256)?;
    // SAFETY: the descriptor ring is leaked memory and outlives `ring`.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring_addr(), 2, RECV_BGID, 0)
    }
    .map_err(|e| io::Error::new(e.kind(), format!("io_uring buffer rings (Linux 5.19): {e}")))?;
    let (a, b) = super::socket::unix_dgram_pair()?;
    super::io::write(&b, b"probe")?;
    let msg = Box::new(zeroed_msghdr());
    let e = opcode::RecvMsgMulti::new(types::Fd(a.as_raw_fd()), &*msg, RECV_BGID)
        .build()
        .user_data(1);
    // SAFETY: `msg` outlives the ring (declared before it is dropped below); the buffers are
    // leaked.
    let c = unsafe { complete_one(&mut ring, &e, "receive") }?;
    let unsupported = || {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks multishot RECVMSG (Linux 6.0)",
        )
    };
    if c.result() < 0 {
        return Err(if c.result() == -libc::EINVAL {
            unsupported()
        } else {
            io::Error::from_raw_os_error(-c.result())
        });
    }
    let bid = cqueue::buffer_select(c.flags()).ok_or_else(unsupported)?;
    if !cqueue::more(c.flags()) {
        return Err(unsupported());
    }
    // The completion just handed this buffer over.
    let token = RecvBuf::from_completion(bid, bufs.ring_addr());
    let buf = bufs.buf_mut(&token).ok_or_else(unsupported)?;
    let got = recv_layout(buf, 0, 0).is_some_and(|l| &buf[l.payload] == b"probe");
    drop(ring);
    drop(msg);
    if got {
        Ok(())
    } else {
        Err(io::Error::other(
            "io_uring probe: multishot RECVMSG returned an unexpected buffer layout",
        ))
    }
}

/// Submits `e` on a fresh probe ring and returns its first completion.
///
/// # Safety
/// Whatever `e` points to must stay valid until the ring is dropped.
unsafe fn complete_one(
    ring: &mut IoUring,
    e: &squeue::Entry,
    what: &str,
) -> io::Result<cqueue::Entry> {
    // SAFETY: the caller keeps the entry's memory valid for the ring's lifetime.
    unsafe { ring.submission().push(e) }
        .map_err(|_| io::Error::other("io_uring probe: submission queue full"))?;
    ring.submit_and_wait(1)?;
    ring.completion()
        .next()
        .ok_or_else(|| io::Error::other(format!("io_uring probe: no {what} completion")))
}

/// Arms a multishot POLL_ADD on a readable eventfd and checks the completion carries
/// IORING_CQE_F_MORE (older kernels ignore the flag and complete it once, or reject it).
fn multishot_poll_works() -> io::Result<()> {
    let mut ring: IoUring = IoUring::new(4)?;
    let efd = super::thread::eventfd()?;
    super::thread::eventfd_signal(&efd);
    let e = opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(1);
    // SAFETY: a poll entry holds no pointers into our memory.
    let c = unsafe { complete_one(&mut ring, &e, "poll") }?;
    if c.result() < 0 {
        return Err(io::Error::from_raw_os_error(-c.result()));
    }
    if !cqueue::more(c.flags()) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks multishot POLL_ADD (Linux 5.13)",
        ));
    }
    Ok(())
}

/// A ring built with the best flags this kernel takes, not yet set up ([`Ring::setup`]).
pub struct NewRing {
    ring: IoUring,
    /// The setup flags' name (for the log).
    pub flags: &'static str,
}

/// Builds the ring with the best flags this kernel takes, trying in order
/// SINGLE_ISSUER|DEFER_TASKRUN (Linux 6.1), COOP_TASKRUN (5.19), then no flags, each with
/// TASKRUN_FLAG so the ring says when deferred completions wait. Call it on the thread that
/// will use the ring (SINGLE_ISSUER).
pub fn build_ring() -> io::Result<NewRing> {
    if let Ok(ring) = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES)
    {
        return Ok(NewRing {
            ring,
            flags: "single_issuer+defer_taskrun",
        });
    }
    if let Ok(ring) = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(RING_ENTRIES)
    {
        return Ok(NewRing {
            ring,
            flags: "coop_taskrun",
        });
    }
    Ok(NewRing {
        ring: IoUring::new(RING_ENTRIES)?,
        flags: "plain",
    })
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain C data (pointers and integers); all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// One outgoing datagram (or GSO chunk) of a TUN slot.
struct SendMsg {
    iov: libc::iovec,
    msg: libc::msghdr,
    ctl: [u8; CMSG_BUF],
    /// What it carries (its range is in the slot's read or split buffer).
    tx: Transmit,
}

/// A TUN read buffer, its split output and its sends, at a stable address (leaked).
struct TunSlot {
    buf: Box<[u8]>,
    out: Box<[u8]>,
    addr: libc::sockaddr_in,
    sends: Box<[SendMsg]>,
    /// Taken by the worker (not on the free list).
    busy: bool,
    /// Sends posted for the current packet, and how many are still in flight.
    used: usize,
    pending: usize,
}

fn leak_tun_slots(n: usize, buf: usize, out: usize) -> &'static mut [TunSlot] {
    let v: Vec<TunSlot> = (0..n)
        .map(|_| TunSlot {
            buf: vec![0u8; buf].into_boxed_slice(),
            out: vec![0u8; out].into_boxed_slice(),
            addr: sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            sends: (0..MAX_SENDS)
                .map(|_| SendMsg {
                    iov: empty_iov(),
                    msg: zeroed_msghdr(),
                    ctl: [0; CMSG_BUF],
                    tx: Transmit::EMPTY,
                })
                .collect(),
            busy: false,
            used: 0,
            pending: 0,
        })
        .collect();
    Box::leak(v.into_boxed_slice())
}

/// The TUN slots' read buffers as a provided-buffer ring (Linux 5.19) for the multishot TUN
/// read (Linux 6.7): buffer id = slot index. A slot is the kernel's from being provided until a
/// read completion names it ([`ReadSlot`]), then taken until released, when it is provided
/// again. Only the descriptor ring is allocated here (page aligned, leaked like the slots).
struct SlotRing {
    entries: *mut types::BufRingEntry,
    mask: u16,
    tail: u16,
    /// Slots provided and not named by a completion yet.
    in_kernel: usize,
}

impl SlotRing {
    /// A descriptor ring for `count` slots (rounded up to a power of two), none provided.
    fn new(count: usize) -> io::Result<Self> {
        let n = count.next_power_of_two();
        let n16 = u16::try_from(n)
            .ok()
            .filter(|n| *n <= 32768)
            .ok_or_else(|| {
                io::Error::other(format!("{count} TUN slots: too many for a buffer ring"))
            })?;
        let layout = std::alloc::Layout::from_size_align(
            n * std::mem::size_of::<types::BufRingEntry>(),
            super::buf_ring::page_size(),
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size (n ≥ 1 entries of 16 bytes); the memory is
        // never freed (the kernel may read it until the ring is gone).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<types::BufRingEntry>();
        if entries.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        Ok(Self {
            entries,
            mask: n16 - 1,
            tail: 0,
            in_kernel: 0,
        })
    }

    fn ring_addr(&self) -> u64 {
        self.entries as u64
    }

    fn entries(&self) -> u16 {
        self.mask + 1
    }

    /// Queues slot `bid`'s read buffer `buf` for the kernel; visible after [`SlotRing::publish`].
    /// The caller gives up the buffer until a completion names `bid` again.
    fn provide(&mut self, bid: u16, buf: &mut [u8]) {
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: `idx <= mask`: inside the descriptor ring. The kernel reads only descriptors
        // between its head and our published tail, and this one is past the tail; at most
        // `count ≤ entries` slots are ever provided at once, so it is not one the kernel has yet
        // to consume.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(buf.as_mut_ptr() as u64);
        e.set_len(buf.len() as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.in_kernel += 1;
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first descriptor of our live ring; it is a u16
        // the kernel reads with acquire semantics, so an atomic release store is the protocol.
        let tail = unsafe {
            &*(types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16)
        };
        tail.store(self.tail, std::sync::atomic::Ordering::Release);
    }
}

/// A completion as the kernel gave it: user data, result, flags.
type RawCqe = (u64, i32, u32);

fn raw(c: cqueue::Entry) -> RawCqe {
    (c.user_data(), c.result(), c.flags())
}

/// One completion, decoded. Owning it is what lets the worker touch the memory it hands back
/// (a receive buffer, a send's slot), so it is neither `Copy` nor `Clone`.
#[derive(Debug)]
pub enum Completion {
    /// The multishot TUN poll: `res` ≥ 0 means readable; `more`: still armed.
    TunPoll { res: i32, more: bool },
    /// One send of a TUN slot finished: hand it to [`Ring::send_done`].
    Sent(Sent),
    /// The multishot receive: a filled buffer (`buf`, `res` its length) or an error; `more`:
    /// still armed.
    Recv {
        res: i32,
        more: bool,
        buf: Option<RecvBuf>,
    },
    /// The wake-up eventfd fired: stop.
    Wake,
    /// The cancel of the multishot receive ([`Ring::cancel_udp_recv`]) is done: `res` is the
    /// number of operations cancelled, or -ENOENT when none was armed.
    RecvCancelled { res: i32 },
    /// The multishot TUN read: one packet of `res` bytes in the read buffer of `slot` (take
    /// it with [`Ring::take_read_slot`]), or an error (ENOBUFS: every slot is busy); `more`:
    /// still armed.
    TunRead {
        res: i32,
        more: bool,
        slot: Option<ReadSlot>,
    },
    /// The cancel of the multishot TUN read is done (see [`Completion::RecvCancelled`]).
    TunReadCancelled { res: i32 },
    /// Anything else (the cancel at shutdown).
    Other,
}

/// Proof that the kernel filled TUN slot `slot`'s read buffer (a multishot read completion
/// named it) and that it is ours until released. Neither `Copy` nor `Clone`; made only by
/// the ring's completion decoding.
#[derive(Debug)]
pub struct ReadSlot {
    slot: usize,
}

/// A finished send (see [`Ring::send_done`]).
#[derive(Debug)]
pub struct Sent {
    slot: usize,
    sub: usize,
    res: i32,
}

/// A finished send: its slot, what it carried, and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendDone {
    /// The send's result: bytes sent, or a negative errno.
    pub res: i32,
    pub slot: usize,
    pub tx: Transmit,
}

/// A free TUN slot's memory, lent out while none of its sends is in flight.
pub struct SlotMut<'a> {
    /// The read buffer.
    pub buf: &'a mut [u8],
    /// The split output.
    pub out: &'a mut [u8],
    addr: &'a mut libc::sockaddr_in,
}

impl SlotMut<'_> {
    /// Where this slot's sends go.
    pub fn set_peer(&mut self, peer: SocketAddrV4) {
        *self.addr = sockaddr_in(peer);
    }
}

/// Sizes of one worker's ring memory.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// TUN slots, and the bytes of each one's read and split buffers.
    pub tun_slots: usize,
    pub tun_buf: usize,
    pub split_buf: usize,
    /// Receive buffers (a power of two) and the payload room of each.
    pub recv_bufs: u16,
    pub recv_payload: usize,
    /// Control room of a receive (the UDP_GRO and IP_PKTINFO cmsgs).
    pub control_area: usize,
}

/// One worker's ring, its receive buffers and its TUN slots.
pub struct Ring {
    ring: IoUring,
    slots: &'static mut [TunSlot],
    /// TUN slots not taken (none of their sends in flight), when the worker reads the TUN
    /// queue itself; empty with `tun_reads`.
    free: Vec<usize>,
    /// With multishot TUN reads: the slots not taken are the kernel's, in this ring.
    tun_reads: Option<SlotRing>,
    recv_bufs: BufRing,
    /// The multishot receive's msghdr (name and control area sizes), at a stable address.
    recv_msg: &'static mut libc::msghdr,
    /// Completions drained while the submission queue was full; handled next round.
    backlog: Vec<RawCqe>,
}

impl Ring {
    /// Allocates the receive buffers and TUN slots of `cfg`, registers the buffer ring and the
    /// three files (the TUN queue, the receive and the send socket). With `multishot_tun_read`
    /// the slots' read buffers are registered as a second buffer ring for
    /// [`Ring::arm_tun_read`]; otherwise slots are taken with [`Ring::take_slot`].
    pub fn setup(
        new: NewRing,
        cfg: &RingConfig,
        tun: &OwnedFd,
        recv: &OwnedFd,
        send: &OwnedFd,
        multishot_tun_read: bool,
    ) -> io::Result<Self> {
        let ring = new.ring;
        let recv_bufs = BufRing::new(
            cfg.recv_bufs,
            RECVMSG_OUT_LEN + NAME_AREA + cfg.control_area + cfg.recv_payload,
        )?;
        // SAFETY: the descriptor ring is leaked memory of `entries` descriptors, page aligned,
        // and outlives the io_uring instance.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                recv_bufs.ring_addr(),
                recv_bufs.entries(),
                RECV_BGID,
                0,
            )
        }?;
        let fixed: [RawFd; 3] = [tun.as_raw_fd(), recv.as_raw_fd(), send.as_raw_fd()];
        ring.submitter().register_files(&fixed)?;
        let mut recv_msg = Box::new(zeroed_msghdr());
        recv_msg.msg_namelen = NAME_AREA as libc::socklen_t;
        recv_msg.msg_controllen = cfg.control_area as _;
        let slots = leak_tun_slots(cfg.tun_slots, cfg.tun_buf, cfg.split_buf);
        let (free, tun_reads) = if multishot_tun_read {
            let mut sr = SlotRing::new(slots.len())?;
            for (i, slot) in slots.iter_mut().enumerate() {
                sr.provide(i as u16, &mut slot.buf);
            }
            sr.publish();
            // SAFETY: the descriptor ring and every buffer it names (the slots) are leaked
            // memory that outlives the io_uring instance.
            unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    sr.ring_addr(),
                    sr.entries(),
                    TUN_BGID,
                    0,
                )
            }?;
            (Vec::new(), Some(sr))
        } else {
            ((0..cfg.tun_slots).rev().collect(), None)
        };
        Ok(Self {
            ring,
            slots,
            free,
            tun_reads,
            recv_bufs,
            recv_msg: Box::leak(recv_msg),
            backlog: Vec::new(),
        })
    }

    /// Arms the multishot TUN read (again, after the kernel ended it): one completion per
    /// packet, each in the read buffer of a slot the kernel picks from those provided.
    pub fn arm_tun_read(&mut self) {
        let e = opcode::ReadMulti::new(FIXED_TUN, 0, TUN_BGID)
            .build()
            .user_data(ud(K_TUN_READ, 0, 0));
        self.push(e);
    }

    /// A writer of packets into this ring's TUN queue ([`TunWriter::write_packets`]).
    pub fn tun_writer(&mut self) -> TunWriter<'_> {
        TunWriter {
            ring: &mut self.ring,
            backlog: &mut self.backlog,
        }
    }

    /// A receive buffer's memory together with a [`TunWriter`], so packets can be written to
    /// the TUN queue straight from the buffer (`None` as for [`Ring::recv_buf`]).
    pub fn recv_buf_and_writer(&mut self, t: &RecvBuf) -> Option<(&mut [u8], TunWriter<'_>)> {
        let buf = self.recv_bufs.buf_mut(t)?;
        Some((
            buf,
            TunWriter {
                ring: &mut self.ring,
                backlog: &mut self.backlog,
            },
        ))
    }

    /// Ends the multishot TUN read (a stop): reads completed before the cancel still
    /// arrive, then a last completion without `more`. Completes as
    /// [`Completion::TunReadCancelled`].
    pub fn cancel_tun_read(&mut self) {
        let e = opcode::AsyncCancel::new(ud(K_TUN_READ, 0, 0))
            .build()
            .user_data(ud(K_TUN_READ_CANCEL, 0, 0));
        self.push(e);
    }

    /// Takes the slot a TUN read completion filled: its index and memory. `None` for a slot
    /// this ring does not have or that is taken already (never, from a sane kernel).
    pub fn take_read_slot(&mut self, r: ReadSlot) -> Option<(usize, SlotMut<'_>)> {
        let sr = self.tun_reads.as_mut()?;
        let s = self.slots.get_mut(r.slot).filter(|s| !s.busy)?;
        sr.in_kernel = sr.in_kernel.saturating_sub(1);
        s.busy = true;
        Some((
            r.slot,
            SlotMut {
                buf: &mut s.buf,
                out: &mut s.out,
                addr: &mut s.addr,
            },
        ))
    }

    /// A taken slot's memory again (`None` if slot `i` is not taken).
    pub fn taken_slot(&mut self, i: usize) -> Option<SlotMut<'_>> {
        let s = self.slots.get_mut(i).filter(|s| s.busy)?;
        Some(SlotMut {
            buf: &mut s.buf,
            out: &mut s.out,
            addr: &mut s.addr,
        })
    }

    fn push(&mut self, e: squeue::Entry) {
        push_entry(&mut self.ring, &mut self.backlog, e);
    }

    /// Submits what is queued and waits for `want` completions.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        self.ring.submit_and_wait(want)
    }

    /// Submits what is queued and waits for one completion, at most `timeout` (ETIME then).
    pub fn submit_and_wait_at_most(&mut self, timeout: Duration) -> io::Result<usize> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        self.ring.submitter().submit_with_args(1, &args)
    }

    /// Sends posted and not completed yet, over all slots.
    pub fn sends_in_flight(&self) -> usize {
        self.slots.iter().map(|s| s.pending).sum()
    }

    /// Whether completions drained earlier wait to be handled.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Moves every completion available (the backlog first) into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        let group = self.recv_bufs.ring_addr();
        out.extend(self.backlog.drain(..).map(|c| decode(c, group)));
        out.extend(self.ring.completion().map(|c| decode(raw(c), group)));
    }

    /// A one-shot POLL_ADD on the wake-up eventfd ([`Completion::Wake`]).
    pub fn arm_wake(&mut self, wake: &OwnedFd) {
        let e = opcode::PollAdd::new(types::Fd(wake.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(ud(K_WAKE, 0, 0));
        self.push(e);
    }

    /// The multishot POLL_ADD on the TUN queue (again, after the kernel ended it).
    pub fn arm_tun_poll(&mut self) {
        let e = opcode::PollAdd::new(FIXED_TUN, libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_TUN_POLL, 0, 0));
        self.push(e);
    }

    /// Arms the multishot receive (again, after the kernel ended it).
    pub fn arm_udp_recv(&mut self) {
        let e = opcode::RecvMsgMulti::new(FIXED_RECV, &*self.recv_msg, RECV_BGID)
            .build()
            .user_data(ud(K_UDP_RECV, 0, 0));
        self.push(e);
    }

    /// Asks the kernel to end the multishot receive (a stop that hands the socket over): what
    /// it received before the cancel still completes, with a last completion without `more`,
    /// and nothing after it is taken from the socket. Completes as [`Completion::RecvCancelled`].
    pub fn cancel_udp_recv(&mut self) {
        let e = opcode::AsyncCancel::new(ud(K_UDP_RECV, 0, 0))
            .build()
            .user_data(ud(K_RECV_CANCEL, 0, 0));
        self.push(e);
    }

    /// The receive buffer a completion handed over (`None`: an id this ring never gave out).
    pub fn recv_buf(&mut self, t: &RecvBuf) -> Option<&mut [u8]> {
        self.recv_bufs.buf_mut(t)
    }

    /// Gives a receive buffer back to the kernel (visible after [`Ring::publish_bufs`]).
    pub fn provide(&mut self, t: RecvBuf) {
        self.recv_bufs.provide(t);
    }

    /// Makes the buffers provided so far visible to the kernel (one release store per ring):
    /// receive buffers, and TUN slots' read buffers with multishot TUN reads.
    pub fn publish_bufs(&self) {
        self.recv_bufs.publish();
        if let Some(sr) = &self.tun_reads {
            sr.publish();
        }
    }

    /// Whether a TUN slot is free (on the free list, or provided to the kernel for reads).
    pub fn has_free_slot(&self) -> bool {
        match &self.tun_reads {
            Some(sr) => sr.in_kernel > 0,
            None => !self.free.is_empty(),
        }
    }

    /// Whether every TUN slot is free (every packet read was handed to the kernel).
    pub fn all_slots_free(&self) -> bool {
        let free = match &self.tun_reads {
            Some(sr) => sr.in_kernel,
            None => self.free.len(),
        };
        free == self.slots.len()
    }

    /// Takes a free TUN slot: its index and its memory, lent until the next ring call.
    pub fn take_slot(&mut self) -> Option<(usize, SlotMut<'_>)> {
        // With multishot TUN reads the free list stays empty: slots come from completions.
        let i = self.free.pop()?;
        let s = self.slots.get_mut(i)?;
        s.busy = true;
        Some((
            i,
            SlotMut {
                buf: &mut s.buf,
                out: &mut s.out,
                addr: &mut s.addr,
            },
        ))
    }

    /// Puts taken slot `i` back on the free list (or provides it to the kernel for TUN reads,
    /// visible after [`Ring::publish_bufs`]) unless sends of it are in flight; true when it was.
    pub fn release_slot(&mut self, i: usize) -> bool {
        match self.slots.get_mut(i) {
            Some(s) if s.busy && s.pending == 0 => {
                s.busy = false;
                s.used = 0;
                match self.tun_reads.as_mut() {
                    Some(sr) => sr.provide(i as u16, &mut s.buf),
                    None => self.free.push(i),
                }
                true
            }
            _ => false,
        }
    }

    /// Copies the bytes `range` of taken slot `from`'s read buffer to `at` in taken slot
    /// `to`'s read buffer (gathering packets into one send), while no send of `to` is in
    /// flight. False, and nothing copied, when a slot is not taken, `to` has sends in flight,
    /// the slots are the same or a range is outside its buffer.
    pub fn copy_packet(&mut self, from: usize, range: Range<usize>, to: usize, at: usize) -> bool {
        if from == to || from >= self.slots.len() || to >= self.slots.len() {
            return false;
        }
        let (src, dst) = if from < to {
            let (l, r) = self.slots.split_at_mut(to);
            (&l[from], &mut r[0])
        } else {
            let (l, r) = self.slots.split_at_mut(from);
            (&r[0], &mut l[to])
        };
        if !src.busy || !dst.busy || dst.pending != 0 {
            return false;
        }
        let Some(bytes) = src.buf.get(range) else {
            return false;
        };
        match at
            .checked_add(bytes.len())
            .and_then(|end| dst.buf.get_mut(at..end))
        {
            Some(d) => {
                d.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// The length of a TUN slot's read buffer.
    pub fn slot_buf_len(&self) -> usize {
        self.slots.first().map_or(0, |s| s.buf.len())
    }

    /// Posts `tx` from taken slot `i` (its range in the slot's read or split buffer) to the
    /// slot's peer, as a UDP_SEGMENT send when it has a segment size. False: no send room left
    /// in the slot, or the range is outside the buffer.
    pub fn post_send(&mut self, i: usize, tx: &Transmit) -> bool {
        let Some(s) = self.slots.get_mut(i).filter(|s| s.busy) else {
            return false;
        };
        let k = s.used;
        let buf = match tx.buffer {
            TxBuffer::Read => &mut s.buf,
            TxBuffer::Split => &mut s.out,
        };
        let (Some(m), Some(bytes)) = (s.sends.get_mut(k), buf.get_mut(tx.range.clone())) else {
            return false;
        };
        s.used += 1;
        s.pending += 1;
        m.tx = tx.clone();
        m.iov.iov_base = bytes.as_mut_ptr().cast();
        m.iov.iov_len = bytes.len();
        m.msg.msg_iov = &mut m.iov;
        m.msg.msg_iovlen = 1;
        m.msg.msg_name = (&mut s.addr as *mut libc::sockaddr_in).cast();
        m.msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if tx.is_gso() {
            let n = encode_udp_segment(&mut m.ctl, tx.segment_size);
            m.msg.msg_control = m.ctl.as_mut_ptr().cast();
            m.msg.msg_controllen = n as _;
        } else {
            m.msg.msg_control = std::ptr::null_mut();
            m.msg.msg_controllen = 0;
        }
        let e = opcode::SendMsg::new(FIXED_SEND, &m.msg)
            .build()
            .user_data(ud(K_UDP_SEND, i, k));
        self.push(e);
        true
    }

    /// Accounts a finished send and says what it carried. The slot stays taken: release it
    /// ([`Ring::release_slot`]) once nothing of it is in flight.
    pub fn send_done(&mut self, sent: Sent) -> Option<SendDone> {
        let s = self.slots.get_mut(sent.slot)?;
        let m = s.sends.get(sent.sub)?;
        s.pending = s.pending.saturating_sub(1);
        Some(SendDone {
            res: sent.res,
            slot: sent.slot,
            tx: m.tx.clone(),
        })
    }

    /// Cancels every operation still in flight, waits (at most `wait`) until the kernel has
    /// completed them, and unregisters the files. Without this the ring's teardown, which the
    /// kernel runs asynchronously after the ring fd is closed, would keep the TUN queue open
    /// for a while after the process exits: a data plane restarted at once would then attach
    /// its queues to the old, dying `flannel0` (with the old vnet-header setting) instead of a
    /// fresh device. `recv_armed`: the multishot receive is still armed (its last completion is
    /// awaited too).
    pub fn shutdown(&mut self, wait: Duration, recv_armed: bool, tun_read_armed: bool) {
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any().all())
            .build()
            .user_data(ud(K_CANCEL, 0, 0));
        self.push(cancel);
        let deadline = Instant::now() + wait;
        let mut cancelled = false;
        let mut sends = self.slots.iter().map(|s| s.pending).sum::<usize>();
        // The TUN queue's poll (readiness reads) or multishot read.
        let (mut tun_poll, mut recv) = (self.tun_reads.is_none() || tun_read_armed, recv_armed);
        while Instant::now() < deadline && (!cancelled || sends > 0 || tun_poll || recv) {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
                Err(_) => break,
            }
            let done: Vec<RawCqe> = self
                .backlog
                .drain(..)
                .chain(self.ring.completion().map(raw))
                .collect();
            for (data, _, flags) in done {
                match data >> 56 {
                    K_CANCEL => cancelled = true,
                    K_UDP_SEND => sends = sends.saturating_sub(1),
                    K_TUN_POLL | K_TUN_READ if !cqueue::more(flags) => tun_poll = false,
                    K_UDP_RECV if !cqueue::more(flags) => recv = false,
                    _ => {}
                }
            }
        }
        if let Err(e) = self.ring.submitter().unregister_files() {
            tracing::debug!("io_uring: unregistering files at shutdown: {e}");
        }
    }
}

/// Decodes a completion of a ring whose buffer ring is at `group` (see [`BufRing::ring_addr`]).
fn decode((data, res, flags): RawCqe, group: u64) -> Completion {
    let more = cqueue::more(flags);
    match data >> 56 {
        K_TUN_POLL => Completion::TunPoll { res, more },
        K_UDP_SEND => Completion::Sent(Sent {
            slot: ((data >> 24) & 0xff_ffff) as usize,
            sub: (data & 0xff_ffff) as usize,
            res,
        }),
        K_UDP_RECV => Completion::Recv {
            res,
            more,
            // A completion naming a buffer hands it to us: the one place a token is made.
            buf: cqueue::buffer_select(flags).map(|bid| RecvBuf::from_completion(bid, group)),
        },
        K_WAKE => Completion::Wake,
        K_RECV_CANCEL => Completion::RecvCancelled { res },
        K_TUN_READ => Completion::TunRead {
            res,
            more,
            slot: cqueue::buffer_select(flags).map(|bid| ReadSlot {
                slot: usize::from(bid),
            }),
        },
        K_TUN_READ_CANCEL => Completion::TunReadCancelled { res },
        _ => Completion::Other,
    }
}

/// Pushes `e` onto `ring`'s submission queue; when it is full, submits what is queued first,
/// parking the completions drained meanwhile in `backlog` (handled next round).
fn push_entry(ring: &mut IoUring, backlog: &mut Vec<RawCqe>, e: squeue::Entry) {
    loop {
        // SAFETY: every entry we build points into leaked memory (slots, the receive
        // msghdr) or into a buffer that [`TunWriter::write_packets`] keeps borrowed until its
        // completion arrives, or nothing (see the module docs).
        if unsafe { ring.submission().push(&e) }.is_ok() {
            return;
        }
        // The SQ is full: hand it to the kernel. Drain the CQ first so a full CQ cannot
        // make the submit fail (EBUSY); those completions are handled next round.
        backlog.extend(ring.completion().map(raw));
        if let Err(e) = ring.submit() {
            if e.raw_os_error() != Some(libc::EINTR) {
                backlog.extend(ring.completion().map(raw));
            }
        }
    }
}

/// Writes packets into a ring's TUN queue (its registered file), borrowed from the
/// [`Ring`] ([`Ring::tun_writer`], [`Ring::recv_buf_and_writer`]).
pub struct TunWriter<'a> {
    ring: &'a mut IoUring,
    backlog: &'a mut Vec<RawCqe>,
}

impl TunWriter<'_> {
    /// Writes each `ranges` slice of `buf` to the TUN queue as one packet, one WRITE each
    /// (submitted with everything else queued, in one io_uring_enter), and returns only once
    /// every one of them completed, so the kernel reads `buf` only during this call. Other
    /// completions reaped meanwhile wait in the backlog. `results` gets each write's result
    /// (bytes, or -errno; -EINVAL for a range outside `buf`), in order. TUN is FMODE_NOWAIT
    /// (Linux 6.4), so the writes complete inline; should they not within a second, the
    /// process aborts rather than return while the kernel may still read `buf`.
    pub fn write_packets(
        &mut self,
        buf: &[u8],
        ranges: &mut dyn Iterator<Item = Range<usize>>,
        results: &mut Vec<i32>,
    ) {
        results.clear();
        let mut pending = 0usize;
        for r in ranges {
            let i = results.len();
            match buf.get(r) {
                Some(pkt) if i < 0xff_ffff => {
                    results.push(0);
                    pending += 1;
                    let e = opcode::Write::new(FIXED_TUN, pkt.as_ptr(), pkt.len() as u32)
                        .offset(u64::MAX)
                        .build()
                        .user_data(ud(K_TUN_WRITE, 0, i));
                    push_entry(self.ring, self.backlog, e);
                }
                _ => results.push(-libc::EINVAL),
            }
        }
        // A full submission queue made `push` submit and park completions in the backlog:
        // writes of this batch may be among them.
        self.backlog.retain(|&(data, res, _)| {
            if data >> 56 != K_TUN_WRITE {
                return true;
            }
            if let Some(slot) = results.get_mut((data & 0xff_ffff) as usize) {
                *slot = res;
            }
            pending = pending.saturating_sub(1);
            false
        });
        let mut first = true;
        let deadline = Instant::now() + Duration::from_secs(1);
        while pending > 0 {
            if Instant::now() >= deadline {
                // Never seen (the writes complete inline), and returning would let the kernel
                // read `buf` after the caller reuses it: end the process instead (under
                // systemd, Restart= brings it back with its fd store).
                tracing::error!(pending, "TUN writes did not complete within 1 s: aborting");
                std::process::abort();
            }
            let r = if first {
                self.ring.submit()
            } else {
                self.ring.submit_and_wait(1)
            };
            first = false;
            if let Err(e) = r {
                if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            for c in self.ring.completion().map(raw) {
                let (data, res, _) = c;
                if data >> 56 == K_TUN_WRITE {
                    if let Some(slot) = results.get_mut((data & 0xff_ffff) as usize) {
                        *slot = res;
                    }
                    pending = pending.saturating_sub(1);
                } else {
                    self.backlog.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let c = decode((ud(K_UDP_SEND, 31, 95), -5, 0), 0);
        match c {
            Completion::Sent(s) => assert_eq!((s.slot, s.sub, s.res), (31, 95, -5)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode((ud(K_TUN_POLL, 0, 0), 1, 0), 0),
            Completion::TunPoll {
                res: 1,
                more: false
            }
        ));
        assert!(matches!(
            decode((ud(K_WAKE, 0, 0), 1, 0), 0),
            Completion::Wake
        ));
        assert!(matches!(
            decode((ud(K_CANCEL, 0, 0), 0, 0), 0),
            Completion::Other
        ));
        // A receive without a buffer carries no token.
        assert!(matches!(
            decode((ud(K_UDP_RECV, 0, 0), -105, 0), 0),
            Completion::Recv { buf: None, .. }
        ));
    }
}
