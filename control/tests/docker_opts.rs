//! `scripts/mk-docker-opts.sh`, flannel's mk-docker-opts.sh for flannel-rs: the same flags
//! (-f -d -k -i -c -m) and byte for byte the same output text, checked here for every flag
//! combination with flanneld's ip-masq on and off; plus the error cases (stderr, non-zero exit,
//! output file untouched). No root, no network: temp files only.

use std::path::{Path, PathBuf};
use std::process::Command;

use flannel_perf::testbed::{have, skip_or_fail};
use flannel_shared::subnet_env::SubnetEnv;
use flannel_shared::Ipv4Net;

/// subnet.env as flanneld writes it, with -ip-masq.
const MASQ: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n";
/// subnet.env as flanneld writes it, without -ip-masq.
const NO_MASQ: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mk-docker-opts.sh")
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The output file after the run (None: absent).
    written: Option<String>,
}

impl Outcome {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "script failed; stderr:\n{}",
            self.stderr
        );
        assert_eq!(self.stdout, "", "nothing on stdout");
        assert_eq!(self.stderr, "", "nothing on stderr");
        self.written.as_deref().expect("output file written")
    }

    /// A failure: non-zero exit, a message on stderr containing `needle`, nothing on stdout.
    #[track_caller]
    fn failed(&self, needle: &str) {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a non-zero exit, got {:?}; stderr:\n{}",
            self.code,
            self.stderr
        );
        assert_eq!(self.stdout, "", "errors go to stderr, not stdout");
        assert!(
            self.stderr.contains(needle),
            "stderr should contain {needle:?}:\n{}",
            self.stderr
        );
    }
}

/// Runs the script in `dir` (its working directory) with `args` as given, a clean environment
/// (PATH plus `env`), via `shell` or directly when `shell` is None; `out` is the output file read
/// back afterwards.
fn run_with(
    shell: Option<&str>,
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    out: &Path,
) -> Outcome {
    let mut cmd = match shell {
        Some(sh) => {
            let mut c = Command::new(sh);
            c.arg(script());
            c
        }
        None => Command::new(script()),
    };
    cmd.args(args).current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied());
    let o = cmd.output().expect("run scripts/mk-docker-opts.sh");
    Outcome {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        written: std::fs::read_to_string(out).ok(),
    }
}

/// Writes `subnet` to a temp subnet.env and runs `-f <it> -d <temp>/docker_opts.env <args>`.
fn run_env(subnet: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("subnet.env");
    let out = dir.path().join("docker_opts.env");
    std::fs::write(&input, subnet).unwrap();
    let mut all = vec!["-f", input.to_str().unwrap(), "-d", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let outcome = run_with(None, dir.path(), &all, env, &out);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "subnet.env" && n != "docker_opts.env")
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
    outcome
}

fn run(subnet: &str, args: &[&str]) -> Outcome {
    run_env(subnet, args, &[])
}

#[test]
fn every_flag_combination_writes_flannels_text() {
    #[rustfmt::skip]
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                     DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
                     DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                     DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"),
        (&[], NO_MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                        DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                        DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                        DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"),
        (&["-i"], MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                         DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
                         DOCKER_OPT_MTU=\"--mtu=1472\"\n"),
        (&["-i"], NO_MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                            DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                            DOCKER_OPT_MTU=\"--mtu=1472\"\n"),
        (&["-c"], MASQ, "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"),
        (&["-c"], NO_MASQ, "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"),
        (&["-m"], MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                         DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
        (&["-m"], NO_MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                            DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                            DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
        (&["-k", "DOCKER_NETWORK_OPTIONS"], MASQ,
            "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
             DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
             DOCKER_OPT_MTU=\"--mtu=1472\"\n\
             DOCKER_NETWORK_OPTIONS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"),
        (&["-k", "DOCKER_NETWORK_OPTIONS"], NO_MASQ,
            "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
             DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
             DOCKER_OPT_MTU=\"--mtu=1472\"\n\
             DOCKER_NETWORK_OPTIONS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"),
        (&["-i", "-m"], MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                               DOCKER_OPT_MTU=\"--mtu=1472\"\n"),
        (&["-i", "-m"], NO_MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                                  DOCKER_OPT_MTU=\"--mtu=1472\"\n"),
        (&["-c", "-m"], MASQ, "DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
        (&["-c", "-m"], NO_MASQ, "DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
        (&["-k", "DOCKER_NETWORK_OPTIONS", "-c"], MASQ,
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"),
        (&["-k", "DOCKER_NETWORK_OPTIONS", "-c"], NO_MASQ,
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"),
        (&["-c", "-k", "OPTS", "-m"], MASQ, "OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
        // flannel: -i with -c writes both forms, as no flag does.
        (&["-i", "-c"], MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                               DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
                               DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                               DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"),
        (&["-i", "-c"], NO_MASQ, "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                                  DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n\
                                  DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                                  DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"),
        // Grouped single-letter flags, as getopts allows.
        (&["-cm"], MASQ, "DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"),
    ];
    for (args, subnet, expected) in cases {
        let masq = if *subnet == MASQ { "true" } else { "false" };
        let got = run(subnet, args);
        assert_eq!(
            got.ok(),
            *expected,
            "mk-docker-opts.sh {} with FLANNEL_IPMASQ={masq}",
            args.join(" ")
        );
    }
}

#[test]
fn reads_subnet_env_as_our_flanneld_writes_it() {
    let env = SubnetEnv {
        network: "10.5.0.0/16".parse::<Ipv4Net>().unwrap(),
        subnet: "10.5.200.0/24".parse::<Ipv4Net>().unwrap(),
        mtu: 8972,
        ip_masq: true,
    };
    assert_eq!(
        run(&env.render(), &[]).ok(),
        "DOCKER_OPT_BIP=\"--bip=10.5.200.1/24\"\n\
         DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
         DOCKER_OPT_MTU=\"--mtu=8972\"\n\
         DOCKER_OPTS=\" --bip=10.5.200.1/24 --ip-masq=false --mtu=8972\"\n"
    );
}

#[test]
fn options_missing_from_the_subnet_file_are_left_out() {
    // No FLANNEL_IPMASQ (flannel before -ip-masq existed): no --ip-masq either way.
    let no_ipmasq = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1472\n";
    assert_eq!(
        run(no_ipmasq, &[]).ok(),
        "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
         DOCKER_OPT_MTU=\"--mtu=1472\"\n\
         DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"
    );
    let bip_only = "FLANNEL_SUBNET=10.1.15.1/24\n";
    assert_eq!(
        run(bip_only, &[]).ok(),
        "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\nDOCKER_OPTS=\" --bip=10.1.15.1/24\"\n"
    );
    assert_eq!(
        run(bip_only, &["-c"]).ok(),
        "DOCKER_OPTS=\" --bip=10.1.15.1/24\"\n"
    );
}

#[test]
fn only_the_subnet_file_counts_not_flannel_values_in_the_environment() {
    let bip_only = "FLANNEL_SUBNET=10.1.15.1/24\n";
    let got = run_env(
        bip_only,
        &["-c"],
        &[
            ("FLANNEL_MTU", "9000"),
            ("FLANNEL_IPMASQ", "true"),
            ("FLANNEL_SUBNET", "10.9.9.1/24"),
        ],
    );
    assert_eq!(got.ok(), "DOCKER_OPTS=\" --bip=10.1.15.1/24\"\n");
}

#[test]
fn combined_variable_starts_with_its_current_value() {
    // As flannel: options already in the variable (e.g. from /etc/default/docker) come first,
    // then one space, then " <option>" per flannel option.
    let got = run_env(MASQ, &["-c"], &[("DOCKER_OPTS", "--dns=10.0.0.2")]);
    assert_eq!(
        got.ok(),
        "DOCKER_OPTS=\"--dns=10.0.0.2  --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"
    );
    // With -k the variable of that name is the one read.
    let got = run_env(
        NO_MASQ,
        &["-k", "NET_OPTS", "-c"],
        &[
            ("NET_OPTS", "--iptables=true"),
            ("DOCKER_OPTS", "--ignored"),
        ],
    );
    assert_eq!(
        got.ok(),
        "NET_OPTS=\"--iptables=true  --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    // Also when the subnet file sets it (it is sourced, as by flannel).
    let with_opts = format!("{MASQ}DOCKER_OPTS=\"--log-level=warn\"\n");
    assert_eq!(
        run(&with_opts, &["-c", "-m"]).ok(),
        "DOCKER_OPTS=\"--log-level=warn  --bip=10.1.15.1/24 --mtu=1472\"\n"
    );
    // -i does not read or write it.
    let got = run_env(MASQ, &["-i", "-m"], &[("DOCKER_OPTS", "--dns=10.0.0.2")]);
    assert_eq!(
        got.ok(),
        "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
    );
}

#[test]
fn quoted_values_and_a_relative_subnet_file_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("subnet.env"),
        "FLANNEL_NETWORK='10.1.0.0/16'\nFLANNEL_SUBNET=\"10.1.15.1/24\"\n# comment\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    // A bare name must be the file in the working directory ('.' alone would search PATH).
    let out = dir.path().join("opts.env");
    let got = run_with(
        None,
        dir.path(),
        &["-f", "subnet.env", "-d", "opts.env", "-c"],
        &[],
        &out,
    );
    assert_eq!(
        got.ok(),
        "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=true --mtu=1472\"\n"
    );
}

#[test]
fn replaces_the_whole_output_file_and_writes_through_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("subnet.env");
    std::fs::write(&input, MASQ).unwrap();
    let out = dir.path().join("docker_opts.env");
    std::fs::write(
        &out,
        "DOCKER_OPTS=\"stale\"\nDOCKER_OPT_OLD=\"x\"\n".repeat(10),
    )
    .unwrap();
    let args = [
        "-f",
        input.to_str().unwrap(),
        "-d",
        out.to_str().unwrap(),
        "-c",
    ];
    let got = run_with(None, dir.path(), &args, &[], &out);
    assert_eq!(
        got.ok(),
        "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"
    );
    // Twice gives the same file (nothing appended).
    let got = run_with(None, dir.path(), &args, &[], &out);
    assert_eq!(
        got.ok(),
        "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"
    );

    // A symlink stays a symlink; its target gets the text.
    let target = dir.path().join("real.env");
    let link = dir.path().join("link.env");
    std::fs::write(&target, "old\n").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let got = run_with(
        None,
        dir.path(),
        &[
            "-f",
            input.to_str().unwrap(),
            "-d",
            link.to_str().unwrap(),
            "-i",
            "-m",
        ],
        &[],
        &target,
    );
    assert_eq!(
        got.ok(),
        "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn can_write_to_stdout() {
    // `-d /dev/stdout` must print, not replace /dev/stdout with a file. Tested through a symlink
    // of our own to the same place, so that a broken script could not damage /dev.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("subnet.env");
    std::fs::write(&input, MASQ).unwrap();
    let stdout = dir.path().join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &stdout).unwrap();
    let got = run_with(
        None,
        dir.path(),
        &[
            "-f",
            input.to_str().unwrap(),
            "-d",
            stdout.to_str().unwrap(),
            "-c",
        ],
        &[],
        &dir.path().join("none"),
    );
    assert_eq!(got.code, Some(0), "stderr:\n{}", got.stderr);
    assert_eq!(
        got.stdout,
        "DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n"
    );
    let meta = std::fs::symlink_metadata(&stdout).unwrap();
    assert!(meta.file_type().is_symlink(), "the symlink is left alone");
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_exit_and_leave_the_output_alone() {
    let no_subnet = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1472\n";
    let bad_masq = "FLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=yes\n";
    // (subnet file contents or None for no file, extra args, expected part of the message)
    #[rustfmt::skip]
    let cases: &[(Option<&str>, &[&str], &str)] = &[
        (None, &[], "subnet.env not found"),
        (Some(MASQ), &["-x"], "unknown option -x"),
        (Some(MASQ), &["-i", "--bip"], "unknown option --"),
        (Some(MASQ), &["-k"], "option -k needs an argument"),
        (Some(MASQ), &["-k", "1BAD"], "not a valid shell variable name"),
        (Some(MASQ), &["-k", "DOCKER OPTS"], "not a valid shell variable name"),
        (Some(MASQ), &["-k", "X;touch /tmp/pwned"], "not a valid shell variable name"),
        (Some(MASQ), &["-k", ""], "not a valid shell variable name"),
        (Some(MASQ), &["-c", "extra"], "unexpected argument 'extra'"),
        (Some(no_subnet), &[], "sets no FLANNEL_SUBNET"),
        (Some(bad_masq), &[], "invalid FLANNEL_IPMASQ 'yes'"),
    ];
    for (subnet, args, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("subnet.env");
        if let Some(s) = subnet {
            std::fs::write(&input, s).unwrap();
        }
        let out = dir.path().join("docker_opts.env");
        std::fs::write(&out, "previous\n").unwrap();
        let mut all = vec!["-f", input.to_str().unwrap(), "-d", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let got = run_with(None, dir.path(), &all, &[], &out);
        got.failed(needle);
        assert_eq!(
            got.written.as_deref(),
            Some("previous\n"),
            "output untouched after {args:?}"
        );
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            n,
            1 + usize::from(subnet.is_some()),
            "no files left by {args:?}"
        );
    }
    // -m skips the FLANNEL_IPMASQ check, as in flannel.
    assert_eq!(
        run(bad_masq, &["-c", "-m"]).ok(),
        "DOCKER_OPTS=\" --bip=10.1.15.1/24 --mtu=1472\"\n"
    );

    // A directory that does not exist, and a directory as the output.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("subnet.env");
    std::fs::write(&input, MASQ).unwrap();
    let missing = dir.path().join("nope/docker_opts.env");
    let got = run_with(
        None,
        dir.path(),
        &[
            "-f",
            input.to_str().unwrap(),
            "-d",
            missing.to_str().unwrap(),
        ],
        &[],
        &missing,
    );
    got.failed("does not exist");
    assert!(got.written.is_none());
    let got = run_with(
        None,
        dir.path(),
        &[
            "-f",
            input.to_str().unwrap(),
            "-d",
            dir.path().to_str().unwrap(),
        ],
        &[],
        &missing,
    );
    got.failed("is a directory");
    // The subnet file given as a directory.
    let got = run_with(
        None,
        dir.path(),
        &["-f", dir.path().to_str().unwrap(), "-d", "out.env"],
        &[],
        &dir.path().join("out.env"),
    );
    got.failed("not a readable file");
    assert!(got.written.is_none());
}

#[test]
fn default_subnet_file_is_flannels() {
    // Without -f the script reads /run/flannel/subnet.env; only checkable when it is absent
    // (the test never writes to /run).
    let default = Path::new("/run/flannel/subnet.env");
    if default.exists() {
        skip_or_fail(&format!(
            "{} exists on this machine, so the default cannot be told from it",
            default.display()
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.env");
    let got = run_with(None, dir.path(), &["-d", "o.env"], &[], &out);
    got.failed("/run/flannel/subnet.env not found");
    assert!(got.written.is_none());
}

#[test]
fn help_prints_the_usage_on_stderr_like_flannel() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["-h", "-?"] {
        let got = run_with(None, dir.path(), &[flag], &[], &dir.path().join("x"));
        // flannel's script exits 1 after the usage; so does ours.
        got.failed("usage: mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]");
        for part in [
            "/run/flannel/subnet.env",
            "/run/docker_opts.env",
            "DOCKER_OPTS",
            "-i ",
            "-c ",
            "-m ",
            "-k NAME",
        ] {
            assert!(
                got.stderr.contains(part),
                "usage lacks {part:?}:\n{}",
                got.stderr
            );
        }
        assert!(
            !got.stderr.contains("unknown option"),
            "{flag} is not an error:\n{}",
            got.stderr
        );
    }
    // An unknown flag shows the usage too.
    let got = run_with(None, dir.path(), &["-z"], &[], &dir.path().join("x"));
    got.failed("usage:");
}

#[test]
fn script_is_an_executable_posix_sh_script_and_shells_agree() {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(script()).unwrap().permissions().mode();
    assert!(
        mode & 0o111 == 0o111,
        "{} must be executable (mode {mode:o}); units run it directly",
        script().display()
    );
    let text = std::fs::read_to_string(script()).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"), "POSIX sh script");

    let expected = "DOCKER_OPT_BIP=\"--bip=10.1.15.1/24\"\n\
                    DOCKER_OPT_IPMASQ=\"--ip-masq=false\"\n\
                    DOCKER_OPT_MTU=\"--mtu=1472\"\n\
                    DOCKER_OPTS=\" --bip=10.1.15.1/24 --ip-masq=false --mtu=1472\"\n";
    for shell in ["sh", "dash", "bash"] {
        if !have(shell) {
            skip_or_fail(&format!(
                "{shell} not installed: the script is not run under it"
            ));
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("subnet.env");
        let out = dir.path().join("o.env");
        std::fs::write(&input, MASQ).unwrap();
        let args = ["-f", input.to_str().unwrap(), "-d", out.to_str().unwrap()];
        let got = run_with(Some(shell), dir.path(), &args, &[], &out);
        assert_eq!(got.ok(), expected, "under {shell}");
    }
}
