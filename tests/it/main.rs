//! The integration tests, one binary with a module per area (as in casey/just). Tests that need a
//! real service are `#[ignore]`d here and run by `scripts/test-all`, which starts the services.

mod avro;
mod browser;
mod campaign;
mod cli;
mod cluster;
mod config;
mod dashboards;
mod dataflows;
mod e2e;
mod embedded;
mod experiments;
mod faults;
mod http;
mod influx;
mod kafka_client;
mod latency;
mod mysql;
mod mysql_tls;
mod ops;
mod producer;
mod registry;
mod restart;
mod sasl;
mod secrets;
mod support;
mod verify;
