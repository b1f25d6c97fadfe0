//! What every hand-written SVG chart of the reports shares (pure): the document's opening (size,
//! white background, bold centred title) and XML escaping of text. Each chart writes its own
//! body and closes with [`END`].

/// The closing tag of a document begun with [`begin`].
pub const END: &str = "</svg>\n";

/// An SVG document of `w` × `h` with default font size `font_size`: white background and
/// `title` (escaped) centred at the top.
pub fn begin(w: f64, h: f64, font_size: u32, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"{font_size}\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"{}\" font-weight=\"bold\">{}</text>\n",
        w / 2.0,
        font_size + 3,
        escape(title)
    )
}

/// Escapes text for XML content and attribute values: `&`, `<`, `>` and `"`.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_opens_with_its_size_background_and_title() {
        let d = begin(400.0, 200.0, 12, "a & b");
        assert!(d.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"200\" viewBox=\"0 0 400 200\""));
        assert!(d.contains("<rect width=\"400\" height=\"200\" fill=\"white\"/>"));
        assert!(d.contains(">a &amp; b</text>"));
        assert_eq!(END, "</svg>\n");
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
