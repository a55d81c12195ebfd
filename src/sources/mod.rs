//! Sources: how records from the outside world become the model's records.

pub mod avro;
pub mod kafka;
pub mod mysql;
pub mod registry;
