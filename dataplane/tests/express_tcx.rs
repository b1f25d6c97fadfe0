//! The express lane's attachment guarantee, checked against the kernel: a tcx link detaches
//! its program when the link's fd is closed, and when the process that owns it is killed with
//! SIGKILL — no program is left behind by a crashed data plane.
//!
//! Runs as root in a network namespace of its own (a veth pair inside it, nothing else).

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use flannel_dataplane::bpf_asm::{Asm, R0};
use flannel_dataplane::sys::bpf;
use flannel_dataplane::sys::tcx::{self, TcxDir, TcxLink};
use flannel_perf::testbed::netns::{unique_id, Netns};
use flannel_perf::testbed::{have, is_root, require, wait_for};

/// Set (to a device name) when this binary is started as the link-holding child.
const CHILD_ENV: &str = "FLANNEL_TCX_TEST_CHILD";

/// `r0 = TCX_NEXT; exit`: a program that lets everything through.
fn pass_program() -> OwnedFd {
    let mut a = Asm::new();
    a.mov64_imm(R0, -1);
    a.exit();
    bpf::load_sched_cls(a.finish().unwrap().insns()).expect("load a SCHED_CLS program")
}

/// The ifindex of `dev` in `ns` (`ip -o link show DEV` starts with "N: ").
fn ifindex_of(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", dev]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {text:?}"))
}

fn attached(ns: &Netns, ifindex: u32) -> usize {
    ns.run_in(move || tcx::query(ifindex, TcxDir::Ingress).unwrap().len())
}

/// Not a test of its own: with `CHILD_ENV` set, attaches to that device's ingress in the
/// current namespace and sleeps until killed. Without it, returns at once.
#[test]
fn child_holds_a_link() {
    let Ok(dev) = std::env::var(CHILD_ENV) else {
        return;
    };
    let index: u32 = std::fs::read_to_string(format!("/sys/class/net/{dev}/ifindex"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let prog = pass_program();
    let _link = TcxLink::attach(&prog, index, TcxDir::Ingress).unwrap();
    println!("attached");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_tcx_link_detaches_when_closed_and_when_its_owner_is_killed() {
    if !require("root", is_root()) || !require("`ip` (iproute2) installed", have("ip")) {
        return;
    }
    let ns = Netns::create(&format!("fl{}tcx", unique_id())).unwrap();
    ns.ip(&["link", "add", "t0", "type", "veth", "peer", "name", "t1"])
        .unwrap();
    let ifindex = ifindex_of(&ns, "t0");
    assert_eq!(attached(&ns, ifindex), 0);

    // In this process: attached while the link lives (the program fd alone does not keep
    // it), gone once the link is closed.
    let (with_link, after_close) = ns.run_in(move || {
        let prog = pass_program();
        let link = TcxLink::attach(&prog, ifindex, TcxDir::Ingress).unwrap();
        let with_link = tcx::query(ifindex, TcxDir::Ingress).unwrap().len();
        drop(link);
        let after_close = tcx::query(ifindex, TcxDir::Ingress).unwrap().len();
        drop(prog);
        (with_link, after_close)
    });
    assert_eq!((with_link, after_close), (1, 0));

    // Another process attaches and is killed with SIGKILL: its link goes with it.
    let exe = std::env::current_exe().unwrap();
    let mut child = ns
        .command(&exe)
        .args(["--exact", "child_holds_a_link", "--nocapture"])
        .env(CHILD_ENV, "t0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let up = wait_for(Duration::from_secs(20), || {
        (attached(&ns, ifindex) == 1).then_some(())
    });
    if up.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the child never attached");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let gone = wait_for(Duration::from_secs(5), || {
        (attached(&ns, ifindex) == 0).then_some(())
    });
    assert!(
        gone.is_some(),
        "a program stayed attached after kill -9 of its owner"
    );
}
