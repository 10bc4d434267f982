//! Printing: tables for lists, `key: value` blocks for one object, JSON for scripts.
//!
//! JSON is the proto messages serialized as they are (build.rs derives `Serialize`
//! on them), so the field names are the proto's, which never change: one document
//! per list or show, one object per line for streams. Every write goes through here
//! so a closed pipe ends the program quietly instead of panicking.

use std::io::Write as _;

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

use super::error::CliError;

/// Writes text (a newline is added) to stdout.
pub fn print(text: impl AsRef<str>) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", text.as_ref()).and_then(|()| out.flush()).map_err(|e| CliError::io("writing to stdout", e))
}

/// One JSON document, pretty-printed.
pub fn json<T: Serialize>(value: &T) -> Result<(), CliError> {
    print(serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(format!("encoding JSON: {e}")))?)
}

/// One JSON object on one line (for streams: `events --follow --json`).
pub fn json_line<T: Serialize>(value: &T) -> Result<(), CliError> {
    print(serde_json::to_string(value).map_err(|e| CliError::Failed(format!("encoding JSON: {e}")))?)
}

/// A table with the house style: no borders, a header, columns aligned, wrapped to
/// the terminal's width when there is one (never when piped, so `grep` sees whole
/// rows).
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(header.iter().copied());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// Renders a table without trailing spaces on each line.
pub fn render_table(t: &Table) -> String {
    t.lines().map(|l| l.trim_end().to_string()).collect::<Vec<_>>().join("\n")
}

/// An aligned `key: value` block.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")).trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// "-" for an empty field, so columns never look shifted.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.into()
    }
}

/// An RFC 3339 time cut to milliseconds for tables: `2025-06-01T12:00:00.123456789Z`
/// becomes `2025-06-01T12:00:00.123Z`. Anything else is returned as it is.
pub fn short_time(t: &str) -> String {
    let Some(dot) = t.find('.') else { return t.to_string() };
    let frac_end = t[dot + 1..].find(|c: char| !c.is_ascii_digit()).map_or(t.len(), |i| dot + 1 + i);
    let digits = &t[dot + 1..frac_end];
    if digits.len() <= 3 {
        return t.to_string();
    }
    format!("{}.{}{}", &t[..dot], &digits[..3], &t[frac_end..])
}

/// A duration in seconds, the way people read it: `3h 2m 5s`.
pub fn human_duration(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_align() {
        let s = key_values(&[("name", "coder".into()), ("fingerprint", "ab12".into()), ("empty", String::new())]);
        assert_eq!(s, "name:        coder\nfingerprint: ab12\nempty:");
    }

    #[test]
    fn times_are_cut_to_milliseconds() {
        assert_eq!(short_time("2025-06-01T12:00:00.123456789Z"), "2025-06-01T12:00:00.123Z");
        assert_eq!(short_time("2025-06-01T12:00:00.123456789+02:00"), "2025-06-01T12:00:00.123+02:00");
        assert_eq!(short_time("2025-06-01T12:00:00Z"), "2025-06-01T12:00:00Z");
        assert_eq!(short_time("2025-06-01T12:00:00.1Z"), "2025-06-01T12:00:00.1Z");
    }

    #[test]
    fn tables_have_a_header_and_no_trailing_space() {
        let mut t = table(&["NAME", "RULES"]);
        t.add_row(vec!["coder".to_string(), "12".to_string()]);
        let s = render_table(&t);
        let lines: Vec<_> = s.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{s}");
        assert!(lines.iter().any(|l| l.starts_with("coder")), "{s}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{s:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(3725), "1h 2m 5s");
        assert_eq!(human_duration(0), "0s");
    }
}
