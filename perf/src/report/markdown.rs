//! Markdown pieces of the reports (pure): numbers with about three significant digits, a
//! [`Summary`] as one cell, and table header and row lines (`| a | b |`).

use std::fmt::Display;

use super::summary::Summary;

/// Formats a number with about three significant digits; infinity as `∞`.
pub fn num(v: f64) -> String {
    if v.is_infinite() {
        return "∞".into();
    }
    if v.is_nan() {
        return "NaN".into();
    }
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.1 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

/// `median (min–max)`, or just the value for a single sample.
pub fn cell(s: &Summary) -> String {
    if s.n <= 1 || s.min == s.max {
        num(s.median)
    } else {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    }
}

/// A table row: `| a | b |` and a newline.
pub fn row<I>(cells: I) -> String
where
    I: IntoIterator,
    I::Item: Display,
{
    let mut s = String::from("|");
    for c in cells {
        s += &format!(" {c} |");
    }
    s.push('\n');
    s
}

/// A table's header row and the separator line under it (`|---|---|`).
pub fn header<I>(columns: I) -> String
where
    I: IntoIterator,
    I::Item: Display,
{
    let mut s = String::new();
    let mut n = 0;
    let first = row(columns.into_iter().inspect(|_| n += 1));
    s += &first;
    s.push('|');
    for _ in 0..n {
        s.push_str("---|");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(num(123.456), "123");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(0.02954), "0.0295");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::INFINITY), "∞");
    }

    #[test]
    fn header_and_rows() {
        assert_eq!(header(["a", "b"]), "| a | b |\n|---|---|\n");
        assert_eq!(row([1, 2, 3]), "| 1 | 2 | 3 |\n");
    }
}
