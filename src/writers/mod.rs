//! Writers: the commands that put records into the outside world, kept apart from the sources
//! that read them back (as Materialize keeps what a source *is* apart from how it runs).
//!
//! - [`kafka`]: the event producer (`shopflow produce`, and the demo's producer thread);
//! - [`mysql`]: loading the demographics table (`load-demographics`) and changing it
//!   (`change-demographics`).
//!
//! They share with [`crate::sources`] only what both sides of the wire must agree on: the
//! configuration, the Avro encoding, the schema registry, and the clients and connections.

pub mod kafka;
pub mod mysql;
