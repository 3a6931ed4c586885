//! Settling a delivery: one [`AckPolicy`] decides when and how each message is
//! acked, requeued, rejected or left for restore, from how its task ended and
//! whether its outcome was recorded; [`settle`] carries the decision out.
//!
//! The table is Celery's (`task_acks_late`, `task_acks_on_failure_or_timeout`,
//! `task_reject_on_worker_lost`), plus one rule of celeriac's: with late acks,
//! a task whose result could not be stored is not acked, so its message comes
//! back (at shutdown, or after the visibility timeout) instead of leaving no
//! trace.

use celeriac_broker::{Delivery, SettleOutcome, Settlement};
use tracing::{debug, error, warn};

/// How a task's delivery ended, as far as acking is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Returned a value.
    Succeeded,
    /// Raised, or failed for good after its retries.
    Failed,
    /// Hit its hard time limit.
    TimedOut,
    /// Revoked with `terminate` while running.
    Terminated,
    /// Its handler panicked (Celery's lost worker process).
    Lost,
    /// Asked to be retried; `sent` when the retry message was published.
    Retried {
        /// Whether the retry went out.
        sent: bool,
    },
    /// Raised `Reject`.
    Rejected {
        /// Whether it asked to be requeued.
        requeue: bool,
    },
    /// Raised `Ignore`.
    Ignored,
}

/// Whether what a task's end had to record (result, chord part) was stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// Stored, or nothing to store.
    Yes,
    /// The result store kept failing until the worker stopped.
    No,
}

/// What to do with the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Settle it now.
    Settle(Settlement),
    /// Leave it unacknowledged: it goes back to its queue when the worker
    /// hands its unacked messages back at shutdown, or after the visibility
    /// timeout if the worker dies first.
    LeaveForRestore,
    /// It was acked before the task ran; nothing left to do.
    Nothing,
}

/// The acknowledgement rules of one task (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckPolicy {
    /// `acks_late`: ack after the task instead of before.
    pub acks_late: bool,
    /// `acks_on_failure_or_timeout`: with late acks, ack failed and timed-out
    /// tasks too (else requeue them).
    pub ack_failures: bool,
    /// `reject_on_worker_lost`: with late acks, requeue a task whose
    /// execution was lost.
    pub reject_on_worker_lost: bool,
}

impl AckPolicy {
    /// Whether the message is acked before the task runs.
    pub(crate) fn acks_early(&self) -> bool {
        !self.acks_late
    }

    /// What to do with the message once the task ended.
    pub(crate) fn after(&self, ending: Ending, recorded: Recorded) -> Decision {
        use Settlement::{Ack, Reject, Requeue};
        if !self.acks_late {
            return Decision::Nothing;
        }
        let failed = if self.ack_failures { Ack } else { Requeue };
        let settlement = match ending {
            Ending::Succeeded | Ending::Failed | Ending::TimedOut if recorded == Recorded::No => {
                return Decision::LeaveForRestore;
            }
            Ending::Succeeded | Ending::Ignored => Ack,
            Ending::Failed | Ending::TimedOut | Ending::Terminated => failed,
            Ending::Lost if self.reject_on_worker_lost => Requeue,
            Ending::Lost if recorded == Recorded::No => return Decision::LeaveForRestore,
            Ending::Lost => failed,
            Ending::Retried { sent: true } => Ack,
            Ending::Retried { sent: false } => Requeue,
            Ending::Rejected { requeue: true } => Requeue,
            Ending::Rejected { requeue: false } => Reject,
        };
        Decision::Settle(settlement)
    }
}

/// Carries out `decision` on `delivery`. A settlement the broker cannot take
/// now is retried by the broker in the background and the prefetch slot is
/// freed either way (see [`Delivery::settle`]); this only logs.
pub(crate) async fn settle(delivery: &mut Delivery, decision: Decision) {
    match decision {
        Decision::Settle(how) => settle_now(delivery, how).await,
        Decision::LeaveForRestore => delivery.leave_unacked(),
        Decision::Nothing => {}
    }
}

/// Settles `delivery` now (a no-op if it was settled the same way before).
pub(crate) async fn settle_now(delivery: &mut Delivery, how: Settlement) {
    if delivery.is_settled() {
        return;
    }
    match delivery.settle(how).await {
        SettleOutcome::Done => {}
        SettleOutcome::Deferred(e) => warn!(
            delivery_tag = delivery.delivery_tag(),
            "could not {how:?} a message now ({e}); the broker retries it in the background"
        ),
        SettleOutcome::Failed(e) => error!(
            delivery_tag = delivery.delivery_tag(),
            "could not {how:?} a message ({e}); it is left for the visibility timeout"
        ),
    }
    debug!(delivery_tag = delivery.delivery_tag(), ?how, "settled");
}

#[cfg(test)]
mod tests {
    use super::*;
    use Settlement::{Ack, Reject, Requeue};

    fn policy(acks_late: bool, ack_failures: bool, reject_on_worker_lost: bool) -> AckPolicy {
        AckPolicy { acks_late, ack_failures, reject_on_worker_lost }
    }

    #[test]
    fn early_acks_leave_nothing_to_do_after_the_task() {
        let p = policy(false, true, true);
        assert!(p.acks_early());
        for ending in [
            Ending::Succeeded,
            Ending::Failed,
            Ending::Lost,
            Ending::Retried { sent: false },
            Ending::Rejected { requeue: true },
        ] {
            assert_eq!(p.after(ending, Recorded::No), Decision::Nothing, "{ending:?}");
        }
    }

    #[test]
    fn the_late_ack_table() {
        use Decision::{LeaveForRestore as Leave, Settle};
        let yes = Recorded::Yes;
        let no = Recorded::No;
        // (ack_failures, reject_on_worker_lost, ending, recorded) -> decision
        let table = [
            (true, false, Ending::Succeeded, yes, Settle(Ack)),
            (true, false, Ending::Succeeded, no, Leave),
            (true, false, Ending::Failed, yes, Settle(Ack)),
            (false, false, Ending::Failed, yes, Settle(Requeue)),
            (true, false, Ending::Failed, no, Leave),
            (true, false, Ending::TimedOut, yes, Settle(Ack)),
            (false, false, Ending::TimedOut, yes, Settle(Requeue)),
            (true, false, Ending::Terminated, yes, Settle(Ack)),
            (false, false, Ending::Terminated, yes, Settle(Requeue)),
            (true, false, Ending::Lost, yes, Settle(Ack)),
            (true, false, Ending::Lost, no, Leave),
            (false, false, Ending::Lost, yes, Settle(Requeue)),
            (true, true, Ending::Lost, yes, Settle(Requeue)),
            (true, true, Ending::Lost, no, Settle(Requeue)),
            (true, false, Ending::Retried { sent: true }, yes, Settle(Ack)),
            (true, false, Ending::Retried { sent: false }, yes, Settle(Requeue)),
            (true, false, Ending::Rejected { requeue: true }, yes, Settle(Requeue)),
            (true, false, Ending::Rejected { requeue: false }, yes, Settle(Reject)),
            (true, false, Ending::Ignored, yes, Settle(Ack)),
        ];
        for (ack_failures, reject_lost, ending, recorded, want) in table {
            let p = policy(true, ack_failures, reject_lost);
            assert!(!p.acks_early());
            assert_eq!(
                p.after(ending, recorded),
                want,
                "ack_failures={ack_failures} reject_on_worker_lost={reject_lost} {ending:?} {recorded:?}"
            );
        }
    }
}
