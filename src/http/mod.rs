//! The HTTP server of every long-running command: for now, the dashboard page's files.

pub mod assets;
