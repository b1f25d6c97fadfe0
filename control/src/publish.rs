//! The control plane's side of the shared-memory route table: it owns the single
//! [`RouteTableWriter`] and republishes the whole table whenever the lease set or our own subnet
//! changes. Nothing is published before both are known (our lease, first full listing), so a
//! restarting flanneld never hands the data plane an empty table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use flannel_shared::route_table::{Route, RouteTableWriter, TableMeta};
use flannel_shared::Ipv4Net;

#[derive(Debug)]
struct State {
    writer: RouteTableWriter,
    meta: TableMeta,
    leases: Option<Vec<Route>>,
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
        (
            st.writer.generation(),
            st.leases.as_ref().map_or(0, Vec::len),
        )
    }

    pub fn set_own_subnet(&self, subnet: Option<Ipv4Net>) {
        let mut st = self.state.lock().expect("publisher lock");
        if st.meta.our_subnet != subnet {
            st.meta.our_subnet = subnet;
            self.publish(&mut st);
        }
    }

    pub fn set_leases(&self, leases: &BTreeMap<Ipv4Net, Ipv4Addr>) {
        let routes = leases
            .iter()
            .map(|(subnet, ip)| Route {
                subnet: *subnet,
                public_ip: *ip,
            })
            .collect();
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
        let (meta, routes) = (st.meta.clone(), routes.clone());
        match st.writer.publish(&meta, &routes) {
            Ok(generation) => {
                self.published.store(true, Ordering::Release);
                tracing::info!(
                    generation, routes = routes.len(), path = %st.writer.path().display(),
                    "route table published"
                );
            }
            Err(e) => {
                tracing::error!(path = %st.writer.path().display(), "publishing the route table failed: {e}")
            }
        }
    }
}
