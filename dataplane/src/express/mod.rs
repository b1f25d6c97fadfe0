//! The express lane (issue 31): flannel's UDP encapsulation done in the kernel by TC-BPF
//! programs, fed from the same route table as the workers. Opt-in; the io_uring path stays
//! the default and takes every packet the lane refuses.
//!
//! This module holds the pure parts: the shared constants and map layouts ([`layout`]), the
//! program builders ([`egress`], [`ingress`]) and the mapping from a route-table snapshot to
//! the maps' contents ([`plan`]). Loading, maps and test runs are in [`crate::sys::bpf`],
//! attaching in [`crate::sys::tcx`]. The design (hooks, maps, ingress, attaching through tcx
//! links, what the kernel allows) is in `docs/express-lane-design.md`:
//!
//! - [`egress::egress_program`]: encapsulates a packet leaving through the TUN device (or,
//!   for tests, an Ethernet device) in flannel's format and hands it to the kernel's
//!   neighbour output on the underlay (`bpf_redirect_neigh`). Every packet it does not take
//!   is returned unchanged (`TCX_NEXT`), so on flannel0 it continues into the TUN device and
//!   the workers handle it as before; nothing leaves unencapsulated.
//! - [`ingress::ingress_program`]: the workers' receive checks on a datagram arriving on the
//!   underlay, with the same drop reasons, and delivery straight into a local container's
//!   interface (`bpf_redirect_peer`), or, for a destination with no known container
//!   interface, decapsulated to the host's stack; a GRO batch goes to the socket path unchanged.
//! - [`endpoints`]: which local containers the ingress program may deliver to, learned from
//!   the host's neighbour, bridge and link tables.
//!
//! Kernel: the helpers used need Linux 5.10 (`bpf_redirect_neigh`); attaching needs tcx links
//! (Linux 6.6). [`crate::express_lane`] loads, attaches and feeds the programs (`--express`).

#![forbid(unsafe_code)]

pub mod egress;
mod emit;
pub mod endpoints;
pub mod ingress;
pub mod layout;
pub mod path_mtu;
pub mod plan;

#[cfg(test)]
mod kernel_tests;

/// Compares a program listing with its golden file in `src/express/golden/` (the reviewable
/// form of a program: a change to a builder shows up as a diff of this text). With
/// `UPDATE_GOLDEN=1` the file is written instead.
#[cfg(test)]
fn check_golden(name: &str, listing: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/express/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, listing).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == listing,
        "{} differs from the program: review the change, then rerun with UPDATE_GOLDEN=1\n{listing}",
        path.display()
    );
}
