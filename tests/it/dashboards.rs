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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

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

// ------------------------------------------------------------------------------------------------
// A YAML subset: enough for docker-compose.yml and Grafana's provisioning files, and strict about
// it (anything else is an error rather than a guess). Scalars stay strings.

/// The compose and provisioning files, read with a YAML crate into a small tree that keeps keys
/// in order, with `<<` merge keys applied as Compose applies them.
mod yaml {
    use yaml_rust2::{Yaml as Raw, YamlLoader};

    #[derive(Clone, Debug, PartialEq)]
    pub enum Yaml {
        Null,
        Str(String),
        Seq(Vec<Yaml>),
        Map(Vec<(String, Yaml)>),
    }

    impl Yaml {
        pub fn get(&self, key: &str) -> Option<&Yaml> {
            match self {
                Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        pub fn str(&self, key: &str) -> Option<&str> {
            self.get(key).and_then(Yaml::as_str)
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Yaml::Str(s) => Some(s),
                _ => None,
            }
        }

        pub fn entries(&self) -> &[(String, Yaml)] {
            match self {
                Yaml::Map(entries) => entries,
                _ => &[],
            }
        }

        pub fn items(&self) -> &[Yaml] {
            match self {
                Yaml::Seq(items) => items,
                _ => &[],
            }
        }

        /// Every scalar under this node, with the path of keys leading to it.
        pub fn scalars(&self, path: &str, out: &mut Vec<(String, String)>) {
            match self {
                Yaml::Null => {}
                Yaml::Str(s) => out.push((path.to_owned(), s.clone())),
                Yaml::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        item.scalars(&format!("{path}[{i}]"), out);
                    }
                }
                Yaml::Map(entries) => {
                    for (k, v) in entries {
                        v.scalars(&format!("{path}.{k}"), out);
                    }
                }
            }
        }
    }

    /// Parses one YAML document.
    pub fn parse(text: &str) -> Result<Yaml, String> {
        let documents = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
        match documents.as_slice() {
            [document] => convert(document),
            other => Err(format!("expected one document, found {}", other.len())),
        }
    }

    fn scalar(raw: &Raw) -> Option<String> {
        match raw {
            Raw::String(s) | Raw::Real(s) => Some(s.clone()),
            Raw::Integer(i) => Some(i.to_string()),
            Raw::Boolean(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn convert(raw: &Raw) -> Result<Yaml, String> {
        Ok(match raw {
            Raw::Null => Yaml::Null,
            Raw::Array(items) => Yaml::Seq(items.iter().map(convert).collect::<Result<_, _>>()?),
            Raw::Hash(hash) => {
                let (mut entries, mut merged) = (Vec::new(), Vec::new());
                for (key, value) in hash {
                    let key = scalar(key)
                        .ok_or_else(|| format!("a key that is not a scalar: {key:?}"))?;
                    match (key.as_str(), convert(value)?) {
                        ("<<", Yaml::Map(base)) => merged.extend(base),
                        ("<<", other) => {
                            return Err(format!(
                                "a merge key of something else than a map: {other:?}"
                            ));
                        }
                        (_, value) => entries.push((key, value)),
                    }
                }
                // Keys of the mapping itself win over merged ones.
                for (key, value) in merged {
                    if !entries.iter().any(|(k, _)| *k == key) {
                        entries.push((key, value));
                    }
                }
                Yaml::Map(entries)
            }
            Raw::Alias(_) | Raw::BadValue => {
                return Err(format!("an unresolved alias or bad value: {raw:?}"));
            }
            other => {
                Yaml::Str(scalar(other).ok_or_else(|| format!("an unsupported value: {other:?}"))?)
            }
        })
    }
}

use yaml::Yaml;

fn parse_yaml(relative: &str) -> Yaml {
    yaml::parse(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

#[test]
fn yaml_is_read_as_compose_reads_it() {
    let text = r#"
# a comment
x-base: &base
  image: a:1   # trailing comment
  environment:
    A: "1"
services:
  one:
    <<: *base
    command: ["sh", "-c", "echo \"a, b\" 'c'"]
    entrypoint:
      - /bin/sh
      - |
        line $$one
          indented # not a comment

        after a blank
      - last
    depends_on:
      two:
        condition: service_healthy
  two:
    image: b:2
    ports:
    - 127.0.0.1:80:8080
    list:
      - key: value
        other: 'it''s'
      - plain
configs:
  c:
    content: |-
      SELECT 1;
"#;
    let doc = yaml::parse(text).expect("parses");
    let one = doc.get("services").and_then(|s| s.get("one")).expect("one");
    assert_eq!(one.str("image"), Some("a:1"));
    assert_eq!(one.get("environment").and_then(|e| e.str("A")), Some("1"));
    assert_eq!(
        one.get("command").expect("command").items(),
        &[
            Yaml::Str("sh".into()),
            Yaml::Str("-c".into()),
            Yaml::Str("echo \"a, b\" 'c'".into())
        ]
    );
    let entrypoint = one.get("entrypoint").expect("entrypoint").items();
    assert_eq!(
        entrypoint[1].as_str(),
        Some("line $$one\n  indented # not a comment\n\nafter a blank\n")
    );
    assert_eq!(entrypoint[2].as_str(), Some("last"));
    assert_eq!(
        one.get("depends_on")
            .and_then(|d| d.get("two"))
            .and_then(|t| t.str("condition")),
        Some("service_healthy")
    );
    let two = doc.get("services").and_then(|s| s.get("two")).expect("two");
    assert_eq!(
        two.get("ports").expect("ports").items(),
        &[Yaml::Str("127.0.0.1:80:8080".into())]
    );
    let list = two.get("list").expect("list").items();
    assert_eq!(list[0].str("other"), Some("it's"));
    assert_eq!(list[1].as_str(), Some("plain"));
    assert_eq!(
        doc.get("configs")
            .and_then(|c| c.get("c"))
            .and_then(|c| c.str("content")),
        Some("SELECT 1;")
    );
    assert!(
        yaml::parse("a: *missing").is_err(),
        "an alias to nothing is refused"
    );
}

// ------------------------------------------------------------------------------------------------
// Grafana's template references: `$name`, `${name}`, `${name:format}`, `[[name]]`, and the
// function-like SQL macros `$__name(args)`.

#[derive(Debug, PartialEq)]
enum Reference {
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
fn expand(
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
const GLOBAL_VARIABLES: &[&str] = &[
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
const SQL_MACROS: &[&str] = &[
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
fn is_alias_pattern(name: &str) -> bool {
    name.starts_with("tag_")
        || matches!(name, "col" | "m" | "measurement")
        || name.chars().all(|c| c.is_ascii_digit())
}

// ------------------------------------------------------------------------------------------------
// The provisioned data sources and the dashboards.

#[derive(Debug)]
struct Datasource {
    uid: String,
    kind: String,
    url: String,
    yaml: Yaml,
}

fn provisioned_datasources() -> BTreeMap<String, Datasource> {
    let mut found = BTreeMap::new();
    let paths = files(DATASOURCES, &[".yml", ".yaml"]);
    assert!(
        !paths.is_empty(),
        "no data source provisioning file in {DATASOURCES}"
    );
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        let doc = yaml::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(doc.str("apiVersion"), Some("1"), "{}", path.display());
        for ds in doc.get("datasources").expect("datasources").items() {
            let uid = ds.str("uid").expect("every data source has a fixed uid");
            let kind = ds.str("type").expect("a type").to_owned();
            assert!(
                matches!(kind.as_str(), "influxdb" | "mysql"),
                "{uid}: unexpected type {kind}"
            );
            assert!(ds.str("name").is_some(), "{uid} has a name");
            let previous = found.insert(
                uid.to_owned(),
                Datasource {
                    uid: uid.to_owned(),
                    kind,
                    url: ds.str("url").expect("a url").to_owned(),
                    yaml: ds.clone(),
                },
            );
            assert!(previous.is_none(), "data source uid {uid} twice");
        }
    }
    found
}

fn dashboards() -> Vec<(String, Value)> {
    let paths = files(DASHBOARDS, &[".json"]);
    paths
        .into_iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("readable");
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            (name, json)
        })
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        out.push(panel);
        for nested in panel["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            out.push(nested);
        }
    }
    out
}

/// The query text of a target and its field name (`query` for InfluxQL, `rawSql` for SQL).
fn target_query(target: &Value) -> Option<(&'static str, &str)> {
    if let Some(q) = target["query"].as_str() {
        return Some(("query", q));
    }
    target["rawSql"].as_str().map(|q| ("rawSql", q))
}

/// A variable's query, which Grafana stores as a string or as `{"query": ...}`.
fn variable_query(variable: &Value) -> Option<&str> {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
}

/// Grafana's built-in panel types: the stack installs no plugin.
const CORE_PANELS: &[&str] = &[
    "row",
    "timeseries",
    "stat",
    "table",
    "bargauge",
    "barchart",
    "geomap",
    "piechart",
    "gauge",
    "text",
];

/// What is wrong with a data source reference, if anything: it must name a provisioned UID (a
/// name or the default would depend on the installation) of the right type.
fn datasource_problem(
    datasources: &BTreeMap<String, Datasource>,
    file: &str,
    what: &str,
    ds: &Value,
) -> Option<String> {
    let Some(uid) = ds["uid"].as_str() else {
        return Some(format!("{file}: {what}: no data source uid: {ds}"));
    };
    match datasources.get(uid) {
        Some(known) if ds["type"].as_str() == Some(known.kind.as_str()) => None,
        Some(known) => Some(format!(
            "{file}: {what}: data source {uid} is of type {}, not {}",
            known.kind, ds["type"]
        )),
        None => Some(format!(
            "{file}: {what}: data source uid {uid} is not provisioned"
        )),
    }
}

#[test]
fn the_four_dashboards_use_provisioned_datasources_and_defined_variables() {
    let datasources = provisioned_datasources();
    let all = dashboards();
    let titles: BTreeSet<String> = all
        .iter()
        .map(|(_, d)| d["title"].as_str().unwrap_or("").to_owned())
        .collect();
    for wanted in [
        "Campaign performance",
        "Demographic trends",
        "Real-time purchases",
        "Pipeline health",
    ] {
        assert!(
            titles.iter().any(|t| t.ends_with(wanted)),
            "a dashboard titled …{wanted}: {titles:?}"
        );
    }
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for (file, dashboard) in &all {
        let uid = dashboard["uid"].as_str().unwrap_or("");
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{file}: a uid of at most 40 characters"
        );
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} twice");
        assert!(
            dashboard["id"].is_null(),
            "{file}: no database id in a provisioned file"
        );
        assert!(
            dashboard["schemaVersion"].as_u64().is_some(),
            "{file}: schemaVersion"
        );

        // Variables: defined once each, provisioned data sources.
        let mut variables = BTreeMap::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let name = variable["name"].as_str().unwrap_or("").to_owned();
            if variable["type"] == "query" {
                problems.extend(datasource_problem(
                    &datasources,
                    file,
                    &format!("variable {name}"),
                    &variable["datasource"],
                ));
                assert!(
                    variable_query(variable).is_some_and(|q| !q.trim().is_empty()),
                    "{file}: variable {name} has a query"
                );
            }
            assert!(
                variables.insert(name.clone(), variable).is_none(),
                "{file}: variable {name} twice"
            );
        }

        let mut references = Vec::<(String, String, String)>::new();
        let mut ids = BTreeSet::new();
        let mut cells = BTreeSet::new();
        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or("").to_owned();
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: {title}: an id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            let grid = &panel["gridPos"];
            let (x, y, w, h) = (
                grid["x"].as_u64().unwrap_or(99),
                grid["y"].as_u64().unwrap_or(0),
                grid["w"].as_u64().unwrap_or(0),
                grid["h"].as_u64().unwrap_or(0),
            );
            assert!(
                w > 0 && h > 0 && x + w <= 24,
                "{file}: {title}: gridPos {grid}"
            );
            for cx in x..x + w {
                for cy in y..y + h {
                    assert!(
                        cells.insert((cx, cy)),
                        "{file}: {title} overlaps another panel"
                    );
                }
            }
            references.push((title.clone(), "title".into(), title.clone()));
            if let Some(description) = panel["description"].as_str() {
                references.push((title.clone(), "description".into(), description.into()));
            }
            // Core panels only.
            let kind = panel["type"].as_str().unwrap_or("");
            if !CORE_PANELS.contains(&kind) {
                problems.push(format!(
                    "{file}: {title}: panel type {kind:?} needs a plugin"
                ));
            }
            if panel["type"] == "row" {
                continue;
            }
            assert!(
                !panel["description"].as_str().unwrap_or("").is_empty(),
                "{file}: {title}: a description says what the panel answers"
            );
            problems.extend(datasource_problem(
                &datasources,
                file,
                &format!("panel {title:?}"),
                &panel["datasource"],
            ));
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            if targets.is_empty() {
                problems.push(format!("{file}: {title}: no query"));
            }
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                let ref_id = target["refId"].as_str().unwrap_or("").to_owned();
                if !ref_ids.insert(ref_id.clone()) {
                    problems.push(format!("{file}: {title}: refId {ref_id} twice"));
                }
                problems.extend(datasource_problem(
                    &datasources,
                    file,
                    &format!("panel {title:?} query {ref_id}"),
                    &target["datasource"],
                ));
                if target["datasource"]["uid"] != panel["datasource"]["uid"] {
                    problems.push(format!(
                        "{file}: {title}: query {ref_id} uses another data source than its panel"
                    ));
                }
                match target_query(target) {
                    Some((field, q)) if !q.trim().is_empty() => {
                        references.push((title.clone(), field.into(), q.into()));
                        if target["rawQuery"] != true {
                            problems.push(format!("{file}: {title}: {ref_id} is not a raw query"));
                        }
                    }
                    _ => problems.push(format!("{file}: {title}: query {ref_id} is empty")),
                }
                if let Some(alias) = target["alias"].as_str() {
                    references.push((title.clone(), "alias".into(), alias.into()));
                }
            }
        }
        for variable in variables.values() {
            if let Some(q) = variable_query(variable) {
                let name = variable["name"].as_str().unwrap_or("");
                references.push((format!("variable {name}"), "query".into(), q.into()));
            }
        }
        for (where_, field, text) in references {
            let result = expand(&text, |reference| {
                match reference {
                    Reference::Variable { name, format } => {
                        let known = variables.contains_key(name.as_str())
                            || (field != "title" && GLOBAL_VARIABLES.contains(&name.as_str()))
                            || (field == "alias" && is_alias_pattern(name));
                        if !known {
                            return Err(format!("${name} is not a variable of this dashboard"));
                        }
                        if let Some(format) = format
                            && !matches!(format.as_str(), "regex" | "csv" | "sqlstring" | "raw")
                        {
                            return Err(format!("${{{name}:{format}}}: unexpected format"));
                        }
                    }
                    Reference::Macro { name, .. } => {
                        if field != "rawSql" || !SQL_MACROS.contains(&name.as_str()) {
                            return Err(format!("macro ${name}(…) is not a SQL macro here"));
                        }
                    }
                }
                Ok(String::new())
            });
            if let Err(e) = result {
                problems.push(format!("{file}: {where_}: {field}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_dashboard_provider_reads_the_mounted_dashboards() {
    let compose = parse_yaml("docker-compose.yml");
    let grafana = compose
        .get("services")
        .and_then(|s| s.get("grafana"))
        .expect("a grafana service");
    let mounts = bind_mounts(grafana);
    let target_of = |source: &str| {
        mounts
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("grafana mounts {source}: {mounts:?}"))
    };
    assert_eq!(
        target_of("./grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboards_dir = target_of("./grafana/dashboards");
    let providers = files(DASHBOARD_PROVIDERS, &[".yml", ".yaml"]);
    assert!(
        !providers.is_empty(),
        "a dashboard provider in {DASHBOARD_PROVIDERS}"
    );
    for path in providers {
        let doc = yaml::parse(&std::fs::read_to_string(&path).expect("readable"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for provider in doc.get("providers").expect("providers").items() {
            assert_eq!(provider.str("type"), Some("file"));
            assert_eq!(
                provider.get("options").and_then(|o| o.str("path")),
                Some(dashboards_dir.as_str()),
                "the provider reads where compose mounts grafana/dashboards"
            );
        }
    }
    // The home dashboard Grafana is told to open is one of them.
    let environment = grafana.get("environment").expect("grafana's environment");
    if let Some(home) = environment.str("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        let file = home
            .strip_prefix(&format!("{dashboards_dir}/"))
            .unwrap_or_else(|| panic!("{home} is under {dashboards_dir}"));
        assert!(
            root().join(DASHBOARDS).join(file).is_file(),
            "{home} exists"
        );
    }
    // Data sources point at services of the stack, and their $VARIABLES are set for Grafana.
    let services = compose.get("services").expect("services");
    for ds in provisioned_datasources().values() {
        let host = ds
            .url
            .trim_start_matches("http://")
            .split([':', '/'])
            .next()
            .unwrap_or("");
        assert!(
            services.get(host).is_some(),
            "data source {} points at {host}, a service of the stack",
            ds.uid
        );
        let mut scalars = Vec::new();
        ds.yaml.scalars(&ds.uid, &mut scalars);
        for (path, value) in scalars {
            let _ = expand(&value, |reference| {
                if let Reference::Variable { name, .. } = reference {
                    assert!(
                        environment.get(name).is_some(),
                        "{path}: ${name} is in grafana's environment"
                    );
                }
                Ok(String::new())
            });
        }
    }
}

// ------------------------------------------------------------------------------------------------
// docker-compose.yml

/// `.env`: `KEY=VALUE` lines.
fn dot_env() -> BTreeMap<String, String> {
    read(".env")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!(".env: {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

/// Compose's interpolation: `$$` is `$`; `${NAME}`, `${NAME:-default}`, `${NAME-default}`,
/// `${NAME:?error}`, `${NAME?error}` and `$NAME` come from `env`. Unset names are errors.
fn interpolate(
    text: &str,
    env: &BTreeMap<String, String>,
    used: &mut BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {text:?}"))?;
            let expr = &body[..end];
            let split = expr.find([':', '-', '?']).unwrap_or(expr.len());
            let (name, modifier) = expr.split_at(split);
            used.insert(name.to_owned());
            match (env.get(name), modifier) {
                (Some(v), _) if !(v.is_empty() && modifier.starts_with(':')) => out.push_str(v),
                (_, m) if m.starts_with(":-") || m.starts_with('-') => {
                    out.push_str(m.trim_start_matches(':').trim_start_matches('-'));
                }
                _ => return Err(format!("${{{expr}}}: {name} is not set in .env")),
            }
            rest = &body[end + 1..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if name.is_empty() {
                return Err(format!("a lone $ in {text:?} (write $$)"));
            }
            used.insert(name.to_owned());
            out.push_str(
                env.get(name)
                    .ok_or_else(|| format!("${name} is not set in .env"))?,
            );
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `(source, target)` of every short-syntax bind mount (`./…:/…[:ro]`) of a service.
fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
    service
        .get("volumes")
        .map(Yaml::items)
        .unwrap_or(&[])
        .iter()
        .filter_map(Yaml::as_str)
        .filter(|v| v.starts_with('.') || v.starts_with('/'))
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A duration as compose writes it (`5s`, `1m30s`, `500ms`).
fn compose_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(60 * n),
            "h" => Duration::from_secs(3600 * n),
            _ => return None,
        };
        rest = &rest[unit..];
    }
    (!text.is_empty()).then_some(total)
}

/// The services built from this repository's Dockerfile: shopflow's own.
fn shopflow_services(compose: &Yaml) -> Vec<(&str, &Yaml)> {
    compose
        .get("services")
        .map(Yaml::entries)
        .unwrap_or(&[])
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(n, s)| (n.as_str(), s))
        .collect()
}

#[test]
fn the_compose_file_refers_only_to_what_exists() {
    let compose = parse_yaml("docker-compose.yml");
    let env = dot_env();
    let mut problems = Vec::new();

    // Every ${VAR} comes from .env, and .env holds nothing unused.
    let mut used = BTreeSet::new();
    let mut scalars = Vec::new();
    compose.scalars("", &mut scalars);
    let mut interpolated = BTreeMap::new();
    for (path, value) in &scalars {
        match interpolate(value, &env, &mut used) {
            Ok(v) => {
                interpolated.insert(path.clone(), v);
            }
            Err(e) => problems.push(format!("{path}: {e}")),
        }
    }
    for key in env.keys() {
        if !used.contains(key) {
            problems.push(format!(
                ".env sets {key}, which docker-compose.yml does not use"
            ));
        }
    }

    for (key, _) in compose.entries() {
        if !(matches!(key.as_str(), "name" | "services" | "volumes" | "configs")
            || key.starts_with("x-"))
        {
            problems.push(format!("unexpected top-level key {key}"));
        }
    }
    let services = compose.get("services").expect("services");
    let volumes: BTreeSet<&str> = compose
        .get("volumes")
        .map(Yaml::entries)
        .unwrap_or(&[])
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    let configs = compose
        .get("configs")
        .cloned()
        .unwrap_or(Yaml::Map(Vec::new()));
    for wanted in [
        "kafka",
        "mysql",
        "influxdb",
        "grafana",
        "pipeline",
        "produce",
        "load-demographics",
    ] {
        if services.get(wanted).is_none() {
            problems.push(format!("no {wanted} service"));
        }
    }

    let mut used_volumes = BTreeSet::new();
    let mut used_configs = BTreeSet::new();
    let mut host_ports = BTreeMap::new();
    for (name, service) in services.entries() {
        let at = |what: &str| format!("services.{name}.{what}");
        match (service.str("image"), service.get("build")) {
            (Some(image), None) => {
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                if tag.is_empty() || tag == "latest" || tag.contains('$') {
                    problems.push(format!("{}: pin a version: {image}", at("image")));
                }
            }
            (_, Some(build)) => {
                let context = build.str("context").unwrap_or(".");
                let dockerfile = build.str("dockerfile").unwrap_or("Dockerfile");
                if !root().join(context).join(dockerfile).is_file() {
                    problems.push(format!(
                        "{}: {context}/{dockerfile} is not in the repository",
                        at("build")
                    ));
                }
            }
            (None, None) => problems.push(format!("services.{name}: neither image nor build")),
        }
        if let Some(restart) = service.str("restart")
            && !matches!(restart, "no" | "always" | "on-failure" | "unless-stopped")
        {
            problems.push(format!("{}: {restart}", at("restart")));
        }
        // Start order: only existing services, with conditions that can be met.
        let depends = service.get("depends_on");
        let dependencies: Vec<(String, Option<String>)> = match depends {
            Some(Yaml::Seq(items)) => items
                .iter()
                .filter_map(Yaml::as_str)
                .map(|s| (s.to_owned(), None))
                .collect(),
            Some(Yaml::Map(entries)) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.str("condition").map(str::to_owned)))
                .collect(),
            _ => Vec::new(),
        };
        for (dependency, condition) in dependencies {
            let Some(target) = services.get(&dependency) else {
                problems.push(format!("{}: no service {dependency}", at("depends_on")));
                continue;
            };
            if dependency == *name {
                problems.push(format!("{}: itself", at("depends_on")));
            }
            match condition.as_deref() {
                None | Some("service_started") => {}
                Some("service_healthy") => {
                    if target.get("healthcheck").is_none() {
                        problems.push(format!(
                            "{}: {dependency} has no health check to wait for",
                            at("depends_on")
                        ));
                    }
                }
                Some("service_completed_successfully") => {
                    if !matches!(target.str("restart"), None | Some("no")) {
                        problems.push(format!(
                            "{}: {dependency} is not a one-shot (restart: no)",
                            at("depends_on")
                        ));
                    }
                }
                Some(other) => problems.push(format!("{}: condition {other}", at("depends_on"))),
            }
        }
        if let Some(check) = service
            .get("healthcheck")
            .filter(|check| check.str("disable") != Some("true"))
        {
            match check.get("test") {
                Some(Yaml::Seq(items)) => {
                    let first = items.first().and_then(Yaml::as_str);
                    if !matches!(first, Some("CMD" | "CMD-SHELL")) || items.len() < 2 {
                        problems.push(format!(
                            "{}: test must be [CMD, …] or [CMD-SHELL, …]",
                            at("healthcheck")
                        ));
                    }
                }
                Some(Yaml::Str(_)) => {}
                _ => problems.push(format!("{}: no test", at("healthcheck"))),
            }
            for key in ["interval", "timeout", "start_period"] {
                if let Some(d) = check.str(key)
                    && compose_duration(d).is_none()
                {
                    problems.push(format!("{}.{key}: {d}", at("healthcheck")));
                }
            }
            if let Some(r) = check.str("retries")
                && r.parse::<u32>().is_err()
            {
                problems.push(format!("{}.retries: {r}", at("healthcheck")));
            }
        }
        // Volumes: named ones declared, bind mounts from the repository.
        for (i, volume) in service
            .get("volumes")
            .map(Yaml::items)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let Some(spec) = volume.as_str() else {
                problems.push(format!("{}[{i}]: use the short syntax", at("volumes")));
                continue;
            };
            let parts: Vec<&str> = spec.split(':').collect();
            if parts.len() < 2
                || !parts[1].starts_with('/')
                || parts.get(2).is_some_and(|m| !matches!(*m, "ro" | "rw"))
            {
                problems.push(format!("{}[{i}]: {spec}", at("volumes")));
                continue;
            }
            if let Some(relative) = parts[0].strip_prefix("./") {
                let path = root().join(relative);
                if !path.exists() {
                    problems.push(format!(
                        "{}: {} is not in the repository",
                        at("volumes"),
                        parts[0]
                    ));
                }
                if relative.split('/').any(|c| c == "..") {
                    problems.push(format!(
                        "{}: {} leaves the repository",
                        at("volumes"),
                        parts[0]
                    ));
                }
            } else if parts[0].starts_with('/') || parts[0].starts_with('.') {
                problems.push(format!(
                    "{}: {} is not a path in the repository",
                    at("volumes"),
                    parts[0]
                ));
            } else {
                used_volumes.insert(parts[0].to_owned());
                if !volumes.contains(parts[0]) {
                    problems.push(format!(
                        "{}: volume {} is not declared",
                        at("volumes"),
                        parts[0]
                    ));
                }
            }
        }
        for config in service.get("configs").map(Yaml::items).unwrap_or(&[]) {
            let source = config
                .str("source")
                .or_else(|| config.as_str())
                .unwrap_or("");
            used_configs.insert(source.to_owned());
            match configs.get(source) {
                Some(c) if c.get("content").is_some() => {}
                Some(c) => match c.str("file") {
                    Some(file) if root().join(file.trim_start_matches("./")).is_file() => {}
                    _ => problems.push(format!(
                        "{}: config {source} has no content or file in the repository",
                        at("configs")
                    )),
                },
                None => problems.push(format!(
                    "{}: config {source} is not declared",
                    at("configs")
                )),
            }
        }
        // Ports: on 127.0.0.1 only, host ports distinct.
        for (i, _) in service
            .get("ports")
            .map(Yaml::items)
            .unwrap_or(&[])
            .iter()
            .enumerate()
        {
            let path = format!(".services.{name}.ports[{i}]");
            let spec = interpolated.get(&path).cloned().unwrap_or_default();
            let parts: Vec<&str> = spec.split(':').collect();
            let ok = parts.len() == 3
                && parts[0] == "127.0.0.1"
                && parts[1].parse::<u16>().is_ok_and(|p| p > 0)
                && parts[2].parse::<u16>().is_ok_and(|p| p > 0);
            if !ok {
                problems.push(format!("{path}: {spec:?} is not 127.0.0.1:HOST:CONTAINER"));
            } else if let Some(other) = host_ports.insert(parts[1].to_owned(), name.clone()) {
                problems.push(format!("{path}: host port {} is also {other}'s", parts[1]));
            }
        }
    }
    for volume in &volumes {
        if !used_volumes.contains(*volume) {
            problems.push(format!("volume {volume} is declared but unused"));
        }
    }
    for (config, _) in configs.entries() {
        if !used_configs.contains(config) {
            problems.push(format!("config {config} is declared but unused"));
        }
    }

    // shopflow's services reach the others by service name.
    for (name, service) in shopflow_services(&compose) {
        let environment = service.get("environment").expect("an environment");
        for key in [
            "SHOPFLOW__KAFKA__BROKERS",
            "SHOPFLOW__MYSQL__URL",
            "SHOPFLOW__INFLUX__URL",
        ] {
            let value = environment
                .str(key)
                .unwrap_or_else(|| panic!("{name}: {key}"));
            let host = value
                .rsplit("://")
                .next()
                .unwrap_or("")
                .rsplit('@')
                .next()
                .unwrap_or("")
                .split([':', '/'])
                .next()
                .unwrap_or("");
            if services.get(host).is_none() {
                problems.push(format!(
                    "services.{name}.environment.{key}: {host} is not a service"
                ));
            }
        }
    }
    // MySQL is initialised from the repository's DDL.
    let mysql = services.get("mysql").expect("mysql");
    if !bind_mounts(mysql).iter().any(|(source, target)| {
        source == "./config/mysql/demographics.sql"
            && target.starts_with("/docker-entrypoint-initdb.d/")
    }) {
        problems.push("mysql does not run config/mysql/demographics.sql at initialisation".into());
    }

    // The Dockerfile: multi-stage, the runtime stage copies the binary from the build stage.
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    if froms.len() < 2 || !froms[0].contains(" AS build") {
        problems.push(format!(
            "Dockerfile: a build stage and a runtime stage: {froms:?}"
        ));
    }
    if !dockerfile.contains("COPY --from=build")
        || !dockerfile.contains("ENTRYPOINT [\"shopflow\"]")
    {
        problems.push(
            "Dockerfile: the runtime copies the binary from the build stage and runs it".into(),
        );
    }
    let ignored = read(".dockerignore");
    for must in ["target/", ".git/"] {
        if !ignored.lines().any(|l| l.trim() == must) {
            problems.push(format!(".dockerignore: {must} is not ignored"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn each_shopflow_service_has_a_configuration_and_command_line_shopflow_accepts() {
    let compose = parse_yaml("docker-compose.yml");
    let env = dot_env();
    let services = shopflow_services(&compose);
    assert!(
        services.len() >= 3,
        "loader, producer and pipeline: {services:?}"
    );
    let mut unused = BTreeSet::new();
    for (name, service) in services {
        let mut environment = Vec::new();
        for (key, value) in service.get("environment").map(Yaml::entries).unwrap_or(&[]) {
            let value = interpolate(value.as_str().unwrap_or(""), &env, &mut unused)
                .unwrap_or_else(|e| panic!("{name}: {key}: {e}"));
            environment.push((key.clone(), value));
        }
        let shopflow = || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
            command
                .env_clear()
                .envs(environment.iter().map(|(k, v)| (k, v)));
            command
        };
        let check = shopflow()
            .arg("check-config")
            .output()
            .expect("shopflow runs");
        assert!(
            check.status.success(),
            "{name}: shopflow check-config with the service's environment: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let args: Vec<String> = service
            .get("command")
            .unwrap_or_else(|| panic!("{name}: a command"))
            .items()
            .iter()
            .map(|a| {
                interpolate(a.as_str().unwrap_or(""), &env, &mut unused).expect("interpolated")
            })
            .collect();
        // clap parses (and validates) every argument before it prints the help.
        let help = shopflow()
            .args(&args)
            .arg("--help")
            .output()
            .expect("shopflow runs");
        assert!(
            help.status.success(),
            "{name}: shopflow {args:?}: {}",
            String::from_utf8_lossy(&help.stderr)
        );
        if let Some(entrypoint) = service.get("entrypoint") {
            let script = entrypoint
                .items()
                .iter()
                .filter_map(Yaml::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                script.contains("shopflow \"$$@\""),
                "{name}: the entrypoint passes the command to shopflow"
            );
        }
    }
}

#[test]
fn docker_compose_config_accepts_the_file_where_the_client_can() {
    let clients: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    for client in clients {
        let version = Command::new(client[0])
            .args(&client[1..])
            .arg("version")
            .output();
        if !version.is_ok_and(|o| o.status.success()) {
            continue;
        }
        let output = Command::new(client[0])
            .args(&client[1..])
            .args([
                "--project-directory",
                ".",
                "-f",
                "docker-compose.yml",
                "config",
                "--quiet",
            ])
            .current_dir(root())
            .output()
            .expect("the compose client runs");
        assert!(
            output.status.success(),
            "{} config: {}",
            client.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    eprintln!(
        "no compose client here (neither `docker compose` nor `docker-compose`): the structural tests above stand in for `docker compose config`"
    );
}

// ------------------------------------------------------------------------------------------------
// Every panel's query, after a real run.

/// Grafana's `roundInterval`: the interval a panel gets for `range / resolution`.
fn round_interval(ms: u64) -> u64 {
    const STEPS: &[(u64, u64)] = &[
        (15, 10),
        (35, 20),
        (75, 50),
        (150, 100),
        (350, 200),
        (750, 500),
        (1_500, 1_000),
        (3_500, 2_000),
        (7_500, 5_000),
        (12_500, 10_000),
        (17_500, 15_000),
        (25_000, 20_000),
        (45_000, 30_000),
        (90_000, 60_000),
        (210_000, 120_000),
        (450_000, 300_000),
        (750_000, 600_000),
        (1_050_000, 900_000),
        (1_500_000, 1_200_000),
        (2_700_000, 1_800_000),
        (5_400_000, 3_600_000),
        (9_000_000, 7_200_000),
        (16_200_000, 10_800_000),
        (32_400_000, 21_600_000),
        (86_400_000, 43_200_000),
    ];
    STEPS
        .iter()
        .find(|(below, _)| ms < *below)
        .map_or(86_400_000, |(_, step)| *step)
}

/// An interval as Grafana writes it: `500ms`, `2s`, `1m`, `1h`, `1d`.
fn format_interval(ms: u64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn parse_interval(text: &str) -> u64 {
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..digits]
        .parse()
        .unwrap_or_else(|_| panic!("an interval: {text}"));
    n * match &text[digits..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => panic!("an interval unit: {other}"),
    }
}

/// What a dashboard's variables resolved to on the real data.
struct Variable {
    values: Vec<String>,
    /// Multi-value or with "All": Grafana escapes (InfluxQL) or quotes (SQL) its values.
    formatted: bool,
    /// The dashboard opens with "All" selected.
    all: bool,
    all_value: Option<String>,
}

impl Variable {
    fn interpolate(&self, kind: &str) -> String {
        let escape = |v: &str| {
            let mut out = String::new();
            for c in v.chars() {
                if "\\^$*+?.()|[]{}/".contains(c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        };
        let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
        if self.all
            && let Some(all) = &self.all_value
        {
            return all.clone();
        }
        let chosen: &[String] = if self.all {
            &self.values
        } else {
            &self.values[..1]
        };
        match (kind, self.formatted) {
            (_, false) => chosen[0].clone(),
            ("influxdb", true) if chosen.len() == 1 && !self.all => escape(&chosen[0]),
            ("influxdb", true) => {
                format!(
                    "({})",
                    chosen
                        .iter()
                        .map(|v| escape(v))
                        .collect::<Vec<_>>()
                        .join("|")
                )
            }
            (_, true) => chosen
                .iter()
                .map(|v| quote(v))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// The time range and the per-panel interval a Grafana would query with.
struct Range {
    from_ms: u64,
    to_ms: u64,
}

/// Expands Grafana's variables and macros in `query` for a data source of type `kind`.
fn grafana_expand(
    query: &str,
    kind: &str,
    range: &Range,
    interval_ms: u64,
    variables: &BTreeMap<String, Variable>,
) -> Result<String, String> {
    let (from_s, to_s) = (range.from_ms / 1_000, range.to_ms / 1_000);
    expand(query, |reference| match reference {
        Reference::Variable { name, format } => {
            if let Some(format) = format {
                return Err(format!("${{{name}:{format}}} is not expanded by this test"));
            }
            Ok(match name.as_str() {
                "timeFilter" if kind == "influxdb" => {
                    format!("time >= {}ms and time <= {}ms", range.from_ms, range.to_ms)
                }
                "__interval" => format_interval(interval_ms),
                "__interval_ms" => interval_ms.to_string(),
                "__from" => range.from_ms.to_string(),
                "__to" => range.to_ms.to_string(),
                _ => match variables.get(name.as_str()) {
                    Some(v) => v.interpolate(kind),
                    None => return Err(format!("${name}: unknown here")),
                },
            })
        }
        Reference::Macro { name, args } if kind == "mysql" => {
            let column = args.first().cloned().unwrap_or_default();
            let seconds = |arg: Option<&String>| {
                let text = arg.map(|a| a.trim_matches(['\'', '"'])).unwrap_or("");
                let text = if text == "$__interval" {
                    format_interval(interval_ms)
                } else {
                    text.to_owned()
                };
                parse_interval(&text) / 1_000
            };
            Ok(match name.as_str() {
                "__timeFilter" => {
                    format!("{column} BETWEEN FROM_UNIXTIME({from_s}) AND FROM_UNIXTIME({to_s})")
                }
                "__timeFrom" => format!("FROM_UNIXTIME({from_s})"),
                "__timeTo" => format!("FROM_UNIXTIME({to_s})"),
                "__timeGroup" | "__timeGroupAlias" => {
                    let s = seconds(args.get(1));
                    let group = format!("UNIX_TIMESTAMP({column}) DIV {s} * {s}");
                    if name == "__timeGroupAlias" {
                        format!("{group} AS \"time\"")
                    } else {
                        group
                    }
                }
                "__unixEpochFilter" => format!("{column} >= {from_s} AND {column} <= {to_s}"),
                other => return Err(format!("${other}(…) is not expanded by this test")),
            })
        }
        Reference::Macro { name, .. } => Err(format!("${name}(…) in a {kind} query")),
    })
}

/// Runs an InfluxQL query; rows that hold at least one value other than the time.
fn influx_rows(
    client: &reqwest::blocking::Client,
    url: &str,
    database: &str,
    query: &str,
) -> Result<usize, String> {
    let params = [("db", database), ("q", query), ("epoch", "ms")];
    let url = reqwest::Url::parse_with_params(&format!("{url}/query"), &params)
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if let Some(error) = json["error"].as_str() {
        return Err(error.to_owned());
    }
    let mut rows = 0;
    for result in json["results"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(error) = result["error"].as_str() {
            return Err(error.to_owned());
        }
        let mut statement_rows = 0;
        for series in result["series"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let columns = series["columns"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            for row in series["values"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let values = row.as_array().map(Vec::as_slice).unwrap_or(&[]);
                let has_value = values
                    .iter()
                    .zip(columns)
                    .any(|(v, c)| c != "time" && !v.is_null());
                if has_value {
                    statement_rows += 1;
                }
            }
        }
        if statement_rows == 0 {
            return Ok(0);
        }
        rows += statement_rows;
    }
    Ok(rows)
}

/// Runs a SQL query; rows with at least one non-NULL value. Time series need a `time` column.
fn mysql_rows(
    conn: &mut mysql::PooledConn,
    query: &str,
    time_series: bool,
) -> Result<usize, String> {
    use mysql::prelude::Queryable;
    let mut result = conn.query_iter(query).map_err(|e| e.to_string())?;
    let columns: Vec<String> = result
        .columns()
        .as_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    if time_series && !columns.iter().any(|c| c == "time") {
        return Err(format!(
            "a time series needs a column named time: {columns:?}"
        ));
    }
    let mut rows = 0;
    for row in result.by_ref() {
        let row = row.map_err(|e| e.to_string())?;
        if row.unwrap().iter().any(|v| *v != mysql::Value::NULL) {
            rows += 1;
        }
    }
    Ok(rows)
}

#[test]
#[ignore = "needs MariaDB, Kafka and InfluxDB: run scripts/test-all"]
fn every_panel_query_returns_rows_after_a_real_run() {
    use mysql::prelude::Queryable;
    use shopflow::sources::kafka::{self, EventProducer};

    let started_ms = shopflow::runtime::now_ms();
    let db = crate::services::TestDatabase::create("shopflow_dash");
    let (influx_url, brokers, database, pool, mysql) = db.parts();
    let topic = database.replace('_', "-");

    // The stack's services, as docker-compose.yml runs them, on the integration services.
    let shopflow = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shopflow"));
        command
            .args(args)
            .env("SHOPFLOW__GENERATOR__USERS", "5000")
            .env("SHOPFLOW__KAFKA__BROKERS", &brokers)
            .env("SHOPFLOW__KAFKA__TOPIC", &topic)
            .env("SHOPFLOW__KAFKA__GROUP_ID", &topic)
            .env("SHOPFLOW__MYSQL__URL", &mysql.url)
            .env("SHOPFLOW__INFLUX__URL", &influx_url)
            .env("SHOPFLOW__INFLUX__DATABASE", &database);
        command
    };
    let status = shopflow(&["load-demographics"])
        .status()
        .expect("shopflow runs");
    assert!(status.success(), "load-demographics");

    // The topic, and malformed messages of each kind for the pipeline-health panels.
    // The built-in configuration's Kafka settings, pointed at the test's broker and topic.
    let mut kafka = shopflow::config::Config::load(None)
        .expect("the built-in configuration")
        .kafka;
    kafka.brokers = brokers.clone();
    kafka.topic = topic.clone();
    kafka.group_id = topic.clone();
    kafka::ensure_topic(&kafka, &topic).expect("the topic");
    let mut producer = EventProducer::new(&kafka).expect("a producer");
    crate::services::send_malformed(&mut producer);
    producer.flush(Duration::from_secs(10)).expect("flushed");

    // The pipeline, while the producer sends events in real time (one batch per tick).
    let pipeline = shopflow(&["run", "-w", "2", "--start", "earliest", "--duration", "14s"])
        .spawn()
        .expect("shopflow runs");
    std::thread::sleep(Duration::from_secs(1));
    let produced = shopflow(&[
        "produce",
        "--rate",
        "2000",
        "--pace",
        "realtime",
        "--duration",
        "8s",
    ])
    .status()
    .expect("shopflow runs");
    assert!(produced.success(), "produce");
    let output = pipeline.wait_with_output().expect("the pipeline ends");
    assert!(output.status.success(), "the pipeline failed");

    let client = reqwest::blocking::Client::new();
    // `shopflow run` writes `runtime` points; should it not, this test writes what it would.
    let measurements = influx_rows(
        &client,
        &influx_url,
        &database,
        "SHOW MEASUREMENTS WITH MEASUREMENT = \"runtime\"",
    )
    .expect("SHOW MEASUREMENTS");
    if measurements == 0 {
        let now = shopflow::runtime::now_ms();
        let lines: String = (0..5u64)
            .map(|i| {
                format!(
                    "runtime,process=0 consumer_lag={}i,freshness_ms={}i,sink_retries={}i,events_per_second={} {}\n",
                    100 - i * 20,
                    900 + i * 10,
                    i / 3,
                    1_500.0 + i as f64,
                    now - 4_000 + i * 1_000
                )
            })
            .collect();
        let url = reqwest::Url::parse_with_params(
            &format!("{influx_url}/write"),
            &[("db", database.as_str()), ("precision", "ms")],
        )
        .expect("a URL");
        let response = client
            .post(url)
            .body(lines)
            .send()
            .expect("InfluxDB answers");
        assert!(response.status().is_success(), "runtime points written");
    }

    let range = Range {
        from_ms: started_ms - 15 * 60_000,
        to_ms: shopflow::runtime::now_ms() + 60_000,
    };
    let datasources = provisioned_datasources();
    let mut conn = pool.get_conn().expect("a connection");
    conn.query_drop(format!("USE `{database}`")).expect("use");

    let mut checked = 0;
    let mut failures = Vec::new();
    for (file, dashboard) in dashboards() {
        let kind_of = |ds: &Value| {
            let uid = ds["uid"].as_str().unwrap_or("");
            datasources
                .get(uid)
                .map(|d| d.kind.clone())
                .unwrap_or_else(|| panic!("{file}: data source {uid}"))
        };
        let min_interval_of = |ds: &Value| {
            let uid = ds["uid"].as_str().unwrap_or("");
            datasources[uid]
                .yaml
                .get("jsonData")
                .and_then(|j| j.str("timeInterval"))
                .map_or(0, parse_interval)
        };

        // Variables first, in order, as the dashboard loads them.
        let mut variables = BTreeMap::new();
        for variable in dashboard["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let name = variable["name"].as_str().unwrap_or("").to_owned();
            assert_eq!(
                variable["type"], "query",
                "{file}: {name}: only query variables are expanded here"
            );
            let kind = kind_of(&variable["datasource"]);
            let query = grafana_expand(
                variable_query(variable).unwrap_or(""),
                &kind,
                &range,
                1_000,
                &variables,
            )
            .unwrap_or_else(|e| panic!("{file}: variable {name}: {e}"));
            let values: Vec<String> = match kind.as_str() {
                "influxdb" => {
                    let params = [("db", database.as_str()), ("q", query.as_str())];
                    let url =
                        reqwest::Url::parse_with_params(&format!("{influx_url}/query"), &params)
                            .expect("a URL");
                    let body = client
                        .get(url)
                        .send()
                        .and_then(|r| r.text())
                        .expect("InfluxDB answers");
                    let json: Value = serde_json::from_str(&body).expect("JSON");
                    let mut values = Vec::new();
                    for series in json["results"][0]["series"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or(&[])
                    {
                        let columns = series["columns"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        let index = columns.iter().position(|c| c == "value").unwrap_or(0);
                        for row in series["values"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or(&[])
                        {
                            if let Some(v) = row[index].as_str() {
                                values.push(v.to_owned());
                            }
                        }
                    }
                    values
                }
                _ => conn
                    .query_map(&query, |row: mysql::Row| {
                        row.get::<String, _>(0).unwrap_or_default()
                    })
                    .unwrap_or_else(|e| panic!("{file}: variable {name}: {e}")),
            };
            checked += 1;
            if values.is_empty() {
                failures.push(format!("{file}: variable {name}: no values for {query}"));
                continue;
            }
            let current = &variable["current"]["value"];
            let all = variable["includeAll"] == true
                && (current == "$__all"
                    || current
                        .as_array()
                        .is_some_and(|a| a.iter().any(|v| v == "$__all")));
            variables.insert(
                name,
                Variable {
                    values,
                    formatted: variable["multi"] == true || variable["includeAll"] == true,
                    all,
                    all_value: variable["allValue"]
                        .as_str()
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                },
            );
        }

        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("");
            for target in panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let Some((_, query)) = target_query(target) else {
                    continue;
                };
                let kind = kind_of(&target["datasource"]);
                // $__interval: the range over the panel's width in pixels, rounded as Grafana
                // rounds it, at least the panel's and the data source's minimum interval.
                let width_px = panel["gridPos"]["w"].as_u64().unwrap_or(24) * 1_920 / 24;
                let low = panel["interval"]
                    .as_str()
                    .map_or(0, parse_interval)
                    .max(min_interval_of(&target["datasource"]));
                let interval = round_interval((range.to_ms - range.from_ms) / width_px).max(low);
                let expanded = match grafana_expand(query, &kind, &range, interval, &variables) {
                    Ok(q) => q,
                    Err(e) => {
                        failures.push(format!("{file}: {title}: {e}"));
                        continue;
                    }
                };
                let time_series = target["format"] == "time_series";
                checked += 1;
                let rows = match kind.as_str() {
                    "influxdb" => influx_rows(&client, &influx_url, &database, &expanded),
                    _ => mysql_rows(&mut conn, &expanded, time_series),
                };
                match rows {
                    Ok(0) => failures.push(format!("{file}: {title}: no rows from {expanded}")),
                    Ok(_) => {}
                    Err(e) => failures.push(format!("{file}: {title}: {e}: {expanded}")),
                }
            }
        }
    }
    assert!(checked > 40, "{checked} queries checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed: {failures:#?}",
        failures.len()
    );
}
