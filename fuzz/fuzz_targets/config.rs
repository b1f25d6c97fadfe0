//! `NetworkConfig::parse` on any text: never panics; an accepted config satisfies the
//! invariants of DESIGN.md (bounds inside the network, on SubnetLen boundaries, at least one
//! subnet, SubnetLen limits) and survives a round trip through the JSON flannel stores.

#![no_main]

use flannel_shared::config::NetworkConfig;
use flannel_shared::Ipv4Net;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = NetworkConfig::parse(text) else {
        return;
    };
    let net = c.network;
    assert!(
        net.prefix() <= 28,
        "network longer than /28 accepted: {net}"
    );
    assert!(c.subnet_len <= 30, "SubnetLen {} > 30", c.subnet_len);
    assert!(
        c.subnet_len >= net.prefix() + 2,
        "SubnetLen {} leaves fewer than four subnets in {net}",
        c.subnet_len
    );
    let min = Ipv4Net::new(c.subnet_min, c.subnet_len).expect("SubnetMin aligned");
    let max = Ipv4Net::new(c.subnet_max, c.subnet_len).expect("SubnetMax aligned");
    assert!(net.contains_net(&min) && net.contains_net(&max));
    if u32::from(c.subnet_min) <= u32::from(c.subnet_max) {
        assert!(c.fits(&min) && c.fits(&max));
        assert!(c.subnet_count() >= 1);
        assert!(c.subnet_count() <= 1 << (c.subnet_len - net.prefix()));
        assert_eq!(c.subnets().next(), Some(min));
    } else {
        // Accepted as flannel accepts it, with a warning; nothing to lease.
        assert_eq!(c.subnet_count(), 0);
        assert_eq!(c.subnets().next(), None);
        assert!(c.warnings.iter().any(|w| w.starts_with("SubnetMin")));
    }
    assert!(c.backend.port != 0);

    // What flannel stores, written back and read again, is the same config.
    let json = serde_json::json!({
        "Network": net.to_string(),
        "SubnetLen": c.subnet_len,
        "SubnetMin": c.subnet_min.to_string(),
        "SubnetMax": c.subnet_max.to_string(),
        "Backend": { "Type": "udp", "Port": c.backend.port },
        "EnableNFTables": c.enable_nftables,
    });
    let again = NetworkConfig::parse(&json.to_string())
        .unwrap_or_else(|e| panic!("re-serialised config refused: {e}: {json}"));
    // The masked Network and the stored fields are the same config; only the warnings about
    // the original text (host bits, ignored IPv6) differ.
    let same = |x: &NetworkConfig| {
        (
            x.network,
            x.subnet_len,
            x.subnet_min,
            x.subnet_max,
            x.backend.clone(),
            x.enable_nftables,
        )
    };
    assert_eq!(same(&again), same(&c), "{json}");
});
