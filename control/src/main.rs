//! `flanneld` entry point: flags, logging, signals. See `flannel_control::daemon`.
//!
//! Before anything else, as flannel: `-version` prints the version line to stderr and exits 0;
//! an unsupported flannel flag is refused with one line on stderr and exit status 1.

#![forbid(unsafe_code)]

use std::sync::Arc;

use flannel_control::cli::{Args, Command};
use flannel_control::{daemon, status::Status};
use flannel_shared::route_table::{format_table, RouteTableReader};
use tokio::signal::unix::{signal, SignalKind};

fn main() -> std::process::ExitCode {
    let args = Args::parse_from_env();
    if args.version {
        eprintln!("{}", Args::version_line());
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(why) = &args.refused {
        eprintln!("flanneld: {why}");
        return std::process::ExitCode::FAILURE;
    }
    init_logging(args.verbosity);
    for note in args.ignored() {
        tracing::debug!("{note}");
    }
    if let Some(v6) = args.public_ipv6 {
        tracing::info!(
            "-public-ipv6 {v6}: not recorded in the lease (PublicIPv6 stays null, as with flannel's udp backend)"
        );
    }
    let result = match &args.command {
        Some(Command::Routes { route_table }) => print_routes(route_table),
        None => run_daemon(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("flanneld: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},h2=info,tower=info,hyper=info"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn print_routes(path: &std::path::Path) -> anyhow::Result<()> {
    let mut reader = RouteTableReader::open(path)?;
    print!("{}", format_table(&reader.snapshot()?));
    Ok(())
}

fn run_daemon(args: Args) -> anyhow::Result<()> {
    let route_table = args.route_table.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let signalled = rt.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let status = Arc::new(Status::default());
        let run = daemon::run(args, status);
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => break r.map(|()| None),
                _ = term.recv() => { stopping("SIGTERM"); break Ok(Some("SIGTERM")) }
                _ = int.recv() => { stopping("SIGINT"); break Ok(Some("SIGINT")) }
                // flannel dies on SIGHUP (Go's default); flanneld has no file to reload (the
                // network config is watched in etcd), so a stray HUP changes nothing.
                _ = hup.recv() => tracing::info!(
                    "SIGHUP: ignored (no config file to reload; the network config is watched in etcd)"
                ),
            }
        }
    })?;
    if let Some(signal) = signalled {
        match forwarding_device(&route_table) {
            // flanneld restarting alone (an upgrade, `systemctl restart flanneld`): the data
            // plane forwards on with the last table and needs the rules; the next start keeps
            // them current.
            Some(dev) => tracing::info!(
                "{signal}: keeping the firewall rules: the data plane still forwards ({dev} holds this host's subnet address); they go with the last stop after the data plane's"
            ),
            None => remove_rules(signal),
        }
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// The interface that holds our subnet's network address (the data plane puts it on its TUN
/// device, `flannel0`): the data plane still forwards. `None` when there is none, or no table
/// or lease to tell our subnet.
fn forwarding_device(route_table: &std::path::Path) -> Option<String> {
    let snap = RouteTableReader::open(route_table).ok()?.snapshot().ok()?;
    let addr = snap.meta().our_subnet?.addr();
    nix::ifaddrs::getifaddrs().ok()?.find_map(|i| {
        let held = i.address.as_ref()?.as_sockaddr_in()?.ip();
        (held == addr).then_some(i.interface_name)
    })
}

/// A clean exit removes the firewall rules this process installed (the lease stays).
fn remove_rules(signal: &str) {
    let (removed, failed) = flannel_control::rules::remove_installed();
    if !removed.is_empty() {
        tracing::info!(?removed, "{signal}: removed the rules flanneld installed");
    }
    for e in failed {
        tracing::error!("{signal}: removing a rule failed: {e}");
    }
}

fn stopping(signal: &str) {
    tracing::info!("{signal}: stopping; the lease stays in etcd for the next start");
    flannel_control::notify::stopping(&format!("{signal}: stopping; the lease stays in etcd"));
}
