//! Text that came from another machine (etcd keys and values) on its way into a log line or an
//! error message: cut to [`MAX_CHARS`] characters (then `…`) and escaped as Rust's
//! `escape_debug` does, so a value with a newline or a terminal escape cannot forge log lines
//! and a huge value cannot flood them (or the memory of whoever keeps the message).

/// How many characters of an untrusted value are shown.
pub const MAX_CHARS: usize = 64;

/// The first [`MAX_CHARS`] characters of `s`, followed by `…` when it was longer; not escaped
/// (for messages that print the value with `{:?}`, which escapes).
pub fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_CHARS) {
        None => s.to_owned(),
        Some((end, _)) => format!("{}…", &s[..end]),
    }
}

/// [`clip`]ped and escaped (`\n`, `\u{1b}`, `\\`, ...; quotes are left as they are), without
/// surrounding quotes: safe to print as is.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS * 2));
    let mut chars = s.chars();
    for c in chars.by_ref().take(MAX_CHARS) {
        match c {
            // Quotes cannot start a line: kept readable.
            '"' | '\'' => out.push(c),
            _ => out.extend(c.escape_debug()),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden() {
        assert_eq!(escape("198.18.0.1"), "198.18.0.1");
        assert_eq!(
            escape("1.2.3.4\nWARN forged line"),
            r"1.2.3.4\nWARN forged line"
        );
        assert_eq!(escape("\u{1b}[31mred\r\t\0"), r"\u{1b}[31mred\r\t\0");
        assert_eq!(escape(r#"{"a":'b\c'}"#), r#"{"a":'b\\c'}"#);
        assert_eq!(escape(&"a".repeat(64)), "a".repeat(64));
        assert_eq!(escape(&"a".repeat(65)), format!("{}…", "a".repeat(64)));
        assert_eq!(escape(&"é".repeat(100)), format!("{}…", "é".repeat(64)));
        assert_eq!(clip(&"x\n".repeat(40)), format!("{}…", "x\n".repeat(32)));
        assert_eq!(clip("short\n"), "short\n");
    }
}
