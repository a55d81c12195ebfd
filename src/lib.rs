//! shopflow: real-time e-commerce analytics on timely and differential dataflow.
//!
//! The graphs live in the `dataflows` crate; this crate holds what runs them. Following a purchase
//! from the folder names: [`generators`] make events and demographics, [`runtime`] feeds them to
//! the dataflow on every worker and collects completed batches, [`sinks`] write them
//! ([`sinks::line_protocol`] encodes a batch as InfluxDB points).

pub mod baseline;
pub mod checkpoint;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod experiments;
pub mod generators;
pub mod http;
pub mod journal;
pub mod logging;
pub mod plan;
pub mod retry;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod verify;
pub mod view;
pub mod writers;
