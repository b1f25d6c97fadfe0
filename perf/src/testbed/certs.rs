//! Test certificates made with the `openssl` CLI: a CA, a server certificate for an IP address
//! (SAN `IP:<addr>`, e.g. 127.0.0.1) and a client certificate, all P-256, valid for one day.
//! Nothing here is meant for production; it exists so tests can run etcd with TLS and
//! client-certificate authentication.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

/// PEM files in one directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// True when the `openssl` program is installed.
pub fn available() -> bool {
    super::have("openssl")
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    super::process::output_ok(
        Command::new("openssl").args(args).current_dir(dir),
        "running openssl (apt-get install openssl)",
        &format!("openssl {}", args.join(" ")),
    )?;
    Ok(())
}

/// Makes a CA and a certificate signed by it: `name.pem` / `name.key` with the given
/// extensions (one per line, openssl x509 `-extfile` syntax).
fn issue(dir: &Path, name: &str, cn: &str, extensions: &str) -> Result<()> {
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), extensions)?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ],
    )
}

/// Generates the CA, a server certificate for `server_ip` and a client certificate into `dir`.
pub fn generate(dir: &Path, server_ip: Ipv4Addr) -> Result<TlsFiles> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-sha256",
            "-subj",
            "/CN=flannel-rs test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    issue(
        dir,
        "server",
        "etcd-server",
        &format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:{server_ip}\n"
        ),
    )?;
    issue(
        dir,
        "client",
        "flanneld",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )?;
    Ok(TlsFiles {
        ca: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    })
}
