//! Auto-compaction: etcd's `--auto-compaction-mode` / `--auto-compaction-retention`.
//!
//! History grows with every write until it is compacted. etcd can do that on
//! its own, in one of two modes, and so do we, with the same schedules:
//!
//! - **periodic** (retention is a duration; a bare number means hours): keep
//!   the history of the last `retention`. The compactor samples the current
//!   revision every tenth of `min(retention, 1h)` and, once `retention` has
//!   passed, compacts to the revision sampled `retention` ago; after that it
//!   compacts every `min(retention, 1h)`.
//! - **revision** (retention is a count): every 5 minutes, compact to
//!   `current - retention` when that moved since the last compaction.
//!
//! Only the leader compacts (followers' compactors idle), by proposing a
//! `Compaction` through Raft like `etcdctl compaction` would, so every member
//! compacts at the same point of its log. The schedules are pure state
//! machines driven by [`Instant`]s given to them, so they are tested without
//! sleeping; [`run`] is the task that drives them on a member.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::Core;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::pb::lcraftpb::request::Op;

/// etcd's interval between two revision-mode compactions.
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What to keep, as `--auto-compaction-mode` and `--auto-compaction-retention`
/// say. `None` of it (retention 0) disables auto-compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep the history of the last `retention`.
    Periodic { retention: Duration },
    /// Keep the last `retention` revisions; check every `interval` (etcd: 5 min).
    Revision { retention: i64, interval: Duration },
}

impl AutoCompaction {
    /// etcd's `parseCompactionRetention` plus its mode check. `Ok(None)` when
    /// the retention is zero (auto-compaction off, etcd's default).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let retention = if retention.is_empty() { "0" } else { retention };
        let policy = match mode {
            "periodic" | "" => match retention.parse::<i64>() {
                Ok(hours) if hours >= 0 => AutoCompaction::Periodic {
                    retention: Duration::from_secs((hours as u64).checked_mul(3600).ok_or_else(
                        || format!("error parsing CompactionRetention: {hours} hours is out of range"),
                    )?),
                },
                _ => AutoCompaction::Periodic {
                    retention: crate::config::values::parse_duration(retention).map_err(|_| {
                        format!(
                            "error parsing CompactionRetention: time: invalid duration {retention:?}"
                        )
                    })?,
                },
            },
            "revision" => match retention.parse::<i64>() {
                Ok(revs) if revs >= 0 => AutoCompaction::Revision {
                    retention: revs,
                    interval: REVISION_INTERVAL,
                },
                _ => {
                    return Err(format!(
                        "error parsing CompactionRetention: invalid revision retention {retention:?}"
                    ))
                }
            },
            other => return Err(format!("unknown auto-compaction-mode {other:?}")),
        };
        let off = match policy {
            AutoCompaction::Periodic { retention } => retention.is_zero(),
            AutoCompaction::Revision { retention, .. } => retention == 0,
        };
        Ok((!off).then_some(policy))
    }

    /// The schedule that carries the policy out, starting at `now`.
    pub fn schedule(self, now: Instant) -> Schedule {
        match self {
            AutoCompaction::Periodic { retention } => {
                Schedule::Periodic(Periodic::new(retention, now))
            }
            AutoCompaction::Revision {
                retention,
                interval,
            } => Schedule::Revision(RevisionSchedule {
                retention,
                interval,
                next_check: now + interval,
                last: 0,
            }),
        }
    }
}

/// A running schedule: asked regularly what to compact, told how it went.
#[derive(Debug)]
pub enum Schedule {
    Periodic(Periodic),
    Revision(RevisionSchedule),
}

impl Schedule {
    /// How often [`Schedule::poll`] wants to be called.
    pub fn tick(&self) -> Duration {
        match self {
            Schedule::Periodic(p) => p.retry_interval(),
            // Poll a little more often than the interval so a check is never
            // a whole tick late.
            Schedule::Revision(r) => (r.interval / 10).max(Duration::from_millis(10)),
        }
    }

    /// Samples `current` (the current revision) and returns the revision to
    /// compact to now, if any.
    pub fn poll(&mut self, now: Instant, current: i64) -> Option<i64> {
        match self {
            Schedule::Periodic(p) => p.poll(now, current),
            Schedule::Revision(r) => r.poll(now, current),
        }
    }

    /// Reports the outcome of compacting to `rev` (an already-compacted
    /// revision counts as success, as in etcd).
    pub fn done(&mut self, now: Instant, rev: i64, ok: bool) {
        match self {
            Schedule::Periodic(p) => p.done(now, ok),
            Schedule::Revision(r) => {
                if ok {
                    r.last = rev;
                }
            }
        }
    }
}

/// etcd's periodic compactor: a sliding window of revisions sampled every
/// tenth of the compaction interval; `revs[0]` is the revision `retention` ago.
#[derive(Debug)]
pub struct Periodic {
    retention: Duration,
    revs: VecDeque<i64>,
    last_sample: Option<Instant>,
    last_success: Instant,
    /// `retention` until the first compaction, then the compaction interval.
    wait: Duration,
}

impl Periodic {
    fn new(retention: Duration, now: Instant) -> Periodic {
        Periodic {
            retention,
            revs: VecDeque::new(),
            last_sample: None,
            last_success: now,
            wait: retention,
        }
    }

    fn compact_interval(&self) -> Duration {
        self.retention.min(Duration::from_secs(3600))
    }

    fn retry_interval(&self) -> Duration {
        (self.compact_interval() / 10).max(Duration::from_millis(1))
    }

    fn retentions(&self) -> usize {
        (self.retention.as_nanos() / self.retry_interval().as_nanos()) as usize + 1
    }

    fn poll(&mut self, now: Instant, current: i64) -> Option<i64> {
        let due_sample = self
            .last_sample
            .is_none_or(|t| now.duration_since(t) >= self.retry_interval());
        if due_sample {
            self.revs.push_back(current);
            if self.revs.len() > self.retentions() {
                self.revs.pop_front();
            }
            self.last_sample = Some(now);
        }
        if now.duration_since(self.last_success) < self.wait {
            return None;
        }
        self.wait = self.compact_interval();
        self.revs.front().copied()
    }

    fn done(&mut self, now: Instant, ok: bool) {
        if ok {
            self.last_success = now;
        }
    }
}

/// etcd's revision compactor: every `interval`, compact to
/// `current - retention` if that is new.
#[derive(Debug)]
pub struct RevisionSchedule {
    retention: i64,
    interval: Duration,
    next_check: Instant,
    /// The last revision compacted to.
    last: i64,
}

impl RevisionSchedule {
    fn poll(&mut self, now: Instant, current: i64) -> Option<i64> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + self.interval;
        let rev = current - self.retention;
        (rev > 0 && rev != self.last).then_some(rev)
    }
}

/// Drives `policy` on one member until `shutdown`: polls while this member
/// leads and proposes the compactions the schedule asks for.
pub async fn run(core: Arc<Core>, policy: AutoCompaction, shutdown: CancellationToken) {
    let mut schedule = policy.schedule(Instant::now());
    let mode = match policy {
        AutoCompaction::Periodic { .. } => "periodic",
        AutoCompaction::Revision { .. } => "revision",
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule.tick()) => {}
            _ = shutdown.cancelled() => return,
        }
        if !core.raft.status().is_leader {
            // etcd pauses the compactor on followers; a new leader starts
            // its window afresh.
            schedule = policy.schedule(Instant::now());
            continue;
        }
        let current = core.store.current_revision();
        let Some(rev) = schedule.poll(Instant::now(), current) else {
            continue;
        };
        if rev <= core.store.compact_revision() {
            schedule.done(Instant::now(), rev, true);
            continue;
        }
        tracing::info!(revision = rev, "starting auto {mode} compaction");
        let started = Instant::now();
        let result = core
            .propose(Op::Compaction(CompactionRequest {
                revision: rev,
                physical: false,
            }))
            .await;
        match result {
            Ok(_) => {
                tracing::info!(revision = rev, took = ?started.elapsed(), "completed auto {mode} compaction");
                schedule.done(Instant::now(), rev, true);
            }
            Err(status) if status.message() == crate::api::errors::COMPACTED => {
                schedule.done(Instant::now(), rev, true);
            }
            Err(status) => {
                tracing::warn!(revision = rev, error = %status.message(), "failed auto {mode} compaction");
                schedule.done(Instant::now(), rev, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Duration = Duration::from_secs(3600);

    #[test]
    fn retention_parses_as_etcd_parses_it() {
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(None));
        assert_eq!(p("periodic", ""), Ok(None));
        assert_eq!(
            p("periodic", "1"),
            Ok(Some(AutoCompaction::Periodic { retention: H }))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(Some(AutoCompaction::Periodic {
                retention: Duration::from_secs(1800)
            }))
        );
        assert_eq!(
            p("revision", "1000"),
            Ok(Some(AutoCompaction::Revision {
                retention: 1000,
                interval: REVISION_INTERVAL
            }))
        );
        assert_eq!(
            p("periodic", "soon"),
            Err("error parsing CompactionRetention: time: invalid duration \"soon\"".into())
        );
        assert_eq!(
            p("hourly", "1"),
            Err("unknown auto-compaction-mode \"hourly\"".into())
        );
        assert!(p("revision", "1h").is_err());
        assert_eq!(
            p("periodic", "5124100000000000"),
            Err("error parsing CompactionRetention: 5124100000000000 hours is out of range".into()),
            "hours past what a duration holds are an error, not an overflow"
        );
    }

    /// Polls `s` every tick from `t0` for `span`, with the revision growing
    /// by one per tick; returns (seconds since t0, revision) of compactions.
    fn drive(s: &mut Schedule, t0: Instant, span: Duration) -> Vec<(u64, i64)> {
        let tick = s.tick();
        let mut out = Vec::new();
        let mut now = t0;
        let mut rev = 1;
        while now <= t0 + span {
            if let Some(r) = s.poll(now, rev) {
                s.done(now, r, true);
                out.push((now.duration_since(t0).as_secs(), r));
            }
            now += tick;
            rev += 1;
        }
        out
    }

    #[test]
    fn periodic_waits_one_retention_then_compacts_to_the_revision_of_retention_ago() {
        let t0 = Instant::now();
        let policy = AutoCompaction::Periodic {
            retention: Duration::from_secs(10),
        };
        let mut s = policy.schedule(t0);
        assert_eq!(s.tick(), Duration::from_secs(1));
        // Revision r is sampled at second r-1.
        let got = drive(&mut s, t0, Duration::from_secs(30));
        assert_eq!(got, vec![(10, 1), (20, 11), (30, 21)]);
    }

    #[test]
    fn periodic_with_a_long_retention_compacts_hourly() {
        let t0 = Instant::now();
        let mut s = AutoCompaction::Periodic { retention: 3 * H }.schedule(t0);
        assert_eq!(s.tick(), Duration::from_secs(360));
        let got = drive(&mut s, t0, 5 * H);
        let times: Vec<u64> = got.iter().map(|(t, _)| t / 3600).collect();
        assert_eq!(times, vec![3, 4, 5]);
        // Each compaction keeps three hours of history (ten samples an hour).
        for (t, rev) in got {
            assert_eq!(rev, (t - 3 * 3600) as i64 / 360 + 1);
        }
    }

    #[test]
    fn a_failed_periodic_compaction_is_retried_at_the_next_tick() {
        let t0 = Instant::now();
        let mut s = AutoCompaction::Periodic {
            retention: Duration::from_secs(10),
        }
        .schedule(t0);
        let mut now = t0;
        for rev in 1..=10 {
            assert_eq!(s.poll(now, rev), None);
            now += Duration::from_secs(1);
        }
        assert_eq!(s.poll(now, 11), Some(1));
        s.done(now, 1, false);
        now += Duration::from_secs(1);
        assert_eq!(s.poll(now, 12), Some(2), "retried a tick later");
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_and_skips_when_nothing_moved() {
        let t0 = Instant::now();
        let mut s = AutoCompaction::Revision {
            retention: 100,
            interval: Duration::from_secs(300),
        }
        .schedule(t0);
        assert_eq!(s.poll(t0 + Duration::from_secs(299), 1000), None);
        let now = t0 + Duration::from_secs(300);
        assert_eq!(s.poll(now, 1000), Some(900));
        s.done(now, 900, true);
        let now = now + Duration::from_secs(300);
        assert_eq!(s.poll(now, 1000), None, "no write since: nothing to do");
        let now = now + Duration::from_secs(300);
        assert_eq!(s.poll(now, 1050), Some(950));
        let mut young = AutoCompaction::Revision {
            retention: 100,
            interval: Duration::from_secs(1),
        }
        .schedule(t0);
        assert_eq!(young.poll(t0 + Duration::from_secs(1), 50), None);
    }
}
