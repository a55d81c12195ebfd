//! MySQL/MariaDB: the demographics table created and bulk-loaded (`shopflow load-demographics`),
//! then changed at a rate (`shopflow change-demographics`), for [`crate::sources::mysql`] to
//! read as a snapshot and follow through the binlog.
//!
//! Every statement is parameterized except for the table name, which cannot be a parameter and
//! is therefore validated as a plain identifier and quoted.

mod changes;
mod load;

pub use changes::{ApplyReport, apply_changes};
pub use load::{LoadReport, load_demographics};
