//! The canonical JSON encoding of receipts, and the hash it defines.
//!
//! One value has exactly one encoding, so a verifier can check a line is canonical
//! by re-encoding what it parsed, and a hash over the bytes is a hash over the
//! meaning. The rules (docs/receipts.md, "Encoding") follow RFC 8785 (JCS) for
//! everything a receipt contains, with two narrowings: numbers are integers only,
//! and object members are sorted by Unicode code point (which is the order of their
//! UTF-8 bytes, and what Python's `sort_keys` does). Python reproduces it exactly:
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Why a value has no canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Receipts carry integers only: a float has more than one spelling, and
    /// verifiers in other languages round them differently.
    #[error("{path}: {number} is not an integer; receipts carry integers only (put fractional values in a string)")]
    NotInteger { path: String, number: String },
    /// The receipt type itself could not be turned into JSON.
    #[error("the receipt cannot be represented as JSON: {0}")]
    Serialize(String),
}

/// The canonical encoding of `v`: no whitespace, object members sorted by code
/// point, strings escaped minimally (see [`push_string`]), integers in decimal.
pub fn canonical(v: &Value) -> Result<String, EncodeError> {
    let mut out = String::with_capacity(1024);
    write_value(v, &mut out, &[]).map_err(EncodeError::tidy)?;
    Ok(out)
}

/// The canonical encoding of anything serde can turn into JSON.
pub fn canonical_of<T: serde::Serialize>(t: &T) -> Result<String, EncodeError> {
    let v = serde_json::to_value(t).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    canonical(&v)
}

/// The members of a receipt that its hash leaves out: `id` is the hash, and the
/// seal is made from the hash.
pub const UNHASHED: [&str; 2] = ["id", "seal"];

/// A receipt's hash: SHA-256 of the canonical encoding of its JSON object without
/// the members in [`UNHASHED`] (docs/receipts.md, "Hashes"). Taken over the object
/// as parsed, so a member a verifier does not know about is still covered.
pub fn receipt_hash(receipt: &Value) -> Result<[u8; 32], EncodeError> {
    let mut out = String::with_capacity(1024);
    write_value(receipt, &mut out, &UNHASHED).map_err(EncodeError::tidy)?;
    Ok(sha256(out.as_bytes()))
}

/// A receipt's canonical encoding without `id` and `seal`, and where those two go:
/// the journal hashes the body when a receipt is appended, and adds them when its
/// batch is sealed, without encoding the rest again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    text: String,
    /// Byte offsets in `text` where `id` and `seal` belong: the start of the
    /// member that sorts after them, or the closing brace.
    at: [usize; 2],
}

impl Body {
    /// The body of `receipt` (a JSON object; any `id` or `seal` in it is left out).
    pub fn of(receipt: &Value) -> Result<Body, EncodeError> {
        let Value::Object(map) = receipt else {
            return Err(EncodeError::Serialize("a receipt is not a JSON object".into()));
        };
        let mut members: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| !UNHASHED.contains(&k.as_str())).collect();
        members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut text = String::with_capacity(1024);
        let mut at = [usize::MAX; 2];
        text.push('{');
        for (i, (k, v)) in members.into_iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            for (slot, name) in at.iter_mut().zip(UNHASHED) {
                if *slot == usize::MAX && name.as_bytes() < k.as_bytes() {
                    *slot = text.len();
                }
            }
            push_string(k, &mut text);
            text.push(':');
            write_value(v, &mut text, &[]).map_err(|e| e.inside(&format!(".{k}")).tidy())?;
        }
        for slot in at.iter_mut().filter(|s| **s == usize::MAX) {
            *slot = text.len();
        }
        text.push('}');
        Ok(Body { text, at })
    }

    /// The receipt hash ([`receipt_hash`]).
    pub fn hash(&self) -> [u8; 32] {
        sha256(self.text.as_bytes())
    }

    /// Appends the whole receipt to `out`: the body with `id` and `seal` (their
    /// canonical values) in their places.
    pub fn write_with(&self, out: &mut String, id: &str, seal: &str) {
        let bytes = self.text.as_bytes();
        let mut from = 0;
        let mut inserted = false;
        for (&at, (name, value)) in self.at.iter().zip([("id", id), ("seal", seal)]) {
            out.push_str(&self.text[from..at]);
            from = at;
            let closing = bytes[at] == b'}';
            // Before the closing brace a member needs a comma in front, unless it is
            // the first; before another member, a comma after.
            if closing && (bytes[at - 1] != b'{' || inserted) {
                out.push(',');
            }
            push_string(name, out);
            out.push(':');
            out.push_str(value);
            if !closing {
                out.push(',');
            }
            inserted = true;
        }
        out.push_str(&self.text[from..]);
    }
}

/// Lowercase hex of `bytes`, appended to `out` (the `hex` crate goes through
/// `char`s, which showed in profiles of the journal).
pub fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Parses 64 lowercase hex digits. Uppercase is refused on purpose: hex that
/// decodes to the same bytes in two spellings would let a changed line verify.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    parse_lower_hex(s, &mut out).then_some(out)
}

/// Fills `out` from exactly `2 * out.len()` lowercase hex digits; false otherwise.
pub fn parse_lower_hex(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        match (nibble(b[2 * i]), nibble(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Writes `v`, leaving out the top-level members named in `skip`. A bad number's
/// place is built on the way back up (each enclosing array or object prefixes its
/// step), so only a failing encoding pays for it.
fn write_value(v: &Value, out: &mut String, skip: &[&str]) -> Result<(), EncodeError> {
    use std::fmt::Write as _;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            // Writing to a String cannot fail.
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                return Err(EncodeError::NotInteger { path: String::new(), number: n.to_string() });
            }
        }
        Value::String(s) => push_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out, &[]).map_err(|e| e.inside(&format!("[{i}]")))?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // serde_json's map is already sorted unless some crate in the build turns
            // on its `preserve_order` feature; sort here so that can never matter.
            let mut members: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| !skip.contains(&k.as_str())).collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_string(k, out);
                out.push(':');
                write_value(item, out, &[]).map_err(|e| e.inside(&format!(".{k}")))?;
            }
            out.push('}');
        }
    }
    Ok(())
}

impl EncodeError {
    fn inside(self, step: &str) -> EncodeError {
        match self {
            EncodeError::NotInteger { path, number } => EncodeError::NotInteger { path: format!("{step}{path}"), number },
            other => other,
        }
    }

    /// The place as people read it: `action.parameters.ratio`, `[0]`.
    fn tidy(self) -> EncodeError {
        match self {
            EncodeError::NotInteger { path, number } => {
                let path = if path.is_empty() { "the receipt".to_string() } else { path.trim_start_matches('.').to_string() };
                EncodeError::NotInteger { path, number }
            }
            other => other,
        }
    }
}

/// A JSON string as RFC 8785 spells it: `"` and `\` escaped with a backslash;
/// U+0008, U+0009, U+000A, U+000C, U+000D as `\b \t \n \f \r`; every other
/// character below U+0020 as `\u00XX` with lowercase hex; everything else
/// (including `/`, U+007F and all non-ASCII) as its UTF-8 bytes.
pub fn push_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\t' => "\\t",
            '\n' => "\\n",
            '\u{c}' => "\\f",
            '\r' => "\\r",
            c if c < ' ' => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push_str(esc);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_compact_integers() {
        let v = json!({"b": 1, "a": [true, null, -3, 18446744073709551615u64], "A": {"z": "", "y": {}}});
        assert_eq!(canonical(&v).unwrap(), r#"{"A":{"y":{},"z":""},"a":[true,null,-3,18446744073709551615],"b":1}"#);
    }

    #[test]
    fn members_sort_by_code_point_not_utf16() {
        // U+FB01 sorts before U+1F600 by code point; UTF-16 order (JCS) would put
        // the surrogate pair of U+1F600 first. This is the one documented narrowing.
        let v = json!({"\u{1F600}": 1, "\u{FB01}": 2, "z": 3});
        assert_eq!(canonical(&v).unwrap(), "{\"z\":3,\"\u{FB01}\":2,\"\u{1F600}\":1}");
    }

    #[test]
    fn string_escapes_are_minimal_and_fixed() {
        let v = json!("q\" b\\ \u{8}\t\n\u{c}\r \u{0}\u{1f} / \u{7f} é \u{2028} 😀");
        assert_eq!(
            canonical(&v).unwrap(),
            "\"q\\\" b\\\\ \\b\\t\\n\\f\\r \\u0000\\u001f / \u{7f} é \u{2028} 😀\""
        );
        // Agrees with serde_json's own compact output for every escape class.
        assert_eq!(canonical(&v).unwrap(), serde_json::to_string(&v).unwrap());
    }

    #[test]
    fn floats_are_refused_with_their_place() {
        let v = json!({"action": {"parameters": {"ratio": 0.5}}});
        let e = canonical(&v).unwrap_err();
        assert_eq!(e.to_string(), "action.parameters.ratio: 0.5 is not an integer; receipts carry integers only (put fractional values in a string)");
        let v: Value = serde_json::from_str("[1.0]").unwrap();
        assert!(matches!(canonical(&v), Err(EncodeError::NotInteger { path, .. }) if path == "[0]"));
    }

    #[test]
    fn canonical_text_round_trips_and_other_spellings_do_not() {
        let text = r#"{"a":"x\u001f","b":[1,2]}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(canonical(&v).unwrap(), text);
        // The same value, spelled otherwise: member order, whitespace, an escaped
        // letter, uppercase hex in an escape.
        for other in [
            r#"{"b":[1,2],"a":"x\u001f"}"#,
            r#"{"a":"x\u001f", "b":[1,2]}"#,
            r#"{"a":"\u0078\u001f","b":[1,2]}"#,
            r#"{"a":"x\u001F","b":[1,2]}"#,
        ] {
            let v: Value = serde_json::from_str(other).unwrap();
            assert_eq!(canonical(&v).unwrap(), text, "{other}");
        }
    }

    #[test]
    fn the_hash_leaves_out_id_and_seal_and_nothing_else() {
        let body = json!({"seq": 1, "action": {"parameters": {"id": "x", "seal": 1}}});
        let mut full = body.clone();
        full["id"] = json!("ab");
        full["seal"] = json!({"root": "cd"});
        assert_eq!(receipt_hash(&full).unwrap(), receipt_hash(&body).unwrap());
        assert_eq!(receipt_hash(&body).unwrap(), sha256(canonical(&body).unwrap().as_bytes()));
        // Nested members of the same names are part of the receipt.
        let mut nested = body.clone();
        nested["action"]["parameters"]["id"] = json!("y");
        assert_ne!(receipt_hash(&nested).unwrap(), receipt_hash(&body).unwrap());
        // So is any member a verifier does not know.
        full["extra"] = json!(0);
        assert_ne!(receipt_hash(&full).unwrap(), receipt_hash(&body).unwrap());
    }

    #[test]
    fn a_body_takes_id_and_seal_in_their_places() {
        for v in [
            json!({"seq": 1, "a": {"b": [1, "x"]}, "id": "old", "zz": null}),
            json!({}),
            json!({"a": 1}),
            json!({"z": 1}),
            json!({"j": 1}),
            json!({"a": 1, "j": 2, "z": 3}),
        ] {
            let body = Body::of(&v).unwrap();
            assert_eq!(body.hash(), receipt_hash(&v).unwrap(), "{v}");
            let mut out = String::new();
            body.write_with(&mut out, "\"new\"", "{}");
            let mut full = v.clone();
            full["id"] = json!("new");
            full["seal"] = json!({});
            assert_eq!(out, canonical(&full).unwrap(), "{v}");
        }
        let e = Body::of(&json!({"p": {"r": 0.5}})).unwrap_err();
        assert!(e.to_string().starts_with("p.r: 0.5"), "{e}");
        let mut h = String::new();
        push_hex(&[0, 0xab, 0xff], &mut h);
        assert_eq!(h, "00abff");
    }

    #[test]
    fn hex_is_lowercase_only() {
        let h = hex::encode([0xabu8; 32]);
        assert_eq!(parse_hash(&h), Some([0xab; 32]));
        assert_eq!(parse_hash(&h.to_uppercase()), None);
        assert_eq!(parse_hash(&h[..62]), None);
        assert_eq!(parse_hash(&format!("{}g", &h[..63])), None);
        let mut two = [0u8; 2];
        assert!(parse_lower_hex("00ff", &mut two) && two == [0, 255]);
    }
}
