//! The data plane's counters (their slots and stable names) and the I/O path it reports.

macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident = $name:literal,)*) => {
        /// One per-worker counter. The discriminant is the slot index in a worker block.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter { $($(#[$doc])* $variant,)* }
        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            /// Number of counters.
            pub const COUNT: usize = Self::ALL.len();
            /// The stable name (as in the file's name table and in metrics).
            pub fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
    /// Packets read from the TUN device.
    TunRxPackets = "tun_rx_packets",
    TunRxBytes = "tun_rx_bytes",
    /// Datagrams sent to peers.
    UdpTxPackets = "udp_tx_packets",
    UdpTxBytes = "udp_tx_bytes",
    /// Of those, datagrams that left in a gathered send: single packets read for one peer in
    /// one round, sent as one UDP_SEGMENT send.
    UdpTxGathered = "udp_tx_gathered",
    /// Datagrams received from peers (before checks).
    UdpRxPackets = "udp_rx_packets",
    UdpRxBytes = "udp_rx_bytes",
    /// Packets written into the TUN device (from peers; ICMP errors are counted separately).
    TunTxPackets = "tun_tx_packets",
    TunTxBytes = "tun_tx_bytes",
    /// Batches processed (one per ring submit / poll wake-up).
    Batches = "batches",
    /// ICMP net-unreachable packets written back into the TUN device.
    IcmpUnreachableSent = "icmp_unreachable_sent",
    /// ICMP net-unreachable suppressed by the rate limiter.
    IcmpRateLimited = "icmp_rate_limited",
    /// I/O errors per direction (the packet is lost).
    TunRxErrors = "tun_rx_errors",
    UdpTxErrors = "udp_tx_errors",
    UdpRxErrors = "udp_rx_errors",
    TunTxErrors = "tun_tx_errors",
    /// TUN → UDP drops.
    DropTunMalformed = "drop_tun_malformed",
    DropTunTtlExpired = "drop_tun_ttl_expired",
    DropNoRoute = "drop_no_route",
    DropTunDstLocal = "drop_tun_dst_local",
    /// UDP → TUN drops (receive checks).
    DropTooShort = "drop_too_short",
    DropNotIpv4 = "drop_not_ipv4",
    DropBadIhl = "drop_bad_ihl",
    DropBadLength = "drop_bad_length",
    DropUnknownSender = "drop_unknown_sender",
    /// The outer source is this host's own lease address: a local process injecting.
    DropFromSelf = "drop_from_self",
    DropDstNotLocal = "drop_dst_not_local",
    DropSpoofedSrc = "drop_spoofed_src",
    DropRxTtlExpired = "drop_rx_ttl_expired",
    /// UDP → TUN: the datagram arrived on an interface that is not the underlay (a local
    /// bridge, the TUN device, loopback): a local container or process spoofing a peer.
    DropNotUnderlay = "drop_not_underlay",
    /// TUN → UDP: the peer's public IP lies inside the overlay network (sending there would
    /// loop the packet back into the TUN device).
    DropPeerInNetwork = "drop_peer_in_network",
    /// TUN → UDP: the send was refused with EMSGSIZE (DF is set on outer packets: a datagram
    /// larger than the path MTU is dropped here, never fragmented).
    UdpTxTooBig = "udp_tx_too_big",
    /// Express lane (`--express`, in worker 0's block): skbs the kernel program encapsulated
    /// and sent (a GSO super-packet counts once) and their outer bytes.
    ExpressTxPackets = "express_tx_packets",
    ExpressTxBytes = "express_tx_bytes",
    /// Express lane: skbs left to the TUN path because the kernel refused to encapsulate them.
    ExpressTxPassed = "express_tx_passed",
    /// Express lane: skbs dropped after a helper failed half-way through encapsulating.
    ExpressTxErrors = "express_tx_errors",
    /// Express lane: datagrams to our port the kernel program took (delivered or dropped by
    /// the receive checks, which count into the `drop_*` counters above) and their payload
    /// bytes.
    ExpressRxPackets = "express_rx_packets",
    ExpressRxBytes = "express_rx_bytes",
    /// Express lane: checked datagrams left to the socket path unchanged (GRO batches).
    ExpressRxPassed = "express_rx_passed",
    /// Express lane: decapsulated datagrams handed to the host's stack (no known container
    /// interface for the destination).
    ExpressRxToStack = "express_rx_to_stack",
    /// Express lane: datagrams dropped after a helper failed half-way through.
    ExpressRxErrors = "express_rx_errors",
}

/// Which I/O path the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum IoPath {
    Unknown = 0,
    IoUring = 1,
    Fallback = 2,
}

impl IoPath {
    pub(crate) fn from_u32(v: u32) -> Self {
        match v {
            1 => IoPath::IoUring,
            2 => IoPath::Fallback,
            _ => IoPath::Unknown,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            IoPath::Unknown => "unknown",
            IoPath::IoUring => "io_uring",
            IoPath::Fallback => "fallback",
        }
    }
}
