//! Watches `<prefix>/config` after start. flanneld runs with the config it started with (the
//! lease, subnet.env and every host's routes depend on it); a config changed, broken or deleted
//! in etcd afterwards is never kept silently: it is logged loudly and `/readyz` answers 503 with
//! the reason ([`Status`] problem `config`) until etcd holds the running config again or
//! flanneld is restarted to apply the new one.
//!
//! One etcd watch on one key: idle, it costs etcd nothing. A broken watch (etcd restart,
//! compaction) starts over with a read.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use flannel_shared::config::NetworkConfig;
use flannel_shared::lease::config_key;

use crate::status::Status;

/// The [`Status`] problem this module sets.
pub const PROBLEM: &str = "config";

/// Why etcd's config `now` (`None`: the key is gone) is not the `running` one, naming each
/// field that differs; `None` when they are the same config.
pub fn difference(running: &NetworkConfig, key: &str, now: Option<&[u8]>) -> Option<String> {
    let keep = format!(
        "flanneld keeps running with Network {}; restart it to apply a new config",
        running.network
    );
    let Some(bytes) = now else {
        return Some(format!("{key} was deleted from etcd; {keep}"));
    };
    let c = match NetworkConfig::parse(&String::from_utf8_lossy(bytes)) {
        Ok(c) => c,
        Err(e) => return Some(format!("{key} is invalid now ({e}); {keep}")),
    };
    let mut changed = Vec::new();
    let mut field = |name: &str, was: String, is: String| {
        if was != is {
            changed.push(format!("{name} {was} → {is}"));
        }
    };
    field(
        "Network",
        running.network.to_string(),
        c.network.to_string(),
    );
    field(
        "SubnetLen",
        running.subnet_len.to_string(),
        c.subnet_len.to_string(),
    );
    field(
        "SubnetMin",
        running.subnet_min.to_string(),
        c.subnet_min.to_string(),
    );
    field(
        "SubnetMax",
        running.subnet_max.to_string(),
        c.subnet_max.to_string(),
    );
    field(
        "Backend.Port",
        running.backend.port.to_string(),
        c.backend.port.to_string(),
    );
    field(
        "EnableNFTables",
        running.enable_nftables.to_string(),
        c.enable_nftables.to_string(),
    );
    (!changed.is_empty()).then(|| {
        format!(
            "the network config in etcd changed ({}); {keep}",
            changed.join(", ")
        )
    })
}

/// Runs until dropped: keeps the `config` problem of `status` in step with etcd.
pub async fn run(mut client: Client, prefix: String, running: NetworkConfig, status: Arc<Status>) {
    let key = config_key(&prefix);
    let check = |now: Option<&[u8]>| match difference(&running, &key, now) {
        Some(why) => {
            if status.set_problem(PROBLEM, why.clone()) {
                tracing::error!("NETWORK CONFIG CHANGED: {why}");
            }
        }
        None => {
            if status.clear_problem(PROBLEM) {
                tracing::info!(key, "the network config in etcd is the running one again");
            }
        }
    };
    loop {
        let rev = match client.get(key.as_str(), None).await {
            Ok(resp) => {
                check(resp.kvs().first().map(|kv| kv.value()));
                resp.header().map(|h| h.revision()).unwrap_or(0)
            }
            Err(e) => {
                tracing::debug!("reading {key} failed: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let opts = WatchOptions::new().with_start_revision(rev + 1);
        if let Ok(mut stream) = client.watch(key.as_str(), Some(opts)).await {
            while let Ok(Some(resp)) = stream.message().await {
                if resp.canceled() || resp.compact_revision() > 0 {
                    break;
                }
                for ev in resp.events() {
                    match ev.event_type() {
                        EventType::Put => check(ev.kv().map(|kv| kv.value())),
                        EventType::Delete => check(None),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_changed_or_nothing() {
        let running = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        let key = "/coreos.com/network/config";
        let same = br#"{"network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#;
        assert_eq!(difference(&running, key, Some(same)), None);
        assert_eq!(
            difference(&running, key, Some(br#"{"Network":"10.2.0.0/16","SubnetLen":20}"#))
                .unwrap(),
            "the network config in etcd changed (Network 10.1.0.0/16 → 10.2.0.0/16, SubnetLen 24 → 20, \
             SubnetMin 10.1.1.0 → 10.2.16.0, SubnetMax 10.1.255.0 → 10.2.240.0); flanneld keeps \
             running with Network 10.1.0.0/16; restart it to apply a new config"
        );
        assert!(difference(&running, key, Some(b"{"))
            .unwrap()
            .starts_with("/coreos.com/network/config is invalid now (config is not valid JSON"));
        assert!(difference(&running, key, None)
            .unwrap()
            .starts_with("/coreos.com/network/config was deleted from etcd;"));
    }
}
