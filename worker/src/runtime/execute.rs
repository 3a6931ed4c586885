//! Execution: a task's handler runs in its own tokio task, in the slot the
//! scheduler gave it, under the limits [`super::limits`] resolved, until it
//! returns, panics, hits its hard limit or is terminated by a revoke. The
//! slot is given back as soon as the handler is done, before the outcome is
//! recorded.

use std::time::{Duration, Instant};

use celeriac_broker::Delivery;
use celeriac_protocol::result::ResultMeta;
use celeriac_protocol::{TaskMessage, Value};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::limits::{self, Pair};
use super::settle::AckPolicy;
use super::Shared;
use crate::context::{Ctx, RequestInfo};
use crate::extract::Invocation;
use crate::state::Phase;
use crate::{Task, TaskError};

/// How one execution ended.
pub(super) enum Outcome {
    Success(Value),
    Failed(TaskError),
    TimedOut(Duration),
    Terminated,
    Panicked(String),
}

/// An execution's outcome and how long it ran.
pub(super) struct Execution {
    pub outcome: Outcome,
    /// Seconds the handler ran.
    pub runtime: f64,
    /// The task's context: what it sent, what it asked to be replaced with.
    pub ctx: Ctx,
}

impl Shared {
    /// Runs `task` with `def`'s handler in the slot `permit` holds.
    pub(super) async fn execute(
        &self,
        delivery: &Delivery,
        def: &Task,
        task: &TaskMessage,
        terminate: CancellationToken,
        permit: OwnedSemaphorePermit,
        policy: &AckPolicy,
    ) -> Execution {
        let (opts, cfg) = (def.options(), &self.config);
        let id = &task.headers.id;
        let time_start = celeriac_protocol::event::now_timestamp();
        self.state.set_phase(id, Phase::Active { time_start, acknowledged: policy.acks_early() });
        if self.reporting() {
            self.report("task-started", task, super::record::uuid_fields(id));
        }
        let ignore_result = opts.ignore_result.or(task.headers.ignore_result).unwrap_or(cfg.ignore_result);
        if opts.track_started.unwrap_or(cfg.track_started) && !ignore_result {
            let started = ResultMeta::started(id, std::process::id(), &cfg.hostname);
            self.store_once(self.extend(started, task, delivery)).await;
        }
        let limits = self.limits(def, task);
        let soft_token = CancellationToken::new();
        let request = RequestInfo {
            headers: task.headers.clone(),
            args: task.args.clone(),
            kwargs: task.kwargs.clone(),
            delivery_info: delivery.envelope.delivery_info.clone(),
            hostname: cfg.hostname.clone(),
            redelivered: delivery.redelivered(),
            properties: delivery.message().properties.clone(),
            priority: delivery.message().priority,
            embed: task.embed.clone(),
        };
        let ctx = Ctx::new(request, self.services.clone(), soft_token.clone(), terminate.clone());
        let started = Instant::now();
        let mut handle = tokio::spawn(def.handler().call(Invocation::new(ctx.clone())));
        let soft_timer = limits.soft.map(|d| {
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                soft_token.cancel();
            })
        });
        let hard = async {
            match limits.hard {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        // The limit and a termination first: a handler that held the thread
        // past its hard limit (on one runtime thread nothing else runs
        // meanwhile) has timed out even if it returned before this is polled.
        let outcome = tokio::select! {
            biased;
            _ = hard => {
                handle.abort();
                Outcome::TimedOut(limits.hard.unwrap_or_default())
            }
            _ = terminate.cancelled() => {
                handle.abort();
                Outcome::Terminated
            }
            joined = &mut handle => joined_outcome(joined),
        };
        if let Some(t) = soft_timer {
            t.abort();
        }
        drop(permit);
        Execution { outcome, runtime: started.elapsed().as_secs_f64(), ctx }
    }

    /// The limits `task` runs with: the message's, then those set by the
    /// `time_limit` command, then the task's, then the worker's.
    fn limits(&self, def: &Task, task: &TaskMessage) -> limits::Limits {
        let (opts, cfg) = (def.options(), &self.config);
        let tl = &task.headers.timelimit;
        let message = Pair::secs(tl.hard.map(|s| s.as_f64()), tl.soft.map(|s| s.as_f64()));
        let (set_hard, set_soft) =
            self.time_limits.lock().ok().and_then(|t| t.get(&task.headers.task).copied()).unwrap_or_default();
        limits::resolve(
            message,
            Pair::secs(set_hard, set_soft),
            Pair::settings(opts.time_limit, opts.soft_time_limit),
            Pair::settings(cfg.time_limit, cfg.soft_time_limit),
        )
    }
}

fn joined_outcome(joined: Result<Result<Value, TaskError>, tokio::task::JoinError>) -> Outcome {
    match joined {
        Ok(Ok(v)) => Outcome::Success(v),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(e) if e.is_panic() => Outcome::Panicked(super::panic_text(e.into_panic().as_ref())),
        Err(e) => Outcome::Panicked(e.to_string()),
    }
}
