//! Avro events with the Confluent wire framing. (Being written.)
