//! Capped exponential backoff between retries of an etcd operation (the lease watch's listing
//! and stream, the daemon's acquisition): 200 ms, doubling after each wait, at most 5 s.

use std::time::Duration;

/// The wait before the next retry; see the module docs.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    /// Back to the first, shortest wait (after a success).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// How long the next [`Backoff::sleep`] waits.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Waits, then doubles the next wait (up to the cap).
    pub async fn sleep(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}
