//! Turns the latencies and error count of a run into a [`Summary`] (throughput,
//! latency percentiles) and renders it as text or JSON.
//!
//! Percentiles use the nearest-rank method on the sorted samples: the p-th
//! percentile is the smallest sample such that at least p% of the samples are
//! less than or equal to it. Throughput counts successful requests only, over the
//! wall time of the whole run.

use std::time::Duration;

use serde::Serialize;

/// Latency figures of the successful requests, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
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
    /// The first error seen, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
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
    /// requests (in any order) and its error count.
    pub fn new(
        mut latencies: Vec<Duration>,
        errors: u64,
        first_error: Option<String>,
        elapsed: Duration,
    ) -> Summary {
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        let latency_ms = if latencies.is_empty() {
            Latency::default()
        } else {
            let sum: Duration = latencies.iter().sum();
            Latency {
                min: ms(latencies[0]),
                mean: ms(sum) / latencies.len() as f64,
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
            first_error,
            elapsed_s: secs,
            rps: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            latency_ms,
        }
    }

    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let l = &self.latency_ms;
        let mut out = format!(
            "Summary:\n  Total:        {:.4} s\n  Requests:     {} ({} ok, {} errors)\n  Requests/sec: {:.1}\n\nLatency (ms):\n  min   {:.3}\n  mean  {:.3}\n  p50   {:.3}\n  p90   {:.3}\n  p99   {:.3}\n  p99.9 {:.3}\n  max   {:.3}\n",
            self.elapsed_s, self.requests, self.ok, self.errors, self.rps,
            l.min, l.mean, l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(e) = &self.first_error {
            out.push_str(&format!("\nFirst error: {e}\n"));
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
        let s = Summary::new(
            millis(&[40, 10, 30, 20]),
            1,
            Some("boom".into()),
            Duration::from_secs(2),
        );
        assert_eq!((s.requests, s.ok, s.errors), (5, 4, 1));
        assert_eq!(s.rps, 2.0);
        assert_eq!(s.latency_ms.min, 10.0);
        assert_eq!(s.latency_ms.mean, 25.0);
        assert_eq!(s.latency_ms.p50, 20.0);
        assert_eq!(s.latency_ms.p90, 40.0);
        assert_eq!(s.latency_ms.max, 40.0);
        assert!(s.to_text().contains("First error: boom"));
    }

    #[test]
    fn summary_of_nothing_is_zero_not_a_panic() {
        let s = Summary::new(Vec::new(), 3, None, Duration::ZERO);
        assert_eq!((s.requests, s.ok, s.rps), (3, 0, 0.0));
        assert_eq!(s.latency_ms, Latency::default());
    }

    #[test]
    fn json_has_the_documented_fields() {
        let s = Summary::new(millis(&[1, 2]), 0, None, Duration::from_secs(1));
        let v = serde_json::to_value(&s).unwrap();
        for field in ["requests", "ok", "errors", "elapsed_s", "rps"] {
            assert!(v.get(field).is_some(), "{field} missing in {v}");
        }
        for field in ["min", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"].get(field).is_some(), "{field} missing");
        }
        assert!(v.get("first_error").is_none());
    }
}
