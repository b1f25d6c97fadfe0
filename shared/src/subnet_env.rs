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
//! file. Reading is lenient: it is only used to prefer the previous subnet on restart.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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

    /// Writes atomically: `<path>.tmp-<pid>` then rename. Creates the directory.
    pub fn write_atomic(&self, path: &Path) -> Result<(), SubnetEnvError> {
        let err = |source| SubnetEnvError {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(self.render().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(err)
    }
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

    #[test]
    fn writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        sample().write_atomic(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), sample().render());
        assert_eq!(
            previous_subnet(&path),
            Some("10.1.15.0/24".parse().unwrap())
        );
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert_eq!(previous_subnet(&dir.path().join("absent")), None);
        assert_eq!(parse_subnet("FLANNEL_SUBNET=garbage\n"), None);
    }
}
