//! Recording: everything a task's end leaves behind, as Celery's tracer
//! does: the stored result (`celery-task-meta-<id>`), task events and
//! metrics, the retry message, callbacks and the next chain step (sent before
//! the result is stored, and named as its children), errbacks, and a chord
//! header's part of the join (and the body, when it completes the chord).
//!
//! Outages: what must not be lost (results, chord parts, retries, callbacks)
//! is retried with backoff until it goes through or the worker stops; the
//! caller then learns it was [`Recorded::No`], and the ack policy keeps a
//! late-ack message for redelivery instead of acknowledging it away. Errors
//! waiting cannot fix (a value the backend cannot encode) are logged, counted
//! and not retried.

use std::sync::Arc;
use std::time::Duration;

use celeriac_backend::ChordOutcome;
use celeriac_broker::backoff::Backoff;
use celeriac_broker::{BrokerError, Delivery, Settlement};
use celeriac_client::{Applied, Applier, Call, CanvasError, Lineage, PlanLimits};
use celeriac_config::UnknownTaskPolicy;
use celeriac_protocol::result::{ExceptionInfo, Extended, ResultMeta};
use celeriac_protocol::task::Embed;
use celeriac_protocol::time::PyDateTime;
use celeriac_protocol::{Map, Signature, TaskHeaders, TaskMessage, Value};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::execute::{Execution, Outcome};
use super::settle::{settle_now, AckPolicy, Ending, Recorded};
use super::Shared;
use crate::store::{ChordPartReturn, ChordSizesOf, StoreError};
use crate::{Task, TaskError};

/// The running task as the parent of what it sends: Celery's tracer passes
/// `parent_id=request.id, root_id=request.root_id or request.id`.
fn lineage_of(task: &TaskMessage) -> Lineage {
    let id = &task.headers.id;
    Lineage {
        parent_id: Some(id.clone()),
        root_id: Some(task.headers.root_id.clone().unwrap_or_else(|| id.clone())),
        priority: None,
    }
}

/// Header of a message handed on by workers that do not know its task.
const UNKNOWN_HOPS: &str = "x-celeriac-unknown-hops";

/// Why a task is discarded before it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Discard {
    /// Its id was revoked.
    Revoked,
    /// Its `expires` passed.
    Expired,
}

/// The pause between attempts while the backend or broker is unreachable.
fn outage_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
}

/// Whether an error of the broker is an outage worth waiting out.
fn worth_retrying(e: &BrokerError) -> bool {
    e.is_transient() || matches!(e, BrokerError::GaveUp { .. })
}

/// A canvas step that failed for an outage of the broker or the result
/// backend (recording a chord's size): retried until they are back.
fn canvas_outage(e: &CanvasError) -> bool {
    match e {
        CanvasError::Broker(e) => worth_retrying(e),
        CanvasError::ChordSize { transient, .. } => *transient,
        CanvasError::NoBackend(_) | CanvasError::Invalid { .. } => false,
    }
}

impl Shared {
    /// Records how `task` ended; returns the ending and whether what had to
    /// be stored was.
    pub(super) async fn record(
        &self,
        delivery: &mut Delivery,
        def: &Task,
        task: &TaskMessage,
        run: Execution,
        stop: &CancellationToken,
        policy: &AckPolicy,
    ) -> (Ending, Recorded) {
        let opts = def.options();
        let ignore_result = opts.ignore_result.or(task.headers.ignore_result).unwrap_or(self.config.ignore_result);
        let (id, name) = (&task.headers.id, &task.headers.task);
        let runtime = run.runtime;
        let ctx = run.ctx;
        match run.outcome {
            Outcome::Success(value) => {
                let repr = celeriac_protocol::result::saferepr(&value, Some(1024), 3);
                info!("Task {name}[{id}] succeeded in {runtime:.3}s: {repr}");
                // As Celery: callbacks and the next chain step go out first,
                // and the stored result names them as its children.
                // What it sent while running comes first, as Celery's trail.
                let mut children = ctx.take_trail();
                let (callbacks, sent) = self.send_callbacks(task, &value, stop).await;
                children.extend(callbacks);
                if let Err(Unsent::Never(why)) = &sent {
                    // As Celery's tracer: a callback that cannot be published
                    // fails the task with the publishing error.
                    error!("Task {name}[{id}] succeeded, but its callbacks cannot be sent: {why}");
                    self.count_refused("callback_not_sent");
                    let exc = ExceptionInfo::new("kombu.exceptions", "OperationalError", vec![Value::Str(why.clone())]);
                    return (Ending::Failed, self.fail(delivery, task, &exc, None, stop).await);
                }
                let sent = if sent.is_ok() { Recorded::Yes } else { Recorded::No };
                let mut meta = self.extend(ResultMeta::success(id, value, PyDateTime::now_utc()), task, delivery);
                meta.children = children.iter().map(|child| child.to_tuple().to_value()).collect();
                let stored = self.finished(meta, task, !ignore_result, stop).await;
                if self.reporting() {
                    let mut fields = uuid_fields(id);
                    fields.insert("result".into(), Value::Str(repr));
                    fields.insert("runtime".into(), Value::Float(runtime));
                    self.report("task-succeeded", task, fields);
                }
                (Ending::Succeeded, both(sent, stored))
            }
            Outcome::Failed(err @ TaskError::Retry { .. }) => {
                let stored = err.exception();
                let TaskError::Retry { reason, countdown, eta, max_retries, exc, arguments, .. } = err else {
                    return (Ending::Failed, Recorded::Yes);
                };
                let plan = RetryPlan {
                    reason,
                    stored,
                    on_exhaustion: exc.map(|e| *e),
                    delay: countdown.unwrap_or(opts.default_retry_delay),
                    eta,
                    max_retries: max_retries.or(opts.max_retries),
                    arguments: arguments.map(|a| *a),
                };
                self.retry_or_fail(delivery, task, plan, stop).await
            }
            Outcome::Failed(err @ TaskError::Failure { .. }) if autoretries(def, &err) => {
                // Celery's autoretry: `task.retry(exc=exc)`, so the exception is
                // what RETRY stores and what the task finally fails with.
                let retries = u32::try_from(task.headers.retries.max(0)).unwrap_or(u32::MAX);
                let exc = err.exception();
                let plan = RetryPlan {
                    reason: exc.python_repr(),
                    stored: exc.clone(),
                    on_exhaustion: Some(exc),
                    delay: backoff(opts, retries),
                    eta: None,
                    max_retries: opts.max_retries,
                    arguments: None,
                };
                self.retry_or_fail(delivery, task, plan, stop).await
            }
            Outcome::Failed(err @ TaskError::Reject { .. }) => {
                let TaskError::Reject { ref reason, requeue } = err else { return (Ending::Failed, Recorded::Yes) };
                info!("Task {name}[{id}] rejected (requeue={requeue}): {reason}");
                let mut fields = uuid_fields(id);
                fields.insert("requeue".into(), Value::Bool(requeue));
                self.report("task-rejected", task, fields);
                let mut recorded = Recorded::Yes;
                if !requeue {
                    // Celery 5.7 records a final rejection as FAILURE(Reject).
                    let meta = ResultMeta::failure(id, &err.exception(), None, PyDateTime::now_utc());
                    recorded = self.finished(self.extend(meta, task, delivery), task, !ignore_result, stop).await;
                }
                (Ending::Rejected { requeue }, recorded)
            }
            Outcome::Failed(TaskError::Ignore) => match ctx.take_replacement() {
                None => (Ending::Ignored, Recorded::Yes),
                Some(sig) => self.replace(delivery, task, sig, stop).await,
            },
            Outcome::Failed(err) => {
                let exc = err.exception();
                error!("Task {name}[{id}] raised unexpected: {}", exc.python_repr());
                (Ending::Failed, self.fail(delivery, task, &exc, traceback_of(&err), stop).await)
            }
            Outcome::TimedOut(limit) => {
                error!("Task {name}[{id}] hard time limit ({}s) exceeded", limit.as_secs_f64());
                let exc = ExceptionInfo::new(
                    "billiard.exceptions",
                    "TimeLimitExceeded",
                    vec![Value::Float(limit.as_secs_f64())],
                );
                (Ending::TimedOut, self.fail(delivery, task, &exc, None, stop).await)
            }
            Outcome::Terminated => {
                // revoke --terminate: REVOKED, as Celery's terminated request.
                info!("Terminating {name}[{id}] (revoked)");
                let meta = ResultMeta::revoked(id, "terminated", PyDateTime::now_utc());
                let recorded = self.finished(self.extend(meta, task, delivery), task, true, stop).await;
                let signum = self.state.termination_signal(id).unwrap_or(15);
                let mut fields = revoked_fields(id, true, false);
                fields.insert("signum".into(), Value::Int(signum));
                self.report("task-revoked", task, fields);
                (Ending::Terminated, recorded)
            }
            Outcome::Panicked(msg) => {
                // A panic is the Rust worker's lost child process: Celery's
                // WorkerLostError, or a requeue with reject_on_worker_lost.
                let text = format!("Worker exited prematurely: task {name}[{id}] panicked: {msg}");
                error!("Task handler raised error: WorkerLostError({text:?})");
                if policy.acks_late && policy.reject_on_worker_lost {
                    return (Ending::Lost, Recorded::Yes);
                }
                let exc = ExceptionInfo::new("billiard.exceptions", "WorkerLostError", vec![Value::Str(text)]);
                (Ending::Lost, self.fail(delivery, task, &exc, None, stop).await)
            }
        }
    }

    /// Applies what the task asked to be replaced with (see `replace.rs`);
    /// nothing is stored for the task itself.
    async fn replace(
        &self,
        delivery: &Delivery,
        task: &TaskMessage,
        sig: Signature,
        stop: &CancellationToken,
    ) -> (Ending, Recorded) {
        let (id, name) = (&task.headers.id, &task.headers.task);
        let sig = match super::replace::replacement(task, sig) {
            Ok(sig) => sig,
            Err(why) => {
                error!("Task {name}[{id}] cannot be replaced: {why}");
                let exc = ExceptionInfo::new("celery.exceptions", "ImproperlyConfigured", vec![Value::Str(why)]);
                return (Ending::Failed, self.fail(delivery, task, &exc, None, stop).await);
            }
        };
        info!("Task {name}[{id}] replaced by {}", sig.task);
        // Celery's `sig.delay()`: parent and root are the replaced task's.
        let call = Call::delay(Vec::new()).with_stable_ids(seed_of(&task.headers, "replace"));
        match self.apply_child(sig, call, task, stop).await {
            Ok(_) => (Ending::Ignored, Recorded::Yes),
            Err(Unsent::Outage) => (Ending::Succeeded, Recorded::No),
            Err(Unsent::Never(why)) => {
                let exc = ExceptionInfo::new("kombu.exceptions", "OperationalError", vec![Value::Str(why)]);
                (Ending::Failed, self.fail(delivery, task, &exc, None, stop).await)
            }
        }
    }

    /// Calls a "new-style" errback (`errback(request, exc, traceback, *args)`)
    /// here and now, as Celery's worker does for one it has registered: with
    /// the failed request, and the exception and traceback before the
    /// errback's own arguments. What it returns is not stored.
    async fn errback_inline(
        &self,
        def: &Task,
        errback: &Signature,
        failed: &FailedRequest<'_>,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
    ) {
        let mut args = vec![exc.to_value(), traceback.map_or(Value::Null, |t| Value::Str(t.to_owned()))];
        args.extend(errback.args.iter().cloned());
        let request = crate::context::RequestInfo {
            headers: failed.headers.clone(),
            args,
            kwargs: errback.kwargs.clone(),
            delivery_info: failed.delivery.map(|d| d.envelope.delivery_info.clone()).unwrap_or_default(),
            hostname: self.config.hostname.clone(),
            redelivered: failed.delivery.is_some_and(Delivery::redelivered),
            properties: failed.delivery.map(|d| d.message().properties.clone()).unwrap_or_default(),
            priority: failed.delivery.map_or(0, |d| d.message().priority),
            embed: failed.embed.clone(),
        };
        let ctx = crate::Ctx::new(request, self.services.clone(), CancellationToken::new(), CancellationToken::new());
        let call = tokio::spawn(def.handler().call(crate::extract::Invocation::new(ctx)));
        let (id, name) = (&failed.headers.id, &failed.headers.task);
        match call.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => error!("errback {} of {name}[{id}] raised: {e}", errback.task),
            Err(e) => error!("errback {} of {name}[{id}] failed: {e}", errback.task),
        }
    }

    /// Celery's `_call_task_errbacks`: an errback registered here that takes
    /// the request is called now; the others are sent, as one group, with
    /// the failed request's id before their own arguments.
    async fn call_errbacks(
        &self,
        errbacks: &[Signature],
        failed: &FailedRequest<'_>,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
        stop: &CancellationToken,
    ) -> (Recorded, Option<Applied>) {
        let mut old_style = Vec::new();
        for errback in errbacks {
            match self.registry.get(&errback.task).filter(|def| def.options().errback_takes_request) {
                Some(def) => self.errback_inline(def, errback, failed, exc, traceback).await,
                None => old_style.push(errback.to_value()),
            }
        }
        if old_style.is_empty() {
            return (Recorded::Yes, None);
        }
        let mut group = Signature::new("celery.group");
        group.subtask_type = Some("group".into());
        group.kwargs.insert("tasks".into(), Value::List(old_style));
        // `group(errbacks).apply_async((request.id,), parent_id=request.id,
        // root_id=request.root_id or request.id)`.
        let id = Value::Str(failed.headers.id.clone());
        let call =
            Call::step(Some(id), None, &lineage_of(failed.parent)).with_stable_ids(seed_of(failed.headers, "errbacks"));
        match self.apply_child(group, call, failed.parent, stop).await {
            Ok(applied) => (Recorded::Yes, applied.into_iter().next()),
            Err(Unsent::Outage) => (Recorded::No, None),
            Err(Unsent::Never(_)) => {
                self.count_refused("callback_not_sent");
                (Recorded::Yes, None)
            }
        }
    }

    async fn retry_or_fail(
        &self,
        delivery: &Delivery,
        task: &TaskMessage,
        plan: RetryPlan,
        stop: &CancellationToken,
    ) -> (Ending, Recorded) {
        let RetryPlan { reason, stored, on_exhaustion, delay, eta, max_retries, arguments } = plan;
        let retries = task.headers.retries;
        let (id, name) = (&task.headers.id, &task.headers.task);
        if max_retries.is_some_and(|max| retries >= i64::from(max)) {
            let exc = on_exhaustion.unwrap_or_else(|| {
                ExceptionInfo::new(
                    "celery.exceptions",
                    "MaxRetriesExceededError",
                    vec![Value::Str(format!("Can't retry {name}[{id}] args:{:?} kwargs:{:?}", task.args, task.kwargs))],
                )
            });
            error!("Task {name}[{id}] max retries exceeded ({retries}): {reason}");
            return (Ending::Failed, self.fail(delivery, task, &exc, None, stop).await);
        }
        let mut next = task.clone();
        if let Some(new) = arguments {
            if let Some(args) = new.args {
                next.args = args;
                next.headers.argsrepr = None;
                next.headers.argsrepr = Some(celeriac_protocol::event::args_repr(&next));
            }
            if let Some(kwargs) = new.kwargs {
                next.kwargs = kwargs;
                next.headers.kwargsrepr = None;
                next.headers.kwargsrepr = Some(celeriac_protocol::event::kwargs_repr(&next));
            }
        }
        next.headers.retries = retries.saturating_add(1);
        next.headers.parent_id = Some(id.clone());
        next.headers.eta = Some(eta.unwrap_or_else(|| {
            let at = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::ZERO))
                .unwrap_or(jiff::Timestamp::MAX);
            PyDateTime::from_timestamp(at, jiff::tz::Offset::UTC)
        }));
        let info = &delivery.envelope.delivery_info;
        let priority = delivery.message().priority;
        let sent = self
            .reliably("publish the retry", id, stop, || {
                self.producer.resend(&next, &info.exchange, &info.routing_key, priority)
            })
            .await;
        match sent {
            Ok(()) => {
                info!("Task {name}[{id}] retry: Retry in {}s: {reason}", delay.as_secs_f64());
                self.store_once(self.extend(ResultMeta::retry(id, &stored, None), task, delivery)).await;
                let mut fields = uuid_fields(id);
                fields.insert("exception".into(), Value::Str(stored.python_repr()));
                fields.insert("traceback".into(), Value::Str(String::new()));
                self.report("task-retried", task, fields);
                (Ending::Retried { sent: true }, Recorded::Yes)
            }
            Err(e) => {
                error!("could not publish the retry of {name}[{id}]: {e}; a late-ack message is requeued");
                self.count_refused("retry_not_sent");
                (Ending::Retried { sent: false }, Recorded::Yes)
            }
        }
    }

    async fn fail(
        &self,
        delivery: &Delivery,
        task: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<String>,
        stop: &CancellationToken,
    ) -> Recorded {
        let id = &task.headers.id;
        let reporting = self.reporting();
        let fields = reporting.then(|| {
            let mut fields = uuid_fields(id);
            fields.insert("exception".into(), Value::Str(exc.python_repr()));
            fields.insert("traceback".into(), Value::Str(traceback.clone().unwrap_or_default()));
            fields
        });
        let meta = self.extend(ResultMeta::failure(id, exc, traceback.clone(), PyDateTime::now_utc()), task, delivery);
        let mut recorded = self.finished(meta, task, true, stop).await;
        if let Some(fields) = fields {
            self.report("task-failed", task, fields);
        }
        let chain = task.embed.chain.as_deref().unwrap_or_default();
        recorded = both(recorded, self.fail_chain(chain, task, exc, traceback.as_deref(), stop).await);
        let failed =
            FailedRequest { headers: &task.headers, embed: &task.embed, delivery: Some(delivery), parent: task };
        let errbacks = task.embed.errbacks.as_deref().unwrap_or_default();
        both(recorded, self.call_errbacks(errbacks, &failed, exc, traceback.as_deref(), stop).await.0)
    }

    /// As Celery's `_fail_chain`: every later step of a failed task's chain
    /// that has an id fails with the same exception (so whoever waits on the
    /// chain's last result is not left waiting); a step that is part of a
    /// chord counts as a failed part of it (unless it already failed), and a
    /// step that is a chord fails through to its body.
    async fn fail_chain(
        &self,
        chain: &[Signature],
        task: &TaskMessage,
        exc: &ExceptionInfo,
        traceback: Option<&str>,
        stop: &CancellationToken,
    ) -> Recorded {
        let mut recorded = Recorded::Yes;
        let mut steps: std::collections::VecDeque<Signature> = chain.iter().cloned().collect();
        // A chain of chord bodies is finite, but it came from the network.
        let mut budget = 10_000usize;
        while let Some(step) = steps.pop_front() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                warn!(
                    "Task {}[{}]: the failed chain is too long to fail step by step",
                    task.headers.task, task.headers.id
                );
                break;
            }
            let option = |key: &str| step.options.get(key).and_then(Value::as_str).map(str::to_owned);
            let step_id = option("task_id");
            let in_chord = step.options.get("chord").filter(|v| !v.is_null());
            let already_failed = match (&step_id, in_chord, &self.services.results) {
                (Some(id), Some(_), Some(results)) => {
                    matches!(results.state(id).await, Ok(Some(state)) if state.propagates())
                }
                _ => false,
            };
            let now = PyDateTime::now_utc();
            let mut meta =
                ResultMeta::failure(step_id.as_deref().unwrap_or_default(), exc, traceback.map(str::to_owned), now);
            meta.group_id = option("group_id");
            if self.config.result_extended {
                meta.extended = Some(Extended {
                    name: Some(step.task.clone()),
                    args: Value::List(step.args.clone()),
                    kwargs: Value::Map(step.kwargs.clone()),
                    worker: None,
                    retries: Some(0),
                    queue: None,
                    stamped_headers: None,
                    stamps: Map::new(),
                });
            }
            let part = match (in_chord, &meta.group_id, already_failed) {
                (Some(body), Some(group_id), false) => Signature::from_value(body).ok().map(|body| {
                    let part = ChordPartReturn {
                        group_id: group_id.clone(),
                        group_index: step.options.get("group_index").and_then(Value::as_i64),
                        task_id: step_id.clone().unwrap_or_default(),
                        state: meta.status.clone(),
                        result: meta.result.clone(),
                        token: uuid::Uuid::new_v4().simple().to_string(),
                    };
                    (part, body)
                }),
                _ => None,
            };
            if step_id.is_some() {
                recorded = both(recorded, self.store(meta, stop).await);
            }
            if let Some((part, body)) = part {
                recorded = both(recorded, Box::pin(self.chord_part_return(part, &body, task, stop)).await);
            }
            // A chord step completes only when its body does: the failure
            // goes on to the body's result.
            if step.kind() == celeriac_protocol::signature::SignatureKind::Chord {
                if let Some(body) = step.kwargs.get("body").and_then(|v| Signature::from_value(v).ok()) {
                    steps.push_back(body);
                }
            }
        }
        recorded
    }

    /// Celery's `chord_error_from_stack`: the body of a chord whose header
    /// failed (or that could not be sent) fails with `exc`, after its
    /// errbacks were called with a request made up from it; a group body
    /// fails member by member, with the failed header task's own exception
    /// (`cause`) when there is one. The rest of the body's chain fails too.
    async fn chord_error(
        &self,
        body: &Signature,
        exc: &ExceptionInfo,
        cause: Option<&ExceptionInfo>,
        task: &TaskMessage,
        stop: &CancellationToken,
    ) -> Recorded {
        let made_up = |id: &str, name: &str, errbacks: Vec<Signature>| {
            let headers = TaskHeaders {
                id: id.to_owned(),
                task: name.to_owned(),
                root_id: Some(id.to_owned()),
                ..TaskHeaders::default()
            };
            let embed = Embed { errbacks: Some(errbacks), ..Embed::default() };
            (headers, embed)
        };
        let mut recorded = Recorded::Yes;
        // The parent of what is sent: the running task's headers only (its
        // arguments and canvas are not copied for every member).
        let mut slim = TaskMessage::new(&task.headers.task, &task.headers.id);
        slim.headers = task.headers.clone();
        let task = &slim;
        if body.kind() == celeriac_protocol::signature::SignatureKind::Group {
            let original = cause.unwrap_or(exc);
            let mut group_errbacks = option_signatures(body, "link_error");
            if group_errbacks.len() > MAX_GROUP_ERRBACKS {
                warn!(
                    "a failed chord's group body has {} errbacks; the first {MAX_GROUP_ERRBACKS} are called",
                    group_errbacks.len()
                );
                group_errbacks.truncate(MAX_GROUP_ERRBACKS);
            }
            for member in group_members(body) {
                let (id, mut errbacks) = result_errbacks(&member);
                let Some(id) = id else { continue };
                for errback in &group_errbacks {
                    if !errbacks.contains(errback) {
                        errbacks.push(errback.clone());
                    }
                }
                let (headers, embed) = made_up(&id, "unknown", errbacks);
                recorded = both(recorded, self.errbacks_then_fail(&headers, &embed, original, task, stop).await);
            }
            if let Some(group_id) = body.options.get("task_id").and_then(Value::as_str) {
                let meta = ResultMeta::failure(group_id, original, None, PyDateTime::now_utc());
                recorded = both(recorded, self.store(meta, stop).await);
            }
        } else if let Some(body_id) = body.options.get("task_id").and_then(Value::as_str) {
            let (headers, embed) = made_up(body_id, &body.task, option_signatures(body, "link_error"));
            recorded = both(recorded, self.errbacks_then_fail(&headers, &embed, exc, task, stop).await);
        }
        let chain = option_signatures(body, "chain");
        both(recorded, Box::pin(self.fail_chain(&chain, task, exc, None, stop)).await)
    }

    /// Calls the errbacks of a made-up request, then stores its failure.
    async fn errbacks_then_fail(
        &self,
        headers: &TaskHeaders,
        embed: &Embed,
        exc: &ExceptionInfo,
        task: &TaskMessage,
        stop: &CancellationToken,
    ) -> Recorded {
        let mut parent = task.clone();
        parent.headers = headers.clone();
        let failed = FailedRequest { headers, embed, delivery: None, parent: &parent };
        let errbacks = embed.errbacks.as_deref().unwrap_or_default();
        let (called, sent) = self.call_errbacks(errbacks, &failed, exc, None, stop).await;
        let mut meta = ResultMeta::failure(&headers.id, exc, None, PyDateTime::now_utc());
        // Celery stores the children of the task running the join (the
        // errbacks it just sent) with the failure.
        meta.children = sent.iter().map(|applied| applied.to_tuple().to_value()).collect();
        both(called, self.store(meta, stop).await)
    }

    /// Applies the links and the next step of the chain, as Celery's tracer
    /// does (several links go out as one group); returns what was sent, for
    /// the result's `children`, and whether everything went out.
    async fn send_callbacks(
        &self,
        task: &TaskMessage,
        result: &Value,
        stop: &CancellationToken,
    ) -> (Vec<Applied>, Result<(), Unsent>) {
        let mut sent = Vec::new();
        let mut outcome = Ok(());
        let mut keep = |applied: Result<Vec<Applied>, Unsent>| match applied {
            Ok(applied) => sent.extend(applied),
            // A permanent failure outweighs an outage.
            Err(e @ Unsent::Never(_)) => outcome = Err(e),
            Err(Unsent::Outage) => {
                if outcome.is_ok() {
                    outcome = Err(Unsent::Outage);
                }
            }
        };
        let lineage = lineage_of(task);
        // Ids the plans make are derived from the message and which callback
        // it is: a redelivered message sends its callbacks under the same ids.
        let headers = &task.headers;
        let link =
            |which: &str| Call::step(Some(result.clone()), None, &lineage).with_stable_ids(seed_of(headers, which));
        let callbacks = task.embed.callbacks.as_deref().unwrap_or_default();
        if let [one] = callbacks {
            keep(self.apply_child(one.clone(), link("link"), task, stop).await);
        } else if !callbacks.is_empty() {
            let (groups, plain): (Vec<&Signature>, Vec<&Signature>) =
                callbacks.iter().partition(|s| s.kind() == celeriac_protocol::signature::SignatureKind::Group);
            for (n, group) in groups.into_iter().enumerate() {
                keep(self.apply_child(group.clone(), link(&format!("link-group-{n}")), task, stop).await);
            }
            if !plain.is_empty() {
                let mut group = Signature::new("celery.group");
                group.subtask_type = Some("group".into());
                group.kwargs.insert("tasks".into(), Value::List(plain.iter().map(|s| s.to_value()).collect()));
                keep(self.apply_child(group, link("links"), task, stop).await);
            }
        }
        if let Some(chain) = &task.embed.chain {
            if let Some((next, rest)) = chain.split_last() {
                let call = Call::step(Some(result.clone()), Some(rest.to_vec()), &lineage)
                    .with_stable_ids(seed_of(headers, "chain"));
                keep(self.apply_child(next.clone(), call, task, stop).await);
            }
        }
        (sent, outcome)
    }

    /// Applies `sig` (a task, a group, a chain or a chord) as a child of
    /// `parent`, as Celery's `sig.apply_async(*call)` inside `parent`: planned
    /// once, then sent, through a broker outage with the same ids until the
    /// worker stops. Returns what `parent` records as its children; why it
    /// was not applied otherwise (logged).
    async fn apply_child(
        &self,
        sig: Signature,
        call: Call,
        parent: &TaskMessage,
        stop: &CancellationToken,
    ) -> Result<Vec<Applied>, Unsent> {
        Box::pin(self.apply_child_inner(sig, call, parent, stop)).await
    }

    async fn apply_child_inner(
        &self,
        sig: Signature,
        call: Call,
        parent: &TaskMessage,
        stop: &CancellationToken,
    ) -> Result<Vec<Applied>, Unsent> {
        let (id, name) = (&parent.headers.id, &parent.headers.task);
        let lineage = lineage_of(parent);
        let chords = self.services.results.clone().map(ChordSizesOf);
        let applier = Applier::new(&self.producer, chords.as_ref().map(|c| c as &dyn celeriac_client::ChordSizes))
            .with_limits(plan_limits(self.config.max_message_size));
        let mut plan = match applier.plan(&sig, call) {
            Ok(plan) => plan,
            Err(e) => {
                error!("could not send {} after {name}[{id}]: {e}", sig.task);
                return Err(Unsent::Never(e.to_string()));
            }
        };
        let mut backoff = outage_backoff();
        loop {
            // A retry resumes at the step that failed (the plan's cursor):
            // what went out is not sent again, a chord size not rewritten.
            match applier.perform(&mut plan, &lineage).await {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        info!("sent {} after {name}[{id}] after {} failed attempt(s)", sig.task, backoff.attempts());
                    }
                    return Ok(plan.trail().to_vec());
                }
                Err(e) if canvas_outage(&e) && stop.is_cancelled() => {
                    error!("could not send {} after {name}[{id}]: {e}; the worker is stopping", sig.task);
                    return Err(Unsent::Outage);
                }
                Err(e) if canvas_outage(&e) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        warn!(
                            "could not send {} after {name}[{id}] ({} step(s) done): {e}; \
                             retrying from there until the broker and result backend are back",
                            sig.task,
                            plan.performed()
                        );
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => {}
                    }
                }
                Err(e) => {
                    error!("could not send {} after {name}[{id}]: {e}", sig.task);
                    return Err(Unsent::Never(e.to_string()));
                }
            }
        }
    }

    /// Runs `attempt` until it works, fails for a reason waiting cannot fix,
    /// or the worker stops (then one last attempt).
    async fn reliably<F, Fut>(
        &self,
        what: &str,
        id: &str,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<(), BrokerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        let mut backoff = outage_backoff();
        loop {
            match attempt().await {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        info!("could {what} for {id} after {} failed attempt(s)", backoff.attempts());
                    }
                    return Ok(());
                }
                Err(e) if !worth_retrying(&e) || stop.is_cancelled() => return Err(e),
                Err(e) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        warn!("could not {what} for {id}: {e}; retrying until the broker is back");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    pub(super) fn extend(&self, mut meta: ResultMeta, task: &TaskMessage, delivery: &Delivery) -> ResultMeta {
        if self.config.result_extended {
            meta.extended = Some(Extended::new(
                &task.headers.task,
                Value::List(task.args.clone()),
                Value::Map(task.kwargs.clone()),
                &self.config.hostname,
                task.headers.retries,
                Some(&delivery.envelope.delivery_info.routing_key),
            ));
        }
        meta.parent_id = task.headers.parent_id.clone();
        meta.group_id = task.headers.group.clone();
        meta
    }

    /// Stores a final state (when `store`), then, for a chord header task,
    /// records its part of the join and sends or fails the body when it was
    /// the last part (Celery's `mark_as_done`/`mark_as_failure`/`mark_as_revoked`).
    async fn finished(&self, meta: ResultMeta, task: &TaskMessage, store: bool, stop: &CancellationToken) -> Recorded {
        let part = match (&task.embed.chord, &task.headers.group) {
            (Some(_), Some(group_id)) => Some(ChordPartReturn {
                group_id: group_id.clone(),
                group_index: task.headers.group_index,
                task_id: task.headers.id.clone(),
                state: meta.status.clone(),
                result: meta.result.clone(),
                token: uuid::Uuid::new_v4().simple().to_string(),
            }),
            _ => None,
        };
        let mut recorded = Recorded::Yes;
        if store {
            recorded = self.store(meta, stop).await;
        }
        if let (Some(part), Some(body)) = (part, &task.embed.chord) {
            recorded = both(recorded, self.chord_part_return(part, body, task, stop).await);
        }
        recorded
    }

    /// Records `part` of the chord whose body is `body`; the last part sends
    /// the body, or fails it with a `ChordError` (calling its errbacks, as
    /// Celery's `chord_error_from_stack`). `task` is the message that ran.
    async fn chord_part_return(
        &self,
        part: ChordPartReturn,
        body: &Signature,
        task: &TaskMessage,
        stop: &CancellationToken,
    ) -> Recorded {
        let Some(results) = self.services.results.clone() else {
            warn!(
                "Task {}[{}] is part of a chord, but this worker has no result backend",
                task.headers.task, part.task_id
            );
            return Recorded::Yes;
        };
        let group_id = part.group_id.clone();
        let part = Arc::new(part);
        let joined = self
            .store_reliably("record the chord part", &part.task_id, stop, || results.on_chord_part_return(part.clone()))
            .await;
        match joined {
            Ok(ChordOutcome::Ready(ready)) => {
                let joined = Some(Value::List(ready.results));
                // Celery's `callback.delay(results)`.
                // Whichever part's task joins (again, after an outage), the
                // body's own ids are the same.
                let call = Call::delay(joined.into_iter().collect()).with_stable_ids(format!("{group_id}/body"));
                match Box::pin(self.apply_child(body.clone(), call, task, stop)).await {
                    Ok(_) => {}
                    // The claim expires; a redelivered header task finishes the join.
                    Err(Unsent::Outage) => return Recorded::No,
                    Err(Unsent::Never(why)) => {
                        // As Celery: the body fails with a ChordError.
                        let reason = format!("Callback error: {why}");
                        error!("Chord {group_id:?} raised: ChordError({reason:?})");
                        let exc = ExceptionInfo::new("celery.exceptions", "ChordError", vec![Value::Str(reason)]);
                        if self.chord_error(body, &exc, None, task, stop).await == Recorded::No {
                            return Recorded::No;
                        }
                    }
                }
                if let Err(e) = results.finish_chord(ready.claim).await {
                    error!("could not clean up chord {group_id}: {e}");
                }
                Recorded::Yes
            }
            Ok(ChordOutcome::Failed(failure)) => {
                let exc = failure.exception();
                error!("Chord {group_id:?} raised: {}", exc.python_repr());
                self.chord_error(body, &exc, failure.cause.as_ref(), task, stop).await
            }
            Ok(_) => Recorded::Yes,
            Err(e) if e.transient => {
                error!(
                    "could not record the chord part of {}: {e}; its message is kept for redelivery",
                    task.headers.id
                );
                Recorded::No
            }
            Err(e) => {
                error!("could not record the chord part of {}: {e}", task.headers.id);
                self.count_refused("chord_part_not_stored");
                Recorded::Yes
            }
        }
    }

    /// Stores a record, retrying through outages until the worker stops.
    pub(super) async fn store(&self, meta: ResultMeta, stop: &CancellationToken) -> Recorded {
        let Some(results) = self.services.results.clone() else { return Recorded::Yes };
        let meta = Arc::new(meta);
        match self.store_reliably("store the result", &meta.task_id, stop, || results.store(meta.clone())).await {
            Ok(()) => Recorded::Yes,
            Err(e) if e.transient => {
                error!(
                    "could not store the result of {}: {e}; a late-ack message is kept for redelivery",
                    meta.task_id
                );
                self.count_refused("result_not_stored");
                Recorded::No
            }
            Err(e) => {
                error!("could not store the result of {}: {e}", meta.task_id);
                self.count_refused("result_not_stored");
                Recorded::Yes
            }
        }
    }

    /// Stores a record that is only informative (STARTED, RETRY): one attempt.
    pub(super) async fn store_once(&self, meta: ResultMeta) {
        if let Some(results) = &self.services.results {
            if let Err(e) = results.store(Arc::new(meta)).await {
                warn!("could not store a state: {e}");
            }
        }
    }

    /// Runs a result-store operation until it works, fails for a reason
    /// waiting cannot fix, or the worker stops (then one last attempt).
    async fn store_reliably<T, F, Fut>(
        &self,
        what: &str,
        id: &str,
        stop: &CancellationToken,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = outage_backoff();
        loop {
            match attempt().await {
                Ok(v) => {
                    if backoff.attempts() > 0 {
                        info!("could {what} for {id} after {} failed attempt(s)", backoff.attempts());
                    }
                    return Ok(v);
                }
                Err(e) if !e.transient || stop.is_cancelled() => return Err(e),
                Err(e) => {
                    let delay = backoff.next_delay();
                    if backoff.attempts() == 1 {
                        warn!("could not {what} for {id}: {e}; retrying until the result backend is back");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Discards a revoked or expired task as Celery does: REVOKED stored
    /// (with the chord part), the event sent, the message acked.
    pub(super) async fn discard(
        &self,
        delivery: &mut Delivery,
        task: &TaskMessage,
        why: Discard,
        stop: &CancellationToken,
    ) {
        let (id, name) = (&task.headers.id, &task.headers.task);
        let (reason, expired) = match why {
            Discard::Revoked => ("revoked", false),
            Discard::Expired => ("expired", true),
        };
        if expired {
            info!("Discarding expired task: {name}[{id}]");
        } else {
            info!("Discarding revoked task: {name}[{id}]");
        }
        let recorded = self.finished(ResultMeta::revoked(id, reason, PyDateTime::now_utc()), task, true, stop).await;
        self.report("task-revoked", task, revoked_fields(id, false, expired));
        if recorded == Recorded::No {
            delivery.leave_unacked();
            return;
        }
        settle_now(delivery, Settlement::Ack).await;
    }

    /// A task no worker here knows, by `worker_unknown_task`.
    pub(super) async fn unknown(&self, delivery: &mut Delivery, task: &TaskMessage, stop: &CancellationToken) {
        let (id, name) = (&task.headers.id, &task.headers.task);
        self.count_refused("unknown_task");
        match self.config.unknown_task {
            UnknownTaskPolicy::Reject => {
                error!("Received unregistered task of type '{name}'. The message has been ignored and discarded.");
                let exc = ExceptionInfo::new("celery.exceptions", "NotRegistered", vec![Value::Str(name.clone())]);
                let recorded = self.store(ResultMeta::failure(id, &exc, None, PyDateTime::now_utc()), stop).await;
                if recorded == Recorded::No {
                    delivery.leave_unacked();
                    return;
                }
                settle_now(delivery, Settlement::Reject).await;
            }
            UnknownTaskPolicy::Requeue => self.hand_on(delivery, task, stop).await,
            UnknownTaskPolicy::DeadLetter => {
                warn!("Received unregistered task of type '{name}'; moved to {}", self.config.dead_letter_queue);
                self.dead_letter(delivery, &format!("unknown_task: unregistered task {name}")).await;
            }
        }
    }

    /// Hands an unknown task on to another worker: published again where it
    /// came from, with a hop count in its headers, after a pause that grows
    /// with the hops; dead-lettered once `unknown_task_max_requeues` workers
    /// passed it on, so a task nobody runs cannot circle through the fleet.
    async fn hand_on(&self, delivery: &mut Delivery, task: &TaskMessage, stop: &CancellationToken) {
        let name = &task.headers.task;
        let hops = delivery.message().headers.get(UNKNOWN_HOPS).and_then(Value::as_i64).unwrap_or(0).max(0);
        let max = i64::from(self.config.unknown_task_max_requeues);
        if hops >= max {
            warn!(
                "Received unregistered task of type '{name}', handed on {hops} times; moved to {}",
                self.config.dead_letter_queue
            );
            let reason = format!("unknown_task: unregistered task {name}, handed on {hops} times and no worker ran it");
            return self.dead_letter(delivery, &reason).await;
        }
        warn!("Received unregistered task of type '{name}'; handing it on for another worker ({} of {max})", hops + 1);
        let pause = Duration::from_millis(100).saturating_mul(1 << hops.min(6)).min(Duration::from_secs(5));
        tokio::select! {
            _ = stop.cancelled() => return delivery.leave_unacked(),
            _ = tokio::time::sleep(pause) => {}
        }
        let mut message = delivery.message().clone();
        message.headers.insert(UNKNOWN_HOPS.into(), Value::Int(hops + 1));
        let info = &delivery.envelope.delivery_info;
        match self.broker.publish(&info.exchange, &info.routing_key, &message).await {
            Ok(()) => settle_now(delivery, Settlement::Ack).await,
            Err(e) if worth_retrying(&e) => {
                warn!("could not hand an unregistered task on: {e}; requeueing it");
                settle_now(delivery, Settlement::Requeue).await;
            }
            Err(e) => {
                error!("cannot hand an unregistered task on: {e}; it comes back after the visibility timeout");
                self.count_refused("hand_on_failed");
                delivery.abandon();
            }
        }
    }

    /// A message that will not run: logged, counted, dead-lettered.
    pub(super) async fn refuse(&self, delivery: &mut Delivery, refusal: &super::admit::Refusal) {
        error!(tag = delivery.delivery_tag(), "refusing a message from {}: {}", delivery.queue, refusal.reason);
        self.count_refused(refusal.kind);
        self.dead_letter(delivery, &refusal.reason).await;
    }

    /// Moves the message, untouched but for an `x-celeriac-error` header, to
    /// the dead-letter queue; only then acks it. If that fails it is requeued.
    pub(super) async fn dead_letter(&self, delivery: &mut Delivery, reason: &str) {
        let mut message = delivery.message().clone();
        message.headers.insert("x-celeriac-error".into(), Value::Str(reason.to_owned()));
        let mut info = Map::new();
        info.insert("queue".into(), Value::Str(delivery.queue.clone()));
        message.headers.insert("x-celeriac-origin".into(), Value::Map(info));
        let dlq = &self.config.dead_letter_queue;
        match self.broker.publish("", dlq, &message).await {
            Ok(()) => settle_now(delivery, Settlement::Ack).await,
            Err(e) if worth_retrying(&e) => {
                error!("could not move a message to {dlq}: {e}; requeueing it");
                settle_now(delivery, Settlement::Requeue).await;
            }
            Err(e) => {
                // Requeueing would refuse it again at once, for ever.
                error!("cannot move a message to {dlq}: {e}; it stays unacknowledged and comes back after the visibility timeout");
                self.count_refused("dead_letter_failed");
                delivery.abandon();
            }
        }
    }

    /// Whether task events or metrics want to hear of tasks (so the fields
    /// are built only then).
    pub(super) fn reporting(&self) -> bool {
        self.metrics.is_some() || self.events.task_events()
    }

    /// Sends a task event and counts it in the metrics.
    pub(super) fn report(&self, kind: &str, task: &TaskMessage, fields: Map) {
        if !self.reporting() {
            return;
        }
        if let Some(metrics) = &self.metrics {
            metrics.observe(kind, task, &fields);
        }
        self.events.task(kind, fields);
    }

    /// Counts a message or outcome the worker could not handle normally
    /// (`celeriac_messages_refused_total{reason}`).
    pub(super) fn count_refused(&self, reason: &'static str) {
        if let Some(metrics) = &self.metrics {
            metrics.refused(reason);
        }
    }
}

/// Why a child signature was not applied.
#[derive(Debug)]
enum Unsent {
    /// The broker stayed unreachable until the worker stopped.
    Outage,
    /// It can never be sent (a bad signature, a broker that refuses it).
    Never(String),
}

/// Both recorded, or not.
fn both(a: Recorded, b: Recorded) -> Recorded {
    if a == Recorded::Yes && b == Recorded::Yes {
        Recorded::Yes
    } else {
        Recorded::No
    }
}

/// `{"uuid": id}`, the start of every task event.
pub(super) fn uuid_fields(id: &str) -> Map {
    let mut m = Map::new();
    m.insert("uuid".into(), Value::Str(id.to_owned()));
    m
}

/// The fields of `task-revoked`.
fn revoked_fields(id: &str, terminated: bool, expired: bool) -> Map {
    let mut m = uuid_fields(id);
    m.insert("terminated".into(), Value::Bool(terminated));
    m.insert("signum".into(), if terminated { Value::Int(15) } else { Value::Null });
    m.insert("expired".into(), Value::Bool(expired));
    m
}

/// How to retry a task, and what to fail it with when it may not.
struct RetryPlan {
    /// For the log line.
    reason: String,
    /// The exception stored with the RETRY state.
    stored: ExceptionInfo,
    /// Raised once retries are used up (else `MaxRetriesExceededError`).
    on_exhaustion: Option<ExceptionInfo>,
    delay: Duration,
    eta: Option<PyDateTime>,
    max_retries: Option<u32>,
    /// New arguments for the retry.
    arguments: Option<crate::error::RetryArguments>,
}

/// Most errbacks of a group chord body added to each member's own when the
/// chord fails (each member's list is checked for duplicates).
const MAX_GROUP_ERRBACKS: usize = 256;

/// The request whose errbacks are called: a failed task's, or one made up
/// from a chord body that fails because a header task did.
struct FailedRequest<'a> {
    headers: &'a TaskHeaders,
    embed: &'a Embed,
    /// The message that ran, when there is one.
    delivery: Option<&'a Delivery>,
    /// The parent of what is sent (its id and root id).
    parent: &'a TaskMessage,
}

/// The seed of the ids a worker's plan makes for `which` callback of the
/// message with these headers (see `Call::with_stable_ids`): the same for the
/// same message delivered again, different for each retry (`retries`) and each
/// round of a task that replaces itself (`replaced_task_nesting`), whose
/// messages keep the task id. (A task sent again under the same id by its
/// producer, with the same headers, gets the same callback ids.)
fn seed_of(headers: &TaskHeaders, which: &str) -> String {
    format!("{}/{}/{}/{which}", headers.id, headers.retries, headers.replaced_task_nesting)
}

/// The members of a group signature (`kwargs.tasks`).
fn group_members(group: &Signature) -> Vec<Signature> {
    match group.kwargs.get("tasks") {
        Some(Value::List(items)) => items.iter().filter_map(|v| Signature::from_value(v).ok()).collect(),
        _ => Vec::new(),
    }
}

/// Celery's `_result_errbacks`: the id of the result of `sig` (a chord's is
/// its body's) and the errbacks linked to it (a group's include its
/// members').
fn result_errbacks(sig: &Signature) -> (Option<String>, Vec<Signature>) {
    use celeriac_protocol::signature::SignatureKind;
    let mut errbacks = Vec::new();
    let mut sig = sig.clone();
    // Bounded: a body nested deeper than this is not followed.
    for _ in 0..64 {
        if sig.kind() != SignatureKind::Chord {
            break;
        }
        let Some(body) = sig.kwargs.get("body").and_then(|v| Signature::from_value(v).ok()) else { break };
        errbacks.extend(option_signatures(&sig, "link_error"));
        sig = body;
    }
    errbacks.extend(option_signatures(&sig, "link_error"));
    if sig.kind() == SignatureKind::Group {
        for member in group_members(&sig) {
            // A member's own errbacks (Celery flattens a group of groups
            // before it is sent).
            errbacks.extend(option_signatures(&member, "link_error"));
        }
    }
    (sig.options.get("task_id").and_then(Value::as_str).map(str::to_owned), errbacks)
}

/// The signatures under `key` (`link`, `link_error`) in a signature's
/// options: one, a list of them, or none.
fn option_signatures(sig: &Signature, key: &str) -> Vec<Signature> {
    super::signatures_in(sig.options.get(key))
}

fn autoretries(def: &Task, err: &TaskError) -> bool {
    let kinds = &def.options().autoretry_for;
    err.kind().is_some_and(|k| kinds.iter().any(|want| want == "*" || want == k))
}

/// Celery's `get_exponential_backoff_interval`: `base * 2^retries`, capped,
/// with full jitter.
fn backoff(opts: &crate::TaskOptions, retries: u32) -> Duration {
    let Some(base) = opts.retry_backoff else { return opts.default_retry_delay };
    let factor = 2u32.saturating_pow(retries.min(30));
    let delay = base.saturating_mul(factor).min(opts.retry_backoff_max);
    if opts.retry_jitter {
        delay.mul_f64(rand::random::<f64>())
    } else {
        delay
    }
}

fn traceback_of(err: &TaskError) -> Option<String> {
    match err {
        TaskError::Failure { traceback: Some(t), .. } => Some(t.clone()),
        TaskError::Failure { exc_type, message, .. } => {
            Some(format!("Traceback (most recent call last):\n  (celeriac task)\n{exc_type}: {message}\n"))
        }
        _ => None,
    }
}

/// What a canvas the worker applies may build: no message bigger than a
/// worker accepts (`worker_max_message_size`), the whole plan within a
/// budget, so a hostile canvas cannot grow the worker's memory.
pub(crate) fn plan_limits(max_message_size: usize) -> PlanLimits {
    let defaults = PlanLimits::default();
    PlanLimits { total_bytes: defaults.total_bytes.max(max_message_size), message_bytes: max_message_size }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the tracer: the running task is the parent, its root (or itself
    /// when it has none) the root; a chain step passes them explicitly and
    /// `chain` (even empty), a chord body's `delay` passes nothing.
    #[test]
    fn children_are_applied_with_the_tracers_arguments() {
        let mut task = TaskMessage::new("t.add", "tid");
        let lineage = lineage_of(&task);
        assert_eq!(lineage.parent_id.as_deref(), Some("tid"));
        assert_eq!(lineage.root_id.as_deref(), Some("tid"));
        task.headers.root_id = Some("root".into());
        let lineage = lineage_of(&task);
        assert_eq!(lineage.root_id.as_deref(), Some("root"));
        let step = Call::step(Some(Value::Int(3)), Some(Vec::new()), &lineage);
        assert_eq!(step.options.get("chain"), Some(&Value::List(Vec::new())));
        assert_eq!(step.options.get("root_id"), Some(&Value::Str("root".into())));
        assert!(Call::delay(vec![Value::Int(3)]).options.is_empty());
    }
}
