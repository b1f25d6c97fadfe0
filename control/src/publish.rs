//! The control plane's side of the shared-memory route table: it owns the single
//! [`RouteTableWriter`] and republishes the whole table whenever the lease set or our own subnet
//! changes. Nothing is published before both are known (our lease, first full listing), so a
//! restarting flanneld never hands the data plane an empty table.
//!
//! Leases are checked before they get here ([`crate::lease::set`]). Should the writer still refuse
//! a route, that route alone is left out ([`RouteTableWriter::publish_skipping`]): it is logged
//! when the set of refused routes changes and counted in /metrics, and the rest of the table is
//! published. Only an invalid table meta or an I/O error fails a publish.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use flannel_shared::route_table::{Route, RouteTableWriter, TableMeta};
use flannel_shared::Ipv4Net;

/// The writer and what it last published, behind the publisher's lock.
#[derive(Debug)]
struct State {
    writer: RouteTableWriter,
    meta: TableMeta,
    leases: Option<Vec<Route>>,
    /// Routes in the last published table.
    published_routes: usize,
    /// Routes the writer refused in the last publish (logged when this changes).
    refused: Vec<Route>,
}

/// Publishes leases into the route table. Shared by the watcher and the lease keeper.
#[derive(Debug)]
pub struct Publisher {
    state: Mutex<State>,
    published: AtomicBool,
}

impl Publisher {
    /// `meta.our_subnet` is filled in by [`Publisher::set_own_subnet`].
    pub fn new(writer: RouteTableWriter, meta: TableMeta) -> Self {
        Self {
            state: Mutex::new(State {
                writer,
                meta,
                leases: None,
                published_routes: 0,
                refused: Vec::new(),
            }),
            published: AtomicBool::new(false),
        }
    }

    /// True once a complete table (our subnet + a full listing) has been published.
    pub fn is_published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    /// (generation, number of routes) of the last publish.
    pub fn table_stats(&self) -> (u64, usize) {
        let st = self.state.lock().expect("publisher lock");
        (st.writer.generation(), st.published_routes)
    }

    /// Routes the writer refused (left out) in the last publish.
    pub fn refused_routes(&self) -> usize {
        self.state.lock().expect("publisher lock").refused.len()
    }

    pub fn set_own_subnet(&self, subnet: Option<Ipv4Net>) {
        let mut st = self.state.lock().expect("publisher lock");
        if st.meta.our_subnet != subnet {
            st.meta.our_subnet = subnet;
            self.publish(&mut st);
        }
    }

    /// The routes of `leases` (subnet → public IP), in subnet order.
    pub fn routes_of(leases: &BTreeMap<Ipv4Net, Ipv4Addr>) -> Vec<Route> {
        leases
            .iter()
            .map(|(subnet, ip)| Route {
                subnet: *subnet,
                public_ip: *ip,
            })
            .collect()
    }

    /// Publishes `routes` (built with [`Publisher::routes_of`]) as the cluster's leases.
    pub fn set_routes(&self, routes: Vec<Route>) {
        let mut st = self.state.lock().expect("publisher lock");
        st.leases = Some(routes);
        self.publish(&mut st);
    }

    fn publish(&self, st: &mut State) {
        if st.meta.our_subnet.is_none() {
            return;
        }
        let Some(routes) = st.leases.as_ref() else {
            return;
        };
        let meta = st.meta.clone();
        let result = st.writer.publish_skipping(&meta, routes);
        match result {
            Ok(p) => {
                self.published.store(true, Ordering::Release);
                st.published_routes = p.routes;
                let refused: Vec<Route> = p.refused.iter().map(|(r, _)| *r).collect();
                if refused != st.refused {
                    for (r, e) in &p.refused {
                        tracing::error!(
                            subnet = %r.subnet, public_ip = %r.public_ip,
                            "route left out of the table (the others are published): {e}"
                        );
                    }
                    st.refused = refused;
                }
                tracing::info!(
                    generation = p.generation, routes = p.routes, refused = p.refused.len(),
                    path = %st.writer.path().display(), "route table published"
                );
            }
            Err(e) => {
                tracing::error!(path = %st.writer.path().display(), "publishing the route table failed: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flannel_shared::route_table::RouteTableReader;

    /// Regression: a route the writer refuses (PublicIP 0.0.0.0) used to fail every publish, so
    /// no lease reached the data plane any more. Now it alone is left out.
    #[test]
    fn a_refused_route_is_left_out_and_the_rest_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("routes");
        let meta = TableMeta {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet_len: 24,
            our_subnet: None,
            mtu: 1472,
            port: 8285,
        };
        let p = Publisher::new(RouteTableWriter::open(&path).unwrap(), meta);
        p.set_own_subnet(Some("10.1.15.0/24".parse().unwrap()));
        let mut leases: BTreeMap<Ipv4Net, Ipv4Addr> =
            [("10.1.15.0/24", "198.18.0.1"), ("10.1.250.0/24", "0.0.0.0")]
                .iter()
                .map(|(s, ip)| (s.parse().unwrap(), ip.parse().unwrap()))
                .collect();
        p.set_routes(Publisher::routes_of(&leases));
        assert!(p.is_published());
        assert_eq!(p.table_stats(), (1, 1));
        assert_eq!(p.refused_routes(), 1);
        leases.insert(
            "10.1.16.0/24".parse().unwrap(),
            "198.18.0.4".parse().unwrap(),
        );
        p.set_routes(Publisher::routes_of(&leases));
        let snap = RouteTableReader::open(&path).unwrap().snapshot().unwrap();
        assert_eq!(snap.generation(), 2);
        assert_eq!(
            snap.lookup("10.1.16.9".parse().unwrap()),
            Some("198.18.0.4".parse().unwrap())
        );
        assert_eq!(snap.lookup("10.1.250.9".parse().unwrap()), None);
        assert_eq!(p.table_stats(), (2, 2));
    }
}
