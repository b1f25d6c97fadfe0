//! The route table as text for people.

use std::fmt::Write as _;

use super::RouteSnapshot;

/// The route table for people (`flanneld routes` and `flannelctl routes`): header lines, then one
/// aligned `SUBNET  PUBLIC_IP` line per route.
pub fn format_table(snap: &RouteSnapshot) -> String {
    let meta = snap.meta();
    let mut out = String::new();
    let our = meta
        .our_subnet
        .map_or_else(|| "none".to_owned(), |n| n.to_string());
    // Writing to a String cannot fail.
    let _ = writeln!(out, "generation: {}", snap.generation());
    let _ = writeln!(out, "network:    {}", meta.network);
    let _ = writeln!(out, "subnet len: {}", meta.subnet_len);
    let _ = writeln!(out, "our subnet: {our}");
    let _ = writeln!(out, "mtu:        {}", meta.mtu);
    let _ = writeln!(out, "port:       {}", meta.port);
    let _ = writeln!(out, "routes:     {}", snap.len());
    let width = snap
        .routes()
        .map(|r| r.subnet.to_string().len())
        .max()
        .unwrap_or(0)
        .max("SUBNET".len());
    let _ = writeln!(out, "{:<width$}  PUBLIC_IP", "SUBNET");
    for r in snap.routes() {
        let _ = writeln!(out, "{:<width$}  {}", r.subnet.to_string(), r.public_ip);
    }
    out
}
