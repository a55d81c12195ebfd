//! The integration tests, one binary with a module per area (as in casey/just).

mod cli;
mod config;
mod dataflows;
