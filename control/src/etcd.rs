//! Connecting to etcd (v3 API) with flannel's options: endpoints, TLS client certificates,
//! username/password. Connection failures are retried with capped exponential backoff and a log
//! line per attempt; flanneld never crash-loops because etcd is not up yet.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Problems with the options themselves (not with reaching etcd).
#[derive(Debug, thiserror::Error)]
pub enum EtcdOptionsError {
    #[error("-etcd-endpoints is empty")]
    NoEndpoints,
    #[error("reading {flag} {path}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("-etcd-certfile and -etcd-keyfile must be given together")]
    HalfIdentity,
    #[error("-etcd-username and -etcd-password must be given together")]
    HalfAuth,
}

impl EtcdOptions {
    fn read(flag: &'static str, path: &PathBuf) -> Result<Vec<u8>, EtcdOptionsError> {
        std::fs::read(path).map_err(|source| EtcdOptionsError::Read {
            flag,
            path: path.clone(),
            source,
        })
    }

    /// Validates the options and builds the client's connect options.
    pub fn connect_options(&self) -> Result<ConnectOptions, EtcdOptionsError> {
        if self.endpoints.is_empty() {
            return Err(EtcdOptionsError::NoEndpoints);
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let tls_wanted = self.cafile.is_some()
            || self.certfile.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"));
        if tls_wanted {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cafile {
                tls = tls.ca_certificate(Certificate::from_pem(Self::read("-etcd-cafile", ca)?));
            }
            match (&self.certfile, &self.keyfile) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        Self::read("-etcd-certfile", c)?,
                        Self::read("-etcd-keyfile", k)?,
                    ));
                }
                (None, None) => {}
                _ => return Err(EtcdOptionsError::HalfIdentity),
            }
            opts = opts.with_tls(tls);
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => opts = opts.with_user(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err(EtcdOptionsError::HalfAuth),
        }
        Ok(opts)
    }
}

/// Connects, retrying forever with backoff (1 s doubling to 10 s) until etcd answers a request.
/// Option errors are returned at once: retrying cannot fix them.
pub async fn connect_with_retry(opts: &EtcdOptions) -> Result<Client, EtcdOptionsError> {
    let connect_opts = opts.connect_options()?;
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1u32;
    loop {
        match try_connect(&opts.endpoints, connect_opts.clone()).await {
            Ok(c) => {
                if attempt > 1 {
                    tracing::info!(endpoints = ?opts.endpoints, attempt, "connected to etcd");
                }
                return Ok(c);
            }
            Err(e) => {
                tracing::warn!(
                    endpoints = ?opts.endpoints, attempt, retry_in = ?delay,
                    "etcd unreachable: {e}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
        }
    }
}

async fn try_connect(endpoints: &[String], opts: ConnectOptions) -> Result<Client, String> {
    let mut c = tokio::time::timeout(
        Duration::from_secs(5),
        Client::connect(endpoints, Some(opts)),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    // A request proves the endpoint is really serving (connect alone can be lazy).
    tokio::time::timeout(Duration::from_secs(5), c.status())
        .await
        .map_err(|_| "status request timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(c)
}
