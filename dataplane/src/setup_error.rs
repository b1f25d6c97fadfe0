//! The error of the data plane's startup and supervision steps: what was being done, and why
//! it failed. Its text is the whole message (`<what>: <cause>`), as the binary logs it; it has
//! no separate `source`, so a chain printer does not repeat the cause.

use std::io;

/// A setup or supervision step that failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A syscall failed while doing `context`.
    #[error("{context}: {cause}")]
    Io {
        /// What was being done, e.g. `binding UDP 0.0.0.0:8285`.
        context: String,
        /// The kernel's answer (part of the text, so not a separate `source`).
        cause: io::Error,
    },
    /// Refused by policy or configuration; the text says why.
    #[error("{0}")]
    Refused(String),
}

impl SetupError {
    /// `context: err: its source: ...`, the whole chain as one text.
    pub fn with_chain(context: &str, err: &dyn std::error::Error) -> Self {
        let mut text = format!("{context}: {err}");
        let mut source = err.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self::Refused(text)
    }
}

/// Attaches a description of the step to an `io::Result`.
pub trait IoContext<T> {
    /// `Err(e)` becomes [`SetupError::Io`] with `context`.
    fn context(self, context: &str) -> Result<T, SetupError>;
    /// As [`IoContext::context`], with the text built only on error.
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, SetupError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: &str) -> Result<T, SetupError> {
        self.map_err(|cause| SetupError::Io {
            context: context.to_string(),
            cause,
        })
    }

    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, SetupError> {
        self.map_err(|cause| SetupError::Io {
            context: context(),
            cause,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_step_and_the_cause() {
        let e = Err::<(), _>(io::Error::from_raw_os_error(libc::EPERM))
            .context("SO_MARK 0x1 (needs CAP_NET_ADMIN)")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("SO_MARK 0x1 (needs CAP_NET_ADMIN): Operation not permitted"),
            "{e}"
        );
        assert_eq!(SetupError::Refused("no".into()).to_string(), "no");
        let inner = io::Error::other("disk full");
        let outer = io::Error::other(inner);
        assert_eq!(
            SetupError::with_chain("creating the stats file", &outer).to_string(),
            "creating the stats file: disk full"
        );
    }
}
