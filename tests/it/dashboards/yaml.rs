//! A YAML subset: enough for docker-compose.yml and Grafana's provisioning files, and strict about
//! it (anything else is an error rather than a guess). Scalars stay strings. The files are read
//! with a YAML crate into a small tree that keeps keys in order, with `<<` merge keys applied as
//! Compose applies them.

use yaml_rust2::{Yaml as Raw, YamlLoader};

use super::read;

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
                let key =
                    scalar(key).ok_or_else(|| format!("a key that is not a scalar: {key:?}"))?;
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

pub(super) fn parse_yaml(relative: &str) -> Yaml {
    parse(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
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
    let doc = parse(text).expect("parses");
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
        parse("a: *missing").is_err(),
        "an alias to nothing is refused"
    );
}
