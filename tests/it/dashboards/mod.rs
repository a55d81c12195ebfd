//! The docker compose stack and the Grafana dashboards, tested without Docker or Grafana.
//!
//! No container engine or Grafana server runs here, so these tests check what they would do:
//!
//! - every dashboard in `grafana/dashboards` parses, refers only to the data sources provisioned
//!   in `grafana/provisioning/datasources` (by UID), and every variable it references is defined;
//! - `docker-compose.yml` holds together: every service, volume, config, port and health check it
//!   refers to exists, every mounted path is in the repository, every `${VAR}` is set in `.env`,
//!   Grafana's provisioning matches its mounts, and each shopflow service's configuration and
//!   command line are accepted by the built binary (`docker compose config` runs too where the
//!   client can);
//! - after a real run — demographics loaded into MariaDB, events and malformed messages through
//!   Kafka, `shopflow run` writing InfluxDB — every panel's query, with Grafana's macros and
//!   variables expanded as Grafana expands them, runs against the real InfluxDB or MariaDB and
//!   returns rows (`scripts/test-all`).

mod compose;
mod grafana;
mod queries;
mod templates;
mod yaml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use self::compose::bind_mounts;
use self::grafana::{dashboards, panels, provisioned_datasources, target_query, variable_query};
use self::templates::{GLOBAL_VARIABLES, Reference, SQL_MACROS, expand, is_alias_pattern};
use self::yaml::{Yaml, parse_yaml};

const DASHBOARDS: &str = "grafana/dashboards";
const DATASOURCES: &str = "grafana/provisioning/datasources";
const DASHBOARD_PROVIDERS: &str = "grafana/provisioning/dashboards";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files of a repository directory whose names end in one of `extensions`, sorted.
fn files(relative: &str, extensions: &[&str]) -> Vec<PathBuf> {
    let dir = root().join(relative);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            extensions.iter().any(|ext| name.ends_with(ext))
        })
        .collect();
    found.sort();
    found
}
