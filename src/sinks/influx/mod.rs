//! The InfluxDB sink. (Being written.)
