//! The configuration: a serde mirror of `config/shopflow.toml`, layered and validated.
//!
//! The shipped file holds every default (it is built into the binary), so there is one place to
//! read them; a user's file replaces it, and `SHOPFLOW__SECTION__KEY` environment variables
//! override single keys for containers.

use std::path::{Path, PathBuf};

use dataflows::Params;
use dataflows::windows::WindowSpec;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::generators::events::GeneratorKnobs;
use crate::sinks::influx::InfluxConfig;
use crate::sources::kafka::KafkaConfig;
use crate::sources::mysql::{MysqlConfig, MysqlError};

/// The shipped configuration, defaults for every key.
pub const DEFAULT_TOML: &str = include_str!("../config/shopflow.toml");

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key is unknown, missing, or of the wrong type.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value is out of its range.
    #[error("invalid configuration: {key}: {message}")]
    Invalid {
        /// The key, as `section.key`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The engine: workers, ticks, windows.
    pub engine: EngineConfig,
    /// The embedded generators.
    pub generator: GeneratorKnobs,
    /// The events topic.
    pub kafka: KafkaConfig,
    /// The demographics table.
    pub mysql: MysqlConfig,
    /// The InfluxDB the pipeline writes to.
    pub influx: InfluxConfig,
    /// Where results go.
    pub output: OutputConfig,
}

/// The `[engine]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EngineConfig {
    /// Worker threads per process; 0 for one per core.
    pub workers: usize,
    /// The tick length in milliseconds.
    pub tick_ms: u64,
    /// The window size in milliseconds.
    pub window_ms: u64,
    /// The allowed lateness (and window retention) in milliseconds.
    pub allowed_lateness_ms: u64,
    /// How long orders are remembered, in milliseconds.
    pub order_horizon_ms: u64,
    /// How many ticks may be produced but not yet complete, or not yet written by the sink, before
    /// the sources pause.
    pub max_ticks_in_flight: u64,
    /// Where `run` keeps checkpoints; empty for none.
    pub checkpoint_dir: PathBuf,
    /// How often `run` checkpoints, in milliseconds; a multiple of the tick.
    pub checkpoint_interval_ms: u64,
    /// With several processes: how long a process may take to connect to all the others, in
    /// milliseconds, before it gives up naming the one it could not reach.
    pub connect_timeout_ms: u64,
}

/// The `[output]` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutputConfig {
    /// Where `run` writes.
    pub sink: SinkKind,
    /// The line protocol file, or `-` for standard output.
    pub line_protocol: PathBuf,
}

/// The sinks `run` can write to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// InfluxDB over HTTP.
    Influxdb,
    /// Line protocol to a file or standard output.
    LineProtocol,
}

impl Config {
    /// Loads the configuration: `file` (or the shipped defaults), then environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let base = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?,
            None => DEFAULT_TOML.to_owned(),
        };
        Self::from_layers(
            &base,
            Env::prefixed("SHOPFLOW__")
                .split("__")
                .map(|key| key.as_str().to_lowercase().replace('_', "-").into()),
        )
    }

    /// Parses `toml` with the given environment layer on top, and validates the result.
    pub fn from_layers(toml: &str, env: Env) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Toml::string(toml))
            .merge(env)
            .extract()
            .map_err(|e| ConfigError::Parse(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        let e = &self.engine;
        if e.workers > 1024 {
            return invalid("engine.workers", "at most 1024 workers per process");
        }
        if e.tick_ms == 0 {
            return invalid("engine.tick-ms", "must be at least 1");
        }
        if e.window_ms == 0 {
            return invalid("engine.window-ms", "must be at least 1");
        }
        if e.order_horizon_ms == 0 {
            return invalid("engine.order-horizon-ms", "must be at least 1");
        }
        if e.max_ticks_in_flight == 0 {
            return invalid("engine.max-ticks-in-flight", "must be at least 1");
        }
        if e.checkpoint_interval_ms == 0 || !e.checkpoint_interval_ms.is_multiple_of(e.tick_ms) {
            return invalid(
                "engine.checkpoint-interval-ms",
                "must be a positive multiple of engine.tick-ms",
            );
        }
        if !(1..=86_400_000).contains(&e.connect_timeout_ms) {
            return invalid(
                "engine.connect-timeout-ms",
                "must be within 1 and 86400000 (a day)",
            );
        }
        if let Err(message) = self.generator.validate() {
            let key = message.split(' ').next().unwrap_or("");
            return Err(ConfigError::Invalid {
                key: GENERATOR_KEYS
                    .iter()
                    .find(|k| k.ends_with(key))
                    .copied()
                    .unwrap_or("generator"),
                message,
            });
        }
        if let Err(message) = self.kafka.validate() {
            let key = KAFKA_KEYS
                .iter()
                .find(|k| message.starts_with(**k))
                .copied()
                .unwrap_or("kafka");
            let message = message
                .split_once(": ")
                .map_or(message.clone(), |(_, m)| m.to_owned());
            return Err(ConfigError::Invalid { key, message });
        }
        self.mysql.validate().map_err(|e| match e {
            MysqlError::Config { key, message } => ConfigError::Invalid { key, message },
            other => ConfigError::Parse(other.to_string()),
        })?;
        self.influx.validate()?;
        if self.output.line_protocol.as_os_str().is_empty() {
            return invalid("output.line-protocol", "must be a path or -");
        }
        Ok(())
    }

    /// The dataflow's parameters.
    pub fn params(&self) -> Params {
        Params {
            windows: WindowSpec {
                size_ms: self.engine.window_ms,
                allowed_lateness_ms: self.engine.allowed_lateness_ms,
            },
            order_horizon_ms: self.engine.order_horizon_ms,
        }
    }

    /// The configuration as TOML, for `check-config`.
    pub fn to_toml(&self) -> String {
        // Passwords inside URLs are secrets too.
        let mut shown = self.clone();
        shown.mysql.url = crate::sources::mysql::mask_url(&shown.mysql.url).into_owned();
        for (key, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = "***".to_owned();
            }
        }
        shown.kafka.schema_registry_url =
            crate::sources::mysql::mask_url(&shown.kafka.schema_registry_url).into_owned();
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// Whether a librdkafka property holds a secret (passwords, keys, tokens, OAuth configuration).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "oauthbearer.config",
        "ssl.key.pem",
        "ssl_key",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// One line for a figment error: the key, what is wrong, and which layer said so.
fn describe(error: &figment::Error) -> String {
    let key = error.path.join(".");
    let mut line = if key.is_empty() {
        error.kind.to_string()
    } else {
        format!("{key}: {}", error.kind)
    };
    if let Some(metadata) = &error.metadata {
        line.push_str(&format!(" (from {})", metadata.name));
    }
    line
}

/// The Kafka section's keys, to name the one a validation message is about.
const KAFKA_KEYS: &[&str] = &[
    "kafka.brokers",
    "kafka.topic",
    "kafka.dead-letter-topic",
    "kafka.partitions",
    "kafka.group-id",
    "kafka.max-poll-messages",
    "kafka.max-message-bytes",
    "kafka.schema-registry-url",
];

/// The generator's keys, to name the one a validation message is about.
const GENERATOR_KEYS: &[&str] = &[
    "generator.events-per-second",
    "generator.campaigns",
    "generator.campaign-zipf-exponent",
    "generator.conversion-share",
    "generator.funnel-span",
    "generator.median-order-cents",
    "generator.late-share",
    "generator.refund-share",
    "generator.duplicate-share",
    "generator.unknown-user-share",
    "generator.demographic-changes-per-second",
    "generator.users",
];

/// No environment variables: what the configuration layers read in tests, so a developer's own
/// `SHOPFLOW__*` settings never leak into them.
#[cfg(test)]
pub(crate) fn no_env() -> Env {
    Env::prefixed("SHOPFLOW_TEST_UNSET_PREFIX__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_parses_and_validates() {
        let config = Config::from_layers(DEFAULT_TOML, no_env()).unwrap();
        assert_eq!(config.engine.tick_ms, 1_000);
        assert_eq!(config.generator.users, 100_000);
        assert_eq!(config.generator.events_per_second, 1.0);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let unknown = DEFAULT_TOML.replace("tick-ms = 1000", "tick-ms = 1000\ntick-sm = 5");
        let err = Config::from_layers(&unknown, no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tick-sm"), "{err}");
        let wrong_type = DEFAULT_TOML.replace("tick-ms = 1000", "tick-ms = \"fast\"");
        let err = Config::from_layers(&wrong_type, no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tick-ms"), "{err}");
        let zero = DEFAULT_TOML.replace("tick-ms = 1000", "tick-ms = 0");
        let err = Config::from_layers(&zero, no_env())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "invalid configuration: engine.tick-ms: must be at least 1"
        );
        let share = DEFAULT_TOML.replace("late-share = 0.05", "late-share = 2.0");
        let err = Config::from_layers(&share, no_env())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid configuration: generator.late-share:"),
            "{err}"
        );
    }

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn environment_overrides_a_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHOPFLOW__ENGINE__TICK_MS", "250");
            jail.set_env("SHOPFLOW__GENERATOR__EVENTS_PER_SECOND", "99.5");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.engine.tick_ms, 250);
            assert_eq!(config.generator.events_per_second, 99.5);
            Ok(())
        });
    }
}
