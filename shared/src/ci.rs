//! How tests tell CI from a developer's run: one rule for every crate's tests.
//!
//! CI (`.ci/run` → `scripts/test`) sets `CI`; any non-empty value counts (`true`, `1`, `yes`).
//! Under CI a test that cannot run (not root, a tool missing, one CPU) fails instead of skipping,
//! so a skip never passes as a green test.

/// True under CI: the `CI` environment variable is set and not empty.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips the calling test, which must return right after: outside CI prints `SKIPPED: reason`;
/// under CI ([`in_ci`]) panics with the reason.
#[track_caller]
pub fn skip_or_fail(reason: &str) {
    if in_ci() {
        panic!("cannot run under CI (CI is set), and CI must not skip: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}
