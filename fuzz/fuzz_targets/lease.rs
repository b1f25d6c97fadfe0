//! Lease keys and values as other hosts (or an attacker with etcd write access) may write
//! them: `LeaseAttrs::parse` never panics and what it accepts survives `to_json` → `parse`;
//! `Ipv4Net::from_key` / `FromStr` / `subnet_from_key` never panic and round-trip; no rejection
//! message carries a control character (issue 27: forged log lines).

#![no_main]

use flannel_shared::lease::{subnet_from_key, subnet_key, LeaseAttrs, LeaseKey};
use flannel_shared::Ipv4Net;
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "/coreos.com/network";

fn check_net(n: Ipv4Net) {
    assert!(n.prefix() <= 32);
    assert_eq!(n.addr_u32() & !n.mask(), 0, "host bits set in {n:?}");
    assert!(n.contains(n.addr()) && n.contains(n.last()));
    assert_eq!(Ipv4Net::from_key(&n.to_key()), Ok(n));
    assert_eq!(n.to_string().parse::<Ipv4Net>(), Ok(n));
    assert_eq!(subnet_from_key(PREFIX, &subnet_key(PREFIX, &n)), Some(n));
}

fn check_message(m: String) {
    assert!(!m.chars().any(char::is_control), "{m:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Err(e) = LeaseAttrs::parse(data) {
        check_message(e.to_string());
    }
    if let Ok(a) = LeaseAttrs::parse(data) {
        let json = a.to_json();
        let again = LeaseAttrs::parse(json.as_bytes())
            .unwrap_or_else(|e| panic!("to_json output refused: {e}: {json}"));
        assert_eq!(again, a, "{json}");
        assert_eq!(again.to_json(), json);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = LeaseKey::parse(text) {
        check_message(e.to_string());
    }
    if let Ok(n) = Ipv4Net::from_key(text) {
        check_net(n);
    }
    if let Ok(n) = text.parse::<Ipv4Net>() {
        check_net(n);
    }
    if let Some(n) = subnet_from_key(PREFIX, text) {
        check_net(n);
    }
    // The prefix itself may be anything.
    if let Some((prefix, key)) = text.split_once('\n') {
        let _ = subnet_from_key(prefix, key);
    }
});
