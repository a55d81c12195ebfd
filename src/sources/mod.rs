//! Sources: how records from the outside world become the model's records.

pub mod avro;
