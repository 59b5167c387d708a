//! `--metrics ADDR` of every daemon: Prometheus text metrics over HTTP
//! (`GET /metrics`, or any path) from the `metrics` facade that the crates
//! record into. Without the flag nothing is installed and recording costs
//! nothing. Owns: the exporter's setup. Must not touch: what is measured.

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Latency buckets (seconds) of every `*_seconds` histogram: 50 us to 30 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Serves this process's metrics on `addr`, every series labelled with
/// `daemon` (meta, chunkserver, mount, iscsi). Must run inside the runtime.
pub fn serve(addr: Option<&str>, daemon: &'static str) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let at: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("--metrics {addr}: not an address and port"))?;
    PrometheusBuilder::new()
        .with_http_listener(at)
        .add_global_label("daemon", daemon)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("metrics buckets")?
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    tracing::info!(%at, "metrics served");
    Ok(())
}
