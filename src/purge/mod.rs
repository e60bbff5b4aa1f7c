//! The purge: deletes expired `stored_http_session` rows on a cron schedule.
//!
//! SAP Commerce leaves stale `StoredHttpSession` items forever and tells operators to set up a
//! cron job. Ours runs in every node on `session.purge.cron` (Quartz-style, seconds first, UTC),
//! each run delayed by a random jitter of up to `session.purge.jitter` seconds so a fleet does
//! not fire at the same second. Rows go in batches of `session.purge.batch.size`, so a huge
//! backlog never holds long locks. Only one node purges at a time (PostgreSQL advisory lock,
//! MySQL `GET_LOCK`; SQLite has a single writer anyway); the others skip that run. An error ends
//! the run, not the job. Expired rows are never restored even before they are purged: every read
//! filters on `expires_at`.
//!
//! [`Purger::purge_once`] is the step tests call; [`Purger::run_until_stopped`] is the loop.

use std::future::Future;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{self, EpochMillis, SessionAdmin};

/// A cron expression that is not usable; the message says what is expected (it follows
/// "expected" in the configuration's error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// A parsed `session.purge.cron` schedule.
#[derive(Clone, Debug)]
pub struct PurgeSchedule(cron::Schedule);

impl PurgeSchedule {
    /// Parses a Quartz-style expression: seconds, minutes, hours, day of month, month, day of
    /// week, optional year (e.g. `0 * * * * *`: every minute; `0 0 3 * * *`: 03:00 UTC daily).
    pub fn parse(expression: &str) -> Result<Self, ScheduleError> {
        let fields = expression.split_whitespace().count();
        if fields == 5 {
            return Err(ScheduleError(format!(
                "6 or 7 fields, seconds first (Quartz style); {expression:?} has 5: write \
                 \"0 {expression}\" for the Unix cron meaning"
            )));
        }
        if !(6..=7).contains(&fields) {
            return Err(ScheduleError(format!(
                "6 or 7 fields: seconds minutes hours day-of-month month day-of-week [year], \
                 e.g. \"0 0 3 * * *\" (03:00 UTC daily); {expression:?} has {fields}"
            )));
        }
        let schedule = cron::Schedule::from_str(expression).map_err(|e| {
            // The parser's message repeats the expression over several lines, with a caret;
            // its last line says what is wrong.
            let text = e.to_string();
            let reason = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|line| !line.is_empty() && !line.starts_with('^'))
                .unwrap_or("not understood")
                .to_owned();
            ScheduleError(format!(
                "a cron expression, seconds first (e.g. \"0 0 3 * * *\"); in {expression:?}: {reason}"
            ))
        })?;
        if schedule.upcoming(chrono::Utc).next().is_none() {
            return Err(ScheduleError(format!(
                "a schedule that runs; {expression:?} names no date that exists (e.g. 31 February)"
            )));
        }
        Ok(Self(schedule))
    }

    /// The next time after `after` (UTC).
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.after(&after).next()
    }
}

/// The longest one purge run may take; the rest waits for the next run.
pub const RUN_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// What one purge run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Rows deleted.
    pub deleted: u64,
    /// Another node held the purge lock: this run did nothing.
    pub skipped: bool,
    /// How long the run took.
    pub took: Duration,
}

/// Deletes expired rows of one store on a schedule.
#[derive(Clone)]
pub struct Purger {
    store: Arc<dyn SessionAdmin>,
    schedule: PurgeSchedule,
    batch_size: u32,
    jitter: Duration,
}

impl Purger {
    /// A purger of `store`, `batch_size` rows per statement, runs on `schedule` delayed by a
    /// random part of `jitter`.
    pub fn new(
        store: Arc<dyn SessionAdmin>,
        schedule: PurgeSchedule,
        batch_size: u32,
        jitter: Duration,
    ) -> Self {
        Self {
            store,
            schedule,
            batch_size: batch_size.max(1),
            jitter,
        }
    }

    /// One run: deletes the rows expired at `now`, unless another node is purging.
    pub async fn purge_once(&self, now: EpochMillis) -> Result<PurgeReport, store::Error> {
        let started = std::time::Instant::now();
        let deleted = self
            .store
            .purge_expired_exclusive(now, self.batch_size)
            .await?;
        let report = PurgeReport {
            deleted: deleted.unwrap_or(0),
            skipped: deleted.is_none(),
            took: started.elapsed(),
        };
        crate::metrics::purged((!report.skipped).then_some(report.deleted), report.took);
        Ok(report)
    }

    /// Runs on the schedule until `shutdown` completes. A failed run is logged and counted; the
    /// next one runs as planned.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let now = chrono::Utc::now();
            let Some(next) = self.schedule.next_after(now) else {
                tracing::warn!("the purge schedule has no next run; the purge stops");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default() + jitter(self.jitter);
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
            // A run stops at shutdown (it must never hold up the drain of queued session
            // writes) and at its deadline; the statement in progress is abandoned with its
            // connection, which releases the purge lock. The next run goes on from there.
            let run = tokio::time::timeout(RUN_DEADLINE, self.purge_once(store::now_millis()));
            let outcome = tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("purge stopped for shutdown; the next start purges the rest");
                    return;
                }
                outcome = run => outcome,
            };
            let Ok(outcome) = outcome else {
                crate::metrics::purge_failed();
                tracing::warn!(
                    minutes = RUN_DEADLINE.as_secs() / 60,
                    "purge run stopped at its deadline; the next run goes on"
                );
                continue;
            };
            match outcome {
                Ok(report) if report.skipped => {
                    tracing::debug!("purge skipped: another node is purging");
                }
                // An idle run is not news: INFO only when something was deleted.
                Ok(report) if report.deleted == 0 => tracing::debug!(
                    ms = report.took.as_millis(),
                    "purge found no expired sessions"
                ),
                Ok(report) => tracing::info!(
                    deleted = report.deleted,
                    ms = report.took.as_millis(),
                    "purged expired sessions"
                ),
                Err(error) => {
                    crate::metrics::purge_failed();
                    tracing::error!(
                        error = &error as &dyn std::error::Error,
                        "purge run failed; the next run is still scheduled"
                    );
                }
            }
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    if max.is_zero() || getrandom::fill(&mut bytes).is_err() {
        return Duration::ZERO;
    }
    max.mul_f64(f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_quartz_style_with_clear_errors() {
        let every_minute = PurgeSchedule::parse("0 * * * * *").unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-21T10:15:30Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            every_minute.next_after(t).unwrap().to_rfc3339(),
            "2026-11-21T10:16:00+00:00"
        );
        let err = PurgeSchedule::parse("* * * * *").unwrap_err().to_string();
        assert_eq!(
            err,
            "6 or 7 fields, seconds first (Quartz style); \"* * * * *\" has 5: write \
             \"0 * * * * *\" for the Unix cron meaning"
        );
        let err = PurgeSchedule::parse("every minute")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("6 or 7 fields") && err.ends_with("has 2"),
            "{err}"
        );
        let err = PurgeSchedule::parse("0 61 * * * *")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("a cron expression"), "{err}");
        let err = PurgeSchedule::parse("0 0 3 * * FOO")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains('\n') && err.contains("'FOO' is not a valid day of the week"),
            "{err}"
        );
        let err = PurgeSchedule::parse("0 0 3 31 2 *")
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no date that exists"), "{err}");
        assert!(PurgeSchedule::parse("0 0 3 * * MON-FRI").is_ok());
    }
}
