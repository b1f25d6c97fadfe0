//! Constants and map layouts shared by the express lane's programs and the data plane.
//!
//! Numbers are the kernel's ABI (read from the running kernel's BTF, stable across versions):
//! `__sk_buff` field offsets, return codes, `bpf_skb_adjust_room` flags. The map values are
//! plain little structs serialised here, so the programs' offsets and the writer's bytes
//! come from one place.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;

/// `struct __sk_buff` field offsets (bytes).
pub mod skb {
    pub const LEN: i16 = 0;
    /// `PACKET_HOST` (0): addressed to this host's MAC.
    pub const PKT_TYPE: i16 = 4;
    /// Non-zero: the frame carries a VLAN tag (not yet handed to its VLAN device).
    pub const VLAN_PRESENT: i16 = 20;
    /// `skb->protocol` as the raw `__be16` (ETH_P_IP reads as 0x0008 on little-endian).
    pub const PROTOCOL: i16 = 16;
    pub const INGRESS_IFINDEX: i16 = 36;
    pub const IFINDEX: i16 = 40;
    pub const GSO_SEGS: i16 = 164;
    pub const GSO_SIZE: i16 = 176;
    /// `sizeof(struct __sk_buff)`: the context size `BPF_PROG_TEST_RUN` takes.
    pub const SIZE: usize = 192;
}

/// `skb->protocol` for IPv4 as a 32-bit context load sees it on a little-endian machine.
pub const ETH_P_IP_RAW: i32 = u16::from_ne_bytes(0x0800u16.to_be_bytes()) as i32;

/// tcx return codes (`enum tcx_action_base`): continue with the next program / the stack.
pub const TCX_NEXT: i32 = -1;
pub const TCX_PASS: i32 = 0;
pub const TCX_DROP: i32 = 2;
pub const TCX_REDIRECT: i32 = 7;

/// `bpf_skb_adjust_room` mode and flags.
pub const BPF_ADJ_ROOM_MAC: i32 = 1;
pub const BPF_F_ADJ_ROOM_FIXED_GSO: i32 = 1;
pub const BPF_F_ADJ_ROOM_ENCAP_L3_IPV4: i32 = 1 << 1;
pub const BPF_F_ADJ_ROOM_ENCAP_L4_UDP: i32 = 1 << 4;
/// Decapsulation flag that also clears the skb's UDP-tunnel marks (`skb->encapsulation`,
/// `SKB_GSO_UDP_TUNNEL`), as the kernel's own tunnels do on receive. Not in Linux 6.18's
/// `enum bpf_adj_room_flags`; reported as added in bpf-next. Probe with
/// [`crate::express::ingress::decap_l4_udp_probe`].
pub const BPF_F_ADJ_ROOM_DECAP_L4_UDP: i32 = 1 << 10;
/// Encapsulation as the egress program asks for it: keep the inner MSS (`gso_size`), mark
/// the skb as IPv4/UDP-encapsulated (GSO then segments it as a UDP tunnel).
pub const ENCAP_FLAGS: i32 =
    BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP;

/// Outer IPv4 + UDP header bytes flannel adds.
pub const ENCAP_LEN: i32 = 28;
/// Ethernet header bytes.
pub const ETH_LEN: i32 = 14;

/// Map slots of the lane's programs (the loader passes the fds in this order; the egress
/// program uses the first three).
pub mod slot {
    use crate::bpf_asm::MapSlot;
    pub const CFG: MapSlot = MapSlot(0);
    pub const PEERS: MapSlot = MapSlot(1);
    pub const STATS: MapSlot = MapSlot(2);
    pub const SENDERS: MapSlot = MapSlot(3);
    pub const ENDPOINTS: MapSlot = MapSlot(4);
}

/// `bpf_csum_level` operation: one level of `CHECKSUM_UNNECESSARY` consumed (the outer UDP).
pub const BPF_CSUM_LEVEL_DEC: i32 = 2;

/// `senders` value bit: this PublicIP holds our own lease (a datagram "from" it is local).
pub const SENDER_HOLDS_OUR_SUBNET: u32 = 1;
/// `senders` value bit: the path to this PublicIP is narrower than the lane's largest
/// datagram (a route MTU or a learned path MTU): the egress program leaves its packets to the
/// workers, whose sockets honour it.
pub const SENDER_NARROW_PATH: u32 = 2;

/// A local container the ingress program delivers to: the host-side veth (its peer is the
/// container's interface) and the Ethernet addresses to write (`endpoints` value, 16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ifindex: u32,
    /// The container's MAC (destination).
    pub mac: [u8; 6],
    /// The bridge's (or the host-side veth's) MAC (source).
    pub gateway_mac: [u8; 6],
}

impl Endpoint {
    pub const SIZE: usize = 16;
    /// Offset of the two MAC addresses (destination, then source, as in a frame).
    pub const MACS: i32 = 4;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..10].copy_from_slice(&self.mac);
        b[10..16].copy_from_slice(&self.gateway_mac);
        b
    }
}

/// `LaneCfg` field offsets (all u32).
pub mod cfg {
    pub const ENABLED: i16 = 0;
    pub const FLAGS: i16 = 4;
    pub const NETWORK: i16 = 8;
    pub const NET_MASK: i16 = 12;
    pub const SHIFT: i16 = 16;
    pub const ENTRIES: i16 = 20;
    pub const OUR_SUBNET: i16 = 24;
    pub const OUR_MASK: i16 = 28;
    pub const OUR_IP: i16 = 32;
    pub const PORT: i16 = 36;
    pub const UNDERLAY_IFINDEX: i16 = 40;
    pub const MAX_INNER_LEN: i16 = 44;
    pub const OUTER_TTL: i16 = 48;
    /// Bytes of the value.
    pub const SIZE: usize = 56;
    /// `FLAGS` bit: check that the inner source lies in the sender's subnet (receive).
    pub const FLAG_SPOOF_CHECK: i32 = 1;
    /// `FLAGS` bit: send from the flannel port instead of a per-flow source port.
    pub const FLAG_FIXED_SPORT: i32 = 1 << 1;
    /// `FLAGS` bit: a checked datagram without a known endpoint may be decapsulated to the
    /// host's stack (off when strict `rp_filter` on the underlay would drop it there).
    pub const FLAG_STACK_DELIVERY: i32 = 1 << 2;
    /// `FLAGS` bit: a GSO skb arriving on the underlay may be an express sender's whole
    /// super-packet (a veth underlay passes them unsegmented); otherwise it is a GRO batch.
    pub const FLAG_GSO_WHOLE: i32 = 1 << 3;
}

/// The lane's configuration, one value of the `cfg` array map. Addresses the programs do
/// arithmetic on are in host order; those copied into packets are in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneCfg {
    /// When false both programs hand every packet on unchanged.
    pub enabled: bool,
    pub spoof_check: bool,
    pub fixed_source_port: bool,
    /// The overlay network and its prefix length.
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// `SubnetLen`.
    pub subnet_len: u8,
    /// Our lease.
    pub our_subnet: Ipv4Addr,
    pub our_prefix: u8,
    /// Our PublicIP: the outer source.
    pub our_ip: Ipv4Addr,
    /// The flannel UDP port (destination; source with `fixed_source_port`).
    pub port: u16,
    /// Where encapsulated packets are handed to the neighbour output.
    pub underlay_ifindex: u32,
    /// Underlay MTU − 28: longer non-GSO inner packets are left to the TUN path.
    pub max_inner_len: u32,
    /// TTL of the outer header (`net.ipv4.ip_default_ttl`, what flannel's socket sends with).
    pub outer_ttl: u8,
    /// See [`cfg::FLAG_STACK_DELIVERY`].
    pub stack_delivery: bool,
    /// See [`cfg::FLAG_GSO_WHOLE`].
    pub gso_whole: bool,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl LaneCfg {
    /// The map value's bytes (native-endian u32 fields, wire-order fields as they appear in a
    /// packet).
    pub fn to_bytes(&self) -> [u8; cfg::SIZE] {
        let mut b = [0u8; cfg::SIZE];
        let mut put = |off: i16, v: u32| {
            let o = off as usize;
            b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
        };
        let wire = |ip: Ipv4Addr| u32::from_ne_bytes(ip.octets());
        put(cfg::ENABLED, u32::from(self.enabled));
        let mut flags = 0u32;
        if self.spoof_check {
            flags |= cfg::FLAG_SPOOF_CHECK as u32;
        }
        if self.fixed_source_port {
            flags |= cfg::FLAG_FIXED_SPORT as u32;
        }
        if self.stack_delivery {
            flags |= cfg::FLAG_STACK_DELIVERY as u32;
        }
        if self.gso_whole {
            flags |= cfg::FLAG_GSO_WHOLE as u32;
        }
        put(cfg::FLAGS, flags);
        put(cfg::NETWORK, u32::from(self.network));
        put(cfg::NET_MASK, mask(self.prefix));
        put(cfg::SHIFT, 32 - u32::from(self.subnet_len.min(32)));
        let bits = u32::from(self.subnet_len.saturating_sub(self.prefix)).min(31);
        put(cfg::ENTRIES, 1u32 << bits);
        put(cfg::OUR_SUBNET, u32::from(self.our_subnet));
        put(cfg::OUR_MASK, mask(self.our_prefix));
        put(cfg::OUR_IP, wire(self.our_ip));
        put(
            cfg::PORT,
            u32::from(u16::from_ne_bytes(self.port.to_be_bytes())),
        );
        put(cfg::UNDERLAY_IFINDEX, self.underlay_ifindex);
        put(cfg::MAX_INNER_LEN, self.max_inner_len);
        put(cfg::OUTER_TTL, u32::from(self.outer_ttl));
        b
    }
}

/// A peer's PublicIP as the `peers` array stores it (wire order; 0 = no lease).
pub fn peer_value(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

/// The lane's counter slots (the `stats` per-CPU array). Each maps to one stats-file counter
/// name once the data plane collects them; the drop reasons are the receive checks' own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LaneCounter {
    /// skbs encapsulated and handed to the underlay (a GSO super-packet is one).
    TxPackets = 0,
    /// Their bytes as sent (outer IP length).
    TxBytes = 1,
    /// skbs left to the TUN path because the kernel refused the encapsulation (unchanged).
    TxPassed = 2,
    /// skbs dropped after they were modified (a helper failed half-way).
    TxErrors = 3,
    /// Datagrams to our PublicIP and port the lane took (delivered or dropped).
    RxPackets = 4,
    /// Their UDP payload bytes.
    RxBytes = 5,
    /// Datagrams left to the socket path unchanged: a GRO batch, a check that depends on the
    /// route table failed (the workers decide with the newest generation), a datagram with a
    /// UDP checksum and no known endpoint, a decapsulation the kernel refused.
    RxPassed = 6,
    /// Datagrams dropped after they were modified.
    RxErrors = 7,
    DropTooShort = 8,
    DropNotIpv4 = 9,
    DropBadIhl = 10,
    DropBadLength = 11,
    DropRxTtlExpired = 12,
    /// Datagrams decapsulated and handed to the host's stack (no known local endpoint).
    RxToStack = 13,
}

impl LaneCounter {
    /// Slots the `stats` map has.
    pub const COUNT: u32 = 14;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_bytes_are_golden() {
        let c = LaneCfg {
            enabled: true,
            spoof_check: true,
            fixed_source_port: true,
            network: Ipv4Addr::new(10, 1, 0, 0),
            prefix: 16,
            subnet_len: 24,
            our_subnet: Ipv4Addr::new(10, 1, 15, 0),
            our_prefix: 24,
            our_ip: Ipv4Addr::new(198, 18, 0, 1),
            port: 8285,
            underlay_ifindex: 7,
            max_inner_len: 1472,
            outer_ttl: 64,
            stack_delivery: false,
            gso_whole: false,
        };
        let b = c.to_bytes();
        let u = |o: i16| u32::from_ne_bytes(b[o as usize..o as usize + 4].try_into().unwrap());
        assert_eq!(u(cfg::ENABLED), 1);
        assert_eq!(u(cfg::FLAGS), 3);
        assert_eq!(u(cfg::NETWORK), 0x0a01_0000);
        assert_eq!(u(cfg::NET_MASK), 0xffff_0000);
        assert_eq!(u(cfg::SHIFT), 8);
        assert_eq!(u(cfg::ENTRIES), 256);
        assert_eq!(u(cfg::OUR_SUBNET), 0x0a01_0f00);
        assert_eq!(u(cfg::OUR_MASK), 0xffff_ff00);
        // Wire order: the bytes as in a packet.
        assert_eq!(&b[32..36], &[198, 18, 0, 1]);
        assert_eq!(&b[36..38], &[0x20, 0x5d]);
        assert_eq!(&b[38..40], &[0, 0]);
        assert_eq!(u(cfg::UNDERLAY_IFINDEX), 7);
        assert_eq!(u(cfg::MAX_INNER_LEN), 1472);
        assert_eq!(u(cfg::OUTER_TTL), 64);
        assert_eq!(&b[52..56], &[0, 0, 0, 0]);
    }

    #[test]
    fn endpoint_bytes_are_golden() {
        let e = Endpoint {
            ifindex: 0x0102_0304,
            mac: [2, 0, 0, 0, 0, 0xca],
            gateway_mac: [2, 0, 0, 0, 0, 0xbb],
        };
        let mut want = 0x0102_0304u32.to_ne_bytes().to_vec();
        want.extend_from_slice(&[2, 0, 0, 0, 0, 0xca, 2, 0, 0, 0, 0, 0xbb]);
        assert_eq!(e.to_bytes().to_vec(), want);
    }

    #[test]
    fn protocol_constant_is_the_raw_be16() {
        assert_eq!(ETH_P_IP_RAW, 0x0008);
        assert_eq!(ENCAP_FLAGS, 0x13);
    }
}
