//! Turns the latencies and error count of a run into a [`Summary`] (throughput,
//! latency percentiles) and renders it as text or JSON.
//!
//! Percentiles use the nearest-rank method on the sorted samples: the p-th
//! percentile is the smallest sample such that at least p% of the samples are
//! less than or equal to it. Throughput counts successful requests only, over the
//! wall time of the whole run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Latency figures of the successful requests, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The outcome of one benchmark run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Requests attempted (successes + errors).
    pub requests: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (gRPC status or transport error).
    pub errors: u64,
    /// How many requests failed with each error (etcd benchmark's "Error
    /// distribution").
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub error_distribution: BTreeMap<String, u64>,
    /// Wall time of the run, in seconds.
    pub elapsed_s: f64,
    /// Successful requests per second of wall time.
    pub rps: f64,
    /// Latency of the successful requests.
    pub latency_ms: Latency,
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Summarises a run that took `elapsed`, with the latencies of its successful
    /// requests (in any order) and the count of its failures by error.
    pub fn new(
        mut latencies: Vec<Duration>,
        error_distribution: BTreeMap<String, u64>,
        elapsed: Duration,
    ) -> Summary {
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        let errors = error_distribution.values().sum();
        let latency_ms = if latencies.is_empty() {
            Latency::default()
        } else {
            let n = latencies.len() as f64;
            let mean = latencies.iter().map(|&d| ms(d)).sum::<f64>() / n;
            let variance = latencies
                .iter()
                .map(|&d| (ms(d) - mean).powi(2))
                .sum::<f64>()
                / n;
            Latency {
                min: ms(latencies[0]),
                mean,
                stddev: variance.sqrt(),
                p50: ms(percentile(&latencies, 50.0)),
                p90: ms(percentile(&latencies, 90.0)),
                p99: ms(percentile(&latencies, 99.0)),
                p999: ms(percentile(&latencies, 99.9)),
                max: ms(latencies[latencies.len() - 1]),
            }
        };
        let secs = elapsed.as_secs_f64();
        Summary {
            requests: ok + errors,
            ok,
            errors,
            error_distribution,
            elapsed_s: secs,
            rps: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency_ms,
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "Summary:\n  Total:        {:.4} s\n  Requests:     {} ({} ok, {} errors)\n  Requests/sec: {:.1}\n\nLatency (ms):\n  min    {:.3}\n  mean   {:.3}\n  stddev {:.3}\n  p50    {:.3}\n  p90    {:.3}\n  p99    {:.3}\n  p99.9  {:.3}\n  max    {:.3}\n",
            self.elapsed_s, self.requests, self.ok, self.errors, self.rps,
            l.min, l.mean, l.stddev, l.p50, l.p90, l.p99, l.p999, l.max
        );
        if !self.error_distribution.is_empty() {
            out.push_str("\nError distribution:\n");
            for (error, count) in &self.error_distribution {
                out.push_str(&format!("  [{count}]\t{error}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&sorted, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&sorted, 90.0), Duration::from_millis(90));
        assert_eq!(percentile(&sorted, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 99.9), Duration::from_millis(100));
        assert_eq!(percentile(&sorted, 100.0), Duration::from_millis(100));
        let small = millis(&[10, 20, 30]);
        assert_eq!(percentile(&small, 50.0), Duration::from_millis(20));
        assert_eq!(percentile(&small, 0.1), Duration::from_millis(10));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn summary_sorts_samples_and_counts_only_successes_in_throughput() {
        let errors = BTreeMap::from([("boom".to_string(), 2), ("bang".to_string(), 1)]);
        let s = Summary::new(millis(&[40, 10, 30, 20]), errors, Duration::from_secs(2));
        assert_eq!((s.requests, s.ok, s.errors), (7, 4, 3));
        assert_eq!(s.rps, 2.0);
        assert_eq!(s.latency_ms.min, 10.0);
        assert_eq!(s.latency_ms.mean, 25.0);
        assert_eq!(s.latency_ms.stddev, 125f64.sqrt());
        assert_eq!(s.latency_ms.p50, 20.0);
        assert_eq!(s.latency_ms.p90, 40.0);
        assert_eq!(s.latency_ms.max, 40.0);
        assert!(
            s.to_text()
                .contains("Error distribution:\n  [1]\tbang\n  [2]\tboom\n"),
            "{}",
            s.to_text()
        );
    }

    #[test]
    fn summary_of_nothing_is_zero_not_a_panic() {
        let s = Summary::new(
            Vec::new(),
            BTreeMap::from([("x".to_string(), 3)]),
            Duration::ZERO,
        );
        assert_eq!((s.requests, s.ok, s.rps), (3, 0, 0.0));
        assert_eq!(s.latency_ms, Latency::default());
    }

    #[test]
    fn json_has_the_documented_fields() {
        let s = Summary::new(millis(&[1, 2]), BTreeMap::new(), Duration::from_secs(1));
        let v = serde_json::to_value(&s).unwrap();
        for field in ["requests", "ok", "errors", "elapsed_s", "rps"] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        for field in ["min", "mean", "stddev", "p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(field).is_some(), "{field} missing");
        }
        assert!(v.get("error_distribution").is_none());
    }
}
