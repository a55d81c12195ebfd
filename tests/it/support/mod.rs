//! What the integration tests share, written once: the real services with a test's own database
//! and topic and the service script (`services`), the built binary as a process (`process`), Avro
//! messages built by hand or by apache-avro (`avro`), InfluxDB read back (`influx`), Kafka's
//! watermarks and committed offsets (`kafka`), what the library logs (`logs`), a scenario on the
//! real services with its oracle (`scenario`), and seeded random inputs for the dataflow and the
//! tools that recompute it (`random`).

pub mod avro;
pub mod influx;
pub mod kafka;
pub mod logs;
pub mod process;
pub mod random;
pub mod scenario;
pub mod services;
