//! Connecting to etcd (v3 API) with flannel's options: endpoints, TLS client certificates,
//! username/password. Connection failures are retried with capped exponential backoff and a log
//! line per attempt; flanneld never crash-loops because etcd is not up yet.
//!
//! TLS (rustls with ring, through etcd-client's `tls` feature) is used when the endpoints are
//! `https://` (or have no scheme and TLS files are given); like flannel's Go client, TLS files
//! are ignored (with a warning) for `http://` endpoints. Mixing both schemes is refused.
//! Every failed attempt is logged with the whole error chain and, where the cause is
//! recognisable, what to check: a rejected password names `-etcd-username/-etcd-password`, a
//! rejected or missing client certificate names `-etcd-certfile/-etcd-keyfile`, an untrusted
//! server certificate names `-etcd-cafile`.
//!
//! Passwords: `-etcd-password` or `-etcd-password-file` (the file's first line; one
//! of the two). A password is never in a Debug print ([`Secret`]). Sent over `http://` to a
//! host other than loopback it would cross the network in clear text (etcd's Authenticate RPC
//! carries it as is), so that is refused unless `-etcd-allow-insecure-password` is given
//! (refusing rather than warning: a warning in a log nobody reads does not keep the password
//! off the wire; the flag keeps an existing plain-text setup one explicit word away). Over
//! `http://` to loopback it never leaves the host: allowed, with a warning.
//!
//! Several endpoints: the client library balances requests over them but keeps routing to a
//! member that died (each such request fails at once). So with more than one endpoint a task
//! probes every endpoint on its own (a `Status` request each second, 2 s timeout) and takes dead
//! ones out of the client's balancer, putting them back when they answer again; the last
//! endpoint is never taken out. A request already on its way to a member that dies still fails;
//! the callers retry (the watch resumes from its revision, renewal retries), and the retry goes
//! to a live member. flanneld keeps working as long as the cluster has a quorum.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

/// A password: its Debug print is `<redacted>`, so no `{:?}` of a config or of the flags can
/// show it; [`Secret::expose`] is the one way to the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The password itself (for the etcd client only).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `-etcd-password-file`: the password is this file's first line (read at each connect).
    pub password_file: Option<PathBuf>,
    /// `-etcd-allow-insecure-password`: send the password over `http://` to other hosts too.
    pub allow_insecure_password: bool,
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
    #[error("-etcd-username and -etcd-password (or -etcd-password-file) must be given together")]
    HalfAuth,
    #[error("-etcd-password and -etcd-password-file are mutually exclusive; give one")]
    TwoPasswords,
    #[error("-etcd-password-file {0}: the file is empty")]
    EmptyPasswordFile(PathBuf),
    #[error(
        "-etcd-endpoints {0}: a password would cross the network in clear text over http://; \
         use https:// endpoints, or pass -etcd-allow-insecure-password to accept that"
    )]
    InsecurePassword(String),
    #[error("-etcd-endpoints mixes http:// and https:// endpoints ({0}); use one scheme")]
    MixedSchemes(String),
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
        self.build_options(true)
    }

    /// The endpoints as full URLs, as the client library keys them (a schemeless endpoint gets
    /// `https://` when TLS is on, else `http://`).
    pub fn endpoint_urls(&self) -> Vec<String> {
        let tls = self.uses_tls();
        self.endpoints
            .iter()
            .map(|e| {
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.clone()
                } else if tls {
                    format!("https://{e}")
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }

    fn uses_tls(&self) -> bool {
        let tls_files = self.cafile.is_some() || self.certfile.is_some() || self.keyfile.is_some();
        self.endpoints.iter().any(|e| e.starts_with("https://"))
            || (tls_files && !self.endpoints.iter().any(|e| e.starts_with("http://")))
    }

    fn build_options(&self, with_user: bool) -> Result<ConnectOptions, EtcdOptionsError> {
        if self.endpoints.is_empty() {
            return Err(EtcdOptionsError::NoEndpoints);
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let plain = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("http://"))
            .count();
        let secure = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if plain > 0 && secure > 0 {
            return Err(EtcdOptionsError::MixedSchemes(self.endpoints.join(",")));
        }
        let tls_files = self.cafile.is_some() || self.certfile.is_some() || self.keyfile.is_some();
        // Schemeless endpoints follow the TLS files; http:// never carries TLS (as in flannel).
        let tls_wanted = secure > 0 || (plain == 0 && tls_files);
        if tls_files && !tls_wanted {
            tracing::warn!(
                endpoints = ?self.endpoints,
                "-etcd-cafile/-certfile/-keyfile are ignored for http:// endpoints; use https:// for TLS"
            );
        }
        if tls_wanted || tls_files {
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
            if tls_wanted {
                opts = opts.with_tls(tls);
            }
        }
        if let Some((user, password)) = self.credentials(with_user)? {
            opts = opts.with_user(user, password.expose());
        }
        Ok(opts)
    }

    /// The user name and password, when given and `with_user`; checks them (both or neither,
    /// one password source, no clear text to other hosts) either way.
    fn credentials(&self, with_user: bool) -> Result<Option<(String, Secret)>, EtcdOptionsError> {
        let has_password = self.password.is_some() || self.password_file.is_some();
        if self.password.is_some() && self.password_file.is_some() {
            return Err(EtcdOptionsError::TwoPasswords);
        }
        let Some(user) = &self.username else {
            return match has_password {
                true => Err(EtcdOptionsError::HalfAuth),
                false => Ok(None),
            };
        };
        if !has_password {
            return Err(EtcdOptionsError::HalfAuth);
        }
        self.check_password_transport(with_user)?;
        if !with_user {
            return Ok(None);
        }
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(path)) => read_password_file(path)?,
            (None, None) => unreachable!("checked above"),
        };
        Ok(Some((user.clone(), password)))
    }

    /// Refuses a password over `http://` to a host other than loopback unless allowed; warns
    /// (when `warn`) where it is allowed (see the module docs).
    fn check_password_transport(&self, warn: bool) -> Result<(), EtcdOptionsError> {
        if self.uses_tls() {
            return Ok(());
        }
        let urls = self.endpoint_urls();
        let remote: Vec<&str> = urls
            .iter()
            .filter(|u| !is_loopback_url(u))
            .map(String::as_str)
            .collect();
        if !remote.is_empty() && !self.allow_insecure_password {
            return Err(EtcdOptionsError::InsecurePassword(remote.join(",")));
        }
        if !warn {
            return Ok(());
        }
        tracing::warn!(
            endpoints = ?self.endpoints,
            "the etcd password is sent over http:// in clear text{}; use https:// endpoints",
            if remote.is_empty() { " (loopback only)" } else { " (-etcd-allow-insecure-password)" }
        );
        Ok(())
    }
}

/// The first line of a password file, without its line end.
fn read_password_file(path: &PathBuf) -> Result<Secret, EtcdOptionsError> {
    let bytes = EtcdOptions::read("-etcd-password-file", path)?;
    let text = String::from_utf8(bytes).map_err(|_| EtcdOptionsError::Read {
        flag: "-etcd-password-file",
        path: path.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(EtcdOptionsError::EmptyPasswordFile(path.clone()));
    }
    Ok(Secret::new(line))
}

/// True for an `http://` URL whose host is a loopback address or `localhost`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    // `user:pass@host`: the host is what follows the last `@`.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects, retrying forever with backoff (1 s doubling to 10 s) until etcd answers a request.
/// Option errors are returned at once: retrying cannot fix them.
///
/// With several endpoints, only those that answer a probe are used for the connection (all of
/// them when none answers), and a background task keeps the client's endpoint set to the live
/// ones from then on (see the module docs).
pub async fn connect_with_retry(opts: &EtcdOptions) -> Result<Client, EtcdOptionsError> {
    let connect_opts = opts.connect_options()?;
    let urls = opts.endpoint_urls();
    let mut prober = if urls.len() > 1 {
        // Probes need no credentials: Status is open to everyone.
        Some(Prober::new(&urls, opts.build_options(false)?).await)
    } else {
        None
    };
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1u32;
    crate::notify::status(&format!(
        "connecting to etcd ({})",
        opts.endpoints.join(",")
    ));
    loop {
        let chosen: Vec<String> = match &mut prober {
            Some(p) => {
                let live = p.probe().await;
                let some: Vec<String> = urls
                    .iter()
                    .zip(&live)
                    .filter(|(_, up)| **up)
                    .map(|(u, _)| u.clone())
                    .collect();
                if some.is_empty() {
                    urls.clone()
                } else {
                    some
                }
            }
            None => urls.clone(),
        };
        match try_connect(&chosen, connect_opts.clone()).await {
            Ok(c) => {
                if attempt > 1 {
                    tracing::info!(endpoints = ?opts.endpoints, attempt, "connected to etcd");
                }
                if let Some(p) = prober {
                    let in_use: Vec<bool> = urls.iter().map(|u| chosen.contains(u)).collect();
                    if in_use.iter().any(|u| !u) {
                        tracing::warn!(
                            unreachable = ?urls.iter().filter(|u| !chosen.contains(u)).collect::<Vec<_>>(),
                            "some etcd endpoints do not answer; using the others until they do"
                        );
                    }
                    tokio::spawn(p.keep_endpoints(c.clone(), urls.clone(), in_use));
                }
                return Ok(c);
            }
            Err(e) => {
                let hint = explain(&e, opts);
                tracing::warn!(
                    endpoints = ?opts.endpoints, attempt, retry_in = ?delay,
                    "etcd unreachable: {e}{hint}"
                );
                crate::notify::status(&format!(
                    "waiting for etcd ({}): {e}{hint}",
                    opts.endpoints.join(",")
                ));
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
    .map_err(|e| error_chain(&e))?;
    // A request proves the endpoint is really serving (connect alone can be lazy).
    tokio::time::timeout(Duration::from_secs(5), c.status())
        .await
        .map_err(|_| "status request timed out".to_string())?
        .map_err(|e| error_chain(&e))?;
    Ok(c)
}

/// One single-endpoint client per endpoint, for health probes.
struct Prober {
    clients: Vec<Option<Client>>,
}

const PROBE_PERIOD: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Prober {
    async fn new(urls: &[String], opts: ConnectOptions) -> Self {
        let mut clients = Vec::new();
        for u in urls {
            // Connecting is lazy (no request is made), so this returns at once.
            let c = tokio::time::timeout(
                PROBE_TIMEOUT,
                Client::connect([u.as_str()], Some(opts.clone())),
            )
            .await
            .ok()
            .and_then(Result::ok);
            clients.push(c);
        }
        Self { clients }
    }

    /// Which endpoints answer a Status request now (probed concurrently).
    async fn probe(&mut self) -> Vec<bool> {
        let checks = self.clients.iter().map(|c| {
            let c = c.clone();
            async move {
                let Some(mut c) = c else { return false };
                matches!(
                    tokio::time::timeout(PROBE_TIMEOUT, c.status()).await,
                    Ok(Ok(_))
                )
            }
        });
        futures_join_all(checks).await
    }

    /// Forever: probe, then take dead endpoints out of `client` and put live ones back in,
    /// never leaving it without an endpoint. `in_use[i]`: `urls[i]` is in the balancer.
    async fn keep_endpoints(mut self, client: Client, urls: Vec<String>, mut in_use: Vec<bool>) {
        loop {
            tokio::time::sleep(PROBE_PERIOD).await;
            let live = self.probe().await;
            for (i, url) in urls.iter().enumerate() {
                if live[i] && !in_use[i] && client.add_endpoint(url).await.is_ok() {
                    in_use[i] = true;
                    tracing::info!(endpoint = %url, "etcd endpoint answers again; using it");
                }
            }
            for (i, url) in urls.iter().enumerate() {
                let others = (0..urls.len()).any(|j| j != i && in_use[j]);
                if !live[i] && in_use[i] && others && client.remove_endpoint(url).await.is_ok() {
                    in_use[i] = false;
                    tracing::warn!(endpoint = %url, "etcd endpoint does not answer; using the others until it does");
                }
            }
        }
    }
}

/// Awaits all futures concurrently, results in order (no dependency on the futures crate).
async fn futures_join_all<F: std::future::Future<Output = bool> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<bool> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap_or(false));
    }
    out
}

/// An error with its whole `source()` chain (tonic hides the TLS alert in a source), each
/// cause once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

/// What an operator should check for a connection error, as a suffix for the log line ("" when
/// the cause is not recognisable, e.g. connection refused).
pub fn explain(error: &str, opts: &EtcdOptions) -> &'static str {
    let has = |needles: &[&str]| {
        needles
            .iter()
            .any(|n| error.to_ascii_lowercase().contains(&n.to_ascii_lowercase()))
    };
    if has(&["authentication failed", "invalid user ID or password"]) {
        return " (etcd authentication failed: check -etcd-username and -etcd-password)";
    }
    if has(&["user name is empty"]) {
        return " (etcd has authentication enabled: pass -etcd-username and -etcd-password)";
    }
    if has(&[
        "UnknownIssuer",
        "invalid peer certificate",
        "certificate verify failed",
        "NotValidForName",
    ]) {
        return " (the etcd server's TLS certificate is not trusted: check -etcd-cafile and that the certificate names the endpoint's address)";
    }
    let tls = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let identity = opts.certfile.is_some();
    if has(&[
        "BadCertificate",
        "CertificateRequired",
        "certificate required",
        "bad certificate",
        "UnknownCA",
        "unknown ca",
    ]) {
        return if identity {
            " (etcd rejected our TLS client certificate: check -etcd-certfile/-etcd-keyfile and that etcd's --trusted-ca-file signed it)"
        } else {
            " (etcd requires a TLS client certificate: pass -etcd-certfile and -etcd-keyfile)"
        };
    }
    // With TLS 1.3 the server checks our certificate after the client's side of the handshake
    // is done; its alert can be lost in the race, and all we see is the connection closing.
    let closed = has(&["connection closed", "canceled", "cancelled", "broken pipe"]);
    if tls && !identity && closed {
        return " (etcd closed the TLS connection; if it runs with --client-cert-auth, pass -etcd-certfile and -etcd-keyfile)";
    }
    if tls && identity && closed {
        return " (etcd closed the TLS connection; if it checks client certificates, check -etcd-certfile/-etcd-keyfile and that etcd's --trusted-ca-file signed it)";
    }
    if has(&[
        "InvalidContentType",
        "corrupt message",
        "wrong version number",
    ]) {
        return " (TLS/plain-text mismatch: check http:// vs https:// in -etcd-endpoints)";
    }
    ""
}

/// How [`get_prefix`] pages a listing (see [`ListPaging::DEFAULT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListPaging {
    /// Keys in the first page.
    pub first_page: i64,
    /// What each later page aims at, in bytes of keys and values (plus a small per-key
    /// overhead): its key count is this divided by the average size of the keys read so far.
    pub page_bytes: usize,
    /// The largest answer accepted. A page over it is read again with half the keys, down to
    /// `min_page` keys; a page of `min_page` keys over it is an error.
    pub message_limit: usize,
    pub min_page: i64,
    pub max_page: i64,
}

impl ListPaging {
    /// A first page of 5,000 keys (≈ 600 KB of flannel leases), then pages of about 4 MiB
    /// (a /8 of leases, 65,536 keys ≈ 8 MB, takes three pages, not fourteen: each page costs a
    /// round trip and makes etcd walk the rest of the range to count it). The client's default
    /// message limit, 4 MiB, is raised to 32 MiB, which leaves room for values larger than
    /// those before them; past it, a page is halved.
    pub const DEFAULT: Self = Self {
        first_page: 5000,
        page_bytes: 4 << 20,
        message_limit: 32 << 20,
        min_page: 100,
        max_page: 200_000,
    };
}

/// etcd's encoding of a key-value beyond its key and value bytes (revisions, lease, tags).
const KV_OVERHEAD: usize = 24;

/// Every key under `prefix` at one revision, read in pages ([`ListPaging::DEFAULT`]): a single
/// response for a /8 of /24 leases (65,536 keys, ≈ 8 MB) exceeds the client's default 4 MiB
/// message limit. Pages after the first are read at the first page's revision, so the result is
/// one consistent snapshot (an error if etcd compacted that revision meanwhile; retry).
/// Returns the key-values in key order and the revision.
pub async fn get_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<(Vec<etcd_client::KeyValue>, i64), etcd_client::Error> {
    get_prefix_paged(client, prefix, ListPaging::DEFAULT).await
}

/// [`get_prefix`] with the given paging.
pub async fn get_prefix_paged(
    client: &mut Client,
    prefix: &str,
    paging: ListPaging,
) -> Result<(Vec<etcd_client::KeyValue>, i64), etcd_client::Error> {
    let mut all = Vec::new();
    let revision = list_prefix_pages(client, prefix, paging, |page| {
        if all.is_empty() {
            // `count` is every key in the range: no regrowing while the pages come in.
            all.reserve_exact(page.count);
        }
        all.extend(page.kvs);
    })
    .await?;
    Ok((all, revision))
}

/// One page of a listing: its key-values (in key order) and the listing's revision.
#[derive(Debug)]
pub struct ListPage {
    pub kvs: Vec<etcd_client::KeyValue>,
    /// The revision every page is read at.
    pub revision: i64,
    /// Keys in the whole listing (as etcd counted them with the first page).
    pub count: usize,
}

/// A page read in a task of its own, cancelled when dropped: a listing abandoned mid-way (its
/// future dropped at shutdown or by a timeout) does not leave the next page's read running.
struct PageRead(tokio::task::JoinHandle<Result<etcd_client::GetResponse, etcd_client::Error>>);

impl Drop for PageRead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`get_prefix_paged`] handing each page to `on_page` as it arrives instead of collecting
/// them, so that no more than two pages are held at a time. Pages come in key order, all at the
/// first page's revision (returned). The next page is requested before `on_page` runs, so
/// etcd reads it while the caller applies the current one. On an error, the pages handed over
/// so far are a prefix of an incomplete listing. Must run on a multi-threaded tokio runtime
/// for the overlap (on a current-thread one the next page is simply read afterwards).
pub async fn list_prefix_pages(
    client: &mut Client,
    prefix: &str,
    paging: ListPaging,
    mut on_page: impl FnMut(ListPage),
) -> Result<i64, etcd_client::Error> {
    let mut pager = Pager::new(client, prefix, paging);
    let mut pending = pager.request();
    loop {
        let mut resp = match pager.answer(&mut pending).await {
            Ok(r) => r,
            Err(e) if pager.limit > paging.min_page && is_too_large(&e) => {
                pager.limit = (pager.limit / 2).max(paging.min_page).max(1);
                tracing::debug!(
                    prefix,
                    limit = pager.limit,
                    "listing page too large; reading it in halves"
                );
                pending = pager.request();
                continue;
            }
            Err(e) => return Err(e),
        };
        if pager.revision == 0 {
            pager.pin_revision(&resp)?;
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        // The next page is on its way before this one is handed over.
        let ahead = pager.request_after(&kvs, more);
        on_page(ListPage {
            kvs,
            revision: pager.revision,
            count: pager.count,
        });
        match ahead {
            Some(p) => pending = p,
            None => return Ok(pager.revision),
        }
    }
}

/// Where a paged listing stands: the next page's first key and size, the revision every page
/// is read at.
struct Pager<'p> {
    kv: etcd_client::KvClient,
    prefix: &'p str,
    /// The first key after every key starting with `prefix` (etcd's own prefix end).
    end: Vec<u8>,
    paging: ListPaging,
    /// The next page's first key.
    from: Vec<u8>,
    /// Keys to ask for in the next page.
    limit: i64,
    /// The first page's revision (0 until it came).
    revision: i64,
    /// Keys in the whole listing, as etcd counted them with the first page.
    count: usize,
    bytes_read: usize,
    keys_read: usize,
}

impl<'p> Pager<'p> {
    fn new(client: &Client, prefix: &'p str, paging: ListPaging) -> Self {
        let mut end = prefix.as_bytes().to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                break;
            }
        }
        Self {
            kv: client
                .kv_client()
                .max_decoding_message_size(paging.message_limit),
            prefix,
            end,
            paging,
            from: prefix.as_bytes().to_vec(),
            limit: paging.first_page.max(1),
            revision: 0,
            count: 0,
            bytes_read: 0,
            keys_read: 0,
        }
    }

    /// Starts reading the next page, in a task of its own so that it proceeds while a page is
    /// applied.
    fn request(&self) -> PageRead {
        let mut kv = self.kv.clone();
        let mut opts = etcd_client::GetOptions::new()
            .with_range(self.end.clone())
            .with_limit(self.limit);
        if self.revision > 0 {
            opts = opts.with_revision(self.revision);
        }
        let from = self.from.clone();
        PageRead(tokio::spawn(async move { kv.get(from, Some(opts)).await }))
    }

    /// The answer to `pending` (a panic in its task is resumed here).
    async fn answer(
        &self,
        pending: &mut PageRead,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        match (&mut pending.0).await {
            Ok(answer) => answer,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(etcd_client::Error::IoError(std::io::Error::other(format!(
                "listing {}: the page read was cancelled: {e}",
                self.prefix
            )))),
        }
    }

    /// Takes the first page's revision (every later page is read at it: one snapshot) and
    /// count.
    fn pin_revision(&mut self, first: &etcd_client::GetResponse) -> Result<(), etcd_client::Error> {
        self.revision = first.header().map(|h| h.revision()).unwrap_or(0);
        if self.revision <= 0 {
            return Err(etcd_client::Error::InvalidArgs(format!(
                "listing {}: etcd's answer carries no revision (no response header), \
                 so the listing's pages cannot be read at one revision",
                self.prefix
            )));
        }
        self.count = usize::try_from(first.count()).unwrap_or(0);
        Ok(())
    }

    /// After a page of `kvs` (`more`: etcd has keys after it): starts reading the next page,
    /// sized to about `page_bytes` from the bytes per key read so far; `None` at the end.
    fn request_after(&mut self, kvs: &[etcd_client::KeyValue], more: bool) -> Option<PageRead> {
        self.bytes_read += kvs
            .iter()
            .map(|kv| kv.key().len() + kv.value().len() + KV_OVERHEAD)
            .sum::<usize>();
        self.keys_read += kvs.len();
        let last = kvs.last().filter(|_| more)?;
        let mut next = last.key().to_vec();
        next.push(0);
        self.from = next;
        let per_key = (self.bytes_read / self.keys_read.max(1)).max(1);
        self.limit = i64::try_from(self.paging.page_bytes / per_key)
            .unwrap_or(i64::MAX)
            .clamp(self.paging.min_page.max(1), self.paging.max_page.max(1));
        Some(self.request())
    }
}

/// The client refused an answer over its message size limit (tonic's "decoded message length
/// too large"; etcd's own errors, such as a compacted revision, say otherwise).
fn is_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("decoded message length too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(endpoint: &str, cert: bool) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![endpoint.to_string()],
            cafile: None,
            certfile: cert.then(|| PathBuf::from("/etc/flannel/client.pem")),
            keyfile: cert.then(|| PathBuf::from("/etc/flannel/client-key.pem")),
            username: None,
            ..Default::default()
        }
    }

    fn with_password(endpoints: &[&str], password: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            username: Some("flannel".into()),
            password: Some(Secret::new(password)),
            ..Default::default()
        }
    }

    /// A password over http:// to another host is refused unless allowed; loopback
    /// and https:// are fine; a Debug print never shows it.
    #[test]
    fn password_over_http_to_another_host_is_refused_unless_allowed() {
        let remote = with_password(&["http://198.18.0.10:2379"], "pw-0123");
        let e = remote.connect_options().unwrap_err();
        assert!(matches!(e, EtcdOptionsError::InsecurePassword(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "-etcd-endpoints http://198.18.0.10:2379: a password would cross the network in clear \
             text over http://; use https:// endpoints, or pass -etcd-allow-insecure-password to \
             accept that"
        );
        // A loopback-looking user part does not make the host loopback.
        for tricky in [
            "http://[::1]@etcd.example.com:2379",
            "http://127.0.0.1:x@198.18.0.10:2379",
        ] {
            assert!(
                with_password(&[tricky], "pw").connect_options().is_err(),
                "{tricky}"
            );
        }
        // Schemeless without TLS files is http:// too.
        assert!(with_password(&["198.18.0.10:2379"], "pw")
            .connect_options()
            .is_err());
        let allowed = EtcdOptions {
            allow_insecure_password: true,
            ..remote.clone()
        };
        assert!(allowed.connect_options().is_ok());
        for ok in [
            &["http://127.0.0.1:2379", "http://localhost:4001"][..],
            &["http://[::1]:2379"],
            &["https://198.18.0.10:2379"],
        ] {
            assert!(with_password(ok, "pw").connect_options().is_ok(), "{ok:?}");
        }
        // The probes (no credentials) are refused alike: no way around the check.
        assert!(remote.build_options(false).is_err());
        let debug = format!("{remote:?} {allowed:?}");
        assert!(
            !debug.contains("pw-0123") && debug.contains("<redacted>"),
            "{debug}"
        );
    }

    #[test]
    fn password_file_first_line_and_exclusive_with_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret pw\r\n").unwrap();
        assert_eq!(read_password_file(&file).unwrap().expose(), "s3cret pw");
        std::fs::write(&file, "\n").unwrap();
        assert!(matches!(
            read_password_file(&file),
            Err(EtcdOptionsError::EmptyPasswordFile(_))
        ));
        let both = EtcdOptions {
            password_file: Some(file.clone()),
            ..with_password(&["http://127.0.0.1:2379"], "pw")
        };
        assert!(matches!(
            both.connect_options(),
            Err(EtcdOptionsError::TwoPasswords)
        ));
        let missing = EtcdOptions {
            password: None,
            password_file: Some(dir.path().join("absent")),
            ..both
        };
        let e = missing.connect_options().unwrap_err().to_string();
        assert!(
            e.contains("-etcd-password-file") && e.contains("absent"),
            "{e}"
        );
    }

    #[test]
    fn explain_names_what_to_check() {
        let https = "https://127.0.0.1:2379";
        let cases: &[(&str, &str, bool, &str)] = &[
            (
                "etcdserver: authentication failed, invalid user ID or password",
                https,
                false,
                "-etcd-username and -etcd-password",
            ),
            (
                "invalid peer certificate: UnknownIssuer",
                https,
                true,
                "is not trusted: check -etcd-cafile",
            ),
            (
                "received fatal alert: CertificateRequired",
                https,
                false,
                "requires a TLS client certificate",
            ),
            (
                "received fatal alert: UnknownCA",
                https,
                true,
                "etcd rejected our TLS client certificate",
            ),
            // TLS 1.3: the alert can be lost; only the closed connection is seen.
            (
                "transport error: stream closed because of a broken pipe",
                https,
                true,
                "check -etcd-certfile/-etcd-keyfile and that etcd's --trusted-ca-file signed it",
            ),
            (
                "operation was canceled: connection closed",
                https,
                false,
                "pass -etcd-certfile and -etcd-keyfile",
            ),
            ("corrupt message", https, false, "TLS/plain-text mismatch"),
            (
                "tcp connect error: Connection refused",
                "http://127.0.0.1:2379",
                false,
                "",
            ),
            ("connection closed", "http://127.0.0.1:2379", false, ""),
        ];
        for (error, endpoint, cert, want) in cases {
            let got = explain(error, &opts(endpoint, *cert));
            if want.is_empty() {
                assert_eq!(got, "", "{error}");
            } else {
                assert!(got.contains(want), "{error}: got {got:?}, want {want:?}");
            }
        }
    }
}
