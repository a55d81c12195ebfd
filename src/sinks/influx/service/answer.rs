//! InfluxDB's answers as text: the message of an error answer, found in its JSON, header or
//! body, and cut to a size fit for an error or a log line.

use std::io::Read as _;

use reqwest::blocking::Response;

/// The most bytes of an error response read for its message.
pub(super) const MAX_ERROR_BODY: u64 = 64 * 1024;
/// The most characters of a plain-text error body quoted in an error.
pub(super) const MAX_MESSAGE_CHARS: usize = 500;

/// At most [`MAX_MESSAGE_CHARS`] characters of `message`, for a log line.
pub(super) fn shorten(message: &str) -> String {
    let mut text: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    if text.len() < message.len() {
        text.push('…');
    }
    text
}

/// Up to [`MAX_ERROR_BODY`] bytes of a response, as text.
pub(super) fn read_text(response: Response) -> String {
    let mut bytes = Vec::new();
    let _ = response.take(MAX_ERROR_BODY).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// InfluxDB's message in an error answer.
pub(super) fn error_message(body: &str, header: Option<&str>, reason: Option<&str>) -> String {
    if let Some(message) =
        json_string_field(body, "error").or_else(|| json_string_field(body, "message"))
    {
        return message;
    }
    if let Some(header) = header.filter(|h| !h.is_empty()) {
        return header.to_owned();
    }
    let body = body.trim();
    if !body.is_empty() {
        let mut text: String = body.chars().take(MAX_MESSAGE_CHARS).collect();
        if text.len() < body.len() {
            text.push('…');
        }
        return text;
    }
    reason.unwrap_or("no message").to_owned()
}

/// The string value of the first member `"name": "..."` of a JSON object anywhere in `json`.
///
/// Enough JSON for InfluxDB's error answers (`{"error":"..."}`, `{"code":..,"message":".."}`, and
/// `{"results":[{"statement_id":0,"error":"..."}]}`): the key must follow `{` or `,`, so text that
/// merely contains the name inside another string does not count.
pub(super) fn json_string_field(json: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let mut from = 0;
    while let Some(found) = json[from..].find(&key) {
        let start = from + found;
        from = start + key.len();
        let before = json[..start].trim_end();
        if !(before.ends_with('{') || before.ends_with(',')) {
            continue;
        }
        let rest = json[from..].trim_start();
        let Some(rest) = rest.strip_prefix(':') else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        return parse_json_string(rest);
    }
    None
}

/// The JSON string starting right after its opening quote, unescaped.
fn parse_json_string(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    let unit = u32::from_str_radix(&hex, 16).ok()?;
                    // Surrogate pairs are rare in error messages: show a replacement character.
                    out.push(char::from_u32(unit).unwrap_or('\u{fffd}'));
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influx_error_messages_are_extracted() {
        let v1 = r#"{"error":"database not found: \"nope\""}"#;
        assert_eq!(
            error_message(v1, None, None),
            "database not found: \"nope\""
        );
        let v2 = r#"{"code":"not found","message":"bucket \"b\" not found"}"#;
        assert_eq!(error_message(v2, None, None), "bucket \"b\" not found");
        let query = r#"{"results":[{"statement_id":0,"error":"bad \\ thing\n"}]}"#;
        assert_eq!(json_string_field(query, "error").unwrap(), "bad \\ thing\n");
        assert_eq!(
            json_string_field(r#"{"results":[{"statement_id":0}]}"#, "error"),
            None
        );
        // The name inside another string value is not a key.
        let tricky = r#"{"message":"x, \"error\": \"no\"","error":"yes"}"#;
        assert_eq!(json_string_field(tricky, "error").unwrap(), "yes");
        assert_eq!(
            error_message("", Some("header says"), Some("Bad Request")),
            "header says"
        );
        assert_eq!(error_message("  plain text\n", None, None), "plain text");
        assert_eq!(error_message("", None, Some("Bad Gateway")), "Bad Gateway");
        assert_eq!(
            json_string_field(r#"{"error":"caf\u00e9"}"#, "error").unwrap(),
            "café"
        );
        let long = "x".repeat(2_000);
        assert_eq!(
            error_message(&long, None, None).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }
}
