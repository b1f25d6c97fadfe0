//! `/metrics` (Prometheus text, see [`crate::metrics`]), `/healthz` (the process is alive: 200) and `/readyz` (200 once the lease is held, subnet.env is
//! written and the route table is published; 503 with the missing items otherwise) on
//! `-healthz-ip:-healthz-port`. A deliberately small HTTP/1.x responder: GET only, one request
//! per connection, 8 KiB request limit, [`READ_TIMEOUT`] to send the request and 5 s for the
//! whole exchange. At most [`MAX_CONNECTIONS`] connections are served at once; one beyond that
//! is closed as soon as it is accepted (a thousand idle connections would otherwise exhaust the
//! process's file descriptors, breaking etcd reconnects and iptables calls). A client that
//! finds the endpoint full retries; the idle connections in its way time out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use prometheus_client::registry::Registry;

use crate::status::Status;

/// Binds the listener (errors name the address).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("-healthz-ip/-healthz-port {addr}: cannot listen: {e}"))
}

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send its request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, status: Arc<Status>, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Full: closed now (dropped), no log line per connection.
                    tracing::debug!(%peer, "health endpoint full: connection closed");
                    drop(conn);
                    continue;
                };
                let status = status.clone();
                let registry = registry.clone();
                tokio::spawn(async move {
                    let reply = answer(conn, &status, &registry);
                    let _ = tokio::time::timeout(Duration::from_secs(5), reply).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("health endpoint accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request from `conn` (bounded in size and time) and writes its answer.
async fn answer(mut conn: TcpStream, status: &Status, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, conn.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 || buf.len() + n > 8192 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let mut content_type = "text/plain; charset=utf-8";
    let (code, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n".to_string()),
        ("GET" | "HEAD", "/metrics") => {
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            ("200 OK", crate::metrics::render(registry))
        }
        ("GET" | "HEAD", "/readyz") => match status.missing() {
            m if m.is_empty() => ("200 OK", "ok\n".to_string()),
            m => (
                "503 Service Unavailable",
                format!("not ready: {}\n", m.join(", ")),
            ),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "not found\n".to_string()),
        _ => ("405 Method Not Allowed", "only GET\n".to_string()),
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}
