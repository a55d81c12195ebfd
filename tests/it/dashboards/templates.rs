//! Grafana's template references: `$name`, `${name}`, `${name:format}`, `[[name]]`, and the
//! function-like SQL macros `$__name(args)`.

#[derive(Debug, PartialEq)]
pub(super) enum Reference {
    Variable {
        name: String,
        format: Option<String>,
    },
    Macro {
        name: String,
        args: Vec<String>,
    },
}

/// Replaces every reference in `text` by what `resolve` says (an error when it knows none).
pub(super) fn expand(
    text: &str,
    mut resolve: impl FnMut(&Reference) -> Result<String, String>,
) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        let reference = if bytes[i] == b'$' && i + 1 < bytes.len() && bytes[i + 1] == b'{' {
            let end = text[i..]
                .find('}')
                .map(|e| i + e)
                .ok_or_else(|| format!("unterminated ${{ in {text:?}"))?;
            let inner = &text[i + 2..end];
            let (name, format) = match inner.split_once(':') {
                Some((n, f)) => (n, Some(f.to_owned())),
                None => (inner, None),
            };
            Some((
                Reference::Variable {
                    name: name.to_owned(),
                    format,
                },
                end + 1,
            ))
        } else if bytes[i] == b'[' && text[i..].starts_with("[[") {
            let end = text[i..]
                .find("]]")
                .map(|e| i + e)
                .ok_or_else(|| format!("unterminated [[ in {text:?}"))?;
            Some((
                Reference::Variable {
                    name: text[i + 2..end].to_owned(),
                    format: None,
                },
                end + 2,
            ))
        } else if bytes[i] == b'$'
            && i + 1 < bytes.len()
            && (bytes[i + 1].is_ascii_alphabetic() || bytes[i + 1] == b'_')
        {
            let mut end = i + 1;
            while end < bytes.len() && ident(bytes[end]) {
                end += 1;
            }
            let name = text[i + 1..end].to_owned();
            if name.starts_with("__") && end < bytes.len() && bytes[end] == b'(' {
                let close = text[end..]
                    .find(')')
                    .map(|e| end + e)
                    .ok_or_else(|| format!("unterminated macro in {text:?}"))?;
                let args: Vec<String> = text[end + 1..close]
                    .split(',')
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
                Some((Reference::Macro { name, args }, close + 1))
            } else {
                Some((Reference::Variable { name, format: None }, end))
            }
        } else {
            None
        };
        match reference {
            Some((reference, next)) => {
                out.push_str(&resolve(&reference)?);
                i = next;
            }
            None => {
                let c = text[i..].chars().next().expect("a char");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    Ok(out)
}

/// Variables Grafana defines itself, usable in any query.
pub(super) const GLOBAL_VARIABLES: &[&str] = &[
    "timeFilter",
    "__interval",
    "__interval_ms",
    "__rate_interval",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
    "__timezone",
];
/// The SQL data sources' macros.
pub(super) const SQL_MACROS: &[&str] = &[
    "__time",
    "__timeEpoch",
    "__timeFilter",
    "__timeFrom",
    "__timeTo",
    "__timeGroup",
    "__timeGroupAlias",
    "__unixEpochFilter",
    "__unixEpochFrom",
    "__unixEpochTo",
    "__unixEpochGroup",
    "__unixEpochGroupAlias",
];
/// InfluxQL's alias patterns (`alias` of a target only).
pub(super) fn is_alias_pattern(name: &str) -> bool {
    name.starts_with("tag_")
        || matches!(name, "col" | "m" | "measurement")
        || name.chars().all(|c| c.is_ascii_digit())
}
