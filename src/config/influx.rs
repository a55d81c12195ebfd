//! What the InfluxDB sink is: the `[influx]` section, plain data, and its validation.

use std::fmt;
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::ConfigError;

/// The most lines one write request may carry (InfluxDB's recommended batch size).
pub const MAX_BATCH_LINES: usize = 5_000;

/// Which HTTP write API the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// InfluxDB 1.x: `POST /write?db=..&rp=..`, optional basic authentication.
    V1,
    /// InfluxDB 2.x (and 3.x): `POST /api/v2/write?org=..&bucket=..`, token authentication.
    V2,
}

/// The `[influx]` section: where and how the sink writes. Defaults live in `config/shopflow.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InfluxConfig {
    /// The server's base URL, `http` or `https`, e.g. `http://127.0.0.1:8086`; a path prefix (a
    /// reverse proxy's) is kept. Credentials do not belong here.
    pub url: String,
    /// The write API: `v1` or `v2`.
    pub api: Api,
    /// The v1 database, or the v2 bucket.
    pub database: String,
    /// The v1 retention policy; the database's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<String>,
    /// The v2 organisation (name or id); required by v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The v1 user for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The v1 user's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the v1 password (its trailing line break ignored), instead of `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The API token: required by v2, optional for v1 (InfluxDB 1.8+ and v1-compatible servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token, instead of `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The most lines per write request, 1 ..= 5000; a larger batch is split.
    pub batch_lines: usize,
    /// Whether request bodies are gzip-compressed.
    pub gzip: bool,
    /// The timeout of one HTTP request (connecting included), in milliseconds; also bounds the
    /// start check ([`check_at_start`](crate::sinks::influx::service::check_at_start)).
    pub timeout_ms: u64,
    /// How often a failed write is retried (connection errors, timeouts, 429, 5xx) before the sink
    /// fails; 0 for never.
    pub max_retries: u32,
    /// The backoff cap of the first retry, in milliseconds; it doubles every retry.
    pub initial_backoff_ms: u64,
    /// The largest backoff cap, in milliseconds.
    pub max_backoff_ms: u64,
    /// Whether the sink runs `CREATE DATABASE` (v1 only; a no-op when it exists) at start.
    pub create_database: bool,
    /// A file to which every line InfluxDB refuses is appended, after a `# HTTP <status>:
    /// <message>` comment line; empty (the default) for none. Refused lines are counted
    /// (`sink_rejected_lines`) and logged either way.
    #[serde(default)]
    pub rejects_file: PathBuf,
}

impl InfluxConfig {
    /// Checks every value; the error names the first bad key (`influx.<key>`). Reads no file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if let Err(message) = parse_base_url(&self.url) {
            return invalid("influx.url", &message);
        }
        if self.database.is_empty() {
            return invalid("influx.database", "must not be empty");
        }
        let v1 = self.api == Api::V1;
        let only = |key, api: &str| invalid(key, &format!("only used with api = \"{api}\""));
        match &self.retention_policy {
            Some(_) if !v1 => return only("influx.retention-policy", "v1"),
            Some(rp) if rp.is_empty() => {
                return invalid("influx.retention-policy", "must not be empty when set");
            }
            _ => {}
        }
        match &self.org {
            None if !v1 => return invalid("influx.org", "required with api = \"v2\""),
            Some(_) if v1 => return only("influx.org", "v2"),
            Some(org) if org.is_empty() => return invalid("influx.org", "must not be empty"),
            _ => {}
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid(
                "influx.password-file",
                "set password or password-file, not both",
            );
        }
        if self.token.is_some() && self.token_file.is_some() {
            return invalid("influx.token-file", "set token or token-file, not both");
        }
        let has_password = self.password.is_some() || self.password_file.is_some();
        let has_token = self.token.is_some() || self.token_file.is_some();
        if !v1 {
            if self.username.is_some() {
                return invalid("influx.username", "not used with api = \"v2\": set token");
            }
            if has_password {
                return invalid("influx.password", "not used with api = \"v2\": set token");
            }
            if !has_token {
                return invalid("influx.token", "required with api = \"v2\" (or token-file)");
            }
        }
        match &self.username {
            Some(user) if user.is_empty() => {
                return invalid("influx.username", "must not be empty when set");
            }
            Some(_) if !has_password => {
                return invalid(
                    "influx.password",
                    "required with username (or password-file)",
                );
            }
            Some(_) if has_token => {
                return invalid(
                    "influx.token",
                    "set username and password, or token, not both",
                );
            }
            None if has_password => return invalid("influx.username", "required with password"),
            _ => {}
        }
        if !(1..=MAX_BATCH_LINES).contains(&self.batch_lines) {
            return invalid("influx.batch-lines", "must be 1 ..= 5000");
        }
        if self.timeout_ms == 0 {
            return invalid("influx.timeout-ms", "must be at least 1");
        }
        if self.initial_backoff_ms == 0 {
            return invalid("influx.initial-backoff-ms", "must be at least 1");
        }
        if self.max_backoff_ms < self.initial_backoff_ms {
            return invalid(
                "influx.max-backoff-ms",
                "must be at least initial-backoff-ms",
            );
        }
        if self.create_database && !v1 {
            return invalid(
                "influx.create-database",
                "only used with api = \"v1\" (create v2 buckets with the influx CLI)",
            );
        }
        Ok(())
    }

    /// The password: `password`, or the contents of `password-file`.
    pub fn resolve_password(&self) -> Result<Option<Secret>, ConfigError> {
        resolve(
            &self.password,
            self.password_file.as_deref(),
            "influx.password-file",
        )
    }

    /// The token: `token`, or the contents of `token-file`.
    pub fn resolve_token(&self) -> Result<Option<Secret>, ConfigError> {
        resolve(&self.token, self.token_file.as_deref(), "influx.token-file")
    }

    /// The base URL, parsed; call after [`InfluxConfig::validate`].
    pub fn base_url(&self) -> Result<Url, ConfigError> {
        parse_base_url(&self.url).map_err(|message| ConfigError::Invalid {
            key: "influx.url",
            message,
        })
    }
}

fn resolve(
    value: &Option<Secret>,
    file: Option<&Path>,
    key: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match (value, file) {
        (Some(secret), _) => Ok(Some(secret.clone())),
        (None, Some(path)) => Secret::from_file(path)
            .map(Some)
            .map_err(|e| ConfigError::Invalid {
                key,
                message: format!("cannot read {}: {e}", path.display()),
            }),
        (None, None) => Ok(None),
    }
}

/// Parses the base URL: `http` or `https`, a host, no credentials, no query or fragment.
fn parse_base_url(text: &str) -> Result<Url, String> {
    // The text may hold credentials, refused below once it parses.
    let url = Url::parse(text).map_err(|e| {
        format!(
            "not a URL ({e}): {:?}",
            crate::config::redact_url(text).as_ref()
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials: set username and password (or token)".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    Ok(url)
}

/// A password or token. `Debug`, `Display` and `Serialize` print `***`, so it never reaches a log,
/// an error message or `check-config`; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value of environment variable `name`, when set (and valid Unicode), taken verbatim.
    pub fn from_env(name: &str) -> Option<Secret> {
        std::env::var(name).ok().map(Secret)
    }

    /// The contents of `path` without its trailing line break (`\n` or `\r\n`).
    pub fn from_file(path: &Path) -> std::io::Result<Secret> {
        let mut text = std::fs::read_to_string(path)?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Secret(text))
    }

    /// The secret itself: for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// Why a secret was refused; never quotes the value.
const NOT_A_STRING: &str = "a secret must be a string: quote a value that looks like a number or \
                            a boolean, or use a *-file key";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Environment values are parsed, so `123` arrives as a number: quoting it, or a
                // secret file, keeps it verbatim. The value itself is never echoed.
                f.write_str(NOT_A_STRING)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            // Serde's own message would quote the value: say what is wrong without it.
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(NOT_A_STRING))
            }
        }
        deserializer.deserialize_string(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The section proposed for `config/shopflow.toml`.
    const PROPOSED: &str = r#"
[influx]
url = "http://127.0.0.1:8086"
api = "v1"
database = "shopflow"
batch-lines = 5000
gzip = false
timeout-ms = 10000
max-retries = 40
initial-backoff-ms = 100
max-backoff-ms = 10000
create-database = true
rejects-file = ""
"#;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        influx: InfluxConfig,
    }

    fn proposed() -> InfluxConfig {
        toml::from_str::<Wrapper>(PROPOSED).expect("parses").influx
    }

    fn v2() -> InfluxConfig {
        InfluxConfig {
            api: Api::V2,
            org: Some("shop".into()),
            token: Some(Secret::new("t0ken")),
            create_database: false,
            ..proposed()
        }
    }

    fn key_of(config: &InfluxConfig) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { key, message }) => {
                assert!(!message.is_empty());
                key
            }
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn the_proposed_section_parses_and_validates() {
        let config = proposed();
        config.validate().unwrap();
        assert_eq!(config.api, Api::V1);
        assert_eq!(config.batch_lines, 5_000);
        assert_eq!(config.retention_policy, None);
        assert_eq!(config.password, None);
        v2().validate().unwrap();
        let with_prefix = InfluxConfig {
            url: "https://metrics.example.com/influx/".into(),
            username: Some("shop".into()),
            password: Some(Secret::new("pw")),
            retention_policy: Some("autogen".into()),
            ..proposed()
        };
        with_prefix.validate().unwrap();
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let c = proposed;
        let cases: Vec<(InfluxConfig, &str)> = vec![
            (
                InfluxConfig {
                    url: "127.0.0.1:8086".into(),
                    ..c()
                },
                "influx.url",
            ),
            (
                InfluxConfig {
                    url: "ftp://host/".into(),
                    ..c()
                },
                "influx.url",
            ),
            (
                InfluxConfig {
                    url: "http://".into(),
                    ..c()
                },
                "influx.url",
            ),
            (
                InfluxConfig {
                    url: "http://u:p@host:8086".into(),
                    ..c()
                },
                "influx.url",
            ),
            (
                InfluxConfig {
                    url: "http://host:8086/?db=x".into(),
                    ..c()
                },
                "influx.url",
            ),
            (
                InfluxConfig {
                    database: String::new(),
                    ..c()
                },
                "influx.database",
            ),
            (
                InfluxConfig {
                    retention_policy: Some(String::new()),
                    ..c()
                },
                "influx.retention-policy",
            ),
            (
                InfluxConfig {
                    retention_policy: Some("rp".into()),
                    ..v2()
                },
                "influx.retention-policy",
            ),
            (InfluxConfig { org: None, ..v2() }, "influx.org"),
            (
                InfluxConfig {
                    org: Some(String::new()),
                    ..v2()
                },
                "influx.org",
            ),
            (
                InfluxConfig {
                    org: Some("o".into()),
                    ..c()
                },
                "influx.org",
            ),
            (
                InfluxConfig {
                    token: None,
                    ..v2()
                },
                "influx.token",
            ),
            (
                InfluxConfig {
                    token_file: Some("/t".into()),
                    ..v2()
                },
                "influx.token-file",
            ),
            (
                InfluxConfig {
                    username: Some("u".into()),
                    ..v2()
                },
                "influx.username",
            ),
            (
                InfluxConfig {
                    password: Some(Secret::new("p")),
                    ..v2()
                },
                "influx.password",
            ),
            (
                InfluxConfig {
                    username: Some("u".into()),
                    ..c()
                },
                "influx.password",
            ),
            (
                InfluxConfig {
                    password: Some(Secret::new("p")),
                    ..c()
                },
                "influx.username",
            ),
            (
                InfluxConfig {
                    username: Some("u".into()),
                    password: Some(Secret::new("p")),
                    password_file: Some("/p".into()),
                    ..c()
                },
                "influx.password-file",
            ),
            (
                InfluxConfig {
                    username: Some("u".into()),
                    password: Some(Secret::new("p")),
                    token: Some(Secret::new("t")),
                    ..c()
                },
                "influx.token",
            ),
            (
                InfluxConfig {
                    batch_lines: 0,
                    ..c()
                },
                "influx.batch-lines",
            ),
            (
                InfluxConfig {
                    batch_lines: 5_001,
                    ..c()
                },
                "influx.batch-lines",
            ),
            (
                InfluxConfig {
                    timeout_ms: 0,
                    ..c()
                },
                "influx.timeout-ms",
            ),
            (
                InfluxConfig {
                    initial_backoff_ms: 0,
                    ..c()
                },
                "influx.initial-backoff-ms",
            ),
            (
                InfluxConfig {
                    max_backoff_ms: 99,
                    ..c()
                },
                "influx.max-backoff-ms",
            ),
            (
                InfluxConfig {
                    create_database: true,
                    ..v2()
                },
                "influx.create-database",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(key_of(&config), key, "{config:?}");
        }
        let err = InfluxConfig {
            batch_lines: 0,
            ..c()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: influx.batch-lines: must be 1 ..= 5000"
        );
    }

    #[test]
    fn unknown_keys_and_bad_api_are_rejected_by_name() {
        let err = toml::from_str::<Wrapper>(&PROPOSED.replace("gzip", "gzipped"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("gzipped"), "{err}");
        let err = toml::from_str::<Wrapper>(&PROPOSED.replace("\"v1\"", "\"v3\""))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("v3"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let config = InfluxConfig {
            username: Some("shop".into()),
            password: Some(Secret::new("hunter2")),
            ..proposed()
        };
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{secret:#?}"), "***");
        assert_eq!(secret.expose(), "hunter2");
        let debug = format!("{config:?} {config:#?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("password: Some(***)"), "{debug}");
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("password = \"***\""), "{printed}");
        let v2 = v2();
        assert!(!format!("{v2:?}").contains("t0ken"));
    }

    #[test]
    fn secrets_come_from_the_file_the_value_or_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cr3t with spaces\r\n").unwrap();
        let config = InfluxConfig {
            username: Some("shop".into()),
            password_file: Some(path.clone()),
            ..proposed()
        };
        config.validate().unwrap();
        assert_eq!(
            config.resolve_password().unwrap().unwrap().expose(),
            "s3cr3t with spaces"
        );
        assert_eq!(config.resolve_token().unwrap(), None);
        let missing = InfluxConfig {
            password_file: Some(dir.path().join("absent")),
            ..config.clone()
        };
        match missing.resolve_password() {
            Err(ConfigError::Invalid { key, message }) => {
                assert_eq!(key, "influx.password-file");
                assert!(message.contains("absent"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let literal = InfluxConfig {
            token: Some(Secret::new("tok")),
            ..v2()
        };
        assert_eq!(literal.resolve_token().unwrap().unwrap().expose(), "tok");
        // SAFETY-free: a name no other test uses.
        assert_eq!(
            Secret::from_env("SHOPFLOW_TEST_NO_SUCH_SECRET_VARIABLE"),
            None
        );
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn an_environment_variable_overrides_the_password() {
        use figment::Figment;
        use figment::providers::{Env, Format, Toml};
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPFLOW_INFLUXTEST__INFLUX__USERNAME", "shop");
            jail.set_env("SHOPFLOW_INFLUXTEST__INFLUX__PASSWORD", "pa ss,word");
            let env = Env::prefixed("SHOPFLOW_INFLUXTEST__")
                .split("__")
                .map(|key| key.as_str().to_lowercase().replace('_', "-").into());
            let wrapper: Wrapper = Figment::from(Toml::string(PROPOSED))
                .merge(env.clone())
                .extract()
                .map_err(|e| e.to_string())?;
            assert_eq!(
                wrapper.influx.password.as_ref().map(Secret::expose),
                Some("pa ss,word")
            );
            wrapper.influx.validate().map_err(|e| e.to_string())?;
            // A number-like value is parsed by figment: refused with a hint, never echoed.
            jail.set_env("SHOPFLOW_INFLUXTEST__INFLUX__PASSWORD", "123456");
            let err = Figment::from(Toml::string(PROPOSED))
                .merge(env)
                .extract::<Wrapper>()
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains("quote"), "{err}");
            assert!(!err.contains("123456"), "{err}");
            Ok(())
        });
    }
}
