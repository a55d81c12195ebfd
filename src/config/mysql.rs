//! The `[mysql]` section: where the demographics table lives and how to reach it.

use std::fmt;
use std::path::PathBuf;

use mysql::Opts;
use serde::{Deserialize, Serialize, Serializer};

/// A `[mysql]` value is unusable: what [`MysqlConfig::validate`] finds, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct MysqlConfigError {
    /// The key, as `mysql.key`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The environment variable a password is read from when the configuration names none.
pub const PASSWORD_ENV: &str = "SHOPFLOW_MYSQL_PASSWORD";

/// The `[mysql]` section: where the demographics table lives and how to reach it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MysqlConfig {
    /// `mysql://user@host:port/database`. The password comes from `password`, else
    /// `password-file`, else the URL (`user:password@`), else `SHOPFLOW_MYSQL_PASSWORD`.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: String,
    /// The password; printed and serialized as `***`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_masked"
    )]
    pub password: Option<String>,
    /// A file holding the password (a trailing newline is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The table: `[A-Za-z_][A-Za-z0-9_]{0,63}`.
    pub table: String,
    /// Rows per INSERT statement when loading.
    pub load_batch_rows: usize,
    /// The replica server id the binlog follower registers with; unique among the server's
    /// replicas, and not the server's own. 0 picks a random id per start.
    pub server_id: u32,
    /// How long one connection attempt may take, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How many times a failed connection is retried, with exponential backoff, before giving up:
    /// at start, and each time the binlog follower loses its connection.
    pub connect_retries: u32,
    /// Whether connections use TLS, and what of the server's certificate is checked.
    #[serde(default)]
    pub tls: MysqlTls,
    /// The CA certificates (PEM, or one DER) the server's certificate must chain to, with
    /// `tls = "verify-ca"` or `"verify-full"`; the system's roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

/// `mysql.tls`: whether connections use TLS (native-tls, as reqwest does), and what of the
/// server's certificate is checked. Any mode but `off` refuses a server without TLS, and connects
/// over TCP even to a local server (the local socket would carry no TLS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MysqlTls {
    /// Plain TCP (or the local socket).
    #[default]
    Off,
    /// Encrypted, the certificate not checked (protects from eavesdropping, not from a
    /// man in the middle).
    Required,
    /// Encrypted, the certificate checked against `tls-ca-file` (or the system's roots); its
    /// host name not checked.
    VerifyCa,
    /// Encrypted, the certificate checked as `verify-ca` does and its host name against the
    /// URL's host.
    VerifyFull,
}

impl Default for MysqlConfig {
    fn default() -> MysqlConfig {
        MysqlConfig {
            url: "mysql://shopflow@127.0.0.1:3306/shopflow".into(),
            password: None,
            password_file: None,
            table: "demographics".into(),
            load_batch_rows: 1_000,
            server_id: 0,
            connect_timeout_ms: 5_000,
            connect_retries: 5,
            tls: MysqlTls::Off,
            tls_ca_file: None,
        }
    }
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &mask_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("password_file", &self.password_file)
            .field("table", &self.table)
            .field("load_batch_rows", &self.load_batch_rows)
            .field("server_id", &self.server_id)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("connect_retries", &self.connect_retries)
            .field("tls", &self.tls)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

fn serialize_masked<S: Serializer>(_: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("***")
}

fn serialize_masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_url(url))
}

/// The URL with the password in its user info, if any, replaced by `***`.
pub use crate::config::redact_url as mask_url;

/// Whether `name` is an identifier that may be spliced into SQL: `[A-Za-z_][A-Za-z0-9_]{0,63}`.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl MysqlConfig {
    /// The default configuration for `url`.
    pub fn new(url: impl Into<String>) -> MysqlConfig {
        MysqlConfig {
            url: url.into(),
            ..MysqlConfig::default()
        }
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), MysqlConfigError> {
        let invalid = |key, message: String| Err(MysqlConfigError { key, message });
        if !self.url.starts_with("mysql://") {
            return invalid(
                "mysql.url",
                "must look like mysql://user@host:port/database".into(),
            );
        }
        let opts = match Opts::from_url(&self.url) {
            Ok(opts) => opts,
            Err(e) => return invalid("mysql.url", format!("cannot parse: {e}")),
        };
        if opts.get_db_name().is_none_or(str::is_empty) {
            return invalid(
                "mysql.url",
                "must name the database: mysql://user@host:port/database".into(),
            );
        }
        if opts.get_user().is_none_or(str::is_empty) {
            return invalid(
                "mysql.url",
                "must name the user: mysql://user@host:port/database".into(),
            );
        }
        if self.password.is_some() && self.password_file.is_some() {
            return invalid(
                "mysql.password-file",
                "set either password or password-file, not both".into(),
            );
        }
        if !is_identifier(&self.table) {
            return invalid(
                "mysql.table",
                format!(
                    "{:?} is not an identifier [A-Za-z_][A-Za-z0-9_]{{0,63}}",
                    self.table
                ),
            );
        }
        if !(1..=10_000).contains(&self.load_batch_rows) {
            return invalid("mysql.load-batch-rows", "must be 1 to 10000".into());
        }
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            return invalid(
                "mysql.connect-timeout-ms",
                "must be 1 to 600000 (10 minutes)".into(),
            );
        }
        if self.connect_retries > 100 {
            return invalid("mysql.connect-retries", "must be at most 100".into());
        }
        if self.tls_ca_file.is_some() && matches!(self.tls, MysqlTls::Off | MysqlTls::Required) {
            return invalid(
                "mysql.tls-ca-file",
                "is used only with tls = \"verify-ca\" or \"verify-full\"".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_masks() {
        assert!(is_identifier("demographics"));
        assert!(is_identifier("_t9"));
        assert!(!is_identifier("9t"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("t`; DROP TABLE x; --"));
        assert!(!is_identifier(&"a".repeat(65)));
        assert!(is_identifier(&"a".repeat(64)));
        assert_eq!(
            mask_url("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(mask_url("mysql://u@h:3306/db"), "mysql://u@h:3306/db");
        assert_eq!(mask_url("mysql://h/db"), "mysql://h/db");
    }

    #[test]
    fn config_validation_names_the_key() {
        let ok = MysqlConfig::new("mysql://u@h:3306/db");
        ok.validate().unwrap();
        let err = |c: MysqlConfig| c.validate().unwrap_err().to_string();
        assert!(
            err(MysqlConfig {
                table: "x; drop".into(),
                ..ok.clone()
            })
            .contains("mysql.table")
        );
        assert!(err(MysqlConfig::new("mysql://u@h:3306")).contains("mysql.url"));
        assert!(err(MysqlConfig::new("postgres://u@h/db")).contains("mysql.url"));
        assert!(
            err(MysqlConfig {
                load_batch_rows: 0,
                ..ok.clone()
            })
            .contains("mysql.load-batch-rows")
        );
        assert!(
            err(MysqlConfig {
                connect_retries: 1000,
                ..ok.clone()
            })
            .contains("mysql.connect-retries")
        );
        assert!(
            err(MysqlConfig {
                password: Some("a".into()),
                password_file: Some("/p".into()),
                ..ok.clone()
            })
            .contains("mysql.password-file")
        );
    }
}
