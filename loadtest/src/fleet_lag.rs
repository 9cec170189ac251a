//! `--observe-addr`: cross-replica visibility lag of a segd fleet. While the
//! workload runs against `--addr`, a probe records one impression at a time
//! on `--addr` (a fresh user and cap key each) and, from the moment that
//! replica acknowledged it (read-your-writes there), polls `Decide` on the
//! observing replica until its cap of 1 is reached there: that wait is the
//! lag a caller on another replica sees. Probes are sequential and spaced
//! `--observe-interval-ms` apart, so they add almost no load; polling is back
//! to back for the first 2 ms, then once a millisecond (the resolution of
//! longer lags).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use segd::proto::segments_client::SegmentsClient;
use segd::proto::{Candidate, DecideRequest, FrequencyCap, Impression, RecordImpressionsRequest};
use tonic::transport::{Channel, Endpoint};

use crate::report::{FleetLag, Histogram, Percentiles, new_histogram, record_micros};

/// How long the observer is polled back to back; later, once a millisecond
/// (the resolution of lags beyond it).
const TIGHT_POLLING: Duration = Duration::from_millis(2);

/// A probe not seen on the observer within this long counts as lost.
const GIVE_UP: Duration = Duration::from_secs(5);

async fn connect(addr: &str) -> Result<SegmentsClient<Channel>> {
    let channel = Endpoint::from_shared(addr.to_owned())
        .with_context(|| format!("{addr} is not a valid URL"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    Ok(SegmentsClient::new(channel))
}

/// Probes from `measure_from` until `until`; `run_nonce` keeps users unique
/// across runs against the same fleet.
pub async fn probe(
    record_addr: &str,
    observe_addr: &str,
    interval: Duration,
    measure_from: Instant,
    until: Instant,
    run_nonce: u64,
) -> Result<FleetLag> {
    let mut recorder = connect(record_addr).await?;
    let mut observer = connect(observe_addr).await?;
    tokio::time::sleep_until(measure_from.into()).await;
    let mut histogram: Histogram = new_histogram();
    let mut lost = 0;
    let mut index = 0u64;
    while Instant::now() < until {
        let next = Instant::now() + interval;
        let user_id = format!("lag-probe:{run_nonce}:{index}");
        let cap_key = format!("lag:{run_nonce}:{index}");
        index += 1;
        match probe_once(&mut recorder, &mut observer, &user_id, &cap_key).await {
            Some(lag) => record_micros(&mut histogram, lag.as_micros() as u64),
            None => lost += 1,
        }
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(FleetLag {
        observe_addr: observe_addr.to_owned(),
        lag: Percentiles::of(&histogram),
        lost,
    })
}

async fn probe_once(
    recorder: &mut SegmentsClient<Channel>,
    observer: &mut SegmentsClient<Channel>,
    user_id: &str,
    cap_key: &str,
) -> Option<Duration> {
    let impression = Impression {
        user_id: user_id.to_owned(),
        cap_keys: vec![cap_key.to_owned()],
        at_unix_seconds: 0,
        impression_id: format!("{user_id}/probe"),
    };
    recorder
        .record_impressions(RecordImpressionsRequest {
            impressions: vec![impression],
        })
        .await
        .ok()?;
    let acknowledged = Instant::now();
    let decide = DecideRequest {
        user_id: user_id.to_owned(),
        candidates: vec![Candidate {
            id: "probe".to_owned(),
            caps: vec![FrequencyCap {
                key: cap_key.to_owned(),
                limit: 1,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    while acknowledged.elapsed() < GIVE_UP {
        let decisions = observer
            .decide(decide.clone())
            .await
            .ok()?
            .into_inner()
            .decisions;
        if decisions.first().is_some_and(|decision| !decision.eligible) {
            return Some(acknowledged.elapsed());
        }
        // Back to back for the first TIGHT_POLLING, then once a millisecond:
        // a slow replica is not loaded further by its own probe.
        if acknowledged.elapsed() > TIGHT_POLLING {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    None
}
