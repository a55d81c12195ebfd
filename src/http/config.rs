//! The `[http]` section: where the server listens and what health and readiness mean.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The `[http]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpConfig {
    /// `host:port` to listen on, or `off`. A busy port falls back to any free one (said when
    /// printed), so that several processes on one host each get a server.
    pub listen: String,
    /// `/ready` fails while the consumer lag (messages not yet read) exceeds this.
    pub ready_max_lag: u64,
    /// `/ready` fails when the sources have not answered, or the sink has not acknowledged what
    /// it was handed, for longer than this (milliseconds).
    pub ready_stall_ms: u64,
    /// `/health` fails when a worker has not stepped for longer than this (milliseconds).
    pub health_stall_ms: u64,
    /// How many of the most recent windows the sink thread keeps for `/api/rows` and
    /// `/api/windows` (all measurements together).
    pub recent_windows: usize,
}

/// What `listen` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// No server.
    Off,
    /// A server on this address.
    On(SocketAddr),
}

impl HttpConfig {
    /// Checks the values: `(key, message)` for the first bad one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        Listen::parse(&self.listen).map_err(|m| ("http.listen", m))?;
        if self.ready_stall_ms == 0 {
            return Err(("http.ready-stall-ms", "must be at least 1".into()));
        }
        if self.health_stall_ms == 0 {
            return Err(("http.health-stall-ms", "must be at least 1".into()));
        }
        if !(1..=10_000).contains(&self.recent_windows) {
            return Err(("http.recent-windows", "must be within 1 and 10000".into()));
        }
        Ok(())
    }
}

impl Listen {
    /// Parses `off` or an IP `address:port` (`127.0.0.1:8080`, `[::1]:0`, `0.0.0.0:8080`).
    ///
    /// ```
    /// use shopflow::http::config::Listen;
    ///
    /// assert_eq!(Listen::parse("off"), Ok(Listen::Off));
    /// assert!(matches!(Listen::parse("127.0.0.1:0"), Ok(Listen::On(_))));
    /// assert!(Listen::parse("localhost").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Listen, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        text.parse::<SocketAddr>().map(Listen::On).map_err(|_| {
            "must be `off` or an IP address and port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080".into()
        })
    }
}
