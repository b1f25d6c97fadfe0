//! Receive buffers for the io_uring worker: a provided-buffer ring (Linux 5.19) feeding one
//! multishot RECVMSG (Linux 6.0), and the layout of what the kernel writes into each buffer.
//!
//! One multishot receive replaces a crowd of posted RECVMSGs. Posting many receives on one
//! socket is a thundering herd: every datagram wakes all of them, all but one find the socket
//! empty and re-arm their poll, and after a few rounds the kernel hands them to io-wq threads
//! (measured: ~30 poll re-arms per datagram and ~60 io-wq threads with 32 posted receives).
//!
//! The ring is `entries` (a power of two, ≤ 32768) 16-byte `io_uring_buf` descriptors in
//! page-aligned memory; the kernel consumes from the head, we publish at the tail. Each buffer
//! is `buf_size` bytes: a 16-byte `io_uring_recvmsg_out` header, the source address area,
//! the control area, then the payload ([`RecvLayout`]). All memory is leaked on purpose: the
//! kernel may use it until the ring is gone, which is at process exit.
//!
//! Who owns a buffer: the kernel, from the moment it is provided (published at the tail) until
//! a completion names it; then us, until we provide it again. That hand-over is a
//! [`RecvBuf`] token: only a receive completion of the ring this buffer ring is registered
//! with gives one out (`sys::uring`), it is neither `Copy` nor `Clone`, [`BufRing::buf_mut`]
//! needs it and [`BufRing::provide`] consumes it. So safe code cannot look into a buffer the
//! kernel may be writing.

use std::alloc::{alloc_zeroed, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags (4 × u32).
pub const RECVMSG_OUT_LEN: usize = 16;

/// Proof that buffer `bid` of one [`BufRing`] is ours: a receive completion handed it over
/// and it has not been provided back since. Made only from a completion (`sys::uring`).
#[derive(Debug, PartialEq, Eq)]
pub struct RecvBuf {
    bid: u16,
    /// The descriptor ring the completion's buffer group belongs to ([`BufRing::ring_addr`]).
    ring: u64,
}

impl RecvBuf {
    /// The token for buffer `bid` of the ring at `ring`, as a completion names it.
    ///
    /// Private to `sys`: only code that just took `bid` out of a real completion of the io_uring
    /// instance that ring is registered with may call this, once per completion.
    pub(in crate::sys) fn from_completion(bid: u16, ring: u64) -> Self {
        Self { bid, ring }
    }

    /// The buffer id.
    pub fn bid(&self) -> u16 {
        self.bid
    }
}

/// The kernel's page size (`sysconf(_SC_PAGESIZE)`): 4 KiB on x86-64; 4, 16 or 64 KiB on arm64.
/// 4096 if sysconf fails or answers something that is not a power of two.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no memory preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two() && *p >= 4096)
        .unwrap_or(4096)
}

/// A provided-buffer ring and the buffers it hands out.
pub struct BufRing {
    entries: *mut BufRingEntry,
    mask: u16,
    /// Our next tail (published with [`BufRing::publish`]).
    tail: u16,
    bufs: *mut u8,
    buf_size: usize,
    count: u16,
}

impl BufRing {
    /// Allocates `count` buffers of `buf_size` bytes and a descriptor ring of `count` entries
    /// (`count` a power of two), all buffers provided. Register [`BufRing::ring_addr`] with
    /// the kernel before use.
    pub fn new(count: u16, buf_size: usize) -> std::io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("buffer ring of {count} entries: must be a power of two ≤ 32768"),
            ));
        }
        // The kernel wants the descriptor ring page aligned (IORING_REGISTER_PBUF_RING: EINVAL
        // otherwise), and a page is not always 4 KiB: arm64 kernels run with 16 or 64 KiB pages.
        let ring_layout = Layout::from_size_align(
            usize::from(count) * std::mem::size_of::<BufRingEntry>(),
            page_size(),
        )
        .map_err(std::io::Error::other)?;
        let bufs_layout = Layout::from_size_align(usize::from(count) * buf_size, 64)
            .map_err(std::io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, entries are 16 bytes; buffers
        // are checked below). The memory is never freed (see the module docs).
        let (entries, bufs) = unsafe {
            if bufs_layout.size() == 0 {
                return Err(std::io::Error::other("zero-sized receive buffers"));
            }
            (
                alloc_zeroed(ring_layout).cast::<BufRingEntry>(),
                alloc_zeroed(bufs_layout),
            )
        };
        if entries.is_null() || bufs.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        let mut r = Self {
            entries,
            mask: count - 1,
            tail: 0,
            bufs,
            buf_size,
            count,
        };
        for bid in 0..count {
            r.provide_bid(bid);
        }
        r.publish();
        Ok(r)
    }

    /// The descriptor ring's address, for IORING_REGISTER_PBUF_RING.
    pub fn ring_addr(&self) -> u64 {
        self.entries as u64
    }

    pub fn entries(&self) -> u16 {
        self.count
    }

    /// The buffer a completion handed over, as the kernel filled it (`None` for an id this
    /// ring never handed out, or a token of another ring).
    pub fn buf_mut(&mut self, t: &RecvBuf) -> Option<&mut [u8]> {
        let bid = t.bid;
        if bid >= self.count || t.ring != self.ring_addr() {
            return None;
        }
        // SAFETY: `bid < count`, so the range lies in the allocation. The token proves a
        // completion of this ring handed buffer `bid` to us and that it was not provided back
        // since (providing consumes the token), so the kernel does not touch it now; `&mut self`
        // keeps us from handing out two views at once.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.bufs.add(usize::from(bid) * self.buf_size),
                self.buf_size,
            )
        })
    }

    /// Gives a buffer back to the kernel; visible to it after [`BufRing::publish`].
    pub fn provide(&mut self, t: RecvBuf) {
        if t.ring != self.ring_addr() {
            return;
        }
        self.provide_bid(t.bid);
    }

    /// Queues buffer `bid` for the kernel (every buffer at startup, then each returned one).
    fn provide_bid(&mut self, bid: u16) {
        if bid >= self.count {
            return;
        }
        let idx = usize::from(self.tail & self.mask);
        // SAFETY: `idx <= mask < count`: inside the descriptor ring. The kernel only reads
        // descriptors between its head and our published tail, and this one is past the tail.
        let e = unsafe { &mut *self.entries.add(idx) };
        // SAFETY: `bid < count`: the buffer's start lies inside the allocation.
        e.set_addr(unsafe { self.bufs.add(usize::from(bid) * self.buf_size) } as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every buffer provided so far visible to the kernel (one release store).
    pub fn publish(&self) {
        // SAFETY: the tail field lives in the first descriptor of our live ring; it is a u16
        // the kernel reads with acquire semantics, so an atomic release store is the protocol.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

/// Where the parts of one multishot RECVMSG buffer are (byte ranges into the buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvLayout {
    pub name: std::ops::Range<usize>,
    pub control: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
    /// The datagram did not fit (MSG_TRUNC): the payload range holds only its start.
    pub truncated: bool,
}

/// Parses the `io_uring_recvmsg_out` header at the start of `buf`, for a receive whose
/// `msghdr` had `name_area` and `control_area` bytes of name and control space. `None` when
/// the buffer is too short for the header and areas (never produced by a sane kernel).
pub fn recv_layout(buf: &[u8], name_area: usize, control_area: usize) -> Option<RecvLayout> {
    let word = |i: usize| -> Option<usize> {
        let b: [u8; 4] = buf.get(i * 4..i * 4 + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(b) as usize)
    };
    let (namelen, controllen, payloadlen, flags) = (word(0)?, word(1)?, word(2)?, word(3)?);
    let name_at = RECVMSG_OUT_LEN;
    let control_at = name_at.checked_add(name_area)?;
    let payload_at = control_at.checked_add(control_area)?;
    if payload_at > buf.len() {
        return None;
    }
    let payload_end = payload_at.saturating_add(payloadlen).min(buf.len());
    Some(RecvLayout {
        name: name_at..name_at + namelen.min(name_area),
        control: control_at..control_at + controllen.min(control_area),
        payload: payload_at..payload_end,
        truncated: flags & libc::MSG_TRUNC as usize != 0 || payload_at + payloadlen > buf.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(namelen: u32, controllen: u32, payloadlen: u32, flags: u32) -> Vec<u8> {
        [namelen, controllen, payloadlen, flags]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect()
    }

    #[test]
    fn descriptor_ring_is_aligned_to_the_kernels_page_size() {
        let page = page_size();
        assert!(page.is_power_of_two() && page >= 4096, "page size {page}");
        // SAFETY: sysconf has no memory preconditions.
        let sys = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(page as libc::c_long, sys, "page_size() vs sysconf");
        for count in [1u16, 8, 256] {
            let r = BufRing::new(count, 256).unwrap();
            assert_eq!(
                r.ring_addr() % page as u64,
                0,
                "ring of {count}: ring_addr {:#x} not aligned to {page}",
                r.ring_addr()
            );
        }
    }

    #[test]
    fn layout_of_a_datagram_with_address_and_gro_cmsg() {
        let mut buf = header(16, 24, 100, 0);
        buf.resize(16 + 16 + 64 + 100 + 50, 0);
        let l = recv_layout(&buf, 16, 64).unwrap();
        assert_eq!(l.name, 16..32);
        assert_eq!(l.control, 32..56);
        assert_eq!(l.payload, 96..196);
        assert!(!l.truncated);
    }

    #[test]
    fn truncated_and_short_buffers() {
        let mut buf = header(16, 0, 500, libc::MSG_TRUNC as u32);
        buf.resize(16 + 16 + 100, 0);
        let l = recv_layout(&buf, 16, 0).unwrap();
        assert_eq!(l.payload, 32..132);
        assert!(l.truncated);
        // Payload claimed longer than the buffer without the flag: still truncated.
        let mut buf = header(16, 0, 500, 0);
        buf.resize(16 + 16 + 100, 0);
        assert!(recv_layout(&buf, 16, 0).unwrap().truncated);
        // Too short for the header, or for the areas.
        assert_eq!(recv_layout(&[0u8; 10], 16, 0), None);
        assert_eq!(recv_layout(&header(0, 0, 0, 0), 16, 64), None);
        // A zero-length datagram.
        let mut buf = header(16, 0, 0, 0);
        buf.resize(64, 0);
        assert_eq!(recv_layout(&buf, 16, 0).unwrap().payload, 32..32);
    }

    #[test]
    fn ring_provides_every_buffer_and_wraps() {
        let mut r = BufRing::new(4, 128).unwrap();
        assert_eq!(r.entries(), 4);
        assert_eq!(r.tail, 4);
        let addr = r.ring_addr();
        let token = |bid| RecvBuf::from_completion(bid, addr);
        let base = r.buf_mut(&token(0)).unwrap().as_ptr() as u64;
        for i in 0..4u16 {
            // SAFETY: index < 4 entries of the ring just built.
            let e = unsafe { &*r.entries.add(usize::from(i)) };
            assert_eq!(e.bid(), i);
            assert_eq!(e.len(), 128);
            assert_eq!(e.addr(), base + u64::from(i) * 128);
        }
        r.provide(token(2));
        assert_eq!(r.tail, 5);
        // SAFETY: entry 0 of the live ring.
        let e = unsafe { &*r.entries };
        assert_eq!(e.bid(), 2);
        assert!(r.buf_mut(&token(4)).is_none());
        // A token of another ring opens nothing here and is not provided.
        assert!(r.buf_mut(&RecvBuf::from_completion(0, 1)).is_none());
        r.provide(RecvBuf::from_completion(1, 1));
        assert_eq!(r.tail, 5);
        assert!(BufRing::new(3, 128).is_err());
    }
}
