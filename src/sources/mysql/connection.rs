//! Connections: opening them, and retrying with backoff while the server is away.

use std::time::Duration;

use mysql::{Conn, Opts, OptsBuilder, SslOpts};

use super::error::MysqlError;
use crate::config::mysql::{MysqlConfig, MysqlTls, PASSWORD_ENV};
use crate::retry::{RetryPolicy, Verdict};

/// How connections are retried: after 100 ms, doubling up to 5 s; `connect-retries` bounds them.
pub(super) const RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// Whether a connection error may go away by itself.
pub(super) fn retryable(error: &mysql::Error) -> bool {
    match error {
        // A server without TLS will not grow it.
        mysql::Error::DriverError(mysql::DriverError::TlsNotSupported) => false,
        mysql::Error::IoError(_) | mysql::Error::DriverError(_) => true,
        // Too many connections, server shutting down, connection killed.
        mysql::Error::MySqlError(e) => matches!(e.code, 1040 | 1053 | 1927),
        _ => false,
    }
}

/// Calls `f` until it succeeds, fails with an error that is not [`retryable`], or has failed
/// `retries + 1` times, sleeping by [`RETRY`] in between. The error comes with the number of
/// attempts made.
pub(super) fn retrying<T>(
    addr: &str,
    retries: u32,
    mut f: impl FnMut() -> Result<T, mysql::Error>,
) -> Result<T, (u32, mysql::Error)> {
    RETRY
        .with_retries(retries)
        .run(
            None,
            |_| f(),
            |e| {
                if retryable(e) {
                    Verdict::Retry
                } else {
                    Verdict::Fatal
                }
            },
            |e, retry| {
                let delay = retry.wait;
                tracing::warn!(%addr, attempt = retry.attempt, of = retries + 1, error = %e, ?delay, "MySQL connection failed; retrying");
            },
        )
        .map_err(|gave_up| (gave_up.attempts, gave_up.error))
}

/// A connection, retried with bounded exponential backoff.
pub(crate) fn connect(config: &MysqlConfig) -> Result<Conn, MysqlError> {
    let opts = config.opts()?;
    let addr = endpoint(&opts);
    retrying(&addr, config.connect_retries, || Conn::new(opts.clone())).map_err(|(attempts, e)| {
        MysqlError::Connect {
            addr: addr.clone(),
            attempts,
            detail: e.to_string(),
        }
    })
}

/// How to reach the server the `[mysql]` section names.
impl MysqlConfig {
    /// The password: `password`, else `password-file`, else the URL's, else the environment's
    /// `SHOPFLOW_MYSQL_PASSWORD` (a fallback, like the mysql client's `MYSQL_PWD`).
    fn resolve_password(&self, opts: &Opts) -> Result<Option<String>, MysqlError> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| MysqlError::Config {
                key: "mysql.password-file",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if let Some(password) = opts.get_pass() {
            return Ok(Some(password.to_owned()));
        }
        Ok(std::env::var(PASSWORD_ENV).ok())
    }

    /// The validated connection options.
    pub(super) fn opts(&self) -> Result<Opts, MysqlError> {
        self.validate()?;
        let opts = Opts::from_url(&self.url).map_err(|e| MysqlError::Config {
            key: "mysql.url",
            message: format!("cannot parse: {e}"),
        })?;
        let password = self.resolve_password(&opts)?;
        let builder = OptsBuilder::from_opts(opts)
            .pass(password)
            .tcp_connect_timeout(Some(self.connect_timeout()));
        Ok(match self.ssl_opts()? {
            // TLS asked for is TLS used: never the local socket, which carries none.
            Some(ssl) => builder.ssl_opts(ssl).prefer_socket(false),
            None => builder,
        }
        .into())
    }

    /// The TLS options of `tls` and `tls-ca-file`; `None` when `tls = "off"`.
    fn ssl_opts(&self) -> Result<Option<SslOpts>, MysqlError> {
        let ca = match &self.tls_ca_file {
            // Checked here: the driver would report a missing file as a connection error, and
            // retry it.
            Some(path) => match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => Some(path.clone()),
                Ok(_) => {
                    return Err(MysqlError::Config {
                        key: "mysql.tls-ca-file",
                        message: format!("{} is not a file", path.display()),
                    });
                }
                Err(e) => {
                    return Err(MysqlError::Config {
                        key: "mysql.tls-ca-file",
                        message: format!("cannot read {}: {e}", path.display()),
                    });
                }
            },
            None => None,
        };
        let verified = || SslOpts::default().with_root_cert_path(ca.clone());
        Ok(match self.tls {
            MysqlTls::Off => None,
            MysqlTls::Required => Some(
                SslOpts::default()
                    .with_danger_accept_invalid_certs(true)
                    .with_danger_skip_domain_validation(true),
            ),
            MysqlTls::VerifyCa => Some(verified().with_danger_skip_domain_validation(true)),
            MysqlTls::VerifyFull => Some(verified()),
        })
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The database named by the URL.
    pub(super) fn database(&self) -> Result<String, MysqlError> {
        Ok(self.opts()?.get_db_name().unwrap_or_default().to_owned())
    }
}

/// `host:port` of the options, for messages.
pub(super) fn endpoint(opts: &Opts) -> String {
    format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_become_the_drivers_options() {
        let ca = tempfile::NamedTempFile::new().expect("a file");
        let config = |tls, ca_file: Option<&std::path::Path>| MysqlConfig {
            tls,
            tls_ca_file: ca_file.map(Into::into),
            ..MysqlConfig::new("mysql://u@localhost:3306/db")
        };
        let opts = config(MysqlTls::Off, None).opts().expect("opts");
        assert_eq!(opts.get_ssl_opts(), None);
        let opts = config(MysqlTls::Required, None).opts().expect("opts");
        let ssl = opts.get_ssl_opts().expect("tls");
        assert!(ssl.accept_invalid_certs() && ssl.skip_domain_validation());
        assert!(
            !opts.get_prefer_socket(),
            "TLS is never skipped for the socket"
        );
        let opts = config(MysqlTls::VerifyCa, Some(ca.path()))
            .opts()
            .expect("opts");
        let ssl = opts.get_ssl_opts().expect("tls");
        assert!(!ssl.accept_invalid_certs() && ssl.skip_domain_validation());
        assert_eq!(ssl.root_cert_path(), Some(ca.path()));
        let opts = config(MysqlTls::VerifyFull, None).opts().expect("opts");
        let ssl = opts.get_ssl_opts().expect("tls");
        assert!(!ssl.accept_invalid_certs() && !ssl.skip_domain_validation());
        assert_eq!(ssl.root_cert_path(), None);

        let err = |c: MysqlConfig| c.opts().unwrap_err().to_string();
        assert!(
            err(config(MysqlTls::Required, Some(ca.path()))).contains("mysql.tls-ca-file"),
            "a CA file that would not be used"
        );
        let missing = ca.path().with_extension("missing");
        let message = err(config(MysqlTls::VerifyFull, Some(&missing)));
        assert!(
            message.contains("mysql.tls-ca-file") && message.contains("cannot read"),
            "{message}"
        );
        for (text, mode) in [
            ("off", MysqlTls::Off),
            ("required", MysqlTls::Required),
            ("verify-ca", MysqlTls::VerifyCa),
            ("verify-full", MysqlTls::VerifyFull),
        ] {
            let parsed: MysqlTls = toml::Value::String(text.into()).try_into().expect("a mode");
            assert_eq!(parsed, mode);
        }
        assert!(
            toml::Value::String("on".into())
                .try_into::<MysqlTls>()
                .is_err()
        );
    }
}
