//! `GET /metrics`: the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! Figures the run already keeps are read at scrape time by a collector (the counters, the
//! runtime gauges, the sink's totals, the checkpoints); the per-tick histograms are observed by
//! the sink thread ([`Observed::completed`](super::observed::Observed::completed)).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dataflows::model::{Counter, CounterOrigin};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::AppState;
use super::observed::{counters, lock};
use crate::runtime::{Status, now_ms};

/// The registry of a server: the histograms and the collector over `status`.
pub fn registry(status: &Arc<Status>) -> Registry {
    let mut registry = Registry::default();
    let histograms = &status.observed.histograms;
    registry.register(
        "shopflow_worker_busy_seconds",
        "CPU time each worker thread spent per tick it closed, by worker (its global index)",
        histograms.worker_busy.clone(),
    );
    registry.register(
        "shopflow_tick_processing_seconds",
        "Time from the last local worker closing a timestamp's inputs to its output reaching the sink",
        histograms.tick_processing.clone(),
    );
    registry.register_collector(Box::new(StatusCollector(Arc::clone(status))));
    registry
}

/// Reads the run's figures at each scrape.
#[derive(Debug)]
struct StatusCollector(Arc<Status>);

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge_i64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge_f64(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = &self.0;
        let observed = &status.observed;
        let (counters, time, runtime, lines, bytes) = {
            let table = lock(&status.table);
            let recent = lock(&observed.recent);
            (
                counters(&table),
                recent.time,
                recent.runtime,
                recent.lines,
                recent.bytes,
            )
        };
        for (&kind, (name, value)) in Counter::ALL.iter().zip(&counters) {
            if kind.origin() == CounterOrigin::DemographicsTable {
                // How many rows are such now: it goes down as well as up.
                gauge_i64(
                    &mut encoder,
                    &format!("shopflow_pipeline_{name}_rows"),
                    &format!("The pipeline measurement's {name}: demographics rows skipped now"),
                    *value,
                )?;
            } else {
                counter(
                    &mut encoder,
                    &format!("shopflow_pipeline_{name}"),
                    &format!("The pipeline measurement's {name} counter (this process's workers)"),
                    u64::try_from(*value).unwrap_or(0),
                )?;
            }
        }
        let r = runtime.unwrap_or_default();
        gauge_i64(
            &mut encoder,
            "shopflow_consumer_lag_messages",
            "Messages in this process's Kafka partitions not yet read (runtime consumer_lag)",
            i64::try_from(r.consumer_lag).unwrap_or(i64::MAX),
        )?;
        gauge_f64(
            &mut encoder,
            "shopflow_freshness_seconds",
            "Now minus the newest event time the written output reflects (runtime freshness_ms)",
            r.freshness_ms as f64 / 1e3,
        )?;
        gauge_f64(
            &mut encoder,
            "shopflow_events_per_second",
            "Events entering the dataflow per second over the last second (runtime events_per_second)",
            r.events_per_second,
        )?;
        counter(
            &mut encoder,
            "shopflow_sink_retries",
            "Write retries of the sink (runtime sink_retries)",
            r.sink_retries,
        )?;
        counter(
            &mut encoder,
            "shopflow_sink_rejected_lines",
            "Lines the sink's destination refused, counted and skipped (runtime sink_rejected_lines)",
            r.sink_rejected_lines,
        )?;
        counter(
            &mut encoder,
            "shopflow_sink_lines",
            "Lines the sink wrote",
            lines,
        )?;
        counter(
            &mut encoder,
            "shopflow_sink_bytes",
            "Bytes of line protocol the sink wrote (before any compression)",
            bytes,
        )?;
        counter(
            &mut encoder,
            "shopflow_input_events",
            "Events that entered the dataflow from this process's workers",
            status.generated.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "shopflow_batches",
            "Completed timestamps with output handed to the sink",
            status.batches.load(Ordering::Relaxed),
        )?;
        if let Some(time) = time {
            gauge_f64(
                &mut encoder,
                "shopflow_last_completed_timestamp_seconds",
                "The last timestamp handed to the sink (processing time, since the epoch)",
                time as f64 / 1e3,
            )?;
        }
        let Some(begun) = observed.begun() else {
            return Ok(());
        };
        {
            let metric = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "shopflow_worker_cpu_seconds",
                "CPU time each local worker thread spent over the ticks it closed, by worker",
                None,
                metric.metric_type(),
            )?;
            for (i, slot) in observed.workers().iter().enumerate() {
                let labels = [("worker", (begun.first_worker + i).to_string())];
                let seconds = slot.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
                ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "shopflow_build_info",
                "The version, and this process's place in the cluster; always 1",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("process", begun.process.to_string()),
                ("processes", begun.processes.to_string()),
                ("workers", begun.workers.to_string()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        gauge_i64(
            &mut encoder,
            "shopflow_workers",
            "Worker threads in this process",
            begun.workers as i64,
        )?;
        gauge_i64(
            &mut encoder,
            "shopflow_process_index",
            "This process's index in the cluster",
            begun.process as i64,
        )?;
        gauge_f64(
            &mut encoder,
            "shopflow_start_time_seconds",
            "When the run started, since the epoch",
            begun.started_ms as f64 / 1e3,
        )?;
        if let Some((age, size)) = begun.checkpoints.as_deref().and_then(newest_checkpoint) {
            gauge_f64(
                &mut encoder,
                "shopflow_checkpoint_age_seconds",
                "Time since the newest complete checkpoint was written",
                age,
            )?;
            gauge_i64(
                &mut encoder,
                "shopflow_checkpoint_size_bytes",
                "The size of the newest complete checkpoint, every worker's file",
                i64::try_from(size).unwrap_or(i64::MAX),
            )?;
        }
        Ok(())
    }
}

/// The age in seconds (by its newest file) and the size of the newest complete checkpoint.
fn newest_checkpoint(dir: &std::path::Path) -> Option<(f64, u64)> {
    let found = crate::checkpoint::latest(dir).ok()??;
    let mut size = 0;
    let mut newest = std::time::UNIX_EPOCH;
    for file in &found.files {
        let metadata = std::fs::metadata(file).ok()?;
        size += metadata.len();
        newest = newest.max(metadata.modified().ok()?);
    }
    let written_ms = newest
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    Some((now_ms().saturating_sub(written_ms) as f64 / 1e3, size))
}

/// `GET /metrics`.
pub async fn get_metrics(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics",
        )
            .into_response(),
    }
}
