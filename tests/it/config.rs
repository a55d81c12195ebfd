//! Every shipped configuration file parses, and the Avro schemas describe the model.

use shopflow::config::{Config, DEFAULT_TOML};

#[test]
fn the_shipped_toml_is_the_built_in_default() {
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/shopflow.toml"))
            .unwrap();
    assert_eq!(on_disk, DEFAULT_TOML);
    let config: Config = toml::from_str(&on_disk).expect("parses");
    config.validate().expect("valid");
}

#[test]
fn the_event_schema_carries_refunds_with_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/schemas/event.avsc");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("JSON");
    let fields = schema["fields"].as_array().expect("fields");
    let names: Vec<&str> = fields.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "id",
            "campaign_id",
            "order_id",
            "total_amount",
            "units",
            "tag",
            "event_time"
        ]
    );
    let tag = &fields[5]["type"];
    assert_eq!(
        tag["symbols"],
        serde_json::json!(["click", "purchased", "refunded"])
    );
    assert_eq!(tag["default"], "click", "readers resolve unknown symbols");
    assert!(
        fields[6].get("default").is_some(),
        "version-1 writers stay readable"
    );
    let demographic = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/schemas/demographic.avsc"
    );
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demographic).unwrap()).expect("JSON");
    assert_eq!(schema["fields"].as_array().map(Vec::len), Some(5));
}

#[test]
fn the_ddl_creates_the_seed_columns() {
    let ddl = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/mysql/demographics.sql"
    ))
    .unwrap();
    for column in [
        "id ",
        "age ",
        "gender ",
        "state ",
        "country ",
        "updated_at ",
    ] {
        assert!(ddl.contains(column), "{column}");
    }
}
