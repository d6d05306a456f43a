//! The ONE run state machine.
//!
//! ```text
//! SUBMITTED → PENDING → RUNNABLE → STARTING → RUNNING → SUCCEEDED
//!     │          │          │          │         ├────→ FAILED ──(manual retry)──→ PENDING
//!     │          │          │          │         ├────→ PENDING  (attempt failed, retries remain)
//!     │          │          │          └─────────┴────→ CANCELING → CANCELLED
//!     └──────────┴─→ REJECTED                               (or SUCCEEDED/FAILED if the code
//!     └──────────┴──────────┴─→ CANCELLED (not yet started)   finished before it was stopped)
//! ```
//!
//! - SUBMITTED: stored, not yet looked at by the scheduler.
//! - PENDING: accepted; waiting for its queue (`distribution`) or its retry backoff.
//! - RUNNABLE: ready; waiting for a free worker.
//! - STARTING: claimed by a worker under a lease; its process is being started.
//! - RUNNING: the user code is running.
//! - CANCELING: cancel was asked; the process has not stopped yet.
//! - SUCCEEDED / FAILED / CANCELLED / REJECTED: final (a FAILED run may be
//!   retried by hand, which starts a new attempt from PENDING).
//!
//! Every store and every face asks [`RunStatus::transition`]; nothing else
//! decides whether a run may move.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Submitted,
    Pending,
    Runnable,
    Starting,
    Running,
    Succeeded,
    Failed,
    Canceling,
    Cancelled,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct TransitionError {
    pub from: RunStatus,
    pub to: RunStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a run status: expected one of SUBMITTED, PENDING, RUNNABLE, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELING, CANCELLED, REJECTED")]
pub struct UnknownStatus(pub String);

impl RunStatus {
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Submitted,
        RunStatus::Pending,
        RunStatus::Runnable,
        RunStatus::Starting,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Canceling,
        RunStatus::Cancelled,
        RunStatus::Rejected,
    ];

    /// The name on the wire and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Submitted => "SUBMITTED",
            RunStatus::Pending => "PENDING",
            RunStatus::Runnable => "RUNNABLE",
            RunStatus::Starting => "STARTING",
            RunStatus::Running => "RUNNING",
            RunStatus::Succeeded => "SUCCEEDED",
            RunStatus::Failed => "FAILED",
            RunStatus::Canceling => "CANCELING",
            RunStatus::Cancelled => "CANCELLED",
            RunStatus::Rejected => "REJECTED",
        }
    }

    /// Whether `self → to` is an edge of the state machine.
    pub fn can_transition(self, to: RunStatus) -> bool {
        use RunStatus::*;
        matches!(
            (self, to),
            (Submitted, Pending | Rejected | Cancelled)
                | (Pending, Runnable | Rejected | Cancelled)
                | (Runnable, Starting | Cancelled)
                | (Starting, Running | Failed | Canceling | Pending)
                | (Running, Succeeded | Failed | Canceling | Pending)
                | (Canceling, Cancelled | Succeeded | Failed)
                | (Failed, Pending)
        )
    }

    /// Checks the move `self → to`.
    pub fn transition(self, to: RunStatus) -> Result<RunStatus, TransitionError> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }

    /// A run in a final status never moves again on its own.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled | RunStatus::Rejected
        )
    }

    /// A run that a worker holds under a lease.
    pub fn is_leased(self) -> bool {
        matches!(
            self,
            RunStatus::Starting | RunStatus::Running | RunStatus::Canceling
        )
    }

    /// A run that has not reached a worker yet.
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            RunStatus::Submitted | RunStatus::Pending | RunStatus::Runnable
        )
    }

    /// What a cancel request does to a run in this status: the status it moves
    /// to, or `None` when there is nothing to do (already stopping or final).
    pub fn on_cancel(self) -> Option<RunStatus> {
        if self.is_waiting() {
            Some(RunStatus::Cancelled)
        } else if matches!(self, RunStatus::Starting | RunStatus::Running) {
            Some(RunStatus::Canceling)
        } else {
            None
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, UnknownStatus> {
        RunStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// The code returned normally.
    Succeeded,
    /// The code raised, exited non-zero, timed out or was stopped.
    Failed,
    /// The worker stopped heart-beating: nobody knows how the code ended.
    Lost,
    /// The run's input cannot be used (a datalake file is gone): trying
    /// again cannot mend it, so the run fails without a retry.
    Invalid,
    /// The worker shut down before the attempt ended and gave the run
    /// back: it is queued again at once, whatever its retries.
    HandedBack,
}

impl AttemptEnd {
    /// The name the attempt's record keeps.
    pub fn outcome(self, run_after: RunStatus) -> &'static str {
        match (self, run_after) {
            (AttemptEnd::Lost, _) => "LOST",
            (_, RunStatus::Cancelled) => "CANCELLED",
            (AttemptEnd::HandedBack, _) => "HANDED_BACK",
            (AttemptEnd::Succeeded, _) => "SUCCEEDED",
            (AttemptEnd::Failed | AttemptEnd::Invalid, _) => "FAILED",
        }
    }
}

impl RunStatus {
    /// Where a leased run goes when its attempt number `attempt` (1-based)
    /// ends: a run being cancelled ends CANCELLED unless its code had already
    /// succeeded; a failed or lost attempt is retried (PENDING) while
    /// `retry_count` allows, and FAILED after that; an attempt whose input
    /// is invalid fails the run at once; one handed back by a worker that
    /// shut down is queued again.
    pub fn after_attempt(self, end: AttemptEnd, attempt: i32, retry_count: i32) -> RunStatus {
        match (self, end) {
            (_, AttemptEnd::Succeeded) => RunStatus::Succeeded,
            (RunStatus::Canceling, _) => RunStatus::Cancelled,
            (_, AttemptEnd::Invalid) => RunStatus::Failed,
            (_, AttemptEnd::HandedBack) => RunStatus::Pending,
            _ if RetryPolicy::may_retry(attempt, retry_count) => RunStatus::Pending,
            _ => RunStatus::Failed,
        }
    }
}

/// How often and how soon a failed attempt is tried again.
///
/// `retry_count` is the number of retries after the first attempt (0–9,
/// default 5), so a run makes at most `retry_count + 1` attempts. The wait
/// before retry `n` (1-based) is `base · 2^(n-1)`, capped at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_RETRY_COUNT: i32 = 5;
    pub const MAX_RETRY_COUNT: i32 = 9;

    /// Checks a `retry_count` given by a client.
    pub fn validate_retry_count(count: i64) -> Result<i32, crate::Invalid> {
        if (0..=Self::MAX_RETRY_COUNT as i64).contains(&count) {
            Ok(count as i32)
        } else {
            Err(format!("retry_count must be between 0 and 9, got {count}").into())
        }
    }

    /// Whether a run whose attempt number `attempt` (1-based) just failed may
    /// be tried again.
    pub fn may_retry(attempt: i32, retry_count: i32) -> bool {
        attempt <= retry_count
    }

    /// The wait before the attempt after `attempt` failed attempts.
    pub fn backoff(&self, failed_attempts: i32) -> Duration {
        let exp = failed_attempts.clamp(1, 31) as u32 - 1;
        let wait = self.base.saturating_mul(1u32 << exp.min(20));
        wait.min(self.cap)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunStatus::*;
    use super::*;

    /// Every edge of the machine, written out once more by hand: a change to
    /// `can_transition` that is not also made here fails this test.
    const ALLOWED: &[(RunStatus, RunStatus)] = &[
        (Submitted, Pending),
        (Submitted, Rejected),
        (Submitted, Cancelled),
        (Pending, Runnable),
        (Pending, Rejected),
        (Pending, Cancelled),
        (Runnable, Starting),
        (Runnable, Cancelled),
        (Starting, Running),
        (Starting, Failed),
        (Starting, Canceling),
        (Starting, Pending),
        (Running, Succeeded),
        (Running, Failed),
        (Running, Canceling),
        (Running, Pending),
        (Canceling, Cancelled),
        (Canceling, Succeeded),
        (Canceling, Failed),
        (Failed, Pending),
    ];

    #[test]
    fn every_allowed_transition_is_allowed() {
        for &(from, to) in ALLOWED {
            assert_eq!(from.transition(to), Ok(to), "{from} → {to}");
        }
    }

    #[test]
    fn every_other_transition_is_forbidden() {
        let mut forbidden = 0;
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                if ALLOWED.contains(&(from, to)) {
                    continue;
                }
                forbidden += 1;
                let err = from.transition(to).unwrap_err();
                assert_eq!(err, TransitionError { from, to });
                assert_eq!(
                    err.to_string(),
                    format!("a run cannot go from {from} to {to}")
                );
            }
        }
        assert_eq!(forbidden, 100 - ALLOWED.len());
    }

    #[test]
    fn final_statuses_only_leave_by_manual_retry() {
        for from in RunStatus::ALL.into_iter().filter(|s| s.is_final()) {
            let exits: Vec<_> = RunStatus::ALL
                .into_iter()
                .filter(|&to| from.can_transition(to))
                .collect();
            if from == Failed {
                assert_eq!(exits, vec![Pending]);
            } else {
                assert!(exits.is_empty(), "{from} can leave to {exits:?}");
            }
        }
    }

    #[test]
    fn cancel_moves_waiting_runs_to_cancelled_and_running_ones_to_canceling() {
        for s in RunStatus::ALL {
            match s.on_cancel() {
                Some(to) => assert!(s.can_transition(to), "{s} → {to}"),
                None => assert!(s.is_final() || s == Canceling, "{s}"),
            }
        }
        assert_eq!(Pending.on_cancel(), Some(Cancelled));
        assert_eq!(Running.on_cancel(), Some(Canceling));
        assert_eq!(Canceling.on_cancel(), None, "a repeated cancel is harmless");
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in RunStatus::ALL {
            assert_eq!(s.as_str().parse::<RunStatus>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("DONE"
            .parse::<RunStatus>()
            .unwrap_err()
            .to_string()
            .contains("SUBMITTED"));
    }

    #[test]
    fn attempts_end_in_retry_failure_success_or_cancel() {
        use AttemptEnd::*;
        assert_eq!(Running.after_attempt(Succeeded, 1, 0), RunStatus::Succeeded);
        assert_eq!(Running.after_attempt(Failed, 1, 1), Pending);
        assert_eq!(Running.after_attempt(Failed, 2, 1), RunStatus::Failed);
        assert_eq!(Starting.after_attempt(Lost, 1, 5), Pending);
        assert_eq!(Running.after_attempt(Lost, 6, 5), RunStatus::Failed);
        assert_eq!(Canceling.after_attempt(Failed, 1, 5), Cancelled);
        assert_eq!(Canceling.after_attempt(Lost, 1, 5), Cancelled);
        assert_eq!(Running.after_attempt(Invalid, 1, 5), RunStatus::Failed);
        assert_eq!(Canceling.after_attempt(Invalid, 1, 5), Cancelled);
        assert_eq!(
            Canceling.after_attempt(Succeeded, 1, 5),
            RunStatus::Succeeded
        );
        // Whatever the end, the move is an edge of the machine.
        for from in [Starting, Running, Canceling] {
            for end in [Succeeded, Failed, Lost, Invalid] {
                if from == Starting && end == Succeeded {
                    continue; // code that never started cannot have succeeded
                }
                for attempt in 1..4 {
                    let to = from.after_attempt(end, attempt, 2);
                    assert!(from.can_transition(to), "{from} → {to}");
                }
            }
        }
        assert_eq!(Lost.outcome(Pending), "LOST");
        assert_eq!(Failed.outcome(Cancelled), "CANCELLED");
    }

    #[test]
    fn retry_count_is_bounded() {
        assert_eq!(RetryPolicy::validate_retry_count(0), Ok(0));
        assert_eq!(RetryPolicy::validate_retry_count(9), Ok(9));
        assert!(RetryPolicy::validate_retry_count(10)
            .unwrap_err()
            .contains("between 0 and 9"));
        assert!(RetryPolicy::validate_retry_count(-1).is_err());
        assert!(RetryPolicy::may_retry(1, 1));
        assert!(!RetryPolicy::may_retry(2, 1));
        assert!(!RetryPolicy::may_retry(1, 0));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(5), Duration::from_secs(1));
        assert_eq!(p.backoff(30), Duration::from_secs(1));
    }
}
