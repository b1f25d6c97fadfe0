//! `subnet.env` (default `/run/flannel/subnet.env`): what Docker (`--bip`, `--mtu`) and CNI
//! read. Format as flannel writes it:
//!
//! ```text
//! FLANNEL_NETWORK=10.1.0.0/16
//! FLANNEL_SUBNET=10.1.15.1/24
//! FLANNEL_MTU=1472
//! FLANNEL_IPMASQ=false
//! ```
//!
//! `FLANNEL_SUBNET` is the subnet's first address plus one, with the subnet's length. Writes
//! are atomic (temp file in the same directory, fsync, rename), so a reader never sees half a
//! file. The temp file gets a fresh unguessable name (pid, counter, random) and is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`: a file or symlink planted at a temp name is never
//! opened or written through. Reading is lenient: it is only used to prefer the previous subnet
//! on restart.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::Ipv4Net;

/// The contents of subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// A failed write, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct SubnetEnvError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl SubnetEnv {
    /// The file text, byte for byte as flannel writes it.
    pub fn render(&self) -> String {
        let gw = Ipv4Addr::from(self.subnet.addr_u32().wrapping_add(1));
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            gw,
            self.subnet.prefix(),
            self.mtu,
            self.ip_masq
        )
    }

    /// Writes atomically: a new temp file `<path>.tmp-<pid>-<n>-<random>` (see the module
    /// docs), then rename. Creates the directory.
    pub fn write_atomic(&self, path: &Path) -> Result<(), SubnetEnvError> {
        let err = |source| SubnetEnvError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // A name taken (by a leftover or by someone else) is never reused: try another.
        let mut attempt = 0;
        loop {
            match self.write_via(&temp_name(path), path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1
                }
                other => return other.map_err(err),
            }
        }
    }

    /// Creates `tmp` (it must not exist; a symlink there is not followed), writes, fsyncs and
    /// renames it to `path`. A temp file this call created is removed on failure.
    fn write_via(&self, tmp: &Path, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o644)
            .open(tmp)?;
        let result = (|| {
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        result
    }
}

/// A fresh temp name next to `path`: pid, a per-process counter and 64 random bits.
fn temp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // RandomState is seeded from the OS's randomness: enough to make the name unguessable.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{n}-{:016x}",
        std::process::id(),
        h.finish()
    ));
    PathBuf::from(tmp)
}

/// The subnet recorded in an existing subnet.env (`FLANNEL_SUBNET=10.1.15.1/24` → 10.1.15.0/24).
/// `None` when the file is absent or has no parsable FLANNEL_SUBNET.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Net> {
    parse_subnet(&std::fs::read_to_string(path).ok()?)
}

/// Extracts the subnet from subnet.env text.
pub fn parse_subnet(text: &str) -> Option<Ipv4Net> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let (a, p) = v.trim().trim_matches('"').split_once('/')?;
    Ipv4Net::containing(a.parse().ok()?, p.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubnetEnv {
        SubnetEnv {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.15.0/24".parse().unwrap(),
            mtu: 1472,
            ip_masq: false,
        }
    }

    #[test]
    fn renders_flannel_format() {
        assert_eq!(
            sample().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.15.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
        );
    }

    /// A symlink planted at a predictable temp name (`<path>.tmp-<pid>`) is never written
    /// through: its target stays untouched and subnet.env is right; and even a symlink at the
    /// exact temp name is never followed.
    #[test]
    fn a_symlink_planted_at_a_temp_name_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let old_tmp = dir
            .path()
            .join(format!("subnet.env.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_tmp).unwrap();
        sample().write_atomic(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sample().render());
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());

        // The exact temp name taken by a symlink (or a dangling one): refused, nothing written.
        let planted = dir.path().join("planted.tmp");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = sample().write_via(&planted, &path).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            std::fs::symlink_metadata(&planted).unwrap().is_symlink(),
            "left alone"
        );
        let names = [temp_name(&path), temp_name(&path)];
        assert_ne!(names[0], names[1]);
    }

    #[test]
    fn writes_atomically_and_reads_back() {
        use std::os::unix::fs::MetadataExt as _;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Barrier};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        let only_the_file = || {
            let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["subnet.env"], "no temp file left");
        };
        let (a, b) = (
            sample(),
            SubnetEnv {
                subnet: "10.1.16.0/24".parse().unwrap(),
                mtu: 8951,
                ip_masq: true,
                ..sample()
            },
        );
        // Written (directories created) and read back.
        a.write_atomic(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), a.render());
        assert_eq!(
            previous_subnet(&path),
            Some("10.1.15.0/24".parse().unwrap())
        );
        only_the_file();

        // A rewrite puts a new file in place (another inode renamed over the path); the old
        // one is never truncated and written in place...
        let inode = std::fs::metadata(&path).unwrap().ino();
        b.write_atomic(&path).unwrap();
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "subnet.env rewritten in place, not replaced"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), b.render());
        only_the_file();

        // ...so a reader racing with rewrites always finds the file, whole: one version or the
        // other, never missing, empty, cut short or mixed.
        let versions = [a.render(), b.render()];
        assert_ne!(versions[0].len(), versions[1].len());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Barrier::new(2));
        let reader = std::thread::spawn({
            let (path, stop, started) = (path.clone(), Arc::clone(&stop), Arc::clone(&started));
            move || {
                started.wait();
                let mut reads = 0u64;
                loop {
                    let text = std::fs::read_to_string(&path).unwrap();
                    assert!(versions.contains(&text), "a reader saw {text:?}");
                    reads += 1;
                    if stop.load(Ordering::Relaxed) {
                        return reads;
                    }
                }
            }
        });
        started.wait();
        for i in 0..200 {
            let env = if i % 2 == 0 { &a } else { &b };
            env.write_atomic(&path).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
        only_the_file();

        assert_eq!(previous_subnet(&dir.path().join("absent")), None);
        assert_eq!(parse_subnet("FLANNEL_SUBNET=garbage\n"), None);
    }
}
