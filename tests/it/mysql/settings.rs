//! The configuration section: the proposed TOML is the default, and secrets stay hidden.

use super::*;

#[test]
fn the_proposed_toml_section_is_the_default_and_secrets_stay_hidden() {
    #[derive(serde::Deserialize)]
    struct File {
        mysql: MysqlConfig,
    }
    let section = r#"
[mysql]
url = "mysql://shopflow@127.0.0.1:3306/shopflow"
table = "demographics"
load-batch-rows = 1000
server-id = 0
connect-timeout-ms = 5000
connect-retries = 5
"#;
    let file: File = toml::from_str(section).unwrap();
    assert_eq!(file.mysql, MysqlConfig::default());
    file.mysql.validate().unwrap();
    let unknown = section.replace("server-id", "server-idd");
    assert!(toml::from_str::<File>(&unknown).is_err());

    let config = MysqlConfig {
        password: Some("hunter2".into()),
        url: "mysql://shopflow:urlsecret@db:3306/shopflow".into(),
        ..MysqlConfig::default()
    };
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("urlsecret"),
        "{debug}"
    );
    assert!(debug.contains("***"), "{debug}");
    let printed = toml::to_string(&config).unwrap();
    assert!(
        !printed.contains("hunter2") && !printed.contains("urlsecret"),
        "{printed}"
    );

    let bad = MysqlConfig {
        table: "x; DROP TABLE y".into(),
        ..MysqlConfig::default()
    };
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "invalid configuration: mysql.table: \"x; DROP TABLE y\" is not an identifier [A-Za-z_][A-Za-z0-9_]{0,63}"
    );
}
