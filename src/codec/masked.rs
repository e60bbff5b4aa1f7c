//! Codec errors as log lines that carry no session values.

/// An error and its sources, as one line, with quoted text masked: serde's messages quote the
/// values they met (`invalid type: string "…"`), and session values must not reach the log.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    mask_quoted(&text)
}

/// `text` with the contents of every "…" or `…` replaced by an ellipsis.
pub(crate) fn mask_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_values_in_messages() {
        assert_eq!(
            super::mask_quoted(r#"invalid type: string "tok-123", expected u32"#),
            "invalid type: string \"…\", expected u32"
        );
        assert_eq!(super::mask_quoted("no quotes"), "no quotes");
    }
}
