//! The configuration: a serde mirror of `config/shopflow.toml`, layered and validated.
//!
//! The shipped file holds every default (it is built into the binary), so there is one place to
//! read them. Layers override it key by key, lowest first: the built-in defaults, a user's
//! `--config` file (which may set only some keys), `SHOPFLOW__SECTION__KEY` environment variables,
//! then command-line flags. An error names the layer that set the bad value, and never prints a
//! value that may be a secret.
//!
//! Each source's and sink's section is plain data in a module of its own ([`kafka`], [`mysql`],
//! [`influx`]), apart from how it runs: the clients and connections made from it live with the
//! source or sink that uses it.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use dataflows::Params;
use dataflows::windows::WindowSpec;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider, Source};
use serde::{Deserialize, Serialize};

use crate::generators::events::GeneratorKnobs;

use self::influx::InfluxConfig;
use self::kafka::KafkaConfig;
use self::mysql::{MysqlConfig, MysqlConfigError};

pub mod http;
pub mod influx;
pub mod kafka;
pub mod mysql;

/// The shipped configuration, defaults for every key.
pub const DEFAULT_TOML: &str = include_str!("../../config/shopflow.toml");

/// The most worker threads per process, for `engine.workers` and the `-w` flag alike: far more
/// than any machine has cores, and far below what makes timely's per-worker buffers exhaust memory.
pub const MAX_WORKERS: usize = 1024;

/// The prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "SHOPFLOW__";

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
    /// The file is not TOML. The line is not quoted: it may hold a secret.
    #[error("cannot parse config file {path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where (line and column) and what is wrong.
        message: String,
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
    /// An error about a value that a layer above the built-in defaults set.
    #[error("{error} ({origin})")]
    Layer {
        /// The error.
        error: Box<ConfigError>,
        /// Which layer set the value: `in FILE` or `from environment variable NAME`.
        origin: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The engine: workers, ticks, windows.
    pub engine: EngineConfig,
    /// How log lines look.
    pub log: crate::logging::LogConfig,
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
    /// The HTTP server of `demo` and `run`.
    pub http: http::HttpConfig,
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
    /// milliseconds, before it gives up naming the one it could not reach; also how long the
    /// Kafka readers wait for brokers that cannot be reached at start.
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
    /// Loads the configuration: the built-in defaults, then `file` (any subset of the keys), then
    /// the `SHOPFLOW__SECTION__KEY` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Named::new(
            Toml::string(DEFAULT_TOML),
            Metadata::named(DEFAULTS_NAME),
        ));
        if let Some(path) = file {
            figment = figment.merge(file_layer(path)?);
        }
        Self::extract(with_env(figment, environment()))
    }

    /// Parses `toml` as the defaults with the given environment layer on top, and validates the
    /// result.
    pub fn from_layers(toml: &str, env: Env) -> Result<Config, ConfigError> {
        let defaults = Named::new(Toml::string(toml), Metadata::named(DEFAULTS_NAME));
        Self::extract(with_env(Figment::from(defaults), env))
    }

    /// The layers' result, validated; an error names the layer that set the value.
    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Parse(describe(&e)))?;
        config
            .kafka
            .resolve_properties()
            .map_err(|message| ConfigError::Invalid {
                key: "kafka.properties",
                message,
            })?;
        config.validate().map_err(|error| match &error {
            ConfigError::Invalid { key, .. } => match figment
                .find_metadata(key)
                .and_then(|metadata| origin(metadata, key))
            {
                Some(origin) => ConfigError::Layer {
                    error: Box::new(error),
                    origin,
                },
                None => error,
            },
            _ => error,
        })?;
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
        if e.workers > MAX_WORKERS {
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
        self.mysql
            .validate()
            .map_err(|MysqlConfigError { key, message }| ConfigError::Invalid { key, message })?;
        self.influx.validate()?;
        if self.output.line_protocol.as_os_str().is_empty() {
            return invalid("output.line-protocol", "must be a path or -");
        }
        if let Err((key, message)) = self.http.validate() {
            return Err(ConfigError::Invalid { key, message });
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

    /// The configuration as TOML, for `check-config`: every secret prints as `***`.
    pub fn to_toml(&self) -> String {
        // Passwords inside URLs are secrets too.
        let mut shown = self.clone();
        shown.mysql.url = redact_url(&shown.mysql.url).into_owned();
        for (key, value) in shown.kafka.properties.iter_mut() {
            if is_secret_property(key) {
                *value = "***".to_owned();
            }
        }
        shown.kafka.schema_registry_url = redact_url(&shown.kafka.schema_registry_url).into_owned();
        shown.influx.url = redact_url(&shown.influx.url).into_owned();
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print: {e}"))
    }
}

/// Whether a librdkafka property holds a secret: passwords, keys, tokens, every SASL setting,
/// the private key's settings, OAuth configuration.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("sasl.")
        || key.starts_with("ssl.key.")
        || key.starts_with("ssl_key")
        || ["password", "secret", "token", "oauthbearer", "keystore"]
            .iter()
            .any(|s| key.contains(s))
}

/// `url` with the password of its user info, if any, replaced by `***`: the one way a URL that
/// may carry credentials is printed. It works on text that does not parse as a URL too (such text
/// is what error messages are about), so it takes the user info to end at the last `@`: a password
/// may hold an unencoded `/`, `?`, `#` or `@`, and masking some of a path by mistake is harmless.
///
/// ```
/// use shopflow::config::redact_url;
///
/// assert_eq!(redact_url("mysql://u:pw@h:3306/db"), "mysql://u:***@h:3306/db");
/// assert_eq!(redact_url("http://u:p/w@h:99999"), "http://u:***@h:99999");
/// assert_eq!(redact_url("http://u@h/x"), "http://u@h/x");
/// ```
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let after_scheme = match url.find("://") {
        Some(i)
            if i > 0
                && url[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
        {
            i + 3
        }
        _ => 0,
    };
    let Some(at) = url[after_scheme..].rfind('@').map(|i| after_scheme + i) else {
        return Cow::Borrowed(url);
    };
    match url[after_scheme..at].find(':') {
        Some(colon) => Cow::Owned(format!(
            "{}:***{}",
            &url[..after_scheme + colon],
            &url[at..]
        )),
        None => Cow::Borrowed(url),
    }
}

/// Whether a configuration key's value may be a secret, or hold one (a URL's credentials, a
/// librdkafka property, a whole section): its value is never printed in an error.
fn is_secret_key(key: &str) -> bool {
    let segments: Vec<&str> = key.split('.').collect();
    segments.len() < 2
        || key.starts_with("kafka.properties")
        || segments.iter().any(|s| {
            ["password", "secret", "token", "credential", "url"]
                .iter()
                .any(|word| s.contains(word))
        })
}

/// Whether an environment variable's value is taken verbatim rather than parsed: a password or
/// token is a string whatever it looks like (`84736251`, `true`, ` x `, `[1]`), and so is every
/// librdkafka property (`SHOPFLOW__KAFKA__PROPERTIES__LINGER_MS=5` is the string `5`).
fn is_verbatim_key(key: &str) -> bool {
    key.starts_with("kafka.properties.")
        || key.rsplit('.').next().is_some_and(|last| {
            ["password", "secret", "token"]
                .iter()
                .any(|word| last.contains(word))
        })
}

/// The name of the layer of the built-in defaults.
const DEFAULTS_NAME: &str = "built-in defaults";

/// The environment layer: `SHOPFLOW__SECTION__KEY`, its underscores standing for dashes.
fn environment() -> Env {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .map(|key| key.as_str().to_lowercase().replace('_', "-").into())
}

/// The environment variable of a key, as docs/running.md spells it.
fn env_var(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.split('.')
            .map(|s| s.to_ascii_uppercase().replace('-', "_"))
            .collect::<Vec<_>>()
            .join("__")
    )
}

/// `figment` with `env` on top: secret keys verbatim, each a layer of its own that names its
/// variable, and the other keys parsed (numbers, booleans, arrays, tables).
fn with_env(figment: Figment, env: Env) -> Figment {
    let verbatim: Vec<(String, String)> = env
        .iter()
        .filter(|(key, _)| is_verbatim_key(key.as_str()))
        .map(|(key, value)| (key.as_str().to_owned(), value))
        .collect();
    let mut figment = figment.merge(env.filter(|key| !is_verbatim_key(key.as_str())));
    for (key, value) in verbatim {
        let name = format!("environment variable {}", env_var(&key));
        figment = figment.merge(Named::new(
            Serialized::default(&key, value),
            Metadata::named(name),
        ));
    }
    figment
}

/// The `--config` file as a layer. It is parsed here first, so that a syntax error says the line
/// and column without quoting the line, which may hold a secret.
fn file_layer(path: &Path) -> Result<Named<figment::providers::Data<Toml>>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if let Err(error) = toml::from_str::<toml::Table>(&text) {
        let at = error.span().map_or_else(String::new, |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
                .chars()
                .count()
                + 1;
            format!("line {line}, column {column}: ")
        });
        return Err(ConfigError::Syntax {
            path: path.into(),
            message: format!("{at}{}", error.message().trim_end()),
        });
    }
    Ok(Named::new(
        Toml::string(&text),
        Metadata::from("config file", path),
    ))
}

/// A provider under another name: which layer a value came from, for error messages.
struct Named<P> {
    inner: P,
    metadata: Metadata,
}

impl<P: Provider> Named<P> {
    fn new(inner: P, metadata: Metadata) -> Named<P> {
        Named { inner, metadata }
    }
}

impl<P: Provider> Provider for Named<P> {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        self.inner.data()
    }
}

/// Where `key`'s value was set, for an error message: `in FILE`, `from environment variable
/// NAME`; `None` for the built-in defaults.
fn origin(metadata: &Metadata, key: &str) -> Option<String> {
    if let Some(Source::File(path)) = &metadata.source {
        return Some(format!("in {}", path.display()));
    }
    if metadata.name.starts_with("environment variable ") {
        return Some(format!("from {}", metadata.name));
    }
    if metadata.name.contains("environment variable") {
        // figment's own environment layer: the variable is the longest one set that is a prefix
        // of the key (a table given whole, like SHOPFLOW__KAFKA__PROPERTIES, holds deeper keys).
        let var = environment()
            .iter()
            .map(|(k, _)| k.as_str().to_owned())
            .filter(|k| key == k || key.starts_with(&format!("{k}.")))
            .max_by_key(String::len)
            .map_or_else(|| env_var(key), |k| env_var(&k));
        return Some(format!("from environment variable {var}"));
    }
    None
}

/// One line for a figment error: the key, what is wrong, and which layer said so. The value is
/// not quoted where it may be a secret.
fn describe(error: &figment::Error) -> String {
    use figment::error::{Actual, Kind};
    let key = error.path.join(".");
    let kind = match &error.kind {
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected)
            if is_secret_key(&key) =>
        {
            let what = match actual {
                Actual::Bool(_) => "a boolean",
                Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
                Actual::Float(_) => "a float",
                Actual::Char(_) | Actual::Str(_) => "a string",
                Actual::Bytes(_) => "bytes",
                Actual::Seq => "an array",
                Actual::Map => "a table",
                _ => "a value",
            };
            let problem = if matches!(error.kind, Kind::InvalidType(..)) {
                "invalid type"
            } else {
                "invalid value"
            };
            format!("{problem}: found {what} (not shown), expected {expected}")
        }
        other => other.to_string(),
    };
    let mut line = if key.is_empty() {
        kind
    } else {
        format!("{key}: {kind}")
    };
    if let Some(origin) = error
        .metadata
        .as_ref()
        .and_then(|metadata| origin(metadata, &key))
    {
        line.push_str(&format!(" ({origin})"));
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

    /// A `--config` file may set a few keys: the others keep their defaults, the environment
    /// overrides the file, and an error names the file or the variable that set the bad value.
    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn a_partial_file_layers_over_the_defaults_and_errors_name_their_source() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_owned();
            jail.create_file(
                "partial.toml",
                "[engine]\ntick-ms = 250\n\n[kafka]\ntopic = \"t\"\n",
            )?;
            let config =
                Config::load(Some(&dir.join("partial.toml"))).map_err(|e| e.to_string())?;
            let defaults =
                Config::from_layers(DEFAULT_TOML, no_env()).map_err(|e| e.to_string())?;
            assert_eq!(config.engine.tick_ms, 250);
            assert_eq!(config.kafka.topic, "t");
            assert_eq!(config.engine.window_ms, defaults.engine.window_ms);
            assert_eq!(config.mysql, defaults.mysql);
            jail.set_env("SHOPFLOW__ENGINE__TICK_MS", "500");
            let config =
                Config::load(Some(&dir.join("partial.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(
                config.engine.tick_ms, 500,
                "the environment is above the file"
            );

            let err = |file: &str| {
                Config::load(Some(&dir.join(file)))
                    .expect_err("refused")
                    .to_string()
            };
            jail.set_env("SHOPFLOW__ENGINE__TICK_MS", "fast");
            assert_eq!(
                err("partial.toml"),
                "invalid configuration: engine.tick-ms: invalid type: found string \"fast\", \
                 expected u64 (from environment variable SHOPFLOW__ENGINE__TICK_MS)"
            );
            jail.set_env("SHOPFLOW__ENGINE__TICK_MS", "0");
            assert_eq!(
                err("partial.toml"),
                "invalid configuration: engine.tick-ms: must be at least 1 \
                 (from environment variable SHOPFLOW__ENGINE__TICK_MS)"
            );
            jail.set_env("SHOPFLOW__ENGINE__TICK_MS", "1000");
            jail.create_file("zero.toml", "[engine]\ncheckpoint-interval-ms = 0\n")?;
            assert_eq!(
                err("zero.toml"),
                format!(
                    "invalid configuration: engine.checkpoint-interval-ms: must be a positive \
                     multiple of engine.tick-ms (in {})",
                    dir.join("zero.toml").display()
                )
            );
            jail.create_file("typo.toml", "[engine]\ntick-sm = 5\n")?;
            let typo = err("typo.toml");
            assert!(typo.contains("tick-sm"), "{typo}");
            assert!(
                typo.contains(&dir.join("typo.toml").display().to_string()),
                "{typo}"
            );
            assert!(!typo.contains("environment"), "{typo}");
            jail.create_file("wrong.toml", "[engine]\nwindow-ms = \"long\"\n")?;
            let wrong = err("wrong.toml");
            assert!(
                wrong.starts_with("invalid configuration: engine.window-ms: "),
                "{wrong}"
            );
            assert!(
                wrong.ends_with(&format!("(in {})", dir.join("wrong.toml").display())),
                "{wrong}"
            );
            jail.create_file("syntax.toml", "[engine]\n\ntick-ms = = 5\n")?;
            let syntax = err("syntax.toml");
            assert!(syntax.contains("line 3, column"), "{syntax}");
            let missing = err("missing.toml");
            assert!(missing.starts_with("cannot read config file"), "{missing}");
            Ok(())
        });
    }

    /// A password is a string whatever it looks like, and no configuration error prints a
    /// secret: not a number where a string belongs, not a malformed table of librdkafka
    /// properties, not a TOML syntax error on a password's line.
    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn secrets_are_strings_and_never_printed() {
        figment::Jail::expect_with(|jail| {
            let dir = jail.directory().to_owned();
            jail.set_env("SHOPFLOW__MYSQL__PASSWORD", "84736251");
            jail.set_env("SHOPFLOW__INFLUX__USERNAME", "shop");
            jail.set_env("SHOPFLOW__INFLUX__PASSWORD", " 007 ");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.mysql.password.as_deref(), Some("84736251"));
            let influx = config
                .influx
                .password
                .as_ref()
                .map(|p| p.expose().to_owned());
            assert_eq!(influx.as_deref(), Some(" 007 "), "verbatim");
            let shown = config.to_toml();
            assert!(
                !shown.contains("84736251") && !shown.contains("007"),
                "{shown}"
            );

            jail.clear_env();
            let refused = |file: Option<&str>| {
                Config::load(file.map(|f| dir.join(f)).as_deref())
                    .expect_err("refused")
                    .to_string()
            };
            jail.create_file("number.toml", "[mysql]\npassword = 84736252\n")?;
            let err = refused(Some("number.toml"));
            assert!(
                err.contains("mysql.password") && !err.contains("84736252"),
                "{err}"
            );
            jail.create_file("syntax.toml", "[mysql]\npassword = S3CRET-syntax\n")?;
            let err = refused(Some("syntax.toml"));
            assert!(err.contains("line 2") && !err.contains("S3CRET"), "{err}");
            jail.create_file(
                "url.toml",
                "[influx]\nurl = \"http://u:S3CRET-influx@127.0.0.1:99999\"\n",
            )?;
            let err = refused(Some("url.toml"));
            assert!(
                err.contains("influx.url") && !err.contains("S3CRET"),
                "{err}"
            );
            jail.create_file(
                "props.toml",
                "[kafka.properties]\n\"sasl.password\" = 1234567\n",
            )?;
            let err = refused(Some("props.toml"));
            assert!(!err.contains("1234567"), "{err}");
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES",
                "{sasl.password=\"S3CRET-props\"",
            );
            let err = refused(None);
            assert!(
                err.contains("SHOPFLOW__KAFKA__PROPERTIES") && !err.contains("S3CRET"),
                "{err}"
            );
            jail.set_env("SHOPFLOW__KAFKA__PROPERTIES", "[\"S3CRET-props\"]");
            let err = refused(None);
            assert!(!err.contains("S3CRET"), "{err}");
            jail.clear_env();
            jail.set_env("SHOPFLOW__MYSQL", "S3CRET-section");
            let err = refused(None);
            assert!(!err.contains("S3CRET"), "{err}");
            Ok(())
        });
    }

    /// What containers do: librdkafka properties one variable each, spelled with underscores,
    /// and secrets from mounted files.
    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail fixes the closure's error type"
    )]
    fn kafka_properties_come_from_the_environment_and_secrets_from_files() {
        use std::collections::BTreeMap;
        figment::Jail::expect_with(|jail| {
            jail.create_file("kafka-password", "S3CRET-sasl\n")?;
            let file = jail.directory().join("kafka-password");
            jail.set_env("SHOPFLOW__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL");
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES__SASL_MECHANISMS",
                "SCRAM-SHA-512",
            );
            jail.set_env("SHOPFLOW__KAFKA__PROPERTIES__SASL_USERNAME", "shop");
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                file.display().to_string(),
            );
            // A number stays the string librdkafka wants.
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES__SOCKET_CONNECTION_SETUP_TIMEOUT_MS",
                "2000",
            );
            jail.create_file(
                "file.toml",
                "[kafka.properties]\n\"ssl.key.password-file\" = \"kafka-password\"\n",
            )?;
            let config = Config::load(Some(Path::new("file.toml"))).expect("loads");
            let expected: BTreeMap<String, String> = [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanisms", "SCRAM-SHA-512"),
                ("sasl.username", "shop"),
                ("sasl.password", "S3CRET-sasl"),
                ("ssl.key.password", "S3CRET-sasl"),
                ("socket.connection.setup.timeout.ms", "2000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            assert_eq!(config.kafka.properties, expected);
            let shown = config.to_toml();
            assert!(!shown.contains("S3CRET"), "{shown}");
            assert!(shown.contains("\"sasl.password\" = \"***\""), "{shown}");

            // A missing file and a property set twice are errors naming it, never a value.
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                "/nonexistent/kafka-password",
            );
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("sasl-password-file: cannot read /nonexistent/kafka-password"),
                "{err}"
            );
            jail.set_env(
                "SHOPFLOW__KAFKA__PROPERTIES__SASL_PASSWORD_FILE",
                file.display().to_string(),
            );
            jail.set_env("SHOPFLOW__KAFKA__PROPERTIES__SASL_PASSWORD", "S3CRET-twice");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("sasl.password: set twice") && !err.contains("S3CRET"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn urls_print_without_their_password() {
        for (url, shown) in [
            ("mysql://u:S3CRET@h:3306/db", "mysql://u:***@h:3306/db"),
            ("http://u:S3CRET@h:99999/x", "http://u:***@h:99999/x"),
            ("http://u:S3/CR?E#T@h/", "http://u:***@h/"),
            ("http://u:S3CR@ET@h/", "http://u:***@h/"),
            ("u:S3CRET@h:1", "u:***@h:1"),
            ("https://u@h/", "https://u@h/"),
            ("mysql://h/db", "mysql://h/db"),
            ("", ""),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn secret_properties_are_recognised() {
        for key in [
            "sasl.password",
            "sasl.username",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(key), "{key}");
        }
        for key in ["fetch.wait.max.ms", "security.protocol", "ssl.ca.location"] {
            assert!(!is_secret_property(key), "{key}");
        }
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
