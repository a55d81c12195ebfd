//! `/health` (the process is alive and its workers step) and `/ready` (its sources answer, its
//! sink keeps up, and it is caught up): 200 or 503, with a one-line JSON reason.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use crate::config::http::HttpConfig;
use crate::runtime::observed::lock;
use crate::runtime::{Status, now_ms};

/// Whether the process is alive and its workers step: `Err` says why not.
pub fn health(status: &Status, config: &HttpConfig, now: u64) -> Result<String, String> {
    if status.sink_failed.load(Ordering::Relaxed) {
        return Err("the run failed: the sink gave up".into());
    }
    if status.observed.begun().is_none() {
        return Ok("starting".into());
    }
    for (i, slot) in status.observed.workers().iter().enumerate() {
        let silent = now.saturating_sub(slot.heartbeat_ms.load(Ordering::Relaxed));
        if silent > config.health_stall_ms {
            return Err(format!(
                "local worker {i} has not stepped for {:.1}s (http.health-stall-ms is {})",
                silent as f64 / 1e3,
                config.health_stall_ms
            ));
        }
    }
    Ok("workers stepping".into())
}

/// Whether the process is connected to its sources and sink and caught up: `Err` says why not.
pub fn ready(status: &Status, config: &HttpConfig, now: u64) -> Result<String, String> {
    health(status, config, now)?;
    if status.stop.load(Ordering::Relaxed) {
        return Err("stopping".into());
    }
    let Some(begun) = status.observed.begun() else {
        return Err("starting: the run has not started".into());
    };
    let (completed_below, advanced_ms) = {
        let recent = lock(&status.observed.recent);
        (recent.completed_below, recent.completed_advanced_ms)
    };
    if completed_below == 0 {
        return Err("starting: no timestamp has completed yet".into());
    }
    if begun.kafka {
        for (i, slot) in status.observed.workers().iter().enumerate() {
            let answered = slot.source_answered_ms.load(Ordering::Relaxed);
            let silent = now.saturating_sub(answered);
            if answered == 0 || silent > config.ready_stall_ms {
                return Err(format!(
                    "local worker {i}: Kafka has not answered for {:.1}s (http.ready-stall-ms is {})",
                    silent.min(now.saturating_sub(begun.started_ms)) as f64 / 1e3,
                    config.ready_stall_ms
                ));
            }
        }
    }
    if let Some(slot) = &begun.mysql {
        match slot.get() {
            None => return Err("starting: the MySQL demographics are not read yet".into()),
            Some(follower) => follower.connected()?,
        }
    }
    let stalled = now.saturating_sub(advanced_ms);
    if stalled > config.ready_stall_ms {
        return Err(format!(
            "no timestamp has completed for {:.1}s (http.ready-stall-ms is {})",
            stalled as f64 / 1e3,
            config.ready_stall_ms
        ));
    }
    let unacknowledged = completed_below.saturating_sub(begun.acknowledged.below());
    if unacknowledged > config.ready_stall_ms {
        return Err(format!(
            "the sink has not acknowledged the last {:.1}s of output (http.ready-stall-ms is {})",
            unacknowledged as f64 / 1e3,
            config.ready_stall_ms
        ));
    }
    let lag: u64 = lock(&status.consumer_lags).values().sum();
    if lag > config.ready_max_lag {
        return Err(format!(
            "{lag} messages not yet read (http.ready-max-lag is {})",
            config.ready_max_lag
        ));
    }
    Ok(format!("caught up: {lag} messages not yet read"))
}

/// The response: 200 with `{"status":"ok",...}` or 503 with `{"status":"unavailable",...}`.
fn respond(outcome: Result<String, String>) -> (StatusCode, Json<Value>) {
    match outcome {
        Ok(reason) => (
            StatusCode::OK,
            Json(json!({ "status": "ok", "reason": reason })),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        ),
    }
}

/// `GET /health`.
pub async fn get_health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    respond(health(&state.status, &state.config, now_ms()))
}

/// `GET /ready`.
pub async fn get_ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    respond(ready(&state.status, &state.config, now_ms()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::runtime::observed::Begun;
    use crate::sinks::Acknowledged;

    fn config() -> HttpConfig {
        HttpConfig {
            listen: "off".into(),
            ready_max_lag: 100,
            ready_stall_ms: 10_000,
            health_stall_ms: 30_000,
            recent_windows: 3,
        }
    }

    fn begun(kafka: bool, acknowledged: &Acknowledged) -> Begun {
        Begun {
            process: 0,
            processes: 1,
            workers: 2,
            first_worker: 0,
            kafka,
            checkpoints: None::<PathBuf>,
            started_ms: crate::runtime::now_ms(),
            acknowledged: acknowledged.clone(),
            recent_windows: 3,
            mysql: None,
        }
    }

    /// Each reason, in turn, and the way back to ready.
    #[test]
    fn reasons_for_not_being_ready() {
        let status = Status::default();
        let config = config();
        let now = crate::runtime::now_ms();
        assert_eq!(health(&status, &config, now), Ok("starting".into()));
        assert!(
            ready(&status, &config, now)
                .unwrap_err()
                .contains("not started")
        );
        let acknowledged = Acknowledged::default();
        status.observed.begin(begun(true, &acknowledged));
        assert!(
            ready(&status, &config, now)
                .unwrap_err()
                .contains("no timestamp")
        );
        status.observed.completed(20_000);
        assert!(ready(&status, &config, now).unwrap_err().contains("Kafka"));
        status.observed.source_answered(0);
        status.observed.source_answered(1);
        assert!(
            ready(&status, &config, now)
                .unwrap_err()
                .contains("acknowledged")
        );
        acknowledged.advance(20_000);
        lock(&status.consumer_lags).insert(0, 101);
        assert!(
            ready(&status, &config, now)
                .unwrap_err()
                .contains("101 messages")
        );
        lock(&status.consumer_lags).insert(0, 100);
        assert!(ready(&status, &config, now).is_ok());
        // Later, with nothing answering or completing.
        let later = now + 15_000;
        assert!(
            ready(&status, &config, later)
                .unwrap_err()
                .contains("Kafka")
        );
        assert!(health(&status, &config, later).is_ok());
        let much_later = now + 45_000;
        assert!(
            health(&status, &config, much_later)
                .unwrap_err()
                .contains("not stepped")
        );
        status.sink_failed.store(true, Ordering::Relaxed);
        assert!(
            health(&status, &config, now)
                .unwrap_err()
                .contains("failed")
        );
    }
}
