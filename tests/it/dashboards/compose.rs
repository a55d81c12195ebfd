//! docker-compose.yml: everything it refers to exists, and each shopflow service's configuration
//! and command line are accepted by the built binary.

use super::*;

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
pub(super) fn bind_mounts(service: &Yaml) -> Vec<(String, String)> {
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
        if let Some(check) = service.get("healthcheck") {
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
