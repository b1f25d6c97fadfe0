//! `subnet_env::parse_subnet` on any text (a subnet.env left by anyone): never panics; the
//! subnet it finds is a valid network, and rendering a subnet.env for it reads back the same
//! subnet (flannel's FLANNEL_SUBNET is the first address + 1, so a /32 cannot round-trip;
//! flannel's SubnetLen is at most 30 anyway).

#![no_main]

use flannel_shared::subnet_env::{parse_subnet, SubnetEnv};
use flannel_shared::Ipv4Net;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(subnet) = parse_subnet(&text) else {
        return;
    };
    assert_eq!(Ipv4Net::new(subnet.addr(), subnet.prefix()), Some(subnet));
    let env = SubnetEnv {
        network: Ipv4Net::containing(subnet.addr(), subnet.prefix().saturating_sub(2))
            .expect("prefix <= 32"),
        subnet,
        mtu: u32::from(data.first().copied().unwrap_or(0)) * 8 + 68,
        ip_masq: data.len().is_multiple_of(2),
    };
    let rendered = env.render();
    if subnet.prefix() <= 31 {
        assert_eq!(parse_subnet(&rendered), Some(subnet), "{rendered}");
    }
    // A file holding our rendering followed by the fuzzed text still yields our subnet: the
    // first FLANNEL_SUBNET line wins.
    let both = format!("{rendered}{text}");
    if subnet.prefix() <= 31 {
        assert_eq!(parse_subnet(&both), Some(subnet));
    }
});
