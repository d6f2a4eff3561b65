//! Feedback source names: the check on a client-chosen source (the
//! `source` field of an example or a batch, or the `X-Eddy-Source`
//! header) before it is used anywhere.
//!
//! A source travels far: into the feedback log, the monitor's report, the
//! `eddy_source_quality` and `eddy_source_blamed` label values of the
//! Prometheus exposition, events and log lines. The exposition escapes only
//! `\`, `"` and newline in label values, and a log line or a dashboard shows
//! what it is given, so a source is refused (422 `invalid_request`) rather
//! than escaped when it holds anything that could break a line or hide
//! text: control characters (C0, DEL, C1: tab, carriage return, NUL, escape
//! sequences), the Unicode line and paragraph separators, and the
//! bidirectional overrides and isolates. Refusing keeps one spelling per
//! source everywhere (a name escaped in one place and not in another would
//! not match `trusted_sources` or an operator's readmission).

use std::sync::Arc;

use super::error::ApiError;

/// Longest accepted source name, in bytes.
pub const MAX_SOURCE_LEN: usize = 128;

/// The source as the trainer and the metrics will carry it, or why not.
pub fn source_name(s: &str) -> Result<Arc<str>, ApiError> {
    match name_problem(s) {
        Some(problem) => Err(ApiError::InvalidRequest(problem)),
        None => Ok(Arc::from(s)),
    }
}

/// Why `s` cannot be a source name, if it cannot: the one rule for names
/// clients send and names `[[sources]]` configures.
pub fn name_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > MAX_SOURCE_LEN {
        return Some(format!("source must be 1 to {MAX_SOURCE_LEN} bytes"));
    }
    s.chars().find(|&c| unsafe_in_source(c)).map(|c| {
        format!(
            "source must not contain control, line-separator or bidirectional-override characters (found U+{:04X})",
            u32::from(c)
        )
    })
}

/// Characters that could break a metrics or log line, or hide or reorder
/// the text around them on a screen.
fn unsafe_in_source(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass_and_unsafe_characters_are_refused() {
        for ok in [
            "crm",
            "team a/labeller-7",
            "ünïcödé ✓",
            "quote\"and\\backslash",
            "{braces}=1",
            &"x".repeat(MAX_SOURCE_LEN),
        ] {
            assert_eq!(source_name(ok).expect(ok).as_ref(), ok);
        }
        for bad in [
            "",
            "line\nbreak",
            "carriage\rreturn",
            "tab\there",
            "nul\0",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
            "sep\u{2028}",
            "para\u{2029}",
            "rlo\u{202E}txt",
            "isolate\u{2066}",
            &"x".repeat(MAX_SOURCE_LEN + 1),
        ] {
            let e = source_name(bad).expect_err(bad);
            assert_eq!(e.status_and_code().1, "invalid_request", "{bad:?}");
        }
    }
}
