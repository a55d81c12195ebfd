//! The integration tests, one binary with a module per area (as in casey/just). Tests that need a
//! real service are `#[ignore]`d here and run by `scripts/test-all`, which starts the services.

mod avro;
mod cli;
mod config;
mod dashboards;
mod dataflows;
mod e2e;
mod faults;
mod influx;
mod mysql;
mod registry;
mod services;
