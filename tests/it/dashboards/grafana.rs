//! The provisioned data sources and the dashboards: every query on a provisioned data source,
//! every variable defined, the provider reading the mounted dashboards.

use super::*;

#[derive(Debug)]
pub(super) struct Datasource {
    pub(super) uid: String,
    pub(super) kind: String,
    pub(super) url: String,
    pub(super) yaml: Yaml,
}

pub(super) fn provisioned_datasources() -> BTreeMap<String, Datasource> {
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

pub(super) fn dashboards() -> Vec<(String, Value)> {
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
pub(super) fn panels(dashboard: &Value) -> Vec<&Value> {
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
pub(super) fn target_query(target: &Value) -> Option<(&'static str, &str)> {
    if let Some(q) = target["query"].as_str() {
        return Some(("query", q));
    }
    target["rawSql"].as_str().map(|q| ("rawSql", q))
}

/// A variable's query, which Grafana stores as a string or as `{"query": ...}`.
pub(super) fn variable_query(variable: &Value) -> Option<&str> {
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
