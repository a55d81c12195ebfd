//! shopflow: real-time e-commerce analytics on timely and differential dataflow.
//!
//! The graphs live in the `dataflows` crate; this crate holds what runs them: configuration,
//! generators, sources, sinks, and the runtime that wires them together.

pub mod generators;
